package fleetsim

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// This file is a lean MQTT 3.1.1 client for the simulated devices. paho
// runs several goroutines and channels per client and per message, which
// keeps the simulator from a fleet of 100,000 devices; this client has at
// most one long-lived goroutine per session (the reader) and no channels
// per message. In process it has none: the broker's writes are handed to
// the session as they are made (directConn), and once attached to an
// uplink the session's own packets go to the broker without being written
// (broker.Session). It speaks only what a device needs: CONNECT with a
// clean session and no keep-alive, one QoS 1 subscription, QoS 1
// publishing, and PUBACKs for what arrives. Packets are encoded and
// decoded with mochi's codec, the one the broker uses.

// mqttMaxPacket bounds the remaining length of a packet from the broker.
// The service's largest payload is protocol.MaxPayload (64 KiB); anything
// much larger is a broken or hostile peer, and reading it would let one
// session allocate without limit.
const mqttMaxPacket = 1 << 20

// mqttReadBuffer is the size of a session's read buffer: enough for a
// fixed header and the small acknowledgements in one read, small enough for
// 100,000 sessions. A larger PUBLISH is read straight into its own slice.
const mqttReadBuffer = 128

// mqttDefaultTimeout bounds the handshake when mqttOptions.Timeout is zero.
const mqttDefaultTimeout = 30 * time.Second

// CONNACK return codes of MQTT 3.1.1 (section 3.2.2.3), indexed by code.
var mqttConnackCodes = [...]string{
	0: "connection accepted",
	1: "unacceptable protocol version",
	2: "client identifier rejected",
	3: "server unavailable",
	4: "bad user name or password",
	5: "not authorized",
}

// mqttSubackFailure is the SUBACK return code for a refused subscription.
const mqttSubackFailure = 0x80

var (
	// errMQTTRefused means the broker answered CONNECT with a non-zero
	// return code.
	errMQTTRefused = errors.New("the broker refused the connection")
	// errMQTTSubscribeRefused means the broker answered SUBSCRIBE with the
	// failure return code, as it does for a topic the client may not read.
	errMQTTSubscribeRefused = errors.New("the broker refused the subscription")
	// errMQTTClosed is why a session ended when Close ended it.
	errMQTTClosed = errors.New("mqtt session closed")
	// errMQTTBrokerClosed is why a session ended when the broker closed
	// the connection.
	errMQTTBrokerClosed = errors.New("the broker closed the connection")
	// errMQTTTooLarge means the broker sent a packet over mqttMaxPacket.
	errMQTTTooLarge = errors.New("packet too large")
)

// mqttOptions is what a session needs.
type mqttOptions struct {
	ClientID, Username, Password string
	// Subscribe is one topic filter, subscribed at QoS 1 right after
	// CONNACK; dialMQTT returns only once the broker has granted it.
	// Empty means no subscription.
	Subscribe string
	// OnMessage is called with the payload of each PUBLISH received, in
	// order: during dialMQTT from the dialing goroutine, then from the
	// session's reader goroutine; in a direct session (dialMQTTDirect)
	// from the broker's goroutine that writes to the device, while the
	// broker holds that client's lock. The payload is the callee's to
	// keep. OnMessage must not block for long, and must not call Publish
	// or Close: on an unbuffered transport (net.Pipe) the broker may be
	// waiting for the reader to take its next packet before it reads what
	// Publish writes, and Close waits for the reader. It is not called
	// once Close has returned. Nil discards messages.
	OnMessage func(payload []byte)
	// Timeout bounds the wait for CONNACK and SUBACK, and the DISCONNECT
	// written by Close (an attached session's Close waits up to twice:
	// for the broker to take its DISCONNECT, then to let it go); default
	// 30s.
	Timeout time.Duration
}

