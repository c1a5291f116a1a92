package main

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/mdm-authority/mdm/agent"
	"github.com/mdm-authority/mdm/broker"
	"github.com/mdm-authority/mdm/protocol"
)

func put(t *testing.T, s *service, a protocol.Authority, typ protocol.ProfileType, name string, settings ...protocol.Setting) {
	t.Helper()
	if _, _, err := s.svc.PutProfile(a, typ, name, settings); err != nil {
		t.Fatal(err)
	}
}

func setAuthority(t *testing.T, s *service, m broker.Mode) {
	t.Helper()
	if _, _, err := s.svc.SetAuthority(m); err != nil {
		t.Fatal(err)
	}
}

// TestAuthorityChange walks one agent through an authority change: the
// push, the overwrite, the retained profiles with their deadline, the
// redundant pair and the protection gap, and their removal at the
// deadline, all seen through the control socket and the profile files.
func TestAuthorityChange(t *testing.T) {
	clock := newFakeClock()
	s := startService(t, clock)
	setAuthority(t, s, broker.ModeOffice365)
	put(t, s, protocol.AuthorityOffice365, protocol.ProfileEmail, "Corp Mail", protocol.Setting{Key: "server", Value: "o365.contoso.example"})
	put(t, s, protocol.AuthorityOffice365, protocol.ProfileEmail, "Legacy Mail")
	put(t, s, protocol.AuthorityOffice365, protocol.ProfileConfiguration, "Baseline", protocol.Setting{Key: "passcode_required", Value: "true"})

	a := enrollAgent(t, s, protocol.PlatformAndroid, "ada@contoso.example")
	waitFor(t, "the enrollment check-in", func() bool { return a.status(t).CheckIns >= 1 })
	st := a.status(t)
	if st.Authority != protocol.AuthorityOffice365 || len(st.Profiles) != 3 {
		t.Fatalf("after enrollment: authority %s, %d profiles; want office365, 3", st.Authority, len(st.Profiles))
	}
	if st.Compliance.State != protocol.ComplianceCompliant {
		t.Errorf("compliance = %s; want compliant (the device has a passcode)", st.Compliance.State)
	}

	// The scheduled check-in: Android checks in every 3 minutes at first.
	clock.Advance(3 * time.Minute)
	waitFor(t, "a scheduled check-in", func() bool { return a.status(t).CheckIns >= 2 })

	// The change: intune overwrites "Corp Mail", has no configuration
	// profile (a gap) and its mail profile pairs with "Legacy Mail".
	put(t, s, protocol.AuthorityIntune, protocol.ProfileEmail, "Corp Mail", protocol.Setting{Key: "server", Value: "intune.contoso.example"})
	put(t, s, protocol.AuthorityIntune, protocol.ProfileWiFi, "Corp WiFi")
	changedAt := clock.Now()
	setAuthority(t, s, broker.ModeIntune)
	if n, err := s.broker.PublishDuePushes(100); err != nil || n != 1 {
		t.Fatalf("PublishDuePushes = %d, %v; want 1 push", n, err)
	}
	waitFor(t, "the pushed check-in", func() bool { return a.status(t).Authority == protocol.AuthorityIntune })
	st = a.status(t)
	deadline := changedAt.Add(broker.RetentionPeriod).Truncate(time.Millisecond)
	if p := findProfile(st.Profiles, protocol.AuthorityIntune, protocol.ProfileEmail, "Corp Mail"); p == nil {
		t.Error("intune's Corp Mail is not installed")
	}
	if p := findProfile(st.Profiles, protocol.AuthorityOffice365, protocol.ProfileEmail, "Corp Mail"); p != nil {
		t.Error("office365's Corp Mail was not overwritten")
	}
	for _, name := range []string{"Legacy Mail", "Baseline"} {
		typ := protocol.ProfileEmail
		if name == "Baseline" {
			typ = protocol.ProfileConfiguration
		}
		p := findProfile(st.Profiles, protocol.AuthorityOffice365, typ, name)
		if p == nil || !p.RetainUntil.Equal(deadline) {
			t.Errorf("office365's %q = %+v; want retained until %s", name, p, deadline)
		}
	}
	if len(st.Redundant) != 1 || st.Redundant[0].Retained.Name != "Legacy Mail" || st.Redundant[0].Current.Name != "Corp Mail" {
		t.Errorf("redundant = %+v; want Legacy Mail with Corp Mail", st.Redundant)
	}
	if len(st.Gaps) != 1 || st.Gaps[0].Profile.Name != "Baseline" {
		t.Errorf("gaps = %+v; want Baseline", st.Gaps)
	}
	if len(st.LastChanges) != 4 {
		t.Errorf("last changes = %+v; want the overwrite, Corp WiFi installed and two retained", st.LastChanges)
	}
	wantFiles := []string{
		"intune/email/Corp%20Mail.json", "intune/wifi/Corp%20WiFi.json",
		"office365/configuration/Baseline.json", "office365/email/Legacy%20Mail.json",
	}
	if got := profileFiles(t, a.dir); !slices.Equal(got, wantFiles) {
		t.Errorf("profile files = %q; want %q", got, wantFiles)
	}

	// A restart keeps the deadlines; at the deadline they go.
	if err := a.stop(t); err != nil {
		t.Fatalf("agent stopped with %v", err)
	}
	a.start(t, s)
	if p := findProfile(a.status(t).Profiles, protocol.AuthorityOffice365, protocol.ProfileEmail, "Legacy Mail"); p == nil || !p.RetainUntil.Equal(deadline) {
		t.Fatalf("after a restart Legacy Mail = %+v; want retained until %s", p, deadline)
	}
	clock.Advance(deadline.Sub(clock.Now()))
	waitFor(t, "the retained profiles to expire", func() bool { return len(a.status(t).Profiles) == 2 })
	st = a.status(t)
	if len(st.Redundant)+len(st.Gaps) != 0 {
		t.Errorf("after the deadline: redundant %+v, gaps %+v; want none", st.Redundant, st.Gaps)
	}
	if got := profileFiles(t, a.dir); !slices.Equal(got, wantFiles[:2]) {
		t.Errorf("profile files after the deadline = %q; want %q", got, wantFiles[:2])
	}
}

