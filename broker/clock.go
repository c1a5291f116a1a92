package broker

import (
	"fmt"
	"time"
)

// ScaledClock is a clock that runs Scale times faster than real time from
// the moment it is made: with a scale of 60 a virtual hour passes in a
// real minute. `mdm-broker serve --time-scale` runs the service on one so
// that the fleet simulator's external mode can play a scenario of days
// against it in minutes; the simulator reads the service's time and scale
// from the admin API (GET /v1/clock) and runs its devices on the same
// clock.
type ScaledClock struct {
	origin time.Time // the clock's time when it was made
	wall   time.Time // the real time then, with its monotonic reading
	scale  float64
}

// MaxTimeScale is the fastest a ScaledClock may run: an 8-day scenario in
// about 3 minutes. Faster, a check-in's 60-second timeout would be a few
// milliseconds of real time.
const MaxTimeScale = 3600

// NewScaledClock returns a clock that reads origin now and then runs
// scale times faster than real time. The scale must be from 1 to
// MaxTimeScale.
func NewScaledClock(origin time.Time, scale float64) (*ScaledClock, error) {
	if !(scale >= 1 && scale <= MaxTimeScale) {
		return nil, fmt.Errorf("time scale %g: want 1 (real time) to %d", scale, MaxTimeScale)
	}
	return &ScaledClock{origin: origin, wall: time.Now(), scale: scale}, nil
}

// Now returns the clock's time.
func (c *ScaledClock) Now() time.Time {
	return c.origin.Add(time.Duration(float64(time.Since(c.wall)) * c.scale))
}

// Scale returns how many times faster than real time the clock runs.
func (c *ScaledClock) Scale() float64 { return c.scale }

// Until returns the real time left until the clock reads t.
func (c *ScaledClock) Until(t time.Time) time.Duration {
	return time.Duration(float64(t.Sub(c.Now())) / c.scale)
}

// ClockInfo is the answer of GET /v1/clock: the service's time and how
// fast its clock runs.
type ClockInfo struct {
	Now   time.Time `json:"now"`
	Scale float64   `json:"scale"`
}

// ClockInfo returns the service's time and the scale of its clock (1 for
// the real clock or a clock of its own).
func (s *Service) ClockInfo() ClockInfo {
	info := ClockInfo{Now: s.opts.Clock.Now(), Scale: 1}
	if c, ok := s.opts.Clock.(*ScaledClock); ok {
		info.Scale = c.Scale()
	}
	return info
}
