package broker

import (
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
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

// TestDeviceFrom: a write transaction takes a device record decoded
// outside it only while the stored record is unchanged, and only once;
// records decoded on several goroutines are those Device reads.
func TestDeviceFrom(t *testing.T) {
	s, err := OpenStore(filepath.Join(t.TempDir(), "mdm.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ids := make([]string, 3*minShare)
	err = s.Update(func(tx *Tx) error {
		for i := range ids {
			ids[i] = fmt.Sprintf("dev-%04d", i)
			if err := tx.PutDevice(&Device{ID: ids[i], User: fmt.Sprintf("user%d", i), CheckIns: uint64(i)}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// As the fan-out reads: in one transaction, decoded in shares after.
	read := map[string]*deviceRead{}
	var reads []*deviceRead
	s.View(func(tx *Tx) error {
		for _, id := range append(ids, "missing") {
			if r := tx.readDevice(id); r != nil {
				read[id] = r
				reads = append(reads, r)
			}
		}
		return nil
	})
	if _, ok := read["missing"]; ok || len(read) != len(ids) {
		t.Fatalf("read %d records, missing one listed: %v; want %d, and no entry for it", len(read), ok, len(ids))
	}
	decodeReads(reads)
	// As a check-in reads: one record.
	if r := s.readDevice(ids[1]); r == nil || r.d == nil || r.d.User != "user1" {
		t.Fatalf("readDevice(%s) = %+v; want its record decoded", ids[1], r)
	}
	if r := s.readDevice("missing"); r != nil {
		t.Fatalf("readDevice(missing) = %+v; want nil", r)
	}
	err = s.Update(func(tx *Tx) error {
		for i, id := range ids {
			r := read[id]
			decoded := r.d
			if decoded == nil || decoded.User != fmt.Sprintf("user%d", i) || decoded.CheckIns != uint64(i) {
				t.Fatalf("%s decoded as %+v", id, decoded)
			}
			if i == 0 {
				// Changed since it was read: the decoded record is stale.
				changed := *decoded
				changed.CheckIns = 99
				if err := tx.PutDevice(&changed); err != nil {
					return err
				}
			}
			d, err := tx.deviceFrom(id, r)
			if err != nil {
				return err
			}
			switch {
			case i == 0 && (d == decoded || d.CheckIns != 99):
				t.Errorf("changed record: got %+v (the one decoded before: %v); want the stored one", d, d == decoded)
			case i > 0 && d != decoded:
				t.Errorf("%s: decoded again; want the record read before", id)
			}
			again, err := tx.deviceFrom(id, r)
			if err != nil {
				return err
			}
			if again == d {
				t.Errorf("%s: the same record taken twice", id)
			}
		}
		if _, err := tx.deviceFrom("missing", read["missing"]); !errors.Is(err, ErrNotFound) {
			t.Errorf("missing device: %v; want ErrNotFound", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestInShares: the shares cover every item once; small batches stay on
// the caller's goroutine.
func TestInShares(t *testing.T) {
	for _, n := range []int{0, 1, minShare - 1, 2*minShare - 1, 2 * minShare, 1000} {
		var mu sync.Mutex
		seen := make([]int, n)
		calls := 0
		inShares(n, minShare, func(lo, hi int) {
			mu.Lock()
			defer mu.Unlock()
			calls++
			for i := lo; i < hi; i++ {
				seen[i]++
			}
		})
		for i, c := range seen {
			if c != 1 {
				t.Fatalf("n=%d: item %d in %d shares; want 1", n, i, c)
			}
		}
		if want := min(runtime.GOMAXPROCS(0), max(1, n/minShare)); n > 0 && calls != want {
			t.Errorf("n=%d: %d shares; want %d", n, calls, want)
		}
	}
}
