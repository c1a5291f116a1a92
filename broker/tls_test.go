package broker

import (
	"crypto/tls"
	"path/filepath"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/mdm-authority/mdm/protocol"
)

// enrollWithKey enrolls a device and returns its id and its TLS client
// certificate (MDM certificate and private key).
func enrollWithKey(t *testing.T, h *harness, p protocol.Platform) (string, tls.Certificate) {
	t.Helper()
	key, csr, err := NewDeviceKeyAndCSR()
	if err != nil {
		t.Fatal(err)
	}
	req := &protocol.EnrollRequest{CSR: csr, Token: h.token, Platform: p, User: "ada@contoso.example", Type: protocol.EnrollUser}
	out := h.send(protocol.EnrollRequestTopic("contoso", "r-7"), req, "")
	resp := decodeOne[*protocol.EnrollResponse](t, out, protocol.EnrollResponseTopic("contoso", "r-7"))
	if resp.Error != protocol.CodeNone {
		t.Fatalf("enroll: %s", resp.Error)
	}
	return resp.Device, tls.Certificate{Certificate: [][]byte{resp.Certificate}, PrivateKey: key}
}

// dialTLS connects a paho client over TLS and reports whether the broker
// accepted the connection.
func dialTLS(t *testing.T, h *harness, addr, clientID, password string, cert *tls.Certificate) error {
	t.Helper()
	cfg := &tls.Config{RootCAs: h.svc.ca.Pool(), ServerName: "localhost", MinVersion: tls.VersionTLS12}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	opts := paho.NewClientOptions().AddBroker("ssl://" + addr).SetClientID(clientID).
		SetTLSConfig(cfg).SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(5 * time.Second)
	if password != "" {
		opts.SetUsername("enroll").SetPassword(password)
	}
	c := paho.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		t.Fatalf("connect %s: timed out", clientID)
	}
	if tok.Error() == nil {
		c.Disconnect(50)
	}
	return tok.Error()
}

func TestTLSListenerAuthentication(t *testing.T) {
	h := newHarness(t)
	_, addr := newTestBroker(t, h, true)
	mustDo(t, h.svc.SetAuthority, ModeIntune)
	dev, cert := enrollWithKey(t, h, protocol.PlatformWindows)
	_, otherCert := enrollWithKey(t, h, protocol.PlatformAndroid)

	tests := []struct {
		name     string
		clientID string
		password string
		cert     *tls.Certificate
		ok       bool
	}{
		{"device with its certificate", dev, "", &cert, true},
		{"device without a certificate", dev, "", nil, false},
		{"device with another device's certificate", dev, "", &otherCert, false},
		{"enrolling client with the token", EnrollClientPrefix + "r-9", h.token, nil, true},
		{"enrolling client with a wrong token", EnrollClientPrefix + "r-9", "enr-wrong", nil, false},
		{"enrolling client without a password", EnrollClientPrefix + "r-9", "", nil, false},
		{"client id outside the scheme", "dashboard", h.token, nil, false},
	}
	for _, tt := range tests {
		err := dialTLS(t, h, addr.String(), tt.clientID, tt.password, tt.cert)
		if (err == nil) != tt.ok {
			t.Errorf("%s: connect error %v; want accepted %v", tt.name, err, tt.ok)
		}
	}

	// An expired certificate, or a device that was wiped, is refused.
	h.clock.Advance(366 * 24 * time.Hour)
	if err := dialTLS(t, h, addr.String(), dev, "", &cert); err == nil {
		t.Error("a device with an expired certificate connected")
	}
}

// TestNoWillsNoRetained refuses a client that leaves a will (the broker
// would publish it without an access check) and drops retained messages.
func TestNoWillsNoRetained(t *testing.T) {
	h := newHarness(t)
	_, addr := newTestBroker(t, h, true)
	mustDo(t, h.svc.SetAuthority, ModeIntune)
	victim := h.mustEnroll(protocol.PlatformWindows, "bob@contoso.example")

	cfg := &tls.Config{RootCAs: h.svc.ca.Pool(), ServerName: "localhost", MinVersion: tls.VersionTLS12}
	opts := paho.NewClientOptions().AddBroker("ssl://"+addr.String()).SetClientID(EnrollClientPrefix+"r-evil").
		SetTLSConfig(cfg).SetAutoReconnect(false).SetUsername("enroll").SetPassword(h.token).
		SetWill(protocol.UplinkTopic("contoso", victim.id), "x", 1, false)
	c := paho.NewClient(opts)
	if tok := c.Connect(); tok.WaitTimeout(10*time.Second) && tok.Error() == nil {
		c.Disconnect(10)
		t.Error("a client with a will on another device's topic connected")
	}
}

func TestServerGuards(t *testing.T) {
	for _, tt := range []struct {
		rate     int
		scale    float64
		interval time.Duration
		perTick  int
	}{{1, 1, time.Second, 1}, {4, 1, 250 * time.Millisecond, 1}, {10, 1, 100 * time.Millisecond, 1}, {500, 1, 100 * time.Millisecond, 50},
		{500, 3600, 4 * time.Millisecond, 2}, {1, 3600, time.Second, 1}, {10000, 60, 5 * time.Millisecond, 50}, {500, 10, 10 * time.Millisecond, 5}} {
		if iv, n := fanOutPace(tt.rate, tt.scale); iv != tt.interval || n != tt.perTick {
			t.Errorf("fanOutPace(%d, %g) = %v, %d; want %v, %d", tt.rate, tt.scale, iv, n, tt.interval, tt.perTick)
		}
	}
	for addr, want := range map[string]bool{"127.0.0.1:8440": true, "[::1]:8440": true, "localhost:1": true, "0.0.0.0:8440": false, "10.0.0.5:8440": false, ":8440": false} {
		if got := loopback(addr); got != want {
			t.Errorf("loopback(%q) = %v; want %v", addr, got, want)
		}
	}
	err := RunServer(t.Context(), ServerConfig{DataDir: t.TempDir(), AdminAddr: "0.0.0.0:0", MQTTAddr: "127.0.0.1:0", PushRate: 10})
	if err == nil || !strings.Contains(err.Error(), "cleartext") {
		t.Errorf("admin API on 0.0.0.0 = %v; want a refusal explaining why", err)
	}
	err = RunServer(t.Context(), ServerConfig{DataDir: t.TempDir(), AdminAddr: "127.0.0.1:0", MQTTAddr: "127.0.0.1:0", MQTTTCPAddr: "0.0.0.0:0", PushRate: 10})
	if err == nil || !strings.Contains(err.Error(), "--mqtt-tcp-allow-remote") {
		t.Errorf("plain MQTT on 0.0.0.0 = %v; want a refusal explaining why", err)
	}
	dir := t.TempDir()
	store, _ := OpenStore(filepath.Join(dir, "mdm.db"))
	if err := store.ClaimTenant("contoso"); err != nil {
		t.Fatal(err)
	}
	if err := store.ClaimTenant("fabrikam"); err == nil || !strings.Contains(err.Error(), "--tenant contoso") {
		t.Errorf("claiming the store for another tenant = %v; want a refusal naming the tenant", err)
	}
	store.Close()
}
