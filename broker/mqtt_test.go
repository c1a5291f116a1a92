package broker

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mdm-authority/mdm/protocol"
)

// newTestBroker starts an embedded broker for h's service, with a TLS
// listener on a free loopback port when withTLS is set (its address is
// returned), and stops it at the end of the test.
func newTestBroker(t *testing.T, h *harness, withTLS bool) (*Broker, net.Addr) {
	t.Helper()
	b, err := NewBroker(h.svc, nil)
	if err != nil {
		t.Fatal(err)
	}
	var addr net.Addr
	if withTLS {
		if addr, err = b.ListenTLS("127.0.0.1:0", []string{"localhost"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b, addr
}

// newNetBroker starts an embedded broker for h's service with a TLS and a
// plain-TCP listener on free loopback ports, returns it with their
// addresses, and stops it at the end of the test.
func newNetBroker(t *testing.T, h *harness) (b *Broker, tlsAddr, tcpAddr net.Addr) {
	t.Helper()
	b, err := NewBroker(h.svc, nil)
	if err != nil {
		t.Fatal(err)
	}
	if tlsAddr, err = b.ListenTLS("127.0.0.1:0", []string{"localhost"}); err != nil {
		t.Fatal(err)
	}
	if tcpAddr, err = b.ListenTCP("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	if err := b.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b, tlsAddr, tcpAddr
}

// pahoClient connects a real MQTT client to the embedded broker over
// net.Pipe, the in-memory transport, with the credentials of clientID (the
// enrollment token for an enrolling client, the connect token of the
// device's current certificate for a device), and returns it with the
// channel of the messages it receives.
func pahoClient(t *testing.T, h *harness, b *Broker, clientID string) (paho.Client, chan paho.Message) {
	t.Helper()
	user, password := credentialsOf(t, h, clientID)
	c, msgs, err := pahoClientAs(t, b, clientID, user, password)
	if err != nil {
		t.Fatalf("connect %s: %v", clientID, err)
	}
	return c, msgs
}

// credentialsOf returns the MQTT user name and password of a client.
func credentialsOf(t *testing.T, h *harness, clientID string) (string, string) {
	t.Helper()
	if strings.HasPrefix(clientID, EnrollClientPrefix) {
		return EnrollUsername, h.token
	}
	svc := h.svc
	d, _, err := svc.Device(clientID)
	if err != nil {
		t.Fatalf("credentials of %s: %v", clientID, err)
	}
	return clientID, svc.ca.ConnectToken(svc.opts.Tenant, clientID, d.CertSerial)
}

// pahoClientAs connects a real MQTT client over net.Pipe with the given
// credentials and returns the broker's refusal, if any.
func pahoClientAs(t *testing.T, b *Broker, clientID, user, password string) (paho.Client, chan paho.Message, error) {
	t.Helper()
	return pahoClientOver(t, func(c net.Conn) { b.Connect(c) }, clientID, user, password)
}

// pahoClientOver is pahoClientAs with the broker's end of the pipe served
// by serve, in a goroutine of its own; tweaks change the client's options.
func pahoClientOver(t *testing.T, serve func(net.Conn), clientID, user, password string, tweaks ...func(*paho.ClientOptions)) (paho.Client, chan paho.Message, error) {
	t.Helper()
	msgs := make(chan paho.Message, 16)
	opts := paho.NewClientOptions().
		AddBroker("tcp://memory:1883").
		SetClientID(clientID).
		SetCleanSession(true).
		SetProtocolVersion(4). // by default paho tries 3.1 after a refusal
		SetAutoReconnect(false).
		SetConnectTimeout(5 * time.Second).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { msgs <- m }).
		SetCustomOpenConnectionFn(func(*url.URL, paho.ClientOptions) (net.Conn, error) {
			client, server := net.Pipe()
			go serve(server)
			return client, nil
		})
	if user != "" || password != "" {
		opts.SetUsername(user).SetPassword(password)
	}
	for _, tweak := range tweaks {
		tweak(opts)
	}
	c := paho.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(5 * time.Second) {
		t.Fatalf("connect %s: timed out", clientID)
	}
	if tok.Error() != nil {
		return nil, nil, tok.Error()
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c, msgs, nil
}

func subscribe(t *testing.T, c paho.Client, topic string) byte {
	t.Helper()
	tok := c.Subscribe(topic, 1, nil)
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe %s: %v", topic, tok.Error())
	}
	return tok.(*paho.SubscribeToken).Result()[topic]
}

func publish(t *testing.T, h *harness, c paho.Client, topic, device string, body protocol.Body) protocol.MessageID {
	t.Helper()
	id, _ := protocol.NewMessageID(h.rng)
	b, err := protocol.Encode(protocol.Envelope{ID: id, Sent: protocol.At(h.clock.Now()), Device: device, Body: body})
	if err != nil {
		t.Fatal(err)
	}
	if tok := c.Publish(topic, 1, false, b); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publish %s: %v", topic, tok.Error())
	}
	return id
}

func receive[T protocol.Body](t *testing.T, msgs chan paho.Message, topic string) (T, protocol.Envelope) {
	t.Helper()
	var zero T
	select {
	case m := <-msgs:
		if m.Topic() != topic {
			t.Fatalf("received on %s; want %s", m.Topic(), topic)
		}
		env, err := protocol.Decode(m.Payload())
		if err != nil {
			t.Fatalf("decode: %v", err)
		}
		b, ok := env.Body.(T)
		if !ok {
			t.Fatalf("received %s; want %T", env.Kind(), zero)
		}
		return b, env
	case <-time.After(5 * time.Second):
		t.Fatalf("nothing received on %s", topic)
	}
	return zero, protocol.Envelope{}
}

// TestOverMQTT runs a device written from the specification through the
// embedded broker: enrollment, check-in, the push of an authority change,
// and the access rules that keep it to its own topics.
func TestOverMQTT(t *testing.T) {
	h := newHarness(t)
	b, _ := newTestBroker(t, h, false)
	if _, _, err := h.svc.SetAuthority(ModeOffice365); err != nil {
		t.Fatal(err)
	}

	// Enrollment, as client enroll-<request>.
	enroller, msgs := pahoClient(t, h, b, EnrollClientPrefix+"r-42")
	if qos := subscribe(t, enroller, protocol.EnrollResponseTopic("contoso", "r-42")); qos != 1 {
		t.Fatalf("subscribe to its own enrollment response: granted %d", qos)
	}
	if qos := subscribe(t, enroller, protocol.EnrollResponseTopic("contoso", "r-43")); qos != 0x80 {
		t.Errorf("subscribe to another request's response: granted %d; want refused (128)", qos)
	}
	_, csr, _ := NewDeviceKeyAndCSR()
	reqID := publish(t, h, enroller, protocol.EnrollRequestTopic("contoso", "r-42"), "",
		&protocol.EnrollRequest{CSR: csr, Token: h.token, Platform: protocol.PlatformAndroid, User: "ada@contoso.example", Type: protocol.EnrollUser})
	enrolled, env := receive[*protocol.EnrollResponse](t, msgs, protocol.EnrollResponseTopic("contoso", "r-42"))
	if enrolled.Error != protocol.CodeNone || env.ReplyTo != reqID {
		t.Fatalf("enroll response = %+v (reply to %v); want success replying to %v", enrolled, env.ReplyTo, reqID)
	}
	enroller.Disconnect(100)

	// The device, as client <device id>.
	dev := enrolled.Device
	c, msgs := pahoClient(t, h, b, dev)
	if qos := subscribe(t, c, protocol.DownlinkTopic("contoso", dev)); qos != 1 {
		t.Fatalf("subscribe to its own downlink: granted %d", qos)
	}
	for _, f := range []string{"mdm/v1/contoso/dev/+/down", "#", protocol.DownlinkTopic("contoso", "d-other")} {
		if qos := subscribe(t, c, f); qos != 0x80 {
			t.Errorf("subscribe to %s: granted %d; want refused (128)", f, qos)
		}
	}
	checkin := &protocol.CheckIn{Reason: protocol.CheckInEnrollment, CertificateExpiry: protocol.At(testStart.AddDate(1, 0, 0))}
	publish(t, h, c, protocol.UplinkTopic("contoso", dev), dev, checkin)
	resp, _ := receive[*protocol.CheckInResponse](t, msgs, protocol.DownlinkTopic("contoso", dev))
	if resp.Error != protocol.CodeNone || resp.Authority != protocol.AuthorityOffice365 {
		t.Fatalf("check-in response = %+v", resp)
	}

	// The authority change reaches the device as a push.
	if _, _, err := h.svc.SetAuthority(ModeIntune); err != nil {
		t.Fatal(err)
	}
	if n, err := b.PublishDuePushes(100); err != nil || n != 1 {
		t.Fatalf("PublishDuePushes = %d, %v; want 1", n, err)
	}
	push, _ := receive[*protocol.Push](t, msgs, protocol.DownlinkTopic("contoso", dev))
	if push.Epoch != 2 {
		t.Errorf("push epoch = %d; want 2", push.Epoch)
	}
	checkin.Reason = protocol.CheckInPushed
	publish(t, h, c, protocol.UplinkTopic("contoso", dev), dev, checkin)
	resp, _ = receive[*protocol.CheckInResponse](t, msgs, protocol.DownlinkTopic("contoso", dev))
	if resp.Authority != protocol.AuthorityIntune {
		t.Errorf("authority after the pushed check-in = %s; want intune", resp.Authority)
	}

	// Publishing as another device: the broker refuses it and closes the
	// connection, as MQTT 3.1.1 lets it.
	id, _ := protocol.NewMessageID(h.rng)
	rogue, _ := protocol.Encode(protocol.Envelope{ID: id, Sent: 1, Device: "d-other", Body: checkin})
	tok := c.Publish(protocol.UplinkTopic("contoso", "d-other"), 1, false, rogue)
	if tok.WaitTimeout(5*time.Second) && tok.Error() == nil {
		t.Error("publishing to another device's uplink was acknowledged")
	}
	if _, _, err := h.svc.Device("d-other"); err == nil {
		t.Error("a check-in published as another device reached the service")
	}
}

// TestReconnectWhileClosing: a device that connects again while the
// broker is still ending its previous session keeps the new one. mochi
// ends a clean session after its connection closed: it drops the
// subscriptions, then deletes the client from its list by client id. The
// test holds the first connection in between until the second one is
// listed, the interleaving in which the first deleted the second: the
// device then got no answers (nor pushes) until it connected again.
func TestReconnectWhileClosing(t *testing.T) {
	h := newHarness(t)
	b, _ := newTestBroker(t, h, false)
	mustDo(t, h.svc.SetAuthority, ModeOffice365)
	dev := h.mustEnroll(protocol.PlatformAndroid, "ada@contoso.example")
	downlink := protocol.DownlinkTopic("contoso", dev.id)
	user, password := credentialsOf(t, h, dev.id)

	ended := make(chan struct{}) // the broker is done with the first connection
	first, _, err := pahoClientOver(t, func(c net.Conn) { b.Connect(c); close(ended) }, dev.id, user, password)
	if err != nil {
		t.Fatal(err)
	}
	subscribe(t, first, downlink)
	old, _ := b.server.Clients.Get(dev.id)
	hold := &holdCleanup{server: b.server, client: old, holding: make(chan struct{})}
	if err := b.server.AddHook(hold, nil); err != nil {
		t.Fatal(err)
	}
	first.Disconnect(0)
	select {
	case <-hold.holding:
	case <-time.After(5 * time.Second):
		t.Fatal("the broker did not end the first session")
	}

	second, msgs := pahoClient(t, h, b, dev.id)
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("the broker did not let the first connection go")
	}
	if !b.Connected(dev.id) {
		t.Fatal("the second session is not listed once the first has ended: the broker would deliver it nothing")
	}
	subscribe(t, second, downlink)
	publish(t, h, second, protocol.UplinkTopic("contoso", dev.id), dev.id,
		&protocol.CheckIn{Reason: protocol.CheckInScheduled, CertificateExpiry: protocol.At(testStart.AddDate(1, 0, 0))})
	if resp, _ := receive[*protocol.CheckInResponse](t, msgs, downlink); resp.Error != protocol.CodeNone {
		t.Errorf("check-in response = %+v; want success", resp)
	}
}

// holdCleanup holds mochi's end of one client's session after it has
// dropped the client's subscriptions and before it deletes the client
// from its list, until another client with that id is listed, for at most
// holdFor.
type holdCleanup struct {
	mqtt.HookBase
	server  *mqtt.Server
	client  *mqtt.Client
	holding chan struct{} // closed when the hold starts
	held    atomic.Bool   // not a sync.Once: a takeover calls the hook again while it holds
}

const holdFor = 200 * time.Millisecond

func (h *holdCleanup) ID() string { return "hold-cleanup" }

func (h *holdCleanup) Provides(b byte) bool { return b == mqtt.OnUnsubscribed }

func (h *holdCleanup) OnUnsubscribed(cl *mqtt.Client, _ packets.Packet) {
	if cl != h.client || !h.held.CompareAndSwap(false, true) {
		return
	}
	close(h.holding)
	for deadline := time.Now().Add(holdFor); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if cur, ok := h.server.Clients.Get(cl.ID); ok && cur != cl {
			return
		}
	}
}

