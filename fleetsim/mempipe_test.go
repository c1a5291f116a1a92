package fleetsim

import (
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/net/nettest"
)

// TestMemPipeConn runs the net.Conn conformance tests of
// golang.org/x/net/nettest (ordering, concurrent reads and writes,
// deadlines in the past, present and future, Close during a call) on a
// memPipe.
func TestMemPipeConn(t *testing.T) {
	nettest.TestConn(t, func() (c1, c2 net.Conn, stop func(), err error) {
		c1, c2 = newMemPipe()
		return c1, c2, func() { c1.Close(); c2.Close() }, nil
	})
}

// TestMemPipeBuffers checks what net.Pipe does not do: a write returns
// without a reader, up to memPipeLimit bytes unread, and what an end wrote
// before it closed is still read, then io.EOF.
func TestMemPipeBuffers(t *testing.T) {
	a, b := newMemPipe()
	if n, err := a.Write([]byte("connect")); n != 7 || err != nil {
		t.Fatalf("Write with no reader = %d, %v; want 7, nil", n, err)
	}
	a.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	n, err := a.Write(make([]byte, memPipeLimit))
	if n != memPipeLimit-7 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Write past the limit = %d, %v; want %d, a deadline error", n, err, memPipeLimit-7)
	}
	a.Close()
	got, err := io.ReadAll(b)
	if err != nil || len(got) != memPipeLimit || string(got[:7]) != "connect" {
		t.Fatalf("read after the writer closed: %d bytes, %v; want all %d, then EOF", len(got), err, memPipeLimit)
	}
	if _, err := b.Write([]byte("x")); !errors.Is(err, io.ErrClosedPipe) {
		t.Errorf("Write to a closed peer: %v, want io.ErrClosedPipe", err)
	}
	if err := a.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestMemPipeDeadlineLetGo checks that clearing a deadline lets its timer
// go: a device's handshake sets one, and its session lasts for days.
func TestMemPipeDeadlineLetGo(t *testing.T) {
	a, _ := newMemPipe()
	e := a.(*memEnd)
	a.SetDeadline(time.Now().Add(time.Hour))
	if e.readTimer == nil || e.writeTimer == nil {
		t.Fatal("no timers for the deadlines set")
	}
	a.SetDeadline(time.Time{})
	if e.readTimer != nil || e.writeTimer != nil {
		t.Error("timers kept after the deadlines were cleared")
	}
}

// TestMemPipeDeadlineFirst checks that a passed read deadline fails a Read
// even with data buffered, as on net.Pipe, and that clearing it lets the
// data be read.
func TestMemPipeDeadlineFirst(t *testing.T) {
	a, b := newMemPipe()
	a.Write([]byte("x"))
	b.SetReadDeadline(time.Now().Add(-time.Second))
	if _, err := b.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past its deadline: %v, want os.ErrDeadlineExceeded", err)
	}
	b.SetReadDeadline(time.Time{})
	if n, err := b.Read(make([]byte, 1)); n != 1 || err != nil {
		t.Errorf("Read once the deadline is cleared = %d, %v; want 1, nil", n, err)
	}
}
