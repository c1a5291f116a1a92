package fleetsim

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mdm-authority/mdm/agent"
	"github.com/mdm-authority/mdm/broker"
	"github.com/mdm-authority/mdm/protocol"
)

// mqttTestBroker is the real service and its embedded broker, reached
// in process over net.Pipe or as the simulator reaches it
// (newDirectPipe), and on the network when asked for.
type mqttTestBroker struct {
	svc      *broker.Service
	b        *broker.Broker
	token    string
	tcp, tls net.Addr // the listeners, if any
	keys     map[string]*ecdsa.PrivateKey
	up       *uplink      // for the "uplink" transport
	lost     atomic.Int64 // the uplink sessions' onLost calls
}

// newMQTTTestBroker starts a service on a store in a temporary directory,
// with Intune as the authority.
func newMQTTTestBroker(tb testing.TB) *mqttTestBroker {
	tb.Helper()
	return startMQTTTestBroker(tb, false)
}

// startMQTTTestBroker is newMQTTTestBroker, with TCP and TLS listeners on
// the loopback interface when listen is set.
func startMQTTTestBroker(tb testing.TB, listen bool) *mqttTestBroker {
	tb.Helper()
	dir := tb.TempDir()
	store, err := broker.OpenStore(filepath.Join(dir, "mdm.db"))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { store.Close() })
	store.Volatile()
	ca, _, err := broker.LoadOrCreateCA(dir, "contoso", time.Now().Add(-time.Hour))
	if err != nil {
		tb.Fatal(err)
	}
	svc, err := broker.NewService(store, ca, broker.Options{Tenant: "contoso"})
	if err != nil {
		tb.Fatal(err)
	}
	if _, _, err := svc.SetAuthority(broker.ModeIntune); err != nil {
		tb.Fatal(err)
	}
	token, err := svc.RotateEnrollmentToken()
	if err != nil {
		tb.Fatal(err)
	}
	b, err := broker.NewBroker(svc, nil)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { b.Close() }) // before the store closes
	h := &mqttTestBroker{svc: svc, b: b, token: token, keys: map[string]*ecdsa.PrivateKey{}, up: newUplink(4)}
	tb.Cleanup(h.up.close) // before the broker closes (cleanups run last first)
	if listen {
		if h.tcp, err = b.ListenTCP("127.0.0.1:0"); err != nil {
			tb.Fatal(err)
		}
		if h.tls, err = b.ListenTLS("127.0.0.1:0", []string{"127.0.0.1"}); err != nil {
			tb.Fatal(err)
		}
	}
	if err := b.Serve(); err != nil {
		tb.Fatal(err)
	}
	return h
}

// pipe returns the client end of a new in-memory connection to the broker.
func (h *mqttTestBroker) pipe() net.Conn {
	client, server := net.Pipe()
	go h.b.Connect(server)
	return client
}

// mqttTransports are the in-process ways to the broker: net.Pipe with the
// session's reader goroutine, as on a network connection; a direct
// session (newDirectPipe), without one; and a direct session that sends
// through an uplink (broker.Session), as the simulator's devices do.
var mqttTransports = []string{"pipe", "direct", "uplink"}

// forTransports runs test once per in-process transport.
func forTransports(t *testing.T, test func(t *testing.T, transport string)) {
	for _, tr := range mqttTransports {
		t.Run(tr, func(t *testing.T) { test(t, tr) })
	}
}

// dial opens a session over transport and returns it with the device's
// end of the connection.
func (h *mqttTestBroker) dial(transport string, o mqttOptions) (*mqttConn, net.Conn, error) {
	if transport == "direct" || transport == "uplink" {
		client, server := newDirectPipe()
		c, err := dialMQTTDirect(client, server, func() { go h.b.Connect(server) }, o)
		if err != nil || transport == "direct" {
			return c, client, err
		}
		sess, err := h.b.Session(o.ClientID, server)
		if err != nil {
			c.Close()
			return nil, nil, err
		}
		c.attach(h.up.queue(), sess, func() { h.lost.Add(1) })
		return c, client, nil
	}
	nc := h.pipe()
	c, err := dialMQTT(nc, o)
	return c, nc, err
}

// enrollOptions are the options of an enrolling client with a fresh
// request id.
func (h *mqttTestBroker) enrollOptions(onMessage func([]byte)) (opts mqttOptions, request string) {
	var rid [8]byte
	rand.Read(rid[:])
	request = hex.EncodeToString(rid[:])
	return mqttOptions{ClientID: protocol.EnrollClientPrefix + request, Username: broker.EnrollUsername, Password: h.token,
		Subscribe: protocol.EnrollResponseTopic("contoso", request), OnMessage: onMessage}, request
}

