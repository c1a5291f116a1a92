package broker

import (
	"bytes"
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/mdm-authority/mdm/protocol"
	bolt "go.etcd.io/bbolt"
)

// fakeClock is a clock the test moves by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

var testStart = time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)

// harness is a service on a temporary store with a fake clock, and the
// enrollment token devices use.
type harness struct {
	t     testing.TB
	svc   *Service
	store *Store
	clock *fakeClock
	token string
	rng   *lockedRand
	dir   string
	// configure, when set, adjusts the service's options at every open.
	configure func(*Options)
}

// lockedRand is a seeded source of random bytes that is safe for
// concurrent use, as Options.Rand must be.
type lockedRand struct {
	mu sync.Mutex
	r  *rand.ChaCha8
}

func (l *lockedRand) Read(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.r.Read(p)
}

func newHarness(t testing.TB) *harness {
	t.Helper()
	return newHarnessWith(t, nil)
}

// newHarnessWith returns a harness whose service options configure
// adjusts.
func newHarnessWith(t testing.TB, configure func(*Options)) *harness {
	t.Helper()
	dir := t.TempDir()
	h := &harness{t: t, clock: &fakeClock{now: testStart}, rng: &lockedRand{r: rand.NewChaCha8([32]byte{7})}, dir: dir, configure: configure}
	h.open()
	tok, err := h.svc.RotateEnrollmentToken()
	if err != nil {
		t.Fatal(err)
	}
	h.token = tok
	return h
}

// open opens the store and the service in h.dir, as a restart does.
func (h *harness) open() {
	h.t.Helper()
	store, err := OpenStore(filepath.Join(h.dir, "mdm.db"))
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { store.Close() })
	ca, _, err := LoadOrCreateCA(h.dir, "contoso", testStart)
	if err != nil {
		h.t.Fatal(err)
	}
	opts := Options{Tenant: "contoso", Clock: h.clock, Rand: h.rng}
	if h.configure != nil {
		h.configure(&opts)
	}
	svc, err := NewService(store, ca, opts)
	if err != nil {
		h.t.Fatal(err)
	}
	h.store, h.svc = store, svc
}

// testDevice is a device written from the protocol specification.
type testDevice struct {
	h        *harness
	id       string
	platform protocol.Platform
	user     string
	version  uint64
	profiles []protocol.InstalledProfile
	expiry   time.Time
}

func (h *harness) send(topic string, body protocol.Body, device string) []Outgoing {
	h.t.Helper()
	id, _ := protocol.NewMessageID(h.rng)
	b, err := protocol.Encode(protocol.Envelope{ID: id, Sent: protocol.At(h.clock.Now()), Device: device, Body: body})
	if err != nil {
		h.t.Fatal(err)
	}
	out, err := h.svc.HandleMessage(context.Background(), topic, b)
	if err != nil {
		h.t.Fatalf("HandleMessage(%s): %v", topic, err)
	}
	return out
}

func decodeOne[T protocol.Body](t testing.TB, out []Outgoing, topic string) T {
	t.Helper()
	if len(out) != 1 || out[0].Topic != topic {
		t.Fatalf("service sent %d messages (%v); want one on %s", len(out), out, topic)
	}
	env, err := protocol.Decode(out[0].Payload)
	if err != nil {
		t.Fatalf("decode service message: %v", err)
	}
	b, ok := env.Body.(T)
	if !ok {
		t.Fatalf("service sent %s; want %T", env.Kind(), b)
	}
	return b
}

// enroll enrolls a device and returns it, or the refusal code.
func (h *harness) enroll(p protocol.Platform, user string) (*testDevice, protocol.ErrorCode) {
	h.t.Helper()
	_, csr, err := NewDeviceKeyAndCSR()
	if err != nil {
		h.t.Fatal(err)
	}
	typ := protocol.EnrollUser
	if user == "" {
		typ = protocol.EnrollDEP
	}
	req := &protocol.EnrollRequest{CSR: csr, Token: h.token, Platform: p, OSVersion: "17.4", User: user, Type: typ}
	out := h.send(protocol.EnrollRequestTopic("contoso", "r-1"), req, "")
	resp := decodeOne[*protocol.EnrollResponse](h.t, out, protocol.EnrollResponseTopic("contoso", "r-1"))
	if resp.Error != protocol.CodeNone {
		return nil, resp.Error
	}
	return &testDevice{h: h, id: resp.Device, platform: p, user: user, expiry: h.clock.Now().Add(365 * 24 * time.Hour)}, protocol.CodeNone
}

func (h *harness) mustEnroll(p protocol.Platform, user string) *testDevice {
	h.t.Helper()
	d, code := h.enroll(p, user)
	if code != protocol.CodeNone {
		h.t.Fatalf("enroll %s %q: %s", p, user, code)
	}
	return d
}

// mustEnrollN enrolls n Android devices of ada@contoso.example.
func (h *harness) mustEnrollN(n int) []*testDevice {
	h.t.Helper()
	var devs []*testDevice
	for range n {
		devs = append(devs, h.mustEnroll(protocol.PlatformAndroid, "ada@contoso.example"))
	}
	return devs
}

