package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	flag "github.com/spf13/pflag"

	"github.com/mdm-authority/mdm/agent"
	"github.com/mdm-authority/mdm/protocol"
)

// newFlags returns a flag set with --state, and parses args into it.
type command struct {
	fs    *flag.FlagSet
	state *string
}

func newCommand(name, synopsis, about string) command {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	c := command{fs: fs, state: fs.String("state", defaultStateDir(), "the agent's state directory")}
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: mdm-agent %s %s\n\n%s\n\nFlags:\n%s", name, synopsis, about, fs.FlagUsages())
	}
	return c
}

func (c command) parse(args []string, stderr io.Writer) error {
	c.fs.SetOutput(stderr)
	if err := c.fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return errHelp
		}
		return usageError{err}
	}
	if c.fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected argument %q", c.fs.Arg(0))}
	}
	return nil
}

// defaultPlatform maps the host to the closest managed platform: a Linux
// test VM stands in for an Android device (Linux underneath).
func defaultPlatform() string {
	switch runtime.GOOS {
	case "darwin":
		return "macos"
	case "windows":
		return "windows"
	}
	return "android"
}

func enroll(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c := newCommand("enroll", "--broker URL --ca FILE (--token TOKEN | --token-file FILE) [flags]",
		"Enrolls this device: generates its private key (kept owner-only in the state\ndirectory), sends a signing request with the enrollment token, and stores the\nMDM certificate the service issues. Then start the agent with mdm-agent run.")
	broker := c.fs.String("broker", "", "the service's MQTT URL, mqtts://HOST:PORT (required)")
	enrollBroker := c.fs.String("enroll-broker", "", "where to enroll, when the broker takes enrolling clients on a listener of their own (Mosquitto: scripts/mosquitto, port 8884); default --broker")
	caFile := c.fs.String("ca", "", "the service's CA certificate, PEM: the ca.crt in the service's data directory (required)")
	token := c.fs.String("token", "", "the tenant's enrollment token (visible in the process list: prefer --token-file)")
	tokenFile := c.fs.String("token-file", "", "a file holding the enrollment token")
	tenant := c.fs.String("tenant", "default", "the service's tenant id")
	user := c.fs.String("user", "", "the user principal name; empty enrolls a userless (bulk) device, which an authority change does not migrate")
	platform := c.fs.String("platform", defaultPlatform(), "the platform to enroll as: ios, ipados, macos, android, windows")
	name := c.fs.String("name", "", "display name (default the host name)")
	osVersion := c.fs.String("os-version", "", "OS version to report (default VERSION_ID of /etc/os-release)")
	if err := c.parse(args, stderr); err != nil {
		return err
	}
	if *broker == "" || *caFile == "" {
		return usageError{errors.New("--broker and --ca are required (the CA is the ca.crt in the service's data directory)")}
	}
	if *tokenFile != "" {
		b, err := os.ReadFile(*tokenFile)
		if err != nil {
			return fmt.Errorf("enrollment token: %w", err)
		}
		*token = strings.TrimSpace(string(b))
	}
	if *token == "" {
		return usageError{errors.New("the enrollment token is required: --token-file FILE (the enrollment.token in the service's data directory) or --token")}
	}
	p, err := protocol.ParsePlatform(*platform)
	if err != nil {
		return usageError{err}
	}
	pemCA, err := os.ReadFile(*caFile)
	if err != nil {
		return fmt.Errorf("CA certificate: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pemCA) {
		return fmt.Errorf("%s holds no PEM certificate: pass the service's ca.crt", *caFile)
	}
	if *name == "" {
		*name, _ = os.Hostname()
	}
	if *osVersion == "" {
		*osVersion, _ = agent.ReadOSRelease("/etc/os-release")
	}
	st, err := agent.Enroll(ctx, agent.EnrollOptions{
		Dir: *c.state, Broker: *broker, EnrollBroker: *enrollBroker, Tenant: *tenant, Token: *token, CA: roots,
		User: *user, Platform: p, Name: *name, OSVersion: *osVersion,
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "enrolled as %s (%s) under %s; certificate valid until %s\n", st.Device, st.Platform, st.Authority, st.CertNotAfter.Format(time.RFC3339))
	fmt.Fprintf(stdout, "start the agent: mdm-agent run --state %s\n", *c.state)
	return nil
}

func daemon(ctx context.Context, args []string, _, stderr io.Writer) error {
	c := newCommand("run", "[flags]",
		"Runs the agent until interrupted: keeps an MQTT session with the service, checks\nin on schedule, on pushes and on mdm-agent sync, applies profiles (as files under\nSTATE/profiles) and commands, and serves the control socket STATE/agent.sock.\nExits with status 3 when a wipe, retire or unenroll ended management.")
	factsFile := c.fs.String("facts", "", "JSON file of the device's facts for compliance: {\"os_version\": \"17.4\", \"passcode\": true, \"encrypted\": true}; re-read every minute")
	osRelease := c.fs.String("os-release", "/etc/os-release", "os-release file the OS version is read from when there is no --facts file")
	passcode := c.fs.Bool("passcode", false, "without --facts: the device has a passcode (screen lock)")
	encrypted := c.fs.Bool("encrypted", false, "without --facts: the device's storage is encrypted")
	lockCmd := c.fs.String("lock-command", "", "shell command run on a remote lock, with the message in $MDM_LOCK_MESSAGE (for example: loginctl lock-sessions)")
	keepAlive := c.fs.Duration("mqtt-keepalive", 0, "MQTT keep-alive interval, such as 60s; 0 leaves it off and uses TCP keep-alive, which does not wake the idle agent (set it for a broker that requires one)")
	verbose := c.fs.BoolP("verbose", "v", false, "log at debug level")
	if err := c.parse(args, stderr); err != nil {
		return err
	}
	facts := func() (agent.Facts, error) {
		if *factsFile != "" {
			return agent.LoadFacts(*factsFile)
		}
		v, err := agent.ReadOSRelease(*osRelease)
		return agent.Facts{OSVersion: v, Passcode: *passcode, Encrypted: *encrypted}, err
	}
	opts := agent.Options{Dir: *c.state, Logger: newLogger(stderr, *verbose), Facts: facts, MQTTKeepAlive: *keepAlive}
	if *lockCmd != "" {
		opts.LockCommand = []string{"/bin/sh", "-c", *lockCmd}
	}
	return agent.Run(ctx, opts)
}

func syncNow(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c := newCommand("sync", "[--json]",
		"Makes the running agent check in now (as Company Portal's sync does), evaluate\ncompliance and report; prints the authority, what changed, compliance and how\nlong it took.")
	asJSON := c.fs.Bool("json", false, "print JSON")
	if err := c.parse(args, stderr); err != nil {
		return err
	}
	res, err := agent.NewLocalClient(*c.state).Sync(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		return writeJSON(stdout, res)
	}
	printSync(stdout, res)
	if res.Error != protocol.CodeNone {
		return fmt.Errorf("the service refused the check-in: %s: %s", res.Error, res.Error.Hint())
	}
	if res.Message != "" {
		return errors.New("the check-in failed: " + res.Message)
	}
	return nil
}

func status(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c := newCommand("status", "[--json]",
		"Shows the device's authority, last and next check-in, profiles (with the\nauthority that set them and the retention deadline of retained ones), redundant\npairs, protection gaps, compliance, certificate expiry and pending commands. Asks\nthe running agent, or reads the state file when none runs.")
	asJSON := c.fs.Bool("json", false, "print JSON")
	if err := c.parse(args, stderr); err != nil {
		return err
	}
	s, err := agent.NewLocalClient(*c.state).Status(ctx)
	if errors.Is(err, agent.ErrNotRunning) {
		st, lerr := agent.LoadState(*c.state)
		if lerr != nil {
			return lerr
		}
		s = agent.StatusOf(st, time.Now())
	} else if err != nil {
		return err
	}
	if *asJSON {
		return writeJSON(stdout, s)
	}
	printStatus(stdout, s, time.Now())
	return nil
}

func unenroll(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c := newCommand("unenroll", "[--force]",
		"Takes the device out of management: tells the service, removes the MDM\nprofiles and the device's identity. Goes through the running agent if there is\none (which then stops), otherwise connects once itself.")
	force := c.fs.Bool("force", false, "when the service cannot be reached, unenroll on the device anyway (then remove the device in the admin console)")
	if err := c.parse(args, stderr); err != nil {
		return err
	}
	err := agent.NewLocalClient(*c.state).Unenroll(ctx)
	if errors.Is(err, agent.ErrNotRunning) {
		err = agent.UnenrollOffline(ctx, *c.state, nil, nil, *force)
	}
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, "unenrolled: profiles and identity removed")
	return nil
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func stamp(t, now time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := t.Sub(now).Round(time.Second)
	rel := "in " + d.String()
	if d < 0 {
		rel = (-d).String() + " ago"
	}
	return fmt.Sprintf("%s (%s)", t.Local().Format("2006-01-02 15:04:05"), rel)
}

func printSync(w io.Writer, r agent.SyncResult) {
	fmt.Fprintf(w, "checked in in %s\n", r.Duration.Round(time.Millisecond))
	if r.Error != protocol.CodeNone || r.Message != "" {
		return
	}
	if r.AuthorityChanged {
		fmt.Fprintf(w, "authority   %s (changed by this check-in)\n", r.Authority)
	} else {
		fmt.Fprintf(w, "authority   %s\n", r.Authority)
	}
	if len(r.Changes) == 0 {
		fmt.Fprintln(w, "profiles    no change")
	}
	for _, ch := range r.Changes {
		fmt.Fprintf(w, "profile     %s\n", describeChange(ch))
	}
	for _, cmd := range r.Commands {
		fmt.Fprintf(w, "command     %s %s: %s\n", cmd.ID, cmd.Action, commandState(cmd))
	}
	printCompliance(w, r.Compliance)
}

func describeChange(ch agent.Change) string {
	p := ch.Profile
	s := fmt.Sprintf("%-11s %s %q (%s v%d)", ch.Kind, p.Type, p.Name, p.Authority, p.Version)
	switch {
	case ch.Kind == agent.Overwritten && ch.Replaced != nil:
		s += fmt.Sprintf(", replacing %s's", ch.Replaced.Authority)
	case ch.Kind == agent.Retained:
		s += ", until " + p.RetainUntil.Local().Format("2006-01-02 15:04:05")
	}
	return s
}

func commandState(r agent.CommandRecord) string {
	if r.Status == 0 {
		return "running"
	}
	s := r.Status.String()
	if r.Error != "" {
		s += " (" + r.Error + ")"
	}
	if !r.Sent {
		s += ", result not yet delivered"
	}
	return s
}

func printCompliance(w io.Writer, c protocol.Compliance) {
	fmt.Fprintf(w, "compliance  %s\n", c.State)
	for _, f := range c.Failures {
		fmt.Fprintf(w, "            - %s\n", f)
	}
}

func printStatus(w io.Writer, s agent.Status, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	user := s.User
	if user == "" {
		user = "none (" + s.EnrollmentType.String() + " enrollment: not migrated by an authority change)"
	}
	fmt.Fprintf(tw, "device\t%s (%s), tenant %s\n", s.Device, s.Platform, s.Tenant)
	fmt.Fprintf(tw, "user\t%s\n", user)
	switch {
	case !s.Running:
		fmt.Fprintf(tw, "agent\tnot running (read from the state file)\n")
	case s.Connected:
		fmt.Fprintf(tw, "agent\trunning, connected to %s\n", s.Broker)
	default:
		fmt.Fprintf(tw, "agent\trunning, not connected to %s (retrying)\n", s.Broker)
	}
	auth := fmt.Sprintf("%s (epoch %d, since %s", s.Authority, s.Epoch, s.AuthoritySince.Local().Format("2006-01-02 15:04"))
	if s.PreviousAuthority != protocol.AuthorityUnknown {
		auth += ", previously " + s.PreviousAuthority.String()
	}
	fmt.Fprintf(tw, "authority\t%s)\n", auth)
	fmt.Fprintf(tw, "last check-in\t%s\n", stamp(s.LastCheckIn, now))
	if s.LastError != protocol.CodeNone || s.LastMessage != "" {
		fmt.Fprintf(tw, "last attempt\t%s: failed (%s %s)\n", stamp(s.LastAttempt, now), s.LastError, s.LastMessage)
	}
	if s.Stopped == "" && !s.CertificateExpired {
		fmt.Fprintf(tw, "next check-in\t%s\n", stamp(s.NextCheckIn, now))
	}
	cert := "valid until " + s.CertificateNotAfter.Local().Format("2006-01-02")
	if s.CertificateExpired {
		cert = "EXPIRED on " + s.CertificateNotAfter.Local().Format("2006-01-02")
	}
	if s.Stopped == "" {
		fmt.Fprintf(tw, "certificate\t%s\n", cert)
	}
	fmt.Fprintf(tw, "compliance\t%s\n", s.Compliance.State)
	for _, f := range s.Compliance.Failures {
		fmt.Fprintf(tw, "\t- %s\n", f)
	}
	if s.Lock != nil {
		fmt.Fprintf(tw, "locked\t%s %q\n", s.Lock.At.Local().Format("2006-01-02 15:04"), s.Lock.Message)
	}
	if len(s.RejectedMessages) > 0 {
		var parts []string
		for _, reason := range slices.Sorted(maps.Keys(s.RejectedMessages)) {
			parts = append(parts, fmt.Sprintf("%s %d", reason, s.RejectedMessages[reason]))
		}
		fmt.Fprintf(tw, "rejected messages\t%s (since the agent started; see its log)\n", strings.Join(parts, ", "))
	}
	tw.Flush()
	fmt.Fprintf(w, "\nprofiles (%d)\n", len(s.Profiles))
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if len(s.Profiles) > 0 {
		fmt.Fprintln(tw, "  TYPE\tNAME\tAUTHORITY\tVERSION\tRETAINED UNTIL")
	}
	for _, p := range s.Profiles {
		until := "-"
		if p.Retained() {
			until = p.RetainUntil.Local().Format("2006-01-02 15:04:05")
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%d\t%s\n", p.Type, p.Name, p.Authority, p.Version, until)
	}
	tw.Flush()
	if len(s.Redundant) > 0 {
		fmt.Fprintf(w, "\nredundant pairs (%d): both apply until the retained one goes\n", len(s.Redundant))
		for _, pr := range s.Redundant {
			fmt.Fprintf(w, "  %s: %q (%s, retained) and %q (%s)\n", pr.Retained.Type, pr.Retained.Name, pr.Retained.Authority, pr.Current.Name, pr.Current.Authority)
		}
	}
	if len(s.LastChanges) > 0 {
		fmt.Fprintf(w, "\nlast profile changes (%d)\n", len(s.LastChanges))
		for _, ch := range s.LastChanges {
			fmt.Fprintf(w, "  %s\n", describeChange(ch))
		}
	}
	if len(s.PendingCommands) > 0 {
		fmt.Fprintf(w, "\npending commands (%d)\n", len(s.PendingCommands))
		for _, r := range s.PendingCommands {
			fmt.Fprintf(w, "  %s %s: %s\n", r.ID, r.Action, commandState(r))
		}
	}
	if len(s.Attention) > 0 {
		fmt.Fprintln(w, "\nattention")
		for _, a := range s.Attention {
			fmt.Fprintf(w, "  - %s\n", a)
		}
	}
}
