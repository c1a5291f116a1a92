package protocol

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// The limits of the specification, tested at the boundary: the largest
// allowed value is accepted and one more is refused. The numbers are
// written out, not taken from the constants, so that a changed constant
// fails here until the specification changes with it.

func decodeOK(t *testing.T, name string, data []byte, wantOK bool) {
	t.Helper()
	_, err := Decode(data)
	if wantOK && err != nil {
		t.Errorf("%s: Decode = %v; want accepted", name, err)
	}
	if !wantOK && err == nil {
		t.Errorf("%s: Decode accepted; want refused", name)
	}
}

func encodeRaw(t *testing.T, env Envelope) []byte {
	t.Helper()
	b, err := Encode(env) // Encode checks the header only: bodies may break rules
	if err != nil {
		t.Fatalf("Encode: %v", err)
	}
	return b
}

// pushWithUnknown returns a push whose body has one unknown field 99
// holding the given CBOR value, in hex.
func pushWithUnknown(t *testing.T, value string) []byte {
	id := "50 6d646d2d6d73672d303030310a0b0c0d"
	sent := "1b 0000019cadbaf880"
	return hexCBOR(t, "a6 0101 0205 03"+id+" 04"+sent+" 05 a1 1863 "+value+" 06 62 6431")
}

func TestLimitNesting(t *testing.T) {
	// Envelope and body are levels 1 and 2: six more arrays reach 8.
	decodeOK(t, "8 levels", pushWithUnknown(t, strings.Repeat("81", 5)+"80"), true)
	decodeOK(t, "9 levels", pushWithUnknown(t, strings.Repeat("81", 6)+"80"), false)
}

func TestLimitArrayElements(t *testing.T) {
	decodeOK(t, "256 elements", pushWithUnknown(t, "99 0100"+strings.Repeat("00", 256)), true)
	decodeOK(t, "257 elements", pushWithUnknown(t, "99 0101"+strings.Repeat("00", 257)), false)
}

func TestLimitMapPairs(t *testing.T) {
	pairs := func(n int) string {
		var b strings.Builder
		for i := range n {
			fmt.Fprintf(&b, "63 6b%02x%02x 00 ", i/256, i%256) // "k" + 2 bytes: distinct text keys
		}
		return b.String()
	}
	decodeOK(t, "64 pairs", pushWithUnknown(t, "b8 40 "+pairs(64)), true)
	decodeOK(t, "65 pairs", pushWithUnknown(t, "b8 41 "+pairs(65)), false)
}

func TestLimitFields(t *testing.T) {
	resp := func(mutate func(*CheckInResponse)) []byte {
		env := golden()["checkin_response"]
		m := *env.Body.(*CheckInResponse)
		mutate(&m)
		env.Body = &m
		return encodeRaw(t, env)
	}
	commands := func(n int) []Command {
		cs := make([]Command, n)
		for i := range cs {
			cs[i] = Command{ID: fmt.Sprintf("c-%d", i), Action: CommandSync}
		}
		return cs
	}
	profiles := func(n, settings int) []DesiredProfile {
		ps := make([]DesiredProfile, n)
		for i := range ps {
			ps[i] = DesiredProfile{Type: ProfileWiFi, Name: fmt.Sprintf("p%d", i), Version: 1}
			for j := range settings {
				ps[i].Settings = append(ps[i].Settings, Setting{Key: fmt.Sprintf("k%02d", j), Value: "v"})
			}
		}
		return ps
	}
	tests := []struct {
		name   string
		mutate func(*CheckInResponse)
		ok     bool
	}{
		{"64 commands", func(m *CheckInResponse) { m.Commands = commands(64) }, true},
		{"65 commands", func(m *CheckInResponse) { m.Commands = commands(65) }, false},
		{"256 profiles", func(m *CheckInResponse) { m.Profiles = profiles(256, 0) }, true},
		{"257 profiles", func(m *CheckInResponse) { m.Profiles = profiles(257, 0) }, false},
		{"64 settings", func(m *CheckInResponse) { m.Profiles = profiles(1, 64) }, true},
		{"65 settings", func(m *CheckInResponse) { m.Profiles = profiles(1, 65) }, false},
		{"1024 settings in all", func(m *CheckInResponse) { m.Profiles = profiles(16, 64) }, true},
		{"1025 settings in all", func(m *CheckInResponse) {
			m.Profiles = profiles(17, 64)
			m.Profiles[16].Settings = m.Profiles[16].Settings[:1]
		}, false},
		{"name of 128 bytes", func(m *CheckInResponse) { m.Profiles[0].Name = strings.Repeat("n", 128) }, true},
		{"name of 129 bytes", func(m *CheckInResponse) { m.Profiles[0].Name = strings.Repeat("n", 129) }, false},
		{"command message of 1024 bytes", func(m *CheckInResponse) { m.Commands[0].Message = strings.Repeat("m", 1024) }, true},
		{"command message of 1025 bytes", func(m *CheckInResponse) { m.Commands[0].Message = strings.Repeat("m", 1025) }, false},
		{"next check-in in 7 days", func(m *CheckInResponse) { m.NextCheckIn = 604800 }, true},
		{"next check-in in 7 days and a second", func(m *CheckInResponse) { m.NextCheckIn = 604801 }, false},
		{"issued at the end of 9999", func(m *CheckInResponse) { m.Commands[0].Issued = 253402300799999 }, true},
		{"issued in year 10000", func(m *CheckInResponse) { m.Commands[0].Issued = 253402300800000 }, false},
		{"duplicate among 17 profiles", func(m *CheckInResponse) {
			m.Profiles = profiles(17, 0)
			m.Profiles[16].Name = m.Profiles[3].Name
		}, false},
	}
	for _, tt := range tests {
		decodeOK(t, tt.name, resp(tt.mutate), tt.ok)
	}
}

func TestEnrollmentMessagesNameNoDevice(t *testing.T) {
	env := golden()["enroll_request"]
	env.Device = "d-1"
	if _, err := Encode(env); !errors.Is(err, ErrInvalid) {
		t.Errorf("Encode of an enrollment request with a device = %v; want ErrInvalid", err)
	}
}

func TestEnvelopeNullFields(t *testing.T) {
	id := "50 6d646d2d6d73672d303030310a0b0c0d"
	sent := "1b 0000019cadbaf880"
	decodeOK(t, "null reply_to on a push", hexCBOR(t, "a7 0101 0205 03"+id+" 04"+sent+" 05a0 06 62 6431 07 f6"), true)
	decodeOK(t, "null body", hexCBOR(t, "a6 0101 0205 03"+id+" 04"+sent+" 05 f6 06 62 6431"), false)
	decodeOK(t, "id with a long length head", hexCBOR(t, "a6 0101 0205 03 58 10 6d646d2d6d73672d303030310a0b0c0d 04"+sent+" 05a0 06 62 6431"), true)
	decodeOK(t, "NaN in an unknown field", pushWithUnknown(t, "f9 7e00"), false)
	decodeOK(t, "infinity in an unknown field", pushWithUnknown(t, "fa 7f800000"), false)
	decodeOK(t, "a float in an unknown field", pushWithUnknown(t, "fb 3ff8000000000000"), true)
}
