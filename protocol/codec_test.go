package protocol

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"
)

func mustEncode(t *testing.T, e Envelope) []byte {
	t.Helper()
	b, err := Encode(e)
	if err != nil {
		t.Fatalf("Encode: %v", err)
	}
	return b
}

func TestRoundTripEveryGolden(t *testing.T) {
	for name, env := range golden() {
		if err := env.Validate(); err != nil {
			t.Errorf("golden %s is invalid: %v", name, err)
		}
		b := mustEncode(t, env)
		if len(b) > MaxPayload {
			t.Errorf("golden %s is %d bytes", name, len(b))
		}
		again, err := Decode(b)
		if err != nil {
			t.Fatalf("Decode(%s): %v", name, err)
		}
		if b2 := mustEncode(t, again); !bytes.Equal(b, b2) {
			t.Errorf("%s: re-encoding changed the bytes:\n%x\n%x", name, b, b2)
		}
	}
}

// hexCBOR builds test input from hex with spaces and comments after '#'.
func hexCBOR(t *testing.T, s string) []byte {
	t.Helper()
	var clean strings.Builder
	for _, line := range strings.Split(s, "\n") {
		line, _, _ = strings.Cut(line, "#")
		clean.WriteString(strings.Join(strings.Fields(line), ""))
	}
	b, err := hex.DecodeString(clean.String())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDecodeRejects(t *testing.T) {
	push := mustEncode(t, golden()["push"]) // a7 01 01 02 05 03 50 <16> 04 1b <8> 05 a2 01 02 02 01 06 6a <10>
	id := "50 6d646d2d6d73672d303030310a0b0c0d"
	sent := "1b 0000019cadbaf880"
	tests := []struct {
		name string
		data []byte
		want error
	}{
		{"empty", nil, ErrMalformed},
		{"not CBOR", []byte("hello"), ErrMalformed},
		{"truncated", push[:len(push)-3], ErrMalformed},
		{"trailing bytes", append(bytes.Clone(push), 0x00), ErrMalformed},
		{"too large", make([]byte, MaxPayload+1), ErrTooLarge},
		{"array not map", hexCBOR(t, "83 01 02 03"), ErrMalformed},
		{"version 2", hexCBOR(t, "a5 0102 0205 03"+id+" 04"+sent+" 05a0"), ErrVersion},
		{"version missing", hexCBOR(t, "a4 0205 03"+id+" 04"+sent+" 05a0"), ErrVersion},
		{"unknown kind", hexCBOR(t, "a5 0101 0218 63 03"+id+" 04"+sent+" 05a0"), ErrKind},
		{"kind 0", hexCBOR(t, "a5 0101 0200 03"+id+" 04"+sent+" 05a0"), ErrKind},
		{"body missing", hexCBOR(t, "a5 0101 0205 03"+id+" 04"+sent+" 06 62 6431"), ErrInvalid},
		{"duplicate envelope key", hexCBOR(t, "a6 0101 0205 0205 03"+id+" 04"+sent+" 05a0"), ErrMalformed},
		{"duplicate body key", hexCBOR(t, "a6 0101 0205 03"+id+" 04"+sent+" 05 a2 0101 0102 06 62 6431"), ErrMalformed},
		{"duplicate unknown key", hexCBOR(t, "a6 0101 0205 03"+id+" 04"+sent+" 05 a2 1863 01 1863 02 06 62 6431"), ErrMalformed},
		{"short message id", hexCBOR(t, "a5 0101 0205 03 4f 6d646d2d6d73672d303030310a0b0c 04"+sent+" 05a0"), ErrMalformed},
		{"zero message id", hexCBOR(t, "a6 0101 0205 03 50 00000000000000000000000000000000 04"+sent+" 05a0 06 62 6431"), ErrInvalid},
		{"indefinite map", hexCBOR(t, "bf 0101 ff"), ErrMalformed},
		{"tag", hexCBOR(t, "a6 0101 0205 03"+id+" 04 c1 1a 5f000000 05a0 06 62 6431"), ErrMalformed},
		{"float time", hexCBOR(t, "a6 0101 0205 03"+id+" 04 fb 41d7d78400000000 05a0 06 62 6431"), ErrMalformed},
		{"negative sent", hexCBOR(t, "a6 0101 0205 03"+id+" 04 20 05a0 06 62 6431"), ErrInvalid},
		{"sent after year 9999", hexCBOR(t, "a6 0101 0205 03"+id+" 04 1b 7fffffffffffffff 05a0 06 62 6431"), ErrInvalid},
		{"sent missing", hexCBOR(t, "a5 0101 0205 03"+id+" 05a0 06 62 6431"), ErrInvalid},
		{"device missing on push", hexCBOR(t, "a5 0101 0205 03"+id+" 04"+sent+" 05a0"), ErrInvalid},
		{"device with slash", hexCBOR(t, "a6 0101 0205 03"+id+" 04"+sent+" 05a0 06 63 642f31"), ErrInvalid},
		{"device with wildcard", hexCBOR(t, "a6 0101 0205 03"+id+" 04"+sent+" 05a0 06 61 23"), ErrInvalid},
		{"enum out of range", hexCBOR(t, "a6 0101 0205 03"+id+" 04"+sent+" 05 a1 02 09 06 62 6431"), ErrInvalid},
		{"enum overflow", hexCBOR(t, "a6 0101 0205 03"+id+" 04"+sent+" 05 a1 02 19 0101 06 62 6431"), ErrMalformed},
		{"text where number", hexCBOR(t, "a6 0101 0205 03"+id+" 04"+sent+" 05 a1 01 61 31 06 62 6431"), ErrMalformed},
		{"invalid UTF-8", hexCBOR(t, "a6 0101 0205 03"+id+" 04"+sent+" 05a0 06 62 64ff"), ErrMalformed},
		{"simple value", hexCBOR(t, "a6 0101 0205 03"+id+" 04"+sent+" 05 a1 01 ec 06 62 6431"), ErrMalformed},
		{"response without reply_to", hexCBOR(t, "a6 0101 0204 03"+id+" 04"+sent+" 05 a1 0a 03 06 62 6431"), ErrInvalid},
		{"nesting too deep", hexCBOR(t, "a6 0101 0205 03"+id+" 04"+sent+" 05 a1 1863 81818181818181 80 06 62 6431"), ErrMalformed},
		{"array too long", hexCBOR(t, "a6 0101 0205 03"+id+" 04"+sent+" 05 a1 1863 9a 7fffffff 06 62 6431"), ErrMalformed},
		{"map too long", hexCBOR(t, "a6 0101 0205 03"+id+" 04"+sent+" 05 ba 7fffffff 06 62 6431"), ErrMalformed},
		{"string longer than data", hexCBOR(t, "a6 0101 0205 03"+id+" 04"+sent+" 05a0 06 7a 7fffffff"), ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env, err := Decode(tt.data)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Decode(%x) = %+v, %v; want error %v", tt.data, env, err, tt.want)
			}
			if env.Body != nil {
				t.Errorf("Decode returned a body with error %v", err)
			}
		})
	}
}