// TestFanOutRate checks that the fan-out publishes at most its quota per
// tick, and that pushes reach the devices.
func TestFanOutRate(t *testing.T) {
	h := newHarness(t)
	b, _ := newTestBroker(t, h, false)
	mustDo(t, h.svc.SetAuthority, ModeOffice365)
	devs := h.mustEnrollN(25)
	c, msgs := pahoClient(t, h, b, devs[0].id)
	subscribe(t, c, protocol.DownlinkTopic("contoso", devs[0].id))
	mustDo(t, h.svc.SetAuthority, ModeIntune)

	backlog := func() int {
		n := 0
		h.store.View(func(tx *Tx) error { n = len(tx.duePushes(h.clock.Now(), 1000)); return nil })
		return n
	}
	// One tick at a time: the loop finishes a tick's work before it sees
	// the cancellation.
	tick := func() {
		ticks := make(chan time.Time)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- b.RunFanOut(ctx, ticks, 10) }()
		ticks <- time.Time{}
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("RunFanOut = %v; want context.Canceled", err)
		}
	}
	for _, want := range []int{15, 5, 0} {
		tick()
		if got := backlog(); got != want {
			t.Fatalf("due pushes after a tick = %d; want %d (10 per tick)", got, want)
		}
	}
	receive[*protocol.Push](t, msgs, protocol.DownlinkTopic("contoso", devs[0].id))
}