// enroll enrolls a device through the enrollment topics with an mqttConn,
// as the simulator does, and returns its state. Its key is in h.keys.
func (h *mqttTestBroker) enroll(tb testing.TB) *agent.State {
	tb.Helper()
	key, csr, err := broker.NewDeviceKeyAndCSR()
	if err != nil {
		tb.Fatal(err)
	}
	answers := make(chan []byte, 1)
	opts, request := h.enrollOptions(func(p []byte) {
		select {
		case answers <- p:
		default:
		}
	})
	c, err := dialMQTT(h.pipe(), opts)
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	req := &protocol.EnrollRequest{CSR: csr, Token: h.token, Platform: protocol.PlatformWindows, User: "ada@contoso.example",
		Type: protocol.EnrollUser, Name: "test", OSVersion: "10.0.22631"}
	id, err := protocol.NewMessageID(rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	payload, err := protocol.Encode(protocol.Envelope{ID: id, Sent: protocol.At(time.Now()), Body: req})
	if err != nil {
		tb.Fatal(err)
	}
	if err := c.Publish(protocol.EnrollRequestTopic("contoso", request), payload); err != nil {
		tb.Fatal(err)
	}
	select {
	case p := <-answers:
		env, err := protocol.Decode(p)
		if err != nil {
			tb.Fatalf("enrollment answer: %v", err)
		}
		resp, ok := env.Body.(*protocol.EnrollResponse)
		if !ok || env.ReplyTo != id {
			tb.Fatalf("enrollment answer: %s replying to %x; want the answer to %x", env.Kind(), env.ReplyTo, id)
		}
		st, err := agent.EnrolledState("contoso", "memory", req, resp, time.Now())
		if err != nil {
			tb.Fatal(err)
		}
		h.keys[st.Device] = key
		return st
	case <-time.After(30 * time.Second):
		tb.Fatal("enrollment: no answer within 30 s")
	}
	return nil
}

// mqttDeviceOptions are the options of an enrolled device's session.
func mqttDeviceOptions(st *agent.State, onMessage func([]byte)) mqttOptions {
	return mqttOptions{ClientID: st.Device, Username: st.Device, Password: st.ConnectToken,
		Subscribe: protocol.DownlinkTopic("contoso", st.Device), OnMessage: onMessage}
}

// mqttCheckIn returns a scheduled check-in from the device with a fresh id.
func mqttCheckIn(tb testing.TB, st *agent.State) (protocol.MessageID, []byte) {
	id, err := protocol.NewMessageID(rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	payload, err := protocol.Encode(protocol.Envelope{ID: id, Sent: protocol.At(time.Now()), Device: st.Device,
		Body: &protocol.CheckIn{Reason: protocol.CheckInScheduled, CertificateExpiry: protocol.At(st.CertNotAfter), Epoch: st.Epoch, OSVersion: "10.0.22631"}})
	if err != nil {
		tb.Fatal(err)
	}
	return id, payload
}

// mqttCheckInAnswer decodes p as the answer to the check-in id.
func mqttCheckInAnswer(p []byte, id protocol.MessageID) (*protocol.CheckInResponse, error) {
	env, err := protocol.Decode(p)
	if err != nil {
		return nil, err
	}
	resp, ok := env.Body.(*protocol.CheckInResponse)
	if !ok || env.ReplyTo != id {
		return nil, fmt.Errorf("%s replying to %x; want the check-in response to %x", env.Kind(), env.ReplyTo, id)
	}
	return resp, nil
}

// TestMQTTConnRoundTrip enrolls a device, connects it and runs its agent
// core's first check-in through the broker and back.
func TestMQTTConnRoundTrip(t *testing.T) { forTransports(t, testMQTTConnRoundTrip) }

func testMQTTConnRoundTrip(t *testing.T, transport string) {
	h := newMQTTTestBroker(t)
	st := h.enroll(t)
	inbox := make(chan []byte, 16)
	c, _, err := h.dial(transport, mqttDeviceOptions(st, func(p []byte) { inbox <- p }))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	now := time.Now()
	core := agent.New(st, agent.Config{Rand: mrand.New(mrand.NewPCG(1, 2)), Facts: agent.Facts{OSVersion: "10.0.22631", Passcode: true, Encrypted: true}})
	out := core.Start(now)
	out.Send = append(out.Send, core.Connected(now).Send...)
	var sent protocol.MessageID
	for _, env := range out.Send {
		payload, err := protocol.Encode(env)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Publish(protocol.UplinkTopic("contoso", st.Device), payload); err != nil {
			t.Fatal(err)
		}
		if env.Kind() == protocol.KindCheckIn {
			sent = env.ID
		}
	}
	if sent == (protocol.MessageID{}) {
		t.Fatalf("the core sent %d messages on connecting, none a check-in", len(out.Send))
	}
	select {
	case p := <-inbox:
		resp, err := mqttCheckInAnswer(p, sent)
		if err != nil {
			t.Fatal(err)
		}
		if resp.Error != protocol.CodeNone || resp.Authority != protocol.AuthorityIntune {
			t.Errorf("check-in answered with error %s, authority %s; want success under intune", resp.Error, resp.Authority)
		}
		env, _ := protocol.Decode(p)
		if next := core.Receive(time.Now(), env); next.Ignored != "" {
			t.Errorf("the core ignored the answer: %s", next.Ignored)
		}
	case <-c.Done():
		t.Fatalf("session ended: %v", c.Err())
	case <-time.After(30 * time.Second):
		t.Fatal("no answer to the check-in within 30 s")
	}
	// The broker acknowledges a PUBLISH once the service has handled it
	// and queued its answer, so the PUBACK and the answer may arrive in
	// either order.
	for deadline := time.Now().Add(5 * time.Second); c.pubacks.Load() < 1; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no PUBACK for the check-in within 5 s of its answer")
		}
	}
	if err := c.Close(); err != nil {
		t.Errorf("Close = %v; want nil", err)
	}
}

// TestMQTTConnPipelined publishes many check-ins back to back while their
// answers (QoS 1) stream in. On net.Pipe the broker writes its PUBACK for
// each PUBLISH from the goroutine that reads the device: a reader that
// wrote its own PUBACKs would deadlock with it.
func TestMQTTConnPipelined(t *testing.T) { forTransports(t, testMQTTConnPipelined) }

func testMQTTConnPipelined(t *testing.T, transport string) {
	h := newMQTTTestBroker(t)
	st := h.enroll(t)
	const n = 200
	inbox := make(chan []byte, n)
	c, _, err := h.dial(transport, mqttDeviceOptions(st, func(p []byte) { inbox <- p }))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	want := map[protocol.MessageID]bool{}
	payloads := make([][]byte, n)
	for i := range payloads {
		var id protocol.MessageID
		id, payloads[i] = mqttCheckIn(t, st)
		want[id] = true
	}
	// Published from another goroutine, so that a deadlock fails the
	// test instead of hanging it; at most 32 ahead of the answers, since
	// the broker queues 64 messages per client and drops the rest when
	// the reader falls behind (a loaded machine).
	published := make(chan error, 1)
	window := make(chan struct{}, 32)
	go func() {
		for _, p := range payloads {
			window <- struct{}{}
			if err := c.Publish(protocol.UplinkTopic("contoso", st.Device), p); err != nil {
				published <- err
				return
			}
		}
		published <- nil
	}()
	timeout := time.After(60 * time.Second)
	for len(want) > 0 {
		select {
		case err := <-published:
			if err != nil {
				t.Fatal(err)
			}
		case p := <-inbox:
			env, err := protocol.Decode(p)
			if err != nil {
				t.Fatal(err)
			}
			if !want[env.ReplyTo] {
				t.Fatalf("answer to %x: not a check-in sent, or answered twice", env.ReplyTo)
			}
			delete(want, env.ReplyTo)
			<-window
		case <-c.Done():
			t.Fatalf("session ended with %d answers missing: %v", len(want), c.Err())
		case <-timeout:
			t.Fatalf("%d of %d check-ins unanswered after 60 s: deadlocked?", len(want), n)
		}
	}
}