// mqttConn is one MQTT 3.1.1 session over an established connection.
//
// Writes (Publish, PUBACKs, DISCONNECT) are serialised by mu, and each
// packet is encoded into a pooled buffer and written with one Write, so
// that an idle session holds no write buffer. The reader goroutine never
// writes and never waits for mu: on net.Pipe, which has no buffering, mochi
// writes the PUBACK for a device's PUBLISH from the goroutine that reads
// the device's packets, so a reader blocked writing its own PUBACK while
// the broker is blocked writing one to it would deadlock both. The reader
// therefore queues the PUBACKs it owes, and a short-lived goroutine writes
// them while the reader goes on reading.
type mqttConn struct {
	nc        net.Conn
	br        *bufio.Reader // used by the reader only (by dialMQTT before it starts); nil when direct
	onMessage func([]byte)
	id        string // the client id, for error messages
	timeout   time.Duration
	done      chan struct{} // closed when the session has ended (finish)
	doneOnce  sync.Once
	small     [8]byte // body of a small non-PUBLISH packet; as br

	// A direct session (dialMQTTDirect) has no reader: the broker's
	// writes come to deliver, one at a time. The handshake's answers
	// (CONNACK, SUBACK) go to the dialing goroutine through answers.
	direct      bool
	connacked   atomic.Bool          // the CONNACK has come
	handshook   atomic.Bool          // CONNACK and SUBACK have come
	answers     chan *packets.Packet // CONNACK and SUBACK, for the dialer
	handshakeBy time.Time            // the handshake's deadline; as the dialer
	partial     []byte               // the start of a packet split across writes; as deliver
	delivering  sync.Mutex           // held by deliver, and by Close once the session has ended

	mu     sync.Mutex // serialises writes; held while writing
	nextID uint16     // the last packet id used

	state  sync.Mutex // guards the fields below; never held across I/O
	cause  error      // why the session ended, once it has
	acks   []uint16   // packet ids of the PUBACKs owed to the broker
	acking bool       // an ack writer is running

	// An in-process session attached to an uplink sends its packets
	// through the uplink's queue up, to the broker's side of the session
	// sess, instead of writing them (attach). onLost is called, from the
	// queue's goroutine, for each PUBLISH the broker did not take after
	// Publish had returned; the first ends the session. attach sets the
	// three under state, before anything is sent through them; queueAck
	// reads them under state, and Publish, close and the queue (after the
	// queue's own lock) read them without.
	up     *uplinkQueue
	sess   packetSender
	onLost func()
	// closing: Close is handing DISCONNECT to an attached session's
	// queue, behind what the session queued before. Until the broker has
	// taken it the session lasts, so that what it queued is delivered;
	// it then ends as closed (errMQTTClosed), not as closed by the broker.
	closing bool

	ackers    sync.WaitGroup // the ack writer, while one runs
	pubacks   atomic.Uint64  // PUBACKs received for our publishes
	closeOnce sync.Once
	closeErr  error
}

// dialMQTT runs the MQTT handshake over nc, which is already connected (a
// net.Pipe end, a TCP connection or a *tls.Conn): protocol 3.1.1 (level
// 4), clean session, no keep-alive, no will. It subscribes to
// o.Subscribe, if set, and returns once the broker has granted it. On
// error nc is closed.
func dialMQTT(nc net.Conn, o mqttOptions) (*mqttConn, error) {
	if o.Timeout <= 0 {
		o.Timeout = mqttDefaultTimeout
	}
	if o.OnMessage == nil {
		o.OnMessage = func([]byte) {}
	}
	c := &mqttConn{nc: nc, br: bufio.NewReaderSize(nc, mqttReadBuffer), onMessage: o.OnMessage,
		id: o.ClientID, timeout: o.Timeout, done: make(chan struct{})}
	if err := c.handshake(o); err != nil {
		c.end(err)
		c.ackers.Wait()
		c.finish()
		return nil, err
	}
	go c.read()
	return c, nil
}

// directConn is the broker's end of an in-process session without a
// reader goroutine on the device's side. The broker reads what the device
// writes from a memPipe, as usual; what the broker writes is decoded and
// handled by the device's session at once, in the broker's goroutine that
// writes it (for the service's answers and pushes, when the broker can,
// the goroutine that made them: see WritesImmediately). A simulated
// device then needs no goroutine of its own, and a message reaches it
// without a hand-over between goroutines. mochi serialises a client's
// writes, so deliver is never called twice at once.
type directConn struct {
	net.Conn // the pipe's broker end: Read, addresses, deadlines
	c        *mqttConn
}

// newDirectPipe returns the device's end and the broker's end of an
// in-process session for dialMQTTDirect: a memPipe, on whose broker end
// the broker reads what the device writes. A session attached to an
// uplink writes there only its handshake (CONNECT, SUBSCRIBE, early
// PUBACKs); one that is not (Config.Wire) writes every packet.
func newDirectPipe() (net.Conn, *directConn) {
	client, server := newMemPipe()
	return client, &directConn{Conn: server}
}