// mqttDevice is a device written from the specification that talks to the
// embedded broker through a real MQTT client.
type mqttDevice struct {
	t    *testing.T
	h    *harness
	id   string
	c    paho.Client
	msgs chan paho.Message
}

func (h *harness) mqttEnroll(t *testing.T, b *Broker, p protocol.Platform, user, request string) *mqttDevice {
	t.Helper()
	enroller, msgs := pahoClient(t, h, b, EnrollClientPrefix+request)
	subscribe(t, enroller, protocol.EnrollResponseTopic("contoso", request))
	_, csr, _ := NewDeviceKeyAndCSR()
	typ := protocol.EnrollUser
	if user == "" {
		typ = protocol.EnrollBulk
	}
	publish(t, h, enroller, protocol.EnrollRequestTopic("contoso", request), "",
		&protocol.EnrollRequest{CSR: csr, Token: h.token, Platform: p, User: user, Type: typ})
	resp, _ := receive[*protocol.EnrollResponse](t, msgs, protocol.EnrollResponseTopic("contoso", request))
	enroller.Disconnect(50)
	if resp.Error != protocol.CodeNone {
		t.Fatalf("enroll %s: %s", p, resp.Error)
	}
	c, dmsgs := pahoClient(t, h, b, resp.Device)
	subscribe(t, c, protocol.DownlinkTopic("contoso", resp.Device))
	return &mqttDevice{t: t, h: h, id: resp.Device, c: c, msgs: dmsgs}
}