// checkIn checks in like the agent: reports its profiles and applies the
// desired set, keeping old-authority profiles without a successor.
func (d *testDevice) checkIn() *protocol.CheckInResponse {
	d.h.t.Helper()
	m := &protocol.CheckIn{Reason: protocol.CheckInScheduled, Profiles: d.profiles,
		CertificateExpiry: protocol.At(d.expiry), DesiredVersion: d.version}
	out := d.h.send(protocol.UplinkTopic("contoso", d.id), m, d.id)
	resp := decodeOne[*protocol.CheckInResponse](d.h.t, out, protocol.DownlinkTopic("contoso", d.id))
	if resp.Error == protocol.CodeNone && resp.DesiredVersion > d.version {
		var next []protocol.InstalledProfile
		for _, p := range resp.Profiles {
			next = append(next, protocol.InstalledProfile{Type: p.Type, Name: p.Name, Authority: resp.Authority, Version: p.Version})
		}
		for _, old := range d.profiles {
			replaced := slices.ContainsFunc(next, func(n protocol.InstalledProfile) bool { return n.Type == old.Type && n.Name == old.Name })
			if old.Authority != resp.Authority && !replaced && resp.RetainUntil != 0 {
				old.RetainUntil = resp.RetainUntil
				next = append(next, old)
			}
		}
		d.profiles, d.version = next, resp.DesiredVersion
	}
	return resp
}

func (h *harness) record(id string) Device {
	h.t.Helper()
	d, _, err := h.svc.Device(id)
	if err != nil {
		h.t.Fatal(err)
	}
	return d
}

func TestEnrollRules(t *testing.T) {
	h := newHarness(t)
	if _, code := h.enroll(protocol.PlatformAndroid, "ada@contoso.example"); code != protocol.CodeAuthorityNotSet {
		t.Errorf("enroll before the authority is set = %s; want authority_not_set", code)
	}
	if _, _, err := h.svc.SetAuthority(ModeOffice365); err != nil {
		t.Fatal(err)
	}
	if _, code := h.enroll(protocol.PlatformIOS, "ada@contoso.example"); code != protocol.CodeAPNsCertificateMissing {
		t.Errorf("iOS enroll without APNs = %s; want apns_certificate_missing", code)
	}
	good := h.token
	h.token = "enr-wrong"
	if _, code := h.enroll(protocol.PlatformAndroid, "ada@contoso.example"); code != protocol.CodeInvalidToken {
		t.Errorf("enroll with a wrong token = %s; want invalid_token", code)
	}
	h.token = good
	d := h.mustEnroll(protocol.PlatformWindows, "ada@contoso.example")
	rec := h.record(d.id)
	if rec.Authority != protocol.AuthorityOffice365 || rec.State != DeviceEnrolled || rec.User != "ada@contoso.example" {
		t.Errorf("enrolled record = %+v", rec)
	}
	if _, err := h.svc.UploadAPNs(protocol.AuthorityOffice365, true); err != nil {
		t.Fatal(err)
	}
	h.mustEnroll(protocol.PlatformIPadOS, "bob@contoso.example")
	h.mustEnroll(protocol.PlatformIOS, "") // userless (DEP)
}

func TestAuthorityRules(t *testing.T) {
	h := newHarness(t)
	if _, _, err := h.svc.SetAuthority(ModeUnknown); !errors.Is(err, ErrBackToUnknown) {
		t.Errorf("SetAuthority(unknown) = %v; want ErrBackToUnknown", err)
	}
	c1, _, err := h.svc.SetAuthority(ModeOffice365)
	if err != nil || c1.Epoch != 1 || c1.From != ModeUnknown || !c1.At.Equal(testStart) {
		t.Fatalf("first change = %+v, %v", c1, err)
	}
	if _, _, err := h.svc.SetAuthority(ModeOffice365); !errors.Is(err, ErrSameAuthority) {
		t.Errorf("setting the same authority = %v; want ErrSameAuthority", err)
	}
	if _, _, err := h.svc.SetAuthority(ModeUnknown); !errors.Is(err, ErrBackToUnknown) {
		t.Errorf("back to unknown = %v; want ErrBackToUnknown", err)
	}
	h.clock.Advance(time.Hour)
	c2, _, err := h.svc.SetAuthority(ModeIntune)
	if err != nil || c2.Epoch != 2 || c2.From != ModeOffice365 {
		t.Fatalf("second change = %+v, %v", c2, err)
	}
	if _, err := h.svc.UploadAPNs(protocol.AuthorityIntune, false); !errors.Is(err, ErrConsentRequired) {
		t.Errorf("APNs upload without consent = %v; want ErrConsentRequired", err)
	}
	if _, err := h.svc.SetLicense("ada@contoso.example", true); !errors.Is(err, ErrNotCoexistence) {
		t.Errorf("license outside coexistence = %v; want ErrNotCoexistence", err)
	}
	if _, _, err := h.svc.PutProfile(protocol.AuthorityOffice365, protocol.ProfileVPN, "VPN", nil); !errors.Is(err, ErrUnsupported) {
		t.Errorf("VPN profile on office365 = %v; want ErrUnsupported", err)
	}
	// The state survives a restart.
	h.store.Close()
	h.open()
	got := h.svc.Tenant()
	if got.Mode != ModeIntune || got.Epoch != 2 || len(got.Changes) != 2 {
		t.Errorf("tenant after restart = %+v", got)
	}
}

