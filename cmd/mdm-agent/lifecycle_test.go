package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mdm-authority/mdm/agent"
	"github.com/mdm-authority/mdm/broker"
	"github.com/mdm-authority/mdm/protocol"
)

// TestIOSWaitsForAPNs checks that an iOS device's check-ins fail while
// the new authority has no APNs certificate, that it keeps its profiles
// meanwhile, and that it moves once the certificate is uploaded.
func TestIOSWaitsForAPNs(t *testing.T) {
	clock := newFakeClock()
	s := startService(t, clock)
	setAuthority(t, s, broker.ModeOffice365)
	if _, err := s.svc.UploadAPNs(protocol.AuthorityOffice365, true); err != nil {
		t.Fatal(err)
	}
	put(t, s, protocol.AuthorityOffice365, protocol.ProfileEmail, "Corp Mail")
	a := enrollAgent(t, s, protocol.PlatformIOS, "ada@contoso.example")
	waitFor(t, "the enrollment check-in", func() bool { return a.status(t).CheckIns >= 1 })

	setAuthority(t, s, broker.ModeIntune)
	if n, _ := s.broker.PublishDuePushes(100); n != 0 {
		t.Errorf("%d pushes reached iOS without an APNs certificate; want none", n)
	}
	clock.Advance(15 * time.Minute) // the iOS schedule
	waitFor(t, "a refused check-in", func() bool { return a.status(t).LastError == protocol.CodeAPNsCertificateMissing })
	st := a.status(t)
	if st.Authority != protocol.AuthorityOffice365 || len(st.Profiles) != 1 {
		t.Errorf("after the refusal: authority %s, %d profiles; want office365 and its profile kept", st.Authority, len(st.Profiles))
	}
	if len(st.Attention) == 0 || !strings.Contains(st.Attention[0], "APNs") {
		t.Errorf("attention = %q; want the APNs refusal explained", st.Attention)
	}

	if _, err := s.svc.UploadAPNs(protocol.AuthorityIntune, true); err != nil {
		t.Fatal(err)
	}
	if n, err := s.broker.PublishDuePushes(100); err != nil || n != 1 {
		t.Fatalf("PublishDuePushes after the upload = %d, %v; want 1", n, err)
	}
	waitFor(t, "the move to intune", func() bool { return a.status(t).Authority == protocol.AuthorityIntune })
	st = a.status(t)
	if st.LastError != protocol.CodeNone || len(st.Gaps) != 1 {
		t.Errorf("after the move: last error %s, gaps %+v; want none and the retained mail profile as a gap", st.LastError, st.Gaps)
	}
	for _, line := range st.Attention {
		if strings.Contains(line, "APNs") {
			t.Errorf("attention after the move still says %q", line)
		}
	}
}

// TestWipeAndRetire checks that both end management: the result reaches
// the service, the profiles and the key are gone, the agent stops and
// refuses to start again.
func TestWipeAndRetire(t *testing.T) {
	for _, action := range []protocol.CommandKind{protocol.CommandWipe, protocol.CommandRetire} {
		t.Run(action.String(), func(t *testing.T) {
			clock := newFakeClock()
			s := startService(t, clock)
			setAuthority(t, s, broker.ModeIntune)
			put(t, s, protocol.AuthorityIntune, protocol.ProfileVPN, "Corp VPN")
			a := enrollAgent(t, s, protocol.PlatformAndroid, "ada@contoso.example")
			waitFor(t, "the profile", func() bool { return len(profileFiles(t, a.dir)) == 1 })

			if _, err := s.svc.IssueCommand(a.id, action, ""); err != nil {
				t.Fatal(err)
			}
			if _, err := s.broker.PublishDuePushes(100); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-a.done:
				if !errors.Is(err, agent.ErrStoppedManagement) {
					t.Fatalf("Run = %v; want ErrStoppedManagement", err)
				}
				a.cancel = nil
			case <-time.After(30 * time.Second):
				t.Fatal("the agent did not stop after the command")
			}
			// The broker acknowledges the result before the service has
			// recorded it: the agent may stop first.
			waitFor(t, "the service to record the "+action.String(), func() bool {
				return deviceOf(t, s, a.id).State != broker.DeviceEnrolled
			})
			if files := profileFiles(t, a.dir); len(files) != 0 {
				t.Errorf("profile files left: %q", files)
			}
			if _, err := os.Stat(filepath.Join(a.dir, "device.key")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("device key still there: %v", err)
			}
			st, err := agent.LoadState(a.dir)
			if err != nil || st.Stopped == "" {
				t.Fatalf("state after %s = %+v, %v; want a stopped record", action, st, err)
			}
			err = agent.Run(context.Background(), agent.Options{Dir: a.dir, Clock: clock})
			if !errors.Is(err, agent.ErrStoppedManagement) {
				t.Errorf("Run after %s = %v; want ErrStoppedManagement", action, err)
			}
		})
	}
}

