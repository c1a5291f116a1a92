package agent

import (
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/mdm-authority/mdm/protocol"
)

func TestScheduleInterval(t *testing.T) {
	const (
		fast   = 3 * time.Minute
		medium = 15 * time.Minute
		steady = 8 * time.Hour
	)
	type step struct {
		age  time.Duration
		want time.Duration
	}
	fastStart := []step{
		{0, fast}, {time.Minute, fast}, {15*time.Minute - time.Nanosecond, fast},
		{15 * time.Minute, medium}, {time.Hour, medium}, {2*time.Hour - time.Nanosecond, medium},
		{2 * time.Hour, steady}, {30 * 24 * time.Hour, steady}, {400 * 24 * time.Hour, steady},
	}
	apple := []step{
		{0, medium}, {15 * time.Minute, medium}, {time.Hour - time.Nanosecond, medium},
		{time.Hour, steady}, {2 * time.Hour, steady}, {30 * 24 * time.Hour, steady},
	}
	tests := []struct {
		p     protocol.Platform
		steps []step
	}{
		{protocol.PlatformWindows, fastStart},
		{protocol.PlatformAndroid, fastStart},
		{protocol.PlatformIOS, apple},
		{protocol.PlatformIPadOS, apple},
		{protocol.PlatformMacOS, apple},
	}
	for _, tt := range tests {
		for _, s := range tt.steps {
			if got := Interval(tt.p, s.age); got != s.want {
				t.Errorf("Interval(%v, %v) = %v; want %v", tt.p, s.age, got, s.want)
			}
		}
	}
}

func TestScheduleJitterBounds(t *testing.T) {
	r := testRand()
	for _, d := range []time.Duration{3 * time.Minute, 15 * time.Minute, 8 * time.Hour} {
		lo, hi := d*9/10, d
		seen := map[time.Duration]bool{}
		for range 2000 {
			got := jittered(r, d)
			if got < lo || got > hi {
				t.Fatalf("jittered(%v) = %v; want within [%v, %v]", d, got, lo, hi)
			}
			seen[got] = true
		}
		if len(seen) < 1900 {
			t.Errorf("2000 draws of jittered(%v) gave %d distinct delays; want them spread", d, len(seen))
		}
	}
}

// answeredAt brings a device of platform p, enrolled age ago, to a check-in
// at testNow answered by resp, and returns the delay to its next one.
func answeredAt(t *testing.T, p protocol.Platform, age time.Duration, seed uint64, resp *protocol.CheckInResponse) time.Duration {
	t.Helper()
	st := freshState(p, testNow.Add(-age))
	st.CheckIns, st.LastAttempt, st.NextCheckIn = 1, testNow.Add(-time.Minute), testNow
	r := newRig(t, st, testNow)
	r.c = New(st, Config{Rand: mrand.New(mrand.NewPCG(seed, 2))})
	_, env := oneCheckIn(t, r.online(), protocol.CheckInScheduled)
	if out := r.respond(env, resp); !out.Persist {
		t.Fatalf("answer not taken: Persist = false")
	}
	return st.NextCheckIn.Sub(testNow)
}

func TestScheduleNextCheckIn(t *testing.T) {
	tests := []struct {
		p    protocol.Platform
		age  time.Duration
		hint uint32 // next_checkin in the answer
		want time.Duration
	}{
		{protocol.PlatformWindows, 0, 0, 3 * time.Minute},
		{protocol.PlatformWindows, 20 * time.Minute, 0, 15 * time.Minute},
		{protocol.PlatformAndroid, 3 * time.Hour, 0, 8 * time.Hour},
		{protocol.PlatformIOS, 30 * time.Minute, 0, 15 * time.Minute},
		{protocol.PlatformMacOS, 2 * time.Hour, 0, 8 * time.Hour},
		// The service's hint wins, exactly, whatever the platform's schedule.
		{protocol.PlatformWindows, 0, 3600, time.Hour},
		{protocol.PlatformIOS, 30 * 24 * time.Hour, 600, 10 * time.Minute},
		{protocol.PlatformAndroid, time.Hour, 1, time.Second},
		{protocol.PlatformIPadOS, time.Hour, protocol.MaxNextCheckIn, 7 * 24 * time.Hour},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%v %v hint %d", tt.p, tt.age, tt.hint), func(t *testing.T) {
			for seed := range uint64(25) {
				resp := success(protocol.AuthorityIntune, 0)
				resp.NextCheckIn = tt.hint
				got := answeredAt(t, tt.p, tt.age, seed, resp)
				lo, hi := tt.want*9/10, tt.want
				if tt.hint > 0 {
					lo = hi
				}
				if got < lo || got > hi {
					t.Errorf("seed %d: next check-in in %v; want within [%v, %v]", seed, got, lo, hi)
				}
			}
		})
	}
}

