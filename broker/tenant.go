package broker

import (
	"errors"
	"fmt"
	"time"

	"github.com/mdm-authority/mdm/protocol"
)

// RetentionPeriod is how long profiles of the previous authority stay on a
// device after a change, unless a same-named profile overwrites them.
const RetentionPeriod = 7 * 24 * time.Hour

// Mode is the tenant's MDM authority setting: one authority for every
// device, or coexistence, where each user's license decides.
type Mode uint8

// Modes. ModeUnknown is the state of a tenant that never set one; it can
// never be set again.
const (
	ModeUnknown     Mode = 0
	ModeIntune      Mode = 1
	ModeOffice365   Mode = 2
	ModeCoexistence Mode = 3
)

var modeNames = [...]string{"unknown", "intune", "office365", "coexistence"}

// ParseMode returns the mode named s: "intune", "office365" or "coexistence"
// ("unknown" parses too, so that setting it can be refused with the reason).
func ParseMode(s string) (Mode, error) {
	for i, name := range modeNames {
		if name == s {
			return Mode(i), nil
		}
	}
	return 0, fmt.Errorf("unknown MDM authority %q: use intune, office365 or coexistence", s)
}

// String returns the mode's name.
func (m Mode) String() string {
	if int(m) < len(modeNames) {
		return modeNames[m]
	}
	return fmt.Sprintf("mode(%d)", m)
}

// MarshalText implements encoding.TextMarshaler for JSON.
func (m Mode) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler for JSON.
func (m *Mode) UnmarshalText(b []byte) error {
	v, err := ParseMode(string(b))
	*m = v
	return err
}

// Errors of the tenant's authority rules. Each says what to do.
var (
	ErrAuthorityNotSet  = errors.New("the MDM authority is not set: set it with 'mdm-broker authority set intune|office365|coexistence' before enrolling devices")
	ErrBackToUnknown    = errors.New("the MDM authority can never be set back to unknown: choose intune, office365 or coexistence")
	ErrSameAuthority    = errors.New("the MDM authority already has that value")
	ErrConsentRequired  = errors.New("uploading an APNs certificate shares data with Apple: repeat the request with consent (--consent) to record it")
	ErrNotCoexistence   = errors.New("licenses decide a user's authority only in coexistence mode: set the authority to coexistence first")
	ErrUnsupported      = errors.New("not supported by that MDM authority")
	ErrInvalidAuthority = errors.New("authority must be intune or office365")
)

// AuthorityChange is one change of the tenant's MDM authority.
type AuthorityChange struct {
	Epoch uint64    `json:"epoch"`
	From  Mode      `json:"from"`
	To    Mode      `json:"to"`
	At    time.Time `json:"at,omitzero"`
}

// Consent records an admin's consent to share data with Apple or Google.
type Consent struct {
	// Kind is what the consent covers, such as "apns".
	Kind string `json:"kind"`
	// Authority is the authority the consent was given for.
	Authority protocol.Authority `json:"authority"`
	At        time.Time          `json:"at,omitzero"`
}

// License is a user's license in coexistence mode: one with Intune (or
// EMS) is managed by Intune, any other user by Office 365 MDM.
type License struct {
	Intune bool `json:"intune"`
	// ChangedAt is when the license last changed the user's authority: the
	// start of that user's retention period.
	ChangedAt time.Time `json:"changed_at,omitzero"`
}

// Tenant is the tenant's authority state. Its methods enforce the rules
// and change only the value they are called on; the service persists it.
type Tenant struct {
	Mode    Mode              `json:"mode"`
	Epoch   uint64            `json:"epoch"`
	Changes []AuthorityChange `json:"changes"`
	// APNs records, per authority, when its APNs certificate was uploaded.
	APNs     map[protocol.Authority]time.Time `json:"apns,omitzero"`
	Consents []Consent                        `json:"consents"`
	Licenses map[string]License               `json:"licenses"`
	// Revision numbers the desired state: it grows with every change that
	// can change any device's desired profiles, so a device's desired
	// version is monotonic.
	Revision uint64 `json:"revision"`
}

