package agent

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"math/big"
	mrand "math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mdm-authority/mdm/protocol"
)

var t0 = time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)

// enrolledState is a device enrolled at t0 under office365.
func enrolledState(p protocol.Platform) *State {
	return &State{
		Version: StateVersion, Tenant: "t1", Device: "d-1", Platform: p, EnrollmentType: protocol.EnrollUser,
		User: "ada@contoso.example", EnrolledAt: t0, Certificate: []byte{1}, CertNotAfter: t0.Add(365 * 24 * time.Hour),
		RenewalCSR: []byte{2}, Authority: protocol.AuthorityOffice365, Epoch: 1, AuthoritySince: t0,
	}
}

func newCore(t *testing.T, st *State) *Core {
	t.Helper()
	return New(st, Config{Rand: mrand.New(mrand.NewPCG(1, 2)), Facts: Facts{OSVersion: "17.4", Passcode: true, Encrypted: true}})
}

// online starts c and connects it at now, returning what it sent.
func online(t *testing.T, c *Core, now time.Time) Output {
	t.Helper()
	out := c.Start(now)
	out.merge(c.Connected(now))
	return out
}

// checkIns returns the check-ins among the envelopes, after a round trip
// through the real codec.
func checkIns(t *testing.T, envs []protocol.Envelope) []protocol.Envelope {
	t.Helper()
	var out []protocol.Envelope
	for _, env := range envs {
		b, err := protocol.Encode(env)
		if err != nil {
			t.Fatalf("encode %s: %v", env.Kind(), err)
		}
		dec, err := protocol.Decode(b)
		if err != nil {
			t.Fatalf("decode %s: %v", env.Kind(), err)
		}
		if dec.Device != "d-1" {
			t.Errorf("envelope device = %q; want d-1", dec.Device)
		}
		if _, ok := dec.Body.(*protocol.CheckIn); ok {
			out = append(out, env)
		}
	}
	return out
}

func only(t *testing.T, out Output) (protocol.Envelope, *protocol.CheckIn) {
	t.Helper()
	cs := checkIns(t, out.Send)
	if len(cs) != 1 {
		t.Fatalf("sent %d check-ins; want 1", len(cs))
	}
	return cs[0], cs[0].Body.(*protocol.CheckIn)
}

func respond(c *Core, now time.Time, to protocol.Envelope, resp *protocol.CheckInResponse) Output {
	return c.Receive(now, protocol.Envelope{ID: protocol.MessageID{7}, Sent: protocol.At(now), Device: "d-1", ReplyTo: to.ID, Body: resp})
}

func ok(version uint64, a protocol.Authority, profiles ...protocol.DesiredProfile) *protocol.CheckInResponse {
	return &protocol.CheckInResponse{Authority: a, Epoch: 1, DesiredVersion: version, Profiles: profiles}
}

func desired(typ protocol.ProfileType, name string, version uint64, settings ...protocol.Setting) protocol.DesiredProfile {
	return protocol.DesiredProfile{Type: typ, Name: name, Version: version, Settings: settings}
}

func TestInterval(t *testing.T) {
	tests := []struct {
		p    protocol.Platform
		age  time.Duration
		want time.Duration
	}{
		{protocol.PlatformWindows, 0, 3 * time.Minute},
		{protocol.PlatformAndroid, 14 * time.Minute, 3 * time.Minute},
		{protocol.PlatformAndroid, 15 * time.Minute, 15 * time.Minute},
		{protocol.PlatformWindows, 119 * time.Minute, 15 * time.Minute},
		{protocol.PlatformWindows, 2 * time.Hour, 8 * time.Hour},
		{protocol.PlatformIOS, 0, 15 * time.Minute},
		{protocol.PlatformIPadOS, 59 * time.Minute, 15 * time.Minute},
		{protocol.PlatformMacOS, time.Hour, 8 * time.Hour},
		{protocol.PlatformIOS, 30 * 24 * time.Hour, 8 * time.Hour},
	}
	for _, tt := range tests {
		if got := Interval(tt.p, tt.age); got != tt.want {
			t.Errorf("Interval(%s, %s) = %s; want %s", tt.p, tt.age, got, tt.want)
		}
	}
}

