package agent

import (
	"fmt"
	"time"

	"github.com/mdm-authority/mdm/protocol"
)

// Status is what `mdm-agent status` shows: the device's management state
// as the agent knows it.
type Status struct {
	Device         string                  `json:"device"`
	Tenant         string                  `json:"tenant"`
	Platform       protocol.Platform       `json:"platform"`
	User           string                  `json:"user,omitempty"`
	EnrollmentType protocol.EnrollmentType `json:"enrollment_type"`
	Broker         string                  `json:"broker"`
	EnrolledAt     time.Time               `json:"enrolled_at"`
	// Running reports whether the status came from a running agent; a
	// status read from the state file alone cannot say whether it is
	// connected.
	Running   bool `json:"running"`
	Connected bool `json:"connected"`
	// RejectedMessages counts, by reason, the messages from the service
	// that the running agent dropped since it started: malformed,
	// unsupported_version, invalid, wrong_topic, device_mismatch, other,
	// or one of the core's Ignored... reasons.
	RejectedMessages map[string]uint64 `json:"rejected_messages,omitempty"`

	Authority         protocol.Authority `json:"authority"`
	Epoch             uint64             `json:"epoch"`
	AuthoritySince    time.Time          `json:"authority_since"`
	PreviousAuthority protocol.Authority `json:"previous_authority,omitempty"`
	ChangedAt         time.Time          `json:"authority_changed_at,omitzero"`

	LastCheckIn  time.Time          `json:"last_checkin,omitzero"`
	LastAttempt  time.Time          `json:"last_attempt,omitzero"`
	LastError    protocol.ErrorCode `json:"last_error,omitempty"`
	LastMessage  string             `json:"last_message,omitempty"`
	NextCheckIn  time.Time          `json:"next_checkin,omitzero"`
	CheckIns     uint64             `json:"checkins"`
	FailedChecks uint64             `json:"failed_checkins"`

	Profiles   []Profile           `json:"profiles"`
	Redundant  []Pair              `json:"redundant,omitempty"`
	Gaps       []Gap               `json:"gaps,omitempty"`
	Compliance protocol.Compliance `json:"compliance"`

	CertificateNotAfter time.Time `json:"certificate_not_after"`
	CertificateExpired  bool      `json:"certificate_expired"`

	// LastChanges are the profile changes of the last check-in or expiry
	// that changed anything.
	LastChanges     []Change        `json:"last_changes,omitempty"`
	PendingCommands []CommandRecord `json:"pending_commands,omitempty"`
	Lock            *Lock           `json:"lock,omitempty"`
	Stopped         string          `json:"stopped,omitempty"`
	// Attention lists what a person should act on, each with what to do.
	Attention []string `json:"attention,omitempty"`
}

// StatusOf describes a state at now. The runner adds Running and
// Connected.
func StatusOf(st *State, now time.Time) Status {
	s := Status{
		Device: st.Device, Tenant: st.Tenant, Platform: st.Platform, User: st.User,
		EnrollmentType: st.EnrollmentType, Broker: st.Broker, EnrolledAt: st.EnrolledAt,
		Authority: st.Authority, Epoch: st.Epoch, AuthoritySince: st.AuthoritySince,
		PreviousAuthority: st.PreviousAuthority, ChangedAt: st.ChangedAt,
		LastCheckIn: st.LastCheckIn, LastAttempt: st.LastAttempt, LastError: st.LastError,
		LastMessage: st.LastMessage, NextCheckIn: st.NextCheckIn, CheckIns: st.CheckIns,
		FailedChecks: st.FailedChecks,
		Profiles:     st.Profiles, Redundant: Redundant(st.Profiles, st.Authority),
		Gaps: Gaps(st.Profiles, st.Authority), Compliance: st.Compliance,
		CertificateNotAfter: st.CertNotAfter, CertificateExpired: !now.Before(st.CertNotAfter),
		Lock: st.Lock, Stopped: st.Stopped, LastChanges: st.LastChangeLog,
	}
	if s.Profiles == nil {
		s.Profiles = []Profile{}
	}
	for _, r := range st.Commands {
		if r.Status == 0 || !r.Sent {
			s.PendingCommands = append(s.PendingCommands, r)
		}
	}
	switch {
	case st.Stopped != "":
		s.Attention = append(s.Attention, fmt.Sprintf("the device was %s and is no longer managed; enroll it again to manage it", st.Stopped))
	case s.CertificateExpired:
		s.NextCheckIn = time.Time{}
		s.Attention = append(s.Attention, fmt.Sprintf("the MDM certificate expired on %s, so the agent no longer checks in; re-enroll: mdm-agent unenroll --force, then mdm-agent enroll", st.CertNotAfter.Local().Format("2006-01-02 15:04:05")))
	case st.LastError != protocol.CodeNone:
		s.Attention = append(s.Attention, fmt.Sprintf("the last check-in was refused (%s): %s", st.LastError, st.LastError.Hint()))
	case st.LastMessage != "":
		s.Attention = append(s.Attention, "the last check-in failed: "+st.LastMessage+"; the agent retries with backoff")
	}
	for _, g := range s.Gaps {
		s.Attention = append(s.Attention, fmt.Sprintf("protection gap: %s has no %s profile; the retained %q of %s goes on %s",
			st.Authority, g.Profile.Type, g.Profile.Name, g.Profile.Authority, g.At.Local().Format("2006-01-02 15:04:05")))
	}
	return s
}

// Status describes the core's state at now.
func (c *Core) Status(now time.Time) Status {
	s := StatusOf(c.st, now)
	s.Running, s.Connected = true, c.online
	return s
}
