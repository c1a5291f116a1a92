package fleetsim

import (
	"context"
	"errors"
	"fmt"
	"net"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mdm-authority/mdm/agent"
	"github.com/mdm-authority/mdm/protocol"
)

// recordingSender is a broker side of sessions that records what each
// sends, and refuses PUBLISHes to the topic "refused". With gate set, it
// takes nothing until gate closes.
type recordingSender struct {
	mu   *sync.Mutex
	got  map[string][]uint16 // packet ids by session
	name string
	gate chan struct{}
}

func (r recordingSender) Send(pk packets.Packet) error {
	if r.gate != nil {
		<-r.gate
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if pk.TopicName == "refused" {
		return packets.ErrNotAuthorized
	}
	r.got[r.name] = append(r.got[r.name], pk.PacketID)
	return nil
}

// TestUplinkOrder sends from many sessions over an uplink with fewer
// queues: each session's packets reach the broker's side in the order
// sent, PUBLISHes and PUBACKs alike, and once the uplink has closed a
// PUBLISH fails.
func TestUplinkOrder(t *testing.T) {
	u := newUplink(3)
	var mu sync.Mutex
	got := map[string][]uint16{}
	const sessions, each = 10, 200
	conns := make([]*mqttConn, sessions)
	for i := range conns {
		nc, _ := net.Pipe()
		c := &mqttConn{nc: nc, id: fmt.Sprintf("s%d", i), done: make(chan struct{}), direct: true}
		c.attach(u.queue(), recordingSender{mu: &mu, got: got, name: c.id}, func() { t.Errorf("%s lost", c.id) })
		conns[i] = c
	}
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() {
			for range each / 2 {
				if err := c.Publish("up", []byte("x")); err != nil {
					t.Error(err)
				}
				c.nextID++ // a PUBACK's id, between the PUBLISHes'
				c.queueAck(c.nextID)
			}
		})
	}
	wg.Wait()
	u.close()
	for _, c := range conns {
		ids := got[c.id]
		if len(ids) != each {
			t.Fatalf("%s: %d packets reached the broker; want %d", c.id, len(ids), each)
		}
		for i, id := range ids {
			if id != uint16(i+1) {
				t.Fatalf("%s: packet %d has id %d; want %d (out of order)", c.id, i, id, i+1)
			}
		}
	}
	if err := conns[0].Publish("up", []byte("x")); !errors.Is(err, errMQTTClosed) {
		t.Errorf("Publish after the uplink closed = %v; want %v", err, errMQTTClosed)
	}
}

// TestUplinkLost: PUBLISHes the broker refuses after Publish returned end
// the session, and onLost is called once for each (each was counted as
// work in flight when it was published).
func TestUplinkLost(t *testing.T) {
	u := newUplink(1)
	defer u.close()
	nc, _ := net.Pipe()
	c := &mqttConn{nc: nc, id: "s", done: make(chan struct{}), direct: true}
	var lost atomic.Int64
	gate := make(chan struct{})
	c.attach(u.queue(), recordingSender{mu: new(sync.Mutex), got: map[string][]uint16{}, name: "s", gate: gate}, func() { lost.Add(1) })
	for range 2 {
		if err := c.Publish("refused", []byte("x")); err != nil {
			t.Fatalf("Publish = %v; want nil (it only queues)", err)
		}
	}
	close(gate) // both are queued: the broker takes them now
	for deadline := time.Now().Add(10 * time.Second); lost.Load() < 2; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("onLost called %d times 10 s after the broker refused two PUBLISHes; want 2", lost.Load())
		}
	}
	if err := c.Err(); !errors.Is(err, packets.ErrNotAuthorized) || !strings.Contains(err.Error(), "refused") {
		t.Errorf("Err() = %v; want the refusal, naming the topic", err)
	}
	if err := c.Publish("up", []byte("x")); err == nil {
		t.Error("Publish after the session ended = nil")
	}
	u.close() // whatever is queued is handed over first
	if n := lost.Load(); n != 2 {
		t.Errorf("onLost called %d times; want 2", n)
	}
}

