package broker

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/mdm-authority/mdm/protocol"
)

func TestNoPushReachesIOSWithoutAPNs(t *testing.T) {
	h := newHarness(t)
	mustDo(t, h.svc.SetAuthority, ModeOffice365)
	if _, err := h.svc.UploadAPNs(protocol.AuthorityOffice365, true); err != nil {
		t.Fatal(err)
	}
	phone := h.mustEnroll(protocol.PlatformIOS, "ada@contoso.example")
	phone.checkIn()
	mustDo(t, h.svc.SetAuthority, ModeIntune)
	if _, err := h.svc.IssueCommand(phone.id, protocol.CommandSync, ""); err != nil {
		t.Fatal(err)
	}
	if out, _ := h.svc.DuePushes(10); len(out) != 0 {
		t.Errorf("%d pushes sent to an iOS device whose authority has no APNs certificate", len(out))
	}
	if _, err := h.svc.UploadAPNs(protocol.AuthorityIntune, true); err != nil {
		t.Fatal(err)
	}
	if out, _ := h.svc.DuePushes(10); len(out) != 1 {
		t.Errorf("%d pushes after the upload; want 1", len(out))
	}
}

func TestLicenseMovedIOSPushedOnUpload(t *testing.T) {
	h := newHarness(t)
	mustDo(t, h.svc.SetAuthority, ModeCoexistence)
	if _, err := h.svc.UploadAPNs(protocol.AuthorityOffice365, true); err != nil {
		t.Fatal(err)
	}
	phone := h.mustEnroll(protocol.PlatformIOS, "ada@contoso.example")
	phone.checkIn()
	h.clock.Advance(time.Hour)
	if n, err := h.svc.SetLicense("ada@contoso.example", true); err != nil || n != 1 {
		t.Fatalf("SetLicense = %d, %v", n, err)
	}
	if n, _ := h.svc.SetLicense("ada@contoso.example", true); n != 0 {
		t.Errorf("an unchanged license pushed %d devices", n)
	}
	h.svc.DuePushes(10) // dropped: intune has no APNs certificate
	h.clock.Advance(time.Hour)
	if n, err := h.svc.UploadAPNs(protocol.AuthorityIntune, true); err != nil || n != 1 {
		t.Errorf("UploadAPNs pushed %d, %v; want the device the license moved", n, err)
	}
}

func TestMigrateIsForUserlessDevices(t *testing.T) {
	h := newHarness(t)
	mustDo(t, h.svc.SetAuthority, ModeOffice365)
	d := h.mustEnroll(protocol.PlatformAndroid, "ada@contoso.example")
	mustDo(t, h.svc.SetAuthority, ModeIntune)
	if _, err := h.svc.MigrateDevice(d.id); !errors.Is(err, ErrConflict) {
		t.Errorf("migrate of a device with a user = %v; want ErrConflict", err)
	}
}

func TestUserlessMarkedAtChange(t *testing.T) {
	h := newHarness(t)
	mustDo(t, h.svc.SetAuthority, ModeOffice365)
	kiosk := h.mustEnroll(protocol.PlatformAndroid, "")
	mustDo(t, h.svc.SetAuthority, ModeIntune)
	if !h.record(kiosk.id).NeedsSupport {
		t.Error("an offline userless device is not listed as needing support after the change")
	}
	st, _ := h.svc.MigrationStatus()
	if st.Stranded != 1 {
		t.Errorf("migration status stranded = %d; want 1", st.Stranded)
	}
}

func TestCommandLimits(t *testing.T) {
	h := newHarness(t)
	mustDo(t, h.svc.SetAuthority, ModeIntune)
	d := h.mustEnroll(protocol.PlatformWindows, "ada@contoso.example")
	if _, err := h.svc.IssueCommand(d.id, protocol.CommandRemoteLock, "line one\nline two"); err == nil {
		t.Error("a multi-line lock message was accepted")
	}
	if _, err := h.svc.IssueCommand(d.id, protocol.CommandRemoteLock, strings.Repeat("x", 1025)); err == nil {
		t.Error("a lock message over 1024 bytes was accepted")
	}
	for i := range protocol.MaxCommands {
		if _, err := h.svc.IssueCommand(d.id, protocol.CommandSync, ""); err != nil {
			t.Fatalf("command %d: %v", i, err)
		}
	}
	if _, err := h.svc.IssueCommand(d.id, protocol.CommandSync, ""); !errors.Is(err, ErrConflict) {
		t.Errorf("command beyond %d open ones = %v; want ErrConflict", protocol.MaxCommands, err)
	}
	if r := d.checkIn(); r.Error != protocol.CodeNone || len(r.Commands) != protocol.MaxCommands {
		t.Errorf("check-in with %d open commands = %s, %d commands", protocol.MaxCommands, r.Error, len(r.Commands))
	}
}

func TestRemoteLockFollowsTheNewAuthority(t *testing.T) {
	h := newHarness(t)
	mustDo(t, h.svc.SetAuthority, ModeOffice365)
	d := h.mustEnroll(protocol.PlatformWindows, "ada@contoso.example")
	mustDo(t, h.svc.SetAuthority, ModeIntune)
	// Not checked in yet: the lock is for the authority it is moving to.
	if _, err := h.svc.IssueCommand(d.id, protocol.CommandRemoteLock, ""); err != nil {
		t.Errorf("remote lock right after the change to intune = %v", err)
	}
}

