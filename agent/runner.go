package agent

import (
	"context"
	crand "crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"golang.org/x/sync/errgroup"

	"github.com/mdm-authority/mdm/protocol"
)

// Options configure Run.
type Options struct {
	// Dir is the state directory.
	Dir string
	// Logger receives the agent's log; nil discards it.
	Logger *slog.Logger
	// Clock is the time source; nil means the real clock.
	Clock Clock
	// Applier puts profiles into effect; nil writes them as files under
	// Dir/profiles.
	Applier Applier
	// Facts returns the device's facts before each evaluation; nil means no
	// facts (an unknown OS version fails a minimum version rule).
	Facts func() (Facts, error)
	// LockCommand, when set, is run on a remote lock, with the lock-screen
	// message in MDM_LOCK_MESSAGE; its exit status decides the result.
	LockCommand []string
	// MQTTKeepAlive is the MQTT keep-alive interval. Zero leaves it off:
	// TCP keep-alive in the kernel then finds dead connections (within two
	// minutes) without waking the idle agent, which paho's keep-alive
	// check does every 5 seconds. Set it for brokers that require one.
	MQTTKeepAlive time.Duration
}

// reconnect backoff: from one second up to five minutes.
const (
	reconnectBase  = time.Second
	reconnectLimit = 5 * time.Minute
	// stopGrace bounds the wait for the last messages before a wipe,
	// retire or unenroll ends communication.
	stopGrace = 10 * time.Second
)

// ErrStoppedManagement is returned by Run when a wipe, retire or unenroll
// ended management.
var ErrStoppedManagement = errors.New("the device is no longer managed")

// runner owns the core: only its loop goroutine touches it.
type runner struct {
	opts   Options
	files  files
	log    *slog.Logger
	core   *Core
	events chan event
	local  chan localRequest

	tls     tlsHolder
	mu      sync.Mutex
	session *session // nil while disconnected

	syncWaiters []chan<- localReply
	stopWaiter  chan<- localReply
	lastFacts   time.Time
	// rejected counts the messages from the service dropped since the
	// agent started, by reason (see rejectReason and Output.Ignored).
	rejected map[string]uint64
}

type eventKind uint8

const (
	evConnected eventKind = iota + 1
	evLost
	evMessage
	evPublished
	evLockDone
)

type event struct {
	kind    eventKind
	session *session
	topic   string
	payload []byte
	env     protocol.Envelope
	id      string
	err     error
}

// Run runs the agent until ctx is cancelled or management ends: it keeps
// an MQTT session with the service, checks in on schedule, on pushes and
// on request, applies profiles and commands, and serves the local control
// socket.
func Run(ctx context.Context, opts Options) error {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Clock == nil {
		opts.Clock = realClock{}
	}
	f := layout(opts.Dir)
	if opts.Applier == nil {
		opts.Applier = NewFileApplier(f.profiles)
	}
	st, err := f.load()
	if err != nil {
		return err
	}
	if st.Stopped != "" {
		// A crash between recording the end of management and removing
		// the identity and profiles leaves them behind: finish the job.
		if err := opts.Applier.Reconcile(nil); err != nil {
			return fmt.Errorf("remove profiles: %w", err)
		}
		if err := f.erase(st); err != nil {
			return err
		}
		return fmt.Errorf("%w: it was %s; enroll it again with mdm-agent enroll", ErrStoppedManagement, st.Stopped)
	}
	tlsCfg, err := f.identity(st)
	if err != nil {
		return err
	}
	r := &runner{
		opts: opts, files: f, log: opts.Logger,
		events: make(chan event, 64), local: make(chan localRequest), rejected: map[string]uint64{},
	}
	r.core = New(st, Config{
		Rand: newRand(),
	})
	r.refreshFacts(true)
	// A crash between persisting a state and applying its profiles leaves
	// the device behind the state: make it match before anything else.
	if err := opts.Applier.Reconcile(st.Profiles); err != nil {
		return fmt.Errorf("apply profiles: %w", err)
	}
	ln, err := listenLocal(f.socket)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: localHandler(r.local), ReadHeaderTimeout: 5 * time.Second}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		sctx, scancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer scancel()
		srv.Shutdown(sctx)
		os.Remove(f.socket)
		return nil
	})
	connect := make(chan struct{}, 1)
	r.tls.set(tlsCfg)
	ep := endpoint{broker: st.Broker, tenant: st.Tenant, device: st.Device}
	g.Go(func() error { return r.connector(gctx, ep, connect) })
	g.Go(func() error {
		defer cancel()
		if err := r.loop(gctx, connect); !errors.Is(err, errLoopDone) {
			return err
		}
		return nil
	})
	err = g.Wait()
	r.disconnect()
	return err
}