// TestDecodeAcceptsNewerFields checks the versioning policy: a field this
// version does not know, at any level, is ignored.
func TestDecodeAcceptsNewerFields(t *testing.T) {
	id := "50 6d646d2d6d73672d303030310a0b0c0d"
	sent := "1b 0000019cadbaf880"
	data := hexCBOR(t, `
		a8 0101 0205 03`+id+` 04`+sent+`
		05 a3 0102 0201 1818 a1 6161 82 01 02  # push with a new field 24 holding a map
		06 62 6431
		18 2a 63 6e6577                        # envelope field 42: "new"
		63 6b6579 f5                           # a text key "key": true`)
	env, err := Decode(data)
	if err != nil {
		t.Fatalf("Decode: %v", err)
	}
	want := &Push{Epoch: 2, Reason: PushAuthorityChange}
	if p, ok := env.Body.(*Push); !ok || *p != *want {
		t.Errorf("Decode body = %+v; want %+v", env.Body, want)
	}
}

func TestDecodeAcceptsAnyKeyOrder(t *testing.T) {
	id := "50 6d646d2d6d73672d303030310a0b0c0d"
	sent := "1b 0000019cadbaf880"
	// Body before kind and version: a non-deterministic sender.
	data := hexCBOR(t, "a6 06 62 6431 05 a1 0102 04"+sent+" 03"+id+" 0205 0101")
	env, err := Decode(data)
	if err != nil {
		t.Fatalf("Decode: %v", err)
	}
	if p, ok := env.Body.(*Push); !ok || p.Epoch != 2 || env.Device != "d1" {
		t.Errorf("Decode = %+v", env)
	}
}

