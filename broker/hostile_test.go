package broker

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"
	bolt "go.etcd.io/bbolt"

	"github.com/mdm-authority/mdm/protocol"
)

// storeDigest hashes every record of the store, so that a test can tell
// whether anything at all changed.
func storeDigest(t testing.TB, s *Store) [sha256.Size]byte {
	t.Helper()
	h := sha256.New()
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			h.Write(name)
			return b.ForEach(func(k, v []byte) error {
				h.Write(k)
				h.Write([]byte{0})
				h.Write(v)
				h.Write([]byte{0})
				return nil
			})
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	var sum [sha256.Size]byte
	copy(sum[:], h.Sum(nil))
	return sum
}

// cborMap assembles a CBOR map from its key/value pairs as given, so that
// a test can write what no encoder would: duplicate keys, for one.
func cborMap(t testing.TB, pairs ...any) []byte {
	t.Helper()
	if len(pairs)%2 != 0 || len(pairs)/2 > 23 {
		t.Fatal("cborMap: want key/value pairs, at most 23")
	}
	out := []byte{0xa0 | byte(len(pairs)/2)}
	for _, p := range pairs {
		if raw, ok := p.(cbor.RawMessage); ok {
			out = append(out, raw...)
			continue
		}
		b, err := cbor.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b...)
	}
	return out
}

