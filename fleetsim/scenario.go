package fleetsim

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/mdm-authority/mdm/broker"
	"github.com/mdm-authority/mdm/protocol"
)

// Scenario is the timeline of a run: what the admin does, and when,
// counted from the start of the run in virtual time. The fleet enrolls at
// the start; the first step must set the authority.
//
// As a file it is JSON:
//
//	{
//	  "name": "office365 to intune",
//	  "duration": "8d",
//	  "retention": "7d",
//	  "steps": [
//	    {"at": "0s", "action": "set_authority", "authority": "office365"},
//	    {"at": "0s", "action": "upload_apns", "authority": "office365"},
//	    {"at": "0s", "action": "add_profile", "authority": "office365", "type": "email", "name": "Corp Mail", "settings": {"server": "mail.contoso.example"}},
//	    {"at": "12h", "action": "set_authority", "authority": "intune"},
//	    {"at": "14h", "action": "upload_apns", "authority": "intune"},
//	    {"at": "7d13h", "action": "enroll_canary", "platform": "ios"},
//	    {"at": "7d13h1m", "action": "remote_lock"}
//	  ]
//	}
//
// iOS and iPadOS devices enroll only while their authority has an APNs
// certificate: a fleet with such devices needs an upload_apns step for
// the first authority at the start; otherwise the run stops at the first
// refused enrollment.
//
// Durations are Go durations with an optional leading number of days
// ("7d12h", "90m", "0s"). The actions and their fields:
//
//	set_authority   authority: intune, office365 or coexistence
//	upload_apns     authority: intune or office365 (with the admin's consent)
//	add_profile     authority, type (email, vpn, certificate, wifi,
//	                configuration, compliance), name, settings (optional)
//	rename_profile  authority, type, name, new_name: the profile is removed
//	                and added again under the new name
//	remove_profile  authority, type, name
//	set_license     user, intune (true or false): coexistence licenses
//	offline         share (0 to 1) of the fleet, for: those devices drop
//	                off the network for that long
//	enroll_canary   platform (default ios), user (default
//	                canary@contoso.example): a new device enrolls; the
//	                report says which authority it got
//	remote_lock     a remote lock for the canary, from the authority that
//	                manages it; the report says whether it was acknowledged
//	restart_broker  for (optional, default 0): the MQTT broker closes,
//	                every session drops, and it opens again after that
//	                long; devices reconnect with their backoff
//	restart_service for (optional): the same for the whole service, which
//	                starts again from its store (pending pushes are sent
//	                again)
type Scenario struct {
	Name      string   `json:"name"`
	Duration  Duration `json:"duration"`
	Retention Duration `json:"retention,omitempty"`
	Steps     []Step   `json:"steps"`
}

// Step is one admin action of a scenario; which fields it uses depends on
// Action (see Scenario).
type Step struct {
	At        Duration          `json:"at"`
	Action    string            `json:"action"`
	Authority string            `json:"authority,omitempty"`
	Type      string            `json:"type,omitempty"`
	Name      string            `json:"name,omitempty"`
	NewName   string            `json:"new_name,omitempty"`
	Settings  map[string]string `json:"settings,omitempty"`
	User      string            `json:"user,omitempty"`
	Intune    *bool             `json:"intune,omitempty"`
	Share     float64           `json:"share,omitempty"`
	For       Duration          `json:"for,omitempty"`
	Platform  string            `json:"platform,omitempty"`
}

// The actions of a step.
const (
	ActionSetAuthority  = "set_authority"
	ActionUploadAPNs    = "upload_apns"
	ActionAddProfile    = "add_profile"
	ActionRenameProfile = "rename_profile"
	ActionRemoveProfile = "remove_profile"
	ActionSetLicense    = "set_license"
	ActionOffline       = "offline"
	ActionEnrollCanary  = "enroll_canary"
	ActionRemoteLock    = "remote_lock"
	// ActionRestartBroker closes the MQTT broker and opens it again after
	// "for" (default 0): every session drops and the devices reconnect.
	ActionRestartBroker = "restart_broker"
	// ActionRestartService stops the whole service (broker, service and
	// store) and starts it again from its store after "for".
	ActionRestartService = "restart_service"
)

// Duration is a time.Duration written as text, with an optional leading
// number of days: "7d12h", "90m".
type Duration time.Duration