// tlsHolder holds the device's TLS configuration, which a certificate
// renewal replaces while the connector may be using it.
type tlsHolder struct {
	mu  sync.Mutex
	cfg *tls.Config
}

func (h *tlsHolder) get() *tls.Config {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.cfg
}

func (h *tlsHolder) set(cfg *tls.Config) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.cfg = cfg
}

// endpoint is where and as whom the device connects; it does not change
// while the agent runs.
type endpoint struct{ broker, tenant, device string }

// connector keeps a session up: each signal on connect starts an attempt,
// retried with backoff until it succeeds.
func (r *runner) connector(ctx context.Context, ep endpoint, connect <-chan struct{}) error {
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 0))
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-connect:
		}
		for attempt := 1; ; attempt++ {
			s := new(session)
			err := s.connect(ctx, sessionConfig{
				broker: ep.broker, tls: r.tls.get(), clientID: ep.device, keepAlive: r.opts.MQTTKeepAlive,
				onLost: func(err error) {
					s.lost.Store(true)
					r.send(ctx, event{kind: evLost, session: s, err: err})
				},
			})
			if err == nil {
				err = s.subscribe(ctx, protocol.DownlinkTopic(ep.tenant, ep.device), func(topic string, payload []byte) {
					r.send(ctx, event{kind: evMessage, session: s, topic: topic, payload: payload})
				})
				if err != nil {
					s.close()
				}
			}
			if err == nil {
				r.send(ctx, event{kind: evConnected, session: s})
				break
			}
			if ctx.Err() != nil {
				return nil
			}
			delay := Backoff(rng, attempt, reconnectBase, reconnectLimit)
			r.log.Warn("cannot reach the service; retrying", "err", err, "in", delay.Round(time.Second))
			t := time.NewTimer(delay)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-t.C:
			}
		}
	}
}

// send hands an event to the loop.
func (r *runner) send(ctx context.Context, ev event) {
	select {
	case r.events <- ev:
	case <-ctx.Done():
	}
}

// loop is the only goroutine that touches the core.
func (r *runner) loop(ctx context.Context, connect chan<- struct{}) error {
	connect <- struct{}{}
	if err := r.do(ctx, r.core.Start(r.now())); err != nil {
		return err
	}
	for {
		var timer <-chan time.Time
		stopTimer := func() {}
		if wake := r.core.NextWake(); !wake.IsZero() {
			timer, stopTimer = r.opts.Clock.NewTimer(max(wake.Sub(r.now()), 0))
		}
		st := r.core.State()
		ok, failed := st.CheckIns, st.FailedChecks
		out, err := r.step(ctx, timer, connect)
		stopTimer()
		if err != nil {
			return err
		}
		switch {
		case st.CheckIns > ok:
			r.log.Info("checked in", "authority", st.Authority, "epoch", st.Epoch, "desired_version", st.DesiredVersion, "next", st.NextCheckIn)
		case st.FailedChecks > failed:
			attrs := []any{"error", st.LastError, "message", st.LastMessage, "retry", st.NextCheckIn}
			if st.LastError != protocol.CodeNone {
				attrs = append(attrs, "hint", st.LastError.Hint())
			}
			r.log.Warn("check-in failed", attrs...)
		}
		if err := r.do(ctx, out); err != nil {
			return err
		}
	}
}