// WritesImmediately marks the broker's end as a broker.ImmediateConn:
// Write hands each packet to the device within the call, and never waits
// (a message goes to the simulator's inbox, a PUBACK to the uplink's
// queue), so the broker writes the fan-out's pushes here itself.
func (d *directConn) WritesImmediately() {}

// Write hands what the broker writes to the device's session.
func (d *directConn) Write(p []byte) (int, error) {
	if err := d.c.deliver(p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Close closes the broker's end and ends the device's session: the
// broker has let it go. The pipe closes first, so that a PUBACK writer
// blocked on it returns before the wait for it. Each step is idempotent.
func (d *directConn) Close() error {
	err := d.Conn.Close()
	d.c.end(fmt.Errorf("mqtt session %s: %w", d.c.id, errMQTTBrokerClosed))
	d.c.ackers.Wait()
	d.c.finish()
	return err
}

// dialMQTTDirect is dialMQTT over an in-process session from
// newDirectPipe: nc is the device's end, and the caller serves be to the
// broker (Broker.Connect) once dialMQTTDirect has set it up, which start
// does. The session runs no reader goroutine.
func dialMQTTDirect(nc net.Conn, be *directConn, start func(), o mqttOptions) (*mqttConn, error) {
	if o.Timeout <= 0 {
		o.Timeout = mqttDefaultTimeout
	}
	if o.OnMessage == nil {
		o.OnMessage = func([]byte) {}
	}
	c := &mqttConn{nc: nc, onMessage: o.OnMessage, id: o.ClientID, timeout: o.Timeout, done: make(chan struct{}),
		direct: true, answers: make(chan *packets.Packet, 1)}
	be.c = c
	start()
	if err := c.handshake(o); err != nil {
		c.end(err)
		c.ackers.Wait()
		// The broker closes its end once it sees the pipe closed; a
		// broker that never does is no reason to hang.
		c.awaitRelease()
		return nil, err
	}
	c.handshook.Store(true)
	return c, nil
}

// attach makes the in-process session c send what it sends after its
// handshake through queue q to the broker's side of the session, sess
// (broker.Session), instead of writing it to the connection. Call it
// before the session's first Publish; onLost is called for each PUBLISH
// the broker did not take after Publish had returned, and the first ends
// the session. It returns once the PUBACKs owed from before, if any, have
// been written to the connection, so that the broker then takes the
// session's packets from the queue alone.
func (c *mqttConn) attach(q *uplinkQueue, sess packetSender, onLost func()) {
	c.state.Lock()
	c.up, c.sess, c.onLost = q, sess, onLost
	c.state.Unlock()
	c.ackers.Wait()
}

// awaitRelease waits, up to the session's timeout, until the broker has
// closed its end of a direct session, and reports whether it did. For a
// session with a reader, it waits until the reader has returned, which
// closing the connection ensures.
func (c *mqttConn) awaitRelease() bool {
	if !c.direct {
		<-c.done
		return true
	}
	t := time.NewTimer(c.timeout)
	defer t.Stop()
	select {
	case <-c.done:
		return true
	case <-t.C:
		return false
	}
}

// deliver decodes and handles the packets the broker wrote in p. A packet
// split across writes waits in partial for the rest (mochi writes whole
// packets, but nothing in net.Conn promises it). An error ends the
// session.
func (c *mqttConn) deliver(p []byte) error {
	c.delivering.Lock()
	defer c.delivering.Unlock()
	if len(c.partial) > 0 {
		p = append(c.partial, p...)
		c.partial = nil
	}
	for len(p) > 0 {
		// Nothing is delivered once the session has ended, Close
		// included: the broker's writes after that fail, as they would
		// on a closed connection.
		if c.Err() != nil {
			return net.ErrClosed
		}
		n, complete, err := c.deliverOne(p)
		if err != nil {
			err = fmt.Errorf("mqtt session %s: %w", c.id, err)
			c.end(err)
			return err
		}
		if !complete {
			c.partial = append([]byte(nil), p...)
			return nil
		}
		p = p[n:]
	}
	return nil
}

// deliverOne decodes and handles the packet at the start of p and returns
// its length, or complete false when p holds only its start.
func (c *mqttConn) deliverOne(p []byte) (n int, complete bool, err error) {
	r := bytes.NewReader(p[1:])
	length, _, err := packets.DecodeLength(r)
	if errors.Is(err, io.EOF) && len(p) > 4 {
		// Four length bytes, each saying that another follows: the most
		// MQTT allows (1.5.5).
		return 0, false, fmt.Errorf("remaining length: %w", packets.ErrMalformedVariableByteInteger)
	} else if errors.Is(err, io.EOF) {
		return 0, false, nil
	} else if err != nil {
		return 0, false, fmt.Errorf("remaining length: %w", err)
	}
	if length > mqttMaxPacket {
		return 0, false, fmt.Errorf("%w: the broker sent a packet of %d bytes; the limit is %d", errMQTTTooLarge, length, mqttMaxPacket)
	}
	start := len(p) - r.Len()
	if len(p)-start < length {
		return 0, false, nil
	}
	pk := mqttPackets.Get().(*packets.Packet)
	defer func() {
		*pk = packets.Packet{}
		mqttPackets.Put(pk)
	}()
	body := p[start : start+length]
	if p[0]>>4 == packets.Publish {
		body = slices.Clone(body) // the payload goes to the callee; p is the broker's
	}
	if err := c.decodePacket(p[0], body, pk); err != nil {
		return 0, false, err
	}
	switch t := pk.FixedHeader.Type; {
	case !c.connacked.Load() && t != packets.Connack:
		return 0, false, fmt.Errorf("the broker answered CONNECT with %s instead of CONNACK", packetName(t))
	case t == packets.Connack || t == packets.Suback:
		if c.handshook.Load() || (t == packets.Connack && c.connacked.Load()) {
			return 0, false, fmt.Errorf("unexpected %s packet from the broker", packetName(t))
		}
		c.connacked.Store(true)
		answer := *pk
		answer.ReasonCodes = slices.Clone(pk.ReasonCodes)
		select {
		case c.answers <- &answer:
		default:
			return 0, false, fmt.Errorf("unexpected %s packet from the broker", packetName(t))
		}
	default:
		if err := c.handle(pk); err != nil {
			return 0, false, err
		}
	}
	return start + length, true, nil
}

// nextAnswer waits for the next CONNACK or SUBACK of a direct session's
// handshake, until the deadline.
func (c *mqttConn) nextAnswer(pk *packets.Packet) error {
	t := time.NewTimer(time.Until(c.handshakeBy))
	defer t.Stop()
	select {
	case a := <-c.answers:
		*pk = *a
		return nil
	case <-c.done:
		// A broker that refuses the connection answers and closes it
		// at once: the answer says more.
		select {
		case a := <-c.answers:
			*pk = *a
			return nil
		default:
			return c.Err()
		}
	case <-t.C:
		return fmt.Errorf("no answer within %s of connecting", c.timeout)
	}
}

// finish marks the session as ended for Done.
func (c *mqttConn) finish() { c.doneOnce.Do(func() { close(c.done) }) }

// handshake sends CONNECT and SUBSCRIBE and waits for their answers, all
// within the timeout.
func (c *mqttConn) handshake(o mqttOptions) error {
	c.handshakeBy = time.Now().Add(o.Timeout)
	if err := c.nc.SetDeadline(c.handshakeBy); err != nil {
		return fmt.Errorf("mqtt connect %s: %w", c.id, err)
	}
	connect := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: 4,
		Connect: packets.ConnectParams{
			ProtocolName:     []byte("MQTT"),
			Clean:            true,
			ClientIdentifier: o.ClientID,
			UsernameFlag:     o.Username != "",
			Username:         []byte(o.Username),
			PasswordFlag:     o.Password != "",
			Password:         []byte(o.Password),
		},
	}
	if err := c.writePacket(&connect); err != nil {
		return fmt.Errorf("mqtt connect %s: send CONNECT: %w", c.id, err)
	}
	var pk packets.Packet
	if err := c.handshakePacket(&pk); err != nil {
		return fmt.Errorf("mqtt connect %s: waiting for CONNACK: %w", c.id, err)
	}
	if pk.FixedHeader.Type != packets.Connack {
		return fmt.Errorf("mqtt connect %s: the broker answered CONNECT with %s instead of CONNACK", c.id, packetName(pk.FixedHeader.Type))
	}
	if code := pk.ReasonCode; code != 0 {
		meaning := "unknown return code"
		if int(code) < len(mqttConnackCodes) {
			meaning = mqttConnackCodes[code]
		}
		return fmt.Errorf("mqtt connect %s: %w: %s (CONNACK return code %d)", c.id, errMQTTRefused, meaning, code)
	}
	if o.Subscribe != "" {
		if err := c.subscribe(o.Subscribe); err != nil {
			return err
		}
	}
	if err := c.nc.SetDeadline(time.Time{}); err != nil {
		return fmt.Errorf("mqtt connect %s: %w", c.id, err)
	}
	return nil
}

// handshakePacket reads the next packet during the handshake: from the
// connection, or as a direct session the next CONNACK or SUBACK (deliver
// handles the rest itself).
func (c *mqttConn) handshakePacket(pk *packets.Packet) error {
	if c.direct {
		return c.nextAnswer(pk)
	}
	return c.readPacket(pk)
}

// subscribe subscribes to filter at QoS 1 and waits for the SUBACK. A
// message that arrives first (the subscription is live before the broker
// writes its SUBACK) is delivered.
func (c *mqttConn) subscribe(filter string) error {
	c.nextID++
	id := c.nextID
	sub := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Subscribe, Qos: 1},
		ProtocolVersion: 4,
		PacketID:        id,
		Filters:         packets.Subscriptions{{Filter: filter, Qos: 1}},
	}
	if err := c.writePacket(&sub); err != nil {
		return fmt.Errorf("mqtt subscribe %s to %s: send SUBSCRIBE: %w", c.id, filter, err)
	}
	for {
		var pk packets.Packet
		if err := c.handshakePacket(&pk); err != nil {
			return fmt.Errorf("mqtt subscribe %s to %s: waiting for SUBACK: %w", c.id, filter, err)
		}
		if pk.FixedHeader.Type != packets.Suback {
			if err := c.handle(&pk); err != nil {
				return fmt.Errorf("mqtt subscribe %s to %s: %w", c.id, filter, err)
			}
			continue
		}
		switch {
		case pk.PacketID != id:
			return fmt.Errorf("mqtt subscribe %s to %s: SUBACK for packet %d; want %d", c.id, filter, pk.PacketID, id)
		case len(pk.ReasonCodes) != 1:
			return fmt.Errorf("mqtt subscribe %s to %s: SUBACK with %d return codes; want 1", c.id, filter, len(pk.ReasonCodes))
		case pk.ReasonCodes[0] == mqttSubackFailure:
			return fmt.Errorf("mqtt subscribe %s to %s: %w (SUBACK return code 0x80)", c.id, filter, errMQTTSubscribeRefused)
		case pk.ReasonCodes[0] > 2:
			return fmt.Errorf("mqtt subscribe %s to %s: SUBACK return code %#x is not one of MQTT 3.1.1", c.id, filter, pk.ReasonCodes[0])
		}
		return nil
	}
}

