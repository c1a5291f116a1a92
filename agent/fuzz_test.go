package agent

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/mdm-authority/mdm/protocol"
)

// FuzzReceive feeds the core whatever the service (or anyone who can
// publish on the device's downlink) might send, after the protocol's
// decoder accepted it: the core must not panic, and its state must stay
// one that encodes and decodes.
func FuzzReceive(f *testing.F) {
	now := time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)
	seeds := []protocol.Body{
		&protocol.Push{Epoch: 2, Reason: protocol.PushAuthorityChange},
		&protocol.Command{ID: "c-1", Action: protocol.CommandRemoteLock, Message: "Call IT"},
		&protocol.Command{ID: "c-2", Action: protocol.CommandWipe},
		&protocol.CheckInResponse{Authority: protocol.AuthorityIntune, Epoch: 2, DesiredVersion: 9,
			Profiles: []protocol.DesiredProfile{{Type: protocol.ProfileEmail, Name: "Corp Mail", Version: 3,
				Settings: protocol.Settings{{Key: "min_os_version", Value: "17.5"}}}},
			RetainUntil: protocol.At(now.Add(7 * 24 * time.Hour)),
			Commands:    []protocol.Command{{ID: "c-3", Action: protocol.CommandSync}}},
		&protocol.CheckInResponse{Error: protocol.CodeAPNsCertificateMissing, Message: "no APNs"},
	}
	for _, b := range seeds {
		payload, err := protocol.Encode(protocol.Envelope{ID: protocol.MessageID{1}, Sent: protocol.At(now), Device: "d-1", ReplyTo: protocol.MessageID{9}, Body: b})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(payload, true)
	}
	// The protocol's golden vectors: one real message of every kind, as
	// the service and devices encode them.
	golden, err := filepath.Glob("../protocol/testdata/*.cbor")
	if err != nil || len(golden) == 0 {
		f.Fatalf("golden vectors in ../protocol/testdata: %v, %v; want some", golden, err)
	}
	for _, path := range golden {
		payload, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		if _, err := protocol.Decode(payload); err != nil {
			f.Fatalf("golden vector %s does not decode: %v", path, err)
		}
		f.Add(payload, true)
		f.Add(payload, false)
	}
	f.Fuzz(func(t *testing.T, payload []byte, inFlight bool) {
		env, err := protocol.Decode(payload)
		if err != nil {
			return
		}
		st := &State{
			Version: StateVersion, Tenant: "t1", Device: "d-1", Platform: protocol.PlatformIOS, EnrollmentType: protocol.EnrollUser,
			EnrolledAt: now.Add(-time.Hour), Certificate: []byte{1}, CertNotAfter: now.Add(365 * 24 * time.Hour),
			Authority: protocol.AuthorityOffice365, Epoch: 1, AuthoritySince: now.Add(-time.Hour),
			Profiles: []Profile{{Type: protocol.ProfileEmail, Name: "Corp Mail", Authority: protocol.AuthorityOffice365, Version: 1}},
		}
		c := New(st, Config{Rand: rand.New(rand.NewPCG(1, 2))})
		c.Start(now)
		c.Connected(now)
		if inFlight && c.inflight != (protocol.MessageID{}) {
			env.ReplyTo = c.inflight // make it the awaited answer
		}
		switch out := c.Receive(now.Add(time.Second), env); out.Ignored {
		case "", IgnoredStale, IgnoredKind:
		default:
			t.Fatalf("Receive ignored %s with reason %q", env.Kind(), out.Ignored)
		}
		c.Tick(now.Add(8 * 24 * time.Hour))
		b, err := c.State().Encode()
		if err != nil {
			t.Fatalf("state does not encode: %v", err)
		}
		if c.State().Stopped == "" {
			if _, err := DecodeState(b); err != nil {
				t.Fatalf("state does not decode: %v", err)
			}
		}
		_ = c.Status(now)
	})
}