func (d *mqttDevice) checkIn() *protocol.CheckInResponse {
	d.t.Helper()
	publish(d.t, d.h, d.c, protocol.UplinkTopic("contoso", d.id), d.id, &protocol.CheckIn{
		Reason: protocol.CheckInScheduled, CertificateExpiry: protocol.At(testStart.AddDate(1, 0, 0))})
	for { // skip pushes that arrive first
		m, _ := receive[protocol.Body](d.t, d.msgs, protocol.DownlinkTopic("contoso", d.id))
		if r, ok := m.(*protocol.CheckInResponse); ok {
			return r
		}
	}
}

// TestMigrationOverMQTT runs a small fleet through an authority change
// over MQTT: the retention deadline, APNs gating of iOS, a userless device
// left behind, and a remote lock sent from the new authority and
// acknowledged by the device.
func TestMigrationOverMQTT(t *testing.T) {
	h := newHarness(t)
	b, _ := newTestBroker(t, h, false)
	mustDo(t, h.svc.SetAuthority, ModeOffice365)
	h.svc.UploadAPNs(protocol.AuthorityOffice365, true)
	put(t, h, protocol.AuthorityOffice365, protocol.ProfileEmail, "Corp Mail")
	put(t, h, protocol.AuthorityIntune, protocol.ProfileEmail, "Corp Mail")
	laptop := h.mqttEnroll(t, b, protocol.PlatformWindows, "ada@contoso.example", "r-1")
	phone := h.mqttEnroll(t, b, protocol.PlatformIOS, "ada@contoso.example", "r-2")
	kiosk := h.mqttEnroll(t, b, protocol.PlatformAndroid, "", "r-3")
	for _, d := range []*mqttDevice{laptop, phone, kiosk} {
		if r := d.checkIn(); r.Authority != protocol.AuthorityOffice365 {
			t.Fatalf("before the change: %s on %s", d.id, r.Authority)
		}
	}

	h.clock.Advance(time.Hour)
	change, _, err := h.svc.SetAuthority(ModeIntune)
	if err != nil {
		t.Fatal(err)
	}
	if r := laptop.checkIn(); r.Authority != protocol.AuthorityIntune || r.RetainUntil != protocol.At(change.At.Add(RetentionPeriod)) {
		t.Errorf("laptop after the change: %s, retain until %v", r.Authority, r.RetainUntil)
	}
	if r := phone.checkIn(); r.Error != protocol.CodeAPNsCertificateMissing {
		t.Errorf("iPhone before the APNs upload: %s; want apns_certificate_missing", r.Error)
	}
	if r := kiosk.checkIn(); r.Authority != protocol.AuthorityOffice365 {
		t.Errorf("userless device moved to %s", r.Authority)
	}
	if ds, _ := h.svc.Devices(func(d *Device) bool { return d.NeedsSupport }); len(ds) != 1 || ds[0].ID != kiosk.id {
		t.Errorf("devices needing support = %v; want the kiosk", ds)
	}
	h.svc.UploadAPNs(protocol.AuthorityIntune, true)
	if r := phone.checkIn(); r.Authority != protocol.AuthorityIntune {
		t.Errorf("iPhone after the upload: %+v", r)
	}

	// Validation: a remote lock from the new authority, acknowledged.
	lock, err := h.svc.IssueCommand(laptop.id, protocol.CommandRemoteLock, "Call IT")
	if err != nil {
		t.Fatal(err)
	}
	r := laptop.checkIn()
	if len(r.Commands) != 1 || r.Commands[0].ID != lock.ID {
		t.Fatalf("laptop got commands %+v; want the lock", r.Commands)
	}
	publish(t, h, laptop.c, protocol.UplinkTopic("contoso", laptop.id), laptop.id,
		&protocol.CommandResult{ID: lock.ID, Status: protocol.CommandDone})
	laptop.checkIn() // a round trip, so the result has been handled
	if _, cmds, _ := h.svc.Device(laptop.id); cmds[0].State != CommandAcknowledged {
		t.Errorf("lock state = %s; want acknowledged", cmds[0].State)
	}
}

