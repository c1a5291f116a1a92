package broker

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/mdm-authority/mdm/protocol"
)

// The rogue-client suite: a real MQTT client (paho) tries, over TLS, plain
// TCP and the in-process transport, each way into what it does not own,
// and is refused, with the victim device's record unchanged and the
// refusal counted under its reason. Each case has a control beside it that
// is admitted, so that a refusal for an unrelated cause cannot pass.

// rogueBroker starts a broker with a TLS and a plain-TCP listener, sets
// the authority, and enrolls a victim device and the attacker's own device.
type rogueSetup struct {
	h                *harness
	b                *Broker
	tlsAddr, tcpAddr string
	victim           string
	victimCert       tls.Certificate
	own              string
	ownCert          tls.Certificate
}

func newRogueSetup(t *testing.T) *rogueSetup {
	t.Helper()
	h := newHarness(t)
	b, tlsAddr, tcpAddr := newNetBroker(t, h)
	mustDo(t, h.svc.SetAuthority, ModeIntune)
	r := &rogueSetup{h: h, b: b, tlsAddr: tlsAddr.String(), tcpAddr: tcpAddr.String()}
	r.victim, r.victimCert = enrollWithKey(t, h, protocol.PlatformWindows)
	r.own, r.ownCert = enrollWithKey(t, h, protocol.PlatformAndroid)
	return r
}

// snapshot returns the victim's record as JSON, to compare before and
// after an attack.
func (r *rogueSetup) snapshot(t *testing.T) string {
	t.Helper()
	b, err := json.Marshal(r.h.record(r.victim))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// refusals returns the count of connections refused for reason.
func (r *rogueSetup) refusals(reason int) uint64 { return r.h.svc.metrics.connects[reason].Load() }

// rogueDial is one connection attempt.
type rogueDial struct {
	transport  string // "tls", "tcp" or "memory"
	clientID   string
	user, pass string
	cert       *tls.Certificate
}

// dial connects a paho client as d describes and returns it (connected)
// with its messages, or the broker's refusal.
func (r *rogueSetup) dial(t *testing.T, d rogueDial) (paho.Client, chan paho.Message, error) {
	t.Helper()
	if d.transport == "memory" {
		return pahoClientAs(t, r.b, d.clientID, d.user, d.pass)
	}
	msgs := make(chan paho.Message, 16)
	// MQTT 3.1.1 only: by default paho tries 3.1 after a refusal.
	opts := paho.NewClientOptions().SetClientID(d.clientID).SetCleanSession(true).SetProtocolVersion(4).
		SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(5 * time.Second).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { msgs <- m })
	if d.transport == "tls" {
		cfg := &tls.Config{RootCAs: r.h.svc.ca.Pool(), ServerName: "localhost", MinVersion: tls.VersionTLS12}
		if d.cert != nil {
			cfg.Certificates = []tls.Certificate{*d.cert}
		}
		opts.AddBroker("ssl://" + r.tlsAddr).SetTLSConfig(cfg)
	} else {
		opts.AddBroker("tcp://" + r.tcpAddr)
	}
	if d.user != "" || d.pass != "" {
		opts.SetUsername(d.user).SetPassword(d.pass)
	}
	c := paho.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		t.Fatalf("connect %s over %s: timed out", d.clientID, d.transport)
	}
	if tok.Error() != nil {
		return nil, nil, tok.Error()
	}
	t.Cleanup(func() { c.Disconnect(50) })
	return c, msgs, nil
}

// token returns the current connect token of a device.
func (r *rogueSetup) token(device string) string {
	return r.h.svc.ca.ConnectToken("contoso", device, r.h.record(device).CertSerial)
}

// refused asserts that d is refused for reason, counted, and changes
// nothing of the victim.
func (r *rogueSetup) refused(t *testing.T, name string, d rogueDial, reason int) {
	t.Helper()
	before, count := r.snapshot(t), r.refusals(reason)
	if c, _, err := r.dial(t, d); err == nil {
		// Disconnect at once: a second session under the same client id
		// would take this one over.
		c.Disconnect(0)
		t.Errorf("%s: connected; want refused (%s)", name, connNames[reason])
		return
	}
	if got := r.refusals(reason); got != count+1 {
		t.Errorf("%s: %s refusals went from %d to %d; want one more", name, connNames[reason], count, got)
	}
	if after := r.snapshot(t); after != before {
		t.Errorf("%s: the victim's record changed:\n%s\n%s", name, before, after)
	}
}