// TestRetentionPeriodOption checks that a shorter retention period, for
// trying a migration out, sets the deadline devices get.
func TestRetentionPeriodOption(t *testing.T) {
	h := newHarnessWith(t, func(o *Options) { o.RetentionPeriod = 10 * time.Minute })
	mustDo(t, h.svc.SetAuthority, ModeOffice365)
	d := h.mustEnroll(protocol.PlatformWindows, "ada@contoso.example")
	d.checkIn()
	change, _, err := h.svc.SetAuthority(ModeIntune)
	if err != nil {
		t.Fatal(err)
	}
	if r := d.checkIn(); r.RetainUntil != protocol.At(change.At.Add(10*time.Minute)) {
		t.Errorf("retain_until = %v; want the change + 10 minutes", r.RetainUntil)
	}
	h.clock.Advance(10 * time.Minute)
	if r := d.checkIn(); r.RetainUntil != 0 {
		t.Errorf("retain_until after 10 minutes = %v; want 0", r.RetainUntil)
	}
}

// TestMigration walks a device through an authority change: overwrite by
// name, retention of a profile without successor until change + 7 days,
// redundant pairs, and the push that asks it to check in.
func TestMigration(t *testing.T) {
	h := newHarness(t)
	mustDo(t, h.svc.SetAuthority, ModeOffice365)
	put(t, h, protocol.AuthorityOffice365, protocol.ProfileEmail, "Corp Mail")
	put(t, h, protocol.AuthorityOffice365, protocol.ProfileConfiguration, "Device Security")
	d := h.mustEnroll(protocol.PlatformAndroid, "ada@contoso.example")
	if r := d.checkIn(); r.Authority != protocol.AuthorityOffice365 || len(d.profiles) != 2 {
		t.Fatalf("first check-in = %+v; device has %v", r, d.profiles)
	}

	put(t, h, protocol.AuthorityIntune, protocol.ProfileEmail, "Corp Mail")             // same name: overwrites
	put(t, h, protocol.AuthorityIntune, protocol.ProfileConfiguration, "Baseline 2026") // renamed: redundant
	h.clock.Advance(time.Hour)
	change, pushes, err := h.svc.SetAuthority(ModeIntune)
	if err != nil || pushes != 1 {
		t.Fatalf("SetAuthority = %d pushes, %v; want 1", pushes, err)
	}
	out, err := h.svc.DuePushes(100)
	if err != nil {
		t.Fatal(err)
	}
	push := decodeOne[*protocol.Push](t, out, protocol.DownlinkTopic("contoso", d.id))
	if push.Epoch != 2 || push.Reason != protocol.PushAuthorityChange {
		t.Errorf("push = %+v", push)
	}

	h.clock.Advance(time.Minute)
	r := d.checkIn()
	wantRetain := protocol.At(change.At.Add(RetentionPeriod))
	if r.Authority != protocol.AuthorityIntune || r.Epoch != 2 || r.RetainUntil != wantRetain {
		t.Errorf("check-in after the change = authority %s epoch %d retain %v; want intune 2 %v", r.Authority, r.Epoch, r.RetainUntil, wantRetain)
	}
	rec := h.record(d.id)
	if rec.PreviousAuthority != protocol.AuthorityOffice365 || !rec.MigratedAt.Equal(h.clock.Now()) {
		t.Errorf("record after migration = %+v", rec)
	}
	var names []string
	for _, p := range d.profiles {
		names = append(names, p.Authority.String()+"/"+p.Name)
	}
	slices.Sort(names)
	want := []string{"intune/Baseline 2026", "intune/Corp Mail", "office365/Device Security"}
	if !slices.Equal(names, want) {
		t.Errorf("device profiles after the change = %v; want %v", names, want)
	}
	// Answered: no retry is owed.
	h.clock.Advance(time.Hour)
	if out, _ := h.svc.DuePushes(100); len(out) != 0 {
		t.Errorf("%d pushes after the device checked in; want 0", len(out))
	}
	// Past the retention deadline the service stops sending it.
	h.clock.Advance(RetentionPeriod)
	if r := d.checkIn(); r.RetainUntil != 0 {
		t.Errorf("retain_until after the period = %v; want 0", r.RetainUntil)
	}
	// Unchanged desired state: no profiles sent.
	if r := d.checkIn(); len(r.Profiles) != 0 || r.DesiredVersion != d.version {
		t.Errorf("check-in with the current version sent %d profiles, version %d", len(r.Profiles), r.DesiredVersion)
	}
}

func mustDo[A any](t *testing.T, f func(A) (AuthorityChange, int, error), a A) {
	t.Helper()
	if _, _, err := f(a); err != nil {
		t.Fatal(err)
	}
}

func put(t *testing.T, h *harness, a protocol.Authority, typ protocol.ProfileType, name string) {
	t.Helper()
	if _, _, err := h.svc.PutProfile(a, typ, name, protocol.Settings{{Key: "server", Value: "contoso.example"}}); err != nil {
		t.Fatal(err)
	}
}

