package broker

import (
	"crypto/tls"
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
	b, err := NewBroker(h.svc, nil)
	if err != nil {
		t.Fatal(err)
	}
	addr, err := b.ListenTLS("127.0.0.1:0", []string{"localhost", "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
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
