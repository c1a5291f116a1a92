package protocol

import (
	"fmt"
	"strings"
)

// names maps the wire values of one enumeration to their string forms. The
// index is the wire value; an empty string marks a value that is not defined.
type names []string

func (n names) format(v uint8, enum string) string {
	if int(v) < len(n) && n[v] != "" {
		return n[v]
	}
	return fmt.Sprintf("%s(%d)", enum, v)
}

func (n names) valid(v uint8) bool { return int(v) < len(n) && n[v] != "" }

func (n names) parse(s, enum string) (uint8, error) {
	for i, name := range n {
		if name != "" && name == s {
			return uint8(i), nil
		}
	}
	return 0, fmt.Errorf("unknown %s %q: use one of %s", enum, s, n.list())
}

func (n names) list() string {
	var b strings.Builder
	for _, name := range n {
		if name == "" {
			continue
		}
		if b.Len() > 0 {
			b.WriteString(", ")
		}
		b.WriteString(name)
	}
	return b.String()
}

// Authority is the MDM authority that manages a device: Intune standalone or
// MDM for Office 365. A tenant in coexistence mode has devices under both.
type Authority uint8

// Authorities. AuthorityUnknown is the state of a tenant that has never set
// one; a tenant can never return to it.
const (
	AuthorityUnknown   Authority = 0
	AuthorityIntune    Authority = 1
	AuthorityOffice365 Authority = 2
)

var authorityNames = names{"unknown", "intune", "office365"}

// ParseAuthority returns the authority named s ("unknown", "intune", "office365").
func ParseAuthority(s string) (Authority, error) {
	v, err := authorityNames.parse(s, "authority")
	return Authority(v), err
}

// String returns the authority's name as used by the CLIs and JSON.
func (a Authority) String() string { return authorityNames.format(uint8(a), "authority") }

// Valid reports whether a is a defined authority.
func (a Authority) Valid() bool { return authorityNames.valid(uint8(a)) }

