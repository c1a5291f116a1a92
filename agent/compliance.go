package agent

import (
	"fmt"
	"slices"
	"time"
	"unicode/utf8"

	"github.com/mdm-authority/mdm/protocol"
)

// Setting keys that compliance and configuration profiles evaluate, as the
// protocol specification lists them.
const (
	SettingMinOSVersion       = "min_os_version"
	SettingPasscodeRequired   = "passcode_required"
	SettingEncryptionRequired = "encryption_required"
)

// Evaluate checks the device's facts against the compliance and
// configuration profiles among profiles, retained ones included (they are
// still in force on the device), and returns the evaluation the device
// reports. A device with nothing to evaluate is compliant, as Intune marks
// devices without a compliance policy.
func Evaluate(profiles []Profile, f Facts, now time.Time) protocol.Compliance {
	var failures []string
	for i := range profiles {
		p := &profiles[i]
		if p.Type != protocol.ProfileCompliance && p.Type != protocol.ProfileConfiguration {
			continue
		}
		for _, s := range p.Settings {
			if msg := check(s, f); msg != "" {
				failures = append(failures, clip(fmt.Sprintf("%s (profile %q)", msg, p.Name), protocol.MaxMessageText))
			}
		}
	}
	slices.Sort(failures)
	failures = slices.Compact(failures)
	if len(failures) > protocol.MaxFailures {
		failures = failures[:protocol.MaxFailures]
	}
	c := protocol.Compliance{State: protocol.ComplianceCompliant, EvaluatedAt: protocol.At(now), Failures: failures}
	if len(failures) > 0 {
		c.State = protocol.ComplianceNoncompliant
	}
	return c
}

// check returns why one setting fails, or "" when it holds or is not a
// compliance setting.
func check(s protocol.Setting, f Facts) string {
	switch s.Key {
	case SettingMinOSVersion:
		if f.OSVersion == "" {
			return fmt.Sprintf("%s: %s required, the device's OS version is unknown", s.Key, s.Value)
		}
		c, err := CompareVersions(f.OSVersion, s.Value)
		if err != nil {
			return fmt.Sprintf("%s: cannot compare %q with %q: %v", s.Key, f.OSVersion, s.Value, err)
		}
		if c < 0 {
			return fmt.Sprintf("%s: %s required, device has %s", s.Key, s.Value, f.OSVersion)
		}
	case SettingPasscodeRequired:
		if s.Value == "true" && !f.Passcode {
			return s.Key + ": a passcode is required and none is set"
		}
	case SettingEncryptionRequired:
		if s.Value == "true" && !f.Encrypted {
			return s.Key + ": storage encryption is required and the device is not encrypted"
		}
	}
	return ""
}

// clip cuts s to at most n bytes on a character boundary, so that a
// failure line built from long setting values still fits the wire.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const more = "..."
	cut := n - len(more)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + more
}