func TestCatalogLimits(t *testing.T) {
	h := newHarness(t)
	mustDo(t, h.svc.SetAuthority, ModeIntune)
	many := make(protocol.Settings, 64)
	for i := range many {
		many[i] = protocol.Setting{Key: string(rune('a'+i%26)) + strings.Repeat("k", i/26+1), Value: "v"}
	}
	for i := range 16 {
		if _, _, err := h.svc.PutProfile(protocol.AuthorityIntune, protocol.ProfileWiFi, "wifi "+string(rune('a'+i)), many); err != nil {
			t.Fatalf("profile %d: %v", i, err)
		}
	}
	if _, _, err := h.svc.PutProfile(protocol.AuthorityIntune, protocol.ProfileWiFi, "one more", many[:1]); !errors.Is(err, ErrConflict) {
		t.Errorf("a 1025th setting in the catalog = %v; want ErrConflict", err)
	}
	d := h.mustEnroll(protocol.PlatformWindows, "ada@contoso.example")
	if r := d.checkIn(); r.Error != protocol.CodeNone || len(r.Profiles) != 16 {
		t.Errorf("check-in with a full catalog = %s, %d profiles", r.Error, len(r.Profiles))
	}
}

func TestNoMessagesFromDevicesThatLeft(t *testing.T) {
	h := newHarness(t)
	mustDo(t, h.svc.SetAuthority, ModeIntune)
	d := h.mustEnroll(protocol.PlatformWindows, "ada@contoso.example")
	wipe, _ := h.svc.IssueCommand(d.id, protocol.CommandWipe, "")
	d.checkIn()
	h.send(protocol.UplinkTopic("contoso", d.id), &protocol.CommandResult{ID: wipe.ID, Status: protocol.CommandDone}, d.id)
	id, _ := protocol.NewMessageID(h.rng)
	b, _ := protocol.Encode(protocol.Envelope{ID: id, Sent: 1, Device: d.id, Body: &protocol.Unenroll{}})
	if _, err := h.svc.HandleMessage(t.Context(), protocol.UplinkTopic("contoso", d.id), b); !errors.Is(err, ErrConflict) {
		t.Errorf("unenroll of a wiped device = %v; want ErrConflict", err)
	}
	if rec := h.record(d.id); rec.State != DeviceWiped {
		t.Errorf("state = %s; want wiped", rec.State)
	}
}

// TestCheckInRacingAChange changes the authority while a check-in that
// has decided on the old one is about to write. That check-in must not
// clear the push the change queued: the device ends on the new authority
// or still owed a push.
func TestCheckInRacingAChange(t *testing.T) {
	h := newHarness(t)
	mustDo(t, h.svc.SetAuthority, ModeOffice365)
	d := h.mustEnroll(protocol.PlatformAndroid, "ada@contoso.example")
	d.checkIn()
	decided := make(chan struct{})
	h.svc.testHookDecided = func() { close(decided) }
	changed := make(chan error)
	go func() {
		<-decided
		_, _, err := h.svc.SetAuthority(ModeIntune) // races the check-in's write
		changed <- err
	}()
	h.svc.checkIn(d.id, &protocol.Envelope{ID: protocol.MessageID{1}, Sent: protocol.At(h.clock.Now())}, &protocol.CheckIn{Reason: protocol.CheckInScheduled,
		CertificateExpiry: protocol.At(d.expiry), DesiredVersion: d.version})
	if err := <-changed; err != nil {
		t.Fatal(err)
	}
	if rec := h.record(d.id); rec.Authority == protocol.AuthorityOffice365 && !rec.Push.Pending {
		t.Fatal("device left on office365 with its authority-change push cleared")
	}
}

// TestEnrollmentRedelivered delivers one enrollment request twice, as MQTT
// QoS 1 may: one device, and the same answer twice.
func TestEnrollmentRedelivered(t *testing.T) {
	h := newHarness(t)
	mustDo(t, h.svc.SetAuthority, ModeIntune)
	_, csr, _ := NewDeviceKeyAndCSR()
	req := &protocol.EnrollRequest{CSR: csr, Token: h.token, Platform: protocol.PlatformAndroid, User: "ada@contoso.example", Type: protocol.EnrollUser}
	id, _ := protocol.NewMessageID(h.rng)
	b, _ := protocol.Encode(protocol.Envelope{ID: id, Sent: 1, Body: req})
	topic := protocol.EnrollRequestTopic("contoso", "r-1")
	var devices []string
	for range 2 {
		out, err := h.svc.HandleMessage(t.Context(), topic, b)
		if err != nil {
			t.Fatal(err)
		}
		devices = append(devices, decodeOne[*protocol.EnrollResponse](t, out, protocol.EnrollResponseTopic("contoso", "r-1")).Device)
	}
	if devices[0] != devices[1] {
		t.Errorf("the same request enrolled %q and %q", devices[0], devices[1])
	}
	if ds, _ := h.svc.Devices(nil); len(ds) != 1 {
		t.Errorf("%d device records; want 1", len(ds))
	}
	// The same message id under another request id is another request.
	out, _ := h.svc.HandleMessage(t.Context(), protocol.EnrollRequestTopic("contoso", "r-2"), b)
	if d := decodeOne[*protocol.EnrollResponse](t, out, protocol.EnrollResponseTopic("contoso", "r-2")).Device; d == devices[0] {
		t.Error("another request id got the first request's identity")
	}
}
