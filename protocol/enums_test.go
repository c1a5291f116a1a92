package protocol

import (
	"encoding/json"
	"strings"
	"testing"
)

// enumValue is what every enumeration of the package provides.
type enumValue interface {
	String() string
	Valid() bool
}

// enumCase is one enumeration under test: its values and its parser.
type enumCase struct {
	name   string
	values []enumValue
	parse  func(string) (any, error)
}

func TestEnumStringsRoundTrip(t *testing.T) {
	// wire lists the values 0..n-1, one past the last defined one.
	wire := func(n int, f func(uint8) enumValue) []enumValue {
		var out []enumValue
		for i := range n {
			out = append(out, f(uint8(i)))
		}
		return out
	}
	type sv = enumValue
	cases := []enumCase{
		{"authority", wire(4, func(v uint8) sv { return Authority(v) }), func(s string) (any, error) { return ParseAuthority(s) }},
		{"platform", wire(7, func(v uint8) sv { return Platform(v) }), func(s string) (any, error) { return ParsePlatform(s) }},
		{"profile type", wire(8, func(v uint8) sv { return ProfileType(v) }), func(s string) (any, error) { return ParseProfileType(s) }},
		{"enrollment type", wire(5, func(v uint8) sv { return EnrollmentType(v) }), func(s string) (any, error) { return ParseEnrollmentType(s) }},
		{"command kind", wire(6, func(v uint8) sv { return CommandKind(v) }), func(s string) (any, error) { return ParseCommandKind(s) }},
		{"command status", wire(5, func(v uint8) sv { return CommandStatus(v) }), func(s string) (any, error) { return ParseCommandStatus(s) }},
		{"compliance state", wire(4, func(v uint8) sv { return ComplianceState(v) }), func(s string) (any, error) { return ParseComplianceState(s) }},
		{"check-in reason", wire(7, func(v uint8) sv { return CheckInReason(v) }), func(s string) (any, error) { return ParseCheckInReason(s) }},
		{"push reason", wire(6, func(v uint8) sv { return PushReason(v) }), func(s string) (any, error) { return ParsePushReason(s) }},
		{"error code", wire(15, func(v uint8) sv { return ErrorCode(v) }), func(s string) (any, error) { return ParseErrorCode(s) }},
	}
	for _, c := range cases {
		for _, v := range c.values {
			if !v.Valid() {
				if !strings.Contains(v.String(), "(") {
					t.Errorf("%s: undefined value prints as %q", c.name, v.String())
				}
				continue
			}
			got, err := c.parse(v.String())
			if err != nil || got != v {
				t.Errorf("%s: parse(%q) = %v, %v; want %v", c.name, v.String(), got, err, v)
			}
		}
		if _, err := c.parse("no-such-value"); err == nil || !strings.Contains(err.Error(), "use one of") {
			t.Errorf("%s: parse of an unknown name = %v; want an error listing the names", c.name, err)
		}
	}
}

func TestRequiredNames(t *testing.T) {
	// The names the CLIs, JSON and other implementations rely on.
	for _, name := range []string{"unknown", "intune", "office365"} {
		if _, err := ParseAuthority(name); err != nil {
			t.Error(err)
		}
	}
	for _, name := range []string{"ios", "ipados", "macos", "android", "windows"} {
		if _, err := ParsePlatform(name); err != nil {
			t.Error(err)
		}
	}
	for _, name := range []string{"email", "vpn", "certificate", "wifi", "configuration", "compliance"} {
		if _, err := ParseProfileType(name); err != nil {
			t.Error(err)
		}
	}
	for _, name := range []string{"authority_not_set", "apns_certificate_missing", "not_enrolled",
		"unsupported_by_authority", "certificate_expired", "bad_request"} {
		c, err := ParseErrorCode(name)
		if err != nil {
			t.Error(err)
		}
		if c.Hint() == "" {
			t.Errorf("error code %s has no hint", c)
		}
	}
}

func TestEnumJSON(t *testing.T) {
	type record struct {
		Authority Authority `json:"authority"`
		Platform  Platform  `json:"platform"`
		Code      ErrorCode `json:"code"`
	}
	in := record{AuthorityOffice365, PlatformIPadOS, CodeAPNsCertificateMissing}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"authority":"office365","platform":"ipados","code":"apns_certificate_missing"}`; string(b) != want {
		t.Errorf("json.Marshal = %s; want %s", b, want)
	}
	var out record
	if err := json.Unmarshal(b, &out); err != nil || out != in {
		t.Errorf("json.Unmarshal(%s) = %+v, %v; want %+v", b, out, err, in)
	}
	if err := json.Unmarshal([]byte(`{"authority":"sccm"}`), &out); err == nil {
		t.Error("json.Unmarshal accepted an unknown authority")
	}
}

func TestPlatformAPNs(t *testing.T) {
	for _, p := range Platforms {
		want := p == PlatformIOS || p == PlatformIPadOS
		if p.NeedsAPNs() != want {
			t.Errorf("%s.NeedsAPNs() = %v; want %v", p, p.NeedsAPNs(), want)
		}
	}
}