// TestSyncAndCommands checks the Company Portal sync through the control
// socket and a remote lock from the new authority.
func TestSyncAndCommands(t *testing.T) {
	clock := newFakeClock()
	s := startService(t, clock)
	setAuthority(t, s, broker.ModeIntune)
	a := enrollAgent(t, s, protocol.PlatformWindows, "ada@contoso.example")
	waitFor(t, "the enrollment check-in", func() bool { return a.status(t).CheckIns >= 1 })
	// The MQTT keep-alive, for brokers that require one, works as well.
	if err := a.stop(t); err != nil {
		t.Fatal(err)
	}
	a.keepAlive = 30 * time.Second
	a.start(t, s)

	put(t, s, protocol.AuthorityIntune, protocol.ProfileCompliance, "OS Minimum", protocol.Setting{Key: "min_os_version", Value: "15"})
	res, err := a.client.Sync(context.Background())
	if err != nil {
		t.Fatalf("sync: %v", err)
	}
	if res.Authority != protocol.AuthorityIntune || len(res.Changes) != 1 || res.Changes[0].Kind != agent.Installed {
		t.Errorf("sync = %+v; want intune with one profile installed", res)
	}
	if res.Compliance.State != protocol.ComplianceNoncompliant {
		t.Errorf("sync compliance = %s; want noncompliant (OS 14 < 15)", res.Compliance.State)
	}
	a.facts.set(agent.Facts{OSVersion: "15.1"})
	if res, err = a.client.Sync(context.Background()); err != nil || res.Compliance.State != protocol.ComplianceCompliant || len(res.Changes) != 0 {
		t.Errorf("sync after an OS update = %+v, %v; want compliant, no change", res, err)
	}
	if d := deviceOf(t, s, a.id); d.Compliance.State != protocol.ComplianceCompliant {
		t.Errorf("the service sees compliance %s; want compliant", d.Compliance.State)
	}

	cmd, err := s.svc.IssueCommand(a.id, protocol.CommandRemoteLock, "Call IT at 555-0100")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.broker.PublishDuePushes(100); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the lock to be acknowledged", func() bool {
		_, cmds, err := s.svc.Device(a.id)
		return err == nil && slices.ContainsFunc(cmds, func(c *broker.Command) bool {
			return c.ID == cmd.ID && c.State == broker.CommandAcknowledged
		})
	})
	// The service may see the result before the agent sees the broker's
	// acknowledgement of it.
	waitFor(t, "the result to be acknowledged", func() bool { return len(a.status(t).PendingCommands) == 0 })
	if st := a.status(t); st.Lock == nil || st.Lock.Message != "Call IT at 555-0100" {
		t.Errorf("status lock = %+v; want the lock recorded", st.Lock)
	}
}