func TestBackoff(t *testing.T) {
	r := mrand.New(mrand.NewPCG(3, 4))
	for n := 1; n <= 12; n++ {
		d := min(time.Minute<<(n-1), time.Hour)
		for range 50 {
			got := Backoff(r, n, time.Minute, time.Hour)
			if got < d/2 || got > d {
				t.Fatalf("Backoff(%d) = %s; want within [%s, %s]", n, got, d/2, d)
			}
		}
	}
}

func TestJitterSpreadsWithinInterval(t *testing.T) {
	seen := map[time.Duration]bool{}
	for seed := range uint64(20) {
		r := mrand.New(mrand.NewPCG(seed, 0))
		d := jittered(r, 8*time.Hour)
		if d < 8*time.Hour*9/10 || d > 8*time.Hour {
			t.Fatalf("jittered(8h) = %s; want within [7h12m, 8h]", d)
		}
		seen[d] = true
	}
	if len(seen) < 15 {
		t.Errorf("20 seeds gave %d distinct delays; jitter does not spread devices", len(seen))
	}
}

func TestEnrollmentAndScheduledCheckIns(t *testing.T) {
	c := newCore(t, enrolledState(protocol.PlatformAndroid))
	if out := c.Start(t0); len(out.Send) != 0 {
		t.Fatalf("Start sent %d messages while offline", len(out.Send))
	}
	env, ci := only(t, c.Connected(t0))
	if ci.Reason != protocol.CheckInEnrollment || ci.CertificateExpiry != protocol.At(t0.Add(365*24*time.Hour)) || ci.Compliance.State != protocol.ComplianceCompliant {
		t.Errorf("first check-in = %+v; want reason enrollment, the certificate expiry and compliance", ci)
	}
	if len(ci.RenewalCSR) != 0 {
		t.Errorf("first check-in carries a renewal CSR outside the window")
	}
	out := respond(c, t0.Add(time.Second), env, ok(3, protocol.AuthorityOffice365, desired(protocol.ProfileEmail, "Corp Mail", 1)))
	if !out.Persist || len(out.Changes) != 1 || out.Changes[0].Kind != Installed {
		t.Fatalf("response output = %+v; want one profile installed and persisted", out)
	}
	next := c.State().NextCheckIn
	if d := next.Sub(t0.Add(time.Second)); d < 162*time.Second || d > 3*time.Minute {
		t.Errorf("next check-in in %s; want 3 min less up to 10%% jitter", d)
	}
	if got := c.NextWake(); !got.Equal(next) {
		t.Errorf("NextWake = %s; want %s", got, next)
	}
	if out := c.Tick(next.Add(-time.Millisecond)); len(out.Send) != 0 {
		t.Errorf("Tick before the schedule sent %d messages", len(out.Send))
	}
	_, ci = only(t, c.Tick(next))
	if ci.Reason != protocol.CheckInScheduled || ci.DesiredVersion != 3 || len(ci.Profiles) != 1 || ci.Profiles[0].Name != "Corp Mail" {
		t.Errorf("scheduled check-in = %+v", ci)
	}
}

func TestNextCheckInHint(t *testing.T) {
	c := newCore(t, enrolledState(protocol.PlatformWindows))
	env, _ := only(t, online(t, c, t0))
	resp := ok(1, protocol.AuthorityOffice365)
	resp.NextCheckIn = 600
	respond(c, t0, env, resp)
	if got := c.State().NextCheckIn; !got.Equal(t0.Add(10 * time.Minute)) {
		t.Errorf("next check-in = %s; want the hint, 10 minutes", got)
	}
}

