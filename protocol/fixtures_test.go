package protocol

import (
	"fmt"
	"time"
)

// Fixed values of the golden messages: the bytes must not depend on the
// day or machine the tests run on.
var (
	fixtureTime = time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)
	fixtureID   = MessageID{0x6d, 0x64, 0x6d, 0x2d, 0x6d, 0x73, 0x67, 0x2d, 0x30, 0x30, 0x30, 0x31, 0x0a, 0x0b, 0x0c, 0x0d}
	fixtureReq  = MessageID{0x6d, 0x64, 0x6d, 0x2d, 0x72, 0x65, 0x71, 0x2d, 0x30, 0x30, 0x30, 0x31, 0x01, 0x02, 0x03, 0x04}
	// Shortened DER stand-ins: the protocol carries them as opaque bytes.
	fixtureCSR  = []byte{0x30, 0x81, 0xe2, 0x30, 0x81, 0x89, 0x02, 0x01, 0x00}
	fixtureCert = []byte{0x30, 0x82, 0x01, 0x8c, 0x30, 0x82, 0x01, 0x32, 0xa0, 0x03}
	fixtureCA   = []byte{0x30, 0x82, 0x01, 0x7a, 0x30, 0x82, 0x01, 0x20, 0xa0, 0x03}
)

const fixtureDevice = "d-7f3a9c21"

func ms(t time.Time) Timestamp { return At(t) }

// golden returns one message of every kind, plus the error variants of the
// responses, keyed by the name of their golden files.
func golden() map[string]Envelope {
	sent := At(fixtureTime)
	changed := fixtureTime.Add(-2 * time.Hour)
	return map[string]Envelope{
		"enroll_request": {ID: fixtureReq, Sent: sent, Body: &EnrollRequest{
			CSR: fixtureCSR, Token: "enr-2f9c4e1d", Platform: PlatformIOS, OSVersion: "17.4",
			User: "ada@contoso.example", Type: EnrollUser, Name: "Ada's iPhone",
		}},
		"enroll_response": {ID: fixtureID, Sent: sent, ReplyTo: fixtureReq, Body: &EnrollResponse{
			Device: fixtureDevice, Certificate: fixtureCert, Authority: AuthorityIntune, Epoch: 2,
			CACertificate: fixtureCA,
		}},
		"enroll_response_error": {ID: fixtureID, Sent: sent, ReplyTo: fixtureReq, Body: &EnrollResponse{
			Error: CodeAPNsCertificateMissing, Message: CodeAPNsCertificateMissing.Hint(),
		}},
		"checkin": {ID: fixtureReq, Sent: sent, Device: fixtureDevice, Body: &CheckIn{
			Reason: CheckInPushed,
			Profiles: []InstalledProfile{
				{Type: ProfileEmail, Name: "Corp Mail", Authority: AuthorityOffice365, Version: 3},
				{Type: ProfileConfiguration, Name: "Device Security", Authority: AuthorityOffice365, Version: 1,
					RetainUntil: ms(changed.Add(7 * 24 * time.Hour))},
				{Type: ProfileWiFi, Name: "Corp WiFi", Authority: AuthorityIntune, Version: 1},
			},
			Compliance: Compliance{State: ComplianceNoncompliant, EvaluatedAt: ms(fixtureTime.Add(-time.Minute)),
				Failures: []string{"min_os_version: 17.5 required, device has 17.4"}},
			CertificateExpiry: ms(fixtureTime.AddDate(1, 0, 0)),
			DesiredVersion:    41,
			Epoch:             1,
			OSVersion:         "17.4",
		}},
		"checkin_response": {ID: fixtureID, Sent: sent, Device: fixtureDevice, ReplyTo: fixtureReq, Body: &CheckInResponse{
			Authority: AuthorityIntune, Epoch: 2, ChangedAt: ms(changed), DesiredVersion: 42,
			Profiles: []DesiredProfile{
				{Type: ProfileEmail, Name: "Corp Mail", Version: 1, Settings: Settings{{"server", "mail.contoso.example"}}},
				{Type: ProfileCompliance, Name: "Baseline", Version: 2, Settings: Settings{
					{"min_os_version", "17.5"}, {"passcode_required", "true"}, {"encryption_required", "true"}}},
			},
			RetainUntil: ms(changed.Add(7 * 24 * time.Hour)),
			Commands:    []Command{{ID: "c-0001", Action: CommandRemoteLock, Issued: ms(changed), Message: "Call IT at 555-0100"}},
			NextCheckIn: 8 * 3600,
			Certificate: fixtureCert,
		}},
		"checkin_response_error": {ID: fixtureID, Sent: sent, Device: fixtureDevice, ReplyTo: fixtureReq, Body: &CheckInResponse{
			Error: CodeAPNsCertificateMissing, Message: CodeAPNsCertificateMissing.Hint(),
		}},
		"push": {ID: fixtureID, Sent: sent, Device: fixtureDevice, Body: &Push{Epoch: 2, Reason: PushAuthorityChange}},
		"command": {ID: fixtureID, Sent: sent, Device: fixtureDevice, Body: &Command{
			ID: "c-0002", Action: CommandWipe, Issued: sent,
		}},
		"command_result": {ID: fixtureReq, Sent: sent, Device: fixtureDevice, Body: &CommandResult{
			ID: "c-0001", Status: CommandDone, Completed: sent,
		}},
		"compliance_report": {ID: fixtureReq, Sent: sent, Device: fixtureDevice, Body: &ComplianceReport{
			Compliance: Compliance{State: ComplianceCompliant, EvaluatedAt: sent}, OSVersion: "17.5",
		}},
		"unenroll": {ID: fixtureReq, Sent: sent, Device: fixtureDevice, Body: &Unenroll{Reason: "user request"}},
	}
}

// benchCheckIn returns a check-in with n installed profiles and the
// response that sends n desired profiles, the sizes the benchmarks use.
func benchCheckIn(n int) (Envelope, Envelope) {
	sent := At(fixtureTime)
	in := &CheckIn{
		Reason:            CheckInScheduled,
		Compliance:        Compliance{State: ComplianceCompliant, EvaluatedAt: sent},
		CertificateExpiry: ms(fixtureTime.AddDate(1, 0, 0)),
		DesiredVersion:    41, Epoch: 1, OSVersion: "17.4",
	}
	out := &CheckInResponse{Authority: AuthorityIntune, Epoch: 2, ChangedAt: sent, DesiredVersion: 42,
		RetainUntil: ms(fixtureTime.Add(7 * 24 * time.Hour)), NextCheckIn: 900}
	types := []ProfileType{ProfileEmail, ProfileVPN, ProfileCertificate, ProfileWiFi, ProfileConfiguration}
	for i := range n {
		typ := types[i%len(types)]
		name := fmt.Sprintf("Contoso %s %02d", typ, i)
		in.Profiles = append(in.Profiles, InstalledProfile{Type: typ, Name: name, Authority: AuthorityOffice365, Version: uint64(i + 1)})
		out.Profiles = append(out.Profiles, DesiredProfile{Type: typ, Name: name, Version: uint64(i + 2),
			Settings: Settings{{"server", "contoso.example"}}})
	}
	return Envelope{ID: fixtureReq, Sent: sent, Device: fixtureDevice, Body: in},
		Envelope{ID: fixtureID, Sent: sent, Device: fixtureDevice, ReplyTo: fixtureReq, Body: out}
}