// step waits for the next thing to happen and hands it to the core;
// errLoopDone ends the loop.
func (r *runner) step(ctx context.Context, timer <-chan time.Time, connect chan<- struct{}) (Output, error) {
	var out Output
	select {
	case <-ctx.Done():
		r.failWaiters(errors.New("the agent is stopping"))
		return out, errLoopDone
	case <-timer:
		r.refreshFacts(false)
		out = r.core.Tick(r.now())
	case ev := <-r.events:
		switch ev.kind {
		case evConnected:
			if ev.session.lost.Load() {
				// Lost before the loop saw it connect: its evLost was
				// ignored, so ask for a new connection here.
				requestConnect(connect)
				break
			}
			r.setSession(ev.session)
			r.log.Info("connected to the service", "broker", r.core.State().Broker)
			r.refreshFacts(false)
			out = r.core.Connected(r.now())
		case evLost:
			if r.currentSession() != ev.session {
				break
			}
			r.setSession(nil)
			r.core.Disconnected(r.now())
			r.log.Warn("connection to the service lost; reconnecting", "err", ev.err)
			requestConnect(connect)
		case evMessage:
			if r.currentSession() != ev.session {
				break
			}
			out = r.receive(ev.topic, ev.payload)
		case evPublished:
			out = r.core.Published(ev.env)
		case evLockDone:
			status, msg := protocol.CommandDone, ""
			if ev.err != nil {
				r.log.Warn("remote lock command failed", "command", ev.id, "err", ev.err)
				status, msg = protocol.CommandFailed, ev.err.Error()
			}
			out = r.core.Finish(r.now(), ev.id, status, msg)
		}
	case req := <-r.local:
		out = r.serveLocal(req)
	}
	return out, nil
}

// requestConnect asks the connector for a connection attempt, unless one
// is already asked for.
func requestConnect(connect chan<- struct{}) {
	select {
	case connect <- struct{}{}:
	default:
	}
}

// errLoopDone ends the loop when the context is cancelled.
var errLoopDone = errors.New("agent stopping")

func (r *runner) now() time.Time { return r.opts.Clock.Now() }

func (r *runner) setSession(s *session) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.session = s
}

func (r *runner) currentSession() *session {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.session
}

func (r *runner) disconnect() {
	if s := r.currentSession(); s != nil {
		s.close()
		r.setSession(nil)
	}
}

// receive hands a message from the service to the core, unless it does
// not decode or does not belong on its topic. Messages dropped, here or by
// the core, are counted by reason and logged.
func (r *runner) receive(topic string, payload []byte) Output {
	env, err := r.admit(topic, payload)
	if err != nil {
		r.reject(rejectReason(err), "topic", topic, "bytes", len(payload), "err", err)
		return Output{}
	}
	out := r.core.Receive(r.now(), env)
	if out.Ignored != "" {
		r.reject(out.Ignored, "topic", topic, "kind", env.Kind(), "id", env.ID)
	}
	return out
}

// reject counts a dropped message and logs it at a bounded rate: the
// 1st, 2nd, 4th, 8th … of each reason, with the count so far, so that a
// flood of bad messages costs a few log lines and still shows.
func (r *runner) reject(reason string, args ...any) {
	r.rejected[reason]++
	if n := r.rejected[reason]; n&(n-1) == 0 {
		r.log.Warn("dropped a message from the service", append([]any{"reason", reason, "count", n}, args...)...)
	}
}

// errNotOurTopic is the error of a message on a topic other than this
// device's downlink.
var errNotOurTopic = errors.New("not this device's downlink topic")

// rejectReason names why admit refused a message.
func rejectReason(err error) string {
	switch {
	case errors.Is(err, protocol.ErrTooLarge), errors.Is(err, protocol.ErrMalformed), errors.Is(err, protocol.ErrKind):
		return "malformed"
	case errors.Is(err, protocol.ErrVersion):
		return "unsupported_version"
	case errors.Is(err, protocol.ErrInvalid):
		return "invalid"
	case errors.Is(err, protocol.ErrTopic), errors.Is(err, protocol.ErrWrongTopic), errors.Is(err, errNotOurTopic):
		return "wrong_topic"
	case errors.Is(err, protocol.ErrDeviceMismatch):
		return "device_mismatch"
	}
	return "other"
}

// admit decodes a downlink message and checks it belongs to this device.
func (r *runner) admit(topic string, payload []byte) (protocol.Envelope, error) {
	tp, err := protocol.ParseTopic(topic)
	if err != nil {
		return protocol.Envelope{}, err
	}
	st := r.core.State()
	if tp.Kind != protocol.TopicDownlink || tp.Tenant != st.Tenant || tp.ID != st.Device {
		return protocol.Envelope{}, fmt.Errorf("topic %s: %w", topic, errNotOurTopic)
	}
	env, err := protocol.Decode(payload)
	if err != nil {
		return protocol.Envelope{}, err
	}
	if err := tp.Admits(&env); err != nil {
		return protocol.Envelope{}, err
	}
	return env, nil
}

