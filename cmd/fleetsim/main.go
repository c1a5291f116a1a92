// Command fleetsim runs a fleet of real device agents through an MDM
// authority migration against the management service, in one process on
// a virtual clock, and reports how the fleet moved.
//
//	fleetsim                       # the default migration: 2,000 devices, office365 to intune
//	fleetsim --devices 500 --seed 7 --report run.json --timeline run.csv
//	fleetsim --scenario my.json    # a custom timeline (see the README)
//
// Against a separately started service (mdm-broker serve --time-scale N
// --mqtt-tcp ADDR), over the network on the service's scaled clock:
//
//	fleetsim --mqtt tcp://127.0.0.1:1883 --admin http://127.0.0.1:8440 --admin-token DATA/admin.token
package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	flag "github.com/spf13/pflag"

	"github.com/mdm-authority/mdm/broker"
	"github.com/mdm-authority/mdm/fleetsim"
	"github.com/mdm-authority/mdm/protocol"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run is the command; it returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("fleetsim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	devices := fs.Int("devices", 2000, "devices in the fleet")
	seed := fs.Uint64("seed", 1, "seed: the same seed gives the same fleet, schedule and figures")
	mix := fs.String("mix", "ios=30,ipados=10,macos=5,android=30,windows=25", "platform mix, as weights")
	userless := fs.Float64("userless", 0.05, "share of devices without a user (DEP/bulk): they are not migrated")
	intermittent := fs.Float64("intermittent", 0.15, "share of devices that come and go (online 1-4 h, offline 2-12 h)")
	poweredOff := fs.Float64("powered-off", 0.05, "share of devices powered off from shortly before the change for 1-4 days")
	apnsDelay := fs.Duration("apns-delay", 2*time.Hour, "virtual time from the authority change to the APNs upload for the new authority (default scenario)")
	scenario := fs.String("scenario", "", "scenario file (JSON; see the README); default the built-in migration")
	pushRate := fs.Int("push-rate", 500, "most pushes the service sends per virtual second")
	report := fs.String("report", "", "write the report as JSON to this file")
	timeline := fs.String("timeline", "", "write the timeline as CSV to this file")
	plotFile := fs.String("plot", "", "draw the timeline as a PNG chart in this file")
	quiet := fs.BoolP("quiet", "q", false, "no progress line")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the run to this file (go tool pprof FILE)")
	memLimit := fs.String("memory-limit", "", "let the run use about this much memory (such as 8GiB or 500MiB): the garbage collector then runs when the heap has grown to five times what is live, or when the process nears the limit, instead of at twice; faster when the limit is well above twice the live memory (see the README's Scale section). Overrides GOGC and GOMEMLIMIT. Default: Go's usual collector")
	wire := fs.Bool("wire", false, "in process, devices write every packet on their connection for the broker to read, as over a network; by default they write only their handshake there and hand later packets to the broker decoded (same figures, faster at scale, but the broker's reading of each packet is not part of the load; see the README's Scale section)")
	burstProfile := fs.String("cpuprofile-burst", "", "write a CPU profile of the migration burst only (the ten virtual minutes after the change) to this file")
	mqttURL := fs.String("mqtt", "", "run against a separately started mdm-broker serve at this MQTT address instead of in process: tcp://HOST:PORT (its --mqtt-tcp; connect tokens) or tls://HOST:PORT (its --mqtt; device certificates)")
	enrollURL := fs.String("mqtt-enroll", "", "with --mqtt: where enrolling clients connect, when the broker takes them on a listener of their own (Mosquitto: see scripts/mosquitto); default --mqtt")
	adminURL := fs.String("admin", "http://127.0.0.1:8440", "with --mqtt: the service's admin API")
	adminToken := fs.String("admin-token", "", "with --mqtt: the service's admin token file (DATA/admin.token of its --data directory)")
	enrollToken := fs.String("enrollment-token", "", "with --mqtt: the service's enrollment token file (default enrollment.token beside the admin token)")
	caFile := fs.String("ca", "", "with a tls:// --mqtt: the service's CA certificate (default ca.crt beside the admin token)")
	tenant := fs.String("tenant", "default", "with --mqtt: the service's tenant id (its serve --tenant)")
	shard := fs.String("shard", "0/1", "with --mqtt: run shard I of N of the fleet (I from 0), so that N simulators load one service together; shard 0 carries out the admin steps; give every shard the same --seed, --devices and --start")
	startAt := fs.String("start", "", "with --mqtt: the service time (RFC 3339) at which the scenario starts; default now; shards print theirs and need the same one")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: fleetsim [flags]\n\n"+
			"Runs an MDM authority migration over a simulated fleet: every device is a real\n"+
			"agent with its own MQTT session to an embedded broker and service, on a virtual\n"+
			"clock. Without flags: 2,000 devices move from office365 to intune over 8 days.\n\nFlags:\n%s", fs.FlagUsages())
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "fleetsim: unexpected argument %q (flags only; see --help)\n", fs.Arg(0))
		return 2
	}
	m, err := parseMix(*mix)
	if err != nil {
		fmt.Fprintf(stderr, "fleetsim: --mix: %v\n", err)
		return 2
	}
	cfg := fleetsim.Config{Devices: *devices, Seed: *seed, Mix: &m, Userless: userless,
		Online: &fleetsim.Online{Intermittent: *intermittent, PoweredOff: *poweredOff}, PushRate: *pushRate, Wire: *wire}
	if *scenario != "" {
		sc, err := fleetsim.LoadScenario(*scenario)
		if err != nil {
			fmt.Fprintf(stderr, "fleetsim: %v\n", err)
			return 2
		}
		cfg.Scenario = sc
	} else {
		cfg.Scenario = fleetsim.DefaultScenario(*apnsDelay)
	}
	if *mqttURL != "" {
		ext, err := external(*mqttURL, *adminURL, *adminToken, *enrollToken, *caFile, *tenant, *shard, *startAt)
		if err != nil {
			fmt.Fprintf(stderr, "fleetsim: %v\n", err)
			return 2
		}
		ext.EnrollMQTT = *enrollURL
		cfg.External = ext
		var clock broker.ClockInfo
		if err := ext.Admin.Do(ctx, "GET", "/v1/clock", nil, &clock); err != nil {
			fmt.Fprintf(stderr, "fleetsim: the service's clock: %v\n", err)
			return 1
		}
		if ext.Start.IsZero() {
			ext.Start = clock.Now.Truncate(time.Second).Add(time.Duration(clock.Scale) * time.Second)
		}
		wall := time.Duration(float64(cfg.Scenario.Duration)/clock.Scale + float64(ext.Start.Sub(clock.Now))/clock.Scale)
		fmt.Fprintf(stderr, "fleetsim: shard %d/%d against %s; the scenario starts at service time %s and takes about %s of real time (the service runs %g times real time)\n",
			ext.Shard, ext.Shards, *mqttURL, ext.Start.Format(time.RFC3339), wall.Round(time.Second), clock.Scale)
		if ext.Shards > 1 && *startAt == "" {
			fmt.Fprintf(stderr, "fleetsim: start the other shards now with --start %s\n", ext.Start.Format(time.RFC3339))
		}
	}
	if !*quiet && isTerminal(stderr) {
		cfg.Progress = func(p fleetsim.Progress) { progressLine(stderr, p) }
	}
	var limit int64
	if *memLimit != "" {
		if limit, err = parseSize(*memLimit); err != nil {
			fmt.Fprintf(stderr, "fleetsim: --memory-limit: %v\n", err)
			return 2
		}
	}
	if *cpuProfile != "" && *burstProfile != "" {
		fmt.Fprintln(stderr, "fleetsim: --cpuprofile and --cpuprofile-burst: Go runs one CPU profile at a time; give one of them")
		return 2
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintf(stderr, "fleetsim: --cpuprofile: %v\n", err)
			return 2
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintf(stderr, "fleetsim: --cpuprofile: %v\n", err)
			return 2
		}
		defer pprof.StopCPUProfile()
	}
	if *burstProfile != "" {
		f, err := os.Create(*burstProfile)
		if err != nil {
			fmt.Fprintf(stderr, "fleetsim: --cpuprofile-burst: %v\n", err)
			return 2
		}
		defer f.Close()
		cfg.BurstProfile = f
	}
	if limit > 0 {
		debug.SetMemoryLimit(limit)
		debug.SetGCPercent(limitedGCPercent)
	}
	r, err := fleetsim.Run(ctx, cfg)
	if cfg.Progress != nil {
		fmt.Fprint(stderr, "\r\033[K")
	}
	if errors.Is(err, context.Canceled) {
		fmt.Fprintln(stderr, "fleetsim: interrupted; no report")
		return 130
	}
	if err != nil {
		fmt.Fprintf(stderr, "fleetsim: %v\n", err)
		return 1
	}
	r.WriteSummary(stdout)
	if *burstProfile != "" && r.Run.BurstCheckInsPerSec == 0 {
		fmt.Fprintln(stderr, "fleetsim: --cpuprofile-burst: the run had no whole migration burst (no authority change, or the run ended within ten virtual minutes of it): the profile is empty or partial")
	}
	if *report != "" {
		b, _ := json.MarshalIndent(r, "", "  ")
		if err := os.WriteFile(*report, append(b, '\n'), 0o644); err != nil {
			fmt.Fprintf(stderr, "fleetsim: report: %v\n", err)
			return 1
		}
	}
	for _, out := range []struct {
		path, what string
		write      func(io.Writer) error
	}{{*timeline, "timeline", r.WriteTimeline}, {*plotFile, "plot", r.WritePlot}} {
		if out.path == "" {
			continue
		}
		if err := writeFile(out.path, out.write); err != nil {
			fmt.Fprintf(stderr, "fleetsim: %s: %v\n", out.what, err)
			return 1
		}
	}
	return 0
}

