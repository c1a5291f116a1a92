package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/mdm-authority/mdm/protocol"
)

// StateVersion is the version of the state file format this agent writes.
const StateVersion = 1

// State is everything the agent keeps between runs. The runner writes it
// atomically after every step that changes it, so a crash leaves the
// previous or the next state, never a mix.
type State struct {
	Version int `json:"version"`

	// Identity, from enrollment.
	Tenant         string                  `json:"tenant"`
	Device         string                  `json:"device"`
	Platform       protocol.Platform       `json:"platform"`
	User           string                  `json:"user,omitempty"`
	EnrollmentType protocol.EnrollmentType `json:"enrollment_type"`
	Name           string                  `json:"name,omitempty"`
	Broker         string                  `json:"broker"`
	EnrolledAt     time.Time               `json:"enrolled_at"`
	// Certificate is the device's MDM certificate, DER; its private key is
	// kept in its own owner-only file beside the state.
	Certificate   []byte    `json:"certificate"`
	CertNotAfter  time.Time `json:"cert_not_after"`
	CACertificate []byte    `json:"ca_certificate,omitempty"`
	// ConnectToken is the device's MQTT password where it connects without
	// its certificate (a plain-TCP listener, the simulator's in-process
	// transport); it goes with Certificate and changes with it.
	ConnectToken string `json:"connect_token,omitempty"`
	// RenewalCSR is a signing request for the device's key, sent inside the
	// renewal window.
	RenewalCSR []byte `json:"renewal_csr,omitempty"`

	// Authority, as the service last answered.
	Authority         protocol.Authority `json:"authority"`
	Epoch             uint64             `json:"epoch"`
	ChangedAt         time.Time          `json:"changed_at,omitzero"`
	PreviousAuthority protocol.Authority `json:"previous_authority,omitempty"`
	// AuthoritySince is when this device adopted its authority.
	AuthoritySince time.Time `json:"authority_since"`
	DesiredVersion uint64    `json:"desired_version"`
	Profiles       []Profile `json:"profiles"`

	Compliance protocol.Compliance `json:"compliance"`
	OSVersion  string              `json:"os_version,omitempty"`

	// Check-in history and schedule.
	LastCheckIn   time.Time          `json:"last_checkin,omitzero"`
	LastAttempt   time.Time          `json:"last_attempt,omitzero"`
	LastError     protocol.ErrorCode `json:"last_error,omitempty"`
	LastMessage   string             `json:"last_message,omitempty"`
	Failures      int                `json:"failures,omitempty"`
	NextCheckIn   time.Time          `json:"next_checkin"`
	CheckIns      uint64             `json:"checkins"`
	FailedChecks  uint64             `json:"failed_checkins,omitempty"`
	Commands      []CommandRecord    `json:"commands,omitempty"`
	Lock          *Lock              `json:"lock,omitempty"`
	Stopped       string             `json:"stopped,omitempty"`
	LastChangeLog []Change           `json:"last_changes,omitempty"`
}

// CommandRecord is a command the device received and what it did with it.
// Records are kept for a while after their result went out, so that a
// command delivered twice runs once.
type CommandRecord struct {
	ID       string               `json:"id"`
	Action   protocol.CommandKind `json:"action"`
	Message  string               `json:"message,omitempty"`
	Received time.Time            `json:"received"`
	// Status is zero while the command runs (a remote lock's hook).
	Status    protocol.CommandStatus `json:"status,omitempty"`
	Completed time.Time              `json:"completed,omitzero"`
	Error     string                 `json:"error,omitempty"`
	// Sent reports whether the broker acknowledged the result.
	Sent bool `json:"sent"`
}

// Lock records the last remote lock.
type Lock struct {
	At      time.Time `json:"at"`
	Message string    `json:"message,omitempty"`
	Command string    `json:"command"`
}

// Ways the agent stops being managed.
const (
	StoppedWiped      = "wiped"
	StoppedRetired    = "retired"
	StoppedUnenrolled = "unenrolled"
)

// maxStateSize bounds a state file: 256 profiles with their settings fit
// with room to spare.
const maxStateSize = 4 << 20

// ErrStateVersion means the state file was written by another version of
// the agent.
var ErrStateVersion = errors.New("state file version not supported")