// Publish sends a QoS 1 PUBLISH (not retained) with the next packet id and
// returns once it is written, without waiting for the PUBACK. It is safe
// for concurrent use. It fails once the session has ended or been closed,
// and when the write fails (which ends the session). On net.Pipe it
// returns only once the broker has read the packet, which it does after it
// has handled the previous one: back-pressure, as a device would feel; on
// a direct session's memPipe, once the packet is buffered, with
// back-pressure only past memPipeLimit bytes unread; over the network, as
// the socket's buffers allow.
// An attached session (attach) returns once the packet is queued, without
// back-pressure: the queue has no bound, and a PUBLISH the broker then
// refuses is reported through onLost. The payload is copied into the
// packet: the caller may reuse it once Publish returns.
func (c *mqttConn) Publish(topic string, payload []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.state.Lock()
	err := c.cause
	if err == nil && c.closing {
		err = errMQTTClosed // an attached session's Close has begun
	}
	c.state.Unlock()
	if err != nil {
		return fmt.Errorf("mqtt publish %s to %s: %w", c.id, topic, err)
	}
	c.nextID++
	if c.nextID == 0 {
		c.nextID = 1 // 0 is not a packet id
	}
	if c.sess != nil {
		if !c.up.push(uplinkItem{c: c, kind: packets.Publish, id: c.nextID, topic: topic, payload: slices.Clone(payload)}) {
			err := fmt.Errorf("mqtt publish %s to %s: %w", c.id, topic, errMQTTClosed)
			c.end(err)
			return err
		}
		return nil
	}
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Publish, Qos: 1},
		ProtocolVersion: 4,
		PacketID:        c.nextID,
		TopicName:       topic,
		Payload:         payload,
	}
	if err := c.writePacket(&pk); err != nil {
		err = fmt.Errorf("mqtt publish %s to %s: %w", c.id, topic, err)
		c.failed(err)
		return err
	}
	return nil
}