func TestPushes(t *testing.T) {
	c := newCore(t, enrolledState(protocol.PlatformWindows))
	env, _ := only(t, online(t, c, t0))
	respond(c, t0, env, ok(1, protocol.AuthorityOffice365))
	push := protocol.Envelope{Device: "d-1", Body: &protocol.Push{Epoch: 2}}

	now := t0.Add(time.Minute)
	env, ci := only(t, c.Receive(now, push))
	if ci.Reason != protocol.CheckInPushed {
		t.Errorf("reason = %s; want pushed", ci.Reason)
	}
	// A burst while the check-in is in flight: one follow-up after it.
	for range 5 {
		if out := c.Receive(now, push); len(out.Send) != 0 {
			t.Fatalf("a push while in flight sent %d messages", len(out.Send))
		}
	}
	out := respond(c, now.Add(time.Second), env, ok(1, protocol.AuthorityOffice365))
	if n := len(checkIns(t, out.Send)); n != 0 {
		t.Fatalf("follow-up sent within the push gap: %d", n)
	}
	if w := c.NextWake(); !w.Equal(now.Add(pushGap)) {
		t.Errorf("NextWake = %s; want the follow-up at %s", w, now.Add(pushGap))
	}
	env, ci = only(t, c.Tick(now.Add(pushGap)))
	if ci.Reason != protocol.CheckInPushed {
		t.Errorf("follow-up reason = %s; want pushed", ci.Reason)
	}
	respond(c, now.Add(pushGap), env, ok(1, protocol.AuthorityOffice365))
	if out := c.Tick(now.Add(pushGap + time.Second)); len(out.Send) != 0 {
		t.Errorf("a second follow-up was sent")
	}
	// Pushes queued before a check-in goes out make one check-in.
	later := now.Add(time.Hour)
	var sent int
	for range 3 {
		sent += len(checkIns(t, c.Receive(later, push).Send))
	}
	if sent != 1 {
		t.Errorf("3 pushes made %d check-ins; want 1", sent)
	}
}

func TestFailuresBackOff(t *testing.T) {
	c := newCore(t, enrolledState(protocol.PlatformWindows))
	online(t, c, t0)
	now := t0
	var last time.Duration
	for i := 1; i <= 4; i++ {
		now = now.Add(ResponseTimeout) // no answer
		out := c.Tick(now)
		if c.State().Failures != i || c.State().LastMessage == "" {
			t.Fatalf("after %d timeouts: failures %d, message %q", i, c.State().Failures, c.State().LastMessage)
		}
		if len(out.Send) != 0 {
			t.Fatalf("timeout %d resent at once", i)
		}
		wait := c.State().NextCheckIn.Sub(now)
		limit := Interval(protocol.PlatformWindows, now.Sub(t0))
		if wait > limit || wait < min(time.Minute<<(i-1), limit)/2 {
			t.Errorf("retry %d in %s; want backoff up to %s", i, wait, limit)
		}
		if i > 1 && wait < last/2 {
			t.Errorf("retry %d in %s after %s: not growing", i, wait, last)
		}
		last = wait
		now = c.State().NextCheckIn
		_, ci := only(t, c.Tick(now))
		if ci.Reason != protocol.CheckInRetry {
			t.Errorf("retry reason = %s; want retry", ci.Reason)
		}
	}
	// A refusal only an admin can end keeps the profiles and retries at
	// the schedule; a success resets the failures.
	c.st.Profiles = []Profile{{Type: protocol.ProfileEmail, Name: "Corp Mail", Authority: protocol.AuthorityOffice365}}
	out := c.Receive(now, protocol.Envelope{ReplyTo: c.inflight, Body: &protocol.CheckInResponse{Error: protocol.CodeAPNsCertificateMissing}})
	if len(out.Changes) != 0 || len(c.State().Profiles) != 1 || c.State().LastError != protocol.CodeAPNsCertificateMissing {
		t.Errorf("after apns_certificate_missing: changes %+v, profiles %d, last error %s", out.Changes, len(c.State().Profiles), c.State().LastError)
	}
	if wait, sched := c.State().NextCheckIn.Sub(now), Interval(protocol.PlatformWindows, now.Sub(t0)); wait < sched*9/10 {
		t.Errorf("retry after a refusal in %s; want at the schedule (%s)", wait, sched)
	}
	now = c.State().NextCheckIn
	env, _ := only(t, c.Tick(now))
	respond(c, now, env, ok(1, protocol.AuthorityOffice365))
	if c.State().Failures != 0 || c.State().LastError != protocol.CodeNone {
		t.Errorf("after a success: failures %d, last error %s", c.State().Failures, c.State().LastError)
	}
}

func TestStaleAndForeignResponses(t *testing.T) {
	c := newCore(t, enrolledState(protocol.PlatformWindows))
	env, _ := only(t, online(t, c, t0))
	respond(c, t0, env, ok(5, protocol.AuthorityOffice365, desired(protocol.ProfileEmail, "Corp Mail", 1)))
	// An answer to nothing in flight is ignored.
	if out := respond(c, t0, env, ok(9, protocol.AuthorityIntune)); out.Persist || c.State().Authority != protocol.AuthorityOffice365 {
		t.Errorf("an unawaited answer changed the state: %+v", out)
	}
	// A lower desired version is ignored.
	env, _ = only(t, c.Receive(t0.Add(time.Minute), protocol.Envelope{Body: &protocol.Push{}}))
	out := respond(c, t0.Add(time.Minute), env, ok(4, protocol.AuthorityOffice365))
	if len(out.Changes) != 0 || c.State().DesiredVersion != 5 || len(c.State().Profiles) != 1 {
		t.Errorf("an older desired state was applied: %+v", out.Changes)
	}
}

