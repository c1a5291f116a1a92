package broker

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mdm-authority/mdm/protocol"
)

// Broker is the embedded MQTT broker (mochi-mqtt) with the service attached
// to it through its publish hook (authHook.OnPublish): a device's message
// is handled in the goroutine of that device's connection (or of the
// caller of Session.Send), before the broker acknowledges it, so each
// device has at most one message in flight and the store batches the
// writes of many devices.
//
// Clients reach it in three ways. ListenTLS serves MQTT over TLS on the
// network: a device proves its identity with its MDM certificate (mutual
// TLS). ListenTCP, only when asked for, serves plain MQTT, and Connect
// attaches an in-process connection (one end of a net.Pipe); there a
// device proves its identity with its connect token, a password bound to
// its certificate. Everywhere an enrolling client sends the enrollment
// token as its password. No client connects anonymously.
type Broker struct {
	server *mqtt.Server
	svc    *Service
	log    *slog.Logger
	// badInput logs dropped device messages at a bounded rate.
	badInput *rateLog
	tracker  atomic.Pointer[Tracker]
	// nets are the ids of the network listeners, added before Serve.
	nets []string

	// closing is set once Close has begun: a network client listed after
	// Close copied the client list is stopped by the auth hook.
	closing   atomic.Bool
	closeOnce sync.Once
	closeErr  error
}

// minLevel passes on only records at or above its level.
type minLevel struct {
	slog.Handler
	level slog.Level
}

func (h minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.level && h.Handler.Enabled(ctx, l)
}

func (h minLevel) WithAttrs(as []slog.Attr) slog.Handler {
	return minLevel{h.Handler.WithAttrs(as), h.level}
}

func (h minLevel) WithGroup(name string) slog.Handler {
	return minLevel{h.Handler.WithGroup(name), h.level}
}

// maxPacket bounds an MQTT packet: the largest payload plus room for the
// topic and headers. Larger packets are refused by the broker before any
// of it reaches the service.
const maxPacket = protocol.MaxPayload + 1024

// NewBroker returns an embedded broker serving svc.
func NewBroker(svc *Service, logger *slog.Logger) (*Broker, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = maxPacket
	caps.MaximumClientWritesPending = 64
	// mochi logs every refused connection as a warning; keep its log to
	// errors, so that unauthenticated clients cannot fill the service log.
	s := mqtt.New(&mqtt.Options{InlineClient: true, Capabilities: caps,
		Logger: slog.New(minLevel{logger.Handler(), slog.LevelError})})
	if err := slowHousekeeping(s, housekeepingEvery); err != nil {
		// Slower at scale, not wrong: TestSlowHousekeeping catches it
		// when mochi is upgraded.
		logger.Warn("broker: mochi's housekeeping stays at every second", "err", err)
	}
	b := &Broker{server: s, svc: svc, log: logger, badInput: newRateLog(logger, svc.opts.Clock)}
	// The only hook: the service's messages reach devices without some of
	// mochi's routing hooks (see deliver), so a hook that relies on them
	// needs deliver turned off.
	if err := s.AddHook(&authHook{svc: svc, log: newRateLog(logger, svc.opts.Clock), broker: b}, nil); err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	kick := b.disconnect
	svc.disconnect.Store(&kick)
	return b, nil
}

// Serve starts the broker's housekeeping. It returns at once.
func (b *Broker) Serve() error { return b.server.Serve() }

// Close stops the network listeners, disconnects their clients, waits for
// every connection to end (in-process ones end when their side closes),
// and stops the broker. Closing twice is harmless (mochi's own Close
// panics the second time).
func (b *Broker) Close() error {
	b.closeOnce.Do(func() {
		b.closeNetClients()
		b.closeErr = b.server.Close()
	})
	return b.closeErr
}

