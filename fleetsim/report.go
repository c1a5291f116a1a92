package fleetsim

import (
	"encoding/csv"
	"fmt"
	"io"
	"slices"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/mdm-authority/mdm/agent"
	"github.com/mdm-authority/mdm/protocol"
)

// stats are the simulator's running counters.
type stats struct {
	checkInsSent    int
	checkInsOK      int
	failedByCode    map[protocol.ErrorCode]int
	overwritten     int
	locks           int
	pushesPublished int
	encodeErrors    int
	decodeErrors    int
	connects        int // device sessions opened
	connectErrors   int // connections the service refused or that failed
	sessionsLost    int // sessions that ended without the device closing them
	redundantMax    int
	gapMax          int
	timeline        []Sample
	fleet           fleetCounts // the loop's: the fleet now; a lane's: the changes it made
}

func (st *stats) failed(code protocol.ErrorCode) {
	if st.failedByCode == nil {
		st.failedByCode = map[protocol.ErrorCode]int{}
	}
	st.failedByCode[code]++
}

// add adds the message counters of o, which a lane kept (see lane), to
// st.
func (st *stats) add(o *stats) {
	st.checkInsSent += o.checkInsSent
	st.checkInsOK += o.checkInsOK
	for code, n := range o.failedByCode {
		if st.failedByCode == nil {
			st.failedByCode = map[protocol.ErrorCode]int{}
		}
		st.failedByCode[code] += n
	}
	st.overwritten += o.overwritten
	st.locks += o.locks
	st.encodeErrors += o.encodeErrors
	st.decodeErrors += o.decodeErrors
	st.sessionsLost += o.sessionsLost
	st.fleet.add(&o.fleet)
}

// fleetCounts is what the timeline counts over the fleet's devices
// (the canary apart): kept up to date as each device's state changes
// (sim.recount), so that a sample need not visit the devices.
type fleetCounts struct {
	byAuthority map[protocol.Authority]int // devices by their agents' authority
	retained    int                        // old-authority profiles kept
	redundant   int                        // devices with a redundant pair
	gap         int                        // devices facing a protection gap
}

// add adds o's counts (a lane's changes) to f.
func (f *fleetCounts) add(o *fleetCounts) {
	for a, n := range o.byAuthority {
		f.count(a, n)
	}
	f.retained += o.retained
	f.redundant += o.redundant
	f.gap += o.gap
}

// count adds n devices (n may be negative) on authority a.
func (f *fleetCounts) count(a protocol.Authority, n int) {
	if f.byAuthority == nil {
		f.byAuthority = map[protocol.Authority]int{}
	}
	if f.byAuthority[a] += n; f.byAuthority[a] == 0 {
		delete(f.byAuthority, a)
	}
}

// change moves one device's counts from was to now.
func (f *fleetCounts) change(was, now deviceCounts) {
	if was.counted {
		f.count(was.authority, -1)
		f.retained -= was.retained
		f.redundant -= b2i(was.redundant)
		f.gap -= b2i(was.gap)
	}
	f.count(now.authority, 1)
	f.retained += now.retained
	f.redundant += b2i(now.redundant)
	f.gap += b2i(now.gap)
}

// b2i is 1 for true and 0 for false.
func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// deviceCounts is what one device adds to fleetCounts.
type deviceCounts struct {
	counted   bool // in the fleet's counts
	authority protocol.Authority
	retained  int
	redundant bool
	gap       bool
}

// countDevice returns what the device with state st adds to the fleet's
// counts.
func countDevice(st *agent.State) deviceCounts {
	c := deviceCounts{counted: true, authority: st.Authority}
	for i := range st.Profiles {
		if st.Profiles[i].Retained() {
			c.retained++
		}
	}
	if c.retained > 0 { // neither a redundant pair nor a gap without a retained profile
		c.redundant = len(agent.Redundant(st.Profiles, st.Authority)) > 0
		c.gap = len(agent.Gaps(st.Profiles, st.Authority)) > 0
	}
	return c
}