// TestBrokerCloseTwice checks that a second Close is harmless, as a
// shutdown path and a cleanup may both close.
func TestBrokerCloseTwice(t *testing.T) {
	b, _ := newTestBroker(t, newHarness(t), false)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
}

// TestBrokerCloseWhileClientsComeAndGo closes brokers with a client on
// each network listener while other clients connect and leave. mochi
// v2.7.9 lists a listener's clients under a read lock that it takes twice
// (mochi-mqtt/server#488): a connection or disconnection between the two
// deadlocked its Close for good. Broker.Close must not go that way.
func TestBrokerCloseWhileClientsComeAndGo(t *testing.T) {
	h := newHarness(t)
	for i := range 200 {
		// Not newNetBroker: its cleanup's Close would wait forever
		// behind a hung one, and the test would hang instead of failing.
		b, err := NewBroker(h.svc, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.ListenTLS("127.0.0.1:0", []string{"localhost"}); err != nil {
			t.Fatal(err)
		}
		if _, err := b.ListenTCP("127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if err := b.Serve(); err != nil {
			t.Fatal(err)
		}
		for _, l := range []string{listenerTLS, listenerTCP} {
			c, peer := net.Pipe()
			peer.Close() // the disconnection's write fails at once
			cl := b.server.NewClient(c, l, "d-listed-"+l, false)
			b.server.Clients.Add(cl)
		}
		// Clients connecting and leaving, as fast as the client list
		// takes them.
		stop := make(chan struct{})
		churned := make(chan struct{})
		go func() {
			defer close(churned)
			cl := b.server.NewClient(nil, memoryListener, "d-churn", false)
			for {
				select {
				case <-stop:
					return
				default:
				}
				b.server.Clients.Add(cl)
				b.server.Clients.Delete(cl.ID)
			}
		}()
		closed := make(chan error, 1)
		go func() { closed <- b.Close() }()
		hung := false
		select {
		case err = <-closed:
		case <-time.After(10 * time.Second):
			hung = true
		}
		close(stop) // a hung Close leaves the churn blocked, not spinning
		if hung {
			t.Fatalf("broker %d: Close hung while clients came and went", i)
		}
		<-churned
		if err != nil {
			t.Fatalf("Close = %v", err)
		}
		for _, l := range []string{listenerTLS, listenerTCP} {
			if cl, ok := b.server.Clients.Get("d-listed-" + l); !ok || !cl.Closed() {
				t.Fatalf("broker %d: the %s listener's client was not disconnected", i, l)
			}
		}
	}
}

// TestCloseStopsLateClients: a network client that mochi lists after Close
// copied the client list is stopped as its session starts; in-process
// clients, and every client while the broker is not closing, are not.
func TestCloseStopsLateClients(t *testing.T) {
	b, _, _ := newNetBroker(t, newHarness(t))
	client := func(listener string) *mqtt.Client {
		c, peer := net.Pipe()
		t.Cleanup(func() { c.Close(); peer.Close() })
		return b.server.NewClient(c, listener, "d-late-"+listener, false)
	}
	early := client(listenerTCP)
	b.stopIfClosing(early)
	if early.Closed() {
		t.Error("a TCP client stopped while the broker was not closing")
	}
	b.closing.Store(true)
	late, inProcess := client(listenerTCP), client(memoryListener)
	b.stopIfClosing(late)
	b.stopIfClosing(inProcess)
	if !late.Closed() {
		t.Error("a TCP client listed while the broker closed was not stopped")
	}
	if inProcess.Closed() {
		t.Error("an in-process client was stopped: its own side ends it")
	}
}

// TestAcknowledgedOnceHandled: the broker acknowledges a device's message
// only once the service has handled it and queued its answer, so the
// PUBACK of an applied check-in means it is on record. The test holds the
// service in the middle of a check-in and checks that no PUBACK has come
// meanwhile.
func TestAcknowledgedOnceHandled(t *testing.T) {
	h := newHarness(t)
	b, _ := newTestBroker(t, h, false)
	mustDo(t, h.svc.SetAuthority, ModeOffice365)
	d := h.mqttEnroll(t, b, protocol.PlatformAndroid, "ada@contoso.example", "r-1")

	decided, release := make(chan struct{}), make(chan struct{})
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(unblock) // before the broker's Close, which waits for the connection
	h.svc.testHookDecided = func() { close(decided); <-release }
	id, _ := protocol.NewMessageID(h.rng)
	msg := encodeAt(t, d.id, id, h.clock.Now(),
		&protocol.CheckIn{Reason: protocol.CheckInScheduled, CertificateExpiry: protocol.At(testStart.AddDate(1, 0, 0))})
	tok := d.c.Publish(protocol.UplinkTopic("contoso", d.id), 1, false, msg)
	select {
	case <-decided:
	case <-time.After(5 * time.Second):
		t.Fatal("the check-in did not reach the service")
	}
	if tok.WaitTimeout(200 * time.Millisecond) {
		t.Fatal("the check-in was acknowledged while the service was still handling it")
	}
	unblock()
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("the check-in was not acknowledged: %v", tok.Error())
	}
	rec, _, err := h.svc.Device(d.id)
	if err != nil {
		t.Fatal(err)
	}
	if rec.LastMessage != id {
		t.Errorf("acknowledged, but the device's last applied message is %v; want the check-in %v", rec.LastMessage, id)
	}
	if r, _ := receive[*protocol.CheckInResponse](t, d.msgs, protocol.DownlinkTopic("contoso", d.id)); r.Error != protocol.CodeNone {
		t.Errorf("check-in answered with %s", r.Error)
	}
}

