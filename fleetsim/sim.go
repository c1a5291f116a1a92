package fleetsim

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	mrand "math/rand/v2"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"runtime/metrics"
	"runtime/pprof"
	"slices"
	"sync"
	"time"

	"github.com/mdm-authority/mdm/agent"
	"github.com/mdm-authority/mdm/broker"
	"github.com/mdm-authority/mdm/protocol"
)

// Config describes a run. The zero value of a field means its default.
type Config struct {
	// Devices is the size of the fleet; default 2,000.
	Devices int
	// Seed makes the run repeatable: the same seed gives the same fleet,
	// the same schedule and the same figures.
	Seed uint64
	// Mix is the platform mix; default DefaultMix.
	Mix *Mix
	// Userless is the share of devices without a user (DEP/bulk); nil
	// means 5%.
	Userless *float64
	// Online is the share of intermittent and powered-off devices; nil
	// means DefaultOnline.
	Online *Online
	// Scenario is the timeline; default DefaultScenario(2h).
	Scenario *Scenario
	// PushRate is the most pushes the service sends per virtual second;
	// default 500.
	PushRate int
	// Sample is the timeline's interval; default 15 minutes.
	Sample time.Duration
	// Resolution rounds the devices' own timers (scheduled check-ins,
	// retries, timeouts) up to a multiple of it, so that devices due at
	// about the same time act together and the service sees them in one
	// batch, as it would at scale; default 10 seconds. Messages are never
	// delayed by it: a push is answered at once.
	Resolution time.Duration
	// Progress, when set, is called about once a second of real time.
	Progress func(Progress)
	// Dir is an empty directory for the service's store and CA, kept
	// after the run; default a temporary directory, removed at the end.
	Dir string
	// External, when set, runs the fleet against a separately started
	// service instead of one in the process.
	External *External
	// Wire makes in-process devices write every packet on their
	// connection, for the broker's goroutine of that connection to read
	// and handle, as over a network. By default a device writes only its
	// handshake there, and hands its later packets to the broker decoded,
	// through broker.Session on shared queues (see the package doc): the
	// migration's figures are the same either way, and the default is
	// faster at scale, but the broker's reading of each packet and its
	// one goroutine per sending device are then not part of the load.
	// External mode always writes every packet.
	Wire bool
	// BurstProfile, when set, receives a CPU profile (runtime/pprof) of
	// the migration burst: the ten virtual minutes after the authority
	// change that run.burst_checkins_per_s measures. No other CPU profile
	// may run at the time.
	BurstProfile io.Writer
}

// External is a separately started service (mdm-broker serve) that the
// simulator's devices reach over the network and whose admin API it
// drives. The service's clock sets the pace: the simulator reads its time
// and scale (GET /v1/clock) and runs its devices on the same scaled clock,
// so a scenario takes its duration divided by the scale in real time.
// Nothing waits for quiescence there: timers fire when the shared clock
// reaches them, and figures vary a little from run to run with the
// host's speed.
type External struct {
	// MQTT is the service's MQTT address: tcp://host:port (plain MQTT,
	// where devices authenticate with their connect token) or
	// tls://host:port (devices present their certificates).
	MQTT string
	// EnrollMQTT, when set, is where enrolling clients connect instead of
	// MQTT: a broker that takes identities from client certificates on
	// one listener and passwords on another (Mosquitto, see
	// scripts/mosquitto) has enrolling clients on a listener of their own.
	EnrollMQTT string
	// RootCAs trusts the service's TLS listener; for tls:// only.
	RootCAs *x509.CertPool
	// Admin is the client of the service's admin API.
	Admin *broker.AdminClient
	// EnrollmentToken is the tenant's enrollment token.
	EnrollmentToken string
	// Tenant is the service's tenant id; default "default".
	Tenant string
	// Start is the service time at which the scenario starts; default the
	// service's time when the run starts. Shards of one fleet need the
	// same Start.
	Start time.Time
	// Shard and Shards split one fleet over several simulators: this one
	// runs the devices whose index modulo Shards is Shard (from 0). Only
	// shard 0 carries out the scenario's admin steps and enrolls the
	// canary; every shard follows the same timeline. Default 0 of 1.
	Shard, Shards int
}

// Progress is a snapshot for a live progress line.
type Progress struct {
	Virtual     time.Duration // since the start
	End         time.Duration
	ByAuthority map[protocol.Authority]int
	CheckInsPS  float64 // check-ins per real second since the last snapshot
	Phase       string
}

// virtualStart is the virtual time at which every in-process run starts, so that runs with
// one seed repeat to the millisecond.
var virtualStart = time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)

// simDevice is one simulated device: a real agent core and its own MQTT
// session.
type simDevice struct {
	idx    int
	spec   deviceSpec
	key    *ecdsa.PrivateKey // the device key, for TLS; nil in process
	core   *agent.Core
	client *mqttConn
	online bool
	wakeAt time.Time // the scheduled core wake-up, zero if none
	toggle int       // the next entry of spec.toggles
	held   int       // offline steps holding the device offline

	migratedAt time.Time // first check-in answered under the target authority
	onlineAtGo bool      // online when it could first migrate
	readyAt    time.Time // first online once it could migrate
	canary     bool
	stopped    bool
	retry      bool         // to connect again once a restarted broker is back
	counts     deviceCounts // what the device adds to the fleet's counts
}

// inbound is a message a device received, or the news that its session
// ended, waiting for the loop.
type inbound struct {
	dev     int
	payload []byte
	lost    *mqttConn // the session that ended
	// dropped: the session ended because the broker did not take a
	// message it had sent, which still counts as work in flight.
	dropped bool
}