func TestPushRetries(t *testing.T) {
	h := newHarness(t)
	mustDo(t, h.svc.SetAuthority, ModeOffice365)
	d := h.mustEnroll(protocol.PlatformWindows, "ada@contoso.example")
	mustDo(t, h.svc.SetAuthority, ModeIntune)
	// Every 20 minutes from the change up to 160 minutes: the push, and the
	// retries 5 and 30 minutes after the sends before them.
	sent := 0
	for range 9 {
		out, err := h.svc.DuePushes(10)
		if err != nil {
			t.Fatal(err)
		}
		sent += len(out)
		h.clock.Advance(20 * time.Minute)
	}
	if sent != 3 {
		t.Errorf("pushes sent in the first 160 minutes = %d; want 3", sent)
	}
	// The third retry comes 2 hours after the second (sent at 60 minutes).
	h.clock.Advance(10 * time.Minute)
	out, _ := h.svc.DuePushes(10)
	h.clock.Advance(24 * time.Hour)
	again, _ := h.svc.DuePushes(10)
	if len(out) != 1 || len(again) != 0 {
		t.Errorf("third retry sent %d, then %d; want 1, then 0 (three retries in all)", len(out), len(again))
	}
	if rec := h.record(d.id); rec.Push.Pending {
		t.Errorf("push still pending after the last retry: %+v", rec.Push)
	}
}

func TestAPNsGating(t *testing.T) {
	h := newHarness(t)
	mustDo(t, h.svc.SetAuthority, ModeOffice365)
	if _, err := h.svc.UploadAPNs(protocol.AuthorityOffice365, true); err != nil {
		t.Fatal(err)
	}
	phone := h.mustEnroll(protocol.PlatformIOS, "ada@contoso.example")
	laptop := h.mustEnroll(protocol.PlatformWindows, "ada@contoso.example")
	phone.checkIn()
	h.clock.Advance(time.Hour)
	_, pushes, err := h.svc.SetAuthority(ModeIntune)
	if err != nil || pushes != 1 {
		t.Fatalf("SetAuthority queued %d pushes, %v; want 1 (the iOS device is not pushed)", pushes, err)
	}
	before := phone.profiles
	if r := phone.checkIn(); r.Error != protocol.CodeAPNsCertificateMissing {
		t.Errorf("iOS check-in before the upload = %s; want apns_certificate_missing", r.Error)
	}
	if !slices.Equal(phone.profiles, before) || h.record(phone.id).Authority != protocol.AuthorityOffice365 {
		t.Error("a refused check-in changed the device")
	}
	if r := laptop.checkIn(); r.Error != protocol.CodeNone || r.Authority != protocol.AuthorityIntune {
		t.Errorf("Windows check-in = %+v; want intune", r)
	}
	h.svc.DuePushes(100) // drain the laptop's push
	h.clock.Advance(2 * time.Hour)
	queued, err := h.svc.UploadAPNs(protocol.AuthorityIntune, true)
	if err != nil || queued != 1 {
		t.Fatalf("UploadAPNs queued %d, %v; want 1", queued, err)
	}
	out, _ := h.svc.DuePushes(100)
	decodeOne[*protocol.Push](t, out, protocol.DownlinkTopic("contoso", phone.id))
	if r := phone.checkIn(); r.Error != protocol.CodeNone || r.Authority != protocol.AuthorityIntune {
		t.Errorf("iOS check-in after the upload = %+v", r)
	}
	if rec := h.record(phone.id); rec.LastError != protocol.CodeNone || rec.CheckIns != 2 {
		t.Errorf("record = last error %s, %d check-ins", rec.LastError, rec.CheckIns)
	}
}

func TestUserlessStranded(t *testing.T) {
	h := newHarness(t)
	mustDo(t, h.svc.SetAuthority, ModeOffice365)
	kiosk := h.mustEnroll(protocol.PlatformAndroid, "")
	mustDo(t, h.svc.SetAuthority, ModeIntune)
	if r := kiosk.checkIn(); r.Authority != protocol.AuthorityOffice365 {
		t.Errorf("userless device moved to %s; want it left on office365", r.Authority)
	}
	if rec := h.record(kiosk.id); !rec.NeedsSupport {
		t.Error("userless device on the old authority is not marked as needing support")
	}
	if _, err := h.svc.MigrateDevice(kiosk.id); err != nil {
		t.Fatal(err)
	}
	r := kiosk.checkIn()
	if r.Authority != protocol.AuthorityIntune || h.record(kiosk.id).NeedsSupport {
		t.Errorf("after migrate: authority %s, needs support %v", r.Authority, h.record(kiosk.id).NeedsSupport)
	}
	if _, err := h.svc.MigrateDevice(kiosk.id); err == nil {
		t.Error("migrating a device already on the authority succeeded")
	}
}

func TestCoexistenceLicense(t *testing.T) {
	h := newHarness(t)
	mustDo(t, h.svc.SetAuthority, ModeCoexistence)
	d := h.mustEnroll(protocol.PlatformAndroid, "ada@contoso.example")
	if r := d.checkIn(); r.Authority != protocol.AuthorityOffice365 {
		t.Errorf("unlicensed user's device on %s; want office365", r.Authority)
	}
	h.clock.Advance(time.Hour)
	pushed, err := h.svc.SetLicense("ada@contoso.example", true)
	if err != nil || pushed != 1 {
		t.Fatalf("SetLicense pushed %d, %v", pushed, err)
	}
	r := d.checkIn()
	if r.Authority != protocol.AuthorityIntune || r.RetainUntil != protocol.At(h.clock.Now().Add(RetentionPeriod)) {
		t.Errorf("licensed user's device: authority %s, retain until %v", r.Authority, r.RetainUntil)
	}
}