// TestAnswerWrittenDirectly checks when the service's answer to a client
// skips mochi's routing (Broker.deliver): only to a client that holds the
// answer's topic at its QoS or above and has nothing unacknowledged, so
// that an answer never overtakes what the broker queued before it; and
// that it is held in flight until the client acknowledges it, as mochi
// holds what it routes.
func TestAnswerWrittenDirectly(t *testing.T) {
	h := newHarness(t)
	b, _ := newTestBroker(t, h, false)
	mustDo(t, h.svc.SetAuthority, ModeIntune)
	d := h.mqttEnroll(t, b, protocol.PlatformWindows, "ada@contoso.example", "r-1")
	d.c.Disconnect(50)
	// The device again, acknowledging only when told to.
	user, password := credentialsOf(t, h, d.id)
	var rc *recordingConn
	connected := make(chan struct{})
	c, msgs, err := pahoClientOver(t, func(c net.Conn) {
		rc = &recordingConn{Conn: c}
		close(connected)
		b.Connect(rc)
	}, d.id, user, password, func(o *paho.ClientOptions) { o.SetAutoAckDisabled(true) })
	if err != nil {
		t.Fatal(err)
	}
	<-connected
	downlink := protocol.DownlinkTopic("contoso", d.id)
	subscribe(t, c, downlink)
	cl, ok := b.server.Clients.Get(d.id)
	if !ok {
		t.Fatal("the device's client is not listed")
	}
	inFlight := func(want int, what string) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); cl.State.Inflight.Len() != want || atomic.LoadInt64(&b.server.Info.Inflight) != int64(want); {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d in flight for the client, %d in the broker; want %d", what,
					cl.State.Inflight.Len(), atomic.LoadInt64(&b.server.Info.Inflight), want)
			}
			time.Sleep(time.Millisecond)
		}
	}
	next := func(want string) paho.Message {
		t.Helper()
		select {
		case m := <-msgs:
			if m.Topic() != downlink || (want != "" && string(m.Payload()) != want) || m.Qos() != 1 {
				t.Fatalf("received %q on %s at QoS %d; want %q on %s at QoS 1", m.Payload(), m.Topic(), m.Qos(), want, downlink)
			}
			return m
		case <-time.After(5 * time.Second):
			t.Fatalf("%q not received", want)
		}
		return nil
	}
	inFlight(0, "connected") // the enrollment's answer was acknowledged

	if !b.deliver(cl, Outgoing{Topic: downlink, QoS: 1, Payload: []byte("first")}) {
		t.Fatal("an answer to a client with nothing in flight was not written directly")
	}
	first := next("first")
	inFlight(1, "the first answer, not yet acknowledged")

	// The client has not acknowledged the first: a second answer goes
	// through mochi, behind anything mochi queued.
	if b.deliver(cl, Outgoing{Topic: downlink, QoS: 1, Payload: []byte("second")}) {
		t.Fatal("an answer was written directly while the client had one unacknowledged")
	}
	b.publishShare([]Outgoing{{Topic: downlink, QoS: 1, Payload: []byte("second")}})
	second := next("second")
	inFlight(2, "two answers, not yet acknowledged")
	first.Ack()
	second.Ack()
	inFlight(0, "both acknowledged")

	for _, c := range []struct {
		name string
		o    Outgoing
	}{
		{"QoS 2", Outgoing{Topic: downlink, QoS: 2, Payload: []byte("x")}},
		{"QoS 0, to a client whose connection does not write at once", Outgoing{Topic: downlink, QoS: 0, Payload: []byte("x")}},
		{"a topic the client did not subscribe to", Outgoing{Topic: protocol.DownlinkTopic("contoso", "someone-else"), QoS: 1, Payload: []byte("x")}},
	} {
		if b.deliver(cl, c.o) {
			t.Errorf("%s: written directly; want it left to mochi", c.name)
		}
	}

	// Its own topic, once it has unsubscribed.
	if tok := c.Unsubscribe(downlink); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("unsubscribe: %v", tok.Error())
	}
	if b.deliver(cl, Outgoing{Topic: downlink, QoS: 1, Payload: []byte("x")}) {
		t.Error("an answer was written directly to a client no longer subscribed to its topic")
	}
	subscribe(t, c, downlink)

	// QoS 2, even to a client subscribed at QoS 2, is left to mochi; a
	// client subscribed at QoS 0 gets its answers at QoS 0, from mochi.
	e := h.mqttEnroll(t, b, protocol.PlatformAndroid, "bob@contoso.example", "r-2")
	eDown := protocol.DownlinkTopic("contoso", e.id)
	ecl, _ := b.server.Clients.Get(e.id)
	for _, c := range []struct{ sub, qos byte }{{2, 2}, {0, 1}} {
		if tok := e.c.Subscribe(eDown, c.sub, nil); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("subscribe at QoS %d: %v", c.sub, tok.Error())
		}
		if b.deliver(ecl, Outgoing{Topic: eDown, QoS: c.qos, Payload: []byte("x")}) {
			t.Errorf("a message at QoS %d was written directly to a client subscribed at QoS %d", c.qos, c.sub)
		}
	}

	// A whole check-in: the broker hands it to the service, which
	// answers; the answer is written straight to the device, not from
	// mochi's writing goroutine, and nothing stays in flight once the
	// device has acknowledged it.
	queued, direct := rc.counts()
	publish(t, h, c, protocol.UplinkTopic("contoso", d.id), d.id, &protocol.CheckIn{
		Reason: protocol.CheckInScheduled, CertificateExpiry: protocol.At(testStart.AddDate(1, 0, 0))})
	m := next("")
	if env, err := protocol.Decode(m.Payload()); err != nil {
		t.Fatal(err)
	} else if r, ok := env.Body.(*protocol.CheckInResponse); !ok || r.Error != protocol.CodeNone {
		t.Errorf("check-in answered with %v", env.Body)
	}
	if q, i := rc.counts(); q != queued || i != direct+1 {
		t.Errorf("the check-in's answer: %d from mochi's writing goroutine, %d written at once; want 0 and 1", q-queued, i-direct)
	}
	m.Ack()
	inFlight(0, "a check-in answered and acknowledged")
}