// TestCertificateLifecycle checks renewal inside the window and that an
// expired certificate stops check-ins with a status that says to
// re-enroll.
func TestCertificateLifecycle(t *testing.T) {
	clock := newFakeClock()
	s := startService(t, clock, func(o *broker.Options) {
		o.CertValidity = 40 * 24 * time.Hour
		o.RenewalWindow = 30 * 24 * time.Hour
	})
	setAuthority(t, s, broker.ModeIntune)
	a := enrollAgent(t, s, protocol.PlatformWindows, "ada@contoso.example")
	waitFor(t, "the enrollment check-in", func() bool { return a.status(t).CheckIns >= 1 })
	first := a.status(t).CertificateNotAfter
	firstToken := loadState(t, a.dir).ConnectToken
	if firstToken == "" {
		t.Error("no connect token kept from the enrollment")
	}

	clock.Advance(11 * 24 * time.Hour) // inside the renewal window
	waitFor(t, "the renewal", func() bool { return a.status(t).CertificateNotAfter.After(first) })
	renewed := a.status(t).CertificateNotAfter
	if tok := loadState(t, a.dir).ConnectToken; tok == "" || tok == firstToken {
		t.Errorf("connect token after the renewal = %q; want a new one", tok)
	}
	if deviceOf(t, s, a.id).PrevCertSerial == "" {
		t.Error("the replaced certificate was revoked before the device used its new one")
	}
	// The renewed certificate is the one new connections use, and using it
	// revokes the one it replaced.
	if err := a.stop(t); err != nil {
		t.Fatal(err)
	}
	a.start(t, s)
	waitFor(t, "the revocation of the replaced certificate", func() bool { return deviceOf(t, s, a.id).PrevCertSerial == "" })

	clock.Advance(renewed.Sub(clock.Now()) + time.Minute)
	waitFor(t, "the expiry", func() bool { return a.status(t).CertificateExpired })
	checkIns := deviceOf(t, s, a.id).CheckIns
	clock.Advance(8 * time.Hour)
	st := a.status(t)
	if len(st.Attention) == 0 || !strings.Contains(st.Attention[0], "re-enroll") {
		t.Errorf("attention = %q; want a re-enroll instruction", st.Attention)
	}
	if !st.NextCheckIn.IsZero() {
		t.Errorf("next check-in = %s; want none once the certificate expired", st.NextCheckIn)
	}
	if _, err := a.client.Sync(context.Background()); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("sync with an expired certificate = %v; want an expiry error", err)
	}
	if got := deviceOf(t, s, a.id).CheckIns; got != checkIns {
		t.Errorf("check-ins after the expiry: %d, before %d; want none", got, checkIns)
	}
}

// TestReconnect restarts the broker under a running agent: the agent
// notices, reconnects with backoff and checks in again.
func TestReconnect(t *testing.T) {
	clock := newFakeClock()
	s := startService(t, clock)
	setAuthority(t, s, broker.ModeIntune)
	a := enrollAgent(t, s, protocol.PlatformWindows, "ada@contoso.example")
	waitFor(t, "the enrollment check-in", func() bool { return a.status(t).CheckIns >= 1 })

	s.broker.Close()
	waitFor(t, "the agent to notice", func() bool { return !a.status(t).Connected })
	s.startBroker(t, strings.TrimPrefix(s.url, "mqtts://"))
	waitFor(t, "the agent to reconnect", func() bool { return a.status(t).Connected })
	res, err := a.client.Sync(context.Background())
	if err != nil || res.Error != protocol.CodeNone || res.Authority != protocol.AuthorityIntune {
		t.Errorf("sync after the reconnect = %+v, %v", res, err)
	}
}

func loadState(t *testing.T, dir string) *agent.State {
	t.Helper()
	st, err := agent.LoadState(dir)
	if err != nil {
		t.Fatal(err)
	}
	return st
}
