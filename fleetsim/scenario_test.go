package fleetsim

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mdm-authority/mdm/protocol"
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
		`{"duration": "1d", "steps": [{"at": "0s", "action": "add_profile", "authority": "intune", "type": "email", "name": "x"}]}`:                                                                                                                               `first step must be "set_authority"`,
		`{"steps": [{"at": "0s", "action": "set_authority", "authority": "intune"}]}`:                                                                                                                                                                             `"duration" is missing`,
		`{"duration": "1d", "steps": [{"at": "0s", "action": "set_authority", "authority": "unknown"}]}`:                                                                                                                                                          `want intune, office365 or coexistence`,
		`{"duration": "1d", "steps": [{"at": "0s", "action": "set_authority", "authority": "intune"}, {"at": "2d", "action": "upload_apns", "authority": "intune"}]}`:                                                                                             "after the end",
		`{"duration": "1d", "steps": [{"at": "0s", "action": "set_authority", "authority": "intune"}, {"at": "1h", "action": "upload_apns", "authority": "intune"}, {"at": "0s", "action": "add_profile", "authority": "intune", "type": "email", "name": "x"}]}`: "time order",
		`{"duration": "1d", "steps": [{"at": "1h", "action": "set_authority", "authority": "intune"}]}`:                                                                                                                                                           `step 1 (set_authority at 1h0m0s): the fleet starts to enroll at 0s`,
		`{"duration": "1d", "steps": [{"at": "0s", "action": "set_authority", "authority": "intune"}, {"at": "1h", "action": "remote_lock"}]}`:                                                                                                                    `put an "enroll_canary" step before it`,
		`{"duration": "1d", "steps": [{"at": "0s", "action": "set_authority", "authority": "intune"}, {"at": "1h", "action": "reboot"}]}`:                                                                                                                         `unknown action "reboot"`,
		`{"duration": "1d", "steps": [{"at": "0s", "action": "set_authority", "authority": "intune"}, {"at": "1h", "action": "offline", "share": 2, "for": "1h"}]}`:                                                                                               `"share"`,
		`{"duration": "1d", "steps": [{"at": "0s", "action": "set_authority", "authority": "intune"}, {"at": "1h", "action": "add_profile", "authority": "intune", "type": "fax", "name": "x"}]}`:                                                                 `"type" "fax"`,
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

// scenarioJSON is a one-day scenario file with the given steps.
func scenarioJSON(steps ...string) string {
	return `{"duration": "1d", "steps": [` + strings.Join(steps, ", ") + `]}`
}

// Steps for the dry-run tables.
const (
	setO365    = `{"at": "0s", "action": "set_authority", "authority": "office365"}`
	setIntune  = `{"at": "0s", "action": "set_authority", "authority": "intune"}`
	setCoex    = `{"at": "0s", "action": "set_authority", "authority": "coexistence"}`
	apnsO365   = `{"at": "0s", "action": "upload_apns", "authority": "office365"}`
	apnsIntune = `{"at": "0s", "action": "upload_apns", "authority": "intune"}`
	addMail    = `{"at": "1h", "action": "add_profile", "authority": "office365", "type": "email", "name": "Mail"}`
	canary     = `{"at": "2h", "action": "enroll_canary", "platform": "android"}`
	lock       = `{"at": "3h", "action": "remote_lock"}`
)

