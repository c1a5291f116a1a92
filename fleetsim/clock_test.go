package fleetsim

import (
	"cmp"
	mrand "math/rand/v2"
	"slices"
	"testing"
	"time"
)

// TestTimersOrder: the timer heap gives its events earliest first, and
// events of one instant in the order they were added, with adds and takes
// interleaved as the loop does.
func TestTimersOrder(t *testing.T) {
	r := mrand.New(mrand.NewPCG(7, 8))
	var tm timers
	var pending []event // what the heap holds, as added
	take := func() {
		want := slices.MinFunc(pending, func(a, b event) int {
			return cmp.Or(a.at.Compare(b.at), cmp.Compare(a.seq, b.seq))
		})
		got, ok := tm.next()
		if !ok || got.at != want.at || got.seq != want.seq || got.kind != want.kind || got.arg != want.arg {
			t.Fatalf("next = %+v, %v; want %+v", got, ok, want)
		}
		pending = slices.DeleteFunc(pending, func(e event) bool { return e.seq == want.seq })
	}
	for i := range 5000 {
		at := virtualStart.Add(time.Duration(r.IntN(50)) * time.Second) // many of one instant
		kind := r.IntN(9)
		tm.add(at, kind, i)
		pending = append(pending, event{at: at, seq: tm.seq, kind: kind, arg: i})
		if r.IntN(3) == 0 {
			take()
		}
		if at, ok := tm.peek(); !ok || len(tm.h) != len(pending) || at != tm.h[0].at {
			t.Fatalf("after %d adds: peek %v, %v with %d timers; want %d", i+1, at, ok, len(tm.h), len(pending))
		}
	}
	for len(pending) > 0 {
		take()
	}
	if _, ok := tm.next(); ok {
		t.Error("an event from an empty heap")
	}
}

// BenchmarkTimers: one wake-up taken and another added, as the loop does,
// on a heap of 200,000 timers (about what 100,000 devices keep).
func BenchmarkTimers(b *testing.B) {
	r := mrand.New(mrand.NewPCG(1, 2))
	var tm timers
	for i := range 200_000 {
		tm.add(virtualStart.Add(time.Duration(r.Int64N(int64(8*time.Hour)))), evDevice, i)
	}
	b.ReportAllocs()
	for b.Loop() {
		e, _ := tm.next()
		tm.add(e.at.Add(time.Duration(r.Int64N(int64(8*time.Hour)))), evDevice, e.arg)
	}
}
