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
// connection; what the broker writes to the client still goes to the
// connection. A simulated fleet thus spends neither a hand-over between
// goroutines nor an encoding per message on its devices' way in, and the
// connection's goroutine, idle, keeps a small stack.
//
// Send handles a packet in the caller's goroutine; a client's packets must
// be sent one at a time, in order, as on a connection.
type Session struct {
	b  *Broker
	cl *mqtt.Client
}

// ErrNoSession means that no accepted session of that client id runs over
// the connection given: its CONNECT has not been accepted yet, it was
// refused, or the session has ended.
var ErrNoSession = errors.New("no session of that client on the connection")

// Session returns the session that conn, the connection passed to Connect,
// carries for clientID.
func (b *Broker) Session(clientID string, conn net.Conn) (*Session, error) {
	cl, ok := b.server.Clients.Get(clientID)
	if !ok || cl.Net.Conn != conn || cl.Closed() {
		return nil, fmt.Errorf("broker: client %s: %w", clientID, ErrNoSession)
	}
	return &Session{b: b, cl: cl}, nil
}

// Send hands the broker a packet from the session's client: a PUBLISH (at
// QoS 0 or 1), a PUBACK or a DISCONNECT. A PUBLISH larger than the broker
// takes from a connection is refused, as are the other kinds of packet.
// A QoS 1 PUBLISH to a topic the client may not write fails with
// packets.ErrNotAuthorized and ends the session, as on a connection (at
// QoS 0 it is dropped). Send fails with net.ErrClosed once the session
// has ended; a PUBLISH that fails was not delivered.
func (s *Session) Send(pk packets.Packet) error {
	switch t := pk.FixedHeader.Type; {
	case t == packets.Publish && pk.FixedHeader.Qos > 1:
		return fmt.Errorf("broker: client %s: PUBLISH at QoS %d: a session sends at QoS 0 or 1", s.cl.ID, pk.FixedHeader.Qos)
	case t == packets.Publish && len(pk.TopicName)+len(pk.Payload) > maxPacket:
		return fmt.Errorf("broker: client %s: PUBLISH of %d bytes: %w", s.cl.ID, len(pk.TopicName)+len(pk.Payload), packets.ErrPacketTooLarge)
	case t != packets.Publish && t != packets.Puback && t != packets.Disconnect:
		return fmt.Errorf("broker: client %s: a session does not send %s packets", s.cl.ID, packets.PacketNames[t])
	}
	if s.cl.Closed() {
		return fmt.Errorf("broker: client %s: %w", s.cl.ID, net.ErrClosed)
	}
	return s.b.server.InjectPacket(s.cl, pk)
}