// TestMQTTConnNetwork runs a session over TCP and over TLS (where the
// device proves who it is with its certificate), with the kernel's
// buffers in between instead of net.Pipe.
func TestMQTTConnNetwork(t *testing.T) {
	h := startMQTTTestBroker(t, true)
	st := h.enroll(t)
	roots := x509.NewCertPool()
	ca, err := x509.ParseCertificate(st.CACertificate)
	if err != nil {
		t.Fatal(err)
	}
	roots.AddCert(ca)
	tests := []struct {
		name string
		dial func() (net.Conn, error)
		opts mqttOptions
	}{
		{"tcp", func() (net.Conn, error) { return net.Dial("tcp", h.tcp.String()) }, mqttDeviceOptions(st, nil)},
		{"tls", func() (net.Conn, error) {
			return tls.Dial("tcp", h.tls.String(), &tls.Config{RootCAs: roots, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12,
				Certificates: []tls.Certificate{{Certificate: [][]byte{st.Certificate}, PrivateKey: h.keys[st.Device]}}})
		}, mqttOptions{ClientID: st.Device, Subscribe: protocol.DownlinkTopic("contoso", st.Device)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nc, err := tt.dial()
			if err != nil {
				t.Fatal(err)
			}
			const n = 50
			inbox := make(chan []byte, n)
			tt.opts.OnMessage = func(p []byte) { inbox <- p }
			c, err := dialMQTT(nc, tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			want := map[protocol.MessageID]bool{}
			for range n {
				id, payload := mqttCheckIn(t, st)
				want[id] = true
				if err := c.Publish(protocol.UplinkTopic("contoso", st.Device), payload); err != nil {
					t.Fatal(err)
				}
			}
			for len(want) > 0 {
				select {
				case p := <-inbox:
					env, err := protocol.Decode(p)
					if err != nil {
						t.Fatal(err)
					}
					delete(want, env.ReplyTo)
				case <-c.Done():
					t.Fatalf("session ended with %d answers missing: %v", len(want), c.Err())
				case <-time.After(30 * time.Second):
					t.Fatalf("%d of %d check-ins unanswered after 30 s", len(want), n)
				}
			}
			if err := c.Close(); err != nil {
				t.Errorf("Close = %v; want nil", err)
			}
		})
	}
}

// TestMQTTConnRefused checks the errors of connections and subscriptions
// the broker refuses.
func TestMQTTConnRefused(t *testing.T) { forTransports(t, testMQTTConnRefused) }

func testMQTTConnRefused(t *testing.T, transport string) {
	h := newMQTTTestBroker(t)
	st := h.enroll(t)
	other := h.enroll(t)
	badEnroll, _ := h.enrollOptions(nil)
	badEnroll.Password = "not-the-token"
	theirs := mqttDeviceOptions(st, nil)
	theirs.Subscribe = protocol.DownlinkTopic("contoso", other.Device)
	noToken := mqttDeviceOptions(st, nil)
	noToken.Password = ""

	tests := []struct {
		name string
		opts mqttOptions
		want error
		text string
	}{
		{"wrong connect token", mqttOptions{ClientID: st.Device, Username: st.Device, Password: st.ConnectToken + "x"}, errMQTTRefused, "the broker refused the connection: not authorized (CONNACK return code 5)"},
		{"wrong enrollment token", badEnroll, errMQTTRefused, "not authorized"},
		{"no password", noToken, errMQTTRefused, "not authorized"},
		{"another device's topic", theirs, errMQTTSubscribeRefused, "the broker refused the subscription (SUBACK return code 0x80)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, nc, err := h.dial(transport, tt.opts)
			if err == nil {
				c.Close()
				t.Fatalf("dialMQTT(%q) = nil error; want %v", tt.opts.ClientID, tt.want)
			}
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.text) {
				t.Errorf("dialMQTT(%q) = %v; want %v saying %q", tt.opts.ClientID, err, tt.want, tt.text)
			}
			if _, err := nc.Write([]byte{0xe0, 0}); err == nil {
				t.Error("the connection is still open after dialMQTT failed")
			}
		})
	}
	// The device itself is still welcome.
	c, _, err := h.dial(transport, mqttDeviceOptions(st, nil))
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

// TestMQTTConnClose closes a session twice and publishes on it.
func TestMQTTConnClose(t *testing.T) { forTransports(t, testMQTTConnClose) }

func testMQTTConnClose(t *testing.T, transport string) {
	h := newMQTTTestBroker(t)
	st := h.enroll(t)
	c, _, err := h.dial(transport, mqttDeviceOptions(st, nil))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.Done():
		t.Fatalf("Done closed before Close: %v", c.Err())
	default:
	}
	if err := c.Close(); err != nil {
		t.Errorf("Close = %v; want nil", err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close = %v; want nil", err)
	}
	select {
	case <-c.Done():
	default:
		t.Error("Done not closed after Close")
	}
	if err := c.Err(); !errors.Is(err, errMQTTClosed) {
		t.Errorf("Err() = %v; want %v", err, errMQTTClosed)
	}
	_, payload := mqttCheckIn(t, st)
	if err := c.Publish(protocol.UplinkTopic("contoso", st.Device), payload); !errors.Is(err, errMQTTClosed) {
		t.Errorf("Publish after Close = %v; want %v", err, errMQTTClosed)
	}
	// The broker let the session go (DISCONNECT, then the connection
	// closed), so the device can connect again at once.
	for deadline := time.Now().Add(10 * time.Second); h.b.Connected(st.Device); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the broker still holds the session 10 s after Close")
		}
	}
	c, _, err = h.dial(transport, mqttDeviceOptions(st, nil))
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

// TestMQTTConnKicked removes the device: the broker drops its session and
// Done closes.
func TestMQTTConnKicked(t *testing.T) { forTransports(t, testMQTTConnKicked) }

