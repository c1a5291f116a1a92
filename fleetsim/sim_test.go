package fleetsim

import (
	"bytes"
	"context"
	"reflect"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/mdm-authority/mdm/protocol"
)

// runSim runs a small fleet through a scenario and returns the finished
// simulation, for tests that look at single devices.
func runSim(t *testing.T, cfg Config) (*sim, *Report) {
	t.Helper()
	return runSimWith(t, cfg, nil)
}

// runSimWith is runSim with a change to the simulation before it starts.
func runSimWith(t *testing.T, cfg Config, setup func(*sim)) (*sim, *Report) {
	t.Helper()
	s, err := newSim(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if setup != nil {
		setup(s)
	}
	t.Cleanup(s.close)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := s.enrollFleet(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.loop(ctx); err != nil {
		t.Fatal(err)
	}
	return s, s.report()
}

// TestDefaultMigration runs the default scenario over 200 devices and
// checks the outcome DESIGN.md's rules imply.
func TestDefaultMigration(t *testing.T) {
	s, r := runSim(t, Config{Devices: 200, Seed: 3})
	change := virtualStart.Add(12 * time.Hour)
	apns := change.Add(2 * time.Hour)

	if r.Authority.From != "office365" || r.Authority.To != "intune" || r.Authority.ChangedAt != 12*3600 {
		t.Errorf("authority = %+v; want office365 to intune at 43200 s", r.Authority)
	}
	if r.Migration.Eligible == 0 || r.Migration.Migrated != r.Migration.Eligible || r.Migration.NotMigrated != 0 {
		t.Errorf("migrated %d of %d eligible (%d not); want all: every user-bound device comes online in this scenario",
			r.Migration.Migrated, r.Migration.Eligible, r.Migration.NotMigrated)
	}
	if r.Fleet.Userless == 0 || r.Migration.StrandedUserless != r.Fleet.Userless {
		t.Errorf("%d userless devices, %d stranded; want all of them stranded", r.Fleet.Userless, r.Migration.StrandedUserless)
	}
	if r.Migration.OnlineAtChange == 0 || r.Migration.OnlineLatency.Max > 10*60 {
		t.Errorf("devices online at the change (%d) took up to %.0f s; want minutes at most", r.Migration.OnlineAtChange, r.Migration.OnlineLatency.Max)
	}
	for _, d := range s.devices {
		if d.canary || d.spec.user == "" {
			continue
		}
		p := d.spec.platform
		if p.NeedsAPNs() && d.migratedAt.Before(apns) {
			t.Errorf("%s device %d migrated at %s, before the APNs upload at %s", p, d.idx, d.migratedAt.Sub(virtualStart), apns.Sub(virtualStart))
		}
		if d.spec.behaviour == AlwaysOn {
			could := change
			if p.NeedsAPNs() {
				could = apns
			}
			if late := d.migratedAt.Sub(could); late > 8*time.Hour {
				t.Errorf("always-on %s device %d migrated %s after it could; want at most about 8 h", p, d.idx, late)
			}
		}
	}
	if r.CheckIns.Failed["apns_certificate_missing"] == 0 {
		t.Error("no iOS check-in failed between the change and the APNs upload")
	}
	// One overwrite (Corp Mail), one redundant pair (the renamed baseline)
	// and one gap (compliance) per migrated device; nothing retained after
	// the deadline.
	if r.Profiles.Overwritten != r.Migration.Migrated {
		t.Errorf("%d overwrites; want one per migrated device (%d)", r.Profiles.Overwritten, r.Migration.Migrated)
	}
	if r.Profiles.RedundantDevicesMax == 0 || r.Profiles.RedundantDevicesMax > r.Migration.Migrated {
		t.Errorf("up to %d devices with redundant pairs; want some, at most the %d migrated", r.Profiles.RedundantDevicesMax, r.Migration.Migrated)
	}
	if r.Profiles.GapDevices == 0 || r.Profiles.GapDevices > r.Migration.Migrated {
		t.Errorf("up to %d devices with a gap; want some, at most the %d migrated", r.Profiles.GapDevices, r.Migration.Migrated)
	}
	if r.Profiles.RetainedAtEnd != 0 {
		t.Errorf("%d profiles retained after the deadline; want none", r.Profiles.RetainedAtEnd)
	}
	if last := r.Timeline[len(r.Timeline)-1]; last.RedundantDevices != 0 || last.GapDevices != 0 {
		t.Errorf("at the end: %d devices with redundant pairs, %d with gaps pending; want none", last.RedundantDevices, last.GapDevices)
	}
	if r.Validation.CanaryAuthority != "intune" || r.Validation.RemoteLock != "acknowledged" {
		t.Errorf("validation = %+v; want the canary on intune and its lock acknowledged", r.Validation)
	}
	if r.Pushes.Sent == 0 {
		t.Error("no pushes sent")
	}
}

// TestSameSeedSameFigures: two runs with one seed give the same fleet,
// migration and profile figures; another seed gives another fleet.
func TestSameSeedSameFigures(t *testing.T) {
	_, a := runSim(t, Config{Devices: 80, Seed: 11})
	_, b := runSim(t, Config{Devices: 80, Seed: 11})
	if !reflect.DeepEqual(a.Fleet, b.Fleet) || !reflect.DeepEqual(a.Migration, b.Migration) || !reflect.DeepEqual(a.Profiles, b.Profiles) ||
		!reflect.DeepEqual(a.CheckIns, b.CheckIns) || !reflect.DeepEqual(a.Timeline, b.Timeline) {
		t.Errorf("one seed, two outcomes:\n%+v\n%+v\n%+v\n%+v\n%+v\n%+v", a.Migration, b.Migration, a.CheckIns, b.CheckIns, a.Run, b.Run)
	}
	_, c := runSim(t, Config{Devices: 80, Seed: 12})
	if reflect.DeepEqual(a.Fleet, c.Fleet) && reflect.DeepEqual(a.Migration, c.Migration) {
		t.Error("seeds 11 and 12 gave the same fleet and figures")
	}
}

// TestScenarioSteps runs a custom timeline: coexistence with a license
// change, a renamed profile, part of the fleet offline.
func TestScenarioSteps(t *testing.T) {
	yes := true
	sc := &Scenario{Name: "coexistence", Duration: Duration(30 * time.Hour), Retention: Duration(7 * 24 * time.Hour), Steps: []Step{
		{At: 0, Action: ActionSetAuthority, Authority: "office365"},
		{At: 0, Action: ActionAddProfile, Authority: "office365", Type: "email", Name: "Mail"},
		{At: Duration(time.Hour), Action: ActionAddProfile, Authority: "intune", Type: "wifi", Name: "WiFi"},
		{At: Duration(6 * time.Hour), Action: ActionSetAuthority, Authority: "coexistence"},
		{At: Duration(7 * time.Hour), Action: ActionSetLicense, User: "user00001@contoso.example", Intune: &yes},
		{At: Duration(8 * time.Hour), Action: ActionRenameProfile, Authority: "office365", Type: "email", Name: "Mail", NewName: "Corp Mail"},
		{At: Duration(9 * time.Hour), Action: ActionOffline, Share: 0.5, For: Duration(3 * time.Hour)},
		{At: Duration(20 * time.Hour), Action: ActionEnrollCanary, Platform: "android", User: "user00001@contoso.example"},
		{At: Duration(20*time.Hour + time.Minute), Action: ActionRemoteLock},
	}}
	mix := Mix{Android: 1}
	s, r := runSim(t, Config{Devices: 30, Seed: 5, Scenario: sc, Mix: &mix, Online: &Online{}})

	for _, d := range s.devices {
		st := d.core.State()
		want := protocol.AuthorityOffice365
		if d.spec.user == "user00001@contoso.example" {
			want = protocol.AuthorityIntune
		}
		if st.Authority != want {
			t.Errorf("device %d (user %q) on %s; want %s", d.idx, d.spec.user, st.Authority, want)
		}
		if want == protocol.AuthorityOffice365 && d.spec.user != "" {
			if len(st.Profiles) != 1 || st.Profiles[0].Name != "Corp Mail" {
				t.Errorf("device %d profiles %+v; want the renamed Corp Mail only", d.idx, st.Profiles)
			}
		}
	}
	if r.Validation.CanaryAuthority != "intune" || r.Validation.RemoteLock != "acknowledged" {
		t.Errorf("validation = %+v; want the licensed canary on intune and its lock acknowledged", r.Validation)
	}
}

// TestStepsAtTheStart: a canary and an authority change at the very start
// (before the fleet enrolls) run; the timeline has one row per sample.
func TestStepsAtTheStart(t *testing.T) {
	sc := &Scenario{Name: "start", Duration: Duration(2 * time.Hour), Retention: Duration(time.Hour), Steps: []Step{
		{At: 0, Action: ActionSetAuthority, Authority: "office365"},
		{At: 0, Action: ActionUploadAPNs, Authority: "office365"},
		{At: 0, Action: ActionUploadAPNs, Authority: "intune"},
		{At: 0, Action: ActionSetAuthority, Authority: "intune"},
		{At: 0, Action: ActionEnrollCanary},
		{At: Duration(time.Minute), Action: ActionRemoteLock},
	}}
	_, r := runSim(t, Config{Devices: 10, Seed: 2, Scenario: sc})
	if r.Validation.CanaryAuthority != "intune" || r.Validation.RemoteLock != "acknowledged" {
		t.Errorf("validation = %+v; want the canary on intune, its lock acknowledged", r.Validation)
	}
	if n := len(r.Timeline); n != 9 || r.Timeline[n-1].T != 7200 {
		t.Errorf("%d timeline rows ending at %d s; want 9, the last at 7200 s", n, r.Timeline[len(r.Timeline)-1].T)
	}
}

// TestRestartSteps restarts the service with pushes for the change still
// queued, then the broker: the devices reconnect, the queued pushes go out
// after the restart, and the whole fleet still moves; a canary enrolled
// afterwards gets its lock.
func TestRestartSteps(t *testing.T) {
	change := 6 * time.Hour
	sc := &Scenario{Name: "restarts", Duration: Duration(16 * time.Hour), Retention: Duration(time.Hour), Steps: []Step{
		{At: 0, Action: ActionSetAuthority, Authority: "office365"},
		{At: 0, Action: ActionAddProfile, Authority: "office365", Type: "email", Name: "Mail"},
		{At: Duration(change), Action: ActionSetAuthority, Authority: "intune"},
		{At: Duration(change), Action: ActionRestartService, For: Duration(10 * time.Minute)},
		{At: Duration(10 * time.Hour), Action: ActionRestartBroker},
		{At: Duration(11 * time.Hour), Action: ActionEnrollCanary, Platform: "android"},
		{At: Duration(11*time.Hour + time.Minute), Action: ActionRemoteLock},
	}}
	mix := Mix{Android: 1, Windows: 1}
	none := 0.0
	s, r := runSim(t, Config{Devices: 40, Seed: 9, Scenario: sc, Mix: &mix, Online: &Online{}, Userless: &none})
	if s.restarts != 2 {
		t.Errorf("%d restarts; want 2", s.restarts)
	}
	back := virtualStart.Add(change + 10*time.Minute)
	for _, d := range s.devices {
		if d.canary {
			continue
		}
		if !d.online {
			t.Errorf("device %d offline at the end; every device reconnects after the restarts", d.idx)
		}
		switch {
		case d.migratedAt.IsZero():
			t.Errorf("device %d never moved to intune", d.idx)
		case d.migratedAt.Before(back):
			t.Errorf("device %d moved at %s, while the service was down", d.idx, d.migratedAt.Sub(virtualStart))
		case d.migratedAt.After(back.Add(15 * time.Minute)):
			t.Errorf("device %d moved at %s, later than minutes after the restart at %s", d.idx, d.migratedAt.Sub(virtualStart), back.Sub(virtualStart))
		}
	}
	if r.Migration.Migrated != 40 || r.Pushes.Sent < 40 {
		t.Errorf("migrated %d, pushes %d; want 40 and at least one push each", r.Migration.Migrated, r.Pushes.Sent)
	}
	if r.Validation.CanaryAuthority != "intune" || r.Validation.RemoteLock != "acknowledged" {
		t.Errorf("validation = %+v; want the canary on intune, its lock acknowledged", r.Validation)
	}
}

// TestBurstProfile checks that Config.BurstProfile gets a CPU profile of
// the burst, and that the run's figures come as without it.
func TestBurstProfile(t *testing.T) {
	var prof bytes.Buffer
	r, err := Run(context.Background(), Config{Devices: 20, Seed: 4, BurstProfile: &prof})
	if err != nil && strings.Contains(err.Error(), "profiling already in use") {
		t.Skip("another CPU profile runs (go test -cpuprofile)")
	}
	if err != nil {
		t.Fatal(err)
	}
	if prof.Len() < 2 || prof.Bytes()[0] != 0x1f || prof.Bytes()[1] != 0x8b {
		t.Fatalf("burst profile: %d bytes, want a gzipped pprof profile", prof.Len())
	}
	if r.Run.BurstCheckInsPerSec <= 0 || r.Migration.Migrated == 0 {
		t.Fatalf("burst %g check-ins/s, %d migrated: want a burst and a migration", r.Run.BurstCheckInsPerSec, r.Migration.Migrated)
	}
}

// burstSink keeps TestBurstSpent's allocation from being optimised away.
var burstSink []byte

// TestBurstSpent checks that the burst's window takes the real time, the
// process's CPU time, the garbage collections that ended in it, what was
// allocated in it and the heap left live before it.
func TestBurstSpent(t *testing.T) {
	start := time.Unix(0, 0)
	w := rateWindow{from: start, to: start.Add(time.Minute)}
	defer debug.SetGCPercent(debug.SetGCPercent(100)) // a heap goal to measure, whatever GOGC says
	runtime.GC()
	w.observe(start, 10)
	if a, l, h := w.heap(); a != 0 || l != 0 || h != 0 {
		t.Errorf("heap of a window not yet ended = %d, %d, %d; want nothing", a, l, h)
	}
	burstSink = make([]byte, 64<<20) // live at the end, not before
	runtime.GC()
	runtime.GC()
	for cpu, ok := processCPU(); ok; {
		if now, _ := processCPU(); now-cpu >= 20*time.Millisecond {
			break
		}
	}
	w.observe(start.Add(time.Minute), 30)
	wall, cpu, gcs, ok := w.spent()
	if allocated, live, headroom := w.heap(); allocated < 64<<20 || live == 0 || live >= 64<<20 || headroom == 0 || headroom >= w.runFrom.goal {
		t.Errorf("heap in the window: %d bytes allocated, %d live before, %d of headroom; want at least the 64 MiB allocated in it, some live before it but less than that, and some headroom but less than the heap goal", allocated, live, headroom)
	}
	burstSink = nil
	if gcs < 2 {
		t.Errorf("%d collections in the window, want at least the 2 it ran", gcs)
	}
	if wall <= 0 {
		t.Errorf("wall time %s, want more than 0", wall)
	}
	if _, reported := processCPU(); ok != reported || (ok && cpu < 20*time.Millisecond) {
		t.Errorf("CPU time %s (reported %t), want at least the 20ms spent in the window", cpu, ok)
	}
	r := RunReport{BurstWallSeconds: wall.Seconds(), BurstGCs: 1, BurstCPUSeconds: new(1.5)}
	if got := burstSpent(&r); !strings.HasSuffix(got, ", 1.50 CPU s, 1 collection") {
		t.Errorf("burstSpent = %q", got)
	}
	if got := burstSpent(&RunReport{}); got != "" {
		t.Errorf("burstSpent without a burst = %q, want nothing", got)
	}
}