// sim is one run.
type sim struct {
	cfg    Config
	sc     *Scenario
	clock  *Clock
	work   *work
	ctl    control
	ext    *External // nil in process
	tenant string
	start  time.Time // the virtual time of the scenario's start
	svc    *broker.Service
	b      *broker.Broker
	store  *broker.Store
	token  string

	timers  timers
	fleet   []deviceSpec
	devices []*simDevice // nil until enrolled

	inboxMu sync.Mutex
	inbox   []inbound

	from, to   protocol.Authority // 0 for coexistence
	fromMode   string             // the modes, as the scenario names them
	toMode     string
	changeAt   time.Time
	goAt       map[protocol.Platform]time.Time // when each platform could first migrate
	stats      stats
	fanOutNext time.Time
	lockID     string
	canary     int
	end        time.Time
	realStart  time.Time
	enrolling  rateWindow  // connects while the fleet enrolls
	burst      rateWindow  // check-ins in the migration burst
	dir        string      // the service's store and CA
	tempDir    string      // the store's directory when the run made it
	down       bool        // a restart step has stopped the broker
	svcDown    bool        // and the service
	restarts   int         // restart steps so far
	retryRand  *mrand.Rand // reconnection delays, from the seed
	main       *lane       // the loop's own lane
	lanes      []*lane     // the lanes of a round handled in parallel
	laneMin    int         // the fewest messages per lane (minLaneMessages)
	sampled    func()      // for tests: called after each timeline sample
	keys       *keyMaker   // the fleet's device keys, made ahead
	up         *uplink     // in process: the devices' packets into the broker
	tick       *time.Timer // settle's wait for work in flight, reused
	laneRounds int         // rounds handled in parallel
	fired      uint64      // a digest of the timers run, in order, for tests
	profiling  bool        // the burst's CPU profile runs
	profileErr error       // it could not start
}

// Run runs the scenario over a simulated fleet and reports what happened.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	s, err := newSim(cfg)
	if err != nil {
		return nil, err
	}
	defer s.close()
	if err := s.enrollFleet(ctx); err != nil {
		return nil, err
	}
	if err := s.loop(ctx); err != nil {
		return nil, err
	}
	if s.profileErr != nil {
		return nil, fmt.Errorf("CPU profile of the burst: %w", s.profileErr)
	}
	return s.report(), nil
}

func newSim(cfg Config) (*sim, error) {
	if cfg.Devices == 0 {
		cfg.Devices = 2000
	}
	if cfg.Devices < 1 || cfg.Devices > 1_000_000 {
		return nil, fmt.Errorf("devices: %d; want 1 to 1,000,000", cfg.Devices)
	}
	if cfg.Mix == nil {
		cfg.Mix = &DefaultMix
	}
	if err := cfg.Mix.validate(); err != nil {
		return nil, err
	}
	if cfg.Userless == nil {
		u := 0.05
		cfg.Userless = &u
	}
	if *cfg.Userless < 0 || *cfg.Userless > 1 {
		return nil, fmt.Errorf("userless share %g: want 0 to 1", *cfg.Userless)
	}
	if cfg.Online == nil {
		cfg.Online = &DefaultOnline
	}
	if o := cfg.Online; o.Intermittent < 0 || o.PoweredOff < 0 || o.Intermittent+o.PoweredOff > 1 {
		return nil, fmt.Errorf("online shares %+v: want each 0 to 1, together at most 1", *o)
	}
	if cfg.Scenario == nil {
		cfg.Scenario = DefaultScenario(2 * time.Hour)
	}
	if err := cfg.Scenario.CheckFleet(cfg.Mix.IOS > 0 || cfg.Mix.IPadOS > 0); err != nil {
		return nil, fmt.Errorf("scenario: %w", err)
	}
	if cfg.PushRate == 0 {
		cfg.PushRate = 500
	}
	if cfg.Sample == 0 {
		cfg.Sample = 15 * time.Minute
	}
	if cfg.PushRate < 0 || cfg.Sample < time.Minute {
		return nil, fmt.Errorf("push rate %d, sample %s: want a positive rate and a sample of at least a minute", cfg.PushRate, cfg.Sample)
	}
	if cfg.Resolution == 0 {
		cfg.Resolution = 10 * time.Second
	}
	if cfg.Resolution < 0 || cfg.Resolution > time.Hour {
		return nil, fmt.Errorf("resolution %s: want up to 1h", cfg.Resolution)
	}
	s := &sim{cfg: cfg, sc: cfg.Scenario, clock: &Clock{now: virtualStart}, work: newWork(), canary: -1, realStart: time.Now(),
		tenant: "contoso", start: virtualStart, retryRand: mrand.New(mrand.NewPCG(cfg.Seed, 0x7265747279))}
	// The heap holds more timers than devices: a wake-up that a check-in
	// replaces stays until its time comes (160,000 timers for 100,000
	// devices just after a migration's burst). Room for two a device from
	// the start (11 MB at 100,000 devices) spares the loop copying a heap
	// that large each time it grows, as it did in the burst; a run that
	// holds more still grows it.
	s.timers.h = make([]event, 0, 2*cfg.Devices+64)
	s.main, s.laneMin = &lane{st: &s.stats}, minLaneMessages
	for range roundLanes() {
		s.lanes = append(s.lanes, newDeferredLane())
	}
	if cfg.External != nil {
		if err := s.external(cfg.External); err != nil {
			return nil, err
		}
	}
	s.end = s.start.Add(time.Duration(s.sc.Duration))
	s.enrolling = rateWindow{from: s.start, to: s.start.Add(enrollSpread)}
	from, to, at, ok := s.sc.migration()
	if ok {
		s.fromMode, s.toMode, s.changeAt = from, to, s.start.Add(at)
		s.burst = rateWindow{from: s.changeAt, to: s.changeAt.Add(burstWindow)}
		// A mode that is not one authority (coexistence) is 0 here: the
		// migration figures need one target.
		s.from, _ = protocol.ParseAuthority(from)
		s.to, _ = protocol.ParseAuthority(to)
	}

	if s.ext != nil {
		return s, nil
	}
	if err := s.open(); err != nil {
		s.close()
		return nil, err
	}
	return s, nil
}

