package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/mdm-authority/mdm/agent"
	"github.com/mdm-authority/mdm/broker"
	"github.com/mdm-authority/mdm/protocol"
)

// crashChildEnv names the state directory of an agent run as a child
// process of TestCrashMidApply.
const crashChildEnv = "MDM_AGENT_CRASH_CHILD"

// TestHelperAgentProcess is the child of TestCrashMidApply: a real agent
// process that the test kills.
func TestHelperAgentProcess(t *testing.T) {
	dir := os.Getenv(crashChildEnv)
	if dir == "" {
		t.Skip("runs only as the child process of TestCrashMidApply")
	}
	os.Exit(run(context.Background(), []string{"run", "--state", dir}, os.Stdout, os.Stderr))
}

// TestCrashMidApply kills the agent process (SIGKILL) at different points
// while it applies an authority change over many profiles, and checks
// that every time the state file is whole, and that after a restart the
// profile files match the state and the device converges.
func TestCrashMidApply(t *testing.T) {
	if testing.Short() {
		t.Skip("kills and restarts agent processes")
	}
	clock := newFakeClock()
	s := startService(t, clock)
	setAuthority(t, s, broker.ModeOffice365)
	const n = 100
	for i := range n {
		put(t, s, protocol.AuthorityOffice365, protocol.ProfileEmail, fmt.Sprintf("p%03d", i))
		put(t, s, protocol.AuthorityIntune, protocol.ProfileEmail, fmt.Sprintf("p%03d", i+n/2))
	}
	dir := socketDir(t) + "/state"
	_, err := agent.Enroll(context.Background(), agent.EnrollOptions{
		Dir: dir, Broker: s.url, Tenant: "default", Token: s.token, CA: s.roots,
		User: "ada@contoso.example", Platform: protocol.PlatformAndroid, Clock: clock,
	})
	if err != nil {
		t.Fatal(err)
	}
	client := agent.NewLocalClient(dir)
	start := func() *exec.Cmd {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperAgentProcess$")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+dir)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the agent process to connect", func() bool {
			st, err := client.Status(context.Background())
			return err == nil && st.Connected
		})
		return cmd
	}
	cmd := start()
	waitFor(t, "the first profiles", func() bool {
		st, err := client.Status(context.Background())
		return err == nil && len(st.Profiles) == n
	})

	modes := []broker.Mode{broker.ModeIntune, broker.ModeOffice365}
	for i, delay := range []time.Duration{0, time.Millisecond, 3 * time.Millisecond, 10 * time.Millisecond, 30 * time.Millisecond} {
		mode := modes[i%2]
		setAuthority(t, s, mode)
		if _, err := s.broker.PublishDuePushes(10); err != nil {
			t.Fatal(err)
		}
		time.Sleep(delay) // chooses the crash point, does not wait for anything
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()

		saved, err := agent.LoadState(dir)
		if err != nil {
			t.Fatalf("crash %d: the state file is damaged: %v", i, err)
		}
		cmd = start()
		checkFiles(t, dir, saved.Profiles)
		// The push may have died with the process: a sync catches up.
		res, err := client.Sync(context.Background())
		if err != nil || res.Error != protocol.CodeNone {
			t.Fatalf("crash %d: sync after restart = %+v, %v", i, res, err)
		}
		after, err := client.Status(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		want := protocol.AuthorityIntune
		if mode == broker.ModeOffice365 {
			want = protocol.AuthorityOffice365
		}
		if after.Authority != want {
			t.Errorf("crash %d: authority %s after the sync; want %s", i, after.Authority, want)
		}
		checkFiles(t, dir, after.Profiles)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	cmd.Wait()
}

// checkFiles checks that the profile files are exactly the profiles.
func checkFiles(t *testing.T, dir string, profiles []agent.Profile) {
	t.Helper()
	var want []string
	for _, p := range profiles {
		want = append(want, fmt.Sprintf("%s/%s/%s.json", p.Authority, p.Type, p.Name))
	}
	slices.Sort(want)
	if got := profileFiles(t, dir); !slices.Equal(got, want) {
		t.Errorf("profile files (%d) do not match the state (%d profiles)", len(got), len(want))
	}
}
