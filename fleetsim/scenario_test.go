package fleetsim

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseDuration(t *testing.T) {
	for in, want := range map[string]time.Duration{"0s": 0, "12h": 12 * time.Hour, "8d": 8 * 24 * time.Hour, "7d12h": 180 * time.Hour, "1d30m": 24*time.Hour + 30*time.Minute} {
		got, err := ParseDuration(in)
		if err != nil || time.Duration(got) != want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", in, time.Duration(got), err, want)
		}
		if back, _ := ParseDuration(got.String()); back != got {
			t.Errorf("%q: String %q does not parse back", in, got.String())
		}
	}
	for _, in := range []string{"", "d", "-1h", "xd", "3d-1h", "99999d", "1y"} {
		if _, err := ParseDuration(in); err == nil {
			t.Errorf("ParseDuration(%q) succeeded", in)
		}
	}
}

// TestDefaultScenarioFile: the example file is the built-in default
// scenario, so that editing a copy of it is the way to a custom one.
func TestDefaultScenarioFile(t *testing.T) {
	sc, err := LoadScenario(filepath.Join("scenarios", "default.json"))
	if err != nil {
		t.Fatal(err)
	}
	if want := DefaultScenario(2 * time.Hour); !reflect.DeepEqual(sc, want) {
		got, _ := json.MarshalIndent(sc, "", "  ")
		w, _ := json.MarshalIndent(want, "", "  ")
		t.Errorf("scenarios/default.json differs from DefaultScenario:\n%s\nwant\n%s", got, w)
	}
}

func TestScenarioErrors(t *testing.T) {
	dir := t.TempDir()
	cases := map[string]string{
		`{"duration": "1d", "steps": [{"at": "0s", "action": "add_profile", "authority": "intune", "type": "email", "name": "x"}]}`:                                                               `first step must be "set_authority"`,
		`{"steps": [{"at": "0s", "action": "set_authority", "authority": "intune"}]}`:                                                                                                             `"duration" is missing`,
		`{"duration": "1d", "steps": [{"at": "0s", "action": "set_authority", "authority": "unknown"}]}`:                                                                                          `want intune, office365 or coexistence`,
		`{"duration": "1d", "steps": [{"at": "0s", "action": "set_authority", "authority": "intune"}, {"at": "2d", "action": "upload_apns", "authority": "intune"}]}`:                             "after the end",
		`{"duration": "1d", "steps": [{"at": "1h", "action": "set_authority", "authority": "intune"}, {"at": "0s", "action": "upload_apns", "authority": "intune"}]}`:                             "time order",
		`{"duration": "1d", "steps": [{"at": "0s", "action": "set_authority", "authority": "intune"}, {"at": "1h", "action": "remote_lock"}]}`:                                                    `put an "enroll_canary" step before it`,
		`{"duration": "1d", "steps": [{"at": "0s", "action": "set_authority", "authority": "intune"}, {"at": "1h", "action": "reboot"}]}`:                                                         `unknown action "reboot"`,
		`{"duration": "1d", "steps": [{"at": "0s", "action": "set_authority", "authority": "intune"}, {"at": "1h", "action": "offline", "share": 2, "for": "1h"}]}`:                               `"share"`,
		`{"duration": "1d", "steps": [{"at": "0s", "action": "set_authority", "authority": "intune"}, {"at": "1h", "action": "add_profile", "authority": "intune", "type": "fax", "name": "x"}]}`: `"type" "fax"`,
		`{"duration": "1d", "duration": "2d", "steps": []}`: "repeated",
		`{"duration": "1d", "stepz": []}`:                   "unknown field",
		`{"duration": "1w", "steps": []}`:                   "duration",
		strings.Repeat("[", 100) + strings.Repeat("]", 100): "nests deeper",
	}
	i := 0
	for body, want := range cases {
		i++
		path := filepath.Join(dir, "s"+strings.Repeat("x", i)+".json")
		os.WriteFile(path, []byte(body), 0o644)
		if _, err := LoadScenario(path); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s:\n  error %v; want one saying %q", body, err, want)
		}
	}
	big := filepath.Join(dir, "big.json")
	os.WriteFile(big, make([]byte, MaxScenarioFile+10), 0o644)
	if _, err := LoadScenario(big); err == nil {
		t.Error("a scenario file over the limit was read")
	}
	if _, err := LoadScenario(filepath.Join(dir, "missing.json")); err == nil || !strings.Contains(err.Error(), "missing.json") {
		t.Errorf("missing file: %v; want an error naming it", err)
	}
}
