package agent

import (
	"math/rand/v2"
	"time"

	"github.com/mdm-authority/mdm/protocol"
)

// Intune's documented check-in estimates. Windows and Android start fast
// after enrollment; Apple platforms start at 15 minutes; every platform
// settles at about eight hours.
const (
	fastInterval   = 3 * time.Minute
	mediumInterval = 15 * time.Minute
	steadyInterval = 8 * time.Hour

	// jitterShare is the part of an interval that jitter takes off, so that
	// devices enrolled together spread out and none waits longer than its
	// platform's interval.
	jitterShare = 0.1

	// ResponseTimeout is how long a check-in waits for its answer before it
	// counts as failed.
	ResponseTimeout = 60 * time.Second
	// backoffBase is the first retry delay after a failure; it doubles with
	// every further failure, up to the scheduled interval.
	backoffBase = time.Minute
	// pushGap is the least time between two check-ins that pushes cause: a
	// burst of pushes makes one check-in, and a flood of them cannot make
	// the device hammer the service.
	pushGap = 3 * time.Second
)

// Interval returns the scheduled check-in interval of a platform at a given
// age of its enrollment, before jitter.
func Interval(p protocol.Platform, sinceEnrollment time.Duration) time.Duration {
	if p.Apple() {
		if sinceEnrollment < time.Hour {
			return mediumInterval
		}
		return steadyInterval
	}
	switch {
	case sinceEnrollment < 15*time.Minute:
		return fastInterval
	case sinceEnrollment < 2*time.Hour:
		return mediumInterval
	}
	return steadyInterval
}

// jittered takes up to jitterShare off d at random.
func jittered(r *rand.Rand, d time.Duration) time.Duration {
	return d - time.Duration(r.Float64()*jitterShare*float64(d))
}

// Backoff returns the delay before retry number failures (1 for the first
// retry): exponential from base, capped at limit, with "equal jitter" (a
// random point in the upper half) so that devices failing together do not
// retry together.
func Backoff(r *rand.Rand, failures int, base, limit time.Duration) time.Duration {
	d := base
	for i := 1; i < failures && d < limit; i++ {
		d *= 2
	}
	d = min(d, limit)
	return d/2 + time.Duration(r.Float64()*float64(d/2))
}
