package broker

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mdm-authority/mdm/protocol"
)

// Tests of the service as a client of an external broker, here a bare
// mochi broker that admits everyone over TLS: what Remote does, not what
// the broker enforces (cmd/fleetsim/mosquitto_test.go runs it against
// Mosquitto and its access rules).

// certHook admits everyone everywhere and records the common name of
// each client's certificate.
type certHook struct {
	mqtt.HookBase
	names chan string
}

func (h *certHook) ID() string { return "cert-names" }

func (h *certHook) Provides(b byte) bool {
	return b == mqtt.OnConnect || b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}

func (h *certHook) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }

func (h *certHook) OnACLCheck(*mqtt.Client, string, bool) bool { return true }

func (h *certHook) OnConnect(cl *mqtt.Client, _ packets.Packet) error {
	if c := peerCertificate(cl); c != nil {
		select {
		case h.names <- c.Subject.CommonName:
		default:
		}
	}
	return nil
}

// externalBroker starts a mochi broker on a loopback TLS listener that
// requires a client certificate (any), with a server certificate from
// ca, and returns it with its address.
func externalBroker(t *testing.T, ca *CA) (*mqtt.Server, string, chan string) {
	t.Helper()
	s := mqtt.New(&mqtt.Options{InlineClient: true, Logger: slog.New(slog.DiscardHandler)})
	names := make(chan string, 8)
	if err := s.AddHook(&certHook{names: names}, nil); err != nil {
		t.Fatal(err)
	}
	cert, err := ca.ServerCertificate([]string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)}, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequireAnyClientCert})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.AddListener(listeners.NewNet("tls", ln)); err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, ln.Addr().String(), names
}

// externalClient connects a device's client (any certificate will do on
// this broker) subscribed to topic.
func externalClient(t *testing.T, addr, id, topic string, ca *CA, cert tls.Certificate) (paho.Client, chan paho.Message) {
	t.Helper()
	msgs := make(chan paho.Message, 16)
	c := paho.NewClient(paho.NewClientOptions().AddBroker("tls://" + addr).SetClientID(id).SetProtocolVersion(4).
		SetTLSConfig(&tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{cert}}).SetAutoReconnect(false).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { msgs <- m }))
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", id, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(0) })
	subscribe(t, c, topic)
	return c, msgs
}

// awaitKind waits for a message of kind T among msgs.
func awaitKind[T protocol.Body](t *testing.T, msgs chan paho.Message, within time.Duration) T {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case m := <-msgs:
			env, err := protocol.Decode(m.Payload())
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if b, ok := env.Body.(T); ok {
				return b
			}
		case <-deadline:
			var zero T
			t.Fatalf("no %T within %s", zero, within)
			return zero
		}
	}
}

// TestRemote: the service on an external broker answers a check-in,
// sends its fan-out's pushes, comes back after its session is cut, and
// stops cleanly.
func TestRemote(t *testing.T) {
	h := newHarness(t)
	mustDo(t, h.svc.SetAuthority, ModeOffice365)
	device, cert := enrollWithKey(t, h, protocol.PlatformAndroid)
	srv, addr, names := externalBroker(t, h.svc.ca)
	tlsConf, err := remoteTLS(ServerConfig{Clock: h.clock}, h.svc.ca, "contoso")
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewRemote(h.svc, RemoteConfig{URL: "ssl://" + addr, TLS: tlsConf, Workers: 4})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := r.start(ctx); err != nil {
		t.Fatal(err)
	}
	if name := <-names; name != ServiceIdentity {
		t.Errorf("the service connected with a certificate for %q; want %q", name, ServiceIdentity)
	}

	c, msgs := externalClient(t, addr, device, protocol.DownlinkTopic("contoso", device), h.svc.ca, cert)
	checkIn := func(os string) {
		t.Helper()
		publish(t, h, c, protocol.UplinkTopic("contoso", device), device, &protocol.CheckIn{Reason: protocol.CheckInManual,
			CertificateExpiry: protocol.At(testStart.Add(365 * 24 * time.Hour)), OSVersion: os})
		if resp := awaitKind[*protocol.CheckInResponse](t, msgs, 10*time.Second); resp.Error != protocol.CodeNone || resp.Authority != protocol.AuthorityOffice365 {
			t.Fatalf("check-in answered %+v; want office365", resp)
		}
	}
	checkIn("14.0")
	if v := h.record(device).OSVersion; v != "14.0" {
		t.Errorf("OS version %q after the check-in; want 14.0", v)
	}

	// The fan-out publishes through the client.
	mustDo(t, h.svc.SetAuthority, ModeIntune)
	ticks := make(chan time.Time)
	fanOut := make(chan error, 1)
	go func() { fanOut <- runFanOut(ctx, h.svc, r, r.log, ticks, 10) }()
	ticks <- time.Now()
	if p := awaitKind[*protocol.Push](t, msgs, 10*time.Second); p.Reason != protocol.PushAuthorityChange {
		t.Errorf("push %+v; want an authority change", p)
	}

	// The broker cuts the service's session: it reconnects and
	// subscribes again by itself.
	cl, ok := srv.Clients.Get(ServiceIdentity)
	if !ok {
		t.Fatal("the service's session is not on the broker")
	}
	cl.Stop(packets.ErrServerShuttingDown)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if cl2, ok := srv.Clients.Get(ServiceIdentity); ok && cl2 != cl && !cl2.Closed() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the service did not reconnect within 20 s")
		}
	}
	publish(t, h, c, protocol.UplinkTopic("contoso", device), device, &protocol.CheckIn{Reason: protocol.CheckInManual,
		CertificateExpiry: protocol.At(testStart.Add(365 * 24 * time.Hour)), OSVersion: "14.1"})
	if resp := awaitKind[*protocol.CheckInResponse](t, msgs, 20*time.Second); resp.Error != protocol.CodeNone {
		t.Fatalf("check-in after the reconnection answered %+v", resp)
	}

	cancel()
	if err := <-fanOut; err != context.Canceled {
		t.Errorf("fan-out ended with %v; want context.Canceled", err)
	}
	r.stop()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if cl, ok := srv.Clients.Get(ServiceIdentity); !ok || cl.Closed() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the service's session is still open after stop")
		}
	}
}

// TestRemoteRefused: the first connection fails with an error that says
// what to check, and bad URLs are refused before any.
func TestRemoteRefused(t *testing.T) {
	h := newHarness(t)
	tlsConf, err := remoteTLS(ServerConfig{Clock: h.clock}, h.svc.ca, "contoso")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ url, want string }{
		{"tcp://127.0.0.1:1883", "over TLS only"},
		{"mqtt://127.0.0.1:1883", "over TLS only"},
		{"tls://127.0.0.1", "want tls://HOST:PORT"},
		{"ws://127.0.0.1:80", "want tls://HOST:PORT"},
		{"127.0.0.1:8883", "want tls://HOST:PORT"},
	} {
		if _, err := NewRemote(h.svc, RemoteConfig{URL: c.url, TLS: tlsConf}); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("NewRemote(%q) = %v; want an error saying %q", c.url, err, c.want)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	r, err := NewRemote(h.svc, RemoteConfig{URL: "tls://" + addr, TLS: tlsConf})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "is it running") {
		t.Errorf("Run against nothing = %v; want an error that asks whether the broker runs", err)
	}
	if _, err := remoteTLS(ServerConfig{Clock: h.clock, MQTTCertFile: "x.crt"}, h.svc.ca, "contoso"); err == nil || !strings.Contains(err.Error(), "both") {
		t.Errorf("a certificate without a key = %v; want an error asking for both", err)
	}
}