// admitted asserts that d connects: the control of a refusal case.
func (r *rogueSetup) admitted(t *testing.T, name string, d rogueDial) {
	t.Helper()
	if _, _, err := r.dial(t, d); err != nil {
		t.Errorf("%s (control): refused: %v", name, err)
	}
}

// selfSigned makes a certificate that looks like a device certificate of
// the tenant but is signed by key itself, or by issuer when given.
func selfSigned(t *testing.T, tenant, device string, notAfter time.Time) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7), NotBefore: testStart.Add(-time.Hour), NotAfter: notAfter,
		URIs:        []*url.URL{deviceURI(tenant, device)},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestRogueConnect: connecting without credentials, with someone else's,
// with forged, expired or revoked ones.
func TestRogueConnect(t *testing.T) {
	r := newRogueSetup(t)
	h := r.h
	victim := r.victim

	r.admitted(t, "victim with its certificate", rogueDial{transport: "tls", clientID: victim, cert: &r.victimCert})
	r.refused(t, "no certificate", rogueDial{transport: "tls", clientID: victim}, connNoCredentials)
	r.refused(t, "connect token instead of a certificate over TLS", rogueDial{transport: "tls", clientID: victim, user: victim, pass: r.token(victim)}, connNoCredentials)
	r.refused(t, "own certificate, victim's client id", rogueDial{transport: "tls", clientID: victim, cert: &r.ownCert}, connMismatch)

	forged := selfSigned(t, "contoso", victim, testStart.Add(24*time.Hour))
	r.refused(t, "self-signed certificate naming the victim", rogueDial{transport: "tls", clientID: victim, cert: &forged}, connCertificate)

	other, _, err := LoadOrCreateCA(t.TempDir(), "fabrikam", testStart)
	if err != nil {
		t.Fatal(err)
	}
	key, csr, _ := NewDeviceKeyAndCSR()
	der, _, err := other.SignDevice(csr, "fabrikam", victim, testStart, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	otherTenant := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	r.refused(t, "another tenant's CA, victim's id", rogueDial{transport: "tls", clientID: victim, cert: &otherTenant}, connCertificate)
	// Our own CA cannot be made to vouch for another tenant either: the
	// certificate names its tenant, and the tenant must be ours.
	der, _, err = h.svc.ca.SignDevice(csr, "fabrikam", victim, testStart, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	wrongTenant := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	r.refused(t, "this CA's certificate for another tenant", rogueDial{transport: "tls", clientID: victim, cert: &wrongTenant}, connMismatch)

	for _, tr := range []string{"tcp", "memory"} {
		r.admitted(t, tr+": victim with its connect token", rogueDial{transport: tr, clientID: victim, user: victim, pass: r.token(victim)})
		r.refused(t, tr+": no password", rogueDial{transport: tr, clientID: victim}, connNoCredentials)
		r.refused(t, tr+": own token, victim's id", rogueDial{transport: tr, clientID: victim, user: victim, pass: r.token(r.own)}, connBadToken)
		r.refused(t, tr+": own token and user, victim's id", rogueDial{transport: tr, clientID: victim, user: r.own, pass: r.token(r.own)}, connMismatch)
		r.refused(t, tr+": made-up token", rogueDial{transport: tr, clientID: victim, user: victim, pass: connectTokenPrefix + strings.Repeat("A", 43)}, connBadToken)
		r.refused(t, tr+": enrollment token as a device password", rogueDial{transport: tr, clientID: victim, user: victim, pass: h.token}, connBadToken)
		r.refused(t, tr+": client id outside the scheme", rogueDial{transport: tr, clientID: "mdm/#", user: "mdm/#", pass: h.token}, connClientID)
		r.refused(t, tr+": enrolling client id outside the scheme", rogueDial{transport: tr, clientID: EnrollClientPrefix + "#", user: EnrollUsername, pass: h.token}, connClientID)
		r.refused(t, tr+": token of a certificate without a serial", rogueDial{transport: tr, clientID: victim, user: victim,
			pass: h.svc.ca.ConnectToken("contoso", victim, "")}, connBadToken)
	}

	// Enrollment: only with the enrollment token, under the user name
	// "enroll".
	for _, tr := range []string{"tls", "tcp", "memory"} {
		r.admitted(t, tr+": enrolling client with the token", rogueDial{transport: tr, clientID: EnrollClientPrefix + "r-1", user: EnrollUsername, pass: h.token})
		r.refused(t, tr+": enrolling client with a wrong token", rogueDial{transport: tr, clientID: EnrollClientPrefix + "r-1", user: EnrollUsername, pass: "enr-0000"}, connBadToken)
		r.refused(t, tr+": enrolling client without a password", rogueDial{transport: tr, clientID: EnrollClientPrefix + "r-1"}, connNoCredentials)
		r.refused(t, tr+": enrolling client with a device's user name", rogueDial{transport: tr, clientID: EnrollClientPrefix + "r-1", user: victim, pass: h.token}, connMismatch)
	}
	if _, err := h.svc.RotateEnrollmentToken(); err != nil {
		t.Fatal(err)
	}
	r.refused(t, "enrolling client with the token before its rotation", rogueDial{transport: "tls", clientID: EnrollClientPrefix + "r-1", user: EnrollUsername, pass: h.token}, connBadToken)
}

// renewVictim moves the clock 15 days before the victim's certificate
// expires, inside the renewal window, and has the victim check in with a
// renewal request; it returns the new key and the answer.
func (r *rogueSetup) renewVictim(t *testing.T) (*ecdsa.PrivateKey, *protocol.CheckInResponse) {
	t.Helper()
	r.h.clock.Advance(365*24*time.Hour - 15*24*time.Hour)
	key, csr, _ := NewDeviceKeyAndCSR()
	out := r.h.send(protocol.UplinkTopic("contoso", r.victim), &protocol.CheckIn{Reason: protocol.CheckInScheduled,
		CertificateExpiry: protocol.At(testStart.Add(365 * 24 * time.Hour)), RenewalCSR: csr}, r.victim)
	return key, decodeOne[*protocol.CheckInResponse](t, out, protocol.DownlinkTopic("contoso", r.victim))
}

// TestRogueRevoked: a certificate that a renewal replaced, and every
// credential of a retired device, are refused; so is an expired one.
func TestRogueRevoked(t *testing.T) {
	r := newRogueSetup(t)
	h := r.h
	oldToken := r.token(r.victim)

	key, resp := r.renewVictim(t)
	if len(resp.Certificate) == 0 || resp.ConnectToken == "" || resp.ConnectToken == oldToken {
		t.Fatalf("renewal answered certificate %d bytes, connect token %q; want both, new", len(resp.Certificate), resp.ConnectToken)
	}
	renewed := tls.Certificate{Certificate: [][]byte{resp.Certificate}, PrivateKey: key}

	// Until the device uses its new certificate, the old one still works
	// (the answer may have been lost); after, it is revoked.
	r.admitted(t, "old certificate before the new one is used", rogueDial{transport: "tls", clientID: r.victim, cert: &r.victimCert})
	r.admitted(t, "renewed certificate", rogueDial{transport: "tls", clientID: r.victim, cert: &renewed})
	r.refused(t, "certificate replaced by a renewal", rogueDial{transport: "tls", clientID: r.victim, cert: &r.victimCert}, connRevoked)
	r.refused(t, "connect token of the replaced certificate", rogueDial{transport: "tcp", clientID: r.victim, user: r.victim, pass: oldToken}, connBadToken)
	r.admitted(t, "connect token of the renewed certificate", rogueDial{transport: "tcp", clientID: r.victim, user: r.victim, pass: resp.ConnectToken})

	// Retired: no credential of the device works any more.
	cmd, err := h.svc.IssueCommand(r.own, protocol.CommandRetire, "")
	if err != nil {
		t.Fatal(err)
	}
	r.admitted(t, "device before it is retired", rogueDial{transport: "tls", clientID: r.own, cert: &r.ownCert})
	h.send(protocol.UplinkTopic("contoso", r.own), &protocol.CommandResult{ID: cmd.ID, Status: protocol.CommandDone,
		Completed: protocol.At(h.clock.Now())}, r.own)
	if st := h.record(r.own).State; st != DeviceRetired {
		t.Fatalf("device state %s after the retire was acknowledged; want retired", st)
	}
	r.refused(t, "retired device's certificate", rogueDial{transport: "tls", clientID: r.own, cert: &r.ownCert}, connNotManaged)
	r.refused(t, "retired device's connect token", rogueDial{transport: "memory", clientID: r.own, user: r.own,
		pass: r.token(r.own)}, connNotManaged)

	// Expired: the renewed certificate, a year on.
	h.clock.Advance(366 * 24 * time.Hour)
	r.refused(t, "expired certificate", rogueDial{transport: "tls", clientID: r.victim, cert: &renewed}, connExpired)
	r.refused(t, "expired certificate, replaced long ago", rogueDial{transport: "tls", clientID: r.victim, cert: &r.victimCert}, connExpired)
	r.refused(t, "connect token of an expired certificate", rogueDial{transport: "tcp", clientID: r.victim, user: r.victim, pass: resp.ConnectToken}, connExpired)
}

// TestRogueTopics: an authenticated device reaching for another device's
// topics, or for everything.
func TestRogueTopics(t *testing.T) {
	r := newRogueSetup(t)
	h := r.h
	for _, tr := range []string{"tls", "memory"} {
		d := rogueDial{transport: tr, clientID: r.own, user: r.own, pass: r.token(r.own)}
		if tr == "tls" {
			d = rogueDial{transport: tr, clientID: r.own, cert: &r.ownCert}
		}
		c, msgs, err := r.dial(t, d)
		if err != nil {
			t.Fatalf("%s: the attacker's own device: %v", tr, err)
		}
		if qos := subscribe(t, c, protocol.DownlinkTopic("contoso", r.own)); qos != 1 {
			t.Fatalf("%s: subscribe to its own downlink: granted %d (control)", tr, qos)
		}
		for _, topic := range []string{
			protocol.DownlinkTopic("contoso", r.victim), "#", "mdm/#", "mdm/v1/contoso/dev/+/down",
			"mdm/v1/contoso/dev/+/up", protocol.UplinkTopic("contoso", r.victim), "$SYS/#",
			"mdm/v1/contoso/enroll/+/resp", protocol.DownlinkTopic("fabrikam", r.own),
			protocol.UplinkTopic("contoso", r.own), protocol.EnrollResponseTopic("contoso", "r-1"),
		} {
			denied := h.svc.metrics.aclDenied.Load()
			if qos := subscribe(t, c, topic); qos != 0x80 {
				t.Errorf("%s: subscribe to %s: granted %d; want refused (128)", tr, topic, qos)
			}
			if h.svc.metrics.aclDenied.Load() == denied && topic != "$SYS/#" {
				t.Errorf("%s: subscribe to %s: refusal not counted", tr, topic)
			}
		}
		// The service answers the victim: nothing reaches the attacker.
		push, err := h.svc.encode(r.victim, protocol.MessageID{}, &protocol.Push{Epoch: 1, Reason: protocol.PushAuthorityChange})
		if err != nil {
			t.Fatal(err)
		}
		r.b.publish([]Outgoing{{Topic: protocol.DownlinkTopic("contoso", r.victim), QoS: 1, Payload: push}})
		own, _ := h.svc.encode(r.own, protocol.MessageID{}, &protocol.Push{Epoch: 1, Reason: protocol.PushAuthorityChange})
		r.b.publish([]Outgoing{{Topic: protocol.DownlinkTopic("contoso", r.own), QoS: 1, Payload: own}})
		select {
		case m := <-msgs:
			if m.Topic() != protocol.DownlinkTopic("contoso", r.own) {
				t.Errorf("%s: the attacker received a message on %s", tr, m.Topic())
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: its own push did not arrive (control)", tr)
		}
		c.Disconnect(50)
	}
}

// TestRogueImpersonation: publishing a check-in as another device, on its
// topic or with its id in the envelope.
func TestRogueImpersonation(t *testing.T) {
	r := newRogueSetup(t)
	h := r.h
	c, _, err := r.dial(t, rogueDial{transport: "tls", clientID: r.own, cert: &r.ownCert})
	if err != nil {
		t.Fatal(err)
	}
	forged := &protocol.CheckIn{Reason: protocol.CheckInManual, CertificateExpiry: protocol.At(testStart.Add(365 * 24 * time.Hour)),
		OSVersion: "6.6.6", Compliance: protocol.Compliance{State: protocol.ComplianceCompliant}}
	wait := func(cond func() bool) bool {
		for range 200 {
			if cond() {
				return true
			}
			time.Sleep(10 * time.Millisecond)
		}
		return false
	}

	before := r.snapshot(t)
	denied := h.svc.metrics.aclDenied.Load()
	id, _ := protocol.NewMessageID(h.rng)
	payload, err := protocol.Encode(protocol.Envelope{ID: id, Sent: protocol.At(h.clock.Now()), Device: r.victim, Body: forged})
	if err != nil {
		t.Fatal(err)
	}
	// The broker drops the publish and the connection with it.
	c.Publish(protocol.UplinkTopic("contoso", r.victim), 1, false, payload).WaitTimeout(5 * time.Second)
	if !wait(func() bool { return h.svc.metrics.aclDenied.Load() > denied }) {
		t.Error("publish on the victim's uplink: refusal not counted")
	}
	if c, _, err = r.dial(t, rogueDial{transport: "tls", clientID: r.own, cert: &r.ownCert}); err != nil {
		t.Fatal(err)
	}

	mismatch := h.svc.metrics.dropped[dropDevice].Load()
	publish(t, h, c, protocol.UplinkTopic("contoso", r.own), r.victim, forged)
	if !wait(func() bool { return h.svc.metrics.dropped[dropDevice].Load() > mismatch }) {
		t.Error("check-in on its own uplink naming the victim: not dropped as device_mismatch")
	}
	if after := r.snapshot(t); after != before {
		t.Errorf("the victim's record changed:\n%s\n%s", before, after)
	}

	// A retained message, even on its own uplink, is refused: it would
	// reach whoever subscribes later, long after its sender left.
	if c, _, err = r.dial(t, rogueDial{transport: "tls", clientID: r.own, cert: &r.ownCert}); err != nil {
		t.Fatal(err)
	}
	denied = h.svc.metrics.aclDenied.Load()
	retained := *forged
	retained.OSVersion = "7.7.7"
	id, _ = protocol.NewMessageID(h.rng)
	payload, _ = protocol.Encode(protocol.Envelope{ID: id, Sent: protocol.At(h.clock.Now()), Device: r.own, Body: &retained})
	// No acknowledgement comes for a refused message: give the publish a
	// moment to leave, and let the wait below see the refusal.
	c.Publish(protocol.UplinkTopic("contoso", r.own), 1, true, payload).WaitTimeout(500 * time.Millisecond)
	if !wait(func() bool { return h.svc.metrics.aclDenied.Load() > denied }) {
		t.Error("a retained publish on its own uplink: refusal not counted")
	}
	if h.record(r.own).OSVersion == "7.7.7" {
		t.Error("a retained check-in was applied")
	}
	if c, _, err = r.dial(t, rogueDial{transport: "tls", clientID: r.own, cert: &r.ownCert}); err != nil {
		t.Fatal(err)
	}

	// Control: the same check-in as itself, not retained, is applied.
	publish(t, h, c, protocol.UplinkTopic("contoso", r.own), r.own, forged)
	if !wait(func() bool { return h.record(r.own).OSVersion == "6.6.6" }) {
		t.Error("the attacker's check-in as itself was not applied (control)")
	}
}

// TestRogueRemoved: a device an admin removed loses its session at once
// and cannot connect again with any credential.
func TestRogueRemoved(t *testing.T) {
	r := newRogueSetup(t)
	c, _, err := r.dial(t, rogueDial{transport: "tls", clientID: r.victim, cert: &r.victimCert})
	if err != nil {
		t.Fatal(err)
	}
	token := r.token(r.victim)
	if err := r.h.svc.RemoveDevice(r.victim); err != nil {
		t.Fatal(err)
	}
	for i := 0; c.IsConnectionOpen(); i++ {
		if i == 500 {
			t.Fatal("the removed device's session is still open after 5 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	count := r.refusals(connNotManaged)
	for _, d := range []rogueDial{
		{transport: "tls", clientID: r.victim, cert: &r.victimCert},
		{transport: "tcp", clientID: r.victim, user: r.victim, pass: token},
	} {
		if _, _, err := r.dial(t, d); err == nil {
			t.Errorf("removed device connected over %s", d.transport)
		}
	}
	if got := r.refusals(connNotManaged); got != count+2 {
		t.Errorf("not_managed refusals went from %d to %d; want 2 more", count, got)
	}
	r.admitted(t, "another device (control)", rogueDial{transport: "tls", clientID: r.own, cert: &r.ownCert})
}

// TestRogueTopicsPublish: a device publishing on its own downlink, and an
// enrolling client reaching past its own request.
func TestRogueTopicsPublish(t *testing.T) {
	r := newRogueSetup(t)
	h := r.h
	refusedPublish := func(c paho.Client, topic string) {
		t.Helper()
		denied := h.svc.metrics.aclDenied.Load()
		c.Publish(topic, 1, false, []byte("x")).WaitTimeout(5 * time.Second)
		for i := 0; h.svc.metrics.aclDenied.Load() == denied; i++ {
			if i == 500 {
				t.Errorf("publish on %s: not refused", topic)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	c, _, err := r.dial(t, rogueDial{transport: "tls", clientID: r.own, cert: &r.ownCert})
	if err != nil {
		t.Fatal(err)
	}
	refusedPublish(c, protocol.DownlinkTopic("contoso", r.own))

	enroller := rogueDial{transport: "memory", clientID: EnrollClientPrefix + "r-1", user: EnrollUsername, pass: h.token}
	c, _, err = r.dial(t, enroller)
	if err != nil {
		t.Fatal(err)
	}
	if qos := subscribe(t, c, protocol.EnrollResponseTopic("contoso", "r-1")); qos != 1 {
		t.Errorf("enrolling client subscribing to its own response: granted %d (control)", qos)
	}
	for _, topic := range []string{protocol.EnrollRequestTopic("contoso", "r-1"), protocol.EnrollResponseTopic("contoso", "r-2"), "mdm/v1/contoso/enroll/#"} {
		if qos := subscribe(t, c, topic); qos != 0x80 {
			t.Errorf("enrolling client subscribing to %s: granted %d; want refused (128)", topic, qos)
		}
	}
	refusedPublish(c, protocol.EnrollRequestTopic("contoso", "r-2"))
}

// TestRoguePreviousCertificateExpires: the certificate a renewal replaced,
// never superseded by a connection with the new one, still ends at its own
// expiry.
func TestRoguePreviousCertificateExpires(t *testing.T) {
	r := newRogueSetup(t)
	h := r.h
	oldToken := r.token(r.victim)
	if _, resp := r.renewVictim(t); len(resp.Certificate) == 0 {
		t.Fatal("no renewal")
	}
	r.admitted(t, "replaced certificate's token before it expires", rogueDial{transport: "tcp", clientID: r.victim, user: r.victim, pass: oldToken})
	h.clock.Advance(16 * 24 * time.Hour)
	r.refused(t, "replaced certificate's token after it expired", rogueDial{transport: "tcp", clientID: r.victim, user: r.victim, pass: oldToken}, connExpired)
}

// TestConnectTokenBinding: a connect token is bound to its tenant, device
// and certificate serial, and to the CA.
func TestConnectTokenBinding(t *testing.T) {
	dir := t.TempDir()
	ca, _, err := LoadOrCreateCA(dir, "contoso", testStart)
	if err != nil {
		t.Fatal(err)
	}
	other, _, err := LoadOrCreateCA(t.TempDir(), "contoso", testStart)
	if err != nil {
		t.Fatal(err)
	}
	tok := ca.ConnectToken("contoso", "d-1", "abc")
	if !ca.CheckConnectToken("contoso", "d-1", "abc", tok) {
		t.Fatal("a token does not check against what it was made of (control)")
	}
	for _, c := range []struct{ tenant, device, serial string }{
		{"fabrikam", "d-1", "abc"}, {"contoso", "d-2", "abc"}, {"contoso", "d-1", "abd"}, {"contoso", "d-1", ""},
		{"contoso", "d-1a", "bc"}, {"contosod-1", "", "abc"},
	} {
		if ca.CheckConnectToken(c.tenant, c.device, c.serial, tok) {
			t.Errorf("token of contoso/d-1/abc accepted for %q/%q/%q", c.tenant, c.device, c.serial)
		}
	}
	if other.CheckConnectToken("contoso", "d-1", "abc", tok) {
		t.Error("a token accepted by another CA")
	}
	if ca.CheckConnectToken("contoso", "d-1", "abc", tok[:len(tok)-1]) || ca.CheckConnectToken("contoso", "d-1", "abc", tok+"A") {
		t.Error("a truncated or extended token accepted")
	}
	// Reloaded from its files, the CA makes the same tokens: they survive
	// a restart.
	again, _, err := LoadOrCreateCA(dir, "contoso", testStart)
	if err != nil {
		t.Fatal(err)
	}
	if !again.CheckConnectToken("contoso", "d-1", "abc", tok) {
		t.Error("a token no longer checks after the CA is reloaded")
	}
}
