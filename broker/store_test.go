package broker

import (
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"
)

// TestVolatileGroupCommit runs many concurrent Batch calls on a volatile
// store, some of which fail: every successful call's write is kept, every
// failed call gets its own error and leaves nothing behind.
func TestVolatileGroupCommit(t *testing.T) {
	s := openTestStore(t)
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
	err := s.View(func(tx *Tx) error {
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
	s := openTestStore(t)
	ids := make([]string, 3*minShare)
	err := s.Update(func(tx *Tx) error {
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
	// As the fan-out reads: in shares, each in its own transaction.
	read := map[string]*deviceRead{}
	asked := append(ids, "missing")
	reads := s.readDevices(asked)
	if len(reads) != len(asked) {
		t.Fatalf("readDevices returned %d reads for %d ids", len(reads), len(asked))
	}
	for i, r := range reads {
		if r != nil {
			read[asked[i]] = r
		}
	}
	if _, ok := read["missing"]; ok || len(read) != len(ids) {
		t.Fatalf("read %d records, missing one listed: %v; want %d, and no entry for it", len(read), ok, len(ids))
	}
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

// TestReadDuePushes: the fan-out's reads go on, round after round, past
// entries that are not current until they have read max current ones; they
// pass over answered pushes, devices without a record and entries not yet
// due, and read a device with entries in two rounds once.
func TestReadDuePushes(t *testing.T) {
	s := openTestStore(t)
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	owed := PushState{Pending: true, Gen: 10}
	var current []string
	err := s.Update(func(tx *Tx) error {
		queue := func(d *Device, at time.Time, record bool) error {
			if record {
				if err := tx.PutDevice(d); err != nil {
					return err
				}
			}
			return tx.queuePush(d, at, 0)
		}
		// In the queue's order: an entry left behind by a newer push,
		// five entries whose devices owe nothing, one of a device with no
		// record, one of an answered push, the newer push's own entry,
		// the other current ones, and one not due yet.
		if err := queue(&Device{ID: "twice", Push: PushState{Pending: true, Gen: 5}}, now.Add(-2*time.Hour), false); err != nil {
			return err
		}
		for i := range 5 {
			if err := queue(&Device{ID: fmt.Sprintf("stale-%d", i), Push: PushState{Gen: 10}}, now.Add(-time.Hour), true); err != nil {
				return err
			}
		}
		if err := queue(&Device{ID: "gone", Push: owed}, now.Add(-50*time.Minute), false); err != nil {
			return err
		}
		if err := queue(&Device{ID: "answered", Push: owed}, now.Add(-40*time.Minute), true); err != nil {
			return err
		}
		if err := queue(&Device{ID: "twice", User: "u", Push: owed}, now.Add(-30*time.Minute), true); err != nil {
			return err
		}
		for i := range 3 * minShare {
			current = append(current, fmt.Sprintf("current-%03d", i))
			if err := queue(&Device{ID: current[i], User: "u", Push: owed}, now.Add(-time.Minute), true); err != nil {
				return err
			}
		}
		return queue(&Device{ID: "later", Push: owed}, now.Add(time.Minute), true)
	})
	if err != nil {
		t.Fatal(err)
	}
	var answered answeredPushes
	answered.add("answered", 10)

	// Rounds of 3, 3, 3 and 1 entries: the third finds the current
	// entry of "twice", read in the first round, and counts it.
	read := map[string]*deviceRead{}
	if due, err := s.readDuePushes(now, 3, &answered, read); err != nil || !due {
		t.Fatalf("readDuePushes(3) = %v, %v; want true, nil", due, err)
	}
	for _, id := range append([]string{"twice"}, current[:2]...) {
		if r := read[id]; r == nil || r.d == nil || r.d.ID != id {
			t.Errorf("%s: read %+v; want its record decoded", id, r)
		}
	}
	for _, id := range []string{"gone", "answered", current[2], "later"} {
		if r, ok := read[id]; ok {
			t.Errorf("%s read (%+v); want it passed over", id, r)
		}
	}

	// All of them, read in shares on every core.
	read = map[string]*deviceRead{}
	if due, err := s.readDuePushes(now, 1000, &answered, read); err != nil || !due {
		t.Fatalf("readDuePushes(1000) = %v, %v; want true, nil", due, err)
	}
	for _, id := range current {
		if r := read[id]; r == nil || r.d == nil || r.d.ID != id {
			t.Errorf("%s: read %+v; want its record decoded", id, r)
		}
	}
	if len(read) != 6+len(current) {
		t.Errorf("read %d records; want the 5 stale ones, twice and the %d current ones", len(read), len(current))
	}

	if due, err := s.readDuePushes(now.Add(-3*time.Hour), 10, &answered, map[string]*deviceRead{}); err != nil || due {
		t.Errorf("readDuePushes before any entry is due = %v, %v; want false, nil", due, err)
	}
}

// TestDueAfter: the queue's walk goes on after the last key walked, even
// once that entry is gone, and stops at the first entry not yet due.
func TestDueAfter(t *testing.T) {
	s := openTestStore(t)
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	ids := []string{"a", "b", "c", "d"}
	keys := map[string][]byte{}
	err := s.Update(func(tx *Tx) error {
		for i, id := range ids {
			at := now.Add(time.Duration(i-3) * time.Minute) // d is due at now
			if id == "d" {
				at = now.Add(time.Minute)
			}
			keys[id] = pushKey(at.UnixNano(), id)
			if err := tx.queuePush(&Device{ID: id, Push: PushState{Pending: true, Gen: 1}}, at, 0); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	walk := func(last []byte) []string {
		var got []string
		s.View(func(tx *Tx) error {
			for e := range tx.dueAfter(now, last) {
				got = append(got, e.device)
			}
			return nil
		})
		return got
	}
	check := func(name string, last []byte, want ...string) {
		t.Helper()
		if got := walk(last); !slices.Equal(got, want) {
			t.Errorf("after %s: walked %v; want %v", name, got, want)
		}
	}
	check("nothing", nil, "a", "b", "c")
	check("a", keys["a"], "b", "c")
	check("c, the last due", keys["c"])
	check("d, not due", keys["d"])
	if err := s.Update(func(tx *Tx) error { return tx.tx.Bucket(bucketPushes).Delete(keys["b"]) }); err != nil {
		t.Fatal(err)
	}
	check("b, deleted since", keys["b"], "c")
}

// openTestStore opens a store in a temporary directory, closed when the
// test ends.
func openTestStore(t *testing.T) *Store {
	t.Helper()
	s, err := OpenStore(filepath.Join(t.TempDir(), "mdm.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}