// external sets the run up against a separate service: its clock, its
// tenant and its admin API.
func (s *sim) external(e *External) error {
	if e.Shards == 0 {
		e.Shards = 1
	}
	if e.Shard < 0 || e.Shards < 1 || e.Shard >= e.Shards || e.Shards > 10000 {
		return fmt.Errorf("shard %d of %d: want shard 0 to n-1 of n shards (n up to 10,000)", e.Shard, e.Shards)
	}
	if e.Tenant == "" {
		e.Tenant = "default"
	}
	if err := protocol.ValidID(e.Tenant); err != nil {
		return fmt.Errorf("tenant %q: %w", e.Tenant, err)
	}
	if err := CheckMQTTURL(e.MQTT); err != nil {
		return err
	}
	if e.EnrollMQTT != "" {
		if err := CheckMQTTURL(e.EnrollMQTT); err != nil {
			return fmt.Errorf("enrollment: %w", err)
		}
	}
	if e.EnrollmentToken == "" {
		return errors.New("no enrollment token: pass the service's enrollment token file (DATA/enrollment.token)")
	}
	for i, st := range s.sc.Steps {
		if st.Action == ActionRestartBroker || st.Action == ActionRestartService {
			return fmt.Errorf("scenario step %d (%s): the simulator restarts only a service in its own process; restart the separate one by hand, or drop the step", i+1, st.Action)
		}
	}
	var info broker.ClockInfo
	before := time.Now()
	if err := e.Admin.Do(context.Background(), "GET", "/v1/clock", nil, &info); err != nil {
		return fmt.Errorf("the service's clock: %w", err)
	}
	rtt := time.Since(before)
	clock, err := broker.NewScaledClock(info.Now.Add(time.Duration(float64(rtt/2)*info.Scale)), info.Scale)
	if err != nil {
		return fmt.Errorf("the service's clock: %w", err)
	}
	s.ext, s.tenant, s.token, s.ctl = e, e.Tenant, e.EnrollmentToken, adminControl{c: e.Admin, ctx: context.Background()}
	s.clock = &Clock{scaled: clock}
	s.start = e.Start
	if s.start.IsZero() {
		s.start = clock.Now().Truncate(time.Second).Add(time.Second)
	}
	if late := clock.Now().Sub(s.start); late > time.Duration(s.sc.Duration) {
		return fmt.Errorf("start %s is %s in the service's past, after the end of the scenario: give a later --start", s.start.Format(time.RFC3339), late.Round(time.Second))
	}
	return nil
}

// burstWindow is the virtual time after the authority change over which
// the report measures the check-in rate of the migration burst: online
// devices move within it.
const burstWindow = 10 * time.Minute

// rateWindow measures a rate per real second over a window of virtual
// time: a count at the first timer at or after its start and again at
// the first at or after its end (or the end of the run).
// It also takes what the process spent meanwhile: its CPU time, the
// garbage collections that ended and the bytes it allocated; and, at its
// start, the heap left live and the collector's headroom.
type rateWindow struct {
	from, to           time.Time // virtual
	realFrom, realTo   time.Time
	countFrom, countTo int
	started, ended     bool
	runFrom, runTo     runtimeSample
}

func (w *rateWindow) observe(now time.Time, count int) {
	if w.from.IsZero() || w.ended {
		return
	}
	if !w.started && !now.Before(w.from) {
		w.started, w.realFrom, w.countFrom, w.runFrom = true, time.Now(), count, sampleRuntime()
	}
	if w.started && !now.Before(w.to) {
		w.ended, w.realTo, w.countTo, w.runTo = true, time.Now(), count, sampleRuntime()
	}
}

// spent is the real time, the process's CPU time (with ok false when the
// system does not report it) and the collections that ended over the
// window; zero when it did not run.
func (w *rateWindow) spent() (wall, cpu time.Duration, gcs uint64, ok bool) {
	if !w.ended {
		return 0, 0, 0, false
	}
	ok = w.runFrom.cpuOK && w.runTo.cpuOK
	if ok {
		cpu = w.runTo.cpu - w.runFrom.cpu
	}
	return w.realTo.Sub(w.realFrom), cpu, w.runTo.gcs - w.runFrom.gcs, ok
}

// heap is what the process allocated on the heap over the window, the
// heap the last collection before it left live, and its headroom at the
// start: the collector's heap goal less the heap then in use, about what
// could be allocated before the next collection ends. All zero when the
// window did not run.
func (w *rateWindow) heap() (allocated, live, headroom uint64) {
	if !w.ended {
		return 0, 0, 0
	}
	if w.runFrom.goal > w.runFrom.inUse {
		headroom = w.runFrom.goal - w.runFrom.inUse
	}
	return w.runTo.allocated - w.runFrom.allocated, w.runFrom.live, headroom
}

// runtimeSample is the process's CPU time and, from the Go runtime, the
// count of finished garbage collections, the bytes allocated so far, the
// heap the last collection left live, the heap in use and the heap goal
// of the collector's current cycle, at one moment.
type runtimeSample struct {
	cpu       time.Duration
	cpuOK     bool
	gcs       uint64
	allocated uint64
	live      uint64
	inUse     uint64
	goal      uint64
}

