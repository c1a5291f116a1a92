package main

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mdm-authority/mdm/agent"
	"github.com/mdm-authority/mdm/broker"
	"github.com/mdm-authority/mdm/protocol"
)

// cli runs mdm-agent with args and returns its exit status and output.
func cli(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(context.Background(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestCLIUsageErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		args []string
		code int
		want string
	}{
		{nil, 2, "Usage: mdm-agent"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"enroll", "--state", dir}, 2, "--broker and --ca are required"},
		{[]string{"enroll", "--state", dir, "--broker", "mqtts://x", "--ca", "ca.crt"}, 2, "enrollment token is required"},
		{[]string{"status", "--state", dir, "extra"}, 2, `unexpected argument "extra"`},
		{[]string{"status", "--state", dir}, 1, "not enrolled: run mdm-agent enroll first"},
		{[]string{"sync", "--state", dir}, 1, "no agent is running"},
		{[]string{"run", "--state", dir}, 1, "not enrolled"},
	}
	for _, tt := range tests {
		code, _, stderr := cli(t, tt.args...)
		if code != tt.code || !strings.Contains(stderr, tt.want) {
			t.Errorf("mdm-agent %q = %d, %q; want %d and %q", tt.args, code, stderr, tt.code, tt.want)
		}
	}
	if code, stdout, _ := cli(t, "--help"); code != 0 || !strings.Contains(stdout, "unenroll") {
		t.Errorf("mdm-agent --help = %d, %q", code, stdout)
	}
}

// TestCLI enrolls through the command line, then uses status, sync and
// unenroll against the running agent.
func TestCLI(t *testing.T) {
	clock := newFakeClock()
	s := startService(t, clock)
	setAuthority(t, s, broker.ModeOffice365)
	put(t, s, protocol.AuthorityOffice365, protocol.ProfileEmail, "Corp Mail")
	files := t.TempDir()
	caFile, tokenFile := filepath.Join(files, "ca.crt"), filepath.Join(files, "enrollment.token")
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.caDER})
	if err := os.WriteFile(caFile, caPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tokenFile, []byte(s.token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(socketDir(t), "state")
	code, stdout, stderr := cli(t, "enroll", "--state", dir, "--broker", s.url, "--ca", caFile, "--token-file", tokenFile,
		"--user", "ada@contoso.example", "--platform", "macos")
	if code != 0 || !strings.Contains(stdout, "enrolled as d-") {
		t.Fatalf("enroll = %d, %q, %q", code, stdout, stderr)
	}
	if code, _, stderr := cli(t, "enroll", "--state", dir, "--broker", s.url, "--ca", caFile, "--token-file", tokenFile); code != 1 || !strings.Contains(stderr, "unenroll first") {
		t.Errorf("second enroll = %d, %q; want a refusal that says to unenroll first", code, stderr)
	}
	info, err := os.Stat(filepath.Join(dir, "device.key"))
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("device.key: %v, mode %v; want 0600", err, info.Mode().Perm())
	}

	code, stdout, _ = cli(t, "status", "--state", dir)
	if code != 0 || !strings.Contains(stdout, "not running (read from the state file)") || !strings.Contains(stdout, "office365") {
		t.Errorf("status without an agent = %d, %q", code, stdout)
	}

	st, err := agent.LoadState(dir)
	if err != nil {
		t.Fatal(err)
	}
	a := &runningAgent{dir: dir, id: st.Device, client: agent.NewLocalClient(dir), facts: &factsBox{}}
	a.start(t, s)
	code, stdout, stderr = cli(t, "sync", "--state", dir)
	if code != 0 || !strings.Contains(stdout, "checked in in") || !strings.Contains(stdout, "authority   office365") {
		t.Errorf("sync = %d, %q, %q", code, stdout, stderr)
	}
	code, stdout, _ = cli(t, "status", "--state", dir)
	for _, want := range []string{"running, connected", "office365", "Corp Mail", "email"} {
		if code != 0 || !strings.Contains(stdout, want) {
			t.Errorf("status = %d, %q; want %q in it", code, stdout, want)
		}
	}
	code, stdout, _ = cli(t, "status", "--state", dir, "--json")
	var js agent.Status
	if err := json.Unmarshal([]byte(stdout), &js); code != 0 || err != nil || js.Device != st.Device || !js.Running {
		t.Errorf("status --json = %d, %v, %+v", code, err, js)
	}

	code, stdout, stderr = cli(t, "unenroll", "--state", dir)
	if code != 0 || !strings.Contains(stdout, "unenrolled") {
		t.Fatalf("unenroll = %d, %q, %q", code, stdout, stderr)
	}
	waitFor(t, "the service to drop the device", func() bool { d := deviceOf(t, s, st.Device); return !d.Managed() })
	if files := profileFiles(t, dir); len(files) != 0 {
		t.Errorf("profile files after unenroll: %q", files)
	}
	code, stdout, _ = cli(t, "status", "--state", dir)
	if code != 0 || !strings.Contains(stdout, "unenrolled and is no longer managed") {
		t.Errorf("status after unenroll = %d, %q", code, stdout)
	}
}

// TestStatusShowsRejectedMessages: the text status names the reasons and
// counts of messages the agent refused, so an admin sees something is off.
func TestStatusShowsRejectedMessages(t *testing.T) {
	now := time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)
	s := agent.Status{Device: "d-1", Platform: protocol.PlatformAndroid, Tenant: "contoso", CertificateNotAfter: now.Add(time.Hour),
		RejectedMessages: map[string]uint64{"malformed": 3, "stale_response": 1}}
	var b strings.Builder
	printStatus(&b, s, now)
	if !strings.Contains(b.String(), "malformed 3, stale_response 1") {
		t.Errorf("status text has no rejected messages line:\n%s", b.String())
	}
	b.Reset()
	s.RejectedMessages = nil
	printStatus(&b, s, now)
	if strings.Contains(b.String(), "rejected") {
		t.Errorf("status text mentions rejected messages when there are none:\n%s", b.String())
	}
}