// SetMode changes the tenant's authority setting and records the change.
func (t *Tenant) SetMode(m Mode, now time.Time) (AuthorityChange, error) {
	switch {
	case m == ModeUnknown:
		return AuthorityChange{}, ErrBackToUnknown
	case m > ModeCoexistence:
		return AuthorityChange{}, fmt.Errorf("set authority: %w", ErrInvalidAuthority)
	case m == t.Mode:
		return AuthorityChange{}, fmt.Errorf("set authority %s: %w", m, ErrSameAuthority)
	}
	t.Epoch++
	c := AuthorityChange{Epoch: t.Epoch, From: t.Mode, To: m, At: now}
	t.Changes = append(t.Changes, c)
	t.Mode = m
	t.Revision++
	return c, nil
}

// ChangedAt returns when the authority last changed; zero if never.
func (t *Tenant) ChangedAt() time.Time {
	if len(t.Changes) == 0 {
		return time.Time{}
	}
	return t.Changes[len(t.Changes)-1].At
}

// AuthorityFor returns the authority that manages the devices of user
// ("" for a userless device) under the current setting.
func (t *Tenant) AuthorityFor(user string) protocol.Authority {
	switch t.Mode {
	case ModeIntune:
		return protocol.AuthorityIntune
	case ModeOffice365:
		return protocol.AuthorityOffice365
	case ModeCoexistence:
		if t.Licenses[user].Intune && user != "" {
			return protocol.AuthorityIntune
		}
		return protocol.AuthorityOffice365
	}
	return protocol.AuthorityUnknown
}

// SinceFor returns when user's devices last had their authority decided
// anew: the user's license change in coexistence when later than the
// tenant's last change, else the tenant's last change.
func (t *Tenant) SinceFor(user string) time.Time {
	since := t.ChangedAt()
	if t.Mode == ModeCoexistence {
		if l, ok := t.Licenses[user]; ok && l.ChangedAt.After(since) {
			since = l.ChangedAt
		}
	}
	return since
}

// SetLicense records whether user has an Intune license and reports
// whether that changed anything. In coexistence the license moves the
// user's devices to the authority it gives.
func (t *Tenant) SetLicense(user string, intune bool, now time.Time) (bool, error) {
	if t.Mode != ModeCoexistence {
		return false, ErrNotCoexistence
	}
	if user == "" {
		return false, errors.New("set license: a user is required")
	}
	if t.Licenses == nil {
		t.Licenses = map[string]License{}
	}
	old, ok := t.Licenses[user]
	if ok && old.Intune == intune || !ok && !intune {
		return false, nil // no license is an Office 365 user already
	}
	t.Licenses[user] = License{Intune: intune, ChangedAt: now}
	t.Revision++
	return true, nil
}

// UploadAPNs records the APNs certificate of authority a, which requires
// the admin's consent to share data with Apple; the consent is recorded.
func (t *Tenant) UploadAPNs(a protocol.Authority, consent bool, now time.Time) error {
	if a != protocol.AuthorityIntune && a != protocol.AuthorityOffice365 {
		return fmt.Errorf("upload APNs certificate: %w", ErrInvalidAuthority)
	}
	if !consent {
		return ErrConsentRequired
	}
	if t.APNs == nil {
		t.APNs = map[protocol.Authority]time.Time{}
	}
	t.APNs[a] = now
	t.Consents = append(t.Consents, Consent{Kind: "apns", Authority: a, At: now})
	return nil
}

// HasAPNs reports whether authority a has an APNs certificate.
func (t *Tenant) HasAPNs(a protocol.Authority) bool {
	_, ok := t.APNs[a]
	return ok
}

// Supports reports whether authority a supports profiles of type typ.
// Office 365 MDM supports a subset: email, configuration (device security)
// and compliance; Intune supports every type.
func Supports(a protocol.Authority, typ protocol.ProfileType) bool {
	switch a {
	case protocol.AuthorityIntune:
		return typ.Valid()
	case protocol.AuthorityOffice365:
		return typ == protocol.ProfileEmail || typ == protocol.ProfileConfiguration || typ == protocol.ProfileCompliance
	}
	return false
}

// SupportsCommand reports whether authority a supports the action. Office
// 365 MDM supports wipe and retire, and a sync is a check-in request that
// every authority supports; Intune supports every action.
func SupportsCommand(a protocol.Authority, action protocol.CommandKind) bool {
	switch a {
	case protocol.AuthorityIntune:
		return action.Valid()
	case protocol.AuthorityOffice365:
		return action == protocol.CommandWipe || action == protocol.CommandRetire || action == protocol.CommandSync
	}
	return false
}
