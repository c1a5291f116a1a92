package agent

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	mrand "math/rand/v2"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mdm-authority/mdm/protocol"
)

// testNow is where the fake clocks of these tests start.
var testNow = time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)

// testRand returns the seeded source the tests use.
func testRand() *mrand.Rand { return mrand.New(mrand.NewPCG(1, 2)) }

// enrolledState returns the state of device d-1 of tenant t1, enrolled at
// enrolled on platform p under Office 365, with a certificate valid for a
// year. CheckIns is 0: it is a fresh enrollment.
func freshState(p protocol.Platform, enrolled time.Time) *State {
	return &State{
		Version: StateVersion, Tenant: "t1", Device: "d-1", Platform: p,
		User: "ada@contoso.example", EnrollmentType: protocol.EnrollUser,
		EnrolledAt: enrolled, Certificate: []byte{1}, CertNotAfter: enrolled.AddDate(1, 0, 0),
		Authority: protocol.AuthorityOffice365, Epoch: 1, AuthoritySince: enrolled,
	}
}

// settledState returns a device enrolled a month before now that has
// checked in before and is next due at now+next.
func settledState(p protocol.Platform, now time.Time, next time.Duration) *State {
	st := freshState(p, now.AddDate(0, -1, 0))
	st.CheckIns, st.LastCheckIn, st.LastAttempt = 40, now.Add(-time.Hour), now.Add(-time.Hour)
	st.NextCheckIn = now.Add(next)
	st.DesiredVersion = 41
	return st
}

// profile returns an installed profile.
func installedProfile(typ protocol.ProfileType, name string, a protocol.Authority, version uint64, settings ...protocol.Setting) Profile {
	return Profile{Type: typ, Name: name, Authority: a, Version: version, Settings: settings, InstalledAt: testNow.Add(-24 * time.Hour)}
}

var serviceIDs atomic.Uint64

// serviceID returns a message id for an envelope the fake service sends.
func serviceID() protocol.MessageID {
	var id protocol.MessageID
	n := serviceIDs.Add(1)
	id[0], id[14], id[15] = 0xee, byte(n>>8), byte(n)
	return id
}

// viaCodec encodes and decodes env as the runner would receive it. A test
// that builds an invalid message is wrong, so it panics.
func viaCodec(env protocol.Envelope) protocol.Envelope {
	b, err := protocol.Encode(env)
	if err != nil {
		panic(fmt.Sprintf("test message %s does not encode: %v", env.Kind(), err))
	}
	d, err := protocol.Decode(b)
	if err != nil {
		panic(fmt.Sprintf("test message %s does not decode: %v", env.Kind(), err))
	}
	return d
}

// respond delivers resp to c at now as the answer to the check-in sent,
// through the real codec.
func answer(c *Core, now time.Time, sent protocol.Envelope, resp *protocol.CheckInResponse) Output {
	env := protocol.Envelope{ID: serviceID(), Sent: protocol.At(now), Device: sent.Device, ReplyTo: sent.ID, Body: resp}
	return c.Receive(now, viaCodec(env))
}

// deliver delivers a downlink message other than a check-in response.
func deliver(c *Core, now time.Time, body protocol.Body) Output {
	env := protocol.Envelope{ID: serviceID(), Sent: protocol.At(now), Device: c.State().Device, Body: body}
	return c.Receive(now, viaCodec(env))
}

// ok returns a successful check-in response of authority a that leaves
// the schedule and the desired state unchanged.
func success(a protocol.Authority, desiredVersion uint64) *protocol.CheckInResponse {
	return &protocol.CheckInResponse{Authority: a, Epoch: 1, DesiredVersion: desiredVersion}
}

// rig drives a core on a fake clock and checks every envelope the core
// asks to send: it must survive the real codec, name the device and carry
// a message id never used before.
type rig struct {
	t   *testing.T
	c   *Core
	now time.Time
	ids map[protocol.MessageID]bool
}

func newRig(t *testing.T, st *State, now time.Time) *rig {
	return &rig{t: t, c: New(st, Config{Rand: testRand()}), now: now, ids: make(map[protocol.MessageID]bool)}
}

// restart replaces the core with one built from the state as it was
// persisted, as the agent does when it starts again. The new core gets
// another seed: the agent seeds each run afresh.
func (r *rig) restart() Output {
	r.t.Helper()
	b, err := r.c.State().Encode()
	if err != nil {
		r.t.Fatalf("State.Encode() = %v; want nil", err)
	}
	st, err := DecodeState(b)
	if err != nil {
		r.t.Fatalf("DecodeState(Encode()) = %v; want nil", err)
	}
	r.c = New(st, Config{Rand: mrand.New(mrand.NewPCG(uint64(len(r.ids))+3, 4)), Facts: r.c.Facts()})
	return r.start()
}

func (r *rig) check(o Output) Output {
	r.t.Helper()
	for _, env := range o.Send {
		b, err := protocol.Encode(env)
		if err != nil {
			r.t.Errorf("protocol.Encode(%s) = %v; want nil", env.Kind(), err)
			continue
		}
		d, err := protocol.Decode(b)
		if err != nil {
			r.t.Errorf("protocol.Decode(Encode(%s)) = %v; want nil", env.Kind(), err)
			continue
		}
		if d.Kind() != env.Kind() || d.ID != env.ID {
			r.t.Errorf("Decode(Encode(%s %v)) = %s %v; want the same", env.Kind(), env.ID, d.Kind(), d.ID)
		}
		if d.Device != r.c.State().Device {
			r.t.Errorf("%s envelope device = %q; want %q", env.Kind(), d.Device, r.c.State().Device)
		}
		if r.ids[env.ID] {
			r.t.Errorf("%s envelope id %v was used before; want unique ids", env.Kind(), env.ID)
		}
		r.ids[env.ID] = true
	}
	return o
}

func (r *rig) start() Output        { r.t.Helper(); return r.check(r.c.Start(r.now)) }
func (r *rig) connect() Output      { r.t.Helper(); return r.check(r.c.Connected(r.now)) }
func (r *rig) disconnect()          { r.c.Disconnected(r.now) }
func (r *rig) tick() Output         { r.t.Helper(); return r.check(r.c.Tick(r.now)) }
func (r *rig) unenroll() Output     { r.t.Helper(); return r.check(r.c.Unenroll(r.now, "user request")) }
func (r *rig) at(t time.Time)       { r.now = t }
func (r *rig) wait(d time.Duration) { r.now = r.now.Add(d) }

// advance moves the clock by d and ticks.
func (r *rig) advance(d time.Duration) Output {
	r.t.Helper()
	r.now = r.now.Add(d)
	return r.tick()
}

func (r *rig) respond(sent protocol.Envelope, resp *protocol.CheckInResponse) Output {
	r.t.Helper()
	return r.check(answer(r.c, r.now, sent, resp))
}

func (r *rig) deliver(body protocol.Body) Output {
	r.t.Helper()
	return r.check(deliver(r.c, r.now, body))
}

func (r *rig) push() Output {
	r.t.Helper()
	return r.deliver(&protocol.Push{Epoch: 1, Reason: protocol.PushProfilesChanged})
}