// TestScenarioDryRun: steps whose fields are right but that the service
// would refuse at that point of the run are refused, with the step and
// what to write instead; what the service accepts is accepted.
func TestScenarioDryRun(t *testing.T) {
	refused := map[string]string{
		// A profile that is not there.
		scenarioJSON(setO365, `{"at": "1h", "action": "remove_profile", "authority": "office365", "type": "email", "name": "Mail"}`):                                                                                                                                                               `step 2 (remove_profile at 1h0m0s): there is no office365 email profile "Mail" at this point (no earlier add_profile or rename_profile step makes it)`,
		scenarioJSON(setO365, addMail, `{"at": "2h", "action": "remove_profile", "authority": "office365", "type": "email", "name": "Mail"}`, `{"at": "3h", "action": "remove_profile", "authority": "office365", "type": "email", "name": "Mail"}`):                                               `step 4 (remove_profile at 3h0m0s): there is no office365 email profile "Mail" at this point (step 3 (remove_profile at 2h0m0s) took it away)`,
		scenarioJSON(setO365, addMail, `{"at": "2h", "action": "rename_profile", "authority": "office365", "type": "email", "name": "Mail", "new_name": "Corp Mail"}`, `{"at": "3h", "action": "rename_profile", "authority": "office365", "type": "email", "name": "Mail", "new_name": "Other"}`): `step 3 (rename_profile at 2h0m0s) took it away`,
		scenarioJSON(setO365, addMail, `{"at": "2h", "action": "remove_profile", "authority": "intune", "type": "email", "name": "Mail"}`):                                                                                                                                                         `no intune email profile "Mail"`,
		scenarioJSON(setO365, `{"at": "1h", "action": "rename_profile", "authority": "office365", "type": "configuration", "name": "Mail", "new_name": "X"}`):                                                                                                                                      "add it with an add_profile step before",
		// Office 365 MDM sets a subset of the profile types.
		scenarioJSON(setO365, `{"at": "1h", "action": "add_profile", "authority": "office365", "type": "vpn", "name": "VPN"}`):                                                   `step 2 (add_profile at 1h0m0s): office365 (MDM for Office 365) does not set vpn profiles`,
		scenarioJSON(setO365, `{"at": "1h", "action": "add_profile", "authority": "intune", "type": "email", "name": "Mail", "settings": {"`+strings.Repeat("k", 65)+`": "v"}}`): `step 2 (add_profile at 1h0m0s): "settings"`,
		// Licenses only in coexistence.
		scenarioJSON(setIntune, `{"at": "1h", "action": "set_license", "user": "a@contoso.example", "intune": true}`):                                                                  `step 2 (set_license at 1h0m0s): licenses decide a user's authority only in coexistence, and the authority is intune at this point (step 1 (set_authority at 0s)): put {"at": "1h0m0s", "action": "set_authority", "authority": "coexistence"} before this step`,
		scenarioJSON(setCoex, `{"at": "1h", "action": "set_authority", "authority": "intune"}`, `{"at": "2h", "action": "set_license", "user": "a@contoso.example", "intune": false}`): "only in coexistence",
		// The same authority again.
		scenarioJSON(setO365, `{"at": "1h", "action": "set_authority", "authority": "intune"}`, `{"at": "2h", "action": "set_authority", "authority": "intune"}`): `step 3 (set_authority at 2h0m0s): the authority is intune already (step 2 (set_authority at 1h0m0s)), and the service refuses to set it again`,
		scenarioJSON(setCoex, `{"at": "1h", "action": "set_authority", "authority": "coexistence"}`):                                                              "the authority is coexistence already",
		// A remote lock from Office 365 MDM.
		scenarioJSON(setO365, canary, lock): `step 3 (remote_lock at 3h0m0s): a remote lock is an Intune action (Office 365 MDM sends only wipe and retire), and office365 manages the canary (user canary@contoso.example) at this point: put {"at": "3h0m0s", "action": "set_authority", "authority": "intune"} before this step`,
		scenarioJSON(setCoex, canary, lock): `give the canary's user an Intune license before this step: {"at": "3h0m0s", "action": "set_license", "user": "canary@contoso.example", "intune": true}`,
		scenarioJSON(setCoex, `{"at": "1h", "action": "set_license", "user": "b@contoso.example", "intune": true}`, `{"at": "2h", "action": "enroll_canary", "platform": "android", "user": "a@contoso.example"}`, lock):           `office365 manages the canary (user a@contoso.example)`,
		scenarioJSON(setIntune, canary, `{"at": "2h", "action": "set_authority", "authority": "office365"}`, lock):                                                                                                                 "office365 manages the canary",
		scenarioJSON(setCoex, `{"at": "1h", "action": "set_license", "user": "canary@contoso.example", "intune": true}`, canary, `{"at": "2h", "action": "set_license", "user": "canary@contoso.example", "intune": false}`, lock): "office365 manages the canary",
		// An iOS canary needs its authority's APNs certificate.
		scenarioJSON(setIntune, apnsO365, `{"at": "2h", "action": "enroll_canary"}`):                       `step 3 (enroll_canary at 2h0m0s): ios devices enroll only while their authority has an APNs certificate, and intune, which manages canary@contoso.example at this point, has none: put {"at": "2h0m0s", "action": "upload_apns", "authority": "intune"} before this step`,
		scenarioJSON(setCoex, apnsIntune, `{"at": "2h", "action": "enroll_canary", "platform": "ipados"}`): `and office365, which manages canary@contoso.example at this point, has none`,
	}
	accepted := []string{
		// A profile renamed, then removed under its new name; added again
		// after its removal.
		scenarioJSON(setO365, addMail, `{"at": "2h", "action": "rename_profile", "authority": "office365", "type": "email", "name": "Mail", "new_name": "Corp Mail"}`, `{"at": "3h", "action": "remove_profile", "authority": "office365", "type": "email", "name": "Corp Mail"}`, `{"at": "4h", "action": "add_profile", "authority": "office365", "type": "email", "name": "Mail"}`, `{"at": "5h", "action": "remove_profile", "authority": "office365", "type": "email", "name": "Mail"}`),
		// A profile for the authority not in use, and its certificate.
		scenarioJSON(setO365, apnsIntune, `{"at": "1h", "action": "add_profile", "authority": "intune", "type": "vpn", "name": "VPN"}`, `{"at": "2h", "action": "upload_apns", "authority": "intune"}`),
		// Licenses in coexistence, set twice; the licensed canary is locked.
		scenarioJSON(setCoex, `{"at": "1h", "action": "set_license", "user": "canary@contoso.example", "intune": true}`, `{"at": "1h", "action": "set_license", "user": "canary@contoso.example", "intune": true}`, canary, lock),
		// A canary enrolled under office365 is locked once the authority is
		// intune: the command goes from the authority the device moves to.
		scenarioJSON(setO365, canary, `{"at": "2h", "action": "set_authority", "authority": "intune"}`, lock),
		// An iOS canary with its authority's certificate.
		scenarioJSON(setIntune, apnsIntune, `{"at": "2h", "action": "enroll_canary"}`, lock),
	}
	dir := t.TempDir()
	check := func(i int, body, want string) {
		t.Helper()
		path := filepath.Join(dir, fmt.Sprintf("s%d.json", i))
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := LoadScenario(path)
		switch {
		case want == "" && err != nil:
			t.Errorf("%s:\n  error %v; want none", body, err)
		case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
			t.Errorf("%s:\n  error %v; want one saying %q", body, err, want)
		}
	}
	i := 0
	for body, want := range refused {
		i++
		check(i, body, want)
	}
	for _, body := range accepted {
		i++
		check(i, body, "")
	}
}