// Sample is one row of the timeline: the fleet at a virtual time.
type Sample struct {
	T                int64          `json:"t_s"` // virtual seconds since the start
	ByAuthority      map[string]int `json:"by_authority"`
	RetainedProfiles int            `json:"retained_profiles"`
	RedundantDevices int            `json:"redundant_devices"`
	GapDevices       int            `json:"gap_devices"`
	CheckInsOK       int            `json:"checkins_ok"`     // in the interval
	Failed           map[string]int `json:"checkins_failed"` // in the interval, by error code
	// The cumulative counts at the sample, to take the next interval's
	// from.
	okTotal     int
	failedTotal map[protocol.ErrorCode]int
}

// sample adds a timeline row for now, from the fleet's counts.
func (s *sim) sample() {
	now := s.clock.Now()
	row := Sample{T: int64(now.Sub(s.start) / time.Second), ByAuthority: map[string]int{}, Failed: map[string]int{}}
	for a, n := range s.stats.fleet.byAuthority {
		row.ByAuthority[a.String()] += n
	}
	row.RetainedProfiles = s.stats.fleet.retained
	row.RedundantDevices = s.stats.fleet.redundant
	row.GapDevices = s.stats.fleet.gap
	okBefore := 0
	var failedBefore map[protocol.ErrorCode]int
	if n := len(s.stats.timeline); n > 0 {
		okBefore, failedBefore = s.stats.timeline[n-1].okTotal, s.stats.timeline[n-1].failedTotal
	}
	row.CheckInsOK = s.stats.checkInsOK - okBefore
	row.failedTotal = map[protocol.ErrorCode]int{}
	for code, n := range s.stats.failedByCode {
		row.failedTotal[code] = n
		if d := n - failedBefore[code]; d > 0 {
			row.Failed[code.String()] = d
		}
	}
	row.okTotal = s.stats.checkInsOK
	s.stats.redundantMax = max(s.stats.redundantMax, row.RedundantDevices)
	s.stats.gapMax = max(s.stats.gapMax, row.GapDevices)
	s.stats.timeline = append(s.stats.timeline, row)
	if s.sampled != nil {
		s.sampled()
	}
}

// Report is what a run found; its JSON keys are documented in the README.
type Report struct {
	Seed       uint64           `json:"seed"`
	Devices    int              `json:"devices"`
	Scenario   string           `json:"scenario"`
	Fleet      FleetReport      `json:"fleet"`
	Authority  AuthorityReport  `json:"authority"`
	Migration  MigrationReport  `json:"migration"`
	CheckIns   CheckInReport    `json:"checkins"`
	Pushes     PushReport       `json:"pushes"`
	Profiles   ProfileReport    `json:"profiles"`
	Validation ValidationReport `json:"validation"`
	Run        RunReport        `json:"run"`
	// Final counts the fleet's devices by the authority their agents
	// report at the end.
	Final    map[string]int `json:"final_by_authority"`
	Timeline []Sample       `json:"-"`
}

// FleetReport describes the simulated fleet.
type FleetReport struct {
	ByPlatform  map[string]int `json:"by_platform"`
	Userless    int            `json:"userless"`
	ByBehaviour map[string]int `json:"by_behaviour"`
}

// AuthorityReport is the migration the scenario makes.
type AuthorityReport struct {
	From      string `json:"from"`
	To        string `json:"to"`
	ChangedAt int64  `json:"changed_at_s"`
}

// MigrationReport counts who moved, and how fast.
type MigrationReport struct {
	Eligible         int       `json:"eligible"`
	Migrated         int       `json:"migrated"`
	StrandedUserless int       `json:"stranded_userless"`
	NotMigrated      int       `json:"not_migrated"`
	Latency          Latencies `json:"latency_s"`
	OnlineLatency    Latencies `json:"online_latency_s"`
	// ReadyLatency is measured from when each device was first online
	// after it could migrate: the "up to about 8 hours" of a device that
	// missed the push.
	ReadyLatency      Latencies `json:"ready_latency_s"`
	OnlineAtChange    int       `json:"online_at_change"`
	APNsUploadedAtSec int64     `json:"apns_uploaded_at_s"`
}