func testMQTTConnKicked(t *testing.T, transport string) {
	h := newMQTTTestBroker(t)
	st := h.enroll(t)
	c, _, err := h.dial(transport, mqttDeviceOptions(st, nil))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := h.svc.RemoveDevice(st.Device); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Done not closed 10 s after the device was removed")
	}
	if err := c.Err(); !errors.Is(err, errMQTTBrokerClosed) {
		t.Errorf("Err() = %v; want %v", err, errMQTTBrokerClosed)
	}
	_, payload := mqttCheckIn(t, st)
	if err := c.Publish(protocol.UplinkTopic("contoso", st.Device), payload); !errors.Is(err, errMQTTBrokerClosed) {
		t.Errorf("Publish after the broker closed = %v; want %v", err, errMQTTBrokerClosed)
	}
	if err := c.Close(); err != nil {
		t.Errorf("Close after the broker closed = %v; want nil", err)
	}
}

// mqttFakeBroker is the broker end of a net.Pipe, scripted by a test, for
// what the real broker never does.
type mqttFakeBroker struct {
	nc net.Conn
	br *bufio.Reader
}

// newMQTTFakeBroker returns the client end of a pipe and the fake broker
// at the other.
func newMQTTFakeBroker(t *testing.T) (net.Conn, *mqttFakeBroker) {
	client, server := net.Pipe()
	t.Cleanup(func() { server.Close() })
	return client, &mqttFakeBroker{nc: server, br: bufio.NewReader(server)}
}

// read reads and decodes one packet from the client.
func (f *mqttFakeBroker) read() (packets.Packet, error) {
	var pk packets.Packet
	hb, err := f.br.ReadByte()
	if err != nil {
		return pk, err
	}
	if err := pk.FixedHeader.Decode(hb); err != nil {
		return pk, err
	}
	if pk.FixedHeader.Remaining, _, err = packets.DecodeLength(f.br); err != nil {
		return pk, err
	}
	body := make([]byte, pk.FixedHeader.Remaining)
	if _, err := io.ReadFull(f.br, body); err != nil {
		return pk, err
	}
	pk.ProtocolVersion = 4
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectDecode(body)
	case packets.Subscribe:
		err = pk.SubscribeDecode(body)
	case packets.Publish:
		err = pk.PublishDecode(body)
	case packets.Puback:
		err = pk.PubackDecode(body)
	case packets.Disconnect:
	default:
		err = fmt.Errorf("fake broker: unexpected %s", packetName(pk.FixedHeader.Type))
	}
	return pk, err
}

// expect reads one packet and checks its type.
func (f *mqttFakeBroker) expect(typ byte) (packets.Packet, error) {
	pk, err := f.read()
	if err == nil && pk.FixedHeader.Type != typ {
		err = fmt.Errorf("fake broker: got %s; want %s", packetName(pk.FixedHeader.Type), packetName(typ))
	}
	return pk, err
}

// write encodes pks and writes them with one Write.
func (f *mqttFakeBroker) write(pks ...packets.Packet) error {
	b, err := mqttEncodeAll(pks...)
	if err != nil {
		return err
	}
	_, err = f.nc.Write(b)
	return err
}

// mqttEncodeAll encodes what a broker sends (CONNACK, SUBACK, PUBLISH,
// PUBACK) at protocol level 4, one after the other.
func mqttEncodeAll(pks ...packets.Packet) ([]byte, error) {
	var buf bytes.Buffer
	for _, pk := range pks {
		pk.ProtocolVersion = 4
		var err error
		switch pk.FixedHeader.Type {
		case packets.Connack:
			err = pk.ConnackEncode(&buf)
		case packets.Suback:
			err = pk.SubackEncode(&buf)
		case packets.Publish:
			err = pk.PublishEncode(&buf)
		case packets.Puback:
			err = pk.PubackEncode(&buf)
		default:
			err = fmt.Errorf("a broker does not send %s", packetName(pk.FixedHeader.Type))
		}
		if err != nil {
			return nil, err
		}
	}
	return buf.Bytes(), nil
}

// echo serves a client as a broker that answers each QoS 1 PUBLISH with
// its PUBACK and, in the same Write, a QoS 1 PUBLISH of the same payload on
// the client's subscription, until the client disconnects.
func (f *mqttFakeBroker) echo() error {
	defer f.nc.Close()
	var filter string
	var id uint16
	for {
		pk, err := f.read()
		if err != nil {
			return err
		}
		switch pk.FixedHeader.Type {
		case packets.Connect:
			err = f.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}})
		case packets.Subscribe:
			filter = pk.Filters[0].Filter
			err = f.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Suback}, PacketID: pk.PacketID, ReasonCodes: []byte{1}})
		case packets.Publish:
			id++
			if id == 0 {
				id = 1
			}
			err = f.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID},
				packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: id, TopicName: filter, Payload: pk.Payload})
		case packets.Disconnect:
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// accept answers CONNECT with return code 0 and SUBSCRIBE with grant.
func (f *mqttFakeBroker) accept(grant byte) error {
	if _, err := f.expect(packets.Connect); err != nil {
		return err
	}
	if err := f.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}}); err != nil {
		return err
	}
	sub, err := f.expect(packets.Subscribe)
	if err != nil {
		return err
	}
	return f.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Suback}, PacketID: sub.PacketID, ReasonCodes: []byte{grant}})
}

