package protocol

import (
	"encoding/json"
	"fmt"
	"slices"
	"time"
)

// Timestamp is a point in time on the wire: milliseconds since the Unix
// epoch, UTC. Zero means "not set".
type Timestamp int64

// At returns the timestamp of t, truncated to the millisecond. The zero
// time gives the zero timestamp.
func At(t time.Time) Timestamp {
	if t.IsZero() {
		return 0
	}
	return Timestamp(t.UnixMilli())
}

// Time returns the timestamp as a time.Time in UTC; the zero timestamp
// gives the zero time.
func (ts Timestamp) Time() time.Time {
	if ts == 0 {
		return time.Time{}
	}
	return time.UnixMilli(int64(ts)).UTC()
}

// IsZero reports whether the timestamp is not set.
func (ts Timestamp) IsZero() bool { return ts == 0 }

// MarshalText writes the timestamp as RFC 3339 text for JSON, "" when
// not set. The wire encoding stays the integer.
func (ts Timestamp) MarshalText() ([]byte, error) {
	if ts == 0 {
		return []byte{}, nil
	}
	return []byte(ts.Time().Format(time.RFC3339Nano)), nil
}

// UnmarshalText reads RFC 3339 text; "" is the zero timestamp.
func (ts *Timestamp) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		*ts = 0
		return nil
	}
	t, err := time.Parse(time.RFC3339Nano, string(b))
	if err != nil {
		return fmt.Errorf("timestamp: %w", err)
	}
	*ts = At(t)
	return nil
}

// Body is the payload of an envelope: one of the message types of this
// package. The set is closed: other packages cannot add kinds.
type Body interface {
	// Kind returns the message kind the body is sent as.
	Kind() Kind
	validate(v *validator)
}

// EnrollRequest asks the service for an identity. The device generates its
// private key, keeps it, and sends only a certificate signing request.
type EnrollRequest struct {
	// CSR is a PKCS#10 certificate signing request, DER.
	CSR []byte `cbor:"1,keyasint"`
	// Token is the tenant's enrollment token.
	Token string `cbor:"2,keyasint"`
	// Platform is the device's operating system family.
	Platform Platform `cbor:"3,keyasint"`
	// OSVersion is the operating system version, such as "17.4".
	OSVersion string `cbor:"4,keyasint,omitempty"`
	// User is the user principal name of the enrolling user; empty for a
	// userless device.
	User string `cbor:"5,keyasint,omitempty"`
	// Type is how the device enrolls. EnrollUser requires User.
	Type EnrollmentType `cbor:"6,keyasint"`
	// Name is a display name for the device, such as its host name.
	Name string `cbor:"7,keyasint,omitempty"`
}

// Kind implements Body.
func (*EnrollRequest) Kind() Kind { return KindEnrollRequest }

func (m *EnrollRequest) validate(v *validator) {
	v.bytes("csr", m.CSR, 1, MaxCSR)
	v.text("token", m.Token, 1, MaxTokenLen)
	v.enum("platform", m.Platform.Valid())
	v.text("os_version", m.OSVersion, 0, MaxShortText)
	v.text("user", m.User, 0, MaxUserLen)
	v.enum("type", m.Type.Valid())
	if m.Type == EnrollUser && m.User == "" {
		v.fail("user", "required for a user enrollment")
	}
	v.text("name", m.Name, 0, MaxNameLen)
}