// MarshalText implements encoding.TextMarshaler for JSON output.
func (a Authority) MarshalText() ([]byte, error) { return []byte(a.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler for JSON input.
func (a *Authority) UnmarshalText(b []byte) error {
	v, err := ParseAuthority(string(b))
	*a = v
	return err
}

// Platform is a device's operating system family.
type Platform uint8

// Platforms.
const (
	PlatformIOS     Platform = 1
	PlatformIPadOS  Platform = 2
	PlatformMacOS   Platform = 3
	PlatformAndroid Platform = 4
	PlatformWindows Platform = 5
)

var platformNames = names{"", "ios", "ipados", "macos", "android", "windows"}

// Platforms lists every defined platform in wire order.
var Platforms = []Platform{PlatformIOS, PlatformIPadOS, PlatformMacOS, PlatformAndroid, PlatformWindows}

// ParsePlatform returns the platform named s ("ios", "ipados", "macos",
// "android", "windows").
func ParsePlatform(s string) (Platform, error) {
	v, err := platformNames.parse(s, "platform")
	return Platform(v), err
}

// String returns the platform's name as used by the CLIs and JSON.
func (p Platform) String() string { return platformNames.format(uint8(p), "platform") }

// Valid reports whether p is a defined platform.
func (p Platform) Valid() bool { return platformNames.valid(uint8(p)) }

// Apple reports whether the platform is managed through Apple's push
// service (APNs): iOS, iPadOS and macOS.
func (p Platform) Apple() bool {
	return p == PlatformIOS || p == PlatformIPadOS || p == PlatformMacOS
}

// NeedsAPNs reports whether enrollment and check-in of this platform fail
// while the authority has no APNs certificate. The rule covers iOS and
// iPadOS, as the Intune documentation states it.
func (p Platform) NeedsAPNs() bool { return p == PlatformIOS || p == PlatformIPadOS }

// MarshalText implements encoding.TextMarshaler for JSON output.
func (p Platform) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler for JSON input.
func (p *Platform) UnmarshalText(b []byte) error {
	v, err := ParsePlatform(string(b))
	*p = v
	return err
}

// ProfileType is the kind of setting a profile carries.
type ProfileType uint8

// Profile types.
const (
	ProfileEmail         ProfileType = 1
	ProfileVPN           ProfileType = 2
	ProfileCertificate   ProfileType = 3
	ProfileWiFi          ProfileType = 4
	ProfileConfiguration ProfileType = 5
	ProfileCompliance    ProfileType = 6
)

var profileTypeNames = names{"", "email", "vpn", "certificate", "wifi", "configuration", "compliance"}

// ParseProfileType returns the profile type named s ("email", "vpn",
// "certificate", "wifi", "configuration", "compliance").
func ParseProfileType(s string) (ProfileType, error) {
	v, err := profileTypeNames.parse(s, "profile type")
	return ProfileType(v), err
}

// String returns the profile type's name as used by the CLIs and JSON.
func (t ProfileType) String() string { return profileTypeNames.format(uint8(t), "profile type") }

// Valid reports whether t is a defined profile type.
func (t ProfileType) Valid() bool { return profileTypeNames.valid(uint8(t)) }

// MarshalText implements encoding.TextMarshaler for JSON output.
func (t ProfileType) MarshalText() ([]byte, error) { return []byte(t.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler for JSON input.
func (t *ProfileType) UnmarshalText(b []byte) error {
	v, err := ParseProfileType(string(b))
	*t = v
	return err
}

// EnrollmentType says how a device was enrolled. DEP and bulk enrollments
// usually have no user, and devices without a user are not migrated when
// the authority changes.
type EnrollmentType uint8

// Enrollment types.
const (
	EnrollUser EnrollmentType = 1
	EnrollDEP  EnrollmentType = 2
	EnrollBulk EnrollmentType = 3
)

var enrollmentTypeNames = names{"", "user", "dep", "bulk"}

// ParseEnrollmentType returns the enrollment type named s ("user", "dep", "bulk").
func ParseEnrollmentType(s string) (EnrollmentType, error) {
	v, err := enrollmentTypeNames.parse(s, "enrollment type")
	return EnrollmentType(v), err
}

// String returns the enrollment type's name as used by the CLIs and JSON.
func (t EnrollmentType) String() string {
	return enrollmentTypeNames.format(uint8(t), "enrollment type")
}

// Valid reports whether t is a defined enrollment type.
func (t EnrollmentType) Valid() bool { return enrollmentTypeNames.valid(uint8(t)) }

// MarshalText implements encoding.TextMarshaler for JSON output.
func (t EnrollmentType) MarshalText() ([]byte, error) { return []byte(t.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler for JSON input.
func (t *EnrollmentType) UnmarshalText(b []byte) error {
	v, err := ParseEnrollmentType(string(b))
	*t = v
	return err
}

// CommandKind is a remote action the service asks a device to perform.
type CommandKind uint8

// Command kinds. Office 365 MDM supports wipe and retire only.
const (
	CommandRemoteLock CommandKind = 1
	CommandWipe       CommandKind = 2
	CommandRetire     CommandKind = 3
	CommandSync       CommandKind = 4
)

var commandKindNames = names{"", "remote_lock", "wipe", "retire", "sync"}

// ParseCommandKind returns the command kind named s ("remote_lock", "wipe",
// "retire", "sync").
func ParseCommandKind(s string) (CommandKind, error) {
	v, err := commandKindNames.parse(s, "command kind")
	return CommandKind(v), err
}

// String returns the command kind's name as used by the CLIs and JSON.
func (k CommandKind) String() string { return commandKindNames.format(uint8(k), "command kind") }

// Valid reports whether k is a defined command kind.
func (k CommandKind) Valid() bool { return commandKindNames.valid(uint8(k)) }

// MarshalText implements encoding.TextMarshaler for JSON output.
func (k CommandKind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler for JSON input.
func (k *CommandKind) UnmarshalText(b []byte) error {
	v, err := ParseCommandKind(string(b))
	*k = v
	return err
}

// CommandStatus is the outcome a device reports for a command.
type CommandStatus uint8

// Command statuses a device reports.
const (
	// CommandDone means the device carried the command out.
	CommandDone CommandStatus = 1
	// CommandFailed means the device tried and failed; the result's error
	// text says why.
	CommandFailed CommandStatus = 2
	// CommandRejected means the device does not support the command.
	CommandRejected CommandStatus = 3
)

var commandStatusNames = names{"", "done", "failed", "rejected"}

// ParseCommandStatus returns the command status named s ("done", "failed",
// "rejected").
func ParseCommandStatus(s string) (CommandStatus, error) {
	v, err := commandStatusNames.parse(s, "command status")
	return CommandStatus(v), err
}

// String returns the command status's name as used by the CLIs and JSON.
func (s CommandStatus) String() string {
	return commandStatusNames.format(uint8(s), "command status")
}

// Valid reports whether s is a defined command status.
func (s CommandStatus) Valid() bool { return commandStatusNames.valid(uint8(s)) }

// MarshalText implements encoding.TextMarshaler for JSON output.
func (s CommandStatus) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler for JSON input.
func (s *CommandStatus) UnmarshalText(b []byte) error {
	v, err := ParseCommandStatus(string(b))
	*s = v
	return err
}

// ComplianceState is the outcome of evaluating the compliance and
// configuration profiles against a device's facts.
type ComplianceState uint8

// Compliance states. ComplianceUnknown means not evaluated yet.
const (
	ComplianceUnknown      ComplianceState = 0
	ComplianceCompliant    ComplianceState = 1
	ComplianceNoncompliant ComplianceState = 2
)

var complianceStateNames = names{"unknown", "compliant", "noncompliant"}

// ParseComplianceState returns the compliance state named s ("unknown",
// "compliant", "noncompliant").
func ParseComplianceState(s string) (ComplianceState, error) {
	v, err := complianceStateNames.parse(s, "compliance state")
	return ComplianceState(v), err
}

// String returns the compliance state's name as used by the CLIs and JSON.
func (s ComplianceState) String() string {
	return complianceStateNames.format(uint8(s), "compliance state")
}

// Valid reports whether s is a defined compliance state.
func (s ComplianceState) Valid() bool { return complianceStateNames.valid(uint8(s)) }

// MarshalText implements encoding.TextMarshaler for JSON output.
func (s ComplianceState) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler for JSON input.
func (s *ComplianceState) UnmarshalText(b []byte) error {
	v, err := ParseComplianceState(string(b))
	*s = v
	return err
}

// CheckInReason says what made a device check in.
type CheckInReason uint8

// Check-in reasons.
const (
	// CheckInScheduled is a regular check-in from the device's schedule.
	CheckInScheduled CheckInReason = 1
	// CheckInPushed answers a push ("check in now") from the service.
	CheckInPushed CheckInReason = 2
	// CheckInManual is a user's sync from the Company Portal or the CLI.
	CheckInManual CheckInReason = 3
	// CheckInRetry repeats a check-in that failed or got no answer.
	CheckInRetry CheckInReason = 4
	// CheckInEnrollment is the first check-in right after enrollment.
	CheckInEnrollment CheckInReason = 5
)

var checkInReasonNames = names{"", "scheduled", "pushed", "manual", "retry", "enrollment"}

// ParseCheckInReason returns the check-in reason named s ("scheduled",
// "pushed", "manual", "retry", "enrollment").
func ParseCheckInReason(s string) (CheckInReason, error) {
	v, err := checkInReasonNames.parse(s, "check-in reason")
	return CheckInReason(v), err
}

// String returns the check-in reason's name as used by the CLIs and JSON.
func (r CheckInReason) String() string {
	return checkInReasonNames.format(uint8(r), "check-in reason")
}

// Valid reports whether r is a defined check-in reason.
func (r CheckInReason) Valid() bool { return checkInReasonNames.valid(uint8(r)) }

// MarshalText implements encoding.TextMarshaler for JSON output.
func (r CheckInReason) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler for JSON input.
func (r *CheckInReason) UnmarshalText(b []byte) error {
	v, err := ParseCheckInReason(string(b))
	*r = v
	return err
}

// PushReason says why the service asks a device to check in. A device
// checks in the same way whatever the reason; it is there for logs.
type PushReason uint8

// Push reasons. PushUnspecified is allowed.
const (
	PushUnspecified     PushReason = 0
	PushAuthorityChange PushReason = 1
	PushProfilesChanged PushReason = 2
	PushCommandPending  PushReason = 3
	PushRetry           PushReason = 4
)

var pushReasonNames = names{"unspecified", "authority_change", "profiles_changed", "command_pending", "retry"}

// ParsePushReason returns the push reason named s.
func ParsePushReason(s string) (PushReason, error) {
	v, err := pushReasonNames.parse(s, "push reason")
	return PushReason(v), err
}

// String returns the push reason's name as used by the CLIs and JSON.
func (r PushReason) String() string { return pushReasonNames.format(uint8(r), "push reason") }

// Valid reports whether r is a defined push reason.
func (r PushReason) Valid() bool { return pushReasonNames.valid(uint8(r)) }

// MarshalText implements encoding.TextMarshaler for JSON output.
func (r PushReason) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler for JSON input.
func (r *PushReason) UnmarshalText(b []byte) error {
	v, err := ParsePushReason(string(b))
	*r = v
	return err
}

// ErrorCode is the reason the service refused a request, carried in
// enrollment and check-in responses. CodeNone means success.
type ErrorCode uint8

// Error codes. The wire values are fixed; new codes are only appended.
const (
	CodeNone                   ErrorCode = 0
	CodeBadRequest             ErrorCode = 1
	CodeAuthorityNotSet        ErrorCode = 2
	CodeAPNsCertificateMissing ErrorCode = 3
	CodeNotEnrolled            ErrorCode = 4
	CodeUnsupportedByAuthority ErrorCode = 5
	CodeCertificateExpired     ErrorCode = 6
	CodeInvalidToken           ErrorCode = 7
	CodeUnsupportedVersion     ErrorCode = 8
	CodeConsentRequired        ErrorCode = 9
	CodeDeviceMismatch         ErrorCode = 10
	CodeReplayed               ErrorCode = 11
	CodeRateLimited            ErrorCode = 12
	CodeInternal               ErrorCode = 13
)

var errorCodeNames = names{
	"none",
	"bad_request",
	"authority_not_set",
	"apns_certificate_missing",
	"not_enrolled",
	"unsupported_by_authority",
	"certificate_expired",
	"invalid_token",
	"unsupported_version",
	"consent_required",
	"device_mismatch",
	"replayed",
	"rate_limited",
	"internal",
}

// errorCodeHints tells a person what each code means and what to do next.
var errorCodeHints = [...]string{
	CodeNone:                   "no error",
	CodeBadRequest:             "the message was malformed, too large or missing a required field; update the device software",
	CodeAuthorityNotSet:        "the tenant has no MDM authority yet; an admin must set it before devices can enroll",
	CodeAPNsCertificateMissing: "the MDM authority has no APNs certificate; an admin must upload it for iOS/iPadOS devices to enroll and check in",
	CodeNotEnrolled:            "the service does not know this device (removed, wiped or retired); enroll it again",
	CodeUnsupportedByAuthority: "the device's MDM authority does not support this; use Intune or change the authority",
	CodeCertificateExpired:     "the device's MDM certificate has expired; unenroll and enroll the device again",
	CodeInvalidToken:           "the enrollment token is wrong or was rotated; ask the admin for the current one",
	CodeUnsupportedVersion:     "the message uses a protocol version this side does not speak; update the older side",
	CodeConsentRequired:        "the admin has not recorded consent to share data with Apple or Google for this",
	CodeDeviceMismatch:         "the message names a different device than its topic or credentials",
	CodeReplayed:               "the message was already processed (same message or command result id)",
	CodeRateLimited:            "the service is shedding load; retry later with backoff",
	CodeInternal:               "the service failed to process the message; retry later and check the service log",
}

// ParseErrorCode returns the error code named s, such as "authority_not_set".
func ParseErrorCode(s string) (ErrorCode, error) {
	v, err := errorCodeNames.parse(s, "error code")
	return ErrorCode(v), err
}

// String returns the error code's name as used by the CLIs and JSON.
func (c ErrorCode) String() string { return errorCodeNames.format(uint8(c), "error code") }

// Valid reports whether c is a defined error code.
func (c ErrorCode) Valid() bool { return errorCodeNames.valid(uint8(c)) }

// Hint explains the code to a person and says what to do about it.
func (c ErrorCode) Hint() string {
	if int(c) < len(errorCodeHints) {
		return errorCodeHints[c]
	}
	return "unknown error code; update the device software"
}

// MarshalText implements encoding.TextMarshaler for JSON output.
func (c ErrorCode) MarshalText() ([]byte, error) { return []byte(c.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler for JSON input.
func (c *ErrorCode) UnmarshalText(b []byte) error {
	v, err := ParseErrorCode(string(b))
	*c = v
	return err
}