// TestMQTTConnHandshakeErrors drives dialMQTT against a fake broker that
// refuses, stalls or breaks the protocol.
func TestMQTTConnHandshakeErrors(t *testing.T) {
	connack := func(code byte) func(*mqttFakeBroker) error {
		return func(f *mqttFakeBroker) error {
			if _, err := f.expect(packets.Connect); err != nil {
				return err
			}
			return f.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}, ReasonCode: code})
		}
	}
	tests := []struct {
		name   string
		broker func(*mqttFakeBroker) error
		want   error
		text   string
	}{
		{"protocol version", connack(1), errMQTTRefused, "unacceptable protocol version (CONNACK return code 1)"},
		{"client id", connack(2), errMQTTRefused, "client identifier rejected"},
		{"unavailable", connack(3), errMQTTRefused, "server unavailable"},
		{"bad password", connack(4), errMQTTRefused, "bad user name or password (CONNACK return code 4)"},
		{"not authorized", connack(5), errMQTTRefused, "not authorized (CONNACK return code 5)"},
		{"unknown code", connack(9), errMQTTRefused, "unknown return code (CONNACK return code 9)"},
		{"no CONNACK", func(f *mqttFakeBroker) error { _, err := f.expect(packets.Connect); return err }, os.ErrDeadlineExceeded, "waiting for CONNACK"},
		{"no SUBACK", func(f *mqttFakeBroker) error {
			if err := connack(0)(f); err != nil {
				return err
			}
			_, err := f.expect(packets.Subscribe)
			return err
		}, os.ErrDeadlineExceeded, "waiting for SUBACK"},
		{"SUBACK failure", func(f *mqttFakeBroker) error { return f.accept(0x80) }, errMQTTSubscribeRefused, "(SUBACK return code 0x80)"},
		{"PUBLISH for CONNECT", func(f *mqttFakeBroker) error {
			if _, err := f.expect(packets.Connect); err != nil {
				return err
			}
			return f.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "t", Payload: []byte("x")})
		}, nil, "the broker answered CONNECT with PUBLISH instead of CONNACK"},
		{"closed at once", func(f *mqttFakeBroker) error { return f.nc.Close() }, nil, "send CONNECT"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client, f := newMQTTFakeBroker(t)
			errc := make(chan error, 1)
			go func() { errc <- tt.broker(f) }()
			c, err := dialMQTT(client, mqttOptions{ClientID: "dev-1", Username: "dev-1", Password: "pw", Subscribe: "t/down", Timeout: 200 * time.Millisecond})
			if err == nil {
				c.Close()
				t.Fatal("dialMQTT = nil error; want one")
			}
			if (tt.want != nil && !errors.Is(err, tt.want)) || !strings.Contains(err.Error(), tt.text) {
				t.Errorf("dialMQTT = %v; want %v saying %q", err, tt.want, tt.text)
			}
			if err := <-errc; err != nil && !errors.Is(err, io.EOF) {
				t.Errorf("fake broker: %v", err)
			}
		})
	}
}

// TestMQTTConnSession scripts a session with a fake broker: messages at
// both QoS levels, PUBACKs both ways, the client's PUBLISH on the wire,
// and the broker going away.
func TestMQTTConnSession(t *testing.T) {
	client, f := newMQTTFakeBroker(t)
	var mu sync.Mutex
	var got [][]byte
	onMessage := func(p []byte) {
		mu.Lock()
		got = append(got, p)
		mu.Unlock()
	}
	errc := make(chan error, 1)
	go func() {
		errc <- func() error {
			if _, err := f.expect(packets.Connect); err != nil {
				return err
			}
			if err := f.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}}); err != nil {
				return err
			}
			sub, err := f.expect(packets.Subscribe)
			if err != nil {
				return err
			}
			if len(sub.Filters) != 1 || sub.Filters[0].Filter != "t/down" || sub.Filters[0].Qos != 1 {
				return fmt.Errorf("SUBSCRIBE %+v; want t/down at QoS 1", sub.Filters)
			}
			// A message between the subscription and the SUBACK is
			// delivered too.
			if err := f.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "t/down", Payload: []byte("early")}); err != nil {
				return err
			}
			return f.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Suback}, PacketID: sub.PacketID, ReasonCodes: []byte{1}})
		}()
	}()
	c, err := dialMQTT(client, mqttOptions{ClientID: "dev-1", Username: "dev-1", Password: "pw", Subscribe: "t/down", OnMessage: onMessage})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}

	// QoS 1 gets a PUBACK with its packet id; QoS 0 none.
	if err := f.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 7, TopicName: "t/down", Payload: []byte("one")}); err != nil {
		t.Fatal(err)
	}
	if ack, err := f.expect(packets.Puback); err != nil || ack.PacketID != 7 {
		t.Fatalf("after a QoS 1 PUBLISH with id 7: PUBACK id %d, %v; want id 7", ack.PacketID, err)
	}
	if err := f.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "t/down", Payload: []byte("two")}); err != nil {
		t.Fatal(err)
	}
	go c.Publish("t/up", []byte("hello"))
	pub, err := f.expect(packets.Publish)
	if err != nil {
		t.Fatal(err)
	}
	if pub.TopicName != "t/up" || string(pub.Payload) != "hello" || pub.FixedHeader.Qos != 1 || pub.FixedHeader.Retain || pub.PacketID == 0 {
		t.Errorf("client PUBLISH: topic %q, payload %q, QoS %d, retain %t, id %d; want t/up, hello, QoS 1, not retained, an id",
			pub.TopicName, pub.Payload, pub.FixedHeader.Qos, pub.FixedHeader.Retain, pub.PacketID)
	}
	if err := f.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pub.PacketID}); err != nil {
		t.Fatal(err)
	}
	f.nc.Close()
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Done not closed 10 s after the broker closed the connection")
	}
	if err := c.Err(); !errors.Is(err, errMQTTBrokerClosed) {
		t.Errorf("Err() = %v; want %v", err, errMQTTBrokerClosed)
	}
	if n := c.pubacks.Load(); n != 1 {
		t.Errorf("%d PUBACKs counted; want 1", n)
	}
	mu.Lock()
	defer mu.Unlock()
	var texts []string
	for _, p := range got {
		texts = append(texts, string(p)) // each payload its own: none overwritten by a later packet
	}
	if want := []string{"early", "one", "two"}; strings.Join(texts, ",") != strings.Join(want, ",") {
		t.Errorf("messages %q; want %q", texts, want)
	}
}

// TestMQTTConnOversize sends the header of a PUBLISH over the 1 MiB
// limit: the client ends the session without reading or allocating it.
func TestMQTTConnOversize(t *testing.T) {
	client, f := newMQTTFakeBroker(t)
	errc := make(chan error, 1)
	go func() { errc <- f.accept(1) }()
	c, err := dialMQTT(client, mqttOptions{ClientID: "dev-1", Username: "dev-1", Password: "pw", Subscribe: "t/down",
		OnMessage: func([]byte) { t.Error("oversize message delivered") }})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	// PUBLISH QoS 0, remaining length 1 MiB + 1 (variable byte integer).
	n := mqttMaxPacket + 1
	header := []byte{0x30, byte(n&0x7f | 0x80), byte(n>>7&0x7f | 0x80), byte(n >> 14)}
	if _, err := f.nc.Write(header); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Done not closed 10 s after an oversize packet")
	}
	if err := c.Err(); !errors.Is(err, errMQTTTooLarge) || !strings.Contains(err.Error(), "PUBLISH of 1048577 bytes") {
		t.Errorf("Err() = %v; want %v for a PUBLISH of 1048577 bytes", err, errMQTTTooLarge)
	}
	if _, err := f.nc.Write([]byte{0}); err == nil {
		t.Error("the connection is still open after an oversize packet")
	}
}

