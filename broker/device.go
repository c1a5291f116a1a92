package broker

import (
	"fmt"
	"time"

	"github.com/mdm-authority/mdm/protocol"
)

// DeviceState is where a device is in its management life.
type DeviceState uint8

// Device states. Only an enrolled device is managed; the others are kept
// for the admin's record until housekeeping removes them.
const (
	DeviceEnrolled   DeviceState = 1
	DeviceWiped      DeviceState = 2
	DeviceRetired    DeviceState = 3
	DeviceUnenrolled DeviceState = 4
)

var deviceStateNames = [...]string{"", "enrolled", "wiped", "retired", "unenrolled"}

// String returns the state's name.
func (s DeviceState) String() string {
	if int(s) < len(deviceStateNames) && s > 0 {
		return deviceStateNames[s]
	}
	return fmt.Sprintf("state(%d)", s)
}

// ParseDeviceState returns the state named s.
func ParseDeviceState(s string) (DeviceState, error) {
	for i, name := range deviceStateNames {
		if i > 0 && name == s {
			return DeviceState(i), nil
		}
	}
	return 0, fmt.Errorf("unknown device state %q: use enrolled, wiped, retired or unenrolled", s)
}

// MarshalText implements encoding.TextMarshaler for JSON.
func (s DeviceState) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler for JSON.
func (s *DeviceState) UnmarshalText(b []byte) error {
	v, err := ParseDeviceState(string(b))
	*s = v
	return err
}

// PushState tracks the check-in request the service owes a device: it is
// sent, then retried (PushRetryDelays) until the device checks in.
//
// The push queue keeps the sends and the next one's time (see pushEntry).
// In the record, NextAt is when the push was queued and Attempts stays 0;
// the admin API's device views fill both from the queue. Older versions
// kept both up to date in the record, and their queue entries are read
// by them.
type PushState struct {
	Pending  bool                `json:"pending"`
	Reason   protocol.PushReason `json:"reason"`
	Attempts int                 `json:"attempts"`
	NextAt   time.Time           `json:"next_at,omitzero"`
	// Gen tells this push from the device's earlier ones, whose queue
	// entries may still wait in the queue: each push gets a larger one.
	Gen uint64 `cbor:"gen,omitempty" json:"-"`
}

// owe makes the device owed a push for reason, queued at now: a new
// generation.
func (p *PushState) owe(reason protocol.PushReason, now time.Time) {
	gen := max(uint64(now.UnixNano()), p.Gen+1)
	*p = PushState{Pending: true, Reason: reason, NextAt: now, Gen: gen}
}

// clear makes the device owed nothing. Gen stays, so that the next push
// is told from this one.
func (p *PushState) clear() { *p = PushState{Gen: p.Gen} }

// Device is the service's record of one enrolled device.
type Device struct {
	ID         string                  `json:"id"`
	Platform   protocol.Platform       `json:"platform"`
	OSVersion  string                  `json:"os_version"`
	User       string                  `json:"user"`
	Name       string                  `json:"name"`
	EnrollType protocol.EnrollmentType `json:"enroll_type"`
	State      DeviceState             `json:"state"`
	EnrolledAt time.Time               `json:"enrolled_at,omitzero"`

	// Authority manages the device now; it changes when the device checks
	// in after a change, or when an admin migrates a userless device.
	Authority protocol.Authority `json:"authority"`
	// PreviousAuthority is the authority before the last move, and
	// AuthoritySince the change that caused it: the start of the
	// retention period of the previous authority's profiles.
	PreviousAuthority protocol.Authority `json:"previous_authority"`
	AuthoritySince    time.Time          `json:"authority_since,omitzero"`
	MigratedAt        time.Time          `json:"migrated_at,omitzero"`
	// NeedsSupport marks a userless device left on the previous authority
	// after a change: it moves only when an admin migrates it.
	NeedsSupport bool `json:"needs_support"`

	CertSerial   string    `json:"cert_serial"`
	CertNotAfter time.Time `json:"cert_not_after,omitzero"`
	// PrevCertSerial is the certificate a renewal replaced. It is still
	// admitted at connect until the device first connects with the new
	// one, so that a device that lost the renewal's answer is not locked
	// out; after that it is revoked.
	PrevCertSerial   string    `json:"prev_cert_serial,omitempty"`
	PrevCertNotAfter time.Time `json:"prev_cert_not_after,omitzero"`

	LastCheckIn time.Time `json:"last_check_in,omitzero"`
	// LastAttempt and LastError record the latest check-in, failed or
	// not; LastError is CodeNone after a success.
	LastAttempt time.Time          `json:"last_attempt,omitzero"`
	LastError   protocol.ErrorCode `json:"last_error"`
	CheckIns    uint64             `json:"check_ins"`

	// LastMessage and LastMessageSent identify the device's last applied
	// check-in or compliance report, by message id and the time the
	// device sent it: the same message again, or an older one, is a
	// replay and changes nothing.
	LastMessage     protocol.MessageID `json:"last_message"`
	LastMessageSent time.Time          `json:"last_message_sent,omitzero"`

	Installed            []protocol.InstalledProfile `json:"installed"`
	Compliance           protocol.Compliance         `json:"compliance"`
	ComplianceReportedAt time.Time                   `json:"compliance_reported_at,omitzero"`
	// DesiredVersion is the desired-state version the device reported.
	DesiredVersion uint64 `json:"desired_version"`
	// Epoch is the authority epoch the device reported.
	Epoch uint64 `json:"epoch"`

	Push PushState `json:"push"`
}

