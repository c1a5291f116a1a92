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
// The service refuses some steps depending on what came before, and a
// refused step stops the run, so Validate follows the steps as the
// service would and refuses the scenario instead:
//
//   - The first step, set_authority, is at 0s: the fleet enrolls from the
//     start, and the service refuses enrollments until the authority is
//     set.
//   - iOS and iPadOS devices enroll only while their authority has an
//     APNs certificate. The fleet enrolls over its first 4 hours, so a
//     fleet with such devices needs an upload_apns step for each authority
//     it enrolls with then: the first one at 0s (for coexistence,
//     office365, which takes the users without an Intune license and the
//     devices without a user). CheckFleet checks this, since the scenario
//     does not know the fleet. An iOS or iPadOS canary needs the
//     certificate of the authority that takes its user likewise.
//   - set_authority changes the authority: setting the current one again
//     is refused.
//   - set_license needs coexistence at that point.
//   - add_profile: office365 sets only email, configuration and
//     compliance profiles, and an authority's catalog must fit a check-in
//     response (protocol.MaxProfiles profiles, protocol.MaxSettingsTotal
//     settings).
//   - remove_profile and rename_profile name a profile that is there at
//     that point: added, or renamed to that name, and not removed since.
//   - remote_lock is an Intune action: the canary's user must be on intune
//     at that point (the intune mode, or coexistence with an Intune
//     license).
//
// upload_apns is accepted for either authority at any time, the one not in
// use too, as the service accepts it.
//
// The report measures the last change of authority as a move of the fleet
// to one authority. When that change is to coexistence, where each user's
// license decides, its migration figures stay empty; the timeline's counts
// by authority and the canary show where the devices went.
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
// step and what to write instead. Besides each step's fields it makes a
// dry run of the steps on a model of the tenant (the authority, the APNs
// certificates, the licenses, the profile catalogs and the canary's user)
// and refuses a step that the service would refuse at that point of the
// run, which would otherwise stop the run there. What depends on the
// fleet is checked by CheckFleet.
func (sc *Scenario) Validate() error { return sc.check(false) }

// CheckFleet validates the scenario (as Validate does) for a fleet that
// has iOS or iPadOS devices when hasApple is set: the fleet enrolls over
// its first hours, and those devices enroll only while the authority that
// takes them has an APNs certificate.
func (sc *Scenario) CheckFleet(hasApple bool) error { return sc.check(hasApple) }

func (sc *Scenario) check(hasApple bool) error {
	if sc.Duration <= 0 {
		return errors.New(`"duration" is missing: give the length of the run, such as "8d"`)
	}
	if len(sc.Steps) == 0 || sc.Steps[0].Action != ActionSetAuthority {
		return errors.New(`the first step must be "set_authority": devices cannot enroll before the authority is set`)
	}
	if len(sc.Steps) > 10000 {
		return fmt.Errorf("%d steps: at most 10,000", len(sc.Steps))
	}
	if sc.Steps[0].At != 0 {
		return fmt.Errorf(`%s: the fleet starts to enroll at 0s, and the service refuses enrollments until the authority is set: put this step at "0s"`, sc.where(0))
	}
	run := newDryRun(sc)
	for i := range sc.Steps {
		s := &sc.Steps[i]
		if i > 0 && s.At < sc.Steps[i-1].At {
			return fmt.Errorf("%s comes before step %d (at %s): list the steps in time order", sc.where(i), i, sc.Steps[i-1].At)
		}
		if s.At > sc.Duration {
			return fmt.Errorf("%s is after the end of the run (%s)", sc.where(i), sc.Duration)
		}
		if err := s.validate(run.canary != ""); err != nil {
			return fmt.Errorf("%s: %w", sc.where(i), err)
		}
		if err := run.step(i); err != nil {
			return fmt.Errorf("%s: %w", sc.where(i), err)
		}
		// The fleet's enrollments at an instant come after every step of
		// that instant.
		last := i == len(sc.Steps)-1 || sc.Steps[i+1].At > s.At
		if hasApple && last && time.Duration(s.At) < enrollSpread {
			if err := run.fleetEnrolls(); err != nil {
				return err
			}
		}
	}
	return nil
}