func (r *rig) sync() (Output, error) {
	r.t.Helper()
	o, err := r.c.Sync(r.now)
	return r.check(o), err
}

func (r *rig) finish(id string, status protocol.CommandStatus) Output {
	r.t.Helper()
	return r.check(r.c.Finish(r.now, id, status, ""))
}

// online starts the core and connects it, returning what both sent.
func (r *rig) online() Output {
	r.t.Helper()
	var out Output
	out.merge(r.start())
	out.merge(r.connect())
	return out
}

// bodies returns the bodies of type T that o sends, with their envelopes.
func sentBodies[T protocol.Body](o Output) ([]T, []protocol.Envelope) {
	var bs []T
	var envs []protocol.Envelope
	for _, env := range o.Send {
		if b, ok := env.Body.(T); ok {
			bs = append(bs, b)
			envs = append(envs, env)
		}
	}
	return bs, envs
}

// checkIns returns the check-ins o sends.
func sentCheckIns(o Output) ([]*protocol.CheckIn, []protocol.Envelope) {
	return sentBodies[*protocol.CheckIn](o)
}

// oneCheckIn returns the only check-in o sends, failing the test when o
// sends none or several.
func oneCheckIn(t *testing.T, o Output, reason protocol.CheckInReason) (*protocol.CheckIn, protocol.Envelope) {
	t.Helper()
	cs, envs := sentCheckIns(o)
	if len(cs) != 1 {
		t.Fatalf("sent %d check-ins (%v); want 1 with reason %v", len(cs), sentReasons(o), reason)
	}
	if cs[0].Reason != reason {
		t.Errorf("check-in reason = %v; want %v", cs[0].Reason, reason)
	}
	return cs[0], envs[0]
}

func noCheckIn(t *testing.T, what string, o Output) {
	t.Helper()
	if cs, _ := sentCheckIns(o); len(cs) > 0 {
		t.Errorf("%s sent check-ins %v; want none", what, sentReasons(o))
	}
}

func sentReasons(o Output) []protocol.CheckInReason {
	var rs []protocol.CheckInReason
	cs, _ := sentCheckIns(o)
	for _, c := range cs {
		rs = append(rs, c.Reason)
	}
	return rs
}

func sentResults(o Output) []*protocol.CommandResult {
	rs, _ := sentBodies[*protocol.CommandResult](o)
	return rs
}

// --- Enrollment and scheduled check-ins ---

func TestCoreEnrollmentCheckIn(t *testing.T) {
	tests := []struct {
		name     string
		platform protocol.Platform
		offline  time.Duration // how long the device stays offline after Start
	}{
		{"ios at once", protocol.PlatformIOS, 0},
		{"windows at once", protocol.PlatformWindows, 0},
		{"android connects late", protocol.PlatformAndroid, 10 * time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig(t, freshState(tt.platform, testNow), testNow)
			if o := r.start(); len(o.Send) != 0 {
				t.Errorf("Start() sent %d envelopes before Connected; want none", len(o.Send))
			}
			for range 5 {
				if o := r.advance(tt.offline / 5); len(o.Send) != 0 {
					t.Errorf("Tick(%v) while offline sent %d envelopes; want none", r.now, len(o.Send))
				}
			}
			ci, _ := oneCheckIn(t, r.connect(), protocol.CheckInEnrollment)
			if ci.Epoch != 1 || ci.CertificateExpiry != protocol.At(testNow.AddDate(1, 0, 0)) {
				t.Errorf("enrollment check-in epoch, certificate expiry = %d, %v; want 1, %v", ci.Epoch, ci.CertificateExpiry, protocol.At(testNow.AddDate(1, 0, 0)))
			}
			if o := r.advance(time.Second); len(o.Send) != 0 {
				t.Errorf("Tick() with the enrollment check-in in flight sent %v; want nothing", sentReasons(o))
			}
		})
	}
}

func TestCoreScheduledCheckIn(t *testing.T) {
	st := settledState(protocol.PlatformIOS, testNow, time.Hour)
	st.Epoch = 3
	st.Profiles = []Profile{
		installedProfile(protocol.ProfileEmail, "Corp Mail", protocol.AuthorityOffice365, 3),
		installedProfile(protocol.ProfileConfiguration, "Device Security", protocol.AuthorityOffice365, 1,
			protocol.Setting{Key: SettingPasscodeRequired, Value: "true"}),
	}
	r := newRig(t, st, testNow)
	r.c.SetFacts(Facts{OSVersion: "17.4"})
	if o := r.online(); len(o.Send) != 0 {
		t.Fatalf("Start and Connected sent %v before the schedule; want nothing", sentReasons(o))
	}
	if got := r.c.NextWake(); !got.Equal(testNow.Add(time.Hour)) {
		t.Errorf("NextWake() = %v; want %v", got, testNow.Add(time.Hour))
	}
	noCheckIn(t, "Tick one second early", r.advance(time.Hour-time.Second))
	ci, _ := oneCheckIn(t, r.advance(time.Second), protocol.CheckInScheduled)
	want := []protocol.InstalledProfile{
		{Type: protocol.ProfileEmail, Name: "Corp Mail", Authority: protocol.AuthorityOffice365, Version: 3},
		{Type: protocol.ProfileConfiguration, Name: "Device Security", Authority: protocol.AuthorityOffice365, Version: 1},
	}
	if !slices.Equal(ci.Profiles, want) {
		t.Errorf("check-in profiles = %v; want %v", ci.Profiles, want)
	}
	if ci.DesiredVersion != 41 || ci.Epoch != 3 || ci.OSVersion != "17.4" {
		t.Errorf("check-in desired_version, epoch, os = %d, %d, %q; want 41, 3, \"17.4\"", ci.DesiredVersion, ci.Epoch, ci.OSVersion)
	}
	if ci.CertificateExpiry != protocol.At(st.CertNotAfter) {
		t.Errorf("check-in certificate_expiry = %v; want %v", ci.CertificateExpiry, protocol.At(st.CertNotAfter))
	}
	if ci.Compliance.State != protocol.ComplianceNoncompliant || len(ci.Compliance.Failures) != 1 || ci.Compliance.EvaluatedAt != protocol.At(r.now) {
		t.Errorf("check-in compliance = %+v; want noncompliant with one failure, evaluated at %v", ci.Compliance, protocol.At(r.now))
	}
	if len(ci.RenewalCSR) != 0 {
		t.Errorf("check-in renewal CSR = %x; want none outside the renewal window", ci.RenewalCSR)
	}
}

func TestCoreOfflineSendsNothing(t *testing.T) {
	r := newRig(t, settledState(protocol.PlatformWindows, testNow, time.Minute), testNow)
	r.start()
	var out Output
	for range 10 {
		out.merge(r.advance(time.Hour))
	}
	if len(out.Send) != 0 {
		t.Errorf("an offline core sent %d envelopes; want none", len(out.Send))
	}
	if _, err := r.sync(); !errors.Is(err, ErrOffline) {
		t.Errorf("Sync() offline = %v; want %v", err, ErrOffline)
	}
	// Once connected, it catches up with the check-in it missed.
	oneCheckIn(t, r.connect(), protocol.CheckInScheduled)
}

// --- Pushes ---