func TestCommands(t *testing.T) {
	h := newHarness(t)
	mustDo(t, h.svc.SetAuthority, ModeOffice365)
	d := h.mustEnroll(protocol.PlatformAndroid, "ada@contoso.example")
	if _, err := h.svc.IssueCommand(d.id, protocol.CommandRemoteLock, ""); !errors.Is(err, ErrUnsupported) {
		t.Errorf("remote lock under office365 = %v; want ErrUnsupported", err)
	}
	mustDo(t, h.svc.SetAuthority, ModeIntune)
	d.checkIn()
	lock, err := h.svc.IssueCommand(d.id, protocol.CommandRemoteLock, "Call IT")
	if err != nil {
		t.Fatal(err)
	}
	r := d.checkIn()
	if len(r.Commands) != 1 || r.Commands[0].ID != lock.ID || r.Commands[0].Action != protocol.CommandRemoteLock {
		t.Fatalf("check-in carried commands %+v; want the lock", r.Commands)
	}
	result := &protocol.CommandResult{ID: lock.ID, Status: protocol.CommandDone, Completed: protocol.At(h.clock.Now())}
	h.send(protocol.UplinkTopic("contoso", d.id), result, d.id)
	_, cmds, _ := h.svc.Device(d.id)
	if cmds[0].State != CommandAcknowledged {
		t.Errorf("command state = %s; want acknowledged", cmds[0].State)
	}
	// The same result again changes nothing and is reported as a replay.
	id, _ := protocol.NewMessageID(h.rng)
	b, _ := protocol.Encode(protocol.Envelope{ID: id, Sent: 1, Device: d.id, Body: result})
	if _, err := h.svc.HandleMessage(context.Background(), protocol.UplinkTopic("contoso", d.id), b); !errors.Is(err, ErrReplayed) {
		t.Errorf("second result = %v; want ErrReplayed", err)
	}
	if r := d.checkIn(); len(r.Commands) != 0 {
		t.Errorf("acknowledged command sent again: %+v", r.Commands)
	}
	wipe, _ := h.svc.IssueCommand(d.id, protocol.CommandWipe, "")
	d.checkIn()
	h.send(protocol.UplinkTopic("contoso", d.id), &protocol.CommandResult{ID: wipe.ID, Status: protocol.CommandDone}, d.id)
	if rec := h.record(d.id); rec.State != DeviceWiped {
		t.Errorf("state after wipe = %s", rec.State)
	}
	if r := d.checkIn(); r.Error != protocol.CodeNotEnrolled {
		t.Errorf("check-in after wipe = %s; want not_enrolled", r.Error)
	}
}

func TestCertificateExpiryAndHousekeeping(t *testing.T) {
	h := newHarness(t)
	mustDo(t, h.svc.SetAuthority, ModeIntune)
	d := h.mustEnroll(protocol.PlatformWindows, "ada@contoso.example")
	h.clock.Advance(366 * 24 * time.Hour)
	if r := d.checkIn(); r.Error != protocol.CodeCertificateExpired {
		t.Errorf("check-in after expiry = %s; want certificate_expired", r.Error)
	}
	if removed, _ := h.svc.Housekeep(); len(removed) != 0 {
		t.Errorf("removed %v a day after expiry", removed)
	}
	h.clock.Advance(RemoveAfterExpiry)
	if removed, _ := h.svc.Housekeep(); !slices.Equal(removed, []string{d.id}) {
		t.Errorf("removed %v 181 days after expiry; want [%s]", removed, d.id)
	}
}

func TestRenewal(t *testing.T) {
	h := newHarness(t)
	mustDo(t, h.svc.SetAuthority, ModeIntune)
	d := h.mustEnroll(protocol.PlatformWindows, "ada@contoso.example")
	_, csr, _ := NewDeviceKeyAndCSR()
	in := &protocol.CheckIn{Reason: protocol.CheckInScheduled, CertificateExpiry: protocol.At(d.expiry), RenewalCSR: csr}
	out := h.send(protocol.UplinkTopic("contoso", d.id), in, d.id)
	if r := decodeOne[*protocol.CheckInResponse](t, out, protocol.DownlinkTopic("contoso", d.id)); len(r.Certificate) != 0 {
		t.Error("renewed a certificate outside the renewal window")
	}
	h.clock.Advance(340 * 24 * time.Hour)
	out = h.send(protocol.UplinkTopic("contoso", d.id), in, d.id)
	r := decodeOne[*protocol.CheckInResponse](t, out, protocol.DownlinkTopic("contoso", d.id))
	if len(r.Certificate) == 0 {
		t.Fatal("no renewed certificate inside the window")
	}
	if rec := h.record(d.id); !rec.CertNotAfter.After(h.clock.Now().Add(364 * 24 * time.Hour)) {
		t.Errorf("certificate expiry after renewal = %v", rec.CertNotAfter)
	}
}