// sampleRuntime takes a runtimeSample now.
func sampleRuntime() runtimeSample {
	m := []metrics.Sample{{Name: "/gc/cycles/total:gc-cycles"}, {Name: "/gc/heap/allocs:bytes"}, {Name: "/gc/heap/live:bytes"},
		{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/gc/heap/goal:bytes"}}
	metrics.Read(m)
	var r runtimeSample
	for i, v := range []*uint64{&r.gcs, &r.allocated, &r.live, &r.inUse, &r.goal} {
		if m[i].Value.Kind() == metrics.KindUint64 {
			*v = m[i].Value.Uint64()
		}
	}
	r.cpu, r.cpuOK = processCPU()
	return r
}

// rate is the count per real second over the window; 0 when it did not
// run.
func (w *rateWindow) rate() float64 {
	if !w.ended {
		return 0
	}
	secs := w.realTo.Sub(w.realFrom).Seconds()
	if secs <= 0 {
		return 0
	}
	return float64(w.countTo-w.countFrom) / secs
}

// observe feeds the rate windows after each timer.
func (s *sim) observe() {
	now := s.clock.Now()
	s.enrolling.observe(now, s.stats.connects)
	started := s.burst.started
	s.burst.observe(now, s.stats.checkInsSent)
	if s.cfg.BurstProfile == nil {
		return
	}
	if !started && s.burst.started && s.profileErr == nil {
		s.profileErr = pprof.StartCPUProfile(s.cfg.BurstProfile)
		s.profiling = s.profileErr == nil
	}
	if s.burst.ended && s.profiling {
		pprof.StopCPUProfile()
		s.profiling = false
	}
}

// CheckMQTTURL checks an MQTT address of a separate service:
// tcp://HOST:PORT (plain MQTT, devices send their connect tokens) or
// tls://HOST:PORT (devices present their certificates); mqtt:// and
// ssl:// or mqtts:// are taken as the same.
func CheckMQTTURL(addr string) error {
	u, err := url.Parse(addr)
	if err != nil || u.Host == "" || !slices.Contains([]string{"tcp", "mqtt", "tls", "ssl", "mqtts"}, u.Scheme) {
		return fmt.Errorf("MQTT address %q: want tcp://HOST:PORT (plain MQTT, connect tokens) or tls://HOST:PORT (device certificates)", addr)
	}
	return nil
}

// runs reports whether this simulator runs the device of the fleet's
// index i: every device in process, its shard's in external mode.
func (s *sim) runs(i int) bool {
	return s.ext == nil || i%s.ext.Shards == s.ext.Shard
}

// admin reports whether this simulator carries out the scenario's admin
// steps: in process always, in external mode shard 0.
func (s *sim) admin() bool { return s.ext == nil || s.ext.Shard == 0 }

// open starts the service and its broker on a store in the run's
// directory.
func (s *sim) open() error {
	dir := s.cfg.Dir
	if dir == "" {
		d, err := os.MkdirTemp("", "fleetsim-")
		if err != nil {
			return fmt.Errorf("service store: %w", err)
		}
		dir, s.tempDir = d, d
	}
	s.dir = dir
	if err := s.openService(); err != nil {
		return err
	}
	var err error
	if s.token, err = s.svc.RotateEnrollmentToken(); err != nil {
		return err
	}
	if s.ext == nil && !s.cfg.Wire {
		s.up = newUplink(uplinkQueues)
	}
	return s.openBroker()
}

// openService opens the store and starts the service on it.
func (s *sim) openService() error {
	store, err := broker.OpenStore(filepath.Join(s.dir, "mdm.db"))
	if err != nil {
		return err
	}
	s.store = store
	store.Volatile()
	ca, _, err := broker.LoadOrCreateCA(s.dir, s.tenant, s.start.Add(-time.Hour))
	if err != nil {
		return err
	}
	// A stream of its own per start, so that ids never repeat.
	rnd := &lockedReader{r: mrand.NewChaCha8(seedBytes(s.cfg.Seed, byte(1+s.restarts)))}
	svc, err := broker.NewService(store, ca, broker.Options{Tenant: s.tenant, Clock: s.clock,
		Rand: rnd, RetentionPeriod: time.Duration(s.sc.Retention)})
	if err != nil {
		return err
	}
	s.svc, s.ctl = svc, localControl{svc}
	return nil
}

// openBroker starts the MQTT broker in front of the service.
func (s *sim) openBroker() error {
	b, err := broker.NewBroker(s.svc, nil)
	if err != nil {
		return err
	}
	b.SetTracker(s.work)
	s.b = b // closed by close, even when Serve fails
	if err := b.Serve(); err != nil {
		return err
	}
	return nil
}

func (s *sim) close() {
	s.keys.close()
	s.keys = nil
	if s.profiling {
		pprof.StopCPUProfile()
		s.profiling = false
	}
	for _, d := range s.devices {
		if d != nil && d.client != nil {
			d.client.Close()
		}
	}
	if s.b != nil {
		s.b.Close()
	}
	if s.up != nil {
		s.up.close()
	}
	if s.store != nil {
		s.store.Close()
	}
	if s.tempDir != "" {
		os.RemoveAll(s.tempDir)
	}
}

// lockedReader makes a math/rand source an io.Reader safe for the
// service's concurrent use.
type lockedReader struct {
	mu sync.Mutex
	r  *mrand.ChaCha8
}

func (l *lockedReader) Read(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.r.Read(b)
}

func seedBytes(seed uint64, stream byte) [32]byte {
	var b [32]byte
	for i := range 8 {
		b[i] = byte(seed >> (8 * i))
	}
	b[31] = stream
	return b
}

// dial opens an MQTT session subscribed to topic, authenticated like any
// device: in process over a direct session (newDirectPipe) that the
// broker serves, in external mode over TCP or TLS (with cert, the
// device's certificate). In process, when onLost is set, the session
// sends what it sends after its handshake through the uplink
// (broker.Session), and onLost is called with it when a message it
// published could not be delivered.
func (s *sim) dial(clientID, user, password, topic string, cert *tls.Certificate, onMessage func(payload []byte), onLost func(*mqttConn)) (*mqttConn, error) {
	o := mqttOptions{ClientID: clientID, Username: user, Password: password, Subscribe: topic, OnMessage: onMessage}
	if s.ext == nil {
		client, server := newDirectPipe()
		c, err := dialMQTTDirect(client, server, func() { go s.b.Connect(server) }, o)
		if err != nil || onLost == nil || s.up == nil {
			return c, err
		}
		sess, err := s.b.Session(clientID, server)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("mqtt connect %s: %w", clientID, err)
		}
		c.attach(s.up.queue(), sess, func() { onLost(c) })
		return c, nil
	}
	addr := s.ext.MQTT
	if cert == nil && s.ext.EnrollMQTT != "" {
		addr = s.ext.EnrollMQTT
	}
	nc, err := s.netConn(addr, cert)
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", clientID, err)
	}
	return dialMQTT(nc, o)
}

// netConn opens the connection under a device's MQTT session to a
// separate service.
func (s *sim) netConn(addr string, cert *tls.Certificate) (net.Conn, error) {
	u, _ := url.Parse(addr)
	d := net.Dialer{Timeout: 30 * time.Second, KeepAlive: time.Minute}
	if u.Scheme == "tcp" || u.Scheme == "mqtt" {
		return d.Dial("tcp", u.Host)
	}
	cfg := &tls.Config{RootCAs: s.ext.RootCAs, ServerName: u.Hostname(), MinVersion: tls.VersionTLS12}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return tls.DialWithDialer(&d, "tcp", u.Host, cfg)
}

// enroll enrolls one device through the enrollment topics, as the agent
// does, and returns its state.
func (s *sim) enroll(spec deviceSpec, name string, r *mrand.Rand) (*agent.State, *ecdsa.PrivateKey, error) {
	k, err := s.keys.take()
	if err != nil {
		return nil, nil, fmt.Errorf("device key: %w", err)
	}
	key, csr := k.key, k.csr
	var rid [8]byte
	for i := range rid {
		rid[i] = byte(r.Uint32())
	}
	request := hex.EncodeToString(rid[:])
	typ := protocol.EnrollUser
	if spec.user == "" {
		typ = protocol.EnrollBulk
	}
	req := &protocol.EnrollRequest{CSR: csr, Token: s.token, Platform: spec.platform, User: spec.user, Type: typ, Name: name, OSVersion: osVersion(spec.platform)}
	answers := make(chan []byte, 1)
	c, err := s.dial(protocol.EnrollClientPrefix+request, broker.EnrollUsername, s.token, protocol.EnrollResponseTopic(s.tenant, request), nil, func(p []byte) {
		select {
		case answers <- p:
		default:
		}
	}, nil)
	if err != nil {
		return nil, nil, err
	}
	defer c.Close()
	var id protocol.MessageID
	for i := range id {
		id[i] = byte(r.Uint32())
	}
	id[0] |= 1 // never the zero id
	payload, err := protocol.Encode(protocol.Envelope{ID: id, Sent: protocol.At(s.clock.Now()), Body: req})
	if err != nil {
		return nil, nil, err
	}
	s.work.Add(1) // the broker counts the answer, and the request handled
	if err := c.Publish(protocol.EnrollRequestTopic(s.tenant, request), payload); err != nil {
		s.work.Add(-1)
		return nil, nil, fmt.Errorf("enrollment request: %w", err)
	}
	select {
	case p := <-answers:
		s.work.Add(-1)
		env, err := protocol.Decode(p)
		if err != nil {
			return nil, nil, fmt.Errorf("enrollment answer: %w", err)
		}
		resp, ok := env.Body.(*protocol.EnrollResponse)
		if !ok || env.ReplyTo != id {
			return nil, nil, errors.New("enrollment answer: not the answer to the request")
		}
		st, err := agent.EnrolledState(s.tenant, "fleetsim", req, resp, s.clock.Now())
		return st, key, err
	case <-time.After(60 * time.Second):
		return nil, nil, errors.New("enrollment: no answer from the service within 60 s of real time")
	}
}