// EnrollResponse answers an EnrollRequest: either an identity or an error.
type EnrollResponse struct {
	// Device is the id the service gave the device.
	Device string `cbor:"1,keyasint,omitempty"`
	// Certificate is the device's MDM certificate, DER, signed by the
	// service's CA.
	Certificate []byte `cbor:"2,keyasint,omitempty"`
	// Authority is the authority that manages the device.
	Authority Authority `cbor:"3,keyasint,omitempty"`
	// Epoch is the number of the authority change the device starts at.
	Epoch uint64 `cbor:"4,keyasint,omitempty"`
	// CACertificate is the service's CA certificate, DER, which signs the
	// device certificates and the service's TLS certificate.
	CACertificate []byte `cbor:"5,keyasint,omitempty"`
	// Error is set when enrollment was refused; the other fields are then
	// empty.
	Error ErrorCode `cbor:"6,keyasint,omitempty"`
	// Message explains Error to a person.
	Message string `cbor:"7,keyasint,omitempty"`
	// ConnectToken is the MQTT password of the device on connections
	// without a client certificate (the in-process transport, a plain-TCP
	// listener). It is bound to Certificate: a renewal replaces it.
	ConnectToken string `cbor:"8,keyasint,omitempty"`
}

// Kind implements Body.
func (*EnrollResponse) Kind() Kind { return KindEnrollResponse }

func (m *EnrollResponse) validate(v *validator) {
	v.enum("error", m.Error.Valid())
	v.text("message", m.Message, 0, MaxMessageText)
	if m.Error != CodeNone {
		if m.Device != "" || len(m.Certificate) > 0 || m.Authority != 0 || m.Epoch != 0 || len(m.CACertificate) > 0 || m.ConnectToken != "" {
			v.fail("error", "a refusal carries only error and message")
		}
		return
	}
	v.id("device", m.Device)
	v.bytes("certificate", m.Certificate, 1, MaxCertificate)
	v.bytes("ca_certificate", m.CACertificate, 0, MaxCertificate)
	v.text("connect_token", m.ConnectToken, 0, MaxTokenLen)
	if !m.Authority.Valid() || m.Authority == AuthorityUnknown {
		v.fail("authority", "must be intune or office365")
	}
}

// InstalledProfile is a profile present on a device.
type InstalledProfile struct {
	Type ProfileType `cbor:"1,keyasint" json:"type"`
	Name string      `cbor:"2,keyasint" json:"name"`
	// Authority is the authority that installed the profile; after a change
	// it tells old-authority profiles from new ones.
	Authority Authority `cbor:"3,keyasint" json:"authority"`
	Version   uint64    `cbor:"4,keyasint" json:"version"`
	// RetainUntil is set on an old-authority profile kept through a change:
	// the device removes it at that time.
	RetainUntil Timestamp `cbor:"5,keyasint,omitempty" json:"retain_until,omitempty"`
}

// Compliance is a device's own evaluation of its compliance and
// configuration profiles.
type Compliance struct {
	State ComplianceState `cbor:"1,keyasint" json:"state"`
	// EvaluatedAt is when the device evaluated; zero if it never did.
	EvaluatedAt Timestamp `cbor:"2,keyasint,omitempty" json:"evaluated_at,omitempty"`
	// Failures lists the settings that failed, one line each, such as
	// "min_os_version: 17.0 required, device has 16.7".
	Failures []string `cbor:"3,keyasint,omitempty" json:"failures,omitempty"`
}

func (c *Compliance) validate(v *validator) {
	v.enum("compliance.state", c.State.Valid())
	v.time("compliance.evaluated_at", c.EvaluatedAt, false)
	v.count("compliance.failures", len(c.Failures), MaxFailures)
	for _, f := range c.Failures {
		v.text("compliance.failures[]", f, 1, MaxMessageText)
	}
}

// CheckIn is a device's report of its state and its request for what the
// service wants it to have.
type CheckIn struct {
	// Reason says what made the device check in.
	Reason CheckInReason `cbor:"1,keyasint"`
	// Profiles lists every profile installed on the device.
	Profiles []InstalledProfile `cbor:"2,keyasint,omitempty"`
	// Compliance is the latest evaluation on the device.
	Compliance Compliance `cbor:"3,keyasint"`
	// CertificateExpiry is the NotAfter of the device's MDM certificate.
	CertificateExpiry Timestamp `cbor:"4,keyasint"`
	// DesiredVersion is the version of the desired state the device has
	// applied; 0 before the first.
	DesiredVersion uint64 `cbor:"5,keyasint,omitempty"`
	// Epoch is the authority epoch the device knows.
	Epoch uint64 `cbor:"6,keyasint,omitempty"`
	// OSVersion is the operating system version now.
	OSVersion string `cbor:"7,keyasint,omitempty"`
	// RenewalCSR asks for a renewed certificate for the same key or a new
	// one; the device sends it inside the renewal window.
	RenewalCSR []byte `cbor:"8,keyasint,omitempty"`
}

