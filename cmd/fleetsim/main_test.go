package main

import (
	"bytes"
	"context"
	"encoding/json"
	"image"
	_ "image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
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
	for _, args := range [][]string{{"--mix", "ios=x"}, {"--mix", "nokia=3"}, {"extra"}, {"--scenario", "/nonexistent.json"}, {"--devices", "-5"}} {
		var out, errOut bytes.Buffer
		code := run(context.Background(), args, &out, &errOut)
		if code == 0 || !strings.Contains(errOut.String(), "fleetsim:") {
			t.Errorf("%q: exit %d, %q; want a failure that says what is wrong", args, code, errOut.String())
		}
	}
}