// osVersion is a plausible current OS version per platform.
func osVersion(p protocol.Platform) string {
	switch p {
	case protocol.PlatformIOS, protocol.PlatformIPadOS:
		return "17.4"
	case protocol.PlatformMacOS:
		return "14.4"
	case protocol.PlatformAndroid:
		return "14"
	}
	return "10.0.22631"
}

// enrollFleet runs the scenario's steps at the start (the authority must
// be set first) and schedules the rest, and the fleet's enrollments over
// the first hours.
func (s *sim) enrollFleet(ctx context.Context) error {
	// The fleet first: a step at the start may enroll the canary or change
	// the authority, and both need it.
	s.fleet = makeFleet(s.cfg.Devices, s.cfg.Seed, *s.cfg.Mix, *s.cfg.Userless, *s.cfg.Online,
		s.changeAt.Sub(s.start), time.Duration(s.sc.Duration))
	s.devices = make([]*simDevice, len(s.fleet))
	s.goAt = map[protocol.Platform]time.Time{}
	step := 0
	for ; step < len(s.sc.Steps) && s.sc.Steps[step].At == 0; step++ {
		if err := s.runStep(step); err != nil {
			return err
		}
	}
	for i := step; i < len(s.sc.Steps); i++ {
		s.timers.add(s.start.Add(time.Duration(s.sc.Steps[i].At)), evStep, i)
	}
	n := 0
	for i, spec := range s.fleet {
		if s.runs(i) {
			s.timers.add(s.start.Add(spec.enrollAt), evEnroll, i)
			n++
		}
	}
	s.keys = startKeyMaker(n)
	s.fanOutAt(s.start)
	s.timers.add(s.start, evSample, 0)
	return nil
}

// newDevice enrolls a device, connects it and starts its core.
func (s *sim) newDevice(idx int, spec deviceSpec, name string, canary bool) (*simDevice, error) {
	r := mrand.New(mrand.NewPCG(s.cfg.Seed, uint64(idx)+1))
	st, key, err := s.enroll(spec, name, r)
	if err != nil {
		return nil, err
	}
	if s.ext == nil {
		// In process, devices connect with their connect tokens: a key
		// kept would be live data the collector walks at every collection
		// (with the cryptography's cache of it, about ten objects a device).
		key = nil
	}
	d := &simDevice{idx: idx, spec: spec, key: key, canary: canary}
	d.core = agent.New(st, agent.Config{Rand: r, Facts: agent.Facts{OSVersion: osVersion(spec.platform), Passcode: true, Encrypted: true}})
	s.apply(s.main, d, d.core.Start(s.clock.Now()))
	if err := s.connect(d); err != nil {
		return nil, err
	}
	if len(spec.toggles) > 0 {
		s.timers.add(s.start.Add(spec.toggles[0]), evToggle, idx)
	}
	return d, nil
}

// connect opens the device's MQTT session, with its connect token. While
// a restart step has the broker down, the device tries again when it is
// back.
func (s *sim) connect(d *simDevice) error {
	if s.down {
		d.retry = true
		return nil
	}
	st := d.core.State()
	cert := &tls.Certificate{Certificate: [][]byte{st.Certificate}, PrivateKey: d.key}
	c, err := s.dial(st.Device, st.Device, st.ConnectToken, protocol.DownlinkTopic(s.tenant, st.Device), cert, func(p []byte) { s.receive(d.idx, p) }, func(c *mqttConn) { s.dropped(d.idx, c) })
	if err != nil {
		if s.ext == nil {
			return err
		}
		// A real service may refuse or drop a connection under load: the
		// device tries again, as the agent does.
		s.stats.connectErrors++
		s.main.reconnect(s, d)
		return nil
	}
	d.client, d.online = c, true
	s.stats.connects++
	if s.ext != nil {
		go func() {
			<-c.Done()
			if !errors.Is(c.Err(), errMQTTClosed) {
				s.inboxMu.Lock()
				s.inbox = append(s.inbox, inbound{dev: d.idx, lost: c})
				s.inboxMu.Unlock()
				s.work.signal()
			}
		}()
	}
	if _, ok := s.goAt[d.spec.platform]; ok && d.readyAt.IsZero() {
		d.readyAt = s.clock.Now()
	}
	s.apply(s.main, d, d.core.Connected(s.clock.Now()))
	return nil
}

func (s *sim) disconnect(d *simDevice) error {
	if !d.online {
		return nil
	}
	d.client.Close()
	// Wait until the broker has let the session go: until then it would
	// count a message to the device that will never arrive.
	id := d.core.State().Device
	for deadline := time.Now().Add(10 * time.Second); s.ext == nil && s.b.Connected(id); {
		if time.Now().After(deadline) {
			return fmt.Errorf("device %s: the broker still holds its session 10 s of real time after it disconnected", id)
		}
		time.Sleep(20 * time.Microsecond)
	}
	d.client, d.online = nil, false
	d.core.Disconnected(s.clock.Now())
	s.schedule(s.main, d)
	return nil
}

// lose handles a session that ended without the device closing it: a
// refused publish, or a broker that dropped it. The device is offline and
// tries to connect again after a reconnect backoff.
func (s *sim) lose(l *lane, d *simDevice, c *mqttConn) {
	if d.client != c || !d.online {
		return // an older session
	}
	l.st.sessionsLost++
	c.Close()
	d.client, d.online = nil, false
	d.core.Disconnected(s.clock.Now())
	s.schedule(l, d)
	l.reconnect(s, d)
}