// sentAt is a check-in: its offset from testNow and its reason.
type sentAt struct {
	at     time.Duration
	reason protocol.CheckInReason
}

// runPushes plays a service against the rig until testNow+horizon: it
// delivers pushes at the given offsets from testNow, answers each
// check-in after latency, and ticks whenever NextWake asks. first is the
// output of the step that brought the rig online. It returns the
// check-ins sent.
func runPushes(t *testing.T, r *rig, first Output, pushes []time.Duration, latency, horizon time.Duration) []sentAt {
	t.Helper()
	var got []sentAt
	var awaited *protocol.Envelope
	var answerAt time.Time
	record := func(o Output) {
		cs, envs := sentCheckIns(o)
		for i, c := range cs {
			got = append(got, sentAt{r.now.Sub(testNow), c.Reason})
			awaited, answerAt = &envs[i], r.now.Add(latency)
		}
	}
	record(first)
	const (
		none = iota
		push
		reply
		wake
	)
	for range 10000 {
		next, what := testNow.Add(horizon), none
		if len(pushes) > 0 && !testNow.Add(pushes[0]).After(next) {
			next, what = testNow.Add(pushes[0]), push
		}
		if awaited != nil && answerAt.Before(next) {
			next, what = answerAt, reply
		}
		if w := r.c.NextWake(); !w.IsZero() && w.Before(next) {
			next, what = later(w, r.now), wake
		}
		if what == none {
			return got
		}
		r.at(next)
		switch what {
		case push:
			pushes = pushes[1:]
			record(r.push())
		case reply:
			sent := *awaited
			awaited = nil
			// next_checkin keeps the schedule beyond the horizon.
			record(r.respond(sent, &protocol.CheckInResponse{Authority: protocol.AuthorityOffice365, Epoch: 1, DesiredVersion: 41, NextCheckIn: 8 * 3600}))
		case wake:
			record(r.tick())
		}
	}
	t.Fatalf("the core does not settle: NextWake() keeps returning %v at %v", r.c.NextWake(), r.now)
	return nil
}

func TestCorePush(t *testing.T) {
	ms := time.Millisecond
	// Offsets are in fractions of pushGap so that the cases hold for any
	// gap of a few seconds.
	g := pushGap
	tests := []struct {
		name    string
		due     bool // a scheduled check-in goes out as the device connects
		pushes  []time.Duration
		latency time.Duration
		want    []sentAt
	}{
		{"one push checks in at once", false, []time.Duration{0}, g / 4,
			[]sentAt{{0, protocol.CheckInPushed}}},
		{"burst after a pushed check-in makes one more, at the end of the gap", false,
			[]time.Duration{0, g / 2, g/2 + ms, g/2 + 2*ms, g/2 + 3*ms}, g / 4,
			[]sentAt{{0, protocol.CheckInPushed}, {g, protocol.CheckInPushed}}},
		{"burst during a scheduled check-in makes one follow-up after the answer", true,
			[]time.Duration{100 * ms, 200 * ms, 300 * ms, 400 * ms}, time.Second,
			[]sentAt{{0, protocol.CheckInScheduled}, {time.Second, protocol.CheckInPushed}}},
		{"burst during a pushed check-in makes one follow-up, after the gap", false,
			[]time.Duration{0, ms, 2 * ms, 3 * ms}, g / 2,
			[]sentAt{{0, protocol.CheckInPushed}, {g, protocol.CheckInPushed}}},
		{"follow-up waits for a slow answer", false,
			[]time.Duration{0, 100 * ms}, 30 * time.Second,
			[]sentAt{{0, protocol.CheckInPushed}, {30 * time.Second, protocol.CheckInPushed}}},
		{"pushes beyond the gap each check in", false,
			[]time.Duration{0, 30 * time.Second}, time.Second,
			[]sentAt{{0, protocol.CheckInPushed}, {30 * time.Second, protocol.CheckInPushed}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			next := 8 * time.Hour
			if tt.due {
				next = 0
			}
			r := newRig(t, settledState(protocol.PlatformAndroid, testNow, next), testNow)
			got := runPushes(t, r, r.online(), tt.pushes, tt.latency, 2*time.Minute)
			if !slices.Equal(got, tt.want) {
				t.Errorf("check-ins (offset, reason) = %v; want %v", got, tt.want)
			}
		})
	}
}

func TestCorePushFloodIsSpaced(t *testing.T) {
	r := newRig(t, settledState(protocol.PlatformWindows, testNow, 8*time.Hour), testNow)
	var pushes []time.Duration
	for i := range 120 {
		pushes = append(pushes, time.Duration(i)*500*time.Millisecond)
	}
	got := runPushes(t, r, r.online(), pushes, 200*time.Millisecond, 2*time.Minute)
	if least := int(time.Minute / (pushGap + time.Second)); len(got) < least {
		t.Errorf("a push every 500ms for 60s made %d check-ins; want at least %d", len(got), least)
	}
	for i := 1; i < len(got); i++ {
		if gap := got[i].at - got[i-1].at; gap < pushGap || gap > pushGap+time.Second {
			t.Errorf("pushed check-ins at %v and %v are %v apart; want %v to %v", got[i-1].at, got[i].at, gap, pushGap, pushGap+time.Second)
		}
	}
	if n := len(got); n > 0 && got[n-1].at < time.Minute-pushGap {
		t.Errorf("last pushed check-in at %v; want one after the last push at 59.5s", got[n-1].at)
	}
}

func TestCorePushGapWakes(t *testing.T) {
	r := newRig(t, settledState(protocol.PlatformIOS, testNow, 8*time.Hour), testNow)
	r.online()
	_, env := oneCheckIn(t, r.push(), protocol.CheckInPushed)
	r.wait(pushGap / 4)
	r.respond(env, success(protocol.AuthorityOffice365, 41))
	r.wait(pushGap / 4)
	noCheckIn(t, "a push inside the push gap", r.push())
	if got, want := r.c.NextWake(), testNow.Add(pushGap); !got.Equal(want) {
		t.Errorf("NextWake() = %v; want %v (the end of the push gap)", got, want)
	}
	r.at(testNow.Add(pushGap - time.Millisecond))
	noCheckIn(t, "Tick before the gap ends", r.tick())
	r.at(testNow.Add(pushGap))
	oneCheckIn(t, r.tick(), protocol.CheckInPushed)
}

// --- Failures ---

