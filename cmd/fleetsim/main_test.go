package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image"
	_ "image/png"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mdm-authority/mdm/broker"
	"github.com/mdm-authority/mdm/fleetsim"
)

// TestReportKeys runs a small fleet from the command line and checks that
// the summary is printed and that the report has every documented key.
func TestReportKeys(t *testing.T) {
	dir := t.TempDir()
	report, timeline, chart := filepath.Join(dir, "r.json"), filepath.Join(dir, "t.csv"), filepath.Join(dir, "p.png")
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"--devices", "25", "--seed", "4", "--report", report, "--timeline", timeline, "--plot", chart}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	for _, want := range []string{"migrated", "latency", "validation", "canary on intune; remote lock acknowledged"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, out.String())
		}
	}
	b, err := os.ReadFile(report)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{
		"seed", "devices",
		"fleet.by_platform.ios", "fleet.by_platform.ipados", "fleet.by_platform.macos", "fleet.by_platform.android", "fleet.by_platform.windows", "fleet.userless",
		"authority.from", "authority.to", "authority.changed_at_s",
		"migration.eligible", "migration.migrated", "migration.stranded_userless", "migration.not_migrated",
		"migration.latency_s.p50", "migration.latency_s.p90", "migration.latency_s.p99", "migration.latency_s.max",
		"migration.online_latency_s.p50", "migration.online_latency_s.p99", "migration.online_latency_s.max",
		"checkins.ok", "checkins.failed",
		"pushes.sent", "pushes.retried",
		"profiles.overwritten", "profiles.redundant_devices_max", "profiles.gap_devices", "profiles.retained_at_end",
		"validation.canary_authority", "validation.remote_lock",
		"run.wall_s", "run.checkins_per_s", "run.peak_rss_bytes",
		"run.burst_checkins_per_s", "run.burst_wall_s", "run.burst_gcs", "run.burst_alloc_bytes", "run.burst_heap_live_bytes", "run.burst_gc_headroom_bytes", "run.connects_per_s", "run.connects", "run.restarts", "run.connect_errors", "run.sessions_lost",
		"run.host.cpus", "run.host.gomaxprocs", "run.host.gc_percent", "run.host.go", "run.host.os",
	} {
		var v any = doc
		for _, part := range strings.Split(key, ".") {
			m, ok := v.(map[string]any)
			if !ok {
				v = nil
				break
			}
			v = m[part]
		}
		if v == nil {
			t.Errorf("report lacks %s", key)
		}
	}
	if run, _ := doc["run"].(map[string]any); runtime.GOOS == "linux" && run["burst_cpu_s"] == nil {
		t.Error("report lacks run.burst_cpu_s, which Linux reports")
	}
	png, err := os.ReadFile(chart)
	if err != nil {
		t.Fatal(err)
	}
	if img, format, err := image.DecodeConfig(bytes.NewReader(png)); err != nil || format != "png" || img.Width < 600 {
		t.Errorf("plot: %v, %s %+v; want a PNG chart", err, format, img)
	}
	csv, err := os.ReadFile(timeline)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(csv)), "\n")
	if len(lines) < 700 || !strings.HasPrefix(lines[0], "t_s,t,office365,intune,retained_profiles,redundant_devices,gap_devices,checkins_ok") {
		t.Errorf("timeline: %d lines, header %q; want a row per 15 minutes of 8 days", len(lines), lines[0])
	}
}

func TestFlagErrors(t *testing.T) {
	for _, args := range [][]string{{"--mix", "ios=x"}, {"--mix", "nokia=3"}, {"extra"}, {"--scenario", "/nonexistent.json"}, {"--devices", "-5"},
		{"--mqtt", "tcp://127.0.0.1:1"}, {"--mqtt", "tcp://127.0.0.1:1", "--admin-token", "/nonexistent"}, {"--mqtt", "ftp://x", "--admin-token", "main.go"},
		{"--mqtt", "tcp://127.0.0.1:1", "--admin-token", "main.go", "--enrollment-token", "main.go", "--shard", "2/2"},
		{"--cpuprofile", filepath.Join(t.TempDir(), "a"), "--cpuprofile-burst", filepath.Join(t.TempDir(), "b")},
		{"--memory-limit", "lots"}} {
		var out, errOut bytes.Buffer
		code := run(context.Background(), args, &out, &errOut)
		if code == 0 || !strings.Contains(errOut.String(), "fleetsim:") {
			t.Errorf("%q: exit %d, %q; want a failure that says what is wrong", args, code, errOut.String())
		}
	}
}