// replayed returns an error wrapping ErrReplayed when env is the device's
// last applied message again, or was sent before it.
func (d *Device) replayed(env *protocol.Envelope) error {
	switch sent := env.Sent.Time(); {
	case env.ID == d.LastMessage && !d.LastMessageSent.IsZero():
		return fmt.Errorf("message %x delivered again: %w", env.ID[:], ErrReplayed)
	case sent.Before(d.LastMessageSent):
		return fmt.Errorf("message %x sent at %s, before the last one applied (%s): %w", env.ID[:],
			sent.Format(time.RFC3339Nano), d.LastMessageSent.Format(time.RFC3339Nano), ErrReplayed)
	}
	return nil
}

// Managed reports whether the service still manages the device.
func (d *Device) Managed() bool { return d.State == DeviceEnrolled }

// target returns the authority the device should be on now, and whether
// it is a userless device stranded on another one.
func (d *Device) target(t *Tenant) (a protocol.Authority, stranded bool) {
	want := t.AuthorityFor(d.User)
	if d.User == "" {
		// Devices without a user are not migrated: they stay until an
		// admin moves them (Migrate).
		return d.Authority, want != d.Authority
	}
	return want, false
}

// checkIn applies a check-in to the record: it refuses it with an error
// code, or moves the device to the authority it should be on and records
// the state it reported. The record is changed only on success, except for
// the time and code of the attempt.
func (d *Device) checkIn(t *Tenant, m *protocol.CheckIn, now time.Time) protocol.ErrorCode {
	d.LastAttempt = now
	code := d.admit(t, now)
	d.LastError = code
	if code != protocol.CodeNone {
		return code
	}
	target, stranded := d.target(t)
	d.NeedsSupport = stranded
	if target != d.Authority {
		d.moveTo(target, t.SinceFor(d.User), now)
	}
	d.LastCheckIn = now
	d.CheckIns++
	d.Installed = m.Profiles
	d.Compliance = m.Compliance
	d.ComplianceReportedAt = now
	d.DesiredVersion = m.DesiredVersion
	d.Epoch = m.Epoch
	if m.OSVersion != "" {
		d.OSVersion = m.OSVersion
	}
	d.Push.clear() // it checked in: nothing more to ask
	return protocol.CodeNone
}

// admit decides whether a check-in can be served.
func (d *Device) admit(t *Tenant, now time.Time) protocol.ErrorCode {
	switch {
	case !d.Managed():
		return protocol.CodeNotEnrolled
	case !now.Before(d.CertNotAfter):
		return protocol.CodeCertificateExpired
	}
	target, _ := d.target(t)
	if d.Platform.NeedsAPNs() && !t.HasAPNs(target) {
		return protocol.CodeAPNsCertificateMissing
	}
	return protocol.CodeNone
}

func (d *Device) moveTo(a protocol.Authority, since, now time.Time) {
	d.PreviousAuthority = d.Authority
	d.Authority = a
	d.AuthoritySince = since
	d.MigratedAt = now
}

// RetainUntil returns the deadline of the previous authority's profiles on
// the device, kept for period after the move, or the zero time when no
// retention period is running.
func (d *Device) RetainUntil(now time.Time, period time.Duration) time.Time {
	if d.AuthoritySince.IsZero() || d.PreviousAuthority == protocol.AuthorityUnknown {
		return time.Time{}
	}
	until := d.AuthoritySince.Add(period)
	if !now.Before(until) {
		return time.Time{}
	}
	return until
}

// Profile is one profile of an authority's catalog.
type Profile struct {
	Authority protocol.Authority   `json:"authority"`
	Type      protocol.ProfileType `json:"type"`
	Name      string               `json:"name"`
	Version   uint64               `json:"version"`
	Settings  protocol.Settings    `json:"settings"`
	UpdatedAt time.Time            `json:"updated_at,omitzero"`
}

// desired returns the catalog entries a device on authority a gets.
func desired(catalog []Profile, a protocol.Authority) []protocol.DesiredProfile {
	var out []protocol.DesiredProfile
	for _, p := range catalog {
		if p.Authority == a && Supports(a, p.Type) {
			out = append(out, protocol.DesiredProfile{Type: p.Type, Name: p.Name, Version: p.Version, Settings: p.Settings})
		}
	}
	if out == nil {
		out = []protocol.DesiredProfile{}
	}
	return out
}
