package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/mdm-authority/mdm/agent"
	"github.com/mdm-authority/mdm/broker"
	"github.com/mdm-authority/mdm/fleetsim"
	"github.com/mdm-authority/mdm/protocol"
)

// The interop tests against Mosquitto 2: the configuration in
// scripts/mosquitto, rendered as scripts/mosquitto/run does, a Mosquitto
// on free loopback ports, and the service as its client (mdm-broker serve
// --mqtt-url). They need the mosquitto and mosquitto_passwd commands
// (Debian: apt-get install -y mosquitto) and skip without them.

const mosqTenant = "contoso"

// mosquittoCommand returns the path of a Mosquitto command: on PATH, or in
// /usr/sbin, where Debian puts the broker. It skips the test without it.
func mosquittoCommand(t *testing.T, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/usr/bin"} {
		if p := filepath.Join(dir, name); fileExists(p) {
			return p
		}
	}
	t.Skipf("%s not found: install Mosquitto 2 to run the interop tests (Debian: apt-get install -y mosquitto), then go test ./cmd/fleetsim -run Mosquitto", name)
	return ""
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// freeAddr returns a loopback address with a port that was free a moment
// ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// lockedBuffer collects a process's or a logger's output for the test's
// log.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// mosq is a running Mosquitto.
type mosq struct {
	devices, enroll string // host:port of the devices' and the enrollment listener
	dir             string
	cmd             *exec.Cmd
	log             *lockedBuffer
}