func TestCoreCheckInTimeoutBacksOff(t *testing.T) {
	st := settledState(protocol.PlatformWindows, testNow, 0)
	r := newRig(t, st, testNow)
	_, env := oneCheckIn(t, r.online(), protocol.CheckInScheduled)
	var prev time.Duration
	for failures := 1; failures <= 6; failures++ {
		noCheckIn(t, "Tick 1s before the timeout", r.advance(ResponseTimeout-time.Second))
		out := r.advance(time.Second)
		noCheckIn(t, "Tick at the timeout", out)
		if !out.Persist {
			t.Errorf("Tick at timeout %d: Persist = false; want true", failures)
		}
		if st.Failures != failures || st.FailedChecks != uint64(failures) {
			t.Errorf("after timeout %d: Failures, FailedChecks = %d, %d; want %d, %d", failures, st.Failures, st.FailedChecks, failures, failures)
		}
		if st.LastMessage == "" {
			t.Errorf("after timeout %d: LastMessage is empty; want why", failures)
		}
		delay := st.NextCheckIn.Sub(r.now)
		d := min(backoffBase<<(failures-1), 8*time.Hour)
		if delay < d/2 || delay > d {
			t.Errorf("retry %d delay = %v; want within [%v, %v]", failures, delay, d/2, d)
		}
		if delay < prev {
			t.Errorf("retry %d delay = %v, shorter than the previous %v; want growing delays", failures, delay, prev)
		}
		prev = delay
		if w := r.c.NextWake(); !w.Equal(st.NextCheckIn) {
			t.Errorf("NextWake() = %v; want the retry at %v", w, st.NextCheckIn)
		}
		noCheckIn(t, "Tick before the retry", r.advance(delay-time.Millisecond))
		_, env = oneCheckIn(t, r.advance(time.Millisecond), protocol.CheckInRetry)
	}
	r.wait(time.Second)
	r.respond(env, success(protocol.AuthorityOffice365, 41))
	if st.Failures != 0 || st.LastError != 0 || st.LastMessage != "" {
		t.Errorf("after a successful answer: Failures, LastError, LastMessage = %d, %v, %q; want 0, none, \"\"", st.Failures, st.LastError, st.LastMessage)
	}
	if st.FailedChecks != 6 {
		t.Errorf("FailedChecks = %d; want 6, a history", st.FailedChecks)
	}
}

func TestCoreRefusedCheckIn(t *testing.T) {
	tests := []struct {
		code     protocol.ErrorCode
		schedule bool // retries at the schedule rather than with backoff
	}{
		{protocol.CodeRateLimited, false},
		{protocol.CodeInternal, false},
		{protocol.CodeAPNsCertificateMissing, true},
		{protocol.CodeNotEnrolled, true},
	}
	for _, tt := range tests {
		t.Run(tt.code.String(), func(t *testing.T) {
			st := settledState(protocol.PlatformIOS, testNow, 0)
			st.Profiles = []Profile{
				installedProfile(protocol.ProfileEmail, "Corp Mail", protocol.AuthorityOffice365, 3),
				installedProfile(protocol.ProfileCompliance, "Baseline", protocol.AuthorityOffice365, 1),
			}
			before := slices.Clone(st.Profiles)
			r := newRig(t, st, testNow)
			_, env := oneCheckIn(t, r.online(), protocol.CheckInScheduled)
			r.wait(time.Second)
			out := r.respond(env, &protocol.CheckInResponse{Error: tt.code, Message: tt.code.Hint()})
			if len(out.Changes) != 0 || !slices.EqualFunc(st.Profiles, before, profilesEqual) {
				t.Errorf("refused with %v: changes %v, profiles %v; want the profiles kept", tt.code, out.Changes, st.Profiles)
			}
			noCheckIn(t, "the refusal", out)
			if st.Failures != 1 || st.LastError != tt.code {
				t.Errorf("Failures, LastError = %d, %v; want 1, %v", st.Failures, st.LastError, tt.code)
			}
			delay := st.NextCheckIn.Sub(r.now)
			lo, hi := backoffBase/2, backoffBase
			if tt.schedule {
				i := Interval(st.Platform, r.now.Sub(st.EnrolledAt))
				lo, hi = i*9/10, i
			}
			if delay < lo || delay > hi {
				t.Errorf("retry after %v in %v; want within [%v, %v]", tt.code, delay, lo, hi)
			}
			if s := r.c.Status(r.now); len(s.Attention) == 0 || !strings.Contains(s.Attention[0], tt.code.String()) {
				t.Errorf("Status().Attention = %q; want the refusal %v", s.Attention, tt.code)
			}
			r.at(st.NextCheckIn)
			_, env = oneCheckIn(t, r.tick(), protocol.CheckInRetry)
			r.respond(env, success(protocol.AuthorityOffice365, 41))
			if st.Failures != 0 || st.LastError != 0 {
				t.Errorf("after success: Failures, LastError = %d, %v; want 0, none", st.Failures, st.LastError)
			}
		})
	}
}

func profilesEqual(a, b Profile) bool {
	return a.Type == b.Type && a.Name == b.Name && a.Authority == b.Authority && a.Version == b.Version &&
		slices.Equal(a.Settings, b.Settings) && a.RetainUntil.Equal(b.RetainUntil)
}

func TestCoreIgnoresStaleResponse(t *testing.T) {
	tests := []struct {
		name  string
		reply func(r *rig, sent protocol.Envelope) protocol.Envelope // the envelope the stale answer replies to
	}{
		{"unknown id", func(r *rig, sent protocol.Envelope) protocol.Envelope {
			sent.ID = protocol.MessageID{0xab}
			return sent
		}},
		{"answer after the timeout", func(r *rig, sent protocol.Envelope) protocol.Envelope {
			r.advance(ResponseTimeout)
			return sent
		}},
		{"second answer to the same check-in", func(r *rig, sent protocol.Envelope) protocol.Envelope {
			r.respond(sent, success(protocol.AuthorityOffice365, 41))
			return sent
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := settledState(protocol.PlatformAndroid, testNow, 0)
			st.Profiles = []Profile{installedProfile(protocol.ProfileEmail, "Corp Mail", protocol.AuthorityOffice365, 3)}
			r := newRig(t, st, testNow)
			_, env := oneCheckIn(t, r.online(), protocol.CheckInScheduled)
			stale := tt.reply(r, env)
			before, _ := st.Encode()
			o := r.respond(stale, &protocol.CheckInResponse{
				Authority: protocol.AuthorityIntune, Epoch: 9, DesiredVersion: 99,
				Commands: []protocol.Command{{ID: "c-stale", Action: protocol.CommandWipe}},
			})
			if len(o.Send) != 0 || len(o.Changes) != 0 || o.Persist || o.Stop != "" {
				t.Errorf("Receive(stale answer) = %+v; want nothing", o)
			}
			if after, _ := st.Encode(); string(after) != string(before) {
				t.Errorf("a stale answer changed the state:\n%s\nwant\n%s", after, before)
			}
		})
	}
}

func TestCoreDisconnectedResends(t *testing.T) {
	tests := []struct {
		name   string
		st     func() *State
		reason protocol.CheckInReason
	}{
		{"enrollment", func() *State { return freshState(protocol.PlatformIOS, testNow) }, protocol.CheckInEnrollment},
		{"scheduled", func() *State { return settledState(protocol.PlatformWindows, testNow, 0) }, protocol.CheckInScheduled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := tt.st()
			r := newRig(t, st, testNow)
			_, first := oneCheckIn(t, r.online(), tt.reason)
			r.wait(10 * time.Second)
			r.disconnect()
			if o := r.advance(5 * time.Minute); len(o.Send) != 0 {
				t.Errorf("Tick() offline sent %d envelopes; want none", len(o.Send))
			}
			if st.Failures != 0 || st.FailedChecks != 0 {
				t.Errorf("after a lost connection: Failures, FailedChecks = %d, %d; want 0, 0", st.Failures, st.FailedChecks)
			}
			_, again := oneCheckIn(t, r.connect(), tt.reason)
			if again.ID == first.ID {
				t.Errorf("resent check-in id = %v; want a new id", again.ID)
			}
			if o := r.respond(first, success(protocol.AuthorityOffice365, 41)); o.Persist {
				t.Errorf("an answer to the abandoned check-in was taken: %+v", o)
			}
			r.wait(time.Second)
			r.respond(again, success(protocol.AuthorityOffice365, 41))
			if st.LastCheckIn != r.now || st.Failures != 0 {
				t.Errorf("LastCheckIn, Failures = %v, %d; want %v, 0", st.LastCheckIn, st.Failures, r.now)
			}
		})
	}
}

