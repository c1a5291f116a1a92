package fleetsim

import (
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/mdm-authority/mdm/protocol"
)

// Mix is the share of each platform in a fleet. The shares need not add
// up to one: they are weights.
type Mix struct {
	IOS     float64 `json:"ios"`
	IPadOS  float64 `json:"ipados"`
	MacOS   float64 `json:"macos"`
	Android float64 `json:"android"`
	Windows float64 `json:"windows"`
}

// DefaultMix is the platform mix of the default fleet: 40% iOS and
// iPadOS, 30% Android, 25% Windows, 5% macOS.
var DefaultMix = Mix{IOS: 0.30, IPadOS: 0.10, MacOS: 0.05, Android: 0.30, Windows: 0.25}

func (m Mix) weights() []float64 { return []float64{m.IOS, m.IPadOS, m.MacOS, m.Android, m.Windows} }

// validate checks that the mix has a positive total and no negative share.
func (m Mix) validate() error {
	total := 0.0
	for _, w := range m.weights() {
		if w < 0 {
			return fmt.Errorf("platform mix %+v: a share is negative", m)
		}
		total += w
	}
	if total <= 0 {
		return fmt.Errorf("platform mix %+v: give at least one platform a share", m)
	}
	return nil
}

// Behaviour is how a simulated device is online over the run.
type Behaviour uint8

// The online behaviours of simulated devices.
const (
	// AlwaysOn devices stay connected for the whole run.
	AlwaysOn Behaviour = iota
	// Intermittent devices come and go: online for 1 to 4 hours, offline
	// for 2 to 12 hours, over and over.
	Intermittent
	// PoweredOff devices are online until shortly before the authority
	// change, then powered off for 1 to 4 days.
	PoweredOff
)

var behaviourNames = [...]string{"always_on", "intermittent", "powered_off"}

// String returns the behaviour's name in reports: always_on,
// intermittent or powered_off.
func (b Behaviour) String() string {
	if int(b) < len(behaviourNames) {
		return behaviourNames[b]
	}
	return fmt.Sprintf("behaviour(%d)", b)
}

// Online is the share of devices with each behaviour; the rest of the
// fleet is always on.
type Online struct {
	Intermittent float64 `json:"intermittent"`
	PoweredOff   float64 `json:"powered_off"`
}

// DefaultOnline: 80% of devices always on, 15% intermittent, 5% powered
// off for days around the change.
var DefaultOnline = Online{Intermittent: 0.15, PoweredOff: 0.05}

// deviceSpec is one simulated device, as the fleet generator made it.
type deviceSpec struct {
	platform  protocol.Platform
	user      string
	behaviour Behaviour
	// enrollAt is when the device enrolls, from the start: a fleet
	// enrolls over the first hours, as real ones do, so that schedules
	// spread before the change.
	enrollAt time.Duration
	// toggles are the times, from the start of the run, at which the
	// device goes offline and online again, alternately, starting online.
	toggles []time.Duration
}

// makeFleet generates n devices from seed: the same seed gives the same
// fleet. change is when the scenario changes the authority and end when
// it ends, both from the start.
func makeFleet(n int, seed uint64, mix Mix, userless float64, online Online, change, end time.Duration) []deviceSpec {
	r := rand.New(rand.NewPCG(seed, 0x666c656574)) // "fleet"
	weights := mix.weights()
	total := 0.0
	for _, w := range weights {
		total += w
	}
	fleet := make([]deviceSpec, n)
	for i := range fleet {
		d := &fleet[i]
		x := r.Float64() * total
		d.platform = protocol.Platforms[len(protocol.Platforms)-1]
		for j, w := range weights {
			if x < w {
				d.platform = protocol.Platforms[j]
				break
			}
			x -= w
		}
		if r.Float64() >= userless {
			d.user = fmt.Sprintf("user%05d@contoso.example", i)
		}
		d.enrollAt = uniform(r, 0, enrollSpread)
		switch x := r.Float64(); {
		case x < online.PoweredOff:
			d.behaviour = PoweredOff
			off := change - time.Duration(r.Int64N(int64(6*time.Hour)))
			d.toggles = []time.Duration{max(off, d.enrollAt+time.Hour), change + uniform(r, 24*time.Hour, 96*time.Hour)}
		case x < online.PoweredOff+online.Intermittent:
			d.behaviour = Intermittent
			// Online for the enrollment, then cycles.
			for t := d.enrollAt + uniform(r, time.Hour, 4*time.Hour); t < end; {
				d.toggles = append(d.toggles, t)
				t += uniform(r, 2*time.Hour, 12*time.Hour)
				d.toggles = append(d.toggles, t)
				t += uniform(r, time.Hour, 4*time.Hour)
			}
		}
	}
	return fleet
}

// enrollSpread is how long the fleet takes to enroll, from the start.
const enrollSpread = 4 * time.Hour

// uniform returns a duration in [lo, hi).
func uniform(r *rand.Rand, lo, hi time.Duration) time.Duration {
	return lo + time.Duration(r.Int64N(int64(hi-lo)))
}