func TestDisconnectResendsCheckIn(t *testing.T) {
	c := newCore(t, enrolledState(protocol.PlatformWindows))
	online(t, c, t0)
	c.Disconnected(t0.Add(time.Second))
	if out := c.Tick(t0.Add(2 * ResponseTimeout)); len(out.Send) != 0 || c.State().Failures != 0 {
		t.Errorf("offline: sent %d, failures %d; want nothing, no failure", len(out.Send), c.State().Failures)
	}
	_, ci := only(t, c.Connected(t0.Add(3*ResponseTimeout)))
	if ci.Reason != protocol.CheckInEnrollment {
		t.Errorf("resent check-in reason = %s; want enrollment again", ci.Reason)
	}
}

// migrate applies an office365 → intune change to a device holding three
// office365 profiles, and returns the change time.
func migrate(t *testing.T) (*Core, time.Time) {
	t.Helper()
	c := newCore(t, enrolledState(protocol.PlatformWindows))
	env, _ := only(t, online(t, c, t0))
	respond(c, t0, env, ok(1, protocol.AuthorityOffice365,
		desired(protocol.ProfileEmail, "Corp Mail", 1),
		desired(protocol.ProfileEmail, "Legacy Mail", 1),
		desired(protocol.ProfileConfiguration, "Baseline", 1, protocol.Setting{Key: "passcode_required", Value: "true"})))
	change := t0.Add(time.Hour)
	env, _ = only(t, c.Receive(change, protocol.Envelope{Body: &protocol.Push{Epoch: 2}}))
	resp := ok(2, protocol.AuthorityIntune, desired(protocol.ProfileEmail, "Corp Mail", 4), desired(protocol.ProfileWiFi, "Corp WiFi", 1))
	resp.Epoch, resp.ChangedAt, resp.RetainUntil = 2, protocol.At(change), protocol.At(change.Add(7*24*time.Hour))
	out := respond(c, change, env, resp)
	kinds := map[string]ChangeKind{}
	for _, ch := range out.Changes {
		kinds[ch.Profile.Name+"/"+ch.Profile.Authority.String()] = ch.Kind
		if ch.Kind == Overwritten && (ch.Replaced == nil || ch.Replaced.Authority != protocol.AuthorityOffice365) {
			t.Errorf("overwrite without the replaced profile: %+v", ch)
		}
	}
	want := map[string]ChangeKind{
		"Corp Mail/intune": Overwritten, "Corp WiFi/intune": Installed,
		"Legacy Mail/office365": Retained, "Baseline/office365": Retained,
	}
	if !mapsEqual(kinds, want) {
		t.Fatalf("changes = %v; want %v", kinds, want)
	}
	return c, change
}

