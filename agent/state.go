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

// DecodeState parses and checks a state file.
func DecodeState(b []byte) (*State, error) {
	if len(b) > maxStateSize {
		return nil, fmt.Errorf("state file is %d bytes, more than the %d an agent writes: it is not an agent state file", len(b), maxStateSize)
	}
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
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
	return nil
}