// FuzzMQTTConnReadPacket feeds arbitrary bytes from the broker to the
// reader's framing and decoding: they must fail cleanly, never panic nor
// hand over more than the packet limit.
func FuzzMQTTConnReadPacket(f *testing.F) {
	var seeds bytes.Buffer
	for _, pk := range []packets.Packet{
		{FixedHeader: packets.FixedHeader{Type: packets.Connack}},
		{FixedHeader: packets.FixedHeader{Type: packets.Suback}, PacketID: 1, ReasonCodes: []byte{1}},
		{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 9, TopicName: "mdm/v1/contoso/dev/d-1/down", Payload: []byte{0xa1, 1, 2}},
		{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: 9},
	} {
		pk.ProtocolVersion = 4
		var b bytes.Buffer
		switch pk.FixedHeader.Type {
		case packets.Connack:
			pk.ConnackEncode(&b)
		case packets.Suback:
			pk.SubackEncode(&b)
		case packets.Publish:
			pk.PublishEncode(&b)
		case packets.Puback:
			pk.PubackEncode(&b)
		}
		f.Add(b.Bytes())
		seeds.Write(b.Bytes())
	}
	f.Add(seeds.Bytes())
	f.Add([]byte{0x30, 0x81, 0x80, 0x40})       // PUBLISH of 1 MiB + 1
	f.Add([]byte{0x32, 0xff, 0xff, 0xff, 0xff}) // malformed length
	f.Fuzz(func(t *testing.T, data []byte) {
		c := &mqttConn{br: bufio.NewReaderSize(bytes.NewReader(data), mqttReadBuffer)}
		for {
			var pk packets.Packet
			if err := c.readPacket(&pk); err != nil {
				return
			}
			if len(pk.Payload) > mqttMaxPacket || pk.FixedHeader.Remaining > mqttMaxPacket {
				t.Fatalf("%s of %d bytes accepted; the limit is %d", packetName(pk.FixedHeader.Type), pk.FixedHeader.Remaining, mqttMaxPacket)
			}
		}
	})
}

// BenchmarkMQTTConnRoundTrip measures a check-in through the broker and
// the service and back with mqttConn: publish, then wait for the answer.
func BenchmarkMQTTConnRoundTrip(b *testing.B) {
	for _, tr := range mqttTransports {
		b.Run(tr, func(b *testing.B) { benchmarkMQTTConnRoundTrip(b, tr) })
	}
}

func benchmarkMQTTConnRoundTrip(b *testing.B, transport string) {
	h := newMQTTTestBroker(b)
	st := h.enroll(b)
	inbox := make(chan []byte, 1)
	c, _, err := h.dial(transport, mqttDeviceOptions(st, func(p []byte) { inbox <- p }))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	topic := protocol.UplinkTopic("contoso", st.Device)
	b.ReportAllocs()
	for b.Loop() {
		id, payload := mqttCheckIn(b, st)
		if err := c.Publish(topic, payload); err != nil {
			b.Fatal(err)
		}
		if _, err := mqttCheckInAnswer(<-inbox, id); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPahoRoundTrip is BenchmarkMQTTConnRoundTrip with paho, set up
// as the simulator sets it up.
func BenchmarkPahoRoundTrip(b *testing.B) {
	h := newMQTTTestBroker(b)
	st := h.enroll(b)
	inbox := make(chan []byte, 1)
	c, err := mqttDialPaho(h, mqttDeviceOptions(st, func(p []byte) { inbox <- p }))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Disconnect(0)
	topic := protocol.UplinkTopic("contoso", st.Device)
	b.ReportAllocs()
	for b.Loop() {
		id, payload := mqttCheckIn(b, st)
		c.Publish(topic, 1, false, payload)
		if _, err := mqttCheckInAnswer(<-inbox, id); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMQTTConnEchoRoundTrip measures mqttConn's own cost per
// message: a publish and the answer from a fake broker that only echoes,
// with no service behind it.
func BenchmarkMQTTConnEchoRoundTrip(b *testing.B) {
	client, server := net.Pipe()
	f := &mqttFakeBroker{nc: server, br: bufio.NewReader(server)}
	go f.echo()
	inbox := make(chan []byte, 1)
	c, err := dialMQTT(client, mqttOptions{ClientID: "dev-1", Username: "dev-1", Password: "pw", Subscribe: "t/down",
		OnMessage: func(p []byte) { inbox <- p }})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	payload := bytes.Repeat([]byte{0xa5}, 300) // about a check-in
	b.ReportAllocs()
	for b.Loop() {
		if err := c.Publish("t/up", payload); err != nil {
			b.Fatal(err)
		}
		if p := <-inbox; len(p) != len(payload) {
			b.Fatalf("echo of %d bytes; want %d", len(p), len(payload))
		}
	}
}

// BenchmarkPahoEchoRoundTrip is BenchmarkMQTTConnEchoRoundTrip with paho.
func BenchmarkPahoEchoRoundTrip(b *testing.B) {
	inbox := make(chan []byte, 1)
	c, err := mqttDialPahoWith(func() net.Conn {
		client, server := net.Pipe()
		f := &mqttFakeBroker{nc: server, br: bufio.NewReader(server)}
		go f.echo()
		return client
	}, mqttOptions{ClientID: "dev-1", Username: "dev-1", Password: "pw", Subscribe: "t/down", OnMessage: func(p []byte) { inbox <- p }})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Disconnect(0)
	payload := bytes.Repeat([]byte{0xa5}, 300)
	b.ReportAllocs()
	for b.Loop() {
		c.Publish("t/up", 1, false, payload)
		if p := <-inbox; len(p) != len(payload) {
			b.Fatalf("echo of %d bytes; want %d", len(p), len(payload))
		}
	}
}

// mqttDialPaho connects a paho client through a pipe and subscribes, as the
// simulator did before mqttConn.
func mqttDialPaho(h *mqttTestBroker, o mqttOptions) (paho.Client, error) {
	return mqttDialPahoWith(h.pipe, o)
}

// mqttDialPahoWith is mqttDialPaho over the connection pipe returns.
func mqttDialPahoWith(pipe func() net.Conn, o mqttOptions) (paho.Client, error) {
	opts := paho.NewClientOptions().
		AddBroker("tcp://fleetsim.invalid:1883").
		SetClientID(o.ClientID).SetUsername(o.Username).SetPassword(o.Password).
		SetCleanSession(true).SetProtocolVersion(4).
		SetAutoReconnect(false).SetConnectRetry(false).
		SetKeepAlive(0).SetConnectTimeout(30 * time.Second).
		SetOrderMatters(true).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) {
			if o.OnMessage != nil {
				o.OnMessage(m.Payload())
			}
		}).
		SetCustomOpenConnectionFn(func(*url.URL, paho.ClientOptions) (net.Conn, error) { return pipe(), nil })
	c := paho.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		return nil, fmt.Errorf("connect %s: %v", o.ClientID, tok.Error())
	}
	tok := c.Subscribe(o.Subscribe, 1, nil)
	if !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		c.Disconnect(0)
		return nil, fmt.Errorf("subscribe %s: %v", o.Subscribe, tok.Error())
	}
	return c, nil
}