// Kind implements Body.
func (*CheckIn) Kind() Kind { return KindCheckIn }

func (m *CheckIn) validate(v *validator) {
	v.enum("reason", m.Reason.Valid())
	v.count("profiles", len(m.Profiles), MaxProfiles)
	for i := range m.Profiles {
		p := &m.Profiles[i]
		v.enum("profiles[].type", p.Type.Valid())
		v.text("profiles[].name", p.Name, 1, MaxNameLen)
		if !p.Authority.Valid() || p.Authority == AuthorityUnknown {
			v.fail("profiles[].authority", "must be intune or office365")
		}
		v.time("profiles[].retain_until", p.RetainUntil, false)
	}
	v.unique("profiles", len(m.Profiles), func(i int) profileKey {
		p := &m.Profiles[i]
		return profileKey{p.Type, p.Authority, p.Name}
	})
	m.Compliance.validate(v)
	v.time("certificate_expiry", m.CertificateExpiry, true)
	v.text("os_version", m.OSVersion, 0, MaxShortText)
	v.bytes("renewal_csr", m.RenewalCSR, 0, MaxCSR)
}

// DesiredProfile is a profile the service wants on a device.
type DesiredProfile struct {
	Type    ProfileType `cbor:"1,keyasint" json:"type"`
	Name    string      `cbor:"2,keyasint" json:"name"`
	Version uint64      `cbor:"3,keyasint" json:"version"`
	// Settings are the profile's settings. Compliance and configuration
	// profiles use the keys listed in the specification.
	Settings Settings `cbor:"4,keyasint,omitzero" json:"settings,omitempty"`
}

// Setting is one setting of a profile.
type Setting struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

// Settings are a profile's settings, on the wire a CBOR map from text to
// text. A slice rather than a Go map: it keeps the order the sender chose
// (sorted, from a deterministic sender) and costs no hashing on the hot
// path. Keys are unique.
type Settings []Setting

// MarshalJSON writes the settings as a JSON object, in their order.
func (s Settings) MarshalJSON() ([]byte, error) {
	var b []byte
	b = append(b, '{')
	for i, kv := range s {
		if i > 0 {
			b = append(b, ',')
		}
		k, _ := json.Marshal(kv.Key)
		v, _ := json.Marshal(kv.Value)
		b = append(append(append(b, k...), ':'), v...)
	}
	return append(b, '}'), nil
}

// UnmarshalJSON reads a JSON object of text values, in core deterministic
// key order (shorter keys first, then bytewise), as the encoding sends them.
func (s *Settings) UnmarshalJSON(b []byte) error {
	var m map[string]string
	if err := json.Unmarshal(b, &m); err != nil {
		return fmt.Errorf("settings: want an object of text values: %w", err)
	}
	out := make(Settings, 0, len(m))
	for k, v := range m {
		out = append(out, Setting{Key: k, Value: v})
	}
	slices.SortFunc(out, func(a, b Setting) int {
		if keyLess(a.Key, b.Key) {
			return -1
		}
		if keyLess(b.Key, a.Key) {
			return 1
		}
		return 0
	})
	*s = out
	return nil
}

// IsZero reports whether there are no settings; the encoding then leaves
// the field out.
func (s Settings) IsZero() bool { return len(s) == 0 }

// Get returns the value of key and whether it is set.
func (s Settings) Get(key string) (string, bool) {
	for _, kv := range s {
		if kv.Key == key {
			return kv.Value, true
		}
	}
	return "", false
}