// closeNetClients stops the network listeners and disconnects their
// clients, which mochi's Close would do itself but for a deadlock: in
// mochi v2.7.9, Clients.GetByListener read-locks the client list twice,
// and a client that connects or leaves between the two locks blocks
// both for good (mochi-mqtt/server#488). Closed here, a listener is
// skipped by mochi's Close, which then only waits for the connections to
// end. The client list is copied under one read lock; a client accepted
// before its listener closed but listed after the copy is stopped by the
// auth hook (see stopIfClosing). Once a mochi release fixes #488, mochi's
// Close can do this again.
func (b *Broker) closeNetClients() {
	b.closing.Store(true)
	for _, id := range b.nets {
		b.server.Listeners.Close(id, func(string) {})
	}
	for _, cl := range b.server.Clients.GetAll() {
		if slices.Contains(b.nets, cl.Net.Listener) && !cl.Closed() {
			if cl.Net.Conn != nil {
				// A peer that stopped reading cannot hold up shutdown.
				cl.Net.Conn.SetWriteDeadline(time.Now().Add(closeWriteTimeout))
			}
			b.server.DisconnectClient(cl, packets.ErrServerShuttingDown)
		}
	}
}

// closeWriteTimeout bounds the broker's last write to a network client,
// the disconnection, when the broker closes.
const closeWriteTimeout = time.Second

// stopIfClosing stops a network client that mochi listed after Close
// began: closeNetClients may have copied the client list before it.
// Either the copy has the client or this sees closing set, since the
// client is listed before this runs and closing is set before the copy.
func (b *Broker) stopIfClosing(cl *mqtt.Client) {
	if b.closing.Load() && slices.Contains(b.nets, cl.Net.Listener) {
		cl.Stop(packets.ErrServerShuttingDown)
	}
}

// Connect serves one in-process client connection, such as one end of a
// net.Pipe, until it closes. It blocks; run it in its own goroutine. The
// client authenticates as on the plain-TCP listener: a device with its id
// and connect token, an enrolling client with the enrollment token.
//
// A conn that implements ImmediateConn gets the service's pushes written
// to it in the fan-out's goroutines (see ImmediateConn).
func (b *Broker) Connect(conn net.Conn) error {
	_, immediate := conn.(ImmediateConn)
	return b.server.EstablishConnection(memoryListener, &sessionConn{Conn: conn, immediate: immediate})
}

// An ImmediateConn is an in-process connection (Connect) whose Write hands
// what the broker writes to the client at once and never waits for the
// client to read it, such as the simulator's, which handles each packet
// within the call. The broker writes the service's pushes to such a
// client itself, from the fan-out's goroutines, when mochi's routing would
// deliver them the same way (see Broker.deliver), instead of queueing them
// for the client's own writing goroutine. A connection whose Write may
// wait for its reader (a pipe read at the client's pace, a network
// socket) must not be one: a client slow to read would hold up the
// fan-out to every other device.
type ImmediateConn interface {
	net.Conn
	// WritesImmediately marks the connection; it is never called.
	WritesImmediately()
}

// sessionConn is the broker's end of an in-process connection (Connect).
// It counts the messages of its client that the service has taken (in
// authHook.OnPublish), so that Session.Send can tell a message the
// service took from one the broker refused when mochi reports an error:
// the service takes a message before the broker acknowledges it, and the
// session may end in between.
type sessionConn struct {
	net.Conn
	taken     atomic.Uint64
	immediate bool // Conn is an ImmediateConn
}

// ListenTLS serves MQTT over TLS on addr (host:port; port 0 picks one) with
// a server certificate from the service CA for names, and returns the
// address it listens on. Call it before Serve. Client certificates are
// requested but checked at MQTT CONNECT against the service's clock, not in
// the TLS handshake, so that a simulator's virtual time governs expiry.
func (b *Broker) ListenTLS(addr string, names []string) (net.Addr, error) {
	dns, ips := splitHosts(names)
	cert, err := b.svc.ca.ServerCertificate(dns, ips, b.svc.opts.Clock.Now(), 365*24*time.Hour)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	ln, err := tls.Listen("tcp", addr, &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequestClientCert,
		MinVersion:   tls.VersionTLS12,
	})
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	if err := b.server.AddListener(listeners.NewNet(listenerTLS, deadlineListener{ln})); err != nil {
		ln.Close()
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	b.nets = append(b.nets, listenerTLS)
	return ln.Addr(), nil
}

