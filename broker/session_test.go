package broker

import (
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mdm-authority/mdm/protocol"
)

// TestSession sends a device's packets through its in-process session
// instead of its connection: the service answers on the connection, the
// topic access rules apply as to packets read from it, and a session ends
// with its connection.
func TestSession(t *testing.T) {
	h := newHarness(t)
	b, _ := newTestBroker(t, h, false)
	if _, _, err := h.svc.SetAuthority(ModeIntune); err != nil {
		t.Fatal(err)
	}
	dev, code := h.enroll(protocol.PlatformWindows, "ada@contoso.example")
	if code != protocol.CodeNone {
		t.Fatalf("enroll: %s", code)
	}
	conn, msgs := connectInProcess(t, h, b, dev.id)

	if _, err := b.Session(dev.id, &net.TCPConn{}); !errors.Is(err, ErrNoSession) {
		t.Errorf("Session over another connection = %v; want ErrNoSession", err)
	}
	if _, err := b.Session("d-other", conn); !errors.Is(err, ErrNoSession) {
		t.Errorf("Session of another client id = %v; want ErrNoSession", err)
	}
	// mochi's inline client (the service's own) has no connection; a
	// session of it would skip the topic checks.
	if _, err := b.Session("inline", nil); !errors.Is(err, ErrNoSession) {
		t.Errorf("Session of the inline client = %v; want ErrNoSession", err)
	}
	s, err := b.Session(dev.id, conn)
	if err != nil {
		t.Fatal(err)
	}

	checkIn := sessionCheckIns(t, h, dev.id)
	uplink := protocol.UplinkTopic("contoso", dev.id)
	if err := s.Send(checkIn(uplink)); err != nil {
		t.Fatalf("Send check-in = %v", err)
	}
	if resp, _ := receive[*protocol.CheckInResponse](t, msgs, protocol.DownlinkTopic("contoso", dev.id)); resp.Error != protocol.CodeNone {
		t.Errorf("check-in sent through the session answered with %s", resp.Error)
	}

	// What a connection could not carry is refused before the broker:
	// a PUBLISH one byte over the broker's packet size (the fixed header's
	// first byte, topic and its length, packet id, payload), not one at it
	// (which the service then drops as too large a message).
	atMost := checkIn(uplink)
	atMost.Payload = make([]byte, maxPacket-1-2-len(uplink)-2)
	if err := s.Send(atMost); err != nil {
		t.Errorf("Send of a PUBLISH of the broker's packet size = %v; want nil", err)
	}
	over := atMost
	over.Payload = make([]byte, len(atMost.Payload)+1)
	if err := s.Send(over); !errors.Is(err, packets.ErrPacketTooLarge) {
		t.Errorf("Send of a PUBLISH a byte over = %v; want ErrPacketTooLarge", err)
	}
	retained := checkIn(uplink)
	retained.FixedHeader.Retain = true
	if err := s.Send(retained); !errors.Is(err, packets.ErrRejectPacket) {
		t.Errorf("Send of a retained PUBLISH = %v; want ErrRejectPacket", err)
	}
	qos2 := checkIn(uplink)
	qos2.FixedHeader.Qos = 2
	if err := s.Send(qos2); err == nil || !strings.Contains(err.Error(), "QoS 2") {
		t.Errorf("Send at QoS 2 = %v; want refused", err)
	}
	sub := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 7,
		Filters: packets.Subscriptions{{Filter: "#", Qos: 1}}}
	if err := s.Send(sub); err == nil || !strings.Contains(err.Error(), "does not send") {
		t.Errorf("Send of a SUBSCRIBE = %v; want refused", err)
	}

	// Another device's topic: refused, and the client disconnected, as
	// for a packet read from its connection.
	denied := h.svc.metrics.aclDenied.Load()
	if err := s.Send(checkIn(protocol.UplinkTopic("contoso", "d-other"))); !errors.Is(err, packets.ErrNotAuthorized) {
		t.Errorf("Send to another device's uplink = %v; want ErrNotAuthorized", err)
	}
	if got := h.svc.metrics.aclDenied.Load(); got != denied+1 {
		t.Errorf("topic access refusals = %d; want %d", got, denied+1)
	}
	for deadline := time.Now().Add(5 * time.Second); b.Connected(dev.id); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the broker still holds the session 5 s after a refused publish")
		}
	}
	if err := s.Send(checkIn(uplink)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Send after the session ended = %v; want net.ErrClosed", err)
	}
}

// connectInProcess connects a device with its connect token over a pipe
// served by b.Connect and subscribes it to its downlink; it returns the
// broker's end of the pipe and the device's messages.
func connectInProcess(t *testing.T, h *harness, b *Broker, device string) (net.Conn, chan paho.Message) {
	t.Helper()
	user, password := credentialsOf(t, h, device)
	var mu sync.Mutex
	var server net.Conn
	c, msgs, err := pahoClientOver(t, func(conn net.Conn) {
		mu.Lock()
		server = conn
		mu.Unlock()
		b.Connect(conn)
	}, device, user, password)
	if err != nil {
		t.Fatal(err)
	}
	subscribe(t, c, protocol.DownlinkTopic("contoso", device))
	mu.Lock()
	defer mu.Unlock()
	return server, msgs
}

// sessionCheckIns returns a function that makes a new QoS 1 check-in of
// device as a PUBLISH to topic, for Session.Send.
func sessionCheckIns(t *testing.T, h *harness, device string) func(topic string) packets.Packet {
	var packetID uint16
	return func(topic string) packets.Packet {
		t.Helper()
		packetID++
		id, _ := protocol.NewMessageID(h.rng)
		p := encodeAt(t, device, id, h.clock.Now(),
			&protocol.CheckIn{Reason: protocol.CheckInScheduled, CertificateExpiry: protocol.At(testStart.AddDate(1, 0, 0))})
		return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 1000 + packetID, TopicName: topic, Payload: p}
	}
}

// TestSessionEndsWhileServiceHandles ends a session while the service
// handles a check-in sent through it: the broker then cannot acknowledge
// the check-in, but the service has taken it, so Send reports it
// delivered (a caller counting what is in flight must not count it
// twice), and the next Send reports the end.
func TestSessionEndsWhileServiceHandles(t *testing.T) {
	h := newHarness(t)
	b, _ := newTestBroker(t, h, false)
	mustDo(t, h.svc.SetAuthority, ModeIntune)
	dev, code := h.enroll(protocol.PlatformWindows, "ada@contoso.example")
	if code != protocol.CodeNone {
		t.Fatalf("enroll: %s", code)
	}
	conn, _ := connectInProcess(t, h, b, dev.id)
	s, err := b.Session(dev.id, conn)
	if err != nil {
		t.Fatal(err)
	}
	checkIn := sessionCheckIns(t, h, dev.id)
	uplink := protocol.UplinkTopic("contoso", dev.id)

	before := h.record(dev.id).CheckIns
	var once sync.Once
	h.svc.testHookDecided = func() { once.Do(func() { b.disconnect(dev.id) }) }
	if err := s.Send(checkIn(uplink)); err != nil {
		t.Errorf("Send of a check-in the service took, the session ending meanwhile = %v; want nil", err)
	}
	if got := h.record(dev.id).CheckIns; got != before+1 {
		t.Errorf("the device's check-ins on record = %d; want %d", got, before+1)
	}
	if err := s.Send(checkIn(uplink)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Send after the session ended = %v; want net.ErrClosed", err)
	}
}
