package fleetsim

import (
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// memPipeLimit is the most bytes one end of a memPipe holds unread; a
// writer that would exceed it waits for the reader. A device writes its
// handshake through it, and with Config.Wire every packet: each well under
// protocol.MaxPayload (64 KiB) but for the largest, so a writer that waits
// long means a broker that stopped reading.
const memPipeLimit = 64 << 10

// memPipe is an in-memory, full-duplex connection with a buffer each way:
// what one end writes, the other reads. Unlike net.Pipe, a Write returns
// as soon as its bytes are buffered, and an idle pair is one object, with
// no channels or goroutines: net.Pipe's were about a dozen objects a
// session, and replacing them left a sixth fewer live objects at the
// burst of 10,000 devices. A buffer is let go once read, so a session
// that writes every packet (Config.Wire) allocates one a packet.
//
// Both ends are net.Conns with deadlines: once a deadline has passed,
// the calls it bounds fail with os.ErrDeadlineExceeded, as on net.Pipe. A
// Write larger than the room left may wait part-way, and concurrent
// Writes on one end may then interleave; mqttConn serialises its writes.
type memPipe struct {
	mu   sync.Mutex
	cond sync.Cond // on mu: data, room, a close or a deadline
	ends [2]memEnd
}

// memEnd is one end of a memPipe.
type memEnd struct {
	p      *memPipe
	peer   *memEnd
	in     []byte // written by the peer, not yet read here
	closed bool   // Close was called on this end
	// The deadlines, and the timers that wake the waiting calls when they
	// pass: made when a deadline is set, let go when it is cleared (a
	// device's handshake sets one, and its session then lives for days).
	readDeadline, writeDeadline time.Time
	readTimer, writeTimer       *time.Timer
}

// newMemPipe returns the two ends of a memPipe.
func newMemPipe() (net.Conn, net.Conn) {
	p := &memPipe{}
	p.cond.L = &p.mu
	a, b := &p.ends[0], &p.ends[1]
	a.p, a.peer = p, b
	b.p, b.peer = p, a
	return a, b
}

// memPipeAddr is the address of both ends of a memPipe.
type memPipeAddr struct{}

// Network is "pipe", as for net.Pipe.
func (memPipeAddr) Network() string { return "pipe" }

// String is "pipe", as for net.Pipe.
func (memPipeAddr) String() string { return "pipe" }

// passed reports whether the deadline t is set and has passed.
func passed(t time.Time) bool { return !t.IsZero() && !time.Now().Before(t) }

// Read reads what the peer wrote, waiting until there is some, the peer
// has closed (io.EOF once the buffer is drained) or the read deadline
// passes.
func (e *memEnd) Read(b []byte) (int, error) {
	p := e.p
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		switch {
		case e.closed:
			return 0, io.ErrClosedPipe
		case passed(e.readDeadline):
			return 0, os.ErrDeadlineExceeded
		case len(e.in) > 0:
			n := copy(b, e.in)
			e.in = e.in[n:]
			if len(e.in) == 0 {
				e.in = nil // let the buffer go: most sessions are idle
			}
			p.cond.Broadcast()
			return n, nil
		case e.peer.closed:
			return 0, io.EOF
		case len(b) == 0:
			return 0, nil
		}
		p.cond.Wait()
	}
}

// Write buffers b for the peer, waiting while the peer holds
// memPipeLimit bytes unread, until either end closes or the write
// deadline passes.
func (e *memEnd) Write(b []byte) (int, error) {
	p := e.p
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for {
		switch {
		case e.closed || e.peer.closed:
			return n, io.ErrClosedPipe
		case passed(e.writeDeadline):
			return n, os.ErrDeadlineExceeded
		case len(b) == 0:
			return n, nil
		}
		if room := memPipeLimit - len(e.peer.in); room > 0 {
			k := min(room, len(b))
			e.peer.in = append(e.peer.in, b[:k]...)
			n, b = n+k, b[k:]
			p.cond.Broadcast()
			continue
		}
		p.cond.Wait()
	}
}

// Close closes this end: its calls fail with io.ErrClosedPipe, the peer's
// writes too, and the peer's reads return io.EOF once they have read what
// this end wrote. Closing twice is no error.
func (e *memEnd) Close() error {
	p := e.p
	p.mu.Lock()
	defer p.mu.Unlock()
	e.closed, e.in = true, nil
	dropTimer(&e.readTimer)
	dropTimer(&e.writeTimer)
	p.cond.Broadcast()
	return nil
}

// dropTimer stops a deadline's timer, if there is one, and lets it go.
func dropTimer(t **time.Timer) {
	if *t != nil {
		(*t).Stop()
		*t = nil
	}
}

// LocalAddr is the pipe's address.
func (e *memEnd) LocalAddr() net.Addr { return memPipeAddr{} }

// RemoteAddr is the pipe's address.
func (e *memEnd) RemoteAddr() net.Addr { return memPipeAddr{} }

// SetDeadline sets both deadlines.
func (e *memEnd) SetDeadline(t time.Time) error {
	e.SetReadDeadline(t)
	return e.SetWriteDeadline(t)
}

// SetReadDeadline sets the read deadline; the zero time clears it.
func (e *memEnd) SetReadDeadline(t time.Time) error {
	return e.setDeadline(&e.readDeadline, &e.readTimer, t)
}

// SetWriteDeadline sets the write deadline; the zero time clears it.
func (e *memEnd) SetWriteDeadline(t time.Time) error {
	return e.setDeadline(&e.writeDeadline, &e.writeTimer, t)
}

// setDeadline sets one deadline and arms its timer to wake the waiting
// calls when it passes. Clearing a deadline that is not set is the common
// call (the broker sets none each packet) and costs no timer.
func (e *memEnd) setDeadline(deadline *time.Time, timer **time.Timer, t time.Time) error {
	p := e.p
	p.mu.Lock()
	defer p.mu.Unlock()
	if e.closed {
		return io.ErrClosedPipe
	}
	*deadline = t
	switch {
	case t.IsZero():
		dropTimer(timer)
		return nil
	case *timer == nil:
		*timer = time.AfterFunc(time.Until(t), func() { p.expire(deadline, timer) })
	default:
		(*timer).Reset(time.Until(t))
	}
	p.cond.Broadcast() // a deadline already past fails the waiting call now
	return nil
}

// expire runs when the timer of a deadline fires: it wakes the calls
// waiting on p, to look at their deadlines again. A deadline that has not
// passed by the clock (one without a monotonic reading, after the wall
// clock was set back, or one set again meanwhile) gets its timer again,
// so that no call waits on a deadline with no timer.
func (p *memPipe) expire(deadline *time.Time, timer **time.Timer) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if t := *deadline; !t.IsZero() && !passed(t) && *timer != nil {
		(*timer).Reset(time.Until(t))
	}
	p.cond.Broadcast()
}