// retryDelay is the wait before a device's next connection attempt, one
// to 30 seconds.
func (s *sim) retryDelay() time.Duration {
	return time.Second + time.Duration(s.retryRand.Int64N(int64(29*time.Second)))
}

// receive queues a message a device received; the loop handles it, in
// its next round.
func (s *sim) receive(dev int, payload []byte) {
	s.inboxMu.Lock()
	s.inbox = append(s.inbox, inbound{dev: dev, payload: payload})
	s.inboxMu.Unlock()
	s.work.signal()
}

// dropped queues the news that a device's session ended because the
// broker did not take a message the device had published. The message's
// count of work in flight passes to the news, which the loop handles.
func (s *sim) dropped(dev int, c *mqttConn) {
	s.inboxMu.Lock()
	s.inbox = append(s.inbox, inbound{dev: dev, lost: c, dropped: true})
	s.inboxMu.Unlock()
	s.work.signal()
}

// apply carries out what a core asked for, in lane l, and then brings
// the device's part of the fleet's counts up to date once.
func (s *sim) apply(l *lane, d *simDevice, out agent.Output) {
	s.carryOut(l, d, out)
	s.recount(l, d)
}

// carryOut is apply without the recount: what the core asks for in turn
// (a message sent, a lock done) is carried out too, and apply counts
// the device once all of it is.
func (s *sim) carryOut(l *lane, d *simDevice, out agent.Output) {
	now := s.clock.Now()
	for _, c := range out.Changes {
		if c.Kind == agent.Overwritten {
			l.st.overwritten++
		}
	}
	for _, env := range out.Send {
		if d.online {
			// Publish copies the payload into its packet: one buffer
			// serves every message the lane sends.
			payload, err := protocol.Append(l.encoded[:0], env)
			if err != nil {
				l.st.encodeErrors++
				continue
			}
			l.encoded = payload
			s.work.Add(1)
			if err := d.client.Publish(protocol.UplinkTopic(s.tenant, d.core.State().Device), payload); err != nil {
				s.work.Add(-1)
				s.lose(l, d, d.client)
				continue
			}
			if env.Kind() == protocol.KindCheckIn {
				l.st.checkInsSent++
			}
			s.carryOut(l, d, d.core.Published(env))
		}
	}
	for _, lock := range out.Locks {
		l.st.locks++
		s.carryOut(l, d, d.core.Finish(now, lock.ID, protocol.CommandDone, ""))
	}
	if out.Stop != "" {
		d.stopped = true
	}
	s.schedule(l, d)
}

// recount brings the device's part of the fleet's counts up to date, in
// lane l. Every call into a core that can change what its State returns
// is followed by apply, and so by recount (Disconnected changes only the
// core's session).
func (s *sim) recount(l *lane, d *simDevice) {
	if d.canary {
		return
	}
	if c := countDevice(d.core.State()); c != d.counts {
		l.st.fleet.change(d.counts, c)
		d.counts = c
	}
}

// schedule puts the device's next wake-up on the timer heap, through
// lane l.
func (s *sim) schedule(l *lane, d *simDevice) {
	next := d.core.NextWake()
	if next.IsZero() {
		return
	}
	if next.Before(s.clock.Now()) {
		next = s.clock.Now()
	}
	if q := s.cfg.Resolution; q > 0 {
		next = s.start.Add((next.Sub(s.start) + q - 1) / q * q)
	}
	if next.Equal(d.wakeAt) {
		return
	}
	d.wakeAt = next
	l.wake(s, d, next)
}

// handle processes one message a device received, in lane l.
func (s *sim) handle(l *lane, in inbound) {
	d := s.devices[in.dev]
	if in.lost != nil {
		if d != nil {
			s.lose(l, d, in.lost)
		}
		if in.dropped {
			s.work.Add(-1)
		}
		return
	}
	defer s.work.Add(-1)
	if d == nil || d.stopped {
		return
	}
	env, err := protocol.Decode(in.payload)
	if err != nil {
		l.st.decodeErrors++
		return
	}
	now := s.clock.Now()
	if resp, ok := env.Body.(*protocol.CheckInResponse); ok {
		if resp.Error == protocol.CodeNone {
			l.st.checkInsOK++
		} else {
			l.st.failed(resp.Error)
		}
	}
	s.apply(l, d, d.core.Receive(now, env))
	if d.migratedAt.IsZero() && s.to != 0 && d.core.State().Authority == s.to && !s.changeAt.IsZero() && !now.Before(s.changeAt) {
		d.migratedAt = now
	}
}

// settle handles everything in flight before time moves, in rounds: it
// waits until every message in flight has reached a device's inbox (the
// broker and the service are idle: the work in flight is the inbox), then
// handles the inbox in device order, which may send more. The rounds, and
// so the order of events, do not depend on how fast messages travel.
func (s *sim) settle(ctx context.Context) error {
	waited := time.Now()
	for {
		s.inboxMu.Lock()
		queued := len(s.inbox)
		var batch []inbound
		if s.work.n.Load() == int64(queued) {
			batch, s.inbox = s.inbox, nil
		}
		s.inboxMu.Unlock()
		if batch != nil {
			slices.SortStableFunc(batch, func(a, b inbound) int { return a.dev - b.dev })
			s.handleRound(batch)
			waited = time.Now()
			continue
		}
		if queued == 0 && s.work.n.Load() == 0 {
			return nil
		}
		if s.tick == nil {
			s.tick = time.NewTimer(time.Second)
		} else {
			s.tick.Reset(time.Second)
		}
		select {
		case <-s.work.wake:
		case <-ctx.Done():
			return ctx.Err()
		case <-s.tick.C:
			if time.Since(waited) > stallTimeout {
				return fmt.Errorf("simulation stalled at %s: %d messages in flight for %s of real time", s.clock.Now().Sub(s.start), s.work.n.Load(), stallTimeout)
			}
		}
	}
}

// drain handles the messages waiting in the inbox and reports whether
// there were any.
func (s *sim) drain() bool {
	s.inboxMu.Lock()
	batch := s.inbox
	s.inbox = nil
	s.inboxMu.Unlock()
	for _, in := range batch {
		s.handle(s.main, in)
	}
	return len(batch) > 0
}

// stallTimeout is how long, in real time, the loop waits for work in
// flight before it gives up: far longer than any message takes.
const stallTimeout = 2 * time.Minute