// TestScenarioCatalogLimit: a catalog that would not fit a check-in
// response is refused at the profile that overflows it.
func TestScenarioCatalogLimit(t *testing.T) {
	sc := &Scenario{Duration: Duration(time.Hour), Steps: []Step{{Action: ActionSetAuthority, Authority: "intune"}}}
	for i := range protocol.MaxProfiles + 1 {
		sc.Steps = append(sc.Steps, Step{Action: ActionAddProfile, Authority: "intune", Type: "wifi", Name: fmt.Sprintf("Wi-Fi %d", i)})
	}
	want := fmt.Sprintf("step %d (add_profile at 0s): the intune catalog would have %d profiles", protocol.MaxProfiles+2, protocol.MaxProfiles+1)
	if err := sc.Validate(); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("Validate() = %v; want an error saying %q", err, want)
	}
	sc.Steps = slices.Delete(sc.Steps, 1, 2)
	if err := sc.Validate(); err != nil {
		t.Errorf("Validate() with %d profiles = %v; want nil", protocol.MaxProfiles, err)
	}
}

// TestCheckFleet: iOS and iPadOS devices enroll over the fleet's first
// hours only while their authority has an APNs certificate.
func TestCheckFleet(t *testing.T) {
	at := func(d time.Duration) Duration { return Duration(d) }
	step := func(t time.Duration, action, authority string) Step {
		return Step{At: at(t), Action: action, Authority: authority}
	}
	for _, c := range []struct {
		name  string
		steps []Step
		want  string // "" for no error
	}{
		{"office365 without a certificate", []Step{step(0, ActionSetAuthority, "office365")},
			`step 1 (set_authority at 0s): the fleet enrolls from 0s to 4h0m0s, and its iOS and iPadOS devices enroll only while their authority has an APNs certificate; office365 has none at 0s: add {"at": "0s", "action": "upload_apns", "authority": "office365"} after this step`},
		{"the other authority's certificate", []Step{step(0, ActionSetAuthority, "intune"), step(0, ActionUploadAPNs, "office365")},
			`intune has none at 0s: add {"at": "0s", "action": "upload_apns", "authority": "intune"}`},
		{"coexistence needs office365's", []Step{step(0, ActionSetAuthority, "coexistence"), step(0, ActionUploadAPNs, "intune")},
			`authority (in coexistence, that of the users without an Intune license and of the devices without a user) has an APNs certificate; office365 has none at 0s`},
		{"a change while the fleet enrolls", []Step{step(0, ActionSetAuthority, "office365"), step(0, ActionUploadAPNs, "office365"), step(2*time.Hour, ActionSetAuthority, "intune"), step(3*time.Hour, ActionUploadAPNs, "intune")},
			`step 3 (set_authority at 2h0m0s): the fleet enrolls from 0s to 4h0m0s`},
		{"a certificate later at the start", []Step{step(0, ActionSetAuthority, "office365"), step(0, ActionAddProfile, "office365"), step(0, ActionUploadAPNs, "office365")}, ""},
		{"a certificate uploaded with the change", []Step{step(0, ActionSetAuthority, "office365"), step(0, ActionUploadAPNs, "office365"), step(2*time.Hour, ActionSetAuthority, "intune"), step(2*time.Hour, ActionUploadAPNs, "intune")}, ""},
		{"a change after the fleet enrolled", []Step{step(0, ActionSetAuthority, "office365"), step(0, ActionUploadAPNs, "office365"), step(4*time.Hour, ActionSetAuthority, "intune")}, ""},
		{"coexistence with office365's", []Step{step(0, ActionSetAuthority, "coexistence"), step(0, ActionUploadAPNs, "office365")}, ""},
	} {
		for i := range c.steps {
			if c.steps[i].Action == ActionAddProfile {
				c.steps[i].Type, c.steps[i].Name = "email", "Mail"
			}
		}
		sc := &Scenario{Duration: Duration(8 * time.Hour), Steps: c.steps}
		if err := sc.Validate(); err != nil {
			t.Errorf("%s: Validate() = %v; want nil", c.name, err)
		}
		if err := sc.CheckFleet(false); err != nil {
			t.Errorf("%s: CheckFleet(false) = %v; want nil", c.name, err)
		}
		err := sc.CheckFleet(true)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: CheckFleet(true) = %v; want nil", c.name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: CheckFleet(true) = %v; want an error saying %q", c.name, err, c.want)
		}
	}
	if err := DefaultScenario(2 * time.Hour).CheckFleet(true); err != nil {
		t.Errorf("DefaultScenario(2h).CheckFleet(true) = %v; want nil", err)
	}
}