// recordingConn is the broker's end of a test client's pipe. It counts the
// PUBLISH packets the broker wrote to it from mochi's writing goroutine of
// the client (queued), and from anywhere else (written at once).
type recordingConn struct {
	net.Conn
	mu                sync.Mutex
	queued, immediate int
}

func (c *recordingConn) Write(p []byte) (int, error) {
	if len(p) > 0 && p[0]>>4 == packets.Publish {
		stack := make([]byte, 64<<10)
		stack = stack[:runtime.Stack(stack, false)]
		c.mu.Lock()
		if bytes.Contains(stack, []byte("(*Client).WriteLoop")) {
			c.queued++
		} else {
			c.immediate++
		}
		c.mu.Unlock()
	}
	return c.Conn.Write(p)
}

func (c *recordingConn) counts() (queued, immediate int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.queued, c.immediate
}

// immediateConn is a recordingConn marked as writing at once
// (ImmediateConn). Over net.Pipe a write waits for the client to read it,
// which the mark says it never does; the test's clients read at once.
type immediateConn struct{ recordingConn }

func (c *immediateConn) WritesImmediately() {}

// TestFanOutDelivery checks how the fan-out's pushes reach devices: written
// by the fan-out itself to a client whose connection writes at once,
// routed by mochi to any other, and not published at all for a device
// with no session, which no client could read.
func TestFanOutDelivery(t *testing.T) {
	h := newHarness(t)
	b, _ := newTestBroker(t, h, false)
	mustDo(t, h.svc.SetAuthority, ModeOffice365)
	devs := h.mustEnrollN(3)
	immediate, plain, absent := devs[0].id, devs[1].id, devs[2].id

	var ic *immediateConn
	connected := make(chan struct{})
	user, password := credentialsOf(t, h, immediate)
	ci, imsgs, err := pahoClientOver(t, func(c net.Conn) {
		ic = &immediateConn{recordingConn{Conn: c}}
		close(connected)
		b.Connect(ic)
	}, immediate, user, password)
	if err != nil {
		t.Fatal(err)
	}
	<-connected
	subscribe(t, ci, protocol.DownlinkTopic("contoso", immediate))
	cp, pmsgs := pahoClient(t, h, b, plain)
	subscribe(t, cp, protocol.DownlinkTopic("contoso", plain))

	mustDo(t, h.svc.SetAuthority, ModeIntune)
	// A QoS 1 message the client has not acknowledged does not hold up a
	// push (QoS 0): every push to that client is written at once, so none
	// waits in mochi's queue for a later one to overtake.
	icl, _ := b.server.Clients.Get(immediate)
	icl.State.Inflight.Set(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 60000,
		TopicName: protocol.DownlinkTopic("contoso", immediate)})
	defer icl.State.Inflight.Delete(60000)
	routed := atomic.LoadInt64(&b.server.Info.MessagesReceived)
	n, err := b.PublishDuePushes(10)
	if err != nil || n != 3 {
		t.Fatalf("PublishDuePushes = %d, %v; want 3 pushes", n, err)
	}
	receive[*protocol.Push](t, imsgs, protocol.DownlinkTopic("contoso", immediate))
	receive[*protocol.Push](t, pmsgs, protocol.DownlinkTopic("contoso", plain))
	if queued, direct := ic.counts(); queued != 0 || direct != 1 {
		t.Errorf("pushes to the client that writes at once: %d from mochi's writing goroutine, %d written by the fan-out; want 0 and 1", queued, direct)
	}
	// mochi counts every message published through it: the push to the
	// client connected plainly, and not the one to the absent device.
	if got := atomic.LoadInt64(&b.server.Info.MessagesReceived) - routed; got != 1 {
		t.Errorf("the fan-out published %d pushes through mochi; want 1 (to %s; none to %s, which has no session)", got, plain, absent)
	}
}