// loop runs the fleet: it handles messages until nothing is in flight,
// then moves the virtual clock to the next timer and runs it.
func (s *sim) loop(ctx context.Context) error {
	if s.ext != nil {
		return s.loopShared(ctx)
	}
	meter := progressMeter{last: time.Now()}
	for {
		if err := s.settle(ctx); err != nil {
			return err
		}
		at, ok := s.timers.peek()
		if !ok || at.After(s.end) {
			s.clock.set(s.end)
			if n := len(s.stats.timeline); n == 0 || s.stats.timeline[n-1].T != int64(s.end.Sub(s.start)/time.Second) {
				s.sample()
			}
			return nil
		}
		if at.After(s.clock.Now()) {
			s.clock.set(at)
		}
		// One timer at a time, settling in between, so that what it set
		// off is handled before the next timer of the same instant runs;
		// but the devices' own wake-ups of one instant together, as one
		// batch for the service: they do not affect each other.
		e, _ := s.timers.next()
		if err := s.fire(e); err != nil {
			return err
		}
		for e.kind == evDevice {
			n, ok := s.timers.peekEvent()
			if !ok || n.kind != evDevice || !n.at.Equal(e.at) {
				break
			}
			s.timers.next()
			if err := s.fire(n); err != nil {
				return err
			}
		}
		s.observe()
		s.progress(&meter)
	}
}

// progressMeter is what the progress line was computed from last.
type progressMeter struct {
	last     time.Time
	checkIns int
}

// progress calls Config.Progress, about once a second of real time.
func (s *sim) progress(m *progressMeter) {
	if s.cfg.Progress == nil || time.Since(m.last) < time.Second {
		return
	}
	s.cfg.Progress(Progress{Virtual: s.clock.Now().Sub(s.start), End: time.Duration(s.sc.Duration),
		ByAuthority: maps.Clone(s.stats.fleet.byAuthority), CheckInsPS: float64(s.stats.checkInsSent-m.checkIns) / time.Since(m.last).Seconds()})
	m.last, m.checkIns = time.Now(), s.stats.checkInsSent
}

// loopShared runs the fleet on the clock it shares with a separate
// service: messages are handled as they arrive, and each timer fires when
// the clock reaches it.
func (s *sim) loopShared(ctx context.Context) error {
	meter := progressMeter{last: time.Now()}
	wait := time.NewTimer(time.Hour)
	defer wait.Stop()
	for {
		s.drain()
		at, ok := s.timers.peek()
		done := !ok || at.After(s.end)
		if done {
			at = s.end
		}
		if d := s.clock.scaled.Until(at); d > 0 {
			wait.Reset(min(d, time.Second))
			select {
			case <-s.work.wake:
			case <-wait.C:
			case <-ctx.Done():
				return ctx.Err()
			}
		} else if done {
			s.sample()
			return nil
		} else {
			e, _ := s.timers.next()
			if err := s.fire(e); err != nil {
				return err
			}
			s.observe()
		}
		s.progress(&meter)
	}
}

// fire runs one timer.
func (s *sim) fire(e event) error {
	now := s.clock.Now()
	s.fired = (s.fired ^ uint64(e.at.UnixNano()) ^ uint64(e.kind)<<56 ^ uint64(e.arg)<<8) * 0x100000001b3
	switch e.kind {
	case evEnroll:
		d, err := s.newDevice(e.arg, s.fleet[e.arg], fmt.Sprintf("sim-%05d", e.arg), false)
		if err != nil {
			return fmt.Errorf("device %d: %w", e.arg, err)
		}
		s.devices[e.arg] = d
	case evDevice:
		d := s.devices[e.arg]
		if !d.wakeAt.Equal(e.at) {
			return nil // superseded
		}
		d.wakeAt = time.Time{}
		s.apply(s.main, d, d.core.Tick(now))
	case evToggle:
		d := s.devices[e.arg]
		goingOffline := d.toggle%2 == 0
		d.toggle++
		if d.toggle < len(d.spec.toggles) {
			s.timers.add(s.start.Add(d.spec.toggles[d.toggle]), evToggle, d.idx)
		}
		if d.stopped {
			return nil
		}
		switch {
		case goingOffline:
			return s.disconnect(d)
		case d.held == 0:
			return s.connect(d)
		}
	case evReturn:
		for _, d := range s.devices {
			if d != nil && d.held == e.arg+1 {
				d.held = 0
				if !d.online && !d.stopped && d.toggle%2 == 0 {
					if err := s.connect(d); err != nil {
						return err
					}
				}
			}
		}
	case evStep:
		return s.runStep(e.arg)
	case evRestarted:
		return s.restarted(e.arg)
	case evReconnect:
		d := s.devices[e.arg]
		if d.retry && !d.online && !d.stopped && d.held == 0 && d.toggle%2 == 0 {
			d.retry = false
			return s.connect(d)
		}
		d.retry = false
	case evFanOut:
		if !e.at.Equal(s.fanOutNext) {
			return nil // superseded by an earlier one
		}
		s.fanOutNext = time.Time{}
		if s.down {
			return nil // restarted runs it again
		}
		n, err := s.b.PublishDuePushes(s.cfg.PushRate)
		if err != nil {
			return err
		}
		s.stats.pushesPublished += n
		next := time.Minute
		if n > 0 {
			next = time.Second
		}
		s.fanOutAt(now.Add(next))
	case evSample:
		s.sample()
		s.timers.add(now.Add(s.cfg.Sample), evSample, 0)
	}
	return nil
}

