package fleetsim

import (
	"reflect"
	"testing"
	"time"

	mrand "math/rand/v2"

	"github.com/mdm-authority/mdm/agent"
	"github.com/mdm-authority/mdm/protocol"
)

// TestLanesSameFigures: a run whose rounds are split over lanes, with
// rounds far smaller than in a burst, runs the same timers in the same
// order, and so gives the same figures and timeline, as a run that handles
// every round in the loop's lane.
func TestLanesSameFigures(t *testing.T) {
	cfg := Config{Devices: 150, Seed: 21}
	one, a := runSimWith(t, cfg, func(s *sim) { s.laneMin = 1 << 30 })
	many, b := runSimWith(t, cfg, func(s *sim) {
		s.laneMin = 2
		for range 3 { // three lanes more than cores
			s.lanes = append(s.lanes, newDeferredLane())
		}
	})
	if one.laneRounds != 0 || many.laneRounds == 0 {
		t.Fatalf("rounds in parallel: %d and %d; want none in the first run, some in the second", one.laneRounds, many.laneRounds)
	}
	if one.fired != many.fired {
		t.Error("one lane and several ran different timers, or in another order")
	}
	if !reflect.DeepEqual(a.Migration, b.Migration) || !reflect.DeepEqual(a.Profiles, b.Profiles) ||
		!reflect.DeepEqual(a.CheckIns, b.CheckIns) || !reflect.DeepEqual(a.Timeline, b.Timeline) || a.Pushes != b.Pushes ||
		a.Validation != b.Validation || a.Run.Connects != b.Run.Connects {
		t.Errorf("one lane and %d lanes disagree:\n%+v\n%+v\n%+v\n%+v\n%+v\n%+v", len(many.lanes), a.Migration, b.Migration, a.CheckIns, b.CheckIns, a.Pushes, b.Pushes)
	}
}

// TestLaneMerge: timers and reconnection delays kept by deferred lanes and
// merged in order are those the loop's lane would have set at once.
func TestLaneMerge(t *testing.T) {
	newTestSim := func() *sim {
		s := &sim{clock: &Clock{now: virtualStart}, retryRand: mrand.New(mrand.NewPCG(1, 2))}
		s.main = &lane{st: &s.stats}
		return s
	}
	devs := []*simDevice{{idx: 0}, {idx: 1}, {idx: 2}}
	at := virtualStart.Add(time.Minute)
	steps := func(s *sim, first, second *lane) {
		first.wake(s, devs[0], at)
		first.reconnect(s, devs[0])
		first.st.checkInsSent++
		first.st.failed(7)
		second.reconnect(s, devs[1])
		second.wake(s, devs[2], at)
		second.st.checkInsSent += 2
		second.st.failed(7)
	}
	direct := newTestSim()
	steps(direct, direct.main, direct.main)
	merged := newTestSim()
	lanes := [2]*lane{newDeferredLane(), newDeferredLane()}
	steps(merged, lanes[0], lanes[1])
	if n := len(merged.timers.h); n != 0 {
		t.Fatalf("%d timers before the merge; want none", n)
	}
	merged.merge(lanes[0])
	merged.merge(lanes[1])
	drain := func(s *sim) (out []event) {
		for {
			e, ok := s.timers.next()
			if !ok {
				return out
			}
			out = append(out, e)
		}
	}
	want, got := drain(direct), drain(merged)
	if len(want) != 4 || !reflect.DeepEqual(got, want) {
		t.Errorf("merged timers:\n%+v\nwant:\n%+v", got, want)
	}
	if merged.stats.checkInsSent != 3 || merged.stats.failedByCode[7] != 2 || !reflect.DeepEqual(merged.stats, direct.stats) {
		t.Errorf("merged counters %+v; want %+v", merged.stats, direct.stats)
	}
	if lanes[0].own.checkInsSent != 0 || len(lanes[0].own.failedByCode) != 0 || len(lanes[0].timers) != 0 {
		t.Errorf("a lane after its merge: %+v, %d timers; want it empty", lanes[0].own, len(lanes[0].timers))
	}
}

// TestFleetCounts: the counts the timeline samples, kept up to date as
// devices change (over several lanes here), agree at every sample with a
// count of the devices' states made afresh, independently of countDevice,
// through the whole default scenario: profiles retained, redundant pairs
// and gaps while the retention lasts, and all of them gone once it ends.
func TestFleetCounts(t *testing.T) {
	var samples, mismatches int
	var most fleetCounts // the largest counts seen at a sample
	s, r := runSimWith(t, Config{Devices: 150, Seed: 5}, func(s *sim) {
		s.laneMin = 2
		s.lanes = append(s.lanes, newDeferredLane())
		s.sampled = func() {
			want := fleetCounts{byAuthority: map[protocol.Authority]int{}}
			for i, d := range s.devices {
				if d == nil || i == s.canary {
					continue
				}
				st := d.core.State()
				want.byAuthority[st.Authority]++
				for _, p := range st.Profiles {
					if !p.RetainUntil.IsZero() {
						want.retained++
					}
				}
				if len(agent.Redundant(st.Profiles, st.Authority)) > 0 {
					want.redundant++
				}
				if len(agent.Gaps(st.Profiles, st.Authority)) > 0 {
					want.gap++
				}
			}
			if len(want.byAuthority) == 0 {
				want.byAuthority = nil
			}
			most.retained = max(most.retained, want.retained)
			most.redundant = max(most.redundant, want.redundant)
			most.gap = max(most.gap, want.gap)
			if samples++; !reflect.DeepEqual(s.stats.fleet, want) {
				if mismatches++; mismatches <= 3 {
					t.Errorf("sample %d at %s: fleet counts %+v; counted afresh %+v", samples, s.clock.Now().Sub(s.start), s.stats.fleet, want)
				}
			}
		}
	})
	if s.laneRounds == 0 || s.canary < 0 {
		t.Fatalf("%d rounds in lanes, canary %d; want some rounds, and a canary", s.laneRounds, s.canary)
	}
	if mismatches > 0 {
		t.Errorf("%d of %d samples disagreed", mismatches, samples)
	}
	if most.retained == 0 || most.redundant == 0 || most.gap == 0 {
		t.Errorf("at most %+v over the run; want retained profiles, redundant pairs and gaps at some sample", most)
	}
	last := r.Timeline[len(r.Timeline)-1]
	if last.RetainedProfiles != 0 || last.RedundantDevices != 0 || last.GapDevices != 0 || !reflect.DeepEqual(last.ByAuthority, r.Final) {
		t.Errorf("last sample %+v; want nothing retained past the deadline, and %v by authority, as the report counts them", last, r.Final)
	}
}