// ListenTCP serves plain MQTT over TCP on addr and returns the address it
// listens on. Call it before Serve. Nothing on it is encrypted: devices
// authenticate with their connect token, enrolling clients with the
// enrollment token, and both cross the network in cleartext. It is meant
// for load tests on a trusted network and for a TLS-terminating proxy in
// front; use ListenTLS otherwise.
func (b *Broker) ListenTCP(addr string) (net.Addr, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	if err := b.server.AddListener(listeners.NewNet(listenerTCP, deadlineListener{ln})); err != nil {
		ln.Close()
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	b.nets = append(b.nets, listenerTCP)
	return ln.Addr(), nil
}

// serviceTopic reports whether topic is one the service takes: an uplink
// or an enrollment request of its tenant.
func (b *Broker) serviceTopic(topic string) bool {
	t, err := protocol.ParseTopic(topic)
	return err == nil && t.Tenant == b.svc.opts.Tenant &&
		(t.Kind == protocol.TopicUplink || t.Kind == protocol.TopicEnrollRequest)
}

// onMessage hands a device's message to the service and publishes the
// answers. A message the service drops is counted there and logged here,
// at a bounded rate.
func (b *Broker) onMessage(cl *mqtt.Client, pk packets.Packet) {
	if sc, ok := cl.Net.Conn.(*sessionConn); ok {
		sc.taken.Add(1)
	}
	out, err := b.svc.HandleMessage(context.Background(), pk.TopicName, pk.Payload)
	if err != nil {
		b.badInput.Warn("device message dropped", "client", cl.ID, "remote", cl.Net.Remote,
			"topic", pk.TopicName, "bytes", len(pk.Payload), "reason", dropNames[dropReason(err)], "err", err)
	}
	for _, o := range out {
		if !b.deliver(cl, o) {
			b.route(o, cl)
		}
	}
	b.track(-1)
}

// deliver writes o, a message of the service, straight to cl, the client
// it is for, instead of publishing it through mochi: it then skips mochi's
// lookup of the topic's subscribers (at 100,000 devices, several maps
// built and a subscriber list copied for every message, under the topic
// tree's shared locks), the copy of the message for each subscriber, and
// the hand-over to the client's writing goroutine. It is called for the
// service's answer to a message of cl, in the goroutine that handles that
// message, where mochi writes the message's PUBACK too; and for a push to
// a client whose connection writes at once (ImmediateConn), from the
// fan-out.
//
// The client gets what mochi's routing would have given it, so deliver
// acts only where that is plain. The topic has one possible reader: a
// device's downlink or an enrolling client's answer topic may be read by
// the client it names alone, with no wildcards (OnACLCheck), so the
// client's own subscription to it is the only one. The client speaks
// MQTT 3.1 or 3.1.1 (no properties, topic aliases or flow-control quota)
// and holds that subscription at the message's QoS or above, so mochi
// would not lower it. And the message cannot overtake one sent earlier on
// the same topic at the same QoS, as MQTT's ordering requires: at QoS 1,
// nothing sent to the client is unacknowledged (mochi holds whatever it
// queues at QoS 1 as in flight until the client acknowledges it); QoS 0
// messages (the pushes) are written here only to a client whose
// connection writes at once, whose every QoS 0 message is then written
// here, so none is queued in mochi. Otherwise it reports false, and the
// caller publishes o through mochi. A QoS 1 answer may still reach a
// client before a push mochi queued for it earlier, which MQTT allows
// across QoS levels.
//
// As in mochi, a QoS 1 message is held in flight until its PUBACK, with
// mochi's expiry, and the broker's counts of messages and bytes sent and
// of messages in flight are kept. What is skipped is the routing's hooks
// (the service's own OnPublish for the inline client, OnACLCheck again,
// OnQosPublish, OnSelectSubscribers) and its count of messages received:
// the only hook, authHook, passes inline messages through and provides no
// other of them. A message whose write fails (the connection closed under
// it) is not reported, as mochi's writing goroutine does not, and no
// longer counted in flight for the tracker.
func (b *Broker) deliver(cl *mqtt.Client, o Outgoing) bool {
	if o.QoS > 1 || cl.Net.Inline || cl.Properties.ProtocolVersion >= 5 || cl.Closed() || cl.Net.Conn == nil {
		return false
	}
	if sub, ok := cl.State.Subscriptions.Get(o.Topic); !ok || sub.Qos < o.QoS {
		return false
	}
	if o.QoS == 0 && !writesAtOnce(cl) {
		return false
	}
	if o.QoS == 1 && cl.State.Inflight.Len() > 0 {
		return false
	}
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: o.QoS},
		TopicName:   o.Topic,
		Payload:     o.Payload,
		Created:     time.Now().Unix(),
	}
	if e := b.server.Options.Capabilities.MaximumMessageExpiryInterval; e > 0 {
		pk.Expiry = pk.Created + e
	}
	if pk.FixedHeader.Qos > 0 {
		id, err := cl.NextPacketID()
		if err != nil {
			return false
		}
		pk.PacketID = uint16(id)
		if cl.State.Inflight.Set(pk) {
			atomic.AddInt64(&b.server.Info.Inflight, 1)
			cl.State.Inflight.DecreaseSendQuota()
		}
	}
	b.track(1) // before the write: the client may count it down in it
	if err := cl.WritePacket(pk); err != nil {
		b.track(-1) // it did not arrive
		b.log.Debug("message not written", "client", cl.ID, "topic", o.Topic, "err", err)
	}
	return true
}