// ParseDuration reads a Duration: a Go duration ("12h", "1h30m") with an
// optional leading number of days ("8d", "7d12h").
func ParseDuration(s string) (Duration, error) {
	days := 0
	if i := strings.IndexByte(s, 'd'); i > 0 {
		n, err := strconv.Atoi(s[:i])
		if err != nil || n < 0 || n > 3650 {
			return 0, fmt.Errorf("duration %q: want a number of days before d, such as 7d12h", s)
		}
		days, s = n, s[i+1:]
		if s == "" {
			s = "0s"
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("duration: %w (want such as 12h, 90m or 7d12h)", err)
	}
	if d < 0 {
		return 0, fmt.Errorf("duration %q is negative", s)
	}
	return Duration(time.Duration(days)*24*time.Hour + d), nil
}

// String writes the duration with whole days first.
func (d Duration) String() string {
	t := time.Duration(d)
	days := t / (24 * time.Hour)
	rest := t - days*24*time.Hour
	switch {
	case days == 0:
		return rest.String()
	case rest == 0:
		return fmt.Sprintf("%dd", days)
	}
	return fmt.Sprintf("%dd%s", days, rest)
}

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := ParseDuration(string(b))
	*d = v
	return err
}

// MaxScenarioFile bounds the size of a scenario file.
const MaxScenarioFile = 1 << 20

// LoadScenario reads and validates a scenario file.
func LoadScenario(path string) (*Scenario, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("scenario: %w", err)
	}
	defer f.Close()
	b := make([]byte, MaxScenarioFile+1)
	n, err := readFull(f, b)
	if err != nil {
		return nil, fmt.Errorf("scenario %s: %w", path, err)
	}
	var sc Scenario
	if err := protocol.DecodeJSON(b[:n], MaxScenarioFile, &sc); err != nil {
		return nil, fmt.Errorf("scenario %s: %w", path, err)
	}
	if err := sc.Validate(); err != nil {
		return nil, fmt.Errorf("scenario %s: %w", path, err)
	}
	return &sc, nil
}

func readFull(f *os.File, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := f.Read(b[n:])
		n += m
		if err != nil {
			if errors.Is(err, os.ErrClosed) {
				return n, err
			}
			break
		}
	}
	return n, nil
}

// Validate checks the scenario and says, for the first problem, which
// step and what to write instead.
func (sc *Scenario) Validate() error {
	if sc.Duration <= 0 {
		return errors.New(`"duration" is missing: give the length of the run, such as "8d"`)
	}
	if len(sc.Steps) == 0 || sc.Steps[0].Action != ActionSetAuthority {
		return errors.New(`the first step must be "set_authority": devices cannot enroll before the authority is set`)
	}
	if len(sc.Steps) > 10000 {
		return fmt.Errorf("%d steps: at most 10,000", len(sc.Steps))
	}
	canary := false
	for i := range sc.Steps {
		s := &sc.Steps[i]
		where := fmt.Sprintf("step %d (%s at %s)", i+1, s.Action, s.At)
		if i > 0 && s.At < sc.Steps[i-1].At {
			return fmt.Errorf("%s comes before step %d (at %s): list the steps in time order", where, i, sc.Steps[i-1].At)
		}
		if s.At > sc.Duration {
			return fmt.Errorf("%s is after the end of the run (%s)", where, sc.Duration)
		}
		if err := s.validate(canary); err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		canary = canary || s.Action == ActionEnrollCanary
	}
	return nil
}

