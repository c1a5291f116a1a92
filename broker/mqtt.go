package broker

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mdm-authority/mdm/protocol"
)

// Broker is the embedded MQTT broker (mochi-mqtt) with the service attached
// to it through an inline subscription: a device's message is handled in
// the goroutine of that device's connection, so each device has at most one
// message in flight and the store batches the writes of many devices.
//
// Connections are attached with Connect, the in-memory transport. A network
// listener needs the connection authentication of the security model,
// which is not built yet: until then the broker is reachable only from the
// process that embeds it.
type Broker struct {
	server *mqtt.Server
	svc    *Service
	log    *slog.Logger
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
	s := mqtt.New(&mqtt.Options{InlineClient: true, Capabilities: caps, Logger: logger})
	if err := s.AddHook(&topicACL{tenant: svc.opts.Tenant}, nil); err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	b := &Broker{server: s, svc: svc, log: logger}
	for i, filter := range protocol.ServiceFilters(svc.opts.Tenant) {
		if err := s.Subscribe(filter, i+1, b.onMessage); err != nil {
			return nil, fmt.Errorf("broker: subscribe %s: %w", filter, err)
		}
	}
	return b, nil
}

// Serve starts the broker's housekeeping. It returns at once.
func (b *Broker) Serve() error { return b.server.Serve() }

// Close disconnects every client and stops the broker.
func (b *Broker) Close() error { return b.server.Close() }

// Connect serves one client connection, such as one end of a net.Pipe,
// until it closes. It blocks; run it in its own goroutine.
func (b *Broker) Connect(conn net.Conn) error {
	return b.server.EstablishConnection("memory", conn)
}

// onMessage hands a device's message to the service and publishes the
// answers.
func (b *Broker) onMessage(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
	out, err := b.svc.HandleMessage(context.Background(), pk.TopicName, pk.Payload)
	if err != nil {
		b.log.Debug("message dropped", "topic", pk.TopicName, "err", err)
	}
	b.publish(out)
}

func (b *Broker) publish(out []Outgoing) {
	for _, o := range out {
		if err := b.server.Publish(o.Topic, o.Payload, false, o.QoS); err != nil {
			b.log.Warn("publish failed", "topic", o.Topic, "err", err)
		}
	}
}

// PublishDuePushes publishes up to max pushes that are due and returns
// how many it published. The fan-out calls it at its rate.
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
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ticks:
			n, err := b.PublishDuePushes(perTick)
			if err != nil {
				return fmt.Errorf("fan-out: %w", err)
			}
			if n > 0 {
				b.log.Debug("pushes published", "count", n)
			}
		}
	}
}

// EnrollClientPrefix starts the MQTT client id of a device that enrolls:
// the prefix and then its enrollment request id.
const EnrollClientPrefix = "enroll-"

// topicACL keeps every client to its own topics: a device publishes only
// to its uplink topic and subscribes only to its downlink topic; an
// enrolling client only to the enrollment topics of its own request.
// Wildcards never reach another client's topics, since no topic with a
// wildcard parses. Identity is the client id; the connection's
// authentication is the security model's part.
type topicACL struct {
	mqtt.HookBase
	tenant string
}

// ID implements mqtt.Hook.
func (h *topicACL) ID() string { return "mdm-topic-acl" }

// Provides implements mqtt.Hook.
func (h *topicACL) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnConnectAuthenticate, mqtt.OnACLCheck}, []byte{b})
}

// OnConnectAuthenticate admits clients whose id is a valid device id or an
// enrollment client id.
func (h *topicACL) OnConnectAuthenticate(cl *mqtt.Client, _ packets.Packet) bool {
	return protocol.ValidID(strings.TrimPrefix(cl.ID, EnrollClientPrefix)) == nil
}

// OnACLCheck allows a client its own topics only.
func (h *topicACL) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	t, err := protocol.ParseTopic(topic)
	if err != nil || t.Tenant != h.tenant {
		return false
	}
	switch t.Kind {
	case protocol.TopicUplink:
		return write && cl.ID == t.ID
	case protocol.TopicDownlink:
		return !write && cl.ID == t.ID
	case protocol.TopicEnrollRequest:
		return write && cl.ID == EnrollClientPrefix+t.ID
	case protocol.TopicEnrollResponse:
		return !write && cl.ID == EnrollClientPrefix+t.ID
	}
	return false
}
