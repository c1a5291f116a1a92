package fleetsim

import (
	"runtime"
	"sync"
	"time"
)

// A lane is where handling devices' messages leaves what it changes
// beyond the devices themselves: the run's counters, the devices' wake-ups
// and their reconnection attempts. Devices do not affect each other, so
// the messages of one round (see settle) can be handled by several lanes
// at once, each taking a run of devices. Those lanes keep their changes
// (deferred), and the round adds them to the run lane by lane, in device
// order: the timers, the draws of reconnection delays and so the whole run
// are then the same as if one lane had handled the round alone. The loop's
// own lane changes the run at once.
//
// Handling a round in parallel keeps every core busy in a migration burst:
// while one lane waits for the broker to read a device's message, another
// goes on, and the service gets more check-ins at once to share a store
// commit.
type lane struct {
	st       *stats // the counters it adds to: the run's, or own
	encoded  []byte // the buffer of the lane's messages
	deferred bool   // it keeps its changes until merge

	own    stats       // a deferred lane's counters
	timers []laneTimer // a deferred lane's timers, in the order asked
}

// newDeferredLane returns a lane that keeps its changes until merge.
func newDeferredLane() *lane {
	l := &lane{deferred: true}
	l.st = &l.own
	return l
}

// laneTimer is a timer a deferred lane keeps: a device's wake-up at at, or
// its next connection attempt a reconnection delay after at.
type laneTimer struct {
	at        time.Time
	dev       int
	reconnect bool
}

// wake adds a device's wake-up at t.
func (l *lane) wake(s *sim, d *simDevice, t time.Time) {
	if l.deferred {
		l.timers = append(l.timers, laneTimer{at: t, dev: d.idx})
		return
	}
	s.timers.add(t, evDevice, d.idx)
}

// reconnect schedules the device's next connection attempt, a
// reconnection delay from now.
func (l *lane) reconnect(s *sim, d *simDevice) {
	d.retry = true
	if l.deferred {
		l.timers = append(l.timers, laneTimer{at: s.clock.Now(), dev: d.idx, reconnect: true})
		return
	}
	s.timers.add(s.clock.Now().Add(s.retryDelay()), evReconnect, d.idx)
}

// merge adds what deferred lane l kept to the run, and empties it.
func (s *sim) merge(l *lane) {
	s.stats.add(&l.own)
	failed, byAuthority := l.own.failedByCode, l.own.fleet.byAuthority
	clear(failed)
	clear(byAuthority)
	l.own = stats{failedByCode: failed, fleet: fleetCounts{byAuthority: byAuthority}} // the maps are kept for the next round
	for _, t := range l.timers {
		if t.reconnect {
			s.timers.add(t.at.Add(s.retryDelay()), evReconnect, t.dev)
		} else {
			s.timers.add(t.at, evDevice, t.dev)
		}
	}
	l.timers = l.timers[:0]
}

// roundLanes is how many lanes handle a round: one per core, and at least
// two, so that a lane waiting for the broker to take a message leaves
// work for the other.
func roundLanes() int { return max(2, runtime.GOMAXPROCS(0)) }

// minLaneMessages is the fewest messages worth a lane of their own:
// smaller rounds, the common case outside a burst, are handled by the
// loop's lane.
const minLaneMessages = 64

// handleRound handles a round's messages, sorted by device: split at
// device boundaries over the lanes when it is large enough, then merged
// in device order.
func (s *sim) handleRound(batch []inbound) {
	n := min(len(s.lanes), len(batch)/s.laneMin)
	if n < 2 {
		for _, in := range batch {
			s.handle(s.main, in)
		}
		return
	}
	var wg sync.WaitGroup
	start := 0
	for i, l := range s.lanes[:n] {
		end := max(start, len(batch)*(i+1)/n)
		for end > 0 && end < len(batch) && batch[end].dev == batch[end-1].dev {
			end++ // a device's messages stay in one lane, in order
		}
		part := batch[start:end]
		start = end
		wg.Go(func() {
			for _, in := range part {
				s.handle(l, in)
			}
		})
	}
	wg.Wait()
	s.laneRounds++
	for _, l := range s.lanes[:n] {
		s.merge(l)
	}
}