// failed ends the session after a write failed, which may have left a
// partial packet on the wire. When the connection was already gone, the
// reader ends the session itself, with the reason it sees (such as the
// broker closing it), which says more.
func (c *mqttConn) failed(err error) {
	if !mqttConnGone(err) {
		c.end(err)
	}
}

// Close sends DISCONNECT (unless the session has already ended), closes
// the connection and waits for the reader goroutine to return, or for a
// direct session until the broker has let it go (up to the timeout). It
// returns an error when DISCONNECT could not be written for another
// reason than the connection having closed already, or when a direct
// session's broker did not let go. Closing twice is harmless.
func (c *mqttConn) Close() error {
	c.closeOnce.Do(func() { c.closeErr = c.close() })
	return c.closeErr
}

func (c *mqttConn) close() error {
	// The cause is set first: the broker closes the connection as soon
	// as it reads DISCONNECT, and the reader must not take that for the
	// broker ending the session. An attached session is marked closing
	// instead, which end turns into the same cause, and lasts until the
	// broker has taken its DISCONNECT; it holds mu meanwhile, so that no
	// PUBLISH is queued behind the DISCONNECT (pushing never blocks).
	attached := c.sess != nil
	if attached {
		c.mu.Lock()
	}
	c.state.Lock()
	ended := c.cause != nil
	if !ended && attached {
		c.closing = true // the session lasts until the broker has taken DISCONNECT
	} else if !ended {
		c.cause = errMQTTClosed
	}
	c.state.Unlock()
	if ended && attached {
		c.mu.Unlock()
	}
	var err error
	if !ended && attached {
		// Through the queue, after what the session sent before, which
		// the broker delivers and acknowledges first.
		done := make(chan error, 1)
		queued := c.up.push(uplinkItem{c: c, kind: packets.Disconnect, done: done})
		c.mu.Unlock()
		if queued {
			t := time.NewTimer(c.timeout)
			select {
			case err = <-done:
				if mqttConnGone(err) {
					err = nil
				} else if err != nil {
					err = fmt.Errorf("mqtt disconnect %s: %w", c.id, err)
				}
			case <-t.C:
				err = fmt.Errorf("mqtt disconnect %s: the broker did not take DISCONNECT within %s", c.id, c.timeout)
			}
			t.Stop()
		}
		c.end(errMQTTClosed)
	} else if !ended {
		// A broker that does not read would hold the write (and mu)
		// forever; the deadline also frees a writer holding mu.
		c.nc.SetWriteDeadline(time.Now().Add(c.timeout))
		c.mu.Lock()
		err = c.writePacket(&packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}, ProtocolVersion: 4})
		c.mu.Unlock()
		if mqttConnGone(err) {
			err = nil
		} else if err != nil {
			err = fmt.Errorf("mqtt disconnect %s: %w", c.id, err)
		}
	}
	c.nc.Close()
	if c.direct {
		// A delivery under way finishes first; none starts after.
		c.delivering.Lock()
		c.delivering.Unlock()
	}
	if !c.awaitRelease() && err == nil {
		err = fmt.Errorf("mqtt disconnect %s: the broker did not let the session go within %s", c.id, c.timeout)
	}
	c.ackers.Wait()
	return err
}