// where names step i in errors.
func (sc *Scenario) where(i int) string {
	s := &sc.Steps[i]
	return fmt.Sprintf("step %d (%s at %s)", i+1, s.Action, s.At)
}

// canaryUser is the user of the canary that an enroll_canary step enrolls.
func (s *Step) canaryUser() string {
	if s.User == "" {
		return "canary@contoso.example"
	}
	return s.User
}

// dryRun follows the state a scenario's steps build, with the service's
// own rules where they are exported (broker.Tenant for the authority,
// licenses and APNs certificates; broker.Supports and SupportsCommand), so
// that Validate refuses exactly the steps that the service would.
type dryRun struct {
	sc     *Scenario
	tenant broker.Tenant
	// modeStep is the index of the step that set the current mode.
	modeStep int
	// profiles holds each catalog entry and its number of settings.
	profiles map[profileID]int
	// gone holds the step that removed or renamed a profile.
	gone map[profileID]int
	// canary is the user of the last canary enrolled; "" before one.
	canary string
}

// profileID is a profile's key in the service's catalogs.
type profileID struct {
	authority protocol.Authority
	typ       protocol.ProfileType
	name      string
}

func newDryRun(sc *Scenario) *dryRun {
	return &dryRun{sc: sc, profiles: map[profileID]int{}, gone: map[profileID]int{}}
}

// step applies step i, which has valid fields, or says why the service
// would refuse it.
func (r *dryRun) step(i int) error {
	s := &r.sc.Steps[i]
	now := time.Unix(0, 0).Add(time.Duration(s.At))
	authority, _ := protocol.ParseAuthority(s.Authority)
	typ, _ := protocol.ParseProfileType(s.Type)
	id := profileID{authority, typ, s.Name}
	switch s.Action {
	case ActionSetAuthority:
		m, _ := broker.ParseMode(s.Authority)
		if _, err := r.tenant.SetMode(m, now); errors.Is(err, broker.ErrSameAuthority) {
			return fmt.Errorf("the authority is %s already (%s), and the service refuses to set it again: drop this step, or set another authority", m, r.sc.where(r.modeStep))
		} else if err != nil {
			return err
		}
		r.modeStep = i
	case ActionUploadAPNs:
		// The service takes a certificate for either authority at any
		// time, the one not in use too (ahead of a change).
		return r.tenant.UploadAPNs(authority, true, now)
	case ActionAddProfile:
		return r.put(id, s.Settings)
	case ActionRemoveProfile, ActionRenameProfile:
		n, ok := r.profiles[id]
		if !ok {
			return r.missing(id)
		}
		delete(r.profiles, id)
		r.gone[id] = i
		if s.Action == ActionRenameProfile {
			// The settings move with the name; the catalog does not grow.
			to := profileID{authority, typ, s.NewName}
			r.profiles[to] = n
			delete(r.gone, to)
		}
	case ActionSetLicense:
		if _, err := r.tenant.SetLicense(s.User, *s.Intune, now); errors.Is(err, broker.ErrNotCoexistence) {
			return fmt.Errorf(`licenses decide a user's authority only in coexistence, and the authority is %s at this point (%s): put {"at": %q, "action": "set_authority", "authority": "coexistence"} before this step, or drop it`,
				r.tenant.Mode, r.sc.where(r.modeStep), s.At.String())
		} else if err != nil {
			return err
		}
	case ActionEnrollCanary:
		p := protocol.PlatformIOS
		if s.Platform != "" {
			p, _ = protocol.ParsePlatform(s.Platform)
		}
		user := s.canaryUser()
		if a := r.tenant.AuthorityFor(user); p.NeedsAPNs() && !r.tenant.HasAPNs(a) {
			return fmt.Errorf(`%s devices enroll only while their authority has an APNs certificate, and %s, which manages %s at this point, has none: put {"at": %q, "action": "upload_apns", "authority": %q} before this step, or enroll a canary of another platform`,
				p, a, user, s.At.String(), a.String())
		}
		r.canary = user
	case ActionRemoteLock:
		// The service sends a command from the authority the device's user
		// is on now (broker.Service.IssueCommand).
		a := r.tenant.AuthorityFor(r.canary)
		if broker.SupportsCommand(a, protocol.CommandRemoteLock) {
			return nil
		}
		fix := `put {"at": "` + s.At.String() + `", "action": "set_authority", "authority": "intune"} before this step`
		if r.tenant.Mode == broker.ModeCoexistence {
			fix = fmt.Sprintf(`give the canary's user an Intune license before this step: {"at": %q, "action": "set_license", "user": %q, "intune": true}`, s.At.String(), r.canary)
		}
		return fmt.Errorf("a remote lock is an Intune action (Office 365 MDM sends only wipe and retire), and %s manages the canary (user %s) at this point: %s, or drop the remote lock", a, r.canary, fix)
	}
	return nil
}