// publish publishes the fan-out's pushes. A large batch is published in
// shares, one goroutine per core: each push goes to another device, so
// their order does not matter, and finding a device's session in the
// broker's topic tree, or writing to a connection that writes at once,
// costs more than the rest; a small one is published in order on the
// caller's goroutine. The service's answers do not come here: onMessage
// delivers or routes each itself.
func (b *Broker) publish(out []Outgoing) {
	inShares(len(out), minShare, func(lo, hi int) { b.publishShare(out[lo:hi]) })
}

// publishShare publishes out in order. A message for a device or an
// enrolling client that has no session at all, connected or kept, is
// dropped: no client could read it (see deliver). One for a client whose
// connection writes at once is written to it when deliver can.
func (b *Broker) publishShare(out []Outgoing) {
	for _, o := range out {
		cl, named := b.reader(o.Topic)
		if named && cl == nil {
			continue
		}
		if cl != nil && writesAtOnce(cl) && b.deliver(cl, o) {
			continue
		}
		b.route(o, cl)
	}
}

// route publishes o through mochi's routing. It is counted for the
// tracker when cl, the client that may read it, is connected.
func (b *Broker) route(o Outgoing, cl *mqtt.Client) {
	counted := cl != nil && !cl.Closed()
	if counted {
		b.track(1)
	}
	if err := b.server.Publish(o.Topic, o.Payload, false, o.QoS); err != nil {
		b.log.Warn("publish failed", "topic", o.Topic, "err", err)
		if counted {
			b.track(-1) // it will not arrive
		}
	}
}

// Tracker counts the work in flight in the broker, for a caller that must
// know when everything has settled: the simulator's virtual clock advances
// only then. Add is called with +1 for every message published to a
// connected client (the client counts it down once it has handled it), -1
// when the broker drops one of those, and -1 once a client's message has
// been handled and its answers published (the client counts it up when it
// publishes). Add is called from many goroutines.
type Tracker interface {
	Add(delta int64)
}

// SetTracker installs t; call it before clients connect.
func (b *Broker) SetTracker(t Tracker) { b.tracker.Store(&t) }

// track passes delta to the tracker, if there is one.
func (b *Broker) track(delta int64) {
	if t := b.tracker.Load(); t != nil && delta != 0 {
		(*t).Add(delta)
	}
}

// Connected reports whether a client with that id has a live session.
// The simulator waits on it after it disconnects a device, so that no
// message is counted for a session that is going away.
func (b *Broker) Connected(clientID string) bool {
	cl, ok := b.server.Clients.Get(clientID)
	return ok && !cl.Closed()
}

// reader returns the one client that may read a downlink or enrollment
// answer topic (nil when it has no session), with named true; named is
// false for any other topic.
func (b *Broker) reader(topic string) (cl *mqtt.Client, named bool) {
	t, err := protocol.ParseTopic(topic)
	if err != nil || t.Tenant != b.svc.opts.Tenant || (t.Kind != protocol.TopicDownlink && t.Kind != protocol.TopicEnrollResponse) {
		return nil, false
	}
	cl, _ = b.server.Clients.Get(topicClient(t))
	return cl, true
}

