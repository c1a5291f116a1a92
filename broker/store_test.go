package broker

import (
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
)

// TestVolatileGroupCommit runs many concurrent Batch calls on a volatile
// store, some of which fail: every successful call's write is kept, every
// failed call gets its own error and leaves nothing behind.
func TestVolatileGroupCommit(t *testing.T) {
	s, err := OpenStore(filepath.Join(t.TempDir(), "mdm.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.Volatile()
	boom := errors.New("refused")
	var wg sync.WaitGroup
	errs := make([]error, 200)
	for i := range errs {
		wg.Go(func() {
			errs[i] = s.Batch(func(tx *Tx) error {
				if err := tx.put(bucketMeta, fmt.Appendf(nil, "k%03d", i), i); err != nil {
					return err
				}
				if i%7 == 0 {
					return boom
				}
				return nil
			})
		})
	}
	wg.Wait()
	err = s.View(func(tx *Tx) error {
		for i, err := range errs {
			var v int
			got := tx.get(bucketMeta, fmt.Appendf(nil, "k%03d", i), &v)
			switch {
			case i%7 == 0 && !errors.Is(err, boom):
				t.Errorf("call %d: %v; want its own error", i, err)
			case i%7 == 0 && got == nil:
				t.Errorf("call %d failed, yet its write was kept", i)
			case i%7 != 0 && (err != nil || got != nil || v != i):
				t.Errorf("call %d: %v, read %v %d; want its write kept", i, err, got, v)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