func (s *Step) validate(canary bool) error {
	authority := func(modes bool) error {
		if modes {
			if _, err := broker.ParseMode(s.Authority); err != nil || s.Authority == "unknown" {
				return fmt.Errorf(`"authority" %q: want intune, office365 or coexistence`, s.Authority)
			}
			return nil
		}
		if a, err := protocol.ParseAuthority(s.Authority); err != nil || a == protocol.AuthorityUnknown {
			return fmt.Errorf(`"authority" %q: want intune or office365`, s.Authority)
		}
		return nil
	}
	profile := func() error {
		if err := authority(false); err != nil {
			return err
		}
		if _, err := protocol.ParseProfileType(s.Type); err != nil {
			return fmt.Errorf(`"type" %q: want email, vpn, certificate, wifi, configuration or compliance`, s.Type)
		}
		if s.Name == "" || len(s.Name) > protocol.MaxNameLen {
			return fmt.Errorf(`"name" must be 1 to %d bytes`, protocol.MaxNameLen)
		}
		return nil
	}
	switch s.Action {
	case ActionSetAuthority:
		return authority(true)
	case ActionUploadAPNs:
		return authority(false)
	case ActionAddProfile, ActionRemoveProfile:
		return profile()
	case ActionRenameProfile:
		if err := profile(); err != nil {
			return err
		}
		if s.NewName == "" || s.NewName == s.Name || len(s.NewName) > protocol.MaxNameLen {
			return fmt.Errorf(`"new_name" must be a new name of 1 to %d bytes`, protocol.MaxNameLen)
		}
	case ActionSetLicense:
		if s.User == "" || s.Intune == nil {
			return errors.New(`give "user" and "intune": true or false`)
		}
	case ActionOffline:
		if s.Share <= 0 || s.Share > 1 || s.For <= 0 {
			return errors.New(`give "share" (above 0, at most 1) and "for" (such as "6h")`)
		}
	case ActionEnrollCanary:
		if s.Platform != "" {
			if _, err := protocol.ParsePlatform(s.Platform); err != nil {
				return fmt.Errorf(`"platform" %q: want ios, ipados, macos, android or windows`, s.Platform)
			}
		}
	case ActionRemoteLock:
		if !canary {
			return errors.New(`a remote lock goes to the canary: put an "enroll_canary" step before it`)
		}
	case ActionRestartBroker, ActionRestartService:
		if s.For < 0 || s.For > Duration(24*time.Hour) {
			return errors.New(`"for" is the downtime: from 0s to 24h`)
		}
	case "":
		return errors.New(`"action" is missing`)
	default:
		return fmt.Errorf(`unknown action %q: want one of set_authority, upload_apns, add_profile, rename_profile, remove_profile, set_license, offline, enroll_canary, remote_lock, restart_broker, restart_service`, s.Action)
	}
	return nil
}

// migration returns the scenario's last authority change after the first
// step, and the authority before it: the migration the report measures.
func (sc *Scenario) migration() (from, to protocol.Authority, at time.Duration, ok bool) {
	current := ""
	for i, s := range sc.Steps {
		if s.Action != ActionSetAuthority {
			continue
		}
		if i > 0 && s.Authority != current {
			f, _ := protocol.ParseAuthority(current)
			t, _ := protocol.ParseAuthority(s.Authority)
			from, to, at, ok = f, t, time.Duration(s.At), true
		}
		current = s.Authority
	}
	return from, to, at, ok
}

// DefaultScenario is the default migration: office365 with its profiles,
// settled for 12 hours; the change to intune, with profiles chosen to show
// an overwrite (Corp Mail, same type and name), a redundant pair (the
// security baseline, renamed) and a protection gap (office365's compliance
// policy, a type intune does not set here); the APNs certificate for
// intune apnsDelay after the change; the 7-day retention deadline; then a
// canary enrolls and receives a remote lock. It lasts 8 days.
func DefaultScenario(apnsDelay time.Duration) *Scenario {
	change := 12 * time.Hour
	d := func(t time.Duration) Duration { return Duration(t) }
	return &Scenario{
		Name:      "office365 to intune",
		Duration:  d(8 * 24 * time.Hour),
		Retention: d(broker.RetentionPeriod),
		Steps: []Step{
			{At: 0, Action: ActionSetAuthority, Authority: "office365"},
			{At: 0, Action: ActionUploadAPNs, Authority: "office365"},
			{At: 0, Action: ActionAddProfile, Authority: "office365", Type: "email", Name: "Corp Mail", Settings: map[string]string{"server": "outlook.office365.com"}},
			{At: 0, Action: ActionAddProfile, Authority: "office365", Type: "configuration", Name: "Security Baseline", Settings: map[string]string{"passcode": "required"}},
			{At: 0, Action: ActionAddProfile, Authority: "office365", Type: "compliance", Name: "Compliance Policy", Settings: map[string]string{"min_os_version": "10"}},
			{At: d(change - time.Hour), Action: ActionAddProfile, Authority: "intune", Type: "email", Name: "Corp Mail", Settings: map[string]string{"server": "mail.contoso.example"}},
			{At: d(change - time.Hour), Action: ActionAddProfile, Authority: "intune", Type: "configuration", Name: "Intune Security Baseline", Settings: map[string]string{"passcode": "required", "encryption": "required"}},
			{At: d(change - time.Hour), Action: ActionAddProfile, Authority: "intune", Type: "wifi", Name: "Corp Wi-Fi", Settings: map[string]string{"ssid": "contoso"}},
			{At: d(change), Action: ActionSetAuthority, Authority: "intune"},
			{At: d(change + apnsDelay), Action: ActionUploadAPNs, Authority: "intune"},
			{At: d(change + broker.RetentionPeriod + time.Hour), Action: ActionEnrollCanary, Platform: "ios"},
			{At: d(change + broker.RetentionPeriod + time.Hour + time.Minute), Action: ActionRemoteLock},
		},
	}
}