func TestValidateRules(t *testing.T) {
	tests := []struct {
		name   string
		base   string
		mutate func(Body)
		field  string
	}{
		{"user enrollment without user", "enroll_request", func(b Body) { b.(*EnrollRequest).User = "" }, "user"},
		{"no CSR", "enroll_request", func(b Body) { b.(*EnrollRequest).CSR = nil }, "csr"},
		{"huge CSR", "enroll_request", func(b Body) { b.(*EnrollRequest).CSR = make([]byte, MaxCSR+1) }, "csr"},
		{"no token", "enroll_request", func(b Body) { b.(*EnrollRequest).Token = "" }, "token"},
		{"unknown platform", "enroll_request", func(b Body) { b.(*EnrollRequest).Platform = 0 }, "platform"},
		{"control character", "enroll_request", func(b Body) { b.(*EnrollRequest).Name = "a\nb" }, "name"},
		{"enrolled under unknown", "enroll_response", func(b Body) { b.(*EnrollResponse).Authority = AuthorityUnknown }, "authority"},
		{"enrolled without certificate", "enroll_response", func(b Body) { b.(*EnrollResponse).Certificate = nil }, "certificate"},
		{"duplicate installed profile", "checkin", func(b Body) {
			m := b.(*CheckIn)
			m.Profiles = append(m.Profiles, m.Profiles[0])
		}, "profiles"},
		{"profile without name", "checkin", func(b Body) { b.(*CheckIn).Profiles[0].Name = "" }, "profiles[].name"},
		{"profile of unknown authority", "checkin", func(b Body) { b.(*CheckIn).Profiles[0].Authority = 0 }, "profiles[].authority"},
		{"no certificate expiry", "checkin", func(b Body) { b.(*CheckIn).CertificateExpiry = 0 }, "certificate_expiry"},
		{"too many failures", "checkin", func(b Body) {
			b.(*CheckIn).Compliance.Failures = make([]string, MaxFailures+1)
		}, "compliance.failures"},
		{"duplicate desired profile", "checkin_response", func(b Body) {
			m := b.(*CheckInResponse)
			m.Profiles = append(m.Profiles, m.Profiles[0])
		}, "profiles"},
		{"duplicate setting", "checkin_response", func(b Body) {
			p := &b.(*CheckInResponse).Profiles[1]
			p.Settings = append(p.Settings, p.Settings[0])
		}, "profiles[].settings"},
		{"next check-in in a month", "checkin_response", func(b Body) { b.(*CheckInResponse).NextCheckIn = 30 * 86400 }, "next_checkin"},
		{"bad command id", "checkin_response", func(b Body) { b.(*CheckInResponse).Commands[0].ID = "a/b" }, "command.id"},
		{"unknown command", "command", func(b Body) { b.(*Command).Action = 9 }, "command.action"},
		{"unknown status", "command_result", func(b Body) { b.(*CommandResult).Status = 0 }, "status"},
		{"unknown error code", "checkin_response_error", func(b Body) { b.(*CheckInResponse).Error = 200 }, "error"},
		{"refusal with profiles", "checkin_response_error", func(b Body) {
			b.(*CheckInResponse).Profiles = []DesiredProfile{{Type: ProfileEmail, Name: "x"}}
		}, "error"},
		{"refusal with identity", "enroll_response_error", func(b Body) { b.(*EnrollResponse).Device = "d-1" }, "error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := golden()[tt.base] // fresh copy: mutate freely
			tt.mutate(env.Body)
			err := env.Validate()
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.field+":") {
				t.Fatalf("Validate() = %v; want ErrInvalid naming %q", err, tt.field)
			}
			// A receiver rejects the same message.
			b, err := Encode(env)
			if err != nil {
				return // the header was refused already
			}
			if _, err := Decode(b); CodeOf(err) != CodeBadRequest {
				t.Errorf("Decode of an invalid %s = %v; want a bad_request error", tt.base, err)
			}
		})
	}
}

func TestEncodeRefusesBadHeader(t *testing.T) {
	env := golden()["push"]
	env.ID = MessageID{}
	if _, err := Encode(env); !errors.Is(err, ErrInvalid) {
		t.Errorf("Encode with zero id = %v; want ErrInvalid", err)
	}
	env = golden()["checkin_response"]
	env.ReplyTo = MessageID{}
	if _, err := Encode(env); !errors.Is(err, ErrInvalid) {
		t.Errorf("Encode of a response without reply_to = %v; want ErrInvalid", err)
	}
	if _, err := Encode(Envelope{ID: fixtureID, Sent: 1}); !errors.Is(err, ErrInvalid) {
		t.Errorf("Encode without body = %v; want ErrInvalid", err)
	}
	big := golden()["checkin_response"]
	resp := *big.Body.(*CheckInResponse)
	resp.Certificate = make([]byte, MaxPayload)
	big.Body = &resp
	if _, err := Encode(big); !errors.Is(err, ErrTooLarge) {
		t.Errorf("Encode of %d bytes = %v; want ErrTooLarge", MaxPayload, err)
	}
}

