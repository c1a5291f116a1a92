package agent

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mdm-authority/mdm/protocol"
)

func setting(k, v string) protocol.Setting { return protocol.Setting{Key: k, Value: v} }

// policy returns a compliance profile of Intune with the settings.
func policy(name string, settings ...protocol.Setting) Profile {
	return installedProfile(protocol.ProfileCompliance, name, protocol.AuthorityIntune, 1, settings...)
}

func TestEvaluateRules(t *testing.T) {
	retainedPolicy := policy("Old Policy", setting(SettingPasscodeRequired, "true"))
	retainedPolicy.Authority, retainedPolicy.RetainUntil = protocol.AuthorityOffice365, testNow.Add(time.Hour)
	tests := []struct {
		name     string
		profiles []Profile
		facts    Facts
		failures []string // substrings, one per failure, in order
	}{
		{"no profiles", nil, Facts{}, nil},
		{"profiles without compliance settings", []Profile{
			installedProfile(protocol.ProfileEmail, "Corp Mail", protocol.AuthorityIntune, 1, setting("server", "mail")),
			policy("Empty"),
		}, Facts{}, nil},
		{"min_os_version 17.5 on 17.4", []Profile{policy("OS", setting(SettingMinOSVersion, "17.5"))},
			Facts{OSVersion: "17.4"}, []string{`min_os_version: 17.5 required, device has 17.4 (profile "OS")`}},
		{"min_os_version 17.5 on 17.10", []Profile{policy("OS", setting(SettingMinOSVersion, "17.5"))},
			Facts{OSVersion: "17.10"}, nil},
		{"min_os_version 17.5 on 17.5", []Profile{policy("OS", setting(SettingMinOSVersion, "17.5"))},
			Facts{OSVersion: "17.5"}, nil},
		{"min_os_version 17.5 on 18", []Profile{policy("OS", setting(SettingMinOSVersion, "17.5"))},
			Facts{OSVersion: "18"}, nil},
		{"min_os_version 12 on 11.9.9", []Profile{policy("OS", setting(SettingMinOSVersion, "12"))},
			Facts{OSVersion: "11.9.9"}, []string{"min_os_version: 12 required"}},
		{"min_os_version with unknown OS", []Profile{policy("OS", setting(SettingMinOSVersion, "17.5"))},
			Facts{}, []string{"min_os_version: 17.5 required, the device's OS version is unknown"}},
		{"min_os_version not a version", []Profile{policy("OS", setting(SettingMinOSVersion, "latest"))},
			Facts{OSVersion: "17.4"}, []string{"min_os_version: cannot compare"}},
		{"passcode required, none set", []Profile{policy("Lock", setting(SettingPasscodeRequired, "true"))},
			Facts{}, []string{"passcode_required: a passcode is required"}},
		{"passcode required, set", []Profile{policy("Lock", setting(SettingPasscodeRequired, "true"))},
			Facts{Passcode: true}, nil},
		{"passcode not required", []Profile{policy("Lock", setting(SettingPasscodeRequired, "false"))},
			Facts{}, nil},
		{"encryption required, not encrypted", []Profile{policy("Disk", setting(SettingEncryptionRequired, "true"))},
			Facts{Passcode: true}, []string{"encryption_required: storage encryption is required"}},
		{"encryption required, encrypted", []Profile{policy("Disk", setting(SettingEncryptionRequired, "true"))},
			Facts{Encrypted: true}, nil},
		{"configuration profiles count", []Profile{
			installedProfile(protocol.ProfileConfiguration, "Baseline", protocol.AuthorityIntune, 1, setting(SettingEncryptionRequired, "true")),
		}, Facts{}, []string{"encryption_required"}},
		{"other profile types do not", []Profile{
			installedProfile(protocol.ProfileWiFi, "Corp WiFi", protocol.AuthorityIntune, 1, setting(SettingEncryptionRequired, "true")),
			installedProfile(protocol.ProfileVPN, "Corp VPN", protocol.AuthorityIntune, 1, setting(SettingMinOSVersion, "99")),
		}, Facts{OSVersion: "17.4"}, nil},
		{"retained profiles are still in force", []Profile{retainedPolicy}, Facts{},
			[]string{`passcode_required: a passcode is required and none is set (profile "Old Policy")`}},
		{"every failing setting, sorted", []Profile{
			policy("All", setting(SettingMinOSVersion, "18"), setting(SettingPasscodeRequired, "true"), setting(SettingEncryptionRequired, "true")),
		}, Facts{OSVersion: "17.4"}, []string{"encryption_required", "min_os_version", "passcode_required"}},
		{"same failure of one profile name deduplicated", []Profile{
			policy("Baseline", setting(SettingPasscodeRequired, "true")),
			installedProfile(protocol.ProfileConfiguration, "Baseline", protocol.AuthorityIntune, 1, setting(SettingPasscodeRequired, "true")),
		}, Facts{}, []string{`passcode_required: a passcode is required and none is set (profile "Baseline")`}},
		{"same failure of two profiles kept apart", []Profile{
			policy("A", setting(SettingPasscodeRequired, "true")),
			policy("B", setting(SettingPasscodeRequired, "true")),
		}, Facts{}, []string{`(profile "A")`, `(profile "B")`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Evaluate(tt.profiles, tt.facts, testNow)
			wantState := protocol.ComplianceCompliant
			if len(tt.failures) > 0 {
				wantState = protocol.ComplianceNoncompliant
			}
			if got.State != wantState || got.EvaluatedAt != protocol.At(testNow) {
				t.Errorf("Evaluate(%s) = %v at %v; want %v at %v", tt.name, got.State, got.EvaluatedAt, wantState, protocol.At(testNow))
			}
			if len(got.Failures) != len(tt.failures) {
				t.Fatalf("Evaluate(%s) failures = %q; want %d like %q", tt.name, got.Failures, len(tt.failures), tt.failures)
			}
			for i, f := range got.Failures {
				if !strings.Contains(f, tt.failures[i]) {
					t.Errorf("Evaluate(%s) failure %d = %q; want it to contain %q", tt.name, i, f, tt.failures[i])
				}
			}
		})
	}
}