// TestScheduleNextCheckInTicks checks that the core keeps the schedule it
// computed: nothing before NextCheckIn, a scheduled check-in at it.
func TestScheduleNextCheckInTicks(t *testing.T) {
	for _, hint := range []uint32{0, 600} {
		t.Run(fmt.Sprintf("hint %d", hint), func(t *testing.T) {
			st := settledState(protocol.PlatformWindows, testNow, 0)
			r := newRig(t, st, testNow)
			_, env := oneCheckIn(t, r.online(), protocol.CheckInScheduled)
			resp := success(protocol.AuthorityOffice365, 41)
			resp.NextCheckIn = hint
			r.respond(env, resp)
			next := st.NextCheckIn
			if w := r.c.NextWake(); !w.Equal(next) {
				t.Errorf("NextWake() = %v; want NextCheckIn %v", w, next)
			}
			r.at(next.Add(-time.Millisecond))
			noCheckIn(t, "Tick 1ms before the schedule", r.tick())
			r.at(next)
			oneCheckIn(t, r.tick(), protocol.CheckInScheduled)
		})
	}
}

func TestScheduleJitterSpreadsDevices(t *testing.T) {
	const devices = 200
	interval := Interval(protocol.PlatformWindows, 0)
	delays := make([]time.Duration, devices)
	for seed := range uint64(devices) {
		delays[seed] = answeredAt(t, protocol.PlatformWindows, 0, seed, success(protocol.AuthorityIntune, 0))
	}
	slices.Sort(delays)
	distinct := len(slices.Compact(slices.Clone(delays)))
	if distinct < devices*9/10 {
		t.Errorf("%d devices enrolled together got %d distinct delays; want nearly all different", devices, distinct)
	}
	spread := delays[len(delays)-1] - delays[0]
	if spread < interval/20 {
		t.Errorf("delays spread over %v; want most of the %v jitter range", spread, interval/10)
	}
	// Devices should not bunch: no tenth of the range holds more than a
	// quarter of them.
	bucket := map[int]int{}
	for _, d := range delays {
		bucket[int((interval-d)*100/interval)]++
	}
	for b, n := range bucket {
		if n > devices/4 {
			t.Errorf("%d of %d devices fall in one percent (%d%%) of the interval; want them spread", n, devices, b)
		}
	}
	// The same seed reproduces the same schedule.
	if a, b := answeredAt(t, protocol.PlatformWindows, 0, 7, success(protocol.AuthorityIntune, 0)), answeredAt(t, protocol.PlatformWindows, 0, 7, success(protocol.AuthorityIntune, 0)); a != b {
		t.Errorf("seed 7 gave delays %v and %v; want the same", a, b)
	}
}

func TestScheduleBackoff(t *testing.T) {
	tests := []struct {
		failures    int
		base, limit time.Duration
		want        time.Duration // the upper bound d; results are in [d/2, d]
	}{
		{0, time.Minute, 8 * time.Hour, time.Minute},
		{1, time.Minute, 8 * time.Hour, time.Minute},
		{2, time.Minute, 8 * time.Hour, 2 * time.Minute},
		{3, time.Minute, 8 * time.Hour, 4 * time.Minute},
		{6, time.Minute, 8 * time.Hour, 32 * time.Minute},
		{9, time.Minute, 8 * time.Hour, 256 * time.Minute},
		{10, time.Minute, 8 * time.Hour, 8 * time.Hour}, // 512 min, capped
		{64, time.Minute, 8 * time.Hour, 8 * time.Hour}, // no overflow
		{1 << 30, time.Minute, 8 * time.Hour, 8 * time.Hour},
		{3, time.Minute, 3 * time.Minute, 3 * time.Minute},
		{1, 10 * time.Minute, 3 * time.Minute, 3 * time.Minute}, // base above the limit
		{4, 5 * time.Second, time.Hour, 40 * time.Second},
	}
	r := testRand()
	for _, tt := range tests {
		seen := map[time.Duration]bool{}
		for range 500 {
			got := Backoff(r, tt.failures, tt.base, tt.limit)
			if got < tt.want/2 || got > tt.want {
				t.Fatalf("Backoff(%d, %v, %v) = %v; want within [%v, %v]", tt.failures, tt.base, tt.limit, got, tt.want/2, tt.want)
			}
			seen[got] = true
		}
		if len(seen) < 400 {
			t.Errorf("Backoff(%d, %v, %v) gave %d distinct delays in 500 draws; want jitter", tt.failures, tt.base, tt.limit, len(seen))
		}
	}
}

func TestScheduleBackoffGrows(t *testing.T) {
	// The ranges of successive retries meet end to end, so every retry
	// waits at least as long as the one before, until the limit.
	r := testRand()
	for trial := range 200 {
		prev := time.Duration(0)
		for failures := 1; failures <= 12; failures++ {
			d := Backoff(r, failures, time.Minute, 8*time.Hour)
			if d < prev && prev < 4*time.Hour {
				t.Fatalf("trial %d: Backoff(%d) = %v after Backoff(%d) = %v; want growing delays", trial, failures, d, failures-1, prev)
			}
			prev = d
		}
	}
}
