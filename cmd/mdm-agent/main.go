// Command mdm-agent is the device agent: it enrolls the device with the
// management service, runs scheduled and pushed check-ins, applies
// profiles and commands, and offers a Company Portal-style sync.
//
//	mdm-agent enroll --broker mqtts://mdm.example:8883 --ca ca.crt --token-file enrollment.token --user ada@contoso.example
//	mdm-agent run
//	mdm-agent sync
//	mdm-agent status [--json]
//	mdm-agent unenroll
//
// Every command takes --state DIR, the agent's state directory.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/mdm-authority/mdm/agent"
)

const usage = `Usage: mdm-agent <command> [flags]

  enroll    enroll this device with the management service
  run       run the agent (the daemon): check-ins, profiles, commands
  sync      make the running agent check in now and show what changed
  status    show the authority, profiles, compliance and schedule
  unenroll  leave management: tell the service, remove profiles and identity

Every command takes --state DIR (default /var/lib/mdm-agent as root,
otherwise $XDG_STATE_HOME/mdm-agent or ~/.local/state/mdm-agent).
Add --help to any command for its flags.
`

// exitStopped is the exit status of run when management ended (wiped,
// retired or unenrolled): the systemd unit does not restart on it.
const exitStopped = 3

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run runs one command and returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmds := map[string]func(context.Context, []string, io.Writer, io.Writer) error{
		"enroll": enroll, "run": daemon, "sync": syncNow, "status": status, "unenroll": unenroll,
	}
	name := args[0]
	if name == "-h" || name == "--help" || name == "help" {
		fmt.Fprint(stdout, usage)
		return 0
	}
	cmd, ok := cmds[name]
	if !ok {
		fmt.Fprintf(stderr, "mdm-agent: unknown command %q\n\n%s", name, usage)
		return 2
	}
	err := cmd(ctx, args[1:], stdout, stderr)
	var ue usageError
	switch {
	case err == nil, errors.Is(err, errHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "mdm-agent %s: %v\n", name, err)
		return 2
	case errors.Is(err, agent.ErrStoppedManagement):
		fmt.Fprintf(stderr, "mdm-agent %s: %v\n", name, err)
		return exitStopped
	}
	fmt.Fprintf(stderr, "mdm-agent %s: %v\n", name, err)
	return 1
}

// usageError is a mistake in the command line.
type usageError struct{ error }

var errHelp = errors.New("help shown")

// defaultStateDir is /var/lib/mdm-agent for root (the systemd unit), and
// the per-user state directory otherwise.
func defaultStateDir() string {
	if os.Geteuid() == 0 {
		return "/var/lib/mdm-agent"
	}
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "mdm-agent")
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "mdm-agent-state"
	}
	return filepath.Join(home, ".local", "state", "mdm-agent")
}

func newLogger(w io.Writer, verbose bool) *slog.Logger {
	level := slog.LevelInfo
	if verbose {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}