// Done is closed when the session has ended: the broker closed it, a read
// failed, a packet broke the protocol, or Close.
func (c *mqttConn) Done() <-chan struct{} { return c.done }

// Err returns why the session ended, or nil while it lasts.
func (c *mqttConn) Err() error {
	c.state.Lock()
	defer c.state.Unlock()
	return c.cause
}

// end records the first reason the session ended and closes the
// connection, which makes the reader and any blocked writer return.
func (c *mqttConn) end(cause error) {
	c.state.Lock()
	if c.cause == nil && c.closing {
		c.cause = errMQTTClosed
	} else if c.cause == nil {
		c.cause = cause
	}
	c.state.Unlock()
	c.nc.Close()
}

// read is the session's reader goroutine: it reads and handles packets
// until the session ends.
func (c *mqttConn) read() {
	defer c.finish()
	for {
		// An idle session waits here, on a shallow stack that the
		// garbage collector can shrink to the minimum; the packet being
		// handled (800 bytes) lives in the heap, and only meanwhile.
		_, err := c.br.Peek(1)
		if err == nil {
			err = c.next()
		}
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				err = errMQTTBrokerClosed
			}
			c.end(fmt.Errorf("mqtt session %s: %w", c.id, err))
			return
		}
	}
}

// next reads and handles the packet that has begun to arrive.
func (c *mqttConn) next() error {
	pk := mqttPackets.Get().(*packets.Packet)
	defer func() {
		*pk = packets.Packet{} // drop the references to the body
		mqttPackets.Put(pk)
	}()
	if err := c.readPacket(pk); err != nil {
		return err
	}
	return c.handle(pk)
}