// --- Commands ---

func TestCoreRemoteLock(t *testing.T) {
	for _, inResponse := range []bool{false, true} {
		t.Run(fmt.Sprintf("in response %v", inResponse), func(t *testing.T) {
			st := settledState(protocol.PlatformIOS, testNow, 0)
			r := newRig(t, st, testNow)
			_, env := oneCheckIn(t, r.online(), protocol.CheckInScheduled)
			cmd := protocol.Command{ID: "c-lock", Action: protocol.CommandRemoteLock, Message: "Call IT at 555-0100"}
			var out Output
			if inResponse {
				resp := success(protocol.AuthorityIntune, 41)
				resp.Commands = []protocol.Command{cmd}
				out = r.respond(env, resp)
			} else {
				out = r.deliver(&cmd)
			}
			if len(out.Locks) != 1 || out.Locks[0].ID != "c-lock" || out.Locks[0].Message != cmd.Message {
				t.Fatalf("Output.Lock = %+v; want command c-lock", out.Locks)
			}
			if st.Lock == nil || st.Lock.Command != "c-lock" || st.Lock.Message != cmd.Message || !st.Lock.At.Equal(r.now) {
				t.Errorf("State.Lock = %+v; want c-lock at %v", st.Lock, r.now)
			}
			if !out.Persist {
				t.Errorf("lock: Persist = false; want true")
			}
			if rs := sentResults(out); len(rs) != 0 {
				t.Errorf("lock sent results %+v before Finish; want none", rs)
			}
			if rs := sentResults(r.advance(time.Second)); len(rs) != 0 {
				t.Errorf("Tick sent results %+v before Finish; want none", rs)
			}
			fin := r.finish("c-lock", protocol.CommandDone)
			rs := sentResults(fin)
			if len(rs) != 1 || rs[0].ID != "c-lock" || rs[0].Status != protocol.CommandDone || rs[0].Completed != protocol.At(r.now) {
				t.Errorf("Finish() results = %+v; want c-lock done at %v", rs, protocol.At(r.now))
			}
			if !fin.Persist {
				t.Errorf("Finish: Persist = false; want true")
			}
			if rs := sentResults(r.finish("c-lock", protocol.CommandDone)); len(rs) != 0 {
				t.Errorf("second Finish() results = %+v; want none", rs)
			}
		})
	}
}

func TestCoreWipeRetire(t *testing.T) {
	tests := []struct {
		action     protocol.CommandKind
		inResponse bool
		stop       string
	}{
		{protocol.CommandWipe, false, StoppedWiped},
		{protocol.CommandWipe, true, StoppedWiped},
		{protocol.CommandRetire, false, StoppedRetired},
		{protocol.CommandRetire, true, StoppedRetired},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%v in response %v", tt.action, tt.inResponse), func(t *testing.T) {
			st := settledState(protocol.PlatformAndroid, testNow, 0)
			st.Profiles = []Profile{
				installedProfile(protocol.ProfileEmail, "Corp Mail", protocol.AuthorityOffice365, 3),
				installedProfile(protocol.ProfileCompliance, "Baseline", protocol.AuthorityOffice365, 1,
					protocol.Setting{Key: SettingEncryptionRequired, Value: "true"}),
			}
			r := newRig(t, st, testNow)
			_, env := oneCheckIn(t, r.online(), protocol.CheckInScheduled)
			cmd := protocol.Command{ID: "c-1", Action: tt.action}
			var out Output
			if tt.inResponse {
				resp := success(protocol.AuthorityOffice365, 41)
				resp.Commands = []protocol.Command{cmd}
				out = r.respond(env, resp)
			} else {
				out = r.deliver(&cmd)
			}
			if out.Stop != tt.stop || st.Stopped != tt.stop {
				t.Errorf("%v: Output.Stop, State.Stopped = %q, %q; want %q", tt.action, out.Stop, st.Stopped, tt.stop)
			}
			var removed []string
			for _, ch := range out.Changes {
				if ch.Kind == Removed {
					removed = append(removed, ch.Profile.Name)
				}
			}
			slices.Sort(removed)
			if !slices.Equal(removed, []string{"Baseline", "Corp Mail"}) || len(st.Profiles) != 0 {
				t.Errorf("%v removed %q, left %v; want every profile removed", tt.action, removed, st.Profiles)
			}
			if rs := sentResults(out); len(rs) != 1 || rs[0].ID != "c-1" || rs[0].Status != protocol.CommandDone {
				t.Errorf("%v results = %+v; want c-1 done", tt.action, rs)
			}
			if len(out.Send) != 1 {
				t.Errorf("%v sent %d envelopes; want only the result", tt.action, len(out.Send))
			}
			var after Output
			after.merge(r.advance(9 * time.Hour))
			after.merge(r.push())
			if len(after.Send) != 0 {
				t.Errorf("a %s device sent %d envelopes; want none", tt.stop, len(after.Send))
			}
			if _, err := r.sync(); !errors.Is(err, ErrStopped) {
				t.Errorf("Sync() after %v = %v; want %v", tt.action, err, ErrStopped)
			}
		})
	}
}

func TestCoreSyncCommand(t *testing.T) {
	t.Run("direct", func(t *testing.T) {
		r := newRig(t, settledState(protocol.PlatformWindows, testNow, 8*time.Hour), testNow)
		r.online()
		out := r.deliver(&protocol.Command{ID: "c-sync", Action: protocol.CommandSync})
		if rs := sentResults(out); len(rs) != 1 || rs[0].Status != protocol.CommandDone {
			t.Errorf("sync command results = %+v; want c-sync done", rs)
		}
		if cs, _ := sentCheckIns(out); len(cs) == 0 {
			wake := r.c.NextWake()
			if wake.IsZero() || wake.After(r.now) {
				t.Fatalf("after a sync command NextWake() = %v; want now (%v)", wake, r.now)
			}
			r.at(wake)
			out = r.tick()
		}
		if cs, _ := sentCheckIns(out); len(cs) != 1 {
			t.Errorf("a sync command made %d check-ins; want 1", len(cs))
		}
	})
	t.Run("in response", func(t *testing.T) {
		r := newRig(t, settledState(protocol.PlatformWindows, testNow, 0), testNow)
		_, env := oneCheckIn(t, r.online(), protocol.CheckInScheduled)
		resp := success(protocol.AuthorityOffice365, 41)
		resp.Commands = []protocol.Command{{ID: "c-sync", Action: protocol.CommandSync}}
		out := r.respond(env, resp)
		if rs := sentResults(out); len(rs) != 1 || rs[0].Status != protocol.CommandDone {
			t.Errorf("sync command results = %+v; want c-sync done", rs)
		}
		if cs, _ := sentCheckIns(out); len(cs) != 1 {
			t.Errorf("a sync command in a response made %d check-ins at once; want 1", len(cs))
		}
	})
}