// put adds or updates a catalog entry as broker.Service.PutProfile does:
// the authority must support the type, the settings must fit a check-in
// response, and so must the whole catalog.
func (r *dryRun) put(id profileID, settings map[string]string) error {
	if !broker.Supports(id.authority, id.typ) {
		return fmt.Errorf("office365 (MDM for Office 365) does not set %s profiles, only email, configuration and compliance ones, and the service refuses it: add it to intune instead", id.typ)
	}
	probe := protocol.DesiredProfile{Type: id.typ, Name: id.name, Version: 1, Settings: settingsOf(settings)}
	env := protocol.Envelope{ID: protocol.MessageID{1}, Sent: 1, Device: "check", ReplyTo: protocol.MessageID{1},
		Body: &protocol.CheckInResponse{Authority: id.authority, Profiles: []protocol.DesiredProfile{probe}}}
	if err := env.Validate(); err != nil {
		return fmt.Errorf(`"settings": %w`, err)
	}
	count, total := 1, len(settings)
	for q, n := range r.profiles {
		if q.authority == id.authority && q != id {
			count++
			total += n
		}
	}
	if count > protocol.MaxProfiles || total > protocol.MaxSettingsTotal {
		return fmt.Errorf("the %s catalog would have %d profiles and %d settings; a device accepts at most %d and %d: remove a profile before this step",
			id.authority, count, total, protocol.MaxProfiles, protocol.MaxSettingsTotal)
	}
	r.profiles[id] = len(settings)
	delete(r.gone, id)
	return nil
}

// missing says why profile id is not there to remove or rename.
func (r *dryRun) missing(id profileID) error {
	why := "no earlier add_profile or rename_profile step makes it"
	if j, ok := r.gone[id]; ok {
		why = r.sc.where(j) + " took it away"
	}
	return fmt.Errorf("there is no %s %s profile %q at this point (%s), and the service refuses the step: add it with an add_profile step before, or name a profile that is there",
		id.authority, id.typ, id.name, why)
}

// fleetEnrolls checks that the fleet's iOS and iPadOS devices can enroll
// in the state the steps have built so far. It follows the devices of
// users without an Intune license and those without a user, most of a
// fleet; whether a licensed user's device is an iPhone it cannot know.
func (r *dryRun) fleetEnrolls() error {
	a := r.tenant.AuthorityFor("")
	if r.tenant.HasAPNs(a) {
		return nil
	}
	whose := ""
	if r.tenant.Mode == broker.ModeCoexistence {
		whose = " (in coexistence, that of the users without an Intune license and of the devices without a user)"
	}
	at := r.sc.Steps[r.modeStep].At
	return fmt.Errorf(`%s: the fleet enrolls from 0s to %s, and its iOS and iPadOS devices enroll only while their authority%s has an APNs certificate; %s has none at %s: add {"at": %q, "action": "upload_apns", "authority": %q} after this step`,
		r.sc.where(r.modeStep), Duration(enrollSpread), whose, a, at, at.String(), a.String())
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
// Coexistence is no one authority: as either end of the change it is
// returned as protocol.AuthorityUnknown, and a change to it leaves the
// report's migration figures empty (see Scenario).
func (sc *Scenario) migration() (from, to string, at time.Duration, ok bool) {
	current := ""
	for i, s := range sc.Steps {
		if s.Action != ActionSetAuthority {
			continue
		}
		if i > 0 && s.Authority != current {
			from, to, at, ok = current, s.Authority, time.Duration(s.At), true
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