func mapsEqual[K comparable, V comparable](a, b map[K]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func TestAuthorityChangeRetainsAndExpires(t *testing.T) {
	c, change := migrate(t)
	st := c.State()
	deadline := change.Add(7 * 24 * time.Hour)
	if st.Authority != protocol.AuthorityIntune || st.PreviousAuthority != protocol.AuthorityOffice365 || st.Epoch != 2 {
		t.Errorf("state authority %s (previous %s, epoch %d); want intune after office365, epoch 2", st.Authority, st.PreviousAuthority, st.Epoch)
	}
	if pairs := Redundant(st.Profiles, st.Authority); len(pairs) != 1 || pairs[0].Retained.Name != "Legacy Mail" || pairs[0].Current.Name != "Corp Mail" {
		t.Errorf("Redundant = %+v; want Legacy Mail with Corp Mail", pairs)
	}
	if gaps := Gaps(st.Profiles, st.Authority); len(gaps) != 1 || gaps[0].Profile.Name != "Baseline" || !gaps[0].At.Equal(deadline) {
		t.Errorf("Gaps = %+v; want Baseline at %s", gaps, deadline)
	}
	// The deadline survives a restart.
	b, err := st.Encode()
	if err != nil {
		t.Fatal(err)
	}
	st2, err := DecodeState(b)
	if err != nil {
		t.Fatal(err)
	}
	c = newCore(t, st2)
	c.Start(change.Add(time.Hour))
	if w := c.NextWake(); !w.Equal(deadline) {
		t.Errorf("NextWake offline = %s; want the deadline %s", w, deadline)
	}
	if out := c.Tick(deadline.Add(-time.Second)); len(out.Changes) != 0 {
		t.Errorf("expired early: %+v", out.Changes)
	}
	out := c.Tick(deadline)
	if !out.Persist || len(out.Changes) != 2 || out.Changes[0].Kind != Expired || out.Changes[1].Kind != Expired {
		t.Fatalf("at the deadline: %+v; want both retained profiles expired", out)
	}
	if len(c.State().Profiles) != 2 || len(Redundant(c.State().Profiles, protocol.AuthorityIntune)) != 0 {
		t.Errorf("after the deadline: %+v", c.State().Profiles)
	}
}

func TestApplyDesired(t *testing.T) {
	now := t0.Add(time.Hour)
	retain := now.Add(7 * 24 * time.Hour)
	o365 := func(typ protocol.ProfileType, name string) Profile {
		return Profile{Type: typ, Name: name, Authority: protocol.AuthorityOffice365, Version: 1}
	}
	intune := func(typ protocol.ProfileType, name string, v uint64) Profile {
		return Profile{Type: typ, Name: name, Authority: protocol.AuthorityIntune, Version: v}
	}
	tests := []struct {
		name      string
		installed []Profile
		desired   []protocol.DesiredProfile
		retain    time.Time
		want      []ChangeKind
		left      int
	}{
		{"unchanged", []Profile{intune(protocol.ProfileEmail, "Mail", 2)}, []protocol.DesiredProfile{desired(protocol.ProfileEmail, "Mail", 2)}, time.Time{}, nil, 1},
		{"new version", []Profile{intune(protocol.ProfileEmail, "Mail", 2)}, []protocol.DesiredProfile{desired(protocol.ProfileEmail, "Mail", 3)}, time.Time{}, []ChangeKind{Updated}, 1},
		{"withdrawn", []Profile{intune(protocol.ProfileEmail, "Mail", 2)}, nil, time.Time{}, []ChangeKind{Removed}, 0},
		{"overwrite", []Profile{o365(protocol.ProfileEmail, "Mail")}, []protocol.DesiredProfile{desired(protocol.ProfileEmail, "Mail", 1)}, retain, []ChangeKind{Overwritten}, 1},
		{"same name other type is no successor", []Profile{o365(protocol.ProfileEmail, "Mail")}, []protocol.DesiredProfile{desired(protocol.ProfileWiFi, "Mail", 1)}, retain, []ChangeKind{Retained, Installed}, 2},
		{"no retention period: removed at once", []Profile{o365(protocol.ProfileEmail, "Mail")}, nil, time.Time{}, []ChangeKind{Removed}, 0},
		{"retention already over", []Profile{o365(protocol.ProfileEmail, "Mail")}, nil, now, []ChangeKind{Removed}, 0},
	}
	for _, tt := range tests {
		got, changes := applyDesired(tt.installed, protocol.AuthorityIntune, tt.desired, tt.retain, now)
		var kinds []ChangeKind
		for _, ch := range changes {
			kinds = append(kinds, ch.Kind)
		}
		if !slices.Equal(kinds, tt.want) || len(got) != tt.left {
			t.Errorf("%s: changes %v, %d left; want %v, %d", tt.name, kinds, len(got), tt.want, tt.left)
		}
	}
}

func TestCommands(t *testing.T) {
	c := newCore(t, enrolledState(protocol.PlatformWindows))
	env, _ := only(t, online(t, c, t0))
	resp := ok(1, protocol.AuthorityIntune, desired(protocol.ProfileVPN, "VPN", 1))
	resp.Commands = []protocol.Command{{ID: "c-1", Action: protocol.CommandRemoteLock, Message: "Call IT"}, {ID: "c-2", Action: protocol.CommandSync}}
	out := respond(c, t0, env, resp)
	if len(out.Locks) != 1 || out.Locks[0].ID != "c-1" || c.State().Lock == nil || c.State().Lock.Message != "Call IT" {
		t.Fatalf("lock = %+v, state %+v; want the lock asked for and recorded", out.Locks, c.State().Lock)
	}
	results := func(envs []protocol.Envelope) []string {
		var ids []string
		for _, e := range envs {
			if r, ok := e.Body.(*protocol.CommandResult); ok {
				ids = append(ids, r.ID+":"+r.Status.String())
			}
		}
		return ids
	}
	if got := results(out.Send); !slices.Equal(got, []string{"c-2:done"}) {
		t.Errorf("results before the lock finished = %v; want only the sync's", got)
	}
	if n := len(checkIns(t, out.Send)); n != 1 {
		t.Errorf("sync command made %d check-ins; want 1", n)
	}
	fin := c.Finish(t0, "c-1", protocol.CommandDone, "")
	if got := results(fin.Send); !slices.Equal(got, []string{"c-1:done"}) {
		t.Errorf("Finish sent %v; want c-1:done", got)
	}
	// The same command again, in a response or on its own, runs once.
	if out := c.Receive(t0, protocol.Envelope{Body: &protocol.Command{ID: "c-1", Action: protocol.CommandRemoteLock}}); len(out.Locks) != 0 || len(out.Send) != 0 {
		t.Errorf("a repeated command ran again: %+v", out)
	}
	// Unacknowledged results are sent again after a restart; acknowledged
	// ones never.
	c.Published(fin.Send[0])
	b, _ := c.State().Encode()
	st, err := DecodeState(b)
	if err != nil {
		t.Fatal(err)
	}
	c2 := newCore(t, st)
	c2.Start(t0.Add(time.Minute))
	got := results(c2.Connected(t0.Add(time.Minute)).Send)
	if !slices.Equal(got, []string{"c-2:done"}) {
		t.Errorf("results resent after a restart = %v; want the unacknowledged c-2 only", got)
	}
}

func TestWipeRetireUnenroll(t *testing.T) {
	for _, tt := range []struct {
		action protocol.CommandKind
		stop   string
	}{{protocol.CommandWipe, StoppedWiped}, {protocol.CommandRetire, StoppedRetired}} {
		c := newCore(t, enrolledState(protocol.PlatformWindows))
		env, _ := only(t, online(t, c, t0))
		resp := ok(1, protocol.AuthorityIntune, desired(protocol.ProfileVPN, "VPN", 1), desired(protocol.ProfileEmail, "Mail", 1))
		resp.Commands = []protocol.Command{{ID: "c-9", Action: tt.action}, {ID: "c-10", Action: protocol.CommandRemoteLock}}
		out := respond(c, t0, env, resp)
		if out.Stop != tt.stop || len(c.State().Profiles) != 0 || len(out.Locks) != 0 {
			t.Errorf("%s: stop %q, %d profiles, lock %v; want %q, none, no later command", tt.action, out.Stop, len(c.State().Profiles), out.Locks, tt.stop)
		}
		var removed int
		for _, ch := range out.Changes {
			if ch.Kind == Removed {
				removed++
			}
		}
		if removed != 2 {
			t.Errorf("%s removed %d profiles; want 2", tt.action, removed)
		}
		if out := c.Tick(t0.Add(24 * time.Hour)); len(out.Send) != 0 || !c.NextWake().IsZero() {
			t.Errorf("%s: the device still communicates", tt.action)
		}
	}
	c := newCore(t, enrolledState(protocol.PlatformWindows))
	c.st.Profiles = []Profile{{Type: protocol.ProfileEmail, Name: "Mail", Authority: protocol.AuthorityOffice365}}
	out := c.Unenroll(t0, "user request")
	if out.Stop != StoppedUnenrolled || len(out.Send) != 1 || len(out.Changes) != 1 {
		t.Errorf("Unenroll = %+v", out)
	}
	if _, ok := out.Send[0].Body.(*protocol.Unenroll); !ok {
		t.Errorf("Unenroll sent %T", out.Send[0].Body)
	}
}

func TestComplianceReportAfterApply(t *testing.T) {
	c := newCore(t, enrolledState(protocol.PlatformIOS))
	env, ci := only(t, online(t, c, t0))
	if ci.Compliance.State != protocol.ComplianceCompliant {
		t.Fatalf("compliance with no profiles = %s", ci.Compliance.State)
	}
	out := respond(c, t0, env, ok(1, protocol.AuthorityOffice365, desired(protocol.ProfileCompliance, "OS", 1, protocol.Setting{Key: "min_os_version", Value: "17.5"})))
	var report *protocol.ComplianceReport
	for _, e := range out.Send {
		if r, ok := e.Body.(*protocol.ComplianceReport); ok {
			report = r
		}
	}
	if report == nil || report.Compliance.State != protocol.ComplianceNoncompliant || !strings.Contains(report.Compliance.Failures[0], "17.5 required, device has 17.4") {
		t.Errorf("compliance report = %+v; want noncompliant for the OS version", report)
	}
}

func TestEvaluate(t *testing.T) {
	prof := func(settings ...protocol.Setting) []Profile {
		return []Profile{{Type: protocol.ProfileConfiguration, Name: "Baseline", Authority: protocol.AuthorityIntune, Settings: settings}}
	}
	s := func(k, v string) protocol.Setting { return protocol.Setting{Key: k, Value: v} }
	tests := []struct {
		profiles []Profile
		facts    Facts
		failures int
	}{
		{nil, Facts{}, 0},
		{prof(s("min_os_version", "17.5")), Facts{OSVersion: "17.4"}, 1},
		{prof(s("min_os_version", "17.5")), Facts{OSVersion: "17.10"}, 0},
		{prof(s("min_os_version", "17.5")), Facts{}, 1},
		{prof(s("passcode_required", "true")), Facts{}, 1},
		{prof(s("passcode_required", "false")), Facts{}, 0},
		{prof(s("encryption_required", "true")), Facts{Encrypted: true}, 0},
		{prof(s("encryption_required", "true"), s("passcode_required", "true"), s("server", "x")), Facts{}, 2},
		{append(prof(s("passcode_required", "true")), prof(s("passcode_required", "true"))...), Facts{}, 1}, // deduplicated
		{[]Profile{{Type: protocol.ProfileEmail, Name: "Mail", Settings: []protocol.Setting{s("passcode_required", "true")}}}, Facts{}, 0},
	}
	for i, tt := range tests {
		got := Evaluate(tt.profiles, tt.facts, t0)
		wantState := protocol.ComplianceCompliant
		if tt.failures > 0 {
			wantState = protocol.ComplianceNoncompliant
		}
		if len(got.Failures) != tt.failures || got.State != wantState {
			t.Errorf("case %d: Evaluate = %s %q; want %s with %d failures", i, got.State, got.Failures, wantState, tt.failures)
		}
	}
	var many []Profile
	for i := range 40 {
		many = append(many, Profile{Type: protocol.ProfileCompliance, Name: string(rune('a' + i)), Settings: []protocol.Setting{s("passcode_required", "true")}})
	}
	if got := Evaluate(many, Facts{}, t0); len(got.Failures) != protocol.MaxFailures {
		t.Errorf("40 failures reported as %d; want the cap %d", len(got.Failures), protocol.MaxFailures)
	}
}

func selfSigned(t *testing.T, notAfter time.Time) []byte {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: t0, NotAfter: notAfter}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestCertificateRenewalAndExpiry(t *testing.T) {
	st := enrolledState(protocol.PlatformWindows)
	st.CertNotAfter = t0.Add(20 * 24 * time.Hour) // inside the 30-day window
	c := newCore(t, st)
	env, ci := only(t, online(t, c, t0))
	if len(ci.RenewalCSR) == 0 {
		t.Fatal("a check-in inside the renewal window carries no CSR")
	}
	resp := ok(1, protocol.AuthorityOffice365)
	resp.Certificate = selfSigned(t, t0.Add(400*24*time.Hour))
	out := respond(c, t0, env, resp)
	if !out.Renewed || !c.State().CertNotAfter.Equal(t0.Add(400*24*time.Hour)) {
		t.Errorf("renewal: renewed %v, not after %s", out.Renewed, c.State().CertNotAfter)
	}

	st = enrolledState(protocol.PlatformWindows)
	st.CertNotAfter = t0.Add(time.Hour)
	c = newCore(t, st)
	env, _ = only(t, online(t, c, t0))
	respond(c, t0, env, ok(1, protocol.AuthorityOffice365))
	expired := t0.Add(2 * time.Hour)
	if out := c.Tick(expired); len(out.Send) != 0 {
		t.Errorf("an expired certificate still checks in")
	}
	if _, err := c.Sync(expired); !errors.Is(err, ErrCertificateExpired) {
		t.Errorf("Sync with an expired certificate = %v; want ErrCertificateExpired", err)
	}
	if w := c.NextWake(); !w.IsZero() {
		t.Errorf("NextWake after expiry = %s; want none", w)
	}
	s := StatusOf(c.State(), expired)
	if !s.CertificateExpired || len(s.Attention) == 0 || !strings.Contains(s.Attention[0], "re-enroll") {
		t.Errorf("status after expiry = %+v; want a re-enroll instruction", s.Attention)
	}
}

func TestManualSync(t *testing.T) {
	c := newCore(t, enrolledState(protocol.PlatformWindows))
	c.Start(t0)
	if _, err := c.Sync(t0); !errors.Is(err, ErrOffline) {
		t.Errorf("Sync offline = %v; want ErrOffline", err)
	}
	env, _ := only(t, c.Connected(t0))
	respond(c, t0, env, ok(1, protocol.AuthorityOffice365))
	out, err := c.Sync(t0.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	env, ci := only(t, out)
	if ci.Reason != protocol.CheckInManual {
		t.Errorf("sync reason = %s; want manual", ci.Reason)
	}
	res := respond(c, t0.Add(time.Minute+1500*time.Millisecond), env, ok(2, protocol.AuthorityIntune, desired(protocol.ProfileEmail, "Mail", 1))).Synced
	if res == nil || res.Authority != protocol.AuthorityIntune || !res.AuthorityChanged || len(res.Changes) != 1 || res.Duration != 1500*time.Millisecond {
		t.Errorf("sync result = %+v; want intune, changed, one profile, 1.5 s", res)
	}
	out, _ = c.Sync(t0.Add(time.Hour))
	env, _ = only(t, out)
	res = c.Receive(t0.Add(time.Hour), protocol.Envelope{ReplyTo: env.ID, Body: &protocol.CheckInResponse{Error: protocol.CodeRateLimited}}).Synced
	if res == nil || res.Error != protocol.CodeRateLimited {
		t.Errorf("refused sync result = %+v; want rate_limited", res)
	}
}

func TestMessageIDsUnique(t *testing.T) {
	c := newCore(t, enrolledState(protocol.PlatformWindows))
	seen := map[protocol.MessageID]bool{}
	now := t0
	online(t, c, now)
	for range 200 {
		now = now.Add(ResponseTimeout)
		c.Tick(now)
		now = c.State().NextCheckIn
		for _, e := range c.Tick(now).Send {
			if seen[e.ID] {
				t.Fatalf("message id %x sent twice", e.ID)
			}
			seen[e.ID] = true
		}
	}
}

func TestComplianceReportAtExpiry(t *testing.T) {
	c, change := migrate(t)
	c.SetFacts(Facts{OSVersion: "17.4"}) // no passcode: Baseline fails
	now := change.Add(time.Minute)
	env, ci := only(t, c.Tick(c.State().NextCheckIn))
	if ci.Compliance.State != protocol.ComplianceNoncompliant {
		t.Fatalf("compliance = %s; want noncompliant while Baseline is retained", ci.Compliance.State)
	}
	respond(c, now, env, ok(2, protocol.AuthorityIntune))
	out := c.Tick(change.Add(7 * 24 * time.Hour))
	var report *protocol.ComplianceReport
	for _, e := range out.Send {
		if r, ok := e.Body.(*protocol.ComplianceReport); ok {
			report = r
		}
	}
	if report == nil || report.Compliance.State != protocol.ComplianceCompliant {
		t.Errorf("report at the deadline = %+v; want compliant once Baseline is gone (a protection gap)", report)
	}
}

// TestTwoLocksInOneResponse checks that every lock of a batch is carried
// out and reported.
func TestTwoLocksInOneResponse(t *testing.T) {
	c := newCore(t, enrolledState(protocol.PlatformWindows))
	env, _ := only(t, online(t, c, t0))
	resp := ok(1, protocol.AuthorityIntune)
	resp.Commands = []protocol.Command{{ID: "l-1", Action: protocol.CommandRemoteLock}, {ID: "l-2", Action: protocol.CommandRemoteLock}}
	out := respond(c, t0, env, resp)
	if len(out.Locks) != 2 {
		t.Fatalf("Locks = %+v; want both", out.Locks)
	}
	for _, l := range out.Locks {
		if fin := c.Finish(t0, l.ID, protocol.CommandDone, ""); len(fin.Send) != 1 {
			t.Errorf("Finish(%s) sent %d results; want 1", l.ID, len(fin.Send))
		}
	}
}