func TestCoreCommandRunsOnce(t *testing.T) {
	lock := protocol.Command{ID: "c-lock", Action: protocol.CommandRemoteLock, Message: "Call IT"}
	sync := protocol.Command{ID: "c-sync", Action: protocol.CommandSync}
	tests := []struct {
		name  string
		order []string // "direct" or "response"
	}{
		{"direct then in a response", []string{"direct", "response"}},
		{"in a response then direct", []string{"response", "direct"}},
		{"in two responses", []string{"response", "response"}},
		{"direct twice", []string{"direct", "direct"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := settledState(protocol.PlatformIOS, testNow, 0)
			r := newRig(t, st, testNow)
			_, env := oneCheckIn(t, r.online(), protocol.CheckInScheduled)
			var locks, syncResults int
			for _, how := range tt.order {
				r.wait(time.Second)
				var out Output
				if how == "direct" {
					out.merge(r.deliver(&lock))
					out.merge(r.deliver(&sync))
				} else {
					if env.ID.IsZero() {
						t.Fatalf("no check-in in flight to answer")
					}
					resp := success(protocol.AuthorityIntune, 41)
					resp.Commands = []protocol.Command{lock, sync}
					out = r.respond(env, resp)
					env = protocol.Envelope{}
					if _, envs := sentCheckIns(out); len(envs) > 0 {
						env = envs[0]
					}
				}
				if len(out.Locks) > 0 {
					locks++
					r.finish(out.Locks[0].ID, protocol.CommandDone)
				}
				for _, res := range sentResults(out) {
					if res.ID == "c-sync" {
						syncResults++
					}
				}
			}
			if locks != 1 || syncResults != 1 {
				t.Errorf("locks, sync results = %d, %d; want 1, 1", locks, syncResults)
			}
			if n := len(st.Commands); n != 2 {
				t.Errorf("State.Commands has %d records; want 2", n)
			}
		})
	}
}

func TestCoreCommandResultResent(t *testing.T) {
	st := settledState(protocol.PlatformIOS, testNow, 8*time.Hour)
	r := newRig(t, st, testNow)
	r.online()
	r.deliver(&protocol.Command{ID: "c-lock", Action: protocol.CommandRemoteLock})
	r.wait(time.Second)
	fin := r.finish("c-lock", protocol.CommandDone)
	_, sent := sentBodies[*protocol.CommandResult](fin)
	if len(sent) != 1 {
		t.Fatalf("Finish() sent %d results; want 1", len(sent))
	}

	// The broker never acknowledged it: after a restart it goes again.
	r.wait(time.Minute)
	if o := r.restart(); len(o.Locks) != 0 {
		t.Errorf("Start() after a finished lock = Locks %+v; want no second lock", o.Locks)
	}
	rs := sentResults(r.connect())
	if len(rs) != 1 || rs[0].ID != "c-lock" || rs[0].Status != protocol.CommandDone {
		t.Fatalf("Connected() after restart sent results %+v; want c-lock done again", rs)
	}
	_, again := sentBodies[*protocol.CommandResult](r.connect())
	if len(again) != 1 {
		t.Fatalf("a second Connected() sent %d results; want the unacknowledged one again", len(again))
	}

	// Acknowledged: never again, not after a reconnect nor a restart.
	if o := r.c.Published(again[0]); !o.Persist {
		t.Errorf("Published(result) Persist = false; want true")
	}
	r.disconnect()
	if rs := sentResults(r.connect()); len(rs) != 0 {
		t.Errorf("Connected() after Published sent results %+v; want none", rs)
	}
	r.restart()
	if rs := sentResults(r.connect()); len(rs) != 0 {
		t.Errorf("Connected() after Published and a restart sent results %+v; want none", rs)
	}
	if o := r.c.Published(again[0]); o.Persist {
		t.Errorf("a second Published(result) Persist = true; want nothing to persist")
	}
}

// --- Certificate ---

// selfSigned returns a DER certificate valid until notAfter.
func selfSignedCert(t *testing.T, notAfter time.Time) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "d-1"},
		NotBefore:    testNow.Add(-time.Hour),
		NotAfter:     notAfter,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestCoreRenewalCSR(t *testing.T) {
	tests := []struct {
		left time.Duration // until the certificate expires
		want bool
	}{
		{31 * 24 * time.Hour, false},
		{DefaultRenewalWindow + time.Second, false},
		{DefaultRenewalWindow, true},
		{29 * 24 * time.Hour, true},
		{time.Hour, true},
	}
	for _, tt := range tests {
		t.Run(tt.left.String(), func(t *testing.T) {
			st := settledState(protocol.PlatformMacOS, testNow, 0)
			st.CertNotAfter = testNow.Add(tt.left)
			st.RenewalCSR = []byte("csr for d-1")
			r := newRig(t, st, testNow)
			ci, _ := oneCheckIn(t, r.online(), protocol.CheckInScheduled)
			if got := len(ci.RenewalCSR) > 0; got != tt.want {
				t.Errorf("check-in with %v left carries renewal CSR = %v; want %v", tt.left, got, tt.want)
			}
		})
	}
}

func TestCoreRenewedCertificate(t *testing.T) {
	tests := []struct {
		name     string
		notAfter time.Time
		renewed  bool
	}{
		{"later", testNow.AddDate(1, 0, 0), true},
		{"not later", testNow.Add(10 * 24 * time.Hour), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := settledState(protocol.PlatformIOS, testNow, 0)
			oldExpiry := testNow.Add(20 * 24 * time.Hour)
			st.CertNotAfter = oldExpiry
			st.RenewalCSR = []byte("csr for d-1")
			r := newRig(t, st, testNow)
			ci, env := oneCheckIn(t, r.online(), protocol.CheckInScheduled)
			if len(ci.RenewalCSR) == 0 {
				t.Fatalf("check-in 20 days before expiry has no renewal CSR")
			}
			der := selfSignedCert(t, tt.notAfter)
			resp := success(protocol.AuthorityOffice365, 41)
			resp.Certificate = der
			out := r.respond(env, resp)
			if out.Renewed != tt.renewed {
				t.Errorf("Output.Renewed = %v; want %v", out.Renewed, tt.renewed)
			}
			wantExpiry, wantDER := oldExpiry, []byte{1}
			if tt.renewed {
				wantExpiry, wantDER = tt.notAfter, der
			}
			if !st.CertNotAfter.Equal(wantExpiry) || !slices.Equal(st.Certificate, wantDER) {
				t.Errorf("CertNotAfter = %v; want %v (and the matching certificate)", st.CertNotAfter, wantExpiry)
			}
			r.at(st.NextCheckIn)
			ci, _ = oneCheckIn(t, r.tick(), protocol.CheckInScheduled)
			if ci.CertificateExpiry != protocol.At(wantExpiry) {
				t.Errorf("next check-in certificate_expiry = %v; want %v", ci.CertificateExpiry.Time(), wantExpiry)
			}
			if got := len(ci.RenewalCSR) > 0; got == tt.renewed {
				t.Errorf("next check-in carries renewal CSR = %v; want %v", got, !tt.renewed)
			}
		})
	}
}