// refreshFacts reads the device's facts, at most once a minute unless
// forced.
func (r *runner) refreshFacts(force bool) {
	if r.opts.Facts == nil || (!force && r.now().Sub(r.lastFacts) < time.Minute) {
		return
	}
	r.lastFacts = r.now()
	f, err := r.opts.Facts()
	if err != nil {
		r.log.Warn("cannot read the device's facts; compliance uses the last ones", "err", err)
		return
	}
	r.core.SetFacts(f)
}

// serveLocal answers a control socket request.
func (r *runner) serveLocal(req localRequest) Output {
	now := r.now()
	switch req.kind {
	case "status":
		s := r.core.Status(now)
		if len(r.rejected) > 0 {
			s.RejectedMessages = maps.Clone(r.rejected) // the answer is encoded on another goroutine
		}
		req.reply <- localReply{body: s}
	case "sync":
		r.refreshFacts(true)
		out, err := r.core.Sync(now)
		if err != nil {
			req.reply <- localReply{err: err}
			return Output{}
		}
		r.syncWaiters = append(r.syncWaiters, req.reply)
		return out
	case "unenroll":
		r.stopWaiter = req.reply
		return r.core.Unenroll(now, "unenrolled on the device")
	}
	return Output{}
}

func (r *runner) failWaiters(err error) {
	for _, w := range r.syncWaiters {
		w <- localReply{err: err}
	}
	r.syncWaiters = nil
	if r.stopWaiter != nil {
		r.stopWaiter <- localReply{err: err}
		r.stopWaiter = nil
	}
}

// do carries out an Output: persist, send, apply, lock, stop.
func (r *runner) do(ctx context.Context, out Output) error {
	st := r.core.State()
	if out.Persist {
		if err := r.files.save(st); err != nil {
			// The state on disk is the previous one: the device redoes the
			// step after a restart. Stopping beats running on a state that
			// is not durable.
			return err
		}
	}
	var sent []paho.Token
	if s := r.currentSession(); s != nil {
		for _, env := range out.Send {
			tok, err := s.publish(protocol.UplinkTopic(st.Tenant, st.Device), env)
			if err != nil {
				r.log.Error("cannot send", "kind", env.Kind(), "err", err)
				continue
			}
			sent = append(sent, tok)
			go func() {
				<-tok.Done()
				if tok.Error() == nil {
					r.send(ctx, event{kind: evPublished, env: env})
				}
			}()
		}
	}
	for _, ch := range out.Changes {
		if err := r.apply(ch); err != nil {
			r.log.Error("cannot apply profile change; it is retried at the next start", "change", ch.Kind, "profile", ch.Profile.Name, "err", err)
		} else {
			attrs := []any{"type", ch.Profile.Type, "name", ch.Profile.Name, "authority", ch.Profile.Authority, "version", ch.Profile.Version}
			if ch.Profile.Retained() {
				attrs = append(attrs, "retain_until", ch.Profile.RetainUntil)
			}
			r.log.Info("profile "+ch.Kind.String(), attrs...)
		}
	}
	for _, l := range out.Locks {
		r.log.Info("remote lock", "command", l.ID, "message", l.Message)
		r.lock(ctx, l)
	}
	if out.Renewed {
		if cfg, err := r.files.identity(st); err == nil {
			r.tls.set(cfg)
			r.log.Info("certificate renewed", "not_after", st.CertNotAfter)
		}
	}
	if out.Synced != nil {
		for _, w := range r.syncWaiters {
			w <- localReply{body: *out.Synced}
		}
		r.syncWaiters = nil
	}
	if out.Stop != "" {
		return r.stop(ctx, out.Stop, sent)
	}
	return nil
}

// apply carries out one profile change.
func (r *runner) apply(ch Change) error {
	switch ch.Kind {
	case Installed, Updated:
		return r.opts.Applier.Install(ch.Profile)
	case Overwritten:
		if err := r.opts.Applier.Install(ch.Profile); err != nil {
			return err
		}
		return r.opts.Applier.Remove(*ch.Replaced)
	case Retained:
		return r.opts.Applier.Install(ch.Profile)
	case Removed, Expired:
		return r.opts.Applier.Remove(ch.Profile)
	}
	return nil
}