func TestCodeOf(t *testing.T) {
	tests := []struct {
		err  error
		want ErrorCode
	}{
		{nil, CodeNone},
		{ErrMalformed, CodeBadRequest},
		{ErrTooLarge, CodeBadRequest},
		{ErrInvalid, CodeBadRequest},
		{ErrKind, CodeBadRequest},
		{ErrVersion, CodeUnsupportedVersion},
		{ErrDeviceMismatch, CodeDeviceMismatch},
		{ErrWrongTopic, CodeBadRequest},
	}
	for _, tt := range tests {
		if got := CodeOf(tt.err); got != tt.want {
			t.Errorf("CodeOf(%v) = %v; want %v", tt.err, got, tt.want)
		}
	}
}

func TestTimestamp(t *testing.T) {
	when := time.Date(2026, 11, 28, 3, 4, 5, 678_900_000, time.UTC)
	ts := At(when)
	if got, want := ts.Time(), when.Truncate(time.Millisecond); !got.Equal(want) {
		t.Errorf("At(%v).Time() = %v; want %v", when, got, want)
	}
	if At(time.Time{}) != 0 || !Timestamp(0).Time().IsZero() {
		t.Error("the zero time and the zero timestamp do not map to each other")
	}
}

func TestNewMessageID(t *testing.T) {
	id, err := NewMessageID(bytes.NewReader(make([]byte, 16)))
	if err != nil || id.IsZero() {
		t.Errorf("NewMessageID(zeros) = %v, %v; want a non-zero id", id, err)
	}
	if _, err := NewMessageID(bytes.NewReader(make([]byte, 3))); err == nil {
		t.Error("NewMessageID(short reader) succeeded")
	}
}

// TestDecodeMemoryBounded checks that hostile input of the largest size
// costs a bounded amount of memory: the limits are enforced before
// anything is allocated for the claims the input makes.
func TestDecodeMemoryBounded(t *testing.T) {
	id := "50 6d646d2d6d73672d303030310a0b0c0d"
	sent := "1b 0000019cadbaf880"
	// A check-in claiming the largest array of profiles, then padding.
	head := hexCBOR(t, "a6 0101 0203 03"+id+" 04"+sent+" 06 62 6431 05 a1 02 99 0100")
	profile := hexCBOR(t, "a4 0101 02 78 7f"+strings.Repeat("61", 127)+" 0301 0401")
	data := head
	for len(data)+len(profile) <= MaxPayload {
		data = append(data, profile...)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	const runs = 20
	for range runs {
		if _, err := Decode(data); err == nil {
			t.Fatal("Decode accepted a truncated check-in")
		}
	}
	runtime.ReadMemStats(&after)
	perRun := (after.TotalAlloc - before.TotalAlloc) / runs
	if limit := uint64(4 * MaxPayload); perRun > limit {
		t.Errorf("Decode of %d hostile bytes allocated %d bytes per run; want at most %d", len(data), perRun, limit)
	}

	// A valid response with as many settings as allowed.
	env := golden()["checkin_response"]
	m := *env.Body.(*CheckInResponse)
	m.Profiles = nil
	for i := range 16 {
		p := DesiredProfile{Type: ProfileWiFi, Name: fmt.Sprintf("p%d", i)}
		for j := range 64 {
			p.Settings = append(p.Settings, Setting{Key: fmt.Sprintf("k%02d", j), Value: "v"})
		}
		m.Profiles = append(m.Profiles, p)
	}
	env.Body = &m
	big := mustEncode(t, env)
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range runs {
		if _, err := Decode(big); err != nil {
			t.Fatal(err)
		}
	}
	runtime.ReadMemStats(&after)
	perRun = (after.TotalAlloc - before.TotalAlloc) / runs
	if limit := uint64(4 * MaxPayload); perRun > limit {
		t.Errorf("Decode of a %d-byte response with 1024 settings allocated %d bytes per run; want at most %d", len(big), perRun, limit)
	}
}

// TestCheckTextBytes checks the word-at-a-time check against the simple
// one for every byte value at every position of the first words.
func TestCheckTextBytes(t *testing.T) {
	base := []byte("Corp WiFi profile, v2 (Contoso)")
	for pos := range 20 {
		for c := range 256 {
			b := bytes.Clone(base)
			b[pos] = byte(c)
			if got, want := checkTextBytes(b), checkText(string(b)); got != want {
				t.Fatalf("checkTextBytes(%q) = %q; checkText says %q", b, got, want)
			}
		}
	}
	for _, s := range []string{"", "a", "é漢字 ok", "tab\there", "del\x7f", "\xff\xfe", "ok but \u0085 (NEL)"} {
		if got, want := checkTextBytes([]byte(s)), checkText(s); got != want {
			t.Errorf("checkTextBytes(%q) = %q; checkText says %q", s, got, want)
		}
	}
}
