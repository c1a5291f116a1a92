package broker

import (
	"errors"
	"fmt"
	"net"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// A Session is the way into the broker of a client connected in process
// (Connect), for the packets it sends once its CONNECT has been accepted:
// they are handed to the broker as decoded packets, under the client it
// authenticated as, instead of being encoded onto the connection and read
// back by the connection's goroutine. Topic access checks, hooks and
// acknowledgements apply to each packet as to one read from the
// connection, and a refused topic ends the session as there; other
// errors (Send's) leave the session to the caller, which ends it or not,
// where an error reading a connection would end it. What the broker
// writes to the client still goes to the connection. A simulated fleet
// thus spends neither a hand-over between goroutines nor an encoding per
// message on its devices' way in, and the connection's goroutine, idle,
// keeps a small stack.
//
// Send handles a packet in the caller's goroutine; a client's packets must
// be sent one at a time, in order, as on a connection, and not while the
// client still sends on its connection. Packets sent this way do not count
// as the client's activity for its keep-alive: a client that sends through
// a Session connects without one (keep-alive 0), as the simulator's
// devices do.
type Session struct {
	b    *Broker
	cl   *mqtt.Client
	conn *sessionConn
}

// ErrNoSession means that no accepted session of that client id runs over
// the connection given: its CONNECT has not been accepted yet, it was
// refused, or the session has ended.
var ErrNoSession = errors.New("no session of that client on the connection")

// Session returns the session that conn, the connection passed to Connect,
// carries for clientID.
func (b *Broker) Session(clientID string, conn net.Conn) (*Session, error) {
	cl, ok := b.server.Clients.Get(clientID)
	// mochi's inline client (the service's own) has no connection: a
	// session of it would skip the topic checks.
	if !ok || conn == nil || cl.Closed() {
		return nil, fmt.Errorf("broker: client %s: %w", clientID, ErrNoSession)
	}
	sc, ok := cl.Net.Conn.(*sessionConn)
	if !ok || sc.Conn != conn {
		return nil, fmt.Errorf("broker: client %s: %w", clientID, ErrNoSession)
	}
	return &Session{b: b, cl: cl, conn: sc}, nil
}

// Send hands the broker a packet from the session's client: a PUBLISH (at
// QoS 0 or 1, not retained), a PUBACK or a DISCONNECT. A PUBLISH larger
// than the broker takes from a connection is refused (measured as MQTT
// 3.1.1 encodes it: an MQTT 5 client's properties are not counted), as
// are retained messages (which the broker refuses from any device) and
// the other kinds of packet; MQTT 5 properties are dropped for an MQTT
// 3.1.1 client, whose connection could not carry them.
//
// A QoS 1 PUBLISH to a topic the client may not write fails with
// packets.ErrNotAuthorized and ends the session, as on a connection (at
// QoS 0 it is dropped). Send fails with net.ErrClosed once the session has
// ended (with mochi's ErrConnectionClosed when it ends meanwhile); a
// PUBLISH that fails was not delivered. The service takes a PUBLISH
// before the broker acknowledges it: one the service took is delivered,
// and Send returns nil for it even when the session ended before its
// PUBACK could be written (the next Send reports the end).
//
// DISCONNECT ends the session as a connection's DISCONNECT does, but
// mochi sees the connection close under its reader and takes that for a
// dropped connection: a will, if the client set one, is published.
func (s *Session) Send(pk packets.Packet) error {
	switch t := pk.FixedHeader.Type; {
	case t == packets.Publish && pk.FixedHeader.Qos > 1:
		return fmt.Errorf("broker: client %s: PUBLISH at QoS %d: a session sends at QoS 0 or 1", s.cl.ID, pk.FixedHeader.Qos)
	case t == packets.Publish && pk.FixedHeader.Retain:
		return fmt.Errorf("broker: client %s: retained PUBLISH to %s: %w", s.cl.ID, pk.TopicName, packets.ErrRejectPacket)
	case t == packets.Publish && publishSize(pk) > maxPacket:
		return fmt.Errorf("broker: client %s: PUBLISH of %d bytes: %w", s.cl.ID, publishSize(pk), packets.ErrPacketTooLarge)
	case t != packets.Publish && t != packets.Puback && t != packets.Disconnect:
		return fmt.Errorf("broker: client %s: a session does not send %s packets", s.cl.ID, packets.PacketNames[t])
	}
	if s.cl.Properties.ProtocolVersion < 5 {
		pk.Properties = packets.Properties{}
	}
	if s.cl.Closed() {
		return fmt.Errorf("broker: client %s: %w", s.cl.ID, net.ErrClosed)
	}
	taken := s.conn.taken.Load()
	err := s.b.server.InjectPacket(s.cl, pk)
	if err != nil && s.conn.taken.Load() != taken {
		return nil // delivered; the session ended before its PUBACK
	}
	return err
}

// publishSize is the size of an MQTT 3.1.1 PUBLISH on the wire, less its
// remaining-length bytes, as the broker measures a packet it reads against
// its maximum: the fixed header's first byte, the topic with its length,
// the packet id at QoS 1, and the payload.
func publishSize(pk packets.Packet) int {
	n := 1 + 2 + len(pk.TopicName) + len(pk.Payload)
	if pk.FixedHeader.Qos > 0 {
		n += 2
	}
	return n
}