// mqttPackets holds decoded packets for the readers, shared by all
// sessions.
var mqttPackets = sync.Pool{New: func() any { return new(packets.Packet) }}

// handle acts on a packet the broker sent after CONNACK.
func (c *mqttConn) handle(pk *packets.Packet) error {
	switch pk.FixedHeader.Type {
	case packets.Publish:
		switch pk.FixedHeader.Qos {
		case 0:
			c.onMessage(pk.Payload)
		case 1:
			c.onMessage(pk.Payload)
			c.queueAck(pk.PacketID)
		default:
			// Only QoS 1 was subscribed to; QoS 2 would need
			// PUBREC/PUBREL/PUBCOMP, which this client does not speak.
			return fmt.Errorf("PUBLISH at QoS %d on %s; the subscription is at QoS 1", pk.FixedHeader.Qos, pk.TopicName)
		}
	case packets.Puback:
		c.pubacks.Add(1)
	case packets.Pingresp:
	default:
		return fmt.Errorf("unexpected %s packet from the broker", packetName(pk.FixedHeader.Type))
	}
	return nil
}

// readPacket reads and decodes the next packet into pk. The PUBLISH
// payload is a slice of its own, which the reader hands over.
func (c *mqttConn) readPacket(pk *packets.Packet) error {
	hb, err := c.br.ReadByte()
	if err != nil {
		return err
	}
	if err := pk.FixedHeader.Decode(hb); err != nil {
		return fmt.Errorf("fixed header %#02x: %w", hb, err)
	}
	n, _, err := packets.DecodeLength(c.br)
	if err != nil {
		return fmt.Errorf("%s remaining length: %w", packetName(pk.FixedHeader.Type), err)
	}
	if n > mqttMaxPacket {
		return fmt.Errorf("%w: the broker sent a %s of %d bytes; the limit is %d", errMQTTTooLarge, packetName(pk.FixedHeader.Type), n, mqttMaxPacket)
	}
	pk.FixedHeader.Remaining = n
	pk.ProtocolVersion = 4
	var body []byte
	if pk.FixedHeader.Type != packets.Publish && n <= len(c.small) {
		body = c.small[:n]
	} else {
		body = make([]byte, n) // a PUBLISH's payload goes to the callee: a fresh slice
	}
	if _, err := io.ReadFull(c.br, body); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("%s body: %w", packetName(pk.FixedHeader.Type), err)
	}
	return c.decodeBody(body, pk)
}

// decodePacket decodes a whole packet, its first byte and its body, into
// pk. For a PUBLISH the payload is a slice of body.
func (c *mqttConn) decodePacket(first byte, body []byte, pk *packets.Packet) error {
	if err := pk.FixedHeader.Decode(first); err != nil {
		return fmt.Errorf("fixed header %#02x: %w", first, err)
	}
	pk.FixedHeader.Remaining = len(body)
	pk.ProtocolVersion = 4
	return c.decodeBody(body, pk)
}