// Latencies are percentiles of virtual seconds.
type Latencies struct {
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

// CheckInReport counts check-ins by result.
type CheckInReport struct {
	OK     int            `json:"ok"`
	Failed map[string]int `json:"failed"`
}

// PushReport counts the service's pushes.
type PushReport struct {
	Sent    uint64 `json:"sent"`
	Retried uint64 `json:"retried"`
}

// ProfileReport counts what happened to profiles on the devices.
type ProfileReport struct {
	Overwritten         int `json:"overwritten"`
	RedundantDevicesMax int `json:"redundant_devices_max"`
	GapDevices          int `json:"gap_devices"`
	RetainedAtEnd       int `json:"retained_at_end"`
}

// ValidationReport is the post-migration check of DESIGN.md: a new device
// shows under the new authority, and a remote lock from it is
// acknowledged.
type ValidationReport struct {
	CanaryAuthority string `json:"canary_authority"`
	RemoteLock      string `json:"remote_lock"`
}

// RunReport is about the run itself, in real time.
type RunReport struct {
	WallSeconds    float64 `json:"wall_s"`
	CheckInsPerSec float64 `json:"checkins_per_s"`
	PeakRSSBytes   uint64  `json:"peak_rss_bytes"`
	VirtualSeconds int64   `json:"virtual_s"`
	// BurstCheckInsPerSec is the check-ins sent per real second in the
	// ten virtual minutes after the authority change, when the online
	// fleet moves; ConnectsPerSec the device sessions opened per real
	// second while the fleet enrolls (its first four virtual hours), and
	// Connects all of them, reconnections included.
	BurstCheckInsPerSec float64 `json:"burst_checkins_per_s"`
	// BurstWallSeconds is the real time the burst took; BurstCPUSeconds
	// the CPU time the process used in it, user and system (absent where
	// the system does not report it); BurstGCs the garbage collections
	// that ended in it. A collection in the burst slows it, and whether
	// one falls in it varies from run to run: these tell such a run from
	// a slower machine.
	BurstWallSeconds float64  `json:"burst_wall_s"`
	BurstCPUSeconds  *float64 `json:"burst_cpu_s,omitempty"`
	BurstGCs         uint64   `json:"burst_gcs"`
	// BurstAllocBytes is what the process allocated on the heap in the
	// burst; BurstHeapLiveBytes the heap the last collection before the
	// burst left live; BurstGCHeadroomBytes the collector's heap goal at
	// the burst's start less the heap then in use: about what the burst
	// could allocate before a collection ends (one starts somewhat
	// before). A burst that allocates more than its headroom holds a
	// collection. With Go's usual collector (GOGC=100) the goal is the
	// live heap plus as much again and the goroutine stacks, so the
	// headroom depends on when the last collection ended.
	BurstAllocBytes      uint64  `json:"burst_alloc_bytes"`
	BurstHeapLiveBytes   uint64  `json:"burst_heap_live_bytes"`
	BurstGCHeadroomBytes uint64  `json:"burst_gc_headroom_bytes"`
	ConnectsPerSec       float64 `json:"connects_per_s"`
	Connects             int     `json:"connects"`
	// Restarts counts the restart steps carried out.
	Restarts int `json:"restarts"`
	// ConnectErrors counts device connections that failed or were
	// refused; SessionsLost, sessions that ended without the device
	// closing them. Both are retried, as the agent does.
	ConnectErrors int `json:"connect_errors"`
	SessionsLost  int `json:"sessions_lost"`
	// Service is the separate service's MQTT address, and Shard this
	// simulator's share of the fleet ("0/4"); both empty in process.
	Service string `json:"service,omitempty"`
	Shard   string `json:"shard,omitempty"`
	// Host is the machine the simulator ran on, and its collector
	// settings; in external mode the service's machine may be another.
	Host HostReport `json:"host"`
}

// report builds the report at the end of the run.
func (s *sim) report() *Report {
	wall := time.Since(s.realStart).Seconds()
	r := &Report{
		Seed: s.cfg.Seed, Devices: s.cfg.Devices, Scenario: s.sc.Name,
		Fleet:     FleetReport{ByPlatform: map[string]int{}, ByBehaviour: map[string]int{}},
		Authority: AuthorityReport{From: s.fromMode, To: s.toMode},
		CheckIns:  CheckInReport{OK: s.stats.checkInsOK, Failed: map[string]int{}},
		Profiles: ProfileReport{Overwritten: s.stats.overwritten, RedundantDevicesMax: s.stats.redundantMax,
			GapDevices: s.stats.gapMax},
		Timeline: s.stats.timeline,
		Final:    map[string]int{},
		Run: RunReport{WallSeconds: wall, PeakRSSBytes: runtimeRSS(),
			CheckInsPerSec: float64(s.stats.checkInsSent) / wall, VirtualSeconds: int64(s.end.Sub(s.start) / time.Second),
			BurstCheckInsPerSec: s.burst.rate(), ConnectsPerSec: s.enrolling.rate(), Connects: s.stats.connects,
			Restarts: s.restarts, ConnectErrors: s.stats.connectErrors, SessionsLost: s.stats.sessionsLost,
			Host: host()},
	}
	burstWall, burstCPU, gcs, cpuOK := s.burst.spent()
	r.Run.BurstWallSeconds, r.Run.BurstGCs = burstWall.Seconds(), gcs
	r.Run.BurstAllocBytes, r.Run.BurstHeapLiveBytes, r.Run.BurstGCHeadroomBytes = s.burst.heap()
	if cpuOK {
		r.Run.BurstCPUSeconds = new(burstCPU.Seconds())
	}
	if s.ext != nil {
		r.Run.Service, r.Run.Shard = s.ext.MQTT, fmt.Sprintf("%d/%d", s.ext.Shard, s.ext.Shards)
	}
	for _, p := range protocol.Platforms {
		r.Fleet.ByPlatform[p.String()] = 0
	}
	if !s.changeAt.IsZero() {
		r.Authority.ChangedAt = int64(s.changeAt.Sub(s.start) / time.Second)
	}
	if at, ok := s.goAt[protocol.PlatformIOS]; ok {
		r.Migration.APNsUploadedAtSec = int64(at.Sub(s.start) / time.Second)
	}
	var all, online, ready []float64
	for _, d := range s.devices {
		if d == nil {
			continue
		}
		st := d.core.State()
		if d.canary {
			r.Validation.CanaryAuthority = st.Authority.String()
			continue
		}
		r.Fleet.ByPlatform[d.spec.platform.String()]++
		r.Fleet.ByBehaviour[d.spec.behaviour.String()]++
		r.Final[st.Authority.String()]++
		for i := range st.Profiles {
			if st.Profiles[i].Retained() {
				r.Profiles.RetainedAtEnd++
			}
		}
		if d.spec.user == "" {
			r.Fleet.Userless++
			if s.to != 0 && st.Authority != s.to {
				r.Migration.StrandedUserless++
			}
			continue
		}
		if s.to == 0 {
			continue
		}
		r.Migration.Eligible++
		if d.onlineAtGo {
			r.Migration.OnlineAtChange++
		}
		if d.migratedAt.IsZero() {
			r.Migration.NotMigrated++
			continue
		}
		r.Migration.Migrated++
		// From when it could first move: the change (the APNs upload), or
		// its enrollment when that was later.
		from := s.goAt[d.spec.platform]
		if e := st.EnrolledAt; e.After(from) {
			from = e
		}
		lat := max(d.migratedAt.Sub(from).Seconds(), 0)
		all = append(all, lat)
		if d.onlineAtGo {
			online = append(online, lat)
		}
		if !d.readyAt.IsZero() {
			ready = append(ready, max(d.migratedAt.Sub(d.readyAt).Seconds(), 0))
		}
	}
	r.Migration.Latency = percentiles(all)
	r.Migration.OnlineLatency = percentiles(online)
	r.Migration.ReadyLatency = percentiles(ready)
	for code, n := range s.stats.failedByCode {
		r.CheckIns.Failed[code.String()] = n
	}
	if c, err := s.ctl.Counters(); err == nil {
		r.Pushes = PushReport{Sent: c.PushesSent, Retried: c.PushRetries}
	}
	r.Validation.RemoteLock = "not sent"
	if s.lockID != "" && s.canary >= 0 {
		r.Validation.RemoteLock = "unknown"
		if state, err := s.ctl.CommandState(s.devices[s.canary].core.State().Device, s.lockID); err == nil {
			r.Validation.RemoteLock = state
		}
	}
	if r.Validation.CanaryAuthority == "" {
		r.Validation.CanaryAuthority = "no canary"
	}
	return r
}

// percentiles returns the nearest-rank percentiles of xs.
func percentiles(xs []float64) Latencies {
	if len(xs) == 0 {
		return Latencies{}
	}
	slices.Sort(xs)
	rank := func(p float64) float64 {
		i := int(p*float64(len(xs))+0.999999) - 1
		return xs[min(max(i, 0), len(xs)-1)]
	}
	return Latencies{P50: rank(0.50), P90: rank(0.90), P99: rank(0.99), Max: xs[len(xs)-1]}
}

// WriteSummary writes the report as a table a person reads.
func (r *Report) WriteSummary(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	p := func(format string, args ...any) { fmt.Fprintf(tw, format, args...) }
	p("scenario\t%s (seed %d)\n", r.Scenario, r.Seed)
	p("fleet\t%d devices: ios %d, ipados %d, macos %d, android %d, windows %d; %d userless\n", r.Devices,
		r.Fleet.ByPlatform["ios"], r.Fleet.ByPlatform["ipados"], r.Fleet.ByPlatform["macos"], r.Fleet.ByPlatform["android"], r.Fleet.ByPlatform["windows"], r.Fleet.Userless)
	p("online\t%d always on, %d intermittent, %d powered off for days\n", r.Fleet.ByBehaviour["always_on"], r.Fleet.ByBehaviour["intermittent"], r.Fleet.ByBehaviour["powered_off"])
	p("authority\t%s -> %s at %s\n", r.Authority.From, r.Authority.To, secs(r.Authority.ChangedAt))
	if r.Authority.To == "coexistence" {
		p("migrated\tnot measured: in coexistence each user's license decides the authority (see the final count below)\n")
	} else {
		p("migrated\t%d of %d eligible (%d not); %d userless stranded on %s\n", r.Migration.Migrated, r.Migration.Eligible, r.Migration.NotMigrated, r.Migration.StrandedUserless, r.Authority.From)
	}
	p("latency\tp50 %s, p90 %s, p99 %s, max %s (from when each could move; iOS/iPadOS from the APNs upload)\n",
		secsF(r.Migration.Latency.P50), secsF(r.Migration.Latency.P90), secsF(r.Migration.Latency.P99), secsF(r.Migration.Latency.Max))
	p("  online then\tp50 %s, p99 %s, max %s (%d devices)\n", secsF(r.Migration.OnlineLatency.P50), secsF(r.Migration.OnlineLatency.P99), secsF(r.Migration.OnlineLatency.Max), r.Migration.OnlineAtChange)
	p("  once online\tp50 %s, p99 %s, max %s (from each device's first time online after it could move)\n", secsF(r.Migration.ReadyLatency.P50), secsF(r.Migration.ReadyLatency.P99), secsF(r.Migration.ReadyLatency.Max))
	failed := ""
	for _, code := range slices.Sorted(mapsKeys(r.CheckIns.Failed)) {
		failed += fmt.Sprintf(", %s %d", code, r.CheckIns.Failed[code])
	}
	p("check-ins\t%d ok%s\n", r.CheckIns.OK, failed)
	p("pushes\t%d sent, %d retries\n", r.Pushes.Sent, r.Pushes.Retried)
	p("profiles\t%d overwritten; up to %d devices with redundant pairs; up to %d with a protection gap; %d retained at the end\n",
		r.Profiles.Overwritten, r.Profiles.RedundantDevicesMax, r.Profiles.GapDevices, r.Profiles.RetainedAtEnd)
	p("validation\tcanary on %s; remote lock %s\n", r.Validation.CanaryAuthority, r.Validation.RemoteLock)
	p("final\toffice365 %d, intune %d\n", r.Final["office365"], r.Final["intune"])
	p("run\t%.1f s wall for %s virtual, %.0f check-ins/s (%.0f in the migration burst%s), %.0f connects/s while enrolling, peak RSS %d MiB\n",
		r.Run.WallSeconds, secs(r.Run.VirtualSeconds), r.Run.CheckInsPerSec, r.Run.BurstCheckInsPerSec, burstSpent(&r.Run),
		r.Run.ConnectsPerSec, r.Run.PeakRSSBytes>>20)
	p("host\t%s\n", r.Run.Host)
	return tw.Flush()
}

func mapsKeys(m map[string]int) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func secs(s int64) string { return Duration(time.Duration(s) * time.Second).String() }

func secsF(s float64) string {
	return Duration(time.Duration(s * float64(time.Second)).Round(time.Second)).String()
}

// WriteTimeline writes the timeline as CSV: one row per sample, with the
// devices on each authority, retained profiles, devices with redundant
// profiles or a protection gap, and the check-ins of the interval by
// result.
func (r *Report) WriteTimeline(w io.Writer) error {
	codes := map[string]bool{}
	for _, row := range r.Timeline {
		for c := range row.Failed {
			codes[c] = true
		}
	}
	failed := slices.Sorted(func(yield func(string) bool) {
		for c := range codes {
			if !yield(c) {
				return
			}
		}
	})
	cw := csv.NewWriter(w)
	head := []string{"t_s", "t", "office365", "intune", "retained_profiles", "redundant_devices", "gap_devices", "checkins_ok"}
	for _, c := range failed {
		head = append(head, "failed_"+c)
	}
	cw.Write(head)
	for _, row := range r.Timeline {
		rec := []string{strconv.FormatInt(row.T, 10), secs(row.T), strconv.Itoa(row.ByAuthority["office365"]), strconv.Itoa(row.ByAuthority["intune"]),
			strconv.Itoa(row.RetainedProfiles), strconv.Itoa(row.RedundantDevices), strconv.Itoa(row.GapDevices), strconv.Itoa(row.CheckInsOK)}
		for _, c := range failed {
			rec = append(rec, strconv.Itoa(row.Failed[c]))
		}
		cw.Write(rec)
	}
	cw.Flush()
	return cw.Error()
}

// burstSpent says what the burst cost: ", 3.21 s, 5.14 CPU s, 1 collection".
func burstSpent(r *RunReport) string {
	if r.BurstWallSeconds == 0 {
		return ""
	}
	out := fmt.Sprintf(", %.2f s", r.BurstWallSeconds)
	if r.BurstCPUSeconds != nil {
		out += fmt.Sprintf(", %.2f CPU s", *r.BurstCPUSeconds)
	}
	if r.BurstGCs == 1 {
		return out + ", 1 collection"
	}
	return out + fmt.Sprintf(", %d collections", r.BurstGCs)
}
