package agent

import (
	"time"

	"github.com/mdm-authority/mdm/protocol"
)

// Profile is a profile installed on the device.
type Profile struct {
	Type protocol.ProfileType `json:"type"`
	Name string               `json:"name"`
	// Authority is the authority that installed the profile.
	Authority protocol.Authority `json:"authority"`
	Version   uint64             `json:"version"`
	Settings  protocol.Settings  `json:"settings,omitempty"`
	// InstalledAt is when this version was applied.
	InstalledAt time.Time `json:"installed_at"`
	// RetainUntil is set on a profile of a previous authority that has no
	// successor: the agent removes it at that time.
	RetainUntil time.Time `json:"retain_until,omitzero"`
}

// Retained reports whether p is kept from a previous authority until a
// deadline.
func (p *Profile) Retained() bool { return !p.RetainUntil.IsZero() }

// Facts are what the device knows about itself that compliance rules
// check.
type Facts struct {
	// OSVersion is the operating system version, such as "12" or "17.4".
	OSVersion string `json:"os_version"`
	// Passcode reports whether a passcode (screen lock) is set.
	Passcode bool `json:"passcode"`
	// Encrypted reports whether storage is encrypted.
	Encrypted bool `json:"encrypted"`
}
