package fleetsim

import (
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/mochi-mqtt/server/v2/packets"
)

// packetSender hands a session's packets to the broker without encoding
// them: a *broker.Session.
type packetSender interface {
	Send(pk packets.Packet) error
}

// An uplink carries the packets of in-process sessions into the broker
// (broker.Session) on a fixed set of goroutines, its queues. A session's
// packets all go through one queue, so they reach the broker in the order
// sent; sessions share the queues. Sending only queues a packet, and never
// blocks: a session's PUBACKs are sent from the broker's goroutine that
// writes to the device, which must not wait on a queue that may be
// handing the broker a packet of the same session.
//
// Each queue hands the broker one packet at a time, and the service
// handles a device's message in that goroutine, so the queues are as many
// as the messages the service can take at once and gather behind one store
// commit: far more than the cores, and far fewer than the devices, whose
// own connection goroutines then stay idle with small stacks.
type uplink struct {
	queues []*uplinkQueue
	next   atomic.Uint64 // the queue the next session gets
	wg     sync.WaitGroup
}

// uplinkQueues is how many queues an uplink runs.
const uplinkQueues = 64

// uplinkQueue is one queue of an uplink and its goroutine.
type uplinkQueue struct {
	mu      sync.Mutex
	items   []uplinkItem
	spare   []uplinkItem  // the slice the goroutine handled last, for reuse
	wake    chan struct{} // has an item when items may not be empty
	stopped bool
}

// uplinkItem is a packet queued by a session: a PUBLISH, a PUBACK, or a
// DISCONNECT whose handling done reports.
type uplinkItem struct {
	c       *mqttConn
	kind    byte
	id      uint16
	topic   string
	payload []byte
	done    chan error
}

// newUplink starts an uplink with n queues.
func newUplink(n int) *uplink {
	u := &uplink{queues: make([]*uplinkQueue, n)}
	for i := range u.queues {
		q := &uplinkQueue{wake: make(chan struct{}, 1)}
		u.queues[i] = q
		u.wg.Go(q.run)
	}
	return u
}

// queue returns the queue for a new session, in turn.
func (u *uplink) queue() *uplinkQueue {
	return u.queues[(u.next.Add(1)-1)%uint64(len(u.queues))]
}

// close stops the queues once they have handed over what they hold, and
// waits for their goroutines.
func (u *uplink) close() {
	for _, q := range u.queues {
		q.mu.Lock()
		q.stopped = true
		q.mu.Unlock()
		q.signal()
	}
	u.wg.Wait()
}

// push queues it; it reports false once the queue has stopped.
func (q *uplinkQueue) push(it uplinkItem) bool {
	q.mu.Lock()
	if q.stopped {
		q.mu.Unlock()
		return false
	}
	q.items = append(q.items, it)
	q.mu.Unlock()
	q.signal()
	return true
}

func (q *uplinkQueue) signal() { notify(q.wake) }

// run hands the queued packets to the broker until the queue stops.
func (q *uplinkQueue) run() {
	for range q.wake {
		for {
			q.mu.Lock()
			batch, stopped := q.items, q.stopped
			q.items = q.spare[:0]
			q.mu.Unlock()
			for i := range batch {
				batch[i].c.sendNow(&batch[i])
				batch[i] = uplinkItem{} // drop the payload
			}
			q.spare = batch[:0]
			if len(batch) == 0 {
				if stopped {
					return
				}
				break
			}
		}
	}
}

// sendNow hands one queued packet to the broker, in the queue's
// goroutine. A PUBLISH the broker did not take ends the session, and
// onLost tells the owner, since Publish had already returned.
func (c *mqttConn) sendNow(it *uplinkItem) {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: it.kind}, ProtocolVersion: 4, PacketID: it.id}
	if it.kind == packets.Publish {
		pk.FixedHeader.Qos = 1
		pk.TopicName, pk.Payload = it.topic, it.payload
	}
	err := c.sess.Send(pk)
	switch {
	case it.done != nil:
		it.done <- err
	case err != nil && it.kind == packets.Publish:
		err = fmt.Errorf("mqtt publish %s to %s: %w", c.id, it.topic, err)
		c.end(err)
		c.onLost()
	}
}