// external reads the flags of a run against a separate service.
func external(mqttURL, adminURL, adminToken, enrollToken, caFile, tenant, shard, startAt string) (*fleetsim.External, error) {
	if err := fleetsim.CheckMQTTURL(mqttURL); err != nil {
		return nil, fmt.Errorf("--mqtt: %w", err)
	}
	if adminToken == "" {
		return nil, errors.New("--mqtt needs --admin-token FILE: the admin token of the service (DATA/admin.token of its --data directory)")
	}
	admin, err := broker.NewAdminClient(adminURL, adminToken)
	if err != nil {
		return nil, err
	}
	dir := filepath.Dir(adminToken)
	if enrollToken == "" {
		enrollToken = filepath.Join(dir, "enrollment.token")
	}
	tok, err := os.ReadFile(enrollToken)
	if err != nil {
		return nil, fmt.Errorf("enrollment token: %w (pass --enrollment-token FILE: DATA/enrollment.token of the service)", err)
	}
	e := &fleetsim.External{MQTT: mqttURL, Admin: admin, EnrollmentToken: strings.TrimSpace(string(tok)), Tenant: tenant}
	if _, err := fmt.Sscanf(shard, "%d/%d", &e.Shard, &e.Shards); err != nil || fmt.Sprintf("%d/%d", e.Shard, e.Shards) != shard {
		return nil, fmt.Errorf("--shard %q: want I/N, such as 0/4 (shards count from 0)", shard)
	}
	if startAt != "" {
		if e.Start, err = time.Parse(time.RFC3339, startAt); err != nil {
			return nil, fmt.Errorf("--start %q: want an RFC 3339 time, such as 2026-11-29T10:00:00Z, as shard 0 printed it", startAt)
		}
	}
	if strings.HasPrefix(mqttURL, "tls://") || strings.HasPrefix(mqttURL, "ssl://") || strings.HasPrefix(mqttURL, "mqtts://") {
		if caFile == "" {
			caFile = filepath.Join(dir, "ca.crt")
		}
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("CA certificate: %w (pass --ca FILE: DATA/ca.crt of the service)", err)
		}
		e.RootCAs = x509.NewCertPool()
		if !e.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA certificate %s: no PEM certificate in it", caFile)
		}
	}
	return e, nil
}