// benchmarkMQTTIdleSessions connects b.N sessions, each an enrolling client
// subscribed to its answer topic (a session like a device's, without the
// cost of enrolling b.N devices), and reports what each costs while idle:
// heap and goroutine stacks, of the client and of the broker's side
// (mochi's client state, its two goroutines, the pipe). Run it with
// -benchtime=2000x. dial returns a function that closes the session.
func benchmarkMQTTIdleSessions(b *testing.B, dial func(*mqttTestBroker, mqttOptions) (func(), error)) {
	h := newMQTTTestBroker(b)
	closers := make([]func(), 0, b.N)
	defer func() {
		for _, c := range closers {
			c()
		}
	}()
	opts := make([]mqttOptions, b.N)
	for i := range opts {
		opts[i], _ = h.enrollOptions(nil)
	}
	before := mqttIdleMemory()
	goroutines := runtime.NumGoroutine()
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		c, err := dial(h, opts[i])
		if err != nil {
			b.Fatal(err)
		}
		closers = append(closers, c)
	}
	b.StopTimer()
	after := mqttIdleMemory()
	b.ReportMetric(float64(after.heap+after.stack-before.heap-before.stack)/float64(b.N), "bytes/session")
	b.ReportMetric(float64(after.stack-before.stack)/float64(b.N), "stack-bytes/session")
	b.ReportMetric(float64(runtime.NumGoroutine()-goroutines)/float64(b.N), "goroutines/session")
}

// mqttMemory is what mqttIdleMemory measures.
type mqttMemory struct{ heap, stack int64 }

// mqttIdleMemory returns the bytes of live heap and of goroutine stacks, after
// collections (each of which may also halve the stack of a goroutine that
// uses little of it).
func mqttIdleMemory() mqttMemory {
	runtime.GC()
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return mqttMemory{heap: int64(m.HeapAlloc), stack: int64(m.StackInuse)}
}

// BenchmarkMQTTConnIdleSession measures an idle mqttConn session.
func BenchmarkMQTTConnIdleSession(b *testing.B) {
	benchmarkMQTTIdleSessions(b, func(h *mqttTestBroker, o mqttOptions) (func(), error) {
		c, err := dialMQTT(h.pipe(), o)
		if err != nil {
			return nil, err
		}
		return func() { c.Close() }, nil
	})
}

// BenchmarkPahoIdleSession measures an idle paho session.
func BenchmarkPahoIdleSession(b *testing.B) {
	benchmarkMQTTIdleSessions(b, func(h *mqttTestBroker, o mqttOptions) (func(), error) {
		c, err := mqttDialPaho(h, o)
		if err != nil {
			return nil, err
		}
		return func() { c.Disconnect(0) }, nil
	})
}

// BenchmarkBrokerIdleSession is the broker's share of an idle session: the
// handshake is done, then the client side keeps only its end of the pipe,
// with nothing reading it. Subtract it from the two above for the client's
// own cost.
func BenchmarkBrokerIdleSession(b *testing.B) {
	benchmarkMQTTIdleSessions(b, func(h *mqttTestBroker, o mqttOptions) (func(), error) {
		nc := h.pipe()
		o.Timeout = 30 * time.Second
		c := &mqttConn{nc: nc, br: bufio.NewReaderSize(nc, mqttReadBuffer), onMessage: func([]byte) {}, id: o.ClientID, timeout: o.Timeout}
		if err := c.handshake(o); err != nil {
			return nil, err
		}
		return func() { nc.Close() }, nil
	})
}

// BenchmarkMQTTConnDirectIdleSession measures an idle direct session, the
// simulator's in process: no reader goroutine on the device's side.
func BenchmarkMQTTConnDirectIdleSession(b *testing.B) {
	benchmarkMQTTIdleSessions(b, func(h *mqttTestBroker, o mqttOptions) (func(), error) {
		c, _, err := h.dial("direct", o)
		if err != nil {
			return nil, err
		}
		return func() { c.Close() }, nil
	})
}

// newDeliverConn returns a direct session past its handshake with no
// broker behind it, for tests of deliver; its PUBACKs are read and thrown
// away.
func newDeliverConn(t testing.TB, onMessage func([]byte)) *mqttConn {
	client, server := net.Pipe()
	go io.Copy(io.Discard, server)
	t.Cleanup(func() { client.Close(); server.Close() })
	c := &mqttConn{nc: client, onMessage: onMessage, id: "d-test", timeout: time.Second, done: make(chan struct{}),
		direct: true, answers: make(chan *packets.Packet, 1)}
	c.connacked.Store(true)
	c.handshook.Store(true)
	t.Cleanup(func() { c.end(errMQTTClosed); c.ackers.Wait() })
	return c
}