// decodeBody decodes the body of the packet whose fixed header is in pk.
func (c *mqttConn) decodeBody(body []byte, pk *packets.Packet) error {
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackDecode(body)
	case packets.Publish:
		err = pk.PublishDecode(body)
	case packets.Puback:
		err = pk.PubackDecode(body)
	case packets.Suback:
		err = pk.SubackDecode(body)
	case packets.Pingresp:
	default:
		return fmt.Errorf("unexpected %s packet from the broker", packetName(pk.FixedHeader.Type))
	}
	if err != nil {
		return fmt.Errorf("decode %s: %w", packetName(pk.FixedHeader.Type), err)
	}
	return nil
}

// queueAck queues a PUBACK for the ack writer, and starts it if it is not
// running.
func (c *mqttConn) queueAck(id uint16) {
	c.state.Lock()
	if c.cause != nil {
		c.state.Unlock()
		return // the session has ended: nobody to acknowledge to
	}
	if c.sess != nil {
		q := c.up
		c.state.Unlock()
		q.push(uplinkItem{c: c, kind: packets.Puback, id: id})
		return
	}
	c.acks = append(c.acks, id)
	start := !c.acking
	c.acking = true
	if start {
		// Under state, so that it comes before any wait for the
		// writers, which the end of the session (cause, set under
		// state) comes before: a direct session's messages arrive in
		// the broker's goroutine, not in one the session waits for.
		c.ackers.Add(1)
	}
	c.state.Unlock()
	if start {
		go c.writeAcks()
	}
}

// writeAcks writes the queued PUBACKs, several in one Write when they
// piled up, and returns once none is left.
func (c *mqttConn) writeAcks() {
	defer c.ackers.Done()
	var batch [32]uint16
	for {
		c.state.Lock()
		n := copy(batch[:], c.acks)
		c.acks = append(c.acks[:0], c.acks[n:]...)
		if n == 0 || c.cause != nil {
			c.acks, c.acking = c.acks[:0], false
			c.state.Unlock()
			return
		}
		c.state.Unlock()

		buf := mqttBuffers.Get().(*bytes.Buffer)
		for _, id := range batch[:n] {
			pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, ProtocolVersion: 4, PacketID: id}
			pk.PubackEncode(buf) // cannot fail at protocol level 4
		}
		c.mu.Lock()
		_, err := c.nc.Write(buf.Bytes())
		c.mu.Unlock()
		putMQTTBuffer(buf)
		if err != nil {
			c.failed(fmt.Errorf("mqtt session %s: send PUBACK: %w", c.id, err))
			c.state.Lock()
			c.acks, c.acking = c.acks[:0], false
			c.state.Unlock()
			return
		}
	}
}

// mqttBuffers holds encoding buffers shared by all sessions, so that an
// idle session holds none.
var mqttBuffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// mqttPooledMax is the largest buffer kept in mqttBuffers: twice the
// service's largest payload.
const mqttPooledMax = 128 << 10

// putMQTTBuffer returns buf to the pool, unless a large packet grew it.
func putMQTTBuffer(buf *bytes.Buffer) {
	if buf.Cap() > mqttPooledMax {
		return
	}
	buf.Reset()
	mqttBuffers.Put(buf)
}

// writePacket encodes pk and writes it with one Write. The caller holds
// mu, or is dialMQTT before the reader starts.
func (c *mqttConn) writePacket(pk *packets.Packet) error {
	buf := mqttBuffers.Get().(*bytes.Buffer)
	defer putMQTTBuffer(buf)
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(buf)
	case packets.Subscribe:
		err = pk.SubscribeEncode(buf)
	case packets.Publish:
		err = pk.PublishEncode(buf)
	case packets.Disconnect:
		err = pk.DisconnectEncode(buf)
	default:
		err = fmt.Errorf("the client does not send %s packets", packetName(pk.FixedHeader.Type))
	}
	if err != nil {
		return fmt.Errorf("encode %s: %w", packetName(pk.FixedHeader.Type), err)
	}
	_, err = c.nc.Write(buf.Bytes())
	return err
}

// packetName names an MQTT packet type for error messages.
func packetName(t byte) string {
	if name, ok := packets.PacketNames[t]; ok {
		return strings.ToUpper(name)
	}
	return fmt.Sprintf("type-%d", t)
}

// mqttConnGone reports whether err says only that the connection had
// already closed, from either end.
func mqttConnGone(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrClosedPipe) || errors.Is(err, io.EOF) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET)
}