// DecodeState parses and checks a state file. It is strict
// (protocol.DecodeJSON): a repeated key, unknown field or deep nesting
// means the file is not one this agent wrote, and it refuses it rather
// than guess which value counts.
func DecodeState(b []byte) (*State, error) {
	if len(b) > maxStateSize {
		return nil, fmt.Errorf("state file is %d bytes, more than the %d an agent writes: it is not an agent state file", len(b), maxStateSize)
	}
	var st State
	if err := protocol.DecodeJSON(b, maxStateSize, &st); err != nil {
		// A file of another version may well have fields this one does
		// not know: say so rather than name the first unknown field.
		if v, ok := stateVersion(b); ok && v != StateVersion {
			return nil, fmt.Errorf("state file version %d (this agent reads %d): %w", v, StateVersion, ErrStateVersion)
		}
		return nil, fmt.Errorf("state file: %w", err)
	}
	if st.Version != StateVersion {
		return nil, fmt.Errorf("state file version %d (this agent reads %d): %w", st.Version, StateVersion, ErrStateVersion)
	}
	if err := st.validate(); err != nil {
		return nil, fmt.Errorf("state file: %w", err)
	}
	sortProfiles(st.Profiles)
	return &st, nil
}

// stateVersion returns the version of a state file whose JSON is sound
// but whose fields may be another version's.
func stateVersion(b []byte) (int, bool) {
	var fields map[string]json.RawMessage
	if protocol.DecodeJSON(b, maxStateSize, &fields) != nil {
		return 0, false
	}
	var v int
	if json.Unmarshal(fields["version"], &v) != nil {
		return 0, false
	}
	return v, true
}

// Encode returns the state as the runner writes it.
func (st *State) Encode() ([]byte, error) {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

func (st *State) validate() error {
	if err := protocol.ValidID(st.Tenant); err != nil {
		return fmt.Errorf("tenant: %w", err)
	}
	if err := protocol.ValidID(st.Device); err != nil {
		return fmt.Errorf("device: %w", err)
	}
	if !st.Platform.Valid() {
		return errors.New("platform missing")
	}
	if st.Stopped == "" && (len(st.Certificate) == 0 || st.CertNotAfter.IsZero()) {
		return errors.New("certificate missing")
	}
	if len(st.Profiles) > protocol.MaxProfiles {
		return fmt.Errorf("%d profiles, at most %d", len(st.Profiles), protocol.MaxProfiles)
	}
	for _, p := range st.Profiles {
		if !p.Type.Valid() || p.Name == "" || !p.Authority.Valid() {
			return fmt.Errorf("profile %q: type, name and authority are required", p.Name)
		}
	}
	return st.validateTimes()
}

// validateTimes checks that every time in the state is unset or one the
// protocol can carry (years 1970 to 9999): the agent sends them, and only
// a damaged or forged file holds others.
func (st *State) validateTimes() error {
	check := func(field string, t time.Time) error {
		if t.IsZero() || !t.Before(time.Unix(0, 0)) && !t.After(protocol.MaxTimestamp.Time()) {
			return nil
		}
		return fmt.Errorf("%s %s is outside years 1970 to 9999", field, t.Format(time.RFC3339))
	}
	profile := func(field string, p Profile) error {
		return errors.Join(check(field+".installed_at", p.InstalledAt), check(field+".retain_until", p.RetainUntil))
	}
	errs := []error{
		check("enrolled_at", st.EnrolledAt), check("cert_not_after", st.CertNotAfter), check("changed_at", st.ChangedAt),
		check("authority_since", st.AuthoritySince), check("last_checkin", st.LastCheckIn),
		check("last_attempt", st.LastAttempt), check("next_checkin", st.NextCheckIn),
	}
	for i, p := range st.Profiles {
		errs = append(errs, profile(fmt.Sprintf("profiles[%d]", i), p))
	}
	for i, r := range st.Commands {
		errs = append(errs, check(fmt.Sprintf("commands[%d].received", i), r.Received), check(fmt.Sprintf("commands[%d].completed", i), r.Completed))
	}
	if st.Lock != nil {
		errs = append(errs, check("lock.at", st.Lock.At))
	}
	for i, c := range st.LastChangeLog {
		errs = append(errs, profile(fmt.Sprintf("last_changes[%d].profile", i), c.Profile))
		if c.Replaced != nil {
			errs = append(errs, profile(fmt.Sprintf("last_changes[%d].replaced", i), *c.Replaced))
		}
	}
	for _, err := range errs {
		if err != nil {
			return err // the first says enough
		}
	}
	return nil
}
