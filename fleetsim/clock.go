package fleetsim

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/mdm-authority/mdm/broker"
)

// Clock is the simulation's virtual clock. In process it stands still
// while anything is in flight and jumps to the next timer when the fleet
// is quiescent; the service reads it through Now. Against a separate
// service it is that service's scaled clock, and runs on its own.
type Clock struct {
	mu     sync.Mutex
	now    time.Time
	scaled *broker.ScaledClock // external mode
}

// Now returns the virtual time.
func (c *Clock) Now() time.Time {
	if c.scaled != nil {
		return c.scaled.Now()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *Clock) set(t time.Time) {
	c.mu.Lock()
	c.now = t
	c.mu.Unlock()
}

// work counts what is in flight: messages published and not yet handled
// by their receiver (device or service). It is the broker's Tracker, and
// the simulator's devices count with it too. When the count drops to
// zero it wakes the loop.
type work struct {
	n    atomic.Int64
	wake chan struct{} // buffered 1
}

func newWork() *work { return &work{wake: make(chan struct{}, 1)} }

// Add implements broker.Tracker. Every decrease wakes the loop: it may
// leave only the inbox in flight.
func (w *work) Add(delta int64) {
	if w.n.Add(delta) == 0 || delta < 0 {
		w.signal()
	}
}

func (w *work) signal() { notify(w.wake) }

// notify wakes the one goroutine that waits on ch (buffered 1), or leaves
// it a wake-up for when it next waits.
func notify(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// event kinds of the timer heap.
const (
	evDevice    = iota // a device core's wake-up
	evToggle           // a device goes offline or online
	evStep             // a scenario step
	evFanOut           // the service's push fan-out
	evSample           // a timeline sample
	evReturn           // devices taken offline by a step come back
	evEnroll           // a device of the fleet enrolls
	evReconnect        // a device tries to connect again after a restart
	evRestarted        // a restarted broker or service is back
)

// event is a timer: at a virtual time, something to do. Events at the
// same time run in the order they were scheduled.
type event struct {
	at   time.Time
	ns   int64 // at in Unix nanoseconds, which the heap orders by
	seq  uint64
	kind int
	arg  int
}

// before reports whether e runs before o.
func (e *event) before(o *event) bool {
	return e.ns < o.ns || e.ns == o.ns && e.seq < o.seq
}

// timers is the shared timer heap of the whole fleet: one entry per
// pending wake-up, never a goroutine per timer. It is a binary min-heap
// of events kept by hand rather than through container/heap, whose
// interface boxes every event pushed and popped: at 100,000 devices the
// heap holds a few hundred thousand timers and takes millions of them.
type timers struct {
	h   []event
	seq uint64
}

// add schedules an event of kind with arg at at.
func (t *timers) add(at time.Time, kind, arg int) {
	t.seq++
	t.h = append(t.h, event{at: at, ns: at.UnixNano(), seq: t.seq, kind: kind, arg: arg})
	h := t.h
	for i := len(h) - 1; i > 0; {
		parent := (i - 1) / 2
		if !h[i].before(&h[parent]) {
			break
		}
		h[i], h[parent] = h[parent], h[i]
		i = parent
	}
}

// next takes the earliest event; false when there is none.
func (t *timers) next() (event, bool) {
	if len(t.h) == 0 {
		return event{}, false
	}
	h := t.h
	top := h[0]
	n := len(h) - 1
	h[0] = h[n]
	h = h[:n]
	t.h = h
	for i := 0; ; {
		least := i
		if l := 2*i + 1; l < n && h[l].before(&h[least]) {
			least = l
		}
		if r := 2*i + 2; r < n && h[r].before(&h[least]) {
			least = r
		}
		if least == i {
			break
		}
		h[i], h[least] = h[least], h[i]
		i = least
	}
	return top, true
}

// peekEvent returns the next event without taking it.
func (t *timers) peekEvent() (event, bool) {
	if len(t.h) == 0 {
		return event{}, false
	}
	return t.h[0], true
}

// peek returns the earliest event's time without taking it; false when
// there is none.
func (t *timers) peek() (time.Time, bool) {
	if len(t.h) == 0 {
		return time.Time{}, false
	}
	return t.h[0].at, true
}