// MarshalCBOR encodes the settings as a CBOR map with the keys in core
// deterministic order, as the codec's fast path does; it serves the CBOR
// library's reflection codec, which the tests compare the fast path with.
func (s Settings) MarshalCBOR() ([]byte, error) {
	var w writer
	w.settings(s)
	return w.b, nil
}

// UnmarshalCBOR decodes a CBOR map from text to text, as the fast path
// does; a duplicate key is an error.
func (s *Settings) UnmarshalCBOR(data []byte) error {
	r := reader{b: data}
	v, err := r.appendSettings(nil)
	*s = v
	return err
}

// CheckInResponse answers a CheckIn.
type CheckInResponse struct {
	// Authority manages the device from now on.
	Authority Authority `cbor:"1,keyasint,omitempty"`
	// Epoch numbers the tenant's authority changes; it only grows.
	Epoch uint64 `cbor:"2,keyasint,omitempty"`
	// ChangedAt is when the authority last changed; zero if it never did.
	ChangedAt Timestamp `cbor:"3,keyasint,omitempty"`
	// DesiredVersion is the version of the desired state. When it equals
	// the version the device reported, Profiles is empty and means
	// "unchanged"; when it is greater, Profiles is the complete desired set.
	// A device ignores a response whose version is lower than its own.
	DesiredVersion uint64 `cbor:"4,keyasint,omitempty"`
	// Profiles is the complete desired set when DesiredVersion is new.
	Profiles []DesiredProfile `cbor:"5,keyasint,omitempty"`
	// RetainUntil is the deadline for old-authority profiles that have no
	// successor: ChangedAt plus the retention period. Zero when no change
	// is in its retention period.
	RetainUntil Timestamp `cbor:"6,keyasint,omitempty"`
	// Commands are the commands pending for the device.
	Commands []Command `cbor:"7,keyasint,omitempty"`
	// NextCheckIn hints at the seconds until the next scheduled check-in;
	// zero leaves the device's own schedule in charge.
	NextCheckIn uint32 `cbor:"8,keyasint,omitempty"`
	// Certificate is a renewed MDM certificate, DER, when the check-in
	// carried a renewal CSR inside the renewal window.
	Certificate []byte `cbor:"9,keyasint,omitempty"`
	// Error is set when the check-in was refused; the device keeps its
	// state and retries on its schedule.
	Error ErrorCode `cbor:"10,keyasint,omitempty"`
	// Message explains Error to a person.
	Message string `cbor:"11,keyasint,omitempty"`
	// ConnectToken replaces the device's MQTT password for connections
	// without a client certificate; it comes with a renewed Certificate.
	ConnectToken string `cbor:"12,keyasint,omitempty"`
}

// Kind implements Body.
func (*CheckInResponse) Kind() Kind { return KindCheckInResponse }

func (m *CheckInResponse) validate(v *validator) {
	v.enum("error", m.Error.Valid())
	v.text("message", m.Message, 0, MaxMessageText)
	if m.Error != CodeNone {
		if m.Authority != 0 || m.Epoch != 0 || m.ChangedAt != 0 || m.DesiredVersion != 0 ||
			len(m.Profiles) > 0 || m.RetainUntil != 0 || len(m.Commands) > 0 || m.NextCheckIn != 0 ||
			len(m.Certificate) > 0 || m.ConnectToken != "" {
			v.fail("error", "a refusal carries only error and message")
		}
		return
	}
	if !m.Authority.Valid() || m.Authority == AuthorityUnknown {
		v.fail("authority", "must be intune or office365")
	}
	v.time("changed_at", m.ChangedAt, false)
	v.time("retain_until", m.RetainUntil, false)
	v.count("profiles", len(m.Profiles), MaxProfiles)
	settings := 0
	for i := range m.Profiles {
		p := &m.Profiles[i]
		v.enum("profiles[].type", p.Type.Valid())
		v.text("profiles[].name", p.Name, 1, MaxNameLen)
		v.settings(p.Settings)
		settings += len(p.Settings)
	}
	v.count("profiles[].settings in all", settings, MaxSettingsTotal)
	v.unique("profiles", len(m.Profiles), func(i int) profileKey {
		return profileKey{typ: m.Profiles[i].Type, name: m.Profiles[i].Name}
	})
	v.count("commands", len(m.Commands), MaxCommands)
	for i := range m.Commands {
		m.Commands[i].validate(v)
	}
	if m.NextCheckIn > MaxNextCheckIn {
		v.fail("next_checkin", "longer than 7 days")
	}
	v.bytes("certificate", m.Certificate, 0, MaxCertificate)
	v.text("connect_token", m.ConnectToken, 0, MaxTokenLen)
	if m.ConnectToken != "" && len(m.Certificate) == 0 {
		v.fail("connect_token", "comes only with a renewed certificate")
	}
}