// TestExternalShards runs one fleet as two shards against a separately
// started service on a scaled clock, one shard over plain MQTT with
// connect tokens and one over TLS with device certificates, and checks
// that together they move the whole fleet as in process.
func TestExternalShards(t *testing.T) {
	const scale = 900 // 10 virtual hours in 40 s
	dir := t.TempDir()
	clock, err := broker.NewScaledClock(time.Now(), scale)
	if err != nil {
		t.Fatal(err)
	}
	ready := make(chan broker.ServerInfo, 1)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() {
		served <- broker.RunServer(ctx, broker.ServerConfig{DataDir: filepath.Join(dir, "svc"), Tenant: "contoso",
			MQTTAddr: "127.0.0.1:0", MQTTTCPAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
			PushRate: 2000, RetentionPeriod: 3 * time.Hour, Clock: clock, Ready: func(i broker.ServerInfo) { ready <- i }})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("service: %v", err)
		}
	})
	var info broker.ServerInfo
	select {
	case info = <-ready:
	case err := <-served:
		t.Fatal(err)
	}
	scenario := filepath.Join(dir, "short.json")
	os.WriteFile(scenario, []byte(`{"name": "short migration", "duration": "10h", "retention": "3h", "steps": [
		{"at": "0s", "action": "set_authority", "authority": "office365"},
		{"at": "0s", "action": "upload_apns", "authority": "office365"},
		{"at": "0s", "action": "add_profile", "authority": "office365", "type": "email", "name": "Corp Mail"},
		{"at": "1h", "action": "add_profile", "authority": "intune", "type": "email", "name": "Corp Mail", "settings": {"server": "mail.contoso.example"}},
		{"at": "5h", "action": "set_authority", "authority": "intune"},
		{"at": "5h30m", "action": "upload_apns", "authority": "intune"},
		{"at": "8h", "action": "enroll_canary", "platform": "android"},
		{"at": "8h1m", "action": "remote_lock"}]}`), 0o600)
	start := clock.Now().Add(5 * time.Minute).Truncate(time.Second).Format(time.RFC3339)
	urls := []string{"tcp://" + info.MQTTTCPAddr.String(), "tls://" + info.MQTTAddr.String()}
	reports := make([]*fleetsim.Report, 2)
	var wg sync.WaitGroup
	for shard := range 2 {
		wg.Go(func() {
			file := filepath.Join(dir, fmt.Sprintf("r%d.json", shard))
			var out, errOut bytes.Buffer
			code := run(context.Background(), []string{"--devices", "40", "--seed", "6", "--intermittent", "0", "--powered-off", "0",
				"--scenario", scenario, "--mqtt", urls[shard], "--admin", info.AdminURL, "--admin-token", info.AdminTokenFile,
				"--tenant", "contoso", "--shard", fmt.Sprintf("%d/2", shard), "--start", start, "--report", file}, &out, &errOut)
			if code != 0 {
				t.Errorf("shard %d: exit %d: %s", shard, code, errOut.String())
				return
			}
			b, err := os.ReadFile(file)
			if err != nil {
				t.Error(err)
				return
			}
			reports[shard] = &fleetsim.Report{}
			if err := json.Unmarshal(b, reports[shard]); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	devices := 0
	for shard, r := range reports {
		for _, n := range r.Fleet.ByPlatform {
			devices += n
		}
		m := r.Migration
		if m.Eligible == 0 || m.Migrated != m.Eligible || m.NotMigrated != 0 || m.StrandedUserless != r.Fleet.Userless {
			t.Errorf("shard %d: migration %+v with %d userless; want every user-bound device moved, every userless one stranded", shard, m, r.Fleet.Userless)
		}
		if r.Profiles.Overwritten != m.Migrated || r.Profiles.RetainedAtEnd != 0 {
			t.Errorf("shard %d: profiles %+v; want one overwrite per moved device, none retained at the end", shard, r.Profiles)
		}
		if want := fmt.Sprintf("%d/2", shard); r.Run.Shard != want || r.Run.Service != urls[shard] {
			t.Errorf("shard %d: run %+v; want shard %s of %s", shard, r.Run, want, urls[shard])
		}
	}
	if devices != 40 {
		t.Errorf("the shards ran %d devices together; want the fleet's 40", devices)
	}
	if v := reports[0].Validation; v.CanaryAuthority != "intune" || v.RemoteLock != "acknowledged" {
		t.Errorf("shard 0 validation %+v; want the canary on intune, its lock acknowledged", v)
	}
	if v := reports[1].Validation; v.CanaryAuthority != "no canary" {
		t.Errorf("shard 1 validation %+v; the canary is shard 0's", v)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"8GiB": 8 << 30, "8G": 8 << 30, "8gb": 8 << 30, "512MiB": 512 << 20, "1.5GiB": 3 << 29, "100000000": 100000000, " 2 TiB ": 2 << 40} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "GiB", "8XB", "-1GiB", "0", "1KiB", "1e30", "8 GiB GiB", "NaN"} {
		if got, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) = %d; want an error", in, got)
		}
	}
}

// TestWireFlag runs a small fleet with and without --wire: the summary,
// but for its run and host lines, is the same.
func TestWireFlag(t *testing.T) {
	summary := func(extra ...string) string {
		var out, errOut bytes.Buffer
		if code := run(context.Background(), append([]string{"-q", "--devices", "25", "--seed", "5"}, extra...), &out, &errOut); code != 0 {
			t.Fatalf("exit %d: %s", code, errOut.String())
		}
		var keep []string
		for _, line := range strings.Split(out.String(), "\n") {
			if !strings.HasPrefix(line, "run ") && !strings.HasPrefix(line, "host ") {
				keep = append(keep, line)
			}
		}
		return strings.Join(keep, "\n")
	}
	if a, b := summary(), summary("--wire"); a != b {
		t.Errorf("--wire changed the summary:\n%s\n---\n%s", a, b)
	}
}