// startMosquitto renders scripts/mosquitto's configuration for tenant
// mosqTenant and the CA ca (whose certificate is in data), starts
// Mosquitto and waits until both listeners accept connections. The
// password file is empty: no enrolling client is admitted until
// setEnrollmentToken.
func startMosquitto(t *testing.T, data string, ca *broker.CA) *mosq {
	t.Helper()
	bin := mosquittoCommand(t, "mosquitto")
	mosquittoCommand(t, "mosquitto_passwd")
	m := &mosq{dir: filepath.Join(t.TempDir(), "mosquitto"), devices: freeAddr(t), enroll: freeAddr(t), log: &lockedBuffer{}}
	if err := os.MkdirAll(m.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := ca.WriteServerCertificate([]string{"localhost", "127.0.0.1"}, time.Now(), 24*time.Hour,
		filepath.Join(m.dir, "server.crt"), filepath.Join(m.dir, "server.key")); err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(filepath.Join(data, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(m.dir, "ca.crt"), caPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(m.dir, "passwd"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(m.devices)
	_, enrollPort, _ := net.SplitHostPort(m.enroll)
	r := strings.NewReplacer("@DIR@", m.dir, "@TENANT@", mosqTenant, "@PORT@", port, "@ENROLL_PORT@", enrollPort,
		"@BIND@", "127.0.0.1", "@USER@", u.Username)
	for _, f := range []string{"mosquitto.conf", "acl-devices", "acl-enroll"} {
		tmpl, err := os.ReadFile(filepath.Join("..", "..", "scripts", "mosquitto", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(m.dir, f), []byte(r.Replace(string(tmpl))), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	m.cmd = exec.Command(bin, "-c", filepath.Join(m.dir, "mosquitto.conf"))
	m.cmd.Stdout, m.cmd.Stderr = m.log, m.log
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- m.cmd.Wait() }()
	t.Cleanup(func() {
		m.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			m.cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("mosquitto's log:\n%s", m.log.String())
		}
	})
	for _, addr := range []string{m.devices, m.enroll} {
		for deadline := time.Now().Add(10 * time.Second); ; {
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err == nil {
				c.Close()
				break
			}
			select {
			case err := <-exited:
				t.Fatalf("mosquitto exited: %v\n%s", err, m.log.String())
			case <-time.After(20 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				t.Fatalf("mosquitto does not listen on %s after 10 s:\n%s", addr, m.log.String())
			}
		}
	}
	return m
}

// setEnrollmentToken writes the password of the user "enroll" as
// scripts/mosquitto/run passwd does (a plain file that mosquitto_passwd
// -U hashes in place) and has Mosquitto reload it.
func (m *mosq) setEnrollmentToken(t *testing.T, token string) {
	t.Helper()
	tmp := filepath.Join(m.dir, "passwd.tmp")
	if err := os.WriteFile(tmp, []byte("enroll:"+token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(mosquittoCommand(t, "mosquitto_passwd"), "-U", tmp).CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_passwd -U: %v: %s", err, out)
	}
	if err := os.Rename(tmp, filepath.Join(m.dir, "passwd")); err != nil {
		t.Fatal(err)
	}
	if err := m.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
}

// mosqService is the service running as a client of a Mosquitto.
type mosqService struct {
	m     *mosq
	info  broker.ServerInfo
	admin *broker.AdminClient
	ca    *broker.CA
	token string
	roots *x509.CertPool
	log   *lockedBuffer
}

// startMosquittoService starts a Mosquitto and the service against it
// (on clock, nil for the real one), admits enrolling clients with the
// service's enrollment token and waits until one can connect.
func startMosquittoService(t *testing.T, clock broker.Clock, pushRate int) *mosqService {
	t.Helper()
	data := filepath.Join(t.TempDir(), "svc")
	now := time.Now()
	if clock != nil {
		now = clock.Now()
	}
	ca, _, err := broker.LoadOrCreateCA(data, mosqTenant, now)
	if err != nil {
		t.Fatal(err)
	}
	s := &mosqService{m: startMosquitto(t, data, ca), ca: ca, roots: ca.Pool(), log: &lockedBuffer{}}
	ready := make(chan broker.ServerInfo, 1)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() {
		served <- broker.RunServer(ctx, broker.ServerConfig{DataDir: data, Tenant: mosqTenant,
			MQTTURL: "tls://" + s.m.devices, AdminAddr: "127.0.0.1:0", PushRate: pushRate, Clock: clock,
			Logger: slog.New(slog.NewTextHandler(s.log, &slog.HandlerOptions{Level: slog.LevelInfo})),
			Ready:  func(i broker.ServerInfo) { ready <- i }})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("service: %v", err)
		}
		if t.Failed() {
			t.Logf("the service's log:\n%s", s.log.String())
		}
	})
	select {
	case s.info = <-ready:
	case err := <-served:
		t.Fatalf("service: %v\nmosquitto's log:\n%s", err, s.m.log.String())
	case <-time.After(30 * time.Second):
		t.Fatal("the service did not start within 30 s")
	}
	if s.info.MQTTURL != "tls://"+s.m.devices || s.info.MQTTAddr != nil {
		t.Errorf("server info MQTT %q, %v; want the external broker tls://%s and no listener", s.info.MQTTURL, s.info.MQTTAddr, s.m.devices)
	}
	tok, err := os.ReadFile(s.info.EnrollmentTokenFile)
	if err != nil {
		t.Fatal(err)
	}
	s.token = strings.TrimSpace(string(tok))
	if s.admin, err = broker.NewAdminClient(s.info.AdminURL, s.info.AdminTokenFile); err != nil {
		t.Fatal(err)
	}
	s.m.setEnrollmentToken(t, s.token)
	// Mosquitto reloads the password file in the background.
	for deadline := time.Now().Add(10 * time.Second); ; {
		c, _, err := s.dial(t, mqttDial{addr: s.m.enroll, clientID: "enroll-ready", user: broker.EnrollUsername, pass: s.token})
		if err == nil {
			c.Disconnect(0)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("enrolling client still refused 10 s after the password file was reloaded: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return s
}

// mqttDial is one connection attempt.
type mqttDial struct {
	addr                 string
	clientID, user, pass string
	cert                 *tls.Certificate
}

// dial connects a paho client as d describes and returns it with the
// messages it receives, or Mosquitto's refusal.
func (s *mosqService) dial(t *testing.T, d mqttDial) (paho.Client, chan paho.Message, error) {
	t.Helper()
	msgs := make(chan paho.Message, 16)
	cfg := &tls.Config{RootCAs: s.roots, ServerName: "localhost", MinVersion: tls.VersionTLS12}
	if d.cert != nil {
		cfg.Certificates = []tls.Certificate{*d.cert}
	}
	opts := paho.NewClientOptions().AddBroker("tls://" + d.addr).SetTLSConfig(cfg).SetClientID(d.clientID).
		SetCleanSession(true).SetProtocolVersion(4).SetAutoReconnect(false).SetConnectRetry(false).
		SetConnectTimeout(5 * time.Second).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) {
			select {
			case msgs <- m:
			default:
			}
		})
	if d.user != "" || d.pass != "" {
		opts.SetUsername(d.user).SetPassword(d.pass)
	}
	c := paho.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		return nil, nil, errors.New("connect: timed out")
	}
	if tok.Error() != nil {
		return nil, nil, tok.Error()
	}
	t.Cleanup(func() { c.Disconnect(0) })
	return c, msgs, nil
}

// subscribeQoS subscribes and returns the granted QoS (0x80: refused).
func subscribeQoS(t *testing.T, c paho.Client, filter string) byte {
	t.Helper()
	tok := c.Subscribe(filter, 1, nil)
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe %s: %v", filter, tok.Error())
	}
	return tok.(*paho.SubscribeToken).Result()[filter]
}

// send publishes body from device on topic (QoS 1).
func send(t *testing.T, c paho.Client, topic, device string, body protocol.Body) protocol.MessageID {
	t.Helper()
	id, err := protocol.NewMessageID(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	payload, err := protocol.Encode(protocol.Envelope{ID: id, Sent: protocol.At(time.Now()), Device: device, Body: body})
	if err != nil {
		t.Fatal(err)
	}
	if tok := c.Publish(topic, 1, false, payload); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publish %s: %v", topic, tok.Error())
	}
	return id
}

// answer waits up to wait for the answer to the message id among msgs.
func answer(t *testing.T, msgs chan paho.Message, id protocol.MessageID, wait time.Duration) (protocol.Body, error) {
	t.Helper()
	deadline := time.After(wait)
	for {
		select {
		case m := <-msgs:
			env, err := protocol.Decode(m.Payload())
			if err == nil && env.ReplyTo == id {
				return env.Body, nil
			}
		case <-deadline:
			return nil, fmt.Errorf("no answer within %s", wait)
		}
	}
}

// mosqDevice is a device enrolled through Mosquitto.
type mosqDevice struct {
	id   string
	cert tls.Certificate
}

// enroll enrolls a device through the enrollment listener, as an agent
// does.
func (s *mosqService) enroll(t *testing.T, platform protocol.Platform, upn string) mosqDevice {
	t.Helper()
	key, csr, err := broker.NewDeviceKeyAndCSR()
	if err != nil {
		t.Fatal(err)
	}
	var r [8]byte
	rand.Read(r[:])
	request := hex.EncodeToString(r[:])
	c, msgs, err := s.dial(t, mqttDial{addr: s.m.enroll, clientID: protocol.EnrollClientPrefix + request, user: broker.EnrollUsername, pass: s.token})
	if err != nil {
		t.Fatalf("enrolling client: %v", err)
	}
	defer c.Disconnect(0)
	if qos := subscribeQoS(t, c, protocol.EnrollResponseTopic(mosqTenant, request)); qos != 1 {
		t.Fatalf("enrolling client: subscribe to its answer: granted %d", qos)
	}
	typ := protocol.EnrollUser
	if upn == "" {
		typ = protocol.EnrollBulk
	}
	id := send(t, c, protocol.EnrollRequestTopic(mosqTenant, request), "",
		&protocol.EnrollRequest{CSR: csr, Token: s.token, Platform: platform, User: upn, Type: typ, Name: "interop", OSVersion: "14"})
	body, err := answer(t, msgs, id, 20*time.Second)
	if err != nil {
		t.Fatalf("enroll: %v", err)
	}
	resp := body.(*protocol.EnrollResponse)
	if resp.Error != protocol.CodeNone {
		t.Fatalf("enroll: %s", resp.Error)
	}
	return mosqDevice{id: resp.Device, cert: tls.Certificate{Certificate: [][]byte{resp.Certificate}, PrivateKey: key}}
}

// checkIn sends a check-in of d reporting osVersion through c and returns
// the answer.
func checkIn(t *testing.T, c paho.Client, msgs chan paho.Message, d mosqDevice, osVersion string) (*protocol.CheckInResponse, error) {
	t.Helper()
	return checkInWithin(t, c, msgs, d, osVersion, 20*time.Second)
}

func checkInWithin(t *testing.T, c paho.Client, msgs chan paho.Message, d mosqDevice, osVersion string, wait time.Duration) (*protocol.CheckInResponse, error) {
	t.Helper()
	id := send(t, c, protocol.UplinkTopic(mosqTenant, d.id), d.id, checkInBody(osVersion))
	body, err := answer(t, msgs, id, wait)
	if err != nil {
		return nil, err
	}
	return body.(*protocol.CheckInResponse), nil
}

func checkInBody(osVersion string) *protocol.CheckIn {
	return &protocol.CheckIn{Reason: protocol.CheckInManual, CertificateExpiry: protocol.At(time.Now().Add(300 * 24 * time.Hour)),
		OSVersion: osVersion, Compliance: protocol.Compliance{State: protocol.ComplianceCompliant}}
}

// osVersion returns the OS version the service has for a device, "" for
// a device it does not know.
func (s *mosqService) osVersion(t *testing.T, device string) string {
	t.Helper()
	var r struct {
		Device broker.Device `json:"device"`
	}
	err := s.admin.Do(context.Background(), "GET", "/v1/devices/"+device, nil, &r)
	var ae *broker.AdminError
	if errors.As(err, &ae) && ae.Status == 404 {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	return r.Device.OSVersion
}

// connectDevice connects d with its certificate and subscribes to its
// downlink.
func (s *mosqService) connectDevice(t *testing.T, d mosqDevice) (paho.Client, chan paho.Message) {
	t.Helper()
	c, msgs, err := s.dial(t, mqttDial{addr: s.m.devices, clientID: d.id, cert: &d.cert})
	if err != nil {
		t.Fatalf("device %s with its certificate: %v", d.id, err)
	}
	if qos := subscribeQoS(t, c, protocol.DownlinkTopic(mosqTenant, d.id)); qos != 1 {
		t.Fatalf("device %s: subscribe to its own downlink: granted %d", d.id, qos)
	}
	return c, msgs
}

// forgedCert makes a certificate that looks like a device certificate
// for Mosquitto (common name = the device, organisation = the tenant) but
// is signed by its own key; it is valid from notBefore for a day.
func forgedCert(t *testing.T, device string, notBefore time.Time) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: device, Organization: []string{mosqTenant}},
		NotBefore: notBefore, NotAfter: notBefore.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestMosquittoRogue runs the cases of the rogue-client suite
// (broker/rogue_test.go) that apply to Mosquitto against the
// configuration in scripts/mosquitto, each beside a control that is
// admitted. What Mosquitto does not know about (revoked, retired or
// removed devices) is the service's to refuse: see
// TestMosquittoRemovedDevice.
//
// Mosquitto 2.0 with an acl_file grants every subscription and checks each
// message against the subscriber's read access as it delivers it, so the
// topic cases subscribe, make traffic on every topic and check what
// arrives.
func TestMosquittoRogue(t *testing.T) {
	s := startMosquittoService(t, nil, 100)
	if err := s.admin.Do(context.Background(), "PUT", "/v1/authority", map[string]string{"mode": "intune"}, nil); err != nil {
		t.Fatal(err)
	}
	victim := s.enroll(t, protocol.PlatformWindows, "ada@contoso.example")
	own := s.enroll(t, protocol.PlatformAndroid, "eve@contoso.example")

	t.Run("connect", func(t *testing.T) {
		otherCA, _, err := broker.LoadOrCreateCA(t.TempDir(), "fabrikam", time.Now())
		if err != nil {
			t.Fatal(err)
		}
		key, csr, _ := broker.NewDeviceKeyAndCSR()
		der, _, err := otherCA.SignDevice(csr, mosqTenant, victim.id, time.Now(), 24*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		otherCACert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
		der, _, err = s.ca.SignDevice(csr, mosqTenant, victim.id, time.Now().Add(-48*time.Hour), 24*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		expired := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
		selfSigned := forgedCert(t, victim.id, time.Now().Add(-time.Hour))
		connectToken := "dct-" + strings.Repeat("A", 43)

		for _, c := range []struct {
			name  string
			d     mqttDial
			admit bool
		}{
			{"victim with its certificate (control)", mqttDial{addr: s.m.devices, clientID: victim.id, cert: &victim.cert}, true},
			{"no certificate", mqttDial{addr: s.m.devices, clientID: victim.id}, false},
			{"a connect token instead of a certificate", mqttDial{addr: s.m.devices, clientID: victim.id, user: victim.id, pass: connectToken}, false},
			{"the enrollment token on the devices' listener", mqttDial{addr: s.m.devices, clientID: "enroll-r1", user: broker.EnrollUsername, pass: s.token}, false},
			{"self-signed certificate naming the victim", mqttDial{addr: s.m.devices, clientID: victim.id, cert: &selfSigned}, false},
			{"another CA's certificate naming the victim", mqttDial{addr: s.m.devices, clientID: victim.id, cert: &otherCACert}, false},
			{"this CA's certificate, expired", mqttDial{addr: s.m.devices, clientID: victim.id, cert: &expired}, false},
			{"enrolling client with the token (control)", mqttDial{addr: s.m.enroll, clientID: "enroll-r1", user: broker.EnrollUsername, pass: s.token}, true},
			{"enrolling client with a wrong token", mqttDial{addr: s.m.enroll, clientID: "enroll-r1", user: broker.EnrollUsername, pass: "enr-0000"}, false},
			{"enrolling client without a password", mqttDial{addr: s.m.enroll, clientID: "enroll-r1", user: broker.EnrollUsername}, false},
			{"enrolling client with no user name", mqttDial{addr: s.m.enroll, clientID: "enroll-r1"}, false},
			{"enrolling listener: a device's user name and the token", mqttDial{addr: s.m.enroll, clientID: "enroll-r1", user: victim.id, pass: s.token}, false},
			{"enrolling listener: the service's user name and the token", mqttDial{addr: s.m.enroll, clientID: "enroll-r1", user: broker.ServiceIdentity, pass: s.token}, false},
			{"enrolling listener: a device certificate without a password", mqttDial{addr: s.m.enroll, clientID: victim.id, cert: &victim.cert}, false},
		} {
			cl, _, err := s.dial(t, c.d)
			switch {
			case c.admit && err != nil:
				t.Errorf("%s: refused: %v", c.name, err)
			case !c.admit && err == nil:
				cl.Disconnect(0)
				t.Errorf("%s: connected; want refused", c.name)
			case err == nil:
				cl.Disconnect(0)
			}
		}
	})

	// The victim, connected and subscribed to its downlink, and the
	// attacker's own device, subscribed to everything it can think of.
	vc, vmsgs := s.connectDevice(t, victim)
	// The attacker's certificate with the victim's client id: Mosquitto
	// makes the client id the certificate's name, so it connects as
	// itself and the victim keeps its session (the embedded broker
	// refuses the connection).
	if ic, _, err := s.dial(t, mqttDial{addr: s.m.devices, clientID: victim.id, cert: &own.cert}); err != nil {
		t.Errorf("own certificate, victim's client id: %v; want admitted as itself", err)
	} else {
		ic.Disconnect(0)
	}
	if !vc.IsConnectionOpen() {
		t.Fatal("own certificate, victim's client id: the victim's session ended")
	}
	c, msgs := s.connectDevice(t, own)
	for _, topic := range []string{
		protocol.DownlinkTopic(mosqTenant, victim.id), "#", "mdm/#", "mdm/v1/contoso/dev/+/down",
		"mdm/v1/contoso/dev/+/up", protocol.UplinkTopic(mosqTenant, victim.id), "$SYS/#",
		"mdm/v1/contoso/enroll/+/resp", "mdm/v1/contoso/enroll/+/req", "mdm/v1/+/dev/" + own.id + "/down",
		protocol.DownlinkTopic("fabrikam", own.id), protocol.UplinkTopic(mosqTenant, own.id),
	} {
		subscribeQoS(t, c, topic) // granted or refused: what counts is what arrives
	}

	// And an enrolling client, subscribed to everything.
	ec, emsgs, err := s.dial(t, mqttDial{addr: s.m.enroll, clientID: "enroll-r3", user: broker.EnrollUsername, pass: s.token})
	if err != nil {
		t.Fatal(err)
	}
	subscribeQoS(t, ec, "#")

	// The attacker publishes as the victim on its uplink, as the service
	// on the victim's downlink, and an enrollment request from the
	// devices' listener: Mosquitto drops all three (MQTT 3.1.1 has no
	// way to say so). The enrolling client publishes a check-in as the
	// victim.
	send(t, c, protocol.UplinkTopic(mosqTenant, victim.id), victim.id, checkInBody("6.6.6"))
	send(t, c, protocol.DownlinkTopic(mosqTenant, victim.id), victim.id, &protocol.Push{Epoch: 1, Reason: protocol.PushAuthorityChange})
	_, csr, _ := broker.NewDeviceKeyAndCSR()
	send(t, c, protocol.EnrollRequestTopic(mosqTenant, "r-2"), "", &protocol.EnrollRequest{CSR: csr, Token: s.token,
		Platform: protocol.PlatformAndroid, User: "eve@contoso.example", Type: protocol.EnrollUser, Name: "rogue", OSVersion: "14"})
	send(t, ec, protocol.UplinkTopic(mosqTenant, victim.id), victim.id, checkInBody("8.8.8"))

	// Traffic on every kind of topic: the attacker's own check-in, the
	// victim's, and a third device's enrollment.
	if resp, err := checkIn(t, c, msgs, own, "14.1"); err != nil || resp.Error != protocol.CodeNone {
		t.Fatalf("own check-in: %+v, %v (control)", resp, err)
	}
	if resp, err := checkIn(t, vc, vmsgs, victim, "10.0.2"); err != nil || resp.Error != protocol.CodeNone || resp.Authority != protocol.AuthorityIntune {
		t.Fatalf("victim's check-in: %+v, %v; want answered under intune (control)", resp, err)
	}
	third := s.enroll(t, protocol.PlatformWindows, "bob@contoso.example")
	time.Sleep(300 * time.Millisecond) // for anything still in flight to arrive

	for len(msgs) > 0 {
		if m := <-msgs; m.Topic() != protocol.DownlinkTopic(mosqTenant, own.id) {
			t.Errorf("the attacker's device received a message on %s", m.Topic())
		}
	}
	for len(vmsgs) > 0 {
		m := <-vmsgs
		if env, err := protocol.Decode(m.Payload()); err == nil {
			if _, ok := env.Body.(*protocol.Push); ok {
				t.Error("the victim received the push the attacker published on its downlink")
			}
		}
	}
	if v := s.osVersion(t, victim.id); v != "10.0.2" {
		t.Errorf("victim's OS version %q; want 10.0.2, from its own check-in, not 6.6.6 or 8.8.8 from the attackers'", v)
	}
	// The documented limit of the enrollment listener: an enrolling
	// client reads the enrollment answers of other requests (nothing
	// else), since Mosquitto cannot tie a topic level to its client id.
	answers := 0
	for len(emsgs) > 0 {
		m := <-emsgs
		tp, err := protocol.ParseTopic(m.Topic())
		if err != nil || tp.Kind != protocol.TopicEnrollResponse {
			t.Errorf("the enrolling client received a message on %s", m.Topic())
			continue
		}
		answers++
	}
	if answers == 0 {
		t.Errorf("the enrolling client did not receive %s's enrollment answer: the limit documented in scripts/mosquitto/acl-enroll is gone; update it and the README", third.id)
	}

	// A retained message, even on its own uplink: Mosquitto
	// (retain_available false) closes the connection.
	id, _ := protocol.NewMessageID(rand.Reader)
	payload, _ := protocol.Encode(protocol.Envelope{ID: id, Sent: protocol.At(time.Now()), Device: own.id, Body: checkInBody("7.7.7")})
	c.Publish(protocol.UplinkTopic(mosqTenant, own.id), 1, true, payload).WaitTimeout(2 * time.Second)
	for deadline := time.Now().Add(5 * time.Second); c.IsConnectionOpen(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Error("a retained publish: the connection stays open; want it closed")
			break
		}
	}
	if v := s.osVersion(t, own.id); v == "7.7.7" {
		t.Error("a retained check-in was applied")
	}
}

// TestMosquittoRemovedDevice pins down what an external broker cannot
// do: a removed device keeps its session and Mosquitto admits its
// certificate again (it knows nothing of the service's device records),
// but the service no longer applies anything it sends.
func TestMosquittoRemovedDevice(t *testing.T) {
	s := startMosquittoService(t, nil, 100)
	if err := s.admin.Do(context.Background(), "PUT", "/v1/authority", map[string]string{"mode": "intune"}, nil); err != nil {
		t.Fatal(err)
	}
	d := s.enroll(t, protocol.PlatformAndroid, "ada@contoso.example")
	c, msgs := s.connectDevice(t, d)
	if resp, err := checkIn(t, c, msgs, d, "14.1"); err != nil || resp.Error != protocol.CodeNone {
		t.Fatalf("check-in: %+v, %v (control)", resp, err)
	}
	if err := s.admin.Do(context.Background(), "DELETE", "/v1/devices/"+d.id, nil, nil); err != nil {
		t.Fatal(err)
	}
	if !c.IsConnectionOpen() {
		t.Error("the removed device's session ended; the service cannot end it on an external broker (update the documentation)")
	}
	resp, err := checkInWithin(t, c, msgs, d, "14.2", 5*time.Second)
	if err == nil && resp.Error == protocol.CodeNone {
		t.Errorf("a removed device's check-in was answered %+v; want refused", resp)
	}
	t.Logf("a removed device's check-in: %+v, %v", resp, err)
	if v := s.osVersion(t, d.id); v == "14.2" {
		t.Error("a removed device's check-in was applied")
	}
}

// TestMosquittoReconnect: the service's session taken over (here by an
// enrolling client using its client id, which Mosquitto's enrollment
// listener cannot forbid) comes back by itself, subscriptions and all.
func TestMosquittoReconnect(t *testing.T) {
	s := startMosquittoService(t, nil, 100)
	if err := s.admin.Do(context.Background(), "PUT", "/v1/authority", map[string]string{"mode": "intune"}, nil); err != nil {
		t.Fatal(err)
	}
	d := s.enroll(t, protocol.PlatformAndroid, "ada@contoso.example")
	c, msgs := s.connectDevice(t, d)
	intruder, _, err := s.dial(t, mqttDial{addr: s.m.enroll, clientID: broker.ServiceIdentity, user: broker.EnrollUsername, pass: s.token})
	if err != nil {
		t.Fatalf("enrolling client with the service's client id: %v", err)
	}
	intruder.Disconnect(0)
	for deadline := time.Now().Add(30 * time.Second); ; {
		resp, err := checkInWithin(t, c, msgs, d, "14.3", 2*time.Second)
		if err == nil && resp.Error == protocol.CodeNone {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no check-in answered within 30 s of the service's session being taken over: %v", err)
		}
	}
	if !strings.Contains(s.log.String(), "reconnecting") {
		t.Log("the service's session was not taken over (Mosquitto kept the client ids of its listeners apart)")
	}
}

// TestMosquittoFleet runs the simulator's default scenario (8 virtual
// days) with 500 devices over TLS through Mosquitto against the service
// on a scaled clock, and checks the outcome that the in-process run has:
// every user-bound device moves, every userless one is stranded, the
// canary shows under intune and acknowledges its remote lock, and no old
// profile is retained at the end.
func TestMosquittoFleet(t *testing.T) {
	if testing.Short() {
		t.Skip("the 8-day scenario takes about 3 minutes; without -short it runs")
	}
	if raceDetector {
		t.Skip("on a clock 3,600 times real time the race detector's slowdown would distort the scenario; run it without -race")
	}
	const scale = broker.MaxTimeScale // 8 virtual days in 3 min 12 s
	// Mosquitto checks certificates on real time: the service's time must
	// stay behind it for the whole run, or the device certificates it
	// issues would not be valid yet there.
	clock, err := broker.NewScaledClock(time.Now().Add(-10*24*time.Hour), scale)
	if err != nil {
		t.Fatal(err)
	}
	s := startMosquittoService(t, clock, 2000)
	file := filepath.Join(t.TempDir(), "report.json")
	var out, errOut bytes.Buffer
	code := run(context.Background(), []string{"--devices", "500", "--seed", "7",
		"--mqtt", "tls://" + s.m.devices, "--mqtt-enroll", "tls://" + s.m.enroll,
		"--admin", s.info.AdminURL, "--admin-token", s.info.AdminTokenFile, "--tenant", mosqTenant, "-q", "--report", file}, &out, &errOut)
	if code != 0 {
		t.Fatalf("fleetsim: exit %d: %s", code, errOut.String())
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var r fleetsim.Report
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s", out.String())
	devices := 0
	for _, n := range r.Fleet.ByPlatform {
		devices += n
	}
	m := r.Migration
	if devices != 500 || m.Eligible == 0 || m.Migrated != m.Eligible || m.NotMigrated != 0 || m.StrandedUserless != r.Fleet.Userless {
		t.Errorf("%d devices, migration %+v with %d userless; want 500, every user-bound device moved, every userless one stranded", devices, m, r.Fleet.Userless)
	}
	if r.Profiles.RetainedAtEnd != 0 {
		t.Errorf("profiles %+v; want none retained at the end", r.Profiles)
	}
	if v := r.Validation; v.CanaryAuthority != "intune" || v.RemoteLock != "acknowledged" {
		t.Errorf("validation %+v; want the canary on intune, its lock acknowledged", v)
	}
	if r.Run.Service != "tls://"+s.m.devices {
		t.Errorf("run %+v; want against tls://%s", r.Run, s.m.devices)
	}
}

// TestMosquittoAgent: the device agent enrolls through Mosquitto's
// enrollment listener (--enroll-broker), then runs against its devices'
// listener with its certificate and checks in under the authority.
func TestMosquittoAgent(t *testing.T) {
	s := startMosquittoService(t, nil, 100)
	if err := s.admin.Do(context.Background(), "PUT", "/v1/authority", map[string]string{"mode": "intune"}, nil); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := agent.Enroll(ctx, agent.EnrollOptions{Dir: dir, Broker: "mqtts://" + s.m.devices, EnrollBroker: "mqtts://" + s.m.enroll,
		Tenant: mosqTenant, Token: s.token, CA: s.roots, User: "ada@contoso.example", Platform: protocol.PlatformAndroid, Name: "vm", OSVersion: "14"})
	if err != nil {
		t.Fatalf("enroll through the enrollment listener: %v", err)
	}
	if st.Broker != "mqtts://"+s.m.devices {
		t.Errorf("the agent keeps broker %q; want the devices' listener", st.Broker)
	}
	if _, err := agent.Enroll(ctx, agent.EnrollOptions{Dir: t.TempDir(), Broker: "mqtts://" + s.m.devices,
		Tenant: mosqTenant, Token: s.token, CA: s.roots, User: "bob@contoso.example", Platform: protocol.PlatformAndroid, Timeout: 5 * time.Second}); err == nil {
		t.Error("an enrollment on the devices' listener (no client certificate) succeeded; Mosquitto should refuse it")
	}
	done := make(chan error, 1)
	go func() { done <- agent.Run(ctx, agent.Options{Dir: dir}) }()
	for {
		got, err := agent.LoadState(dir)
		if err == nil && !got.LastCheckIn.IsZero() {
			if got.Authority != protocol.AuthorityIntune {
				t.Errorf("checked in under %s; want intune", got.Authority)
			}
			break
		}
		select {
		case err := <-done:
			t.Fatalf("the agent stopped before a check-in: %v", err)
		case <-ctx.Done():
			t.Fatal("no check-in through Mosquitto within a minute")
		case <-time.After(50 * time.Millisecond):
		}
	}
	cancel()
	<-done
}