func TestEvaluateCap(t *testing.T) {
	for _, n := range []int{1, protocol.MaxFailures - 1, protocol.MaxFailures, protocol.MaxFailures + 1, 3 * protocol.MaxFailures} {
		var ps []Profile
		for i := range n {
			ps = append(ps, policy(fmt.Sprintf("Policy %03d", i), setting(SettingPasscodeRequired, "true")))
		}
		got := Evaluate(ps, Facts{}, testNow)
		if want := min(n, protocol.MaxFailures); len(got.Failures) != want || got.State != protocol.ComplianceNoncompliant {
			t.Errorf("Evaluate(%d failing policies) = %v with %d failures; want noncompliant with %d", n, got.State, len(got.Failures), want)
		}
		if !slices.IsSorted(got.Failures) {
			t.Errorf("Evaluate(%d failing policies) failures not sorted: %q", n, got.Failures)
		}
	}
}

// TestEvaluateFailureFitsTheWire: a failure line goes on the wire, where
// each is at most MaxMessageText bytes. A setting value the protocol
// accepts (up to MaxMessageText bytes) must not make a line the service
// rejects: the check-in would be dropped, every time.
func TestEvaluateFailureFitsTheWire(t *testing.T) {
	name := strings.Repeat("P", protocol.MaxNameLen)
	tests := []struct {
		name  string
		value string
	}{
		{"typo", "17.5"},
		{"garbage of 400 bytes", strings.Repeat("x", 400)},
		{"long dotted version", "99" + strings.Repeat(".1", (protocol.MaxMessageText-2)/2)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ps := []Profile{policy(name, setting(SettingMinOSVersion, tt.value))}
			got := Evaluate(ps, Facts{OSVersion: "17.4"}, testNow)
			if len(got.Failures) != 1 {
				t.Fatalf("Evaluate() failures = %d; want 1", len(got.Failures))
			}
			if n := len(got.Failures[0]); n > protocol.MaxMessageText {
				t.Errorf("Evaluate() failure line of %d bytes; want at most %d", n, protocol.MaxMessageText)
			}
			env := protocol.Envelope{ID: protocol.MessageID{1}, Sent: protocol.At(testNow), Device: "d-1",
				Body: &protocol.CheckIn{Reason: protocol.CheckInScheduled, Compliance: got, CertificateExpiry: protocol.At(testNow.AddDate(1, 0, 0))}}
			b, err := protocol.Encode(env)
			if err == nil {
				_, err = protocol.Decode(b)
			}
			if err != nil {
				t.Errorf("a check-in carrying the evaluation: %v; want it accepted", err)
			}
		})
	}
}