func TestCoreCertificateExpired(t *testing.T) {
	expiry := testNow.Add(-time.Hour)
	tests := []struct {
		name string
		next time.Time // the scheduled check-in
	}{
		{"check-in due after expiry", expiry.Add(time.Hour)},
		// The device was offline across the expiry: its last schedule
		// fell before it.
		{"check-in was due before expiry", expiry.Add(-2 * time.Hour)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := settledState(protocol.PlatformAndroid, testNow, 0)
			st.CertNotAfter, st.NextCheckIn = expiry, tt.next
			r := newRig(t, st, testNow)
			var out Output
			out.merge(r.online())
			out.merge(r.tick())
			out.merge(r.push())
			out.merge(r.advance(9 * time.Hour))
			if len(out.Send) != 0 {
				t.Errorf("a device with an expired certificate sent %v; want nothing", sentReasons(out))
			}
			if w := r.c.NextWake(); !w.IsZero() {
				t.Errorf("NextWake() with an expired certificate = %v (now %v); want zero: Tick has nothing to do", w, r.now)
			}
			if _, err := r.sync(); !errors.Is(err, ErrCertificateExpired) {
				t.Errorf("Sync() = %v; want %v", err, ErrCertificateExpired)
			}
			s := StatusOf(st, r.now)
			if !s.CertificateExpired || len(s.Attention) == 0 || !strings.Contains(s.Attention[0], "re-enroll") {
				t.Errorf("StatusOf() expired, attention = %v, %q; want true and a line that says to re-enroll", s.CertificateExpired, s.Attention)
			}
		})
	}
}

func TestCoreCertificateExpiredStillExpiresRetained(t *testing.T) {
	st := settledState(protocol.PlatformAndroid, testNow, 0)
	st.CertNotAfter, st.NextCheckIn = testNow.Add(-time.Hour), testNow.Add(time.Hour)
	deadline := testNow.Add(48 * time.Hour)
	old := installedProfile(protocol.ProfileWiFi, "Corp WiFi", protocol.AuthorityOffice365, 1)
	old.RetainUntil = deadline
	st.Authority, st.Profiles = protocol.AuthorityIntune, []Profile{old}
	r := newRig(t, st, testNow)
	r.online()
	if w := r.c.NextWake(); !w.Equal(deadline) {
		t.Errorf("NextWake() = %v; want the retention deadline %v", w, deadline)
	}
	r.at(deadline)
	o := r.tick()
	if len(o.Changes) != 1 || o.Changes[0].Kind != Expired {
		t.Errorf("Tick(deadline) changes = %v; want Corp WiFi expired", o.Changes)
	}
	if len(o.Send) != 0 {
		t.Errorf("Tick(deadline) with an expired certificate sent %v; want nothing", kinds(o))
	}
}

// kinds returns the kinds of the envelopes o sends.
func kinds(o Output) []protocol.Kind {
	var ks []protocol.Kind
	for _, e := range o.Send {
		ks = append(ks, e.Kind())
	}
	return ks
}

// TestCorePushNearCertificateExpiry: a check-in asked for by a push (at
// the end of the push gap) or by a sync command must wake the runner even
// when the next scheduled check-in falls after the certificate's expiry.
func TestCorePushNearCertificateExpiry(t *testing.T) {
	tests := []struct {
		name string
		ask  func(r *rig) Output
		want time.Time
	}{
		{"push inside the gap", func(r *rig) Output { return r.push() }, testNow.Add(pushGap)},
		{"sync command", func(r *rig) Output {
			return r.deliver(&protocol.Command{ID: "c-sync", Action: protocol.CommandSync})
		}, testNow.Add(pushGap / 2)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := settledState(protocol.PlatformWindows, testNow, 8*time.Hour)
			st.CertNotAfter = testNow.Add(2 * time.Hour) // a renewal that has not happened yet
			r := newRig(t, st, testNow)
			r.online()
			_, env := oneCheckIn(t, r.push(), protocol.CheckInPushed)
			r.wait(pushGap / 4)
			resp := success(protocol.AuthorityOffice365, 41)
			resp.NextCheckIn = 8 * 3600
			r.respond(env, resp)
			r.wait(pushGap / 4)
			noCheckIn(t, tt.name, tt.ask(r))
			if got := r.c.NextWake(); !got.Equal(tt.want) {
				t.Errorf("NextWake() = %v; want %v, the check-in asked for", got, tt.want)
			}
			r.at(tt.want)
			oneCheckIn(t, r.tick(), protocol.CheckInPushed)
		})
	}
}

// --- Manual sync ---

func TestCoreSync(t *testing.T) {
	st := settledState(protocol.PlatformIOS, testNow, 8*time.Hour)
	st.Profiles = []Profile{installedProfile(protocol.ProfileEmail, "Corp Mail", protocol.AuthorityOffice365, 3)}
	r := newRig(t, st, testNow)
	r.start()
	if _, err := r.sync(); !errors.Is(err, ErrOffline) {
		t.Errorf("Sync() offline = %v; want %v", err, ErrOffline)
	}
	r.connect()
	r.wait(time.Minute)
	start := r.now
	out, err := r.sync()
	if err != nil {
		t.Fatalf("Sync() online = %v; want nil", err)
	}
	_, env := oneCheckIn(t, out, protocol.CheckInManual)
	if out.Synced != nil {
		t.Errorf("Sync() Synced = %+v before the answer; want nil", out.Synced)
	}
	r.wait(1500 * time.Millisecond)
	out = r.respond(env, &protocol.CheckInResponse{
		Authority: protocol.AuthorityIntune, Epoch: 2, DesiredVersion: 42,
		Profiles:    []protocol.DesiredProfile{{Type: protocol.ProfileEmail, Name: "Corp Mail", Version: 1}},
		RetainUntil: protocol.At(testNow.Add(7 * 24 * time.Hour)),
	})
	s := out.Synced
	if s == nil {
		t.Fatalf("answer to a manual check-in: Synced = nil; want the outcome")
	}
	if s.Authority != protocol.AuthorityIntune || !s.AuthorityChanged || s.Error != 0 {
		t.Errorf("Synced authority, changed, error = %v, %v, %v; want intune, true, none", s.Authority, s.AuthorityChanged, s.Error)
	}
	if !s.Started.Equal(start) || s.Duration != 1500*time.Millisecond {
		t.Errorf("Synced started, duration = %v, %v; want %v, 1.5s", s.Started, s.Duration, start)
	}
	if len(s.Changes) != 1 || s.Changes[0].Kind != Overwritten || s.Changes[0].Profile.Name != "Corp Mail" {
		t.Errorf("Synced changes = %v; want Corp Mail overwritten", s.Changes)
	}
	if s.Compliance.State != protocol.ComplianceCompliant {
		t.Errorf("Synced compliance = %v; want compliant", s.Compliance.State)
	}
}