// mqttEncode encodes pk at protocol level 4.
func mqttEncode(t testing.TB, pk packets.Packet) []byte {
	b, err := mqttEncodeAll(pk)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestMQTTConnDeliver hands a direct session what a broker could write:
// packets split across writes and several in one write are delivered
// whole and in order; an oversized or unexpected packet ends the session.
func TestMQTTConnDeliver(t *testing.T) {
	publish := func(payload string, qos byte) []byte {
		return mqttEncode(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos}, PacketID: 7,
			TopicName: "mdm/v1/contoso/dev/d-test/down", Payload: []byte(payload)})
	}
	t.Run("split and merged", func(t *testing.T) {
		var got []string
		c := newDeliverConn(t, func(p []byte) { got = append(got, string(p)) })
		one, two, three := publish("one", 1), publish(strings.Repeat("2", 300), 0), publish("three", 1)
		for i := range one { // a byte at a time
			if err := c.deliver(one[i : i+1]); err != nil {
				t.Fatalf("byte %d: %v", i, err)
			}
		}
		both := append(append([]byte{}, two...), three...)
		if err := c.deliver(both); err != nil {
			t.Fatal(err)
		}
		puback := mqttEncode(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: 1})
		if err := c.deliver(puback); err != nil {
			t.Fatal(err)
		}
		want := []string{"one", strings.Repeat("2", 300), "three"}
		if !slices.Equal(got, want) {
			t.Errorf("delivered %q; want %q", got, want)
		}
		if n := c.pubacks.Load(); n != 1 {
			t.Errorf("%d PUBACKs counted; want 1", n)
		}
		if err := c.Err(); err != nil {
			t.Errorf("session ended: %v", err)
		}
	})
	t.Run("payload is the callee's", func(t *testing.T) {
		var got []byte
		c := newDeliverConn(t, func(p []byte) { got = p })
		b := publish("keep", 0)
		if err := c.deliver(b); err != nil {
			t.Fatal(err)
		}
		clear(b) // the broker reuses its buffer
		if string(got) != "keep" {
			t.Errorf("payload %q after the broker reused its buffer; want %q", got, "keep")
		}
	})
	t.Run("PUBLISH before CONNACK", func(t *testing.T) {
		c := newDeliverConn(t, func([]byte) { t.Error("a message was delivered before CONNACK") })
		c.connacked.Store(false)
		c.handshook.Store(false)
		if err := c.deliver(publish("early", 0)); err == nil || !strings.Contains(err.Error(), "answered CONNECT with PUBLISH instead of CONNACK") {
			t.Fatalf("deliver = %v; want the CONNACK missing", err)
		}
	})
	t.Run("nothing after Close", func(t *testing.T) {
		var got []string
		c := newDeliverConn(t, func(p []byte) { got = append(got, string(p)) })
		c.direct = true
		c.end(errMQTTClosed) // as Close does first
		if err := c.deliver(append(publish("one", 0), publish("two", 0)...)); err == nil {
			t.Error("deliver after the session ended = nil; want an error")
		}
		if len(got) != 0 {
			t.Errorf("delivered %q after the session ended", got)
		}
	})
	for _, tt := range []struct {
		name string
		data []byte
		want string
	}{
		{"oversized", []byte{0x30, 0x81, 0x80, 0x40}, "packet too large"},
		{"malformed length", []byte{0x32, 0xff, 0xff, 0xff, 0xff}, "remaining length"},
		{"CONNACK after the handshake", mqttEncode(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}}), "unexpected CONNACK"},
		{"QoS 2", publish("x", 2), "QoS 2"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := newDeliverConn(t, func([]byte) { t.Error("a message was delivered") })
			err := c.deliver(tt.data)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("deliver = %v; want an error saying %q", err, tt.want)
			}
			if c.Err() == nil {
				t.Error("the session goes on after the broker broke the protocol")
			}
			if err := c.deliver(publish("late", 0)); err == nil {
				t.Error("deliver after the session ended = nil; want an error")
			}
		})
	}
}

// FuzzMQTTConnDeliver feeds a direct session arbitrary bytes in arbitrary
// pieces: it never panics, never delivers a payload over the limit, and
// delivers nothing once a write failed.
func FuzzMQTTConnDeliver(f *testing.F) {
	f.Add([]byte{0x30, 0x05, 0x00, 0x01, 't', 'h', 'i'}, uint8(3))
	f.Add([]byte{0x30, 0x81, 0x80, 0x40}, uint8(1))
	f.Add([]byte{0x20, 0x02, 0x00, 0x00}, uint8(0))
	f.Fuzz(func(t *testing.T, data []byte, piece uint8) {
		failed := false
		c := newDeliverConn(t, func(p []byte) {
			if failed {
				t.Fatal("delivered after a failed write")
			}
			if len(p) > mqttMaxPacket {
				t.Fatalf("payload of %d bytes delivered; the limit is %d", len(p), mqttMaxPacket)
			}
		})
		n := int(piece) + 1
		for len(data) > 0 {
			k := min(n, len(data))
			if err := c.deliver(data[:k]); err != nil {
				failed = true
			}
			data = data[k:]
		}
	})
}

// TestMQTTConnDirectWedgedBroker checks that a direct session does not
// hang on a broker that stops answering: neither dialing, when it never
// answers, nor Close, when it answered and then stopped reading without
// letting the session go.
func TestMQTTConnDirectWedgedBroker(t *testing.T) {
	o := mqttOptions{ClientID: "d-test", Subscribe: "mdm/v1/contoso/dev/d-test/down", Timeout: 200 * time.Millisecond}
	t.Run("dial", func(t *testing.T) {
		client, server := newDirectPipe()
		defer server.Conn.Close()
		start := time.Now()
		_, err := dialMQTTDirect(client, server, func() {}, o) // nobody serves it
		if err == nil {
			t.Fatal("dialMQTTDirect to a broker that never reads = nil error")
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("dialMQTTDirect took %s; want about twice the timeout", took)
		}
	})
	t.Run("close", func(t *testing.T) {
		client, server := newDirectPipe()
		defer server.Conn.Close()
		// Reads through the pipe, answers through the direct end.
		f := &mqttFakeBroker{nc: server, br: bufio.NewReader(server.Conn)}
		serve := func() {
			go func() { // CONNECT, SUBSCRIBE answered; then it stops reading
				if _, err := f.expect(packets.Connect); err != nil {
					return
				}
				f.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}})
				if _, err := f.expect(packets.Subscribe); err != nil {
					return
				}
				f.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Suback}, PacketID: 1, ReasonCodes: []byte{1}})
			}()
		}
		c, err := dialMQTTDirect(client, server, serve, o)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		err = c.Close()
		if err == nil {
			t.Error("Close with a broker that never let the session go = nil; want an error saying so")
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("Close took %s; want about twice the timeout", took)
		}
	})
}
