package agent

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mdm-authority/mdm/protocol"
)

// The authorities, short, for tables.
const (
	byO365   = protocol.AuthorityOffice365
	byIntune = protocol.AuthorityIntune
)

// desiredProfile returns a desired profile.
func desiredProfile(typ protocol.ProfileType, name string, version uint64, settings ...protocol.Setting) protocol.DesiredProfile {
	return protocol.DesiredProfile{Type: typ, Name: name, Version: version, Settings: settings}
}

// describeChanges writes changes as "kind type/name@authority" lines,
// with " retained until" or " replacing" details, for comparing.
func describeChanges(changes []Change) []string {
	var out []string
	for _, ch := range changes {
		s := fmt.Sprintf("%v %v/%s@%v v%d", ch.Kind, ch.Profile.Type, ch.Profile.Name, ch.Profile.Authority, ch.Profile.Version)
		if ch.Replaced != nil {
			s += fmt.Sprintf(" replacing %s@%v v%d", ch.Replaced.Name, ch.Replaced.Authority, ch.Replaced.Version)
		}
		if !ch.Profile.RetainUntil.IsZero() {
			s += " until " + ch.Profile.RetainUntil.Format(time.RFC3339)
		}
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

// describeProfiles writes installed profiles as "type/name@authority vN"
// with " until" for retained ones.
func describeProfiles(ps []Profile) []string {
	var out []string
	for _, p := range ps {
		s := fmt.Sprintf("%v/%s@%v v%d", p.Type, p.Name, p.Authority, p.Version)
		if p.Retained() {
			s += " until " + p.RetainUntil.Format(time.RFC3339)
		}
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

// checkedIn returns a rig whose device, holding profiles under authority
// a at desired version 41, has a scheduled check-in in flight.
func checkedIn(t *testing.T, a protocol.Authority, profiles ...Profile) (*rig, protocol.Envelope) {
	t.Helper()
	st := settledState(protocol.PlatformWindows, testNow, 0)
	st.Authority, st.Profiles = a, profiles
	sortProfiles(st.Profiles)
	r := newRig(t, st, testNow)
	_, env := oneCheckIn(t, r.online(), protocol.CheckInScheduled)
	r.wait(time.Second)
	return r, env
}

func TestProfileDesiredVersion(t *testing.T) {
	mail := installedProfile(protocol.ProfileEmail, "Corp Mail", byO365, 1)
	tests := []struct {
		name      string
		resp      *protocol.CheckInResponse
		changes   []string
		version   uint64
		authority protocol.Authority
	}{
		{"newer version applied",
			&protocol.CheckInResponse{Authority: byO365, Epoch: 1, DesiredVersion: 42, Profiles: []protocol.DesiredProfile{
				desiredProfile(protocol.ProfileEmail, "Corp Mail", 2), desiredProfile(protocol.ProfileConfiguration, "Device Security", 1)}},
			[]string{"installed configuration/Device Security@office365 v1", "updated email/Corp Mail@office365 v2"}, 42, byO365},
		{"newer empty set removes everything",
			&protocol.CheckInResponse{Authority: byO365, Epoch: 1, DesiredVersion: 42},
			[]string{"removed email/Corp Mail@office365 v1"}, 42, byO365},
		{"equal version means unchanged",
			&protocol.CheckInResponse{Authority: byO365, Epoch: 1, DesiredVersion: 41},
			nil, 41, byO365},
		{"lower version ignored",
			&protocol.CheckInResponse{Authority: byO365, Epoch: 1, DesiredVersion: 40, Profiles: []protocol.DesiredProfile{
				desiredProfile(protocol.ProfileEmail, "Corp Mail", 7)}},
			nil, 41, byO365},
		{"lower version does not move the authority",
			&protocol.CheckInResponse{Authority: byIntune, Epoch: 2, DesiredVersion: 40, Profiles: []protocol.DesiredProfile{
				desiredProfile(protocol.ProfileEmail, "Corp Mail", 7)}},
			nil, 41, byO365},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, env := checkedIn(t, byO365, mail)
			out := r.respond(env, tt.resp)
			st := r.c.State()
			if got := describeChanges(out.Changes); !slices.Equal(got, tt.changes) {
				t.Errorf("changes = %q; want %q", got, tt.changes)
			}
			if st.DesiredVersion != tt.version || st.Authority != tt.authority {
				t.Errorf("DesiredVersion, Authority = %d, %v; want %d, %v", st.DesiredVersion, st.Authority, tt.version, tt.authority)
			}
			if tt.changes == nil && !slices.EqualFunc(st.Profiles, []Profile{mail}, profilesEqual) {
				t.Errorf("profiles = %q; want Corp Mail kept as it was", describeProfiles(st.Profiles))
			}
		})
	}
}

func TestProfileChanges(t *testing.T) {
	deadline := testNow.Add(7 * 24 * time.Hour)
	until := " until " + deadline.Format(time.RFC3339)
	retained := func(p Profile, at time.Time) Profile { p.RetainUntil = at; return p }
	server := func(v string) protocol.Setting { return protocol.Setting{Key: "server", Value: v} }
	tests := []struct {
		name      string
		authority protocol.Authority // before the check-in
		installed []Profile
		answer    protocol.Authority
		desired   []protocol.DesiredProfile
		retain    time.Time
		changes   []string
		profiles  []string
	}{
		{"new profile installed", byIntune, nil,
			byIntune, []protocol.DesiredProfile{desiredProfile(protocol.ProfileVPN, "Corp VPN", 1)}, time.Time{},
			[]string{"installed vpn/Corp VPN@intune v1"}, []string{"vpn/Corp VPN@intune v1"}},
		{"new version updated", byIntune, []Profile{installedProfile(protocol.ProfileVPN, "Corp VPN", byIntune, 1)},
			byIntune, []protocol.DesiredProfile{desiredProfile(protocol.ProfileVPN, "Corp VPN", 2)}, time.Time{},
			[]string{"updated vpn/Corp VPN@intune v2"}, []string{"vpn/Corp VPN@intune v2"}},
		{"new settings updated", byIntune, []Profile{installedProfile(protocol.ProfileEmail, "Corp Mail", byIntune, 1, server("a"))},
			byIntune, []protocol.DesiredProfile{desiredProfile(protocol.ProfileEmail, "Corp Mail", 1, server("b"))}, time.Time{},
			[]string{"updated email/Corp Mail@intune v1"}, []string{"email/Corp Mail@intune v1"}},
		{"unchanged profile makes no change", byIntune, []Profile{installedProfile(protocol.ProfileEmail, "Corp Mail", byIntune, 3, server("a"))},
			byIntune, []protocol.DesiredProfile{desiredProfile(protocol.ProfileEmail, "Corp Mail", 3, server("a"))}, time.Time{},
			nil, []string{"email/Corp Mail@intune v3"}},
		{"profile no longer wanted removed", byIntune, []Profile{
			installedProfile(protocol.ProfileEmail, "Corp Mail", byIntune, 3), installedProfile(protocol.ProfileVPN, "Corp VPN", byIntune, 1)},
			byIntune, []protocol.DesiredProfile{desiredProfile(protocol.ProfileEmail, "Corp Mail", 3)}, time.Time{},
			[]string{"removed vpn/Corp VPN@intune v1"}, []string{"email/Corp Mail@intune v3"}},
		{"same type and name overwritten on a change", byO365, []Profile{installedProfile(protocol.ProfileEmail, "Corp Mail", byO365, 3)},
			byIntune, []protocol.DesiredProfile{desiredProfile(protocol.ProfileEmail, "Corp Mail", 1)}, deadline,
			[]string{"overwritten email/Corp Mail@intune v1 replacing Corp Mail@office365 v3"}, []string{"email/Corp Mail@intune v1"}},
		{"same name, other type is no successor", byO365, []Profile{installedProfile(protocol.ProfileEmail, "Corp", byO365, 3)},
			byIntune, []protocol.DesiredProfile{desiredProfile(protocol.ProfileWiFi, "Corp", 1)}, deadline,
			[]string{"installed wifi/Corp@intune v1", "retained email/Corp@office365 v3" + until},
			[]string{"email/Corp@office365 v3" + until, "wifi/Corp@intune v1"}},
		{"old profile without successor retained", byO365, []Profile{installedProfile(protocol.ProfileConfiguration, "O365 Security", byO365, 2)},
			byIntune, nil, deadline,
			[]string{"retained configuration/O365 Security@office365 v2" + until},
			[]string{"configuration/O365 Security@office365 v2" + until}},
		{"no retention period: removed at once", byO365, []Profile{installedProfile(protocol.ProfileConfiguration, "O365 Security", byO365, 2)},
			byIntune, nil, time.Time{},
			[]string{"removed configuration/O365 Security@office365 v2"}, nil},
		{"retention already over: removed at once", byO365, []Profile{installedProfile(protocol.ProfileConfiguration, "O365 Security", byO365, 2)},
			byIntune, nil, testNow.Add(-time.Hour),
			[]string{"removed configuration/O365 Security@office365 v2"}, nil},
		{"retained profile kept as is", byIntune, []Profile{retained(installedProfile(protocol.ProfileEmail, "Legacy Mail", byO365, 1), deadline)},
			byIntune, []protocol.DesiredProfile{desiredProfile(protocol.ProfileVPN, "Corp VPN", 1)}, deadline,
			[]string{"installed vpn/Corp VPN@intune v1"},
			[]string{"email/Legacy Mail@office365 v1" + until, "vpn/Corp VPN@intune v1"}},
		{"retained profile overwritten by a later successor", byIntune, []Profile{retained(installedProfile(protocol.ProfileEmail, "Legacy Mail", byO365, 1), deadline)},
			byIntune, []protocol.DesiredProfile{desiredProfile(protocol.ProfileEmail, "Legacy Mail", 5)}, deadline,
			[]string{"overwritten email/Legacy Mail@intune v5 replacing Legacy Mail@office365 v1"},
			[]string{"email/Legacy Mail@intune v5"}},
		{"change back: the current authority's profile wins, the other goes", byO365, []Profile{
			installedProfile(protocol.ProfileEmail, "Corp Mail", byO365, 3), retained(installedProfile(protocol.ProfileEmail, "Corp Mail", byIntune, 1), deadline)},
			byO365, []protocol.DesiredProfile{desiredProfile(protocol.ProfileEmail, "Corp Mail", 3)}, deadline,
			[]string{"removed email/Corp Mail@intune v1" + until},
			[]string{"email/Corp Mail@office365 v3"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, env := checkedIn(t, tt.authority, tt.installed...)
			before := slices.Clone(r.c.State().Profiles)
			out := r.respond(env, &protocol.CheckInResponse{
				Authority: tt.answer, Epoch: 2, DesiredVersion: 42, Profiles: tt.desired, RetainUntil: protocol.At(tt.retain),
			})
			st := r.c.State()
			if got := describeChanges(out.Changes); !slices.Equal(got, tt.changes) {
				t.Errorf("changes = %q; want %q", got, tt.changes)
			}
			if got := describeProfiles(st.Profiles); !slices.Equal(got, tt.profiles) {
				t.Errorf("profiles = %q; want %q", got, tt.profiles)
			}
			if !out.Persist {
				t.Errorf("Persist = false; want true after an answer")
			}
			// A profile left as it was keeps its install time.
			for _, p := range st.Profiles {
				for _, b := range before {
					if profilesEqual(p, b) && !p.InstalledAt.Equal(b.InstalledAt) {
						t.Errorf("unchanged %s got a new install time %v; want %v", p.Name, p.InstalledAt, b.InstalledAt)
					}
				}
			}
		})
	}
}

// migration answers a check-in at testNow+1s with an office365 → intune
// change made an hour before, on a device holding four office365
// profiles:
//
//	email "Corp Mail"            → overwritten by intune's "Corp Mail"
//	configuration "O365 Security" → retained; intune sets "Intune Baseline": redundant
//	compliance "O365 Compliance"  → retained; intune sets no compliance: a gap
//	email "Legacy Mail"           → retained; redundant with intune's "Corp Mail"
//
// and returns the rig, the answer's output and the retention deadline.
func migration(t *testing.T) (*rig, Output, time.Time) {
	t.Helper()
	r, env := checkedIn(t, byO365,
		installedProfile(protocol.ProfileEmail, "Corp Mail", byO365, 3),
		installedProfile(protocol.ProfileConfiguration, "O365 Security", byO365, 1, protocol.Setting{Key: SettingPasscodeRequired, Value: "true"}),
		installedProfile(protocol.ProfileCompliance, "O365 Compliance", byO365, 1, protocol.Setting{Key: SettingEncryptionRequired, Value: "true"}),
		installedProfile(protocol.ProfileEmail, "Legacy Mail", byO365, 1),
	)
	r.c.SetFacts(Facts{OSVersion: "17.4", Passcode: true, Encrypted: true})
	changed := testNow.Add(-time.Hour)
	deadline := changed.Add(7 * 24 * time.Hour)
	out := r.respond(env, &protocol.CheckInResponse{
		Authority: byIntune, Epoch: 2, ChangedAt: protocol.At(changed), DesiredVersion: 42,
		Profiles: []protocol.DesiredProfile{
			desiredProfile(protocol.ProfileEmail, "Corp Mail", 1),
			desiredProfile(protocol.ProfileConfiguration, "Intune Baseline", 1, protocol.Setting{Key: SettingPasscodeRequired, Value: "true"}),
			desiredProfile(protocol.ProfileVPN, "Corp VPN", 1),
		},
		RetainUntil: protocol.At(deadline),
	})
	return r, out, deadline
}

func TestProfileMigrationRedundantGaps(t *testing.T) {
	r, out, deadline := migration(t)
	st := r.c.State()
	until := " until " + deadline.Format(time.RFC3339)
	wantChanges := []string{
		"installed configuration/Intune Baseline@intune v1",
		"installed vpn/Corp VPN@intune v1",
		"overwritten email/Corp Mail@intune v1 replacing Corp Mail@office365 v3",
		"retained compliance/O365 Compliance@office365 v1" + until,
		"retained configuration/O365 Security@office365 v1" + until,
		"retained email/Legacy Mail@office365 v1" + until,
	}
	if got := describeChanges(out.Changes); !slices.Equal(got, wantChanges) {
		t.Errorf("changes = %q; want %q", got, wantChanges)
	}
	if st.Authority != byIntune || st.PreviousAuthority != byO365 || st.Epoch != 2 || !st.ChangedAt.Equal(testNow.Add(-time.Hour)) {
		t.Errorf("authority %v (previous %v, epoch %d, changed %v); want intune after office365, epoch 2, changed %v",
			st.Authority, st.PreviousAuthority, st.Epoch, st.ChangedAt, testNow.Add(-time.Hour))
	}

	var pairs []string
	for _, p := range Redundant(st.Profiles, st.Authority) {
		pairs = append(pairs, fmt.Sprintf("%s@%v + %s@%v", p.Retained.Name, p.Retained.Authority, p.Current.Name, p.Current.Authority))
	}
	slices.Sort(pairs)
	wantPairs := []string{"Legacy Mail@office365 + Corp Mail@intune", "O365 Security@office365 + Intune Baseline@intune"}
	if !slices.Equal(pairs, wantPairs) {
		t.Errorf("Redundant() = %q; want %q", pairs, wantPairs)
	}
	gaps := Gaps(st.Profiles, st.Authority)
	if len(gaps) != 1 || gaps[0].Profile.Name != "O365 Compliance" || !gaps[0].At.Equal(deadline) {
		t.Errorf("Gaps() = %+v; want O365 Compliance at %v", gaps, deadline)
	}
	s := r.c.Status(r.now)
	if len(s.Redundant) != 2 || len(s.Gaps) != 1 {
		t.Errorf("Status() redundant, gaps = %d, %d; want 2, 1", len(s.Redundant), len(s.Gaps))
	}
	if !slices.ContainsFunc(s.Attention, func(a string) bool {
		return strings.Contains(a, "protection gap") && strings.Contains(a, "O365 Compliance")
	}) {
		t.Errorf("Status().Attention = %q; want the protection gap of O365 Compliance", s.Attention)
	}

	// The next check-in reports the retained profiles with their deadline.
	r.at(st.NextCheckIn)
	ci, _ := oneCheckIn(t, r.tick(), protocol.CheckInScheduled)
	var retained []string
	for _, p := range ci.Profiles {
		if !p.RetainUntil.IsZero() {
			retained = append(retained, p.Name)
			if p.RetainUntil != protocol.At(deadline) || p.Authority != byO365 {
				t.Errorf("check-in reports %s@%v retained until %v; want office365 until %v", p.Name, p.Authority, p.RetainUntil.Time(), deadline)
			}
		}
	}
	if len(retained) != 3 || len(ci.Profiles) != 6 {
		t.Errorf("check-in reports %d profiles, retained %q; want 6, with the 3 retained", len(ci.Profiles), retained)
	}
}

func TestRetainExpireAtDeadline(t *testing.T) {
	r, _, deadline := migration(t)
	st := r.c.State()
	r.disconnect()
	if w := r.c.NextWake(); !w.Equal(deadline) {
		t.Errorf("NextWake() offline = %v; want the retention deadline %v", w, deadline)
	}
	r.at(deadline.Add(-time.Millisecond))
	if o := r.tick(); len(o.Changes) != 0 {
		t.Errorf("Tick 1ms before the deadline changed %q; want nothing", describeChanges(o.Changes))
	}
	r.at(deadline)
	out := r.tick()
	wantChanges := []string{
		"expired compliance/O365 Compliance@office365 v1 until " + deadline.Format(time.RFC3339),
		"expired configuration/O365 Security@office365 v1 until " + deadline.Format(time.RFC3339),
		"expired email/Legacy Mail@office365 v1 until " + deadline.Format(time.RFC3339),
	}
	if got := describeChanges(out.Changes); !slices.Equal(got, wantChanges) {
		t.Errorf("Tick(deadline) changes = %q; want %q", got, wantChanges)
	}
	if !out.Persist {
		t.Errorf("Tick(deadline) Persist = false; want true")
	}
	wantLeft := []string{"configuration/Intune Baseline@intune v1", "email/Corp Mail@intune v1", "vpn/Corp VPN@intune v1"}
	if got := describeProfiles(st.Profiles); !slices.Equal(got, wantLeft) {
		t.Errorf("profiles after the deadline = %q; want %q", got, wantLeft)
	}
	if p, g := Redundant(st.Profiles, st.Authority), Gaps(st.Profiles, st.Authority); len(p) != 0 || len(g) != 0 {
		t.Errorf("after the deadline Redundant, Gaps = %v, %v; want none", p, g)
	}
	if w := r.c.NextWake(); !w.IsZero() {
		t.Errorf("NextWake() offline with nothing retained = %v; want zero", w)
	}
	if o := r.advance(time.Hour); len(o.Changes) != 0 || o.Persist {
		t.Errorf("a later Tick = %+v; want nothing", o)
	}
}

func TestRetainNextWakeOnline(t *testing.T) {
	r, _, deadline := migration(t)
	// A check-in scheduled after the deadline must not hide it.
	st := r.c.State()
	st.NextCheckIn = deadline.Add(time.Hour)
	if w := r.c.NextWake(); !w.Equal(deadline) {
		t.Errorf("NextWake() = %v; want the deadline %v before the check-in at %v", w, deadline, st.NextCheckIn)
	}
}

func TestRetainSurvivesRestart(t *testing.T) {
	tests := []struct {
		name    string
		restart time.Duration // after the deadline; negative: before
		expired int           // at Start
	}{
		{"restart before the deadline", -time.Hour, 0},
		{"restart after the deadline", time.Hour, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, _, deadline := migration(t)
			r.at(deadline.Add(tt.restart))
			out := r.restart() // Start only: the agent is not connected yet
			if n := len(out.Changes); n != tt.expired {
				t.Fatalf("Start() after restart changed %q; want %d expired", describeChanges(out.Changes), tt.expired)
			}
			if tt.expired > 0 {
				if !out.Persist {
					t.Errorf("Start() expired profiles without Persist")
				}
				return
			}
			st := r.c.State()
			if len(Gaps(st.Profiles, st.Authority)) != 1 || len(Redundant(st.Profiles, st.Authority)) != 2 {
				t.Errorf("after restart Gaps, Redundant = %v, %v; want 1, 2", Gaps(st.Profiles, st.Authority), Redundant(st.Profiles, st.Authority))
			}
			if w := r.c.NextWake(); !w.Equal(deadline) {
				t.Errorf("NextWake() after restart = %v; want the deadline %v", w, deadline)
			}
			r.at(deadline)
			if o := r.tick(); len(o.Changes) != 3 || !o.Persist {
				t.Errorf("Tick(deadline) after restart changed %q; want the 3 retained profiles expired", describeChanges(o.Changes))
			}
		})
	}
}

// TestRetainedProfilesWithinLimits: an authority change can leave the old
// authority's profiles (up to MaxProfiles) beside the new one's (up to
// MaxProfiles). The device must still be able to check in and to read
// its own state file after a restart.
// TestRetainedProfilesWithinLimits checks that retained profiles never
// take the device beyond the 256 profiles a check-in and a state file may
// hold: the new set stays whole, and the retained profiles that do not fit
// go at once.
func TestRetainedProfilesWithinLimits(t *testing.T) {
	var old []Profile
	var desired []protocol.DesiredProfile
	for i := range 200 {
		old = append(old, installedProfile(protocol.ProfileEmail, fmt.Sprintf("Old %03d", i), byO365, 1))
		desired = append(desired, desiredProfile(protocol.ProfileEmail, fmt.Sprintf("New %03d", i), 1))
	}
	r, env := checkedIn(t, byO365, old...)
	out := r.respond(env, &protocol.CheckInResponse{
		Authority: byIntune, Epoch: 2, DesiredVersion: 42, Profiles: desired,
		RetainUntil: protocol.At(testNow.Add(7 * 24 * time.Hour)),
	})
	st := r.c.State()
	var current, retained, removed int
	for _, p := range st.Profiles {
		if p.Authority == byIntune {
			current++
		} else if p.Retained() {
			retained++
		}
	}
	for _, ch := range out.Changes {
		if ch.Kind == Removed {
			removed++
		}
	}
	if current != 200 || retained != protocol.MaxProfiles-200 || removed != 400-protocol.MaxProfiles {
		t.Fatalf("after the change: %d current, %d retained, %d removed; want 200, %d, %d",
			current, retained, removed, protocol.MaxProfiles-200, 400-protocol.MaxProfiles)
	}
	b, err := st.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := DecodeState(b); err != nil {
		t.Errorf("DecodeState = %v; want nil: the agent could not restart", err)
	}
	r.at(st.NextCheckIn)
	r.tick() // the rig checks that the check-in passes the service's decoder
}

func TestRedundantAndGaps(t *testing.T) {
	deadline := testNow.Add(7 * 24 * time.Hour)
	old := func(typ protocol.ProfileType, name string) Profile {
		p := installedProfile(typ, name, byO365, 1)
		p.RetainUntil = deadline
		return p
	}
	cur := func(typ protocol.ProfileType, name string) Profile { return installedProfile(typ, name, byIntune, 1) }
	tests := []struct {
		name      string
		installed []Profile
		redundant []string // "retained + current"
		gaps      []string
	}{
		{"nothing retained", []Profile{cur(protocol.ProfileEmail, "Mail"), installedProfile(protocol.ProfileEmail, "Other", byO365, 1)}, nil, nil},
		{"same type, other name: redundant", []Profile{old(protocol.ProfileEmail, "Legacy"), cur(protocol.ProfileEmail, "Mail")},
			[]string{"Legacy + Mail"}, nil},
		{"same type and name is one profile, not a pair", []Profile{old(protocol.ProfileEmail, "Mail"), cur(protocol.ProfileEmail, "Mail")}, nil, nil},
		{"type the authority lacks: a gap", []Profile{old(protocol.ProfileCompliance, "Policy"), cur(protocol.ProfileEmail, "Mail")},
			nil, []string{"Policy"}},
		{"two current profiles of the type", []Profile{old(protocol.ProfileWiFi, "Old WiFi"), cur(protocol.ProfileWiFi, "A"), cur(protocol.ProfileWiFi, "B")},
			[]string{"Old WiFi + A", "Old WiFi + B"}, nil},
		{"retained of the current authority is neither", []Profile{func() Profile { p := cur(protocol.ProfileVPN, "VPN"); p.RetainUntil = deadline; return p }()}, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var pairs, gaps []string
			for _, p := range Redundant(tt.installed, byIntune) {
				pairs = append(pairs, p.Retained.Name+" + "+p.Current.Name)
			}
			for _, g := range Gaps(tt.installed, byIntune) {
				gaps = append(gaps, g.Profile.Name)
				if !g.At.Equal(deadline) {
					t.Errorf("Gaps() %s at %v; want %v", g.Profile.Name, g.At, deadline)
				}
			}
			slices.Sort(pairs)
			if !slices.Equal(pairs, tt.redundant) || !slices.Equal(gaps, tt.gaps) {
				t.Errorf("Redundant, Gaps = %q, %q; want %q, %q", pairs, gaps, tt.redundant, tt.gaps)
			}
		})
	}
}