// encodeAt encodes a device's message with the given id and send time.
func encodeAt(t testing.TB, device string, id protocol.MessageID, sent time.Time, body protocol.Body) []byte {
	t.Helper()
	b, err := protocol.Encode(protocol.Envelope{ID: id, Sent: protocol.At(sent), Device: device, Body: body})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestHostileDeviceInput sends the service every kind of bad message a
// device, or something posing as one, could publish. Each is dropped (or
// answered with a refusal) and counted under its reason, and the store is
// left exactly as it was.
func TestHostileDeviceInput(t *testing.T) {
	h := newHarness(t)
	mustDo(t, h.svc.SetAuthority, ModeIntune)
	d := h.mustEnroll(protocol.PlatformWindows, "ada@contoso.example")
	cmd, err := h.svc.IssueCommand(d.id, protocol.CommandRemoteLock, "")
	if err != nil {
		t.Fatal(err)
	}
	now := h.clock.Now()
	up := protocol.UplinkTopic("contoso", d.id)
	checkin := &protocol.CheckIn{Reason: protocol.CheckInScheduled, CertificateExpiry: protocol.At(d.expiry)}
	report := &protocol.ComplianceReport{Compliance: protocol.Compliance{State: protocol.ComplianceCompliant}}
	result := &protocol.CommandResult{ID: cmd.ID, Status: protocol.CommandDone, Completed: protocol.At(now)}

	// A device that unenrolled and one that was retired, whose messages
	// must change nothing any more.
	gone := h.mustEnroll(protocol.PlatformAndroid, "bob@contoso.example")
	h.send(protocol.UplinkTopic("contoso", gone.id), &protocol.Unenroll{Reason: "test"}, gone.id)
	retired := h.mustEnroll(protocol.PlatformAndroid, "eve@contoso.example")
	retire, err := h.svc.IssueCommand(retired.id, protocol.CommandRetire, "")
	if err != nil {
		t.Fatal(err)
	}
	lock, err := h.svc.IssueCommand(retired.id, protocol.CommandRemoteLock, "")
	if err != nil {
		t.Fatal(err)
	}
	h.send(protocol.UplinkTopic("contoso", retired.id), &protocol.CommandResult{ID: retire.ID, Status: protocol.CommandDone, Completed: protocol.At(now)}, retired.id)
	if h.record(gone.id).State != DeviceUnenrolled || h.record(retired.id).State != DeviceRetired {
		t.Fatal("setup: the unenrolled and retired devices are not so")
	}

	// Messages that the service applies, to replay afterwards.
	appliedReport := encodeAt(t, d.id, protocol.MessageID{2}, now, report)
	appliedResult := encodeAt(t, d.id, protocol.MessageID{3}, now.Add(time.Second), result)
	applied := encodeAt(t, d.id, protocol.MessageID{1}, now.Add(2*time.Second), checkin)
	for _, m := range [][]byte{appliedReport, appliedResult, applied} {
		if _, err := h.svc.HandleMessage(context.Background(), up, m); err != nil {
			t.Fatalf("a good message was dropped: %v", err)
		}
	}

	valid := encodeAt(t, d.id, protocol.MessageID{9}, now.Add(time.Minute), checkin)
	// Hand-built messages: envelope {1 version, 2 kind, 3 id, 4 sent,
	// 5 body, 6 device}, a check-in (kind 3) body {1 reason, 3 compliance,
	// 4 certificate expiry}. The control after the table shows that the
	// well-formed one is accepted, so each case fails for its own reason.
	const kindCheckIn = 3
	body := cbor.RawMessage(cborMap(t, 1, 1, 3, cbor.RawMessage(cborMap(t, 1, 0)), 4, protocol.At(d.expiry)))
	env := func(pairs ...any) []byte { return cborMap(t, pairs...) }
	id := cbor.RawMessage(append([]byte{0x50}, bytes.Repeat([]byte{7}, 16)...))
	sent := protocol.At(now.Add(30 * time.Second))
	nested := cbor.RawMessage(append(bytes.Repeat([]byte{0x81}, 10000), 0x00))
	wide := []byte{0xb8, 65} // a map of 65 pairs
	for i := range 65 {
		wide = append(wide, 0x18, byte(i+24), 0x00)
	}
	response, err := protocol.Encode(protocol.Envelope{ID: protocol.MessageID{12}, ReplyTo: protocol.MessageID{1}, Sent: protocol.At(now),
		Device: d.id, Body: &protocol.CheckInResponse{Authority: protocol.AuthorityIntune}})
	if err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name    string
		topic   string
		payload []byte
		reason  int
		answer  protocol.ErrorCode // a refusal sent back, or CodeNone for none
	}{
		{"empty", up, nil, dropMalformed, 0},
		{"not CBOR", up, []byte("{\"kind\":\"checkin\"}"), dropMalformed, 0},
		{"oversized", up, append(bytes.Clone(valid), make([]byte, protocol.MaxPayload)...), dropMalformed, 0},
		{"nested 10,000 deep", up, nested, dropMalformed, 0},
		{"truncated", up, valid[:len(valid)-3], dropMalformed, 0},
		{"trailing bytes", up, append(bytes.Clone(valid), 0x00), dropMalformed, 0},
		{"duplicate key in the envelope", up, env(1, 1, 2, kindCheckIn, 2, kindCheckIn, 3, id, 4, sent, 5, body, 6, d.id), dropMalformed, 0},
		{"duplicate key in the body", up, env(1, 1, 2, kindCheckIn, 3, id, 4, sent, 5,
			cbor.RawMessage(cborMap(t, 1, 1, 1, 2, 3, cbor.RawMessage(cborMap(t, 1, 0)), 4, protocol.At(d.expiry))), 6, d.id), dropMalformed, 0},
		{"duplicate unknown key", up, env(1, 1, 2, kindCheckIn, 3, id, 4, sent, 5, body, 6, d.id, 99, "x", 99, "y"), dropMalformed, 0},
		{"nested 10,000 deep in an unknown key", up, env(1, 1, 2, kindCheckIn, 3, id, 4, sent, 5, body, 6, d.id, 99, nested), dropMalformed, 0},
		{"a map of 65 pairs in an unknown key", up, env(1, 1, 2, kindCheckIn, 3, id, 4, sent, 5, body, 6, d.id, 99, cbor.RawMessage(wide)), dropMalformed, 0},
		{"unknown protocol version", up, env(1, 99, 2, kindCheckIn, 3, id, 4, sent, 5, body, 6, d.id), dropVersion, 0},
		{"unknown kind", up, env(1, 1, 2, 200, 3, id, 4, sent, 5, body, 6, d.id), dropMalformed, 0},
		{"absurd time: before 1970", up, env(1, 1, 2, kindCheckIn, 3, id, 4, -5, 5, body, 6, d.id), dropInvalid, 0},
		{"absurd time: after 9999", up, env(1, 1, 2, kindCheckIn, 3, id, 4, int64(protocol.MaxTimestamp)+1, 5, body, 6, d.id), dropInvalid, 0},
		{"check-in sent 2 days ahead of the service", up, encodeAt(t, d.id, protocol.MessageID{10}, now.Add(48*time.Hour), checkin), dropClockSkew, protocol.CodeBadRequest},
		{"compliance report sent 2 days ahead", up, encodeAt(t, d.id, protocol.MessageID{16}, now.Add(48*time.Hour), report), dropClockSkew, 0},
		{"another device's id in the payload", up, encodeAt(t, "d-other", protocol.MessageID{11}, sent.Time(), checkin), dropDevice, 0},
		{"another tenant's topic", protocol.UplinkTopic("fabrikam", d.id), valid, dropTopic, 0},
		{"a downlink topic", protocol.DownlinkTopic("contoso", d.id), valid, dropTopic, 0},
		{"outside the topic scheme", "devices/" + d.id, valid, dropTopic, 0},
		{"a response on the uplink", up, response, dropTopic, 0},
		{"unknown device", protocol.UplinkTopic("contoso", "d-unknown"), encodeAt(t, "d-unknown", protocol.MessageID{13}, now, report), dropConflict, 0},
		{"compliance report of an unenrolled device", protocol.UplinkTopic("contoso", gone.id), encodeAt(t, gone.id, protocol.MessageID{17}, sent.Time(), report), dropTopic, 0},
		{"command result of a retired device", protocol.UplinkTopic("contoso", retired.id),
			encodeAt(t, retired.id, protocol.MessageID{18}, sent.Time(), &protocol.CommandResult{ID: lock.ID, Status: protocol.CommandDone, Completed: sent}), dropConflict, 0},
		{"check-in delivered again", up, applied, dropReplayed, 0},
		{"check-in older than the last applied", up, encodeAt(t, d.id, protocol.MessageID{14}, now.Add(-time.Minute), checkin), dropReplayed, protocol.CodeReplayed},
		{"compliance report delivered again (older than the last check-in)", up, appliedReport, dropReplayed, 0},
		{"command result delivered again", up, appliedResult, dropReplayed, 0},
		{"result of a command never issued", up, encodeAt(t, d.id, protocol.MessageID{15}, now.Add(time.Minute),
			&protocol.CommandResult{ID: "c-forged", Status: protocol.CommandDone, Completed: protocol.At(now)}), dropConflict, 0},
	}
	before := storeDigest(t, h.store)
	for _, c := range cases {
		count := h.svc.metrics.dropped[c.reason].Load()
		out, err := h.svc.HandleMessage(context.Background(), c.topic, c.payload)
		if err == nil {
			t.Errorf("%s: accepted", c.name)
			continue
		}
		if c.name == "oversized" && !errors.Is(err, protocol.ErrTooLarge) {
			t.Errorf("oversized: %v; want ErrTooLarge", err)
		}
		if got := dropReason(err); got != c.reason {
			t.Errorf("%s: dropped as %s (%v); want %s", c.name, dropNames[got], err, dropNames[c.reason])
		}
		if h.svc.metrics.dropped[c.reason].Load() != count+1 {
			t.Errorf("%s: not counted under %s", c.name, dropNames[c.reason])
		}
		switch {
		case c.answer == protocol.CodeNone && len(out) > 0:
			t.Errorf("%s: answered %d messages; want none", c.name, len(out))
		case c.answer != protocol.CodeNone:
			resp := decodeOne[*protocol.CheckInResponse](t, out, protocol.DownlinkTopic("contoso", d.id))
			if resp.Error != c.answer || resp.Message == "" {
				t.Errorf("%s: answered %s %q; want %s with a message", c.name, resp.Error, resp.Message, c.answer)
			}
		}
		if after := storeDigest(t, h.store); after != before {
			t.Fatalf("%s: the store changed", c.name)
		}
	}

	// Controls: the well-formed hand-built check-in and a fresh encoded one
	// are applied, and change the store.
	for _, m := range [][]byte{env(1, 1, 2, kindCheckIn, 3, id, 4, sent, 5, body, 6, d.id), valid} {
		if _, err := h.svc.HandleMessage(context.Background(), up, m); err != nil {
			t.Fatalf("a fresh check-in was dropped (control): %v", err)
		}
	}
	if storeDigest(t, h.store) == before {
		t.Error("fresh check-ins changed nothing (control)")
	}
	// The last message applied, delivered again, changes nothing.
	last := encodeAt(t, d.id, protocol.MessageID{19}, now.Add(2*time.Minute), report)
	if _, err := h.svc.HandleMessage(context.Background(), up, last); err != nil {
		t.Fatalf("a fresh compliance report was dropped (control): %v", err)
	}
	before = storeDigest(t, h.store)
	if _, err := h.svc.HandleMessage(context.Background(), up, last); !errors.Is(err, ErrReplayed) {
		t.Errorf("the last compliance report again: %v; want dropped as replayed", err)
	}
	if storeDigest(t, h.store) != before {
		t.Error("the last compliance report again changed the store")
	}
}

