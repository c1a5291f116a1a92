package main

import (
	"context"
	"crypto/x509"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/mdm-authority/mdm/agent"
	"github.com/mdm-authority/mdm/broker"
	"github.com/mdm-authority/mdm/protocol"
)

// fakeClock is the time of both the service and the agents in these
// tests; Advance fires the agent timers that come due.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	at time.Time
	c  chan time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Now().Truncate(time.Millisecond)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) NewTimer(d time.Duration) (<-chan time.Time, func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{at: c.now.Add(d), c: make(chan time.Time, 1)}
	if d <= 0 {
		t.c <- c.now
		return t.c, func() {}
	}
	c.timers = append(c.timers, t)
	return t.c, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.timers = slices.DeleteFunc(c.timers, func(x *fakeTimer) bool { return x == t })
	}
}

// Advance moves the clock and fires the timers that came due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	c.timers = slices.DeleteFunc(c.timers, func(t *fakeTimer) bool {
		if t.at.After(c.now) {
			return false
		}
		t.c <- c.now
		return true
	})
}

// service is the management service in-process, over real TLS on a
// loopback port.
type service struct {
	svc    *broker.Service
	broker *broker.Broker
	url    string
	token  string
	roots  *x509.CertPool
	caDER  []byte
	clock  *fakeClock
}

func startService(t *testing.T, clock *fakeClock, configure ...func(*broker.Options)) *service {
	t.Helper()
	dir := t.TempDir()
	store, err := broker.OpenStore(filepath.Join(dir, "mdm.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	ca, _, err := broker.LoadOrCreateCA(dir, "default", clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	opts := broker.Options{Tenant: "default", Clock: clock}
	for _, fn := range configure {
		fn(&opts)
	}
	svc, err := broker.NewService(store, ca, opts)
	if err != nil {
		t.Fatal(err)
	}
	s := &service{svc: svc, clock: clock}
	addr := s.startBroker(t, "127.0.0.1:0")
	token, err := svc.RotateEnrollmentToken()
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(ca.CertificateDER())
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(caCert)
	s.url, s.token, s.roots, s.caDER = "mqtts://"+addr, token, roots, ca.CertificateDER()
	return s
}

// startBroker starts the embedded broker on addr and returns where it
// listens.
func (s *service) startBroker(t *testing.T, addr string) string {
	t.Helper()
	b, err := broker.NewBroker(s.svc, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	a, err := b.ListenTLS(addr, []string{"127.0.0.1", "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	s.broker = b
	return a.String()
}

// runningAgent is an agent enrolled with the service and running.
type runningAgent struct {
	dir    string
	id     string
	client *agent.LocalClient
	cancel context.CancelFunc
	done   chan error
	facts  *factsBox
	// keepAlive is the MQTT keep-alive the agent runs with.
	keepAlive time.Duration
}

type factsBox struct {
	mu sync.Mutex
	f  agent.Facts
}

func (b *factsBox) get() (agent.Facts, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.f, nil
}

func (b *factsBox) set(f agent.Facts) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.f = f
}

// socketDir returns a short directory for a state directory: unix socket
// paths are limited to 108 bytes, and t.TempDir can be longer.
func socketDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "mdma")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func enrollAgent(t *testing.T, s *service, platform protocol.Platform, user string) *runningAgent {
	t.Helper()
	dir := filepath.Join(socketDir(t), "state")
	st, err := agent.Enroll(context.Background(), agent.EnrollOptions{
		Dir: dir, Broker: s.url, Tenant: "default", Token: s.token, CA: s.roots,
		User: user, Platform: platform, Name: "vm-1", OSVersion: "14", Clock: s.clock,
	})
	if err != nil {
		t.Fatalf("enroll: %v", err)
	}
	a := &runningAgent{dir: dir, id: st.Device, client: agent.NewLocalClient(dir), facts: &factsBox{f: agent.Facts{OSVersion: "14", Passcode: true, Encrypted: true}}}
	a.start(t, s)
	return a
}

func (a *runningAgent) start(t *testing.T, s *service) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel, a.done = cancel, make(chan error, 1)
	go func() {
		a.done <- agent.Run(ctx, agent.Options{Dir: a.dir, Clock: s.clock, Facts: a.facts.get, MQTTKeepAlive: a.keepAlive,
			Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	}()
	t.Cleanup(func() { a.stop(t) })
	waitFor(t, "the agent to connect", func() bool {
		st, err := a.client.Status(context.Background())
		return err == nil && st.Connected
	})
}

func (a *runningAgent) stop(t *testing.T) error {
	t.Helper()
	if a.cancel == nil {
		return nil
	}
	a.cancel()
	a.cancel = nil
	select {
	case err := <-a.done:
		return err
	case <-time.After(20 * time.Second):
		t.Fatal("the agent did not stop within 20 s")
	}
	return nil
}

func (a *runningAgent) status(t *testing.T) agent.Status {
	t.Helper()
	st, err := a.client.Status(context.Background())
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	return st
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(string(b[:len(b)-1]))
	return len(b), nil
}

// waitFor polls cond until it holds. The agents talk to the service over
// real sockets, so a test waits on what it can observe; the deadline is
// generous because CI machines are shared.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func deviceOf(t *testing.T, s *service, id string) broker.Device {
	t.Helper()
	d, _, err := s.svc.Device(id)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func findProfile(ps []agent.Profile, a protocol.Authority, typ protocol.ProfileType, name string) *agent.Profile {
	for i := range ps {
		if ps[i].Authority == a && ps[i].Type == typ && ps[i].Name == name {
			return &ps[i]
		}
	}
	return nil
}

func profileFiles(t *testing.T, dir string) []string {
	t.Helper()
	var names []string
	root := agent.ProfileDir(dir)
	filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(root, p)
			names = append(names, rel)
		}
		return nil
	})
	slices.Sort(names)
	return names
}