// writesAtOnce reports whether cl is connected in process over an
// ImmediateConn.
func writesAtOnce(cl *mqtt.Client) bool {
	sc, ok := cl.Net.Conn.(*sessionConn)
	return ok && sc.immediate
}

// releaseTimeout bounds the wait of a connecting client for the earlier
// connection with its client id to let go; it takes microseconds unless
// that connection's goroutine is stuck.
const releaseTimeout = 5 * time.Second

// awaitRelease waits until an earlier connection with cl's client id has
// finished with its session, closing it first if it is still open.
//
// mochi (v2.7.9) ends a clean session in the goroutine of its connection,
// after the connection closed: it drops the subscriptions, then deletes
// the client from its list by client id. A client that connects again in
// between (the device reconnects while the broker is still closing its
// last connection, or mochi takes over a connection that is still open)
// has its new entry deleted: the broker then delivers it nothing, neither
// answers nor pushes, and cannot kick it, while its own messages still go
// through, until it connects again. Waiting here, before mochi lists the
// new client, leaves the earlier connection nothing to delete but itself.
func (b *Broker) awaitRelease(cl *mqtt.Client) {
	old, ok := b.server.Clients.Get(cl.ID)
	if !ok || old == cl || old.Net.Inline || !sessionEnds(old) {
		return // nothing listed, or a session that outlives its connection: mochi takes it over
	}
	if !old.Closed() {
		// As mochi's takeover would, but before the new client is listed.
		b.server.DisconnectClient(old, packets.ErrSessionTakenOver)
	}
	wait := 50 * time.Microsecond
	for deadline := time.Now().Add(releaseTimeout); ; {
		if cur, ok := b.server.Clients.Get(cl.ID); !ok || cur != old {
			return
		}
		if time.Now().After(deadline) {
			b.log.Warn("earlier connection still holds its session; connecting anyway", "client", cl.ID,
				"remote", cl.Net.Remote, "earlier_remote", old.Net.Remote, "waited", releaseTimeout)
			return
		}
		time.Sleep(wait)
		wait = min(2*wait, 10*time.Millisecond)
	}
}

// sessionEnds reports whether mochi ends cl's session when its connection
// closes (a clean session), deleting cl from its client list.
func sessionEnds(cl *mqtt.Client) bool {
	if cl.Properties.ProtocolVersion == 5 {
		return cl.Properties.Props.SessionExpiryInterval == 0
	}
	return cl.Properties.Clean
}

// connectTimeout bounds the time a network client has to finish the TLS
// handshake and send MQTT CONNECT; after CONNECT the broker's keep-alive
// deadlines take over.
const connectTimeout = 10 * time.Second

// deadlineListener gives each accepted connection connectTimeout to
// connect, so that idle connections neither pile up nor hold up shutdown.
type deadlineListener struct{ net.Listener }

func (l deadlineListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		c.SetDeadline(time.Now().Add(connectTimeout))
	}
	return c, err
}

// disconnect ends the session of a client, if it is connected.
func (b *Broker) disconnect(id string) {
	if cl, ok := b.server.Clients.Get(id); ok && !cl.Net.Inline {
		cl.Stop(packets.ErrNotAuthorized)
	}
}

// PublishDuePushes publishes up to max pushes that are due and returns
// how many it sent (a push for a device with no session is sent, and
// reaches no one): one step of the fan-out, for a caller that runs it on a
// clock of its own (the simulator's). RunFanOut runs it on ticks.
func (b *Broker) PublishDuePushes(max int) (int, error) {
	out, err := b.svc.DuePushes(max)
	if err != nil {
		return 0, err
	}
	b.publish(out)
	return len(out), nil
}

// RunFanOut publishes the pushes that are due, at most perTick of them at
// each tick, until ctx is done: with a tick every interval, the fan-out
// rate is perTick/interval, which keeps an authority change over a large
// fleet from flooding the broker. The ticks come from the caller (a
// time.Ticker in the service, a test's channel in tests).
func (b *Broker) RunFanOut(ctx context.Context, ticks <-chan time.Time, perTick int) error {
	return runFanOut(ctx, b.svc, b, b.log, ticks, perTick)
}