func TestHostileMessagesChangeNothing(t *testing.T) {
	h := newHarness(t)
	mustDo(t, h.svc.SetAuthority, ModeIntune)
	d := h.mustEnroll(protocol.PlatformWindows, "ada@contoso.example")
	d.checkIn()
	before := h.record(d.id)
	checkin := &protocol.CheckIn{Reason: protocol.CheckInScheduled, CertificateExpiry: 1}
	id, _ := protocol.NewMessageID(h.rng)
	asOther, _ := protocol.Encode(protocol.Envelope{ID: id, Sent: 1, Device: "d-other", Body: checkin})
	cases := []struct {
		name, topic string
		payload     []byte
	}{
		{"garbage", protocol.UplinkTopic("contoso", d.id), []byte("garbage")},
		{"another device's id in the payload", protocol.UplinkTopic("contoso", d.id), asOther},
		{"another tenant", protocol.UplinkTopic("fabrikam", d.id), asOther},
		{"not our topic", "devices/" + d.id, asOther},
	}
	for _, c := range cases {
		if out, err := h.svc.HandleMessage(context.Background(), c.topic, c.payload); err == nil || len(out) != 0 {
			t.Errorf("%s: HandleMessage = %d messages, %v; want an error and no answer", c.name, len(out), err)
		}
	}
	after := h.record(d.id)
	if !bytes.Equal(mustMarshal(t, before), mustMarshal(t, after)) {
		t.Errorf("hostile messages changed the device:\n%+v\n%+v", before, after)
	}
}

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := storeEnc.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestRestartMidFanOut stops the service in the middle of an authority
// change fan-out, without any shutdown step, and starts it again: every
// device that has not checked in since the change is pushed again, and the
// change itself is kept.
func TestRestartMidFanOut(t *testing.T) {
	h := newHarness(t)
	mustDo(t, h.svc.SetAuthority, ModeOffice365)
	devs := h.mustEnrollN(10)
	mustDo(t, h.svc.SetAuthority, ModeIntune)
	first, err := h.svc.DuePushes(4)
	if err != nil || len(first) != 4 {
		t.Fatalf("first fan-out batch = %d, %v; want 4", len(first), err)
	}
	devs[0].checkIn()
	devs[9].checkIn()

	h.store.Close() // the process dies: nothing else is written
	h.clock.Advance(time.Minute)
	h.open()
	if got := h.svc.Tenant(); got.Mode != ModeIntune || got.Epoch != 2 {
		t.Fatalf("tenant after restart = %s epoch %d; want intune epoch 2", got.Mode, got.Epoch)
	}
	n, err := h.svc.RepushPending()
	if err != nil || n != 8 {
		t.Fatalf("RepushPending = %d, %v; want 8 (10 devices, 2 checked in)", n, err)
	}
	out, err := h.svc.DuePushes(100)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, o := range out {
		got = append(got, o.Topic)
	}
	for _, d := range devs[1:9] {
		if !slices.Contains(got, protocol.DownlinkTopic("contoso", d.id)) {
			t.Errorf("device %s was not pushed again after the restart", d.id)
		}
	}
	if len(got) != 8 {
		t.Errorf("pushes after restart = %d; want 8", len(got))
	}
}

// TestPushesLeftBehind checks the queue entries that check-ins and newer
// pushes leave behind: they are dropped when due, never sent, and never
// count against a fan-out tick's pushes, however many come first.
func TestPushesLeftBehind(t *testing.T) {
	h := newHarness(t)
	mustDo(t, h.svc.SetAuthority, ModeOffice365)
	devs := h.mustEnrollN(12)
	drain := func(max int) map[string]int {
		t.Helper()
		pushed := map[string]int{}
		for {
			out, err := h.svc.DuePushes(max)
			if err != nil {
				t.Fatal(err)
			}
			if len(out) == 0 {
				return pushed
			}
			for _, o := range out {
				pushed[o.Topic]++
			}
		}
	}
	mustDo(t, h.svc.SetAuthority, ModeIntune)
	if got := drain(5); len(got) != 12 {
		t.Fatalf("first sends reached %d devices, want 12", len(got))
	}
	// Half check in: their retries are left behind. A newer push to all
	// (the change back), queued once the retries are due and before the
	// fan-out sends them, leaves the others' retries behind too, due
	// before it in the queue.
	for _, d := range devs[:6] {
		d.checkIn()
	}
	h.clock.Advance(6 * time.Minute)
	mustDo(t, h.svc.SetAuthority, ModeOffice365)
	out, err := h.svc.DuePushes(3)
	if err != nil || len(out) != 3 {
		t.Fatalf("DuePushes(3) behind 12 entries left behind = %d, %v; want 3", len(out), err)
	}
	if got := drain(3); len(got) != 9 {
		t.Errorf("the newer push reached %d more devices, want the other 9", len(got))
	}
	for _, d := range devs {
		if rec := h.record(d.id); !rec.Push.Pending {
			t.Errorf("device %s owes no push after the newer one was sent", d.id)
		}
	}
	// The newer push's first retry, 5 minutes after its send, once each.
	h.clock.Advance(5 * time.Minute)
	for topic, n := range drain(100) {
		if n != 1 {
			t.Errorf("%s retried %d times at once, want 1", topic, n)
		}
	}
	before := h.svc.metrics.pushRetries.Load()
	h.clock.Advance(30 * time.Minute)
	devs[0].checkIn()
	if got := drain(100); len(got) != 11 || got[protocol.DownlinkTopic("contoso", devs[0].id)] != 0 {
		t.Errorf("second retries reached %d devices (the one that checked in: %d), want the 11 others",
			len(got), got[protocol.DownlinkTopic("contoso", devs[0].id)])
	}
	if n := h.svc.metrics.pushRetries.Load() - before; n != 11 {
		t.Errorf("retries counted %d, want 11", n)
	}
	var queued int
	h.store.View(func(tx *Tx) error { queued = len(tx.duePushes(time.Unix(0, math.MaxInt64), 1000)); return nil })
	if queued != 11 {
		t.Errorf("%d entries queued after the second retries, want the 11 third retries: the rest dropped when due", queued)
	}
}