// runStep carries out a scenario step through the service, as an admin
// would through the admin API.
func (s *sim) runStep(i int) error {
	st := s.sc.Steps[i]
	// Its own time, not the clock's: on a shared clock the timer fires a
	// moment late, and the figures count from when the step was due.
	now := s.start.Add(time.Duration(st.At))
	fail := func(err error) error {
		return fmt.Errorf("scenario step %d (%s at %s): %w", i+1, st.Action, st.At, err)
	}
	authority, _ := protocol.ParseAuthority(st.Authority)
	typ, _ := protocol.ParseProfileType(st.Type)
	admin := s.admin()
	switch st.Action {
	case ActionRestartBroker, ActionRestartService, ActionOffline:
	default:
		if s.svcDown {
			return fail(errors.New("the service is down for an earlier restart_service step then: move this step after the downtime"))
		}
	}
	switch st.Action {
	case ActionSetAuthority:
		m, _ := broker.ParseMode(st.Authority)
		if admin {
			if err := s.ctl.SetAuthority(m); err != nil {
				return fail(err)
			}
		}
		if now.Equal(s.changeAt) {
			tenant, err := s.ctl.Tenant()
			if err != nil {
				return fail(err)
			}
			added := map[protocol.Platform]bool{}
			for _, p := range protocol.Platforms {
				if _, ok := s.goAt[p]; !ok && !(p.NeedsAPNs() && !tenant.HasAPNs(s.to)) {
					s.goAt[p], added[p] = now, true
				}
			}
			s.markReady(func(p protocol.Platform) bool { return added[p] })
		}
		s.fanOutAt(now)
	case ActionUploadAPNs:
		if admin {
			if err := s.ctl.UploadAPNs(authority); err != nil {
				return fail(err)
			}
		}
		if authority == s.to && !s.changeAt.IsZero() && !now.Before(s.changeAt) {
			for _, p := range []protocol.Platform{protocol.PlatformIOS, protocol.PlatformIPadOS} {
				if _, ok := s.goAt[p]; !ok {
					s.goAt[p] = now
					s.markReady(func(q protocol.Platform) bool { return q == p })
				}
			}
		}
		s.fanOutAt(now)
	case ActionAddProfile:
		if admin {
			if err := s.ctl.PutProfile(authority, typ, st.Name, settingsOf(st.Settings)); err != nil {
				return fail(err)
			}
		}
	case ActionRemoveProfile:
		if admin {
			if err := s.ctl.RemoveProfile(authority, typ, st.Name); err != nil {
				return fail(err)
			}
		}
	case ActionRenameProfile:
		if !admin {
			break
		}
		var settings protocol.Settings
		ps, err := s.ctl.Profiles()
		if err != nil {
			return fail(err)
		}
		for _, p := range ps {
			if p.Authority == authority && p.Type == typ && p.Name == st.Name {
				settings = p.Settings
			}
		}
		if err := s.ctl.RemoveProfile(authority, typ, st.Name); err != nil {
			return fail(err)
		}
		if err := s.ctl.PutProfile(authority, typ, st.NewName, settings); err != nil {
			return fail(err)
		}
	case ActionSetLicense:
		if admin {
			if err := s.ctl.SetLicense(st.User, *st.Intune); err != nil {
				return fail(err)
			}
		}
	case ActionOffline:
		r := mrand.New(mrand.NewPCG(s.cfg.Seed, 0x6f66666c696e65+uint64(i)))
		for _, d := range s.devices {
			if d != nil && r.Float64() < st.Share && !d.stopped {
				d.held = i + 1
				if err := s.disconnect(d); err != nil {
					return fail(err)
				}
			}
		}
		s.timers.add(now.Add(time.Duration(st.For)), evReturn, i)
	case ActionEnrollCanary:
		if !admin {
			break
		}
		p := protocol.PlatformIOS
		if st.Platform != "" {
			p, _ = protocol.ParsePlatform(st.Platform)
		}
		user := st.User
		if user == "" {
			user = "canary@contoso.example"
		}
		d, err := s.newDevice(len(s.devices), deviceSpec{platform: p, user: user}, "canary", true)
		if err != nil {
			return fail(err)
		}
		s.canary = d.idx
		s.devices = append(s.devices, d)
	case ActionRestartBroker, ActionRestartService:
		if s.down {
			return fail(errors.New("the broker is still down for an earlier restart step: move this step after that one's downtime"))
		}
		if err := s.stop(st.Action == ActionRestartService); err != nil {
			return fail(err)
		}
		s.timers.add(now.Add(time.Duration(st.For)), evRestarted, i)
	case ActionRemoteLock:
		if !admin {
			break
		}
		id, err := s.ctl.RemoteLock(s.devices[s.canary].core.State().Device, "Lost device: call IT")
		if err != nil {
			return fail(err)
		}
		s.lockID = id
		s.fanOutAt(now)
	}
	return nil
}

// stop stops the broker (and with service, the service and its store)
// for a restart step: every online device loses its session and will try
// to connect again.
func (s *sim) stop(service bool) error {
	for _, d := range s.devices {
		if d != nil && d.online {
			if err := s.disconnect(d); err != nil {
				return err
			}
			d.retry = true
		}
	}
	s.b.Close()
	s.down = true
	if service {
		s.svcDown = true
		if err := s.store.Close(); err != nil {
			return err
		}
	}
	return nil
}

// restarted brings the broker (and the service, when the step stopped it)
// back, and schedules the devices' reconnection: each at a random point
// of its reconnect backoff, which grows with the downtime up to five
// minutes, as the agent's does.
func (s *sim) restarted(step int) error {
	st := s.sc.Steps[step]
	s.restarts++
	if st.Action == ActionRestartService {
		if err := s.openService(); err != nil {
			return err
		}
		if _, err := s.svc.RepushPending(); err != nil {
			return err
		}
	}
	if err := s.openBroker(); err != nil {
		return err
	}
	s.down, s.svcDown = false, false
	now := s.clock.Now()
	spread := min(max(time.Duration(st.For), time.Second), 5*time.Minute)
	r := mrand.New(mrand.NewPCG(s.cfg.Seed, 0x72657374617274+uint64(step)))
	for _, d := range s.devices {
		if d != nil && d.retry {
			s.timers.add(now.Add(time.Duration(r.Int64N(int64(spread)))), evReconnect, d.idx)
		}
	}
	s.fanOutAt(now)
	return nil
}

// markReady notes, for the devices of the platforms that can move from
// now on, whether they are online now.
func (s *sim) markReady(platform func(protocol.Platform) bool) {
	now := s.clock.Now()
	for _, d := range s.devices {
		if d == nil || !platform(d.spec.platform) {
			continue
		}
		d.onlineAtGo = d.online
		if d.online && d.readyAt.IsZero() {
			d.readyAt = now
		}
	}
}

// fanOutAt runs the service's push fan-out at t, unless it runs earlier.
// The fan-out runs every virtual second while pushes are due and every
// minute otherwise (push retries are minutes apart).
func (s *sim) fanOutAt(t time.Time) {
	if s.ext != nil {
		return // a separate service runs its own fan-out
	}
	if !s.fanOutNext.IsZero() && !t.Before(s.fanOutNext) {
		return
	}
	s.fanOutNext = t
	s.timers.add(t, evFanOut, 0)
}

// settingsOf turns a scenario's settings into the protocol's, in key order
// so that a run repeats.
func settingsOf(m map[string]string) protocol.Settings {
	var out protocol.Settings
	for _, k := range slices.Sorted(maps.Keys(m)) {
		out = append(out, protocol.Setting{Key: k, Value: m[k]})
	}
	return out
}