// writeFile creates path and writes it with write.
func writeFile(path string, write func(io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	err = write(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// parseMix reads "ios=30,android=70".
func parseMix(s string) (fleetsim.Mix, error) {
	var m fleetsim.Mix
	for _, part := range strings.Split(s, ",") {
		name, val, ok := strings.Cut(strings.TrimSpace(part), "=")
		w, err := strconv.ParseFloat(val, 64)
		if !ok || err != nil || w < 0 {
			return m, fmt.Errorf("%q: want platform=weight, such as ios=30", part)
		}
		p, err := protocol.ParsePlatform(name)
		if err != nil {
			return m, fmt.Errorf("%q: platforms are ios, ipados, macos, android, windows", name)
		}
		switch p {
		case protocol.PlatformIOS:
			m.IOS = w
		case protocol.PlatformIPadOS:
			m.IPadOS = w
		case protocol.PlatformMacOS:
			m.MacOS = w
		case protocol.PlatformAndroid:
			m.Android = w
		case protocol.PlatformWindows:
			m.Windows = w
		}
	}
	return m, nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func progressLine(w io.Writer, p fleetsim.Progress) {
	if p.Phase != "" {
		fmt.Fprintf(w, "\r\033[K%s", p.Phase)
		return
	}
	fmt.Fprintf(w, "\r\033[Kvirtual %s of %s  office365 %d  intune %d  %.0f check-ins/s",
		fleetsim.Duration(p.Virtual.Round(time.Minute)), fleetsim.Duration(p.End),
		p.ByAuthority[protocol.AuthorityOffice365], p.ByAuthority[protocol.AuthorityIntune], p.CheckInsPS)
}

// limitedGCPercent is the garbage collector's growth target (GOGC) under
// --memory-limit: the heap may grow to five times what is live before a
// collection, unless the process nears the limit first. A large fleet's
// live memory is mostly long-lived sessions, and each collection scans
// all of it: collecting at twice the live heap, Go's default, took about
// 40% of the CPU in the 100,000-device migration burst.
const limitedGCPercent = 400

// parseSize parses a size in bytes with an optional unit: B, KiB, MiB,
// GiB, TiB (powers of 1,024; K, M, G and T, with or without a trailing B
// or iB, mean the same).
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := len(t)
	for i > 0 && (t[i-1] < '0' || t[i-1] > '9') && t[i-1] != '.' {
		i--
	}
	num, unit := t[:i], strings.ToUpper(strings.TrimSpace(t[i:]))
	unit = strings.TrimSuffix(strings.TrimSuffix(unit, "B"), "I")
	shift := map[string]uint{"": 0, "K": 10, "M": 20, "G": 30, "T": 40}
	sh, ok := shift[unit]
	v, err := strconv.ParseFloat(num, 64)
	if !ok || err != nil || v <= 0 || v*float64(uint64(1)<<sh) >= 1<<62 {
		return 0, fmt.Errorf("%q is not a size: want a positive number with an optional unit, such as 8GiB or 512MiB", s)
	}
	n := int64(v * float64(uint64(1)<<sh))
	if n < 64<<20 {
		return 0, fmt.Errorf("%q is too small: a run needs at least 64MiB", s)
	}
	return n, nil
}