// lock runs the lock command, if any, and reports back to the loop.
func (r *runner) lock(ctx context.Context, cmd protocol.Command) {
	if len(r.opts.LockCommand) == 0 {
		go r.send(ctx, event{kind: evLockDone, id: cmd.ID})
		return
	}
	go func() {
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		c := exec.CommandContext(cctx, r.opts.LockCommand[0], r.opts.LockCommand[1:]...)
		c.Env = append(os.Environ(), "MDM_LOCK_MESSAGE="+cmd.Message, "MDM_COMMAND_ID="+cmd.ID)
		outb, err := c.CombinedOutput()
		if err != nil {
			err = fmt.Errorf("lock command: %w: %.200s", err, outb)
		}
		r.send(ctx, event{kind: evLockDone, id: cmd.ID, err: err})
	}()
}

// stop ends management: it waits briefly for the last messages to reach
// the broker, then removes the identity and the profiles.
func (r *runner) stop(ctx context.Context, why string, sent []paho.Token) error {
	deadline := time.NewTimer(stopGrace)
	defer deadline.Stop()
	delivered := true
	for _, tok := range sent {
		select {
		case <-tok.Done():
			delivered = delivered && tok.Error() == nil
		case <-deadline.C:
			delivered = false
		case <-ctx.Done():
			delivered = false
		}
	}
	if len(sent) == 0 && why == StoppedUnenrolled {
		delivered = false
	}
	r.disconnect()
	if err := r.opts.Applier.Reconcile(nil); err != nil {
		r.log.Error("cannot remove profiles", "err", err)
	}
	err := r.files.erase(r.core.State())
	switch {
	case why == StoppedUnenrolled && !delivered:
		r.log.Warn("unenrolled on the device, but the service was not reached: remove the device in the admin console as well")
	default:
		r.log.Info("management ended", "why", why)
	}
	if r.stopWaiter != nil {
		r.stopWaiter <- localReply{err: err}
		r.stopWaiter = nil
	}
	r.failWaiters(fmt.Errorf("%w: it was %s", ErrStoppedManagement, why))
	if err != nil {
		return err
	}
	return fmt.Errorf("%w: it was %s", ErrStoppedManagement, why)
}

// UnenrollOffline unenrolls a device whose agent is not running: it
// connects once to tell the service, then removes the profiles and the
// identity. With force, a service that cannot be reached does not stop
// the removal.
func UnenrollOffline(ctx context.Context, dir string, applier Applier, clock Clock, force bool) error {
	if clock == nil {
		clock = realClock{}
	}
	f := layout(dir)
	if applier == nil {
		applier = NewFileApplier(f.profiles)
	}
	st, err := f.load()
	if err != nil {
		return err
	}
	if st.Stopped != "" {
		return fmt.Errorf("the device was already %s", st.Stopped)
	}
	core := New(st, Config{Rand: newRand()})
	out := core.Unenroll(clock.Now(), "unenrolled on the device")
	told := func() error {
		tlsCfg, err := f.identity(st)
		if err != nil {
			return err
		}
		s, err := dial(ctx, sessionConfig{broker: st.Broker, tls: tlsCfg, clientID: st.Device})
		if err != nil {
			return err
		}
		defer s.close()
		for _, env := range out.Send {
			tok, err := s.publish(protocol.UplinkTopic(st.Tenant, st.Device), env)
			if err != nil {
				return err
			}
			if err := wait(ctx, tok); err != nil {
				return fmt.Errorf("send unenroll: %w", err)
			}
		}
		return nil
	}()
	if told != nil && !force {
		return fmt.Errorf("cannot tell the service: %w; nothing was removed (pass --force to unenroll on the device only, then remove the device in the admin console)", told)
	}
	if err := applier.Reconcile(nil); err != nil {
		return fmt.Errorf("remove profiles: %w", err)
	}
	return f.erase(core.State())
}

// newRand returns the random source of a real device: jitter and message
// ids seeded from crypto/rand, so that devices do not move in step.
func newRand() *rand.Rand {
	var seed [32]byte
	crand.Read(seed[:]) // never fails on supported systems (Go 1.24+ crashes instead)
	return rand.New(rand.NewChaCha8(seed))
}