// Push asks a device to check in now. Like APNs and WNS it is best effort:
// a device that is offline misses it and catches up on its schedule.
type Push struct {
	// Epoch is the tenant's current authority epoch.
	Epoch uint64 `cbor:"1,keyasint,omitempty"`
	// Reason is informational; the device checks in the same way.
	Reason PushReason `cbor:"2,keyasint,omitempty"`
}

// Kind implements Body.
func (*Push) Kind() Kind { return KindPush }

func (m *Push) validate(v *validator) { v.enum("reason", m.Reason.Valid()) }

// Command asks a device to perform a remote action. It arrives on its own
// on the downlink topic or inside a CheckInResponse; a device carries out
// each id once.
type Command struct {
	ID     string      `cbor:"1,keyasint" json:"id"`
	Action CommandKind `cbor:"2,keyasint" json:"action"`
	// Issued is when the admin sent the command.
	Issued Timestamp `cbor:"3,keyasint,omitempty" json:"issued,omitempty"`
	// Message is shown on the lock screen for a remote lock.
	Message string `cbor:"4,keyasint,omitempty" json:"message,omitempty"`
}

// Kind implements Body.
func (*Command) Kind() Kind { return KindCommand }

func (c *Command) validate(v *validator) {
	v.id("command.id", c.ID)
	v.enum("command.action", c.Action.Valid())
	v.time("command.issued", c.Issued, false)
	v.text("command.message", c.Message, 0, MaxMessageText)
}

// CommandResult reports what a device did with a command. A device sends
// it once per command id; the service applies it once even if it arrives
// twice.
type CommandResult struct {
	ID     string        `cbor:"1,keyasint"`
	Status CommandStatus `cbor:"2,keyasint"`
	// Completed is when the device finished the command.
	Completed Timestamp `cbor:"3,keyasint,omitempty"`
	// Error explains a failed or rejected command.
	Error string `cbor:"4,keyasint,omitempty"`
}

// Kind implements Body.
func (*CommandResult) Kind() Kind { return KindCommandResult }

func (m *CommandResult) validate(v *validator) {
	v.id("id", m.ID)
	v.enum("status", m.Status.Valid())
	v.time("completed", m.Completed, false)
	v.text("error", m.Error, 0, MaxMessageText)
}

// ComplianceReport sends a fresh compliance evaluation outside a check-in.
type ComplianceReport struct {
	Compliance Compliance `cbor:"1,keyasint"`
	// OSVersion is the operating system version the evaluation used.
	OSVersion string `cbor:"2,keyasint,omitempty"`
}

// Kind implements Body.
func (*ComplianceReport) Kind() Kind { return KindComplianceReport }

func (m *ComplianceReport) validate(v *validator) {
	m.Compliance.validate(v)
	v.text("os_version", m.OSVersion, 0, MaxShortText)
}

// Unenroll tells the service that the device checks out of management. The
// service stops managing it; the device removes its MDM profiles.
type Unenroll struct {
	// Reason is free text for the admin, such as "user request".
	Reason string `cbor:"1,keyasint,omitempty"`
}

// Kind implements Body.
func (*Unenroll) Kind() Kind { return KindUnenroll }

func (m *Unenroll) validate(v *validator) { v.text("reason", m.Reason, 0, MaxMessageText) }