// FuzzHandleMessage feeds the service's message handling arbitrary
// payloads on a device's topics, seeded with real messages: it must never
// panic, and a message it drops must leave the store as it was.
func FuzzHandleMessage(f *testing.F) {
	h := newHarness(f)
	if _, _, err := h.svc.SetAuthority(ModeIntune); err != nil {
		f.Fatal(err)
	}
	d := h.mustEnroll(protocol.PlatformWindows, "ada@contoso.example")
	other := h.mustEnroll(protocol.PlatformAndroid, "bob@contoso.example")
	cmd, err := h.svc.IssueCommand(d.id, protocol.CommandRemoteLock, "")
	if err != nil {
		f.Fatal(err)
	}
	now := h.clock.Now()
	_, csr, _ := NewDeviceKeyAndCSR()
	seeds := []protocol.Body{
		&protocol.CheckIn{Reason: protocol.CheckInScheduled, CertificateExpiry: protocol.At(d.expiry),
			Profiles: []protocol.InstalledProfile{{Type: protocol.ProfileEmail, Name: "Mail", Authority: protocol.AuthorityOffice365, Version: 1}}},
		&protocol.CheckIn{Reason: protocol.CheckInPushed, CertificateExpiry: protocol.At(d.expiry), RenewalCSR: csr},
		&protocol.ComplianceReport{Compliance: protocol.Compliance{State: protocol.ComplianceNoncompliant}, OSVersion: "10.0"},
		&protocol.CommandResult{ID: cmd.ID, Status: protocol.CommandDone, Completed: protocol.At(now)},
		&protocol.EnrollRequest{CSR: csr, Token: h.token, Platform: protocol.PlatformAndroid, Type: protocol.EnrollUser, User: "eve@contoso.example"},
	}
	for i, b := range seeds {
		device := d.id
		if b.Kind() == protocol.KindEnrollRequest {
			device = ""
		}
		f.Add(uint8(i), encodeAt(f, device, protocol.MessageID{byte(i + 1)}, now, b))
	}
	golden, _ := filepath.Glob("../protocol/testdata/*.cbor")
	for i, g := range golden {
		if b, err := os.ReadFile(g); err == nil {
			f.Add(uint8(i), b)
		}
	}
	topics := []string{
		protocol.UplinkTopic("contoso", d.id), protocol.UplinkTopic("contoso", other.id),
		protocol.EnrollRequestTopic("contoso", "r-1"), protocol.UplinkTopic("contoso", "d-7f3a9c21"),
	}
	f.Fuzz(func(t *testing.T, topic uint8, payload []byte) {
		before := storeDigest(t, h.store)
		out, err := h.svc.HandleMessage(context.Background(), topics[int(topic)%len(topics)], payload)
		if err != nil {
			if storeDigest(t, h.store) != before {
				t.Fatalf("dropped (%v), yet the store changed", err)
			}
			if errors.Is(err, ErrReplayed) || errors.Is(err, ErrClockSkew) {
				return
			}
			if len(out) > 0 {
				t.Fatalf("dropped (%v), yet answered", err)
			}
		}
		for _, o := range out {
			if len(o.Payload) > protocol.MaxPayload || !strings.HasPrefix(o.Topic, "mdm/v1/contoso/") {
				t.Fatalf("answer on %s of %d bytes", o.Topic, len(o.Payload))
			}
			if _, err := protocol.Decode(o.Payload); err != nil {
				t.Fatalf("the service's own answer does not decode: %v", err)
			}
		}
	})
}