// TestAnsweredPushUnread checks that the fan-out drops the entry of a
// push its device answered without reading the device's record, and that
// after a restart, which forgets the answers, the record tells it the same.
func TestAnsweredPushUnread(t *testing.T) {
	h := newHarness(t)
	mustDo(t, h.svc.SetAuthority, ModeOffice365)
	devs := h.mustEnrollN(4)
	mustDo(t, h.svc.SetAuthority, ModeIntune)
	if out, err := h.svc.DuePushes(10); err != nil || len(out) != 4 {
		t.Fatalf("DuePushes = %d, %v; want the 4 first sends", len(out), err)
	}
	for _, d := range devs[:2] {
		d.checkIn()
	}
	// A record that cannot be decoded fails any read of it: the fan-out
	// must not need it.
	garble := func(id string) {
		t.Helper()
		err := h.store.db.Update(func(tx *bolt.Tx) error {
			return tx.Bucket(bucketDevices).Put([]byte(id), []byte{0xff})
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	garble(devs[0].id)
	h.clock.Advance(PushRetryDelays[0])
	out, err := h.svc.DuePushes(10)
	if err != nil {
		t.Fatalf("DuePushes read the record of a device that answered: %v", err)
	}
	var got []string
	for _, o := range out {
		got = append(got, o.Topic)
	}
	slices.Sort(got)
	want := []string{protocol.DownlinkTopic("contoso", devs[2].id), protocol.DownlinkTopic("contoso", devs[3].id)}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("retries went to %v; want %v, the devices that did not answer", got, want)
	}
	// After a restart the answers are forgotten: the records tell.
	devs[2].checkIn()
	h.store.Close()
	h.open()
	h.clock.Advance(PushRetryDelays[1])
	out, err = h.svc.DuePushes(10)
	if err != nil || len(out) != 1 || out[0].Topic != protocol.DownlinkTopic("contoso", devs[3].id) {
		t.Errorf("after a restart, DuePushes = %v, %v; want the second retry of %s alone", out, err, devs[3].id)
	}
	garble(devs[3].id)
	h.clock.Advance(PushRetryDelays[2])
	if _, err := h.svc.DuePushes(10); err == nil {
		t.Error("DuePushes read a garbled record without failing: the check above proves nothing")
	}
}

// TestRefusedCheckInStillPushed checks that a check-in the service
// refuses does not count as the answer to the push its device is owed:
// the push's retry still goes out.
func TestRefusedCheckInStillPushed(t *testing.T) {
	h := newHarnessWith(t, func(o *Options) { o.CertValidity = 4 * time.Minute })
	mustDo(t, h.svc.SetAuthority, ModeOffice365)
	d := h.mustEnroll(protocol.PlatformWindows, "ada@contoso.example")
	mustDo(t, h.svc.SetAuthority, ModeIntune)
	if out, err := h.svc.DuePushes(10); err != nil || len(out) != 1 {
		t.Fatalf("DuePushes = %d, %v; want the first send", len(out), err)
	}
	h.clock.Advance(4 * time.Minute)
	if resp := d.checkIn(); resp.Error != protocol.CodeCertificateExpired {
		t.Fatalf("check-in with an expired certificate: %s; want it refused as expired", resp.Error)
	}
	h.clock.Advance(PushRetryDelays[0])
	if out, err := h.svc.DuePushes(10); err != nil || len(out) != 1 {
		t.Errorf("after a refused check-in, DuePushes = %d, %v; want the retry", len(out), err)
	}
}

// TestPushShown checks that the admin API's device views show the sends
// and the next one's time, which the queue keeps instead of the record.
func TestPushShown(t *testing.T) {
	h := newHarness(t)
	mustDo(t, h.svc.SetAuthority, ModeOffice365)
	d := h.mustEnroll(protocol.PlatformWindows, "ada@contoso.example")
	mustDo(t, h.svc.SetAuthority, ModeIntune)
	h.svc.DuePushes(10)
	h.clock.Advance(5 * time.Minute)
	h.svc.DuePushes(10) // the first retry
	want := h.clock.Now().Add(PushRetryDelays[1])
	got, _, err := h.svc.Device(d.id)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Push.Pending || got.Push.Attempts != 2 || !got.Push.NextAt.Equal(want) {
		t.Errorf("Device shows push %+v; want pending, 2 sends, next at %s", got.Push, want)
	}
	all, err := h.svc.Devices(nil)
	if err != nil || len(all) != 1 || all[0].Push.Attempts != 2 || !all[0].Push.NextAt.Equal(want) {
		t.Errorf("Devices shows %+v, %v; want the same push", all, err)
	}
	st, err := h.svc.MigrationStatus()
	if err != nil || st.PushesQueued != 1 || st.Retried != 1 {
		t.Errorf("MigrationStatus pushes queued %d, retried %d, %v; want 1 and 1", st.PushesQueued, st.Retried, err)
	}
}

// TestLegacyPushEntry checks that a queue entry without a value, as older
// versions wrote with the sends in the device record, is sent as before.
func TestLegacyPushEntry(t *testing.T) {
	h := newHarness(t)
	mustDo(t, h.svc.SetAuthority, ModeOffice365)
	d := h.mustEnroll(protocol.PlatformAndroid, "ada@contoso.example")
	mustDo(t, h.svc.SetAuthority, ModeIntune)
	now := h.clock.Now()
	h.putLegacyPush(d.id, now)
	out, err := h.svc.DuePushes(10)
	if err != nil || len(out) != 1 || h.svc.metrics.pushRetries.Load() != 1 {
		t.Fatalf("DuePushes = %d, %v, %d retries; want the entry sent as a retry", len(out), err, h.svc.metrics.pushRetries.Load())
	}
	got, _, _ := h.svc.Device(d.id)
	if want := now.Add(PushRetryDelays[1]); got.Push.Attempts != 2 || !got.Push.NextAt.Equal(want) {
		t.Errorf("push after the legacy entry's send: %+v; want 2 sends, next at %s", got.Push, want)
	}
}

// TestPushAgainAtOnce checks that a push queued at the instant an earlier
// one ended is told from it: the earlier one's retry, left behind, is not
// sent.
func TestPushAgainAtOnce(t *testing.T) {
	h := newHarness(t)
	mustDo(t, h.svc.SetAuthority, ModeOffice365)
	d := h.mustEnroll(protocol.PlatformAndroid, "ada@contoso.example")
	mustDo(t, h.svc.SetAuthority, ModeIntune)
	if out, _ := h.svc.DuePushes(10); len(out) != 1 {
		t.Fatalf("first push: %d sent, want 1", len(out))
	}
	d.checkIn()
	mustDo(t, h.svc.SetAuthority, ModeOffice365) // at the same instant
	h.clock.Advance(PushRetryDelays[0])
	if out, _ := h.svc.DuePushes(10); len(out) != 1 {
		t.Errorf("%d pushes sent when the newer push and the earlier one's retry were due; want the newer push alone", len(out))
	}
}

// TestRepushLeftBehind checks RepushPending when a device's current push
// and an entry it left behind are both queued, the latter due at the
// instant of the restart: the current push is made due, once.
func TestRepushLeftBehind(t *testing.T) {
	h := newHarness(t)
	mustDo(t, h.svc.SetAuthority, ModeOffice365)
	d := h.mustEnroll(protocol.PlatformAndroid, "ada@contoso.example")
	gone := h.mustEnroll(protocol.PlatformAndroid, "ada@contoso.example")
	mustDo(t, h.svc.SetAuthority, ModeIntune)
	if out, _ := h.svc.DuePushes(10); len(out) != 2 {
		t.Fatalf("first pushes: %d sent, want 2", len(out))
	}
	d.checkIn()
	if err := h.svc.RemoveDevice(gone.id); err != nil { // its retry is left behind
		t.Fatal(err)
	}
	h.clock.Advance(time.Minute)
	mustDo(t, h.svc.SetAuthority, ModeOffice365) // queued, not sent
	h.clock.Advance(PushRetryDelays[0] - time.Minute)
	if n, err := h.svc.RepushPending(); n != 1 || err != nil {
		t.Fatalf("RepushPending = %d, %v; want 1", n, err)
	}
	out, err := h.svc.DuePushes(10)
	if err != nil || len(out) != 1 || out[0].Topic != protocol.DownlinkTopic("contoso", d.id) {
		t.Fatalf("DuePushes after RepushPending = %+v, %v; want the newer push to %s", out, err, d.id)
	}
	var queued []pushEntry
	h.store.View(func(tx *Tx) error { queued = tx.duePushes(time.Unix(0, math.MaxInt64), 10); return nil })
	if len(queued) != 1 || queued[0].device != d.id || queued[0].sends != 1 {
		t.Errorf("queue after the send: %+v; want the newer push's retry alone", queued)
	}
}

// TestLegacyPushLeftBehind checks that an entry of an older version is
// left behind by a newer push: the newer one is sent, the old retry not.
func TestLegacyPushLeftBehind(t *testing.T) {
	h := newHarness(t)
	mustDo(t, h.svc.SetAuthority, ModeOffice365)
	d := h.mustEnroll(protocol.PlatformAndroid, "ada@contoso.example")
	retryAt := h.clock.Now().Add(PushRetryDelays[0])
	h.putLegacyPush(d.id, retryAt)
	h.clock.Advance(time.Minute)
	mustDo(t, h.svc.SetAuthority, ModeIntune)
	h.clock.Advance(PushRetryDelays[0])
	out, err := h.svc.DuePushes(10)
	if err != nil || len(out) != 1 || h.svc.metrics.pushRetries.Load() != 0 {
		t.Errorf("DuePushes = %d, %v, %d retries; want the newer push alone, a first send", len(out), err, h.svc.metrics.pushRetries.Load())
	}
}

// putLegacyPush queues device id's push as older versions did, in place of
// any queued: sent once, due at at, the sends and the time in the record,
// the entry without a value.
func (h *harness) putLegacyPush(id string, at time.Time) {
	h.t.Helper()
	err := h.store.Update(func(tx *Tx) error {
		for _, e := range tx.duePushes(time.Unix(0, math.MaxInt64), math.MaxInt) {
			if err := tx.deletePush(e); err != nil {
				return err
			}
		}
		rec, err := tx.Device(id)
		if err != nil {
			return err
		}
		rec.Push = PushState{Pending: true, Reason: protocol.PushAuthorityChange, Attempts: 1, NextAt: at}
		if err := tx.PutDevice(rec); err != nil {
			return err
		}
		return tx.tx.Bucket(bucketPushes).Put(pushKey(at.UnixNano(), id), nil)
	})
	if err != nil {
		h.t.Fatal(err)
	}
}