// TestUplinkCloseDelivers closes an attached session while its check-ins
// are still queued: the broker takes them all, and the service handles
// them, before the DISCONNECT that Close queued after them.
func TestUplinkCloseDelivers(t *testing.T) {
	h, st, c := newUplinkSession(t)
	before := h.svc.Counters().CheckIns
	const n = 50
	for range n {
		_, payload := mqttCheckIn(t, st)
		if err := c.Publish(protocol.UplinkTopic("contoso", st.Device), payload); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Close(); err != nil {
		t.Errorf("Close = %v; want nil", err)
	}
	if got := h.svc.Counters().CheckIns - before; got != n {
		t.Errorf("%d check-ins reached the service before the session closed; want %d", got, n)
	}
	if err := c.Err(); !errors.Is(err, errMQTTClosed) {
		t.Errorf("Err() = %v; want %v", err, errMQTTClosed)
	}
	if h.lost.Load() != 0 {
		t.Errorf("onLost called %d times; want 0", h.lost.Load())
	}
}

// newUplinkSession enrolls a device with a new test broker and opens its
// session attached to the broker's uplink.
func newUplinkSession(t *testing.T) (*mqttTestBroker, *agent.State, *mqttConn) {
	t.Helper()
	h := newMQTTTestBroker(t)
	st := h.enroll(t)
	c, _, err := h.dial("uplink", mqttDeviceOptions(st, nil))
	if err != nil {
		t.Fatal(err)
	}
	return h, st, c
}

// TestUplinkSessionRefused publishes through a real broker to a topic the
// device may not write: the broker refuses it after Publish has returned,
// ends the session, and onLost tells the owner.
func TestUplinkSessionRefused(t *testing.T) {
	h, st, c := newUplinkSession(t)
	defer c.Close()
	_, payload := mqttCheckIn(t, st)
	if err := c.Publish(protocol.UplinkTopic("contoso", "d-other"), payload); err != nil {
		t.Fatalf("Publish = %v; want nil (it only queues)", err)
	}
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("session still open 10 s after the broker refused a PUBLISH")
	}
	for deadline := time.Now().Add(10 * time.Second); h.lost.Load() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("onLost not called")
		}
	}
	h.up.close() // whatever is queued is handed over first
	if n := h.lost.Load(); n != 1 {
		t.Errorf("onLost called %d times for one refused PUBLISH; want 1", n)
	}
	if h.b.Connected(st.Device) {
		t.Error("the broker still lists the session")
	}
}

// TestSettleDropped: the news that a session ended because the broker did
// not take a message carries that message's count of work in flight, so
// the round settles instead of waiting for an answer that will not come.
func TestSettleDropped(t *testing.T) {
	s := &sim{work: newWork(), devices: []*simDevice{nil}, laneMin: minLaneMessages, clock: &Clock{now: virtualStart}}
	s.main = &lane{st: &s.stats}
	s.work.Add(1) // the device's message, counted when it was published
	s.dropped(0, &mqttConn{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.settle(ctx); err != nil {
		t.Fatalf("settle = %v; want nil", err)
	}
	if n := s.work.n.Load(); n != 0 {
		t.Errorf("work in flight after settling = %d; want 0", n)
	}
}

// TestUplinkPublishDuringClose publishes from one goroutine while another
// closes the session: every PUBLISH either fails at once or reaches the
// service, and none is queued behind the DISCONNECT, to be refused later.
func TestUplinkPublishDuringClose(t *testing.T) {
	h, st, c := newUplinkSession(t)
	before := h.svc.Counters().CheckIns
	var sent atomic.Uint64
	started := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ; i++ {
			if i == 20 {
				close(started)
			}
			_, payload := mqttCheckIn(t, st)
			if err := c.Publish(protocol.UplinkTopic("contoso", st.Device), payload); err != nil {
				if !errors.Is(err, errMQTTClosed) {
					t.Errorf("Publish while closing = %v; want %v", err, errMQTTClosed)
				}
				return
			}
			sent.Add(1)
		}
	})
	<-started
	if err := c.Close(); err != nil {
		t.Errorf("Close = %v; want nil", err)
	}
	wg.Wait()
	h.up.close()
	if got := h.svc.Counters().CheckIns - before; got != sent.Load() {
		t.Errorf("%d check-ins reached the service; %d were published", got, sent.Load())
	}
	if n := h.lost.Load(); n != 0 {
		t.Errorf("onLost called %d times; want 0", n)
	}
}

// TestWireSameFigures runs one fleet twice, its devices sending through
// the uplink (the default) and writing every packet on their connections
// (Config.Wire): the same timers fire in the same order and every figure
// of the migration is the same.
func TestWireSameFigures(t *testing.T) {
	cfg := Config{Devices: 150, Seed: 21}
	up, a := runSim(t, cfg)
	cfg.Wire = true
	wire, b := runSim(t, cfg)
	attached := func(s *sim) (n int) {
		for _, d := range s.devices {
			if d != nil && d.client != nil && d.client.sess != nil {
				n++
			}
		}
		return n
	}
	if up.up == nil || attached(up) == 0 || wire.up != nil || attached(wire) != 0 {
		t.Fatalf("devices attached to an uplink: %d by default, %d with Wire; want some, then none", attached(up), attached(wire))
	}
	if up.fired != wire.fired {
		t.Error("the uplink and the wire ran different timers, or in another order")
	}
	if !reflect.DeepEqual(a.Migration, b.Migration) || !reflect.DeepEqual(a.Profiles, b.Profiles) ||
		!reflect.DeepEqual(a.CheckIns, b.CheckIns) || !reflect.DeepEqual(a.Timeline, b.Timeline) || a.Pushes != b.Pushes ||
		a.Validation != b.Validation || a.Run.Connects != b.Run.Connects {
		t.Errorf("the uplink and the wire disagree:\n%+v\n%+v\n%+v\n%+v", a.Migration, b.Migration, a.CheckIns, b.CheckIns)
	}
}