func TestComplianceInCheckIn(t *testing.T) {
	st := settledState(protocol.PlatformIOS, testNow, 0)
	st.Profiles = []Profile{policy("Baseline", setting(SettingMinOSVersion, "17.5"), setting(SettingPasscodeRequired, "true"))}
	r := newRig(t, st, testNow)
	r.c.SetFacts(Facts{OSVersion: "17.4", Passcode: true})
	ci, env := oneCheckIn(t, r.online(), protocol.CheckInScheduled)
	want := Evaluate(st.Profiles, r.c.Facts(), r.now)
	if ci.Compliance.State != protocol.ComplianceNoncompliant || !slices.Equal(ci.Compliance.Failures, want.Failures) || ci.Compliance.EvaluatedAt != protocol.At(r.now) {
		t.Errorf("check-in compliance = %+v; want %+v", ci.Compliance, want)
	}
	if ci.OSVersion != "17.4" || st.OSVersion != "17.4" || st.Compliance.State != protocol.ComplianceNoncompliant {
		t.Errorf("check-in OS %q, state OS %q, state compliance %v; want 17.4, 17.4, noncompliant", ci.OSVersion, st.OSVersion, st.Compliance.State)
	}
	r.wait(time.Second)
	r.respond(env, success(protocol.AuthorityOffice365, 41))

	// The user updates the OS: the next check-in says so.
	r.c.SetFacts(Facts{OSVersion: "17.5.1", Passcode: true})
	r.at(st.NextCheckIn)
	ci, _ = oneCheckIn(t, r.tick(), protocol.CheckInScheduled)
	if ci.Compliance.State != protocol.ComplianceCompliant || len(ci.Compliance.Failures) != 0 || ci.OSVersion != "17.5.1" {
		t.Errorf("check-in after the update: compliance %+v, OS %q; want compliant on 17.5.1", ci.Compliance, ci.OSVersion)
	}
	if s := r.c.Status(r.now); s.Compliance.State != protocol.ComplianceCompliant {
		t.Errorf("Status().Compliance = %v; want compliant", s.Compliance.State)
	}
}

func TestComplianceReportOnApply(t *testing.T) {
	failing := desiredProfile(protocol.ProfileCompliance, "OS", 1, setting(SettingMinOSVersion, "17.5"))
	passing := desiredProfile(protocol.ProfileCompliance, "Lock", 1, setting(SettingPasscodeRequired, "true"))
	tests := []struct {
		name      string
		installed []Profile
		desired   []protocol.DesiredProfile
		report    protocol.ComplianceState // 0: no report
		failures  int
	}{
		{"a failing policy arrives", nil, []protocol.DesiredProfile{failing}, protocol.ComplianceNoncompliant, 1},
		{"a passing policy arrives", nil, []protocol.DesiredProfile{passing}, 0, 0},
		{"a second failing policy arrives", []Profile{policy("OS", failing.Settings...)},
			[]protocol.DesiredProfile{failing, desiredProfile(protocol.ProfileCompliance, "OS 2", 1, setting(SettingMinOSVersion, "18"))},
			protocol.ComplianceNoncompliant, 2},
		{"the failing policy goes", []Profile{policy("OS", failing.Settings...)}, []protocol.DesiredProfile{passing}, protocol.ComplianceCompliant, 0},
		{"nothing changes", []Profile{policy("OS", failing.Settings...)}, []protocol.DesiredProfile{failing}, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := settledState(protocol.PlatformIOS, testNow, 0)
			st.Authority, st.Profiles = protocol.AuthorityIntune, tt.installed
			r := newRig(t, st, testNow)
			r.c.SetFacts(Facts{OSVersion: "17.4", Passcode: true})
			_, env := oneCheckIn(t, r.online(), protocol.CheckInScheduled)
			r.wait(time.Second)
			out := r.respond(env, &protocol.CheckInResponse{Authority: protocol.AuthorityIntune, Epoch: 1, DesiredVersion: 42, Profiles: tt.desired})
			reports, _ := sentBodies[*protocol.ComplianceReport](out)
			if tt.report == 0 {
				if len(reports) != 0 {
					t.Errorf("sent compliance reports %+v; want none, compliance did not change", reports)
				}
				return
			}
			if len(reports) != 1 {
				t.Fatalf("sent %d compliance reports; want 1", len(reports))
			}
			c := reports[0].Compliance
			if c.State != tt.report || len(c.Failures) != tt.failures || reports[0].OSVersion != "17.4" {
				t.Errorf("compliance report = %v with %q on %q; want %v with %d failures on 17.4", c.State, c.Failures, reports[0].OSVersion, tt.report, tt.failures)
			}
			if st := r.c.State(); st.Compliance.State != tt.report {
				t.Errorf("State.Compliance = %v; want %v, as reported", st.Compliance.State, tt.report)
			}
		})
	}
}