func TestCoreSyncFails(t *testing.T) {
	tests := []struct {
		name   string
		answer *protocol.CheckInResponse // nil: none
		code   protocol.ErrorCode
	}{
		{"refused", &protocol.CheckInResponse{Error: protocol.CodeAPNsCertificateMissing, Message: "no APNs certificate"}, protocol.CodeAPNsCertificateMissing},
		{"rate limited", &protocol.CheckInResponse{Error: protocol.CodeRateLimited}, protocol.CodeRateLimited},
		{"unanswered", nil, protocol.CodeInternal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig(t, settledState(protocol.PlatformIOS, testNow, 8*time.Hour), testNow)
			r.online()
			out, err := r.sync()
			if err != nil {
				t.Fatalf("Sync() = %v; want nil", err)
			}
			_, env := oneCheckIn(t, out, protocol.CheckInManual)
			if tt.answer != nil {
				r.wait(time.Second)
				out = r.respond(env, tt.answer)
			} else {
				out = r.advance(ResponseTimeout)
			}
			if out.Synced == nil {
				t.Fatalf("Synced = nil; want the failure reported")
			}
			if out.Synced.Error != tt.code || out.Synced.Duration != r.now.Sub(testNow) {
				t.Errorf("Synced error, duration = %v, %v; want %v, %v", out.Synced.Error, out.Synced.Duration, tt.code, r.now.Sub(testNow))
			}
		})
	}
}

func TestCoreSyncDuringCheckIn(t *testing.T) {
	r := newRig(t, settledState(protocol.PlatformAndroid, testNow, 0), testNow)
	_, env := oneCheckIn(t, r.online(), protocol.CheckInScheduled)
	out, err := r.sync()
	if err != nil {
		t.Fatalf("Sync() = %v; want nil", err)
	}
	noCheckIn(t, "Sync with a check-in in flight", out)
	r.wait(time.Second)
	out = r.respond(env, success(protocol.AuthorityOffice365, 41))
	if out.Synced != nil {
		t.Errorf("the scheduled check-in's answer reported the sync: %+v; want the sync's own check-in", out.Synced)
	}
	_, env = oneCheckIn(t, out, protocol.CheckInManual)
	r.wait(time.Second)
	if out = r.respond(env, success(protocol.AuthorityOffice365, 41)); out.Synced == nil || out.Synced.Duration != 2*time.Second {
		t.Errorf("Synced = %+v; want the outcome after 2s", out.Synced)
	}
}

func TestCoreSyncResentAfterDisconnect(t *testing.T) {
	st := settledState(protocol.PlatformAndroid, testNow, 8*time.Hour)
	r := newRig(t, st, testNow)
	r.online()
	out, _ := r.sync()
	oneCheckIn(t, out, protocol.CheckInManual)
	r.wait(time.Second)
	r.disconnect()
	r.wait(time.Minute)
	_, env := oneCheckIn(t, r.connect(), protocol.CheckInManual)
	r.wait(time.Second)
	if out = r.respond(env, success(protocol.AuthorityOffice365, 41)); out.Synced == nil || out.Synced.Error != 0 {
		t.Errorf("Synced = %+v; want success", out.Synced)
	}
	if st.Failures != 0 {
		t.Errorf("Failures = %d; want 0: a lost connection is not a failed check-in", st.Failures)
	}
}

// --- Unenroll ---

func TestCoreUnenroll(t *testing.T) {
	st := settledState(protocol.PlatformWindows, testNow, 8*time.Hour)
	st.Profiles = []Profile{
		installedProfile(protocol.ProfileEmail, "Corp Mail", protocol.AuthorityIntune, 3),
		installedProfile(protocol.ProfileVPN, "Corp VPN", protocol.AuthorityIntune, 1),
	}
	r := newRig(t, st, testNow)
	r.online()
	out := r.unenroll()
	us, _ := sentBodies[*protocol.Unenroll](out)
	if len(us) != 1 || len(out.Send) != 1 || us[0].Reason != "user request" {
		t.Errorf("Unenroll() sent %v; want one unenroll with the reason", out.Send)
	}
	if out.Stop != StoppedUnenrolled || st.Stopped != StoppedUnenrolled || !out.Persist {
		t.Errorf("Unenroll() Stop, Stopped, Persist = %q, %q, %v; want %q, %q, true", out.Stop, st.Stopped, out.Persist, StoppedUnenrolled, StoppedUnenrolled)
	}
	if len(out.Changes) != 2 || out.Changes[0].Kind != Removed || out.Changes[1].Kind != Removed || len(st.Profiles) != 0 {
		t.Errorf("Unenroll() changes %v, profiles left %v; want both removed", out.Changes, st.Profiles)
	}
	var after Output
	after.merge(r.advance(9 * time.Hour))
	after.merge(r.push())
	if len(after.Send) != 0 || !r.c.NextWake().IsZero() {
		t.Errorf("after Unenroll: sent %d, NextWake %v; want nothing", len(after.Send), r.c.NextWake())
	}
}

// --- Envelopes ---

// TestCoreEnvelopes runs a device through a busy life; the rig checks that
// every envelope survives the real codec, names the device and has a
// fresh id.
func TestCoreEnvelopes(t *testing.T) {
	st := freshState(protocol.PlatformIOS, testNow)
	st.RenewalCSR = []byte("csr")
	r := newRig(t, st, testNow)
	r.c.SetFacts(Facts{OSVersion: "17.4"})
	_, env := oneCheckIn(t, r.online(), protocol.CheckInEnrollment)
	kinds := map[protocol.Kind]int{}
	count := func(o Output) Output {
		for _, e := range o.Send {
			kinds[e.Kind()]++
		}
		return o
	}
	r.wait(time.Second)
	resp := &protocol.CheckInResponse{
		Authority: protocol.AuthorityOffice365, Epoch: 1, DesiredVersion: 1,
		Profiles: []protocol.DesiredProfile{
			{Type: protocol.ProfileEmail, Name: "Corp Mail", Version: 1, Settings: protocol.Settings{{Key: "server", Value: "mail.contoso.example"}}},
			{Type: protocol.ProfileCompliance, Name: "Baseline", Version: 1, Settings: protocol.Settings{{Key: SettingMinOSVersion, Value: "17.5"}}},
		},
		Commands: []protocol.Command{{ID: "c-1", Action: protocol.CommandSync}},
	}
	out := count(r.respond(env, resp))
	for range 20 {
		cs, envs := sentCheckIns(out)
		switch {
		case len(cs) > 0:
			r.wait(time.Second)
			out = count(r.respond(envs[0], success(protocol.AuthorityOffice365, 1)))
		default:
			r.wait(time.Minute)
			out = count(r.push())
		}
	}
	r.deliver(&protocol.Command{ID: "c-2", Action: protocol.CommandRemoteLock, Message: "Call IT"})
	count(r.finish("c-2", protocol.CommandDone))
	o, _ := r.sync()
	count(o)
	count(r.unenroll())
	for _, k := range []protocol.Kind{protocol.KindCheckIn, protocol.KindCommandResult, protocol.KindComplianceReport, protocol.KindUnenroll} {
		if kinds[k] == 0 {
			t.Errorf("the scenario sent no %v; want every uplink kind covered", k)
		}
	}
}
