package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	flag "github.com/spf13/pflag"

	"github.com/mdm-authority/mdm/broker"
	"github.com/mdm-authority/mdm/protocol"
)

// adminClient calls a running mdm-broker's admin API.
type adminClient = broker.AdminClient

// adminFlags adds the flags every admin command shares and returns a
// function that builds the client once they are parsed.
func adminFlags(fs *flag.FlagSet) (func() (*adminClient, error), *bool) {
	addr := fs.String("admin", "http://127.0.0.1:8440", "admin API of the running mdm-broker: a URL, or host:port as given to serve --admin")
	data := fs.String("data", "", "data directory of the running mdm-broker, where admin.token is (default as for serve)")
	tokenFile := fs.String("admin-token", "", "file holding the admin token (default DATA/admin.token)")
	asJSON := fs.Bool("json", false, "print the answer as JSON instead of a table")
	return func() (*adminClient, error) {
		path := *tokenFile
		if path == "" {
			dir := *data
			if dir == "" {
				dir = defaultDataDir()
			}
			path = filepath.Join(dir, "admin.token")
		}
		return broker.NewAdminClient(*addr, path)
	}, asJSON
}

// adminCommand is one admin subcommand: its usage line, its own flags and
// what it does with its arguments.
type adminCommand struct {
	usage string
	args  int // number of positional arguments
	flags func(*flag.FlagSet) func(ctx context.Context, c *adminClient, args []string, asJSON bool) error
}

var adminCommands = map[string]adminCommand{
	"authority show": {"authority show", 0, func(*flag.FlagSet) func(context.Context, *adminClient, []string, bool) error {
		return func(ctx context.Context, c *adminClient, _ []string, asJSON bool) error {
			var t broker.Tenant
			return show(ctx, c, "GET", "/v1/authority", nil, &t, asJSON, func(w io.Writer) {
				fmt.Fprintf(w, "authority\t%s\nepoch\t%d\n", t.Mode, t.Epoch)
				for _, ch := range t.Changes {
					fmt.Fprintf(w, "change %d\t%s -> %s at %s\n", ch.Epoch, ch.From, ch.To, ch.At.Format(time.RFC3339))
				}
				for _, a := range []protocol.Authority{protocol.AuthorityIntune, protocol.AuthorityOffice365} {
					at, ok := t.APNs[a]
					state := "not uploaded"
					if ok {
						state = "uploaded " + at.Format(time.RFC3339)
					}
					fmt.Fprintf(w, "APNs certificate (%s)\t%s\n", a, state)
				}
				for _, cs := range t.Consents {
					fmt.Fprintf(w, "consent\t%s for %s at %s\n", cs.Kind, cs.Authority, cs.At.Format(time.RFC3339))
				}
			})
		}
	}},
	"authority set": {"authority set intune|office365|coexistence", 1, func(*flag.FlagSet) func(context.Context, *adminClient, []string, bool) error {
		return func(ctx context.Context, c *adminClient, args []string, asJSON bool) error {
			var r struct {
				Change broker.AuthorityChange `json:"change"`
				Pushes int                    `json:"pushes_queued"`
			}
			return show(ctx, c, "PUT", "/v1/authority", map[string]string{"mode": args[0]}, &r, asJSON, func(w io.Writer) {
				fmt.Fprintf(w, "authority\t%s -> %s (epoch %d)\ndevices pushed\t%d\n", r.Change.From, r.Change.To, r.Change.Epoch, r.Pushes)
			})
		}
	}},
	"apns upload": {"apns upload intune|office365 --consent", 1, func(fs *flag.FlagSet) func(context.Context, *adminClient, []string, bool) error {
		consent := fs.Bool("consent", false, "record your consent to share data with Apple (required)")
		return func(ctx context.Context, c *adminClient, args []string, asJSON bool) error {
			var r map[string]any
			return show(ctx, c, "POST", "/v1/apns", map[string]any{"authority": args[0], "consent": *consent}, &r, asJSON, func(w io.Writer) {
				fmt.Fprintf(w, "APNs certificate\trecorded for %s\ndevices pushed\t%v\n", args[0], r["pushes_queued"])
			})
		}
	}},
	"profile list": {"profile list", 0, func(*flag.FlagSet) func(context.Context, *adminClient, []string, bool) error {
		return func(ctx context.Context, c *adminClient, _ []string, asJSON bool) error {
			var ps []broker.Profile
			return show(ctx, c, "GET", "/v1/profiles", nil, &ps, asJSON, func(w io.Writer) {
				fmt.Fprintln(w, "AUTHORITY\tTYPE\tNAME\tVERSION\tSETTINGS")
				for _, p := range ps {
					fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%d\n", p.Authority, p.Type, p.Name, p.Version, len(p.Settings))
				}
			})
		}
	}},
	"profile add": {"profile add AUTHORITY TYPE NAME [--set key=value ...]   (authority: intune, office365; type: email, vpn, certificate, wifi, configuration, compliance)", 3, func(fs *flag.FlagSet) func(context.Context, *adminClient, []string, bool) error {
		set := fs.StringArray("set", nil, "a setting, key=value; repeat for several")
		return func(ctx context.Context, c *adminClient, args []string, asJSON bool) error {
			settings := map[string]string{}
			for _, kv := range *set {
				k, v, ok := strings.Cut(kv, "=")
				if !ok {
					return fmt.Errorf("--set %q: want key=value", kv)
				}
				settings[k] = v
			}
			var r struct {
				Profile broker.Profile `json:"profile"`
				Pushes  int            `json:"pushes_queued"`
			}
			path := "/v1/profiles/" + url.PathEscape(args[0]) + "/" + url.PathEscape(args[1]) + "/" + url.PathEscape(args[2])
			return show(ctx, c, "PUT", path, map[string]any{"settings": settings}, &r, asJSON, func(w io.Writer) {
				fmt.Fprintf(w, "profile\t%s %s %q version %d\ndevices pushed\t%d\n", r.Profile.Authority, r.Profile.Type, r.Profile.Name, r.Profile.Version, r.Pushes)
			})
		}
	}},
	"profile remove": {"profile remove AUTHORITY TYPE NAME", 3, func(*flag.FlagSet) func(context.Context, *adminClient, []string, bool) error {
		return func(ctx context.Context, c *adminClient, args []string, asJSON bool) error {
			var r map[string]any
			path := "/v1/profiles/" + url.PathEscape(args[0]) + "/" + url.PathEscape(args[1]) + "/" + url.PathEscape(args[2])
			return show(ctx, c, "DELETE", path, nil, &r, asJSON, func(w io.Writer) {
				fmt.Fprintf(w, "removed\t%s\ndevices pushed\t%v\n", args[2], r["pushes_queued"])
			})
		}
	}},
	"license set": {"license set USER --intune=true|false", 1, func(fs *flag.FlagSet) func(context.Context, *adminClient, []string, bool) error {
		intune := fs.Bool("intune", true, "the user has an Intune (or EMS) license")
		return func(ctx context.Context, c *adminClient, args []string, asJSON bool) error {
			var r map[string]any
			return show(ctx, c, "PUT", "/v1/licenses/"+url.PathEscape(args[0]), map[string]bool{"intune": *intune}, &r, asJSON, func(w io.Writer) {
				fmt.Fprintf(w, "user\t%s\nintune license\t%v\ndevices pushed\t%v\n", args[0], *intune, r["pushes_queued"])
			})
		}
	}},
	"devices list": {"devices list [--authority A] [--platform P] [--state S] [--needs-support]", 0, func(fs *flag.FlagSet) func(context.Context, *adminClient, []string, bool) error {
		authority := fs.String("authority", "", "only devices on this authority")
		platform := fs.String("platform", "", "only devices of this platform: ios, ipados, macos, android, windows")
		state := fs.String("state", "", "only devices in this state (enrolled, wiped, retired, unenrolled)")
		support := fs.Bool("needs-support", false, "only userless devices left on the previous authority")
		return func(ctx context.Context, c *adminClient, _ []string, asJSON bool) error {
			q := url.Values{}
			for k, v := range map[string]string{"authority": *authority, "platform": *platform, "state": *state} {
				if v != "" {
					q.Set(k, v)
				}
			}
			if *support {
				q.Set("needs_support", "true")
			}
			var ds []broker.Device
			return show(ctx, c, "GET", "/v1/devices?"+q.Encode(), nil, &ds, asJSON, func(w io.Writer) {
				fmt.Fprintln(w, "ID\tPLATFORM\tUSER\tAUTHORITY\tSTATE\tLAST CHECK-IN\tLAST ERROR\tSUPPORT")
				for _, d := range ds {
					support := ""
					if d.NeedsSupport {
						support = "needs support"
					}
					lastErr := "-"
					if d.LastError != protocol.CodeNone {
						lastErr = d.LastError.String()
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.ID, d.Platform, orDash(d.User), d.Authority, d.State,
						when(d.LastCheckIn), lastErr, support)
				}
			})
		}
	}},
	"devices show": {"devices show ID", 1, func(*flag.FlagSet) func(context.Context, *adminClient, []string, bool) error {
		return func(ctx context.Context, c *adminClient, args []string, asJSON bool) error {
			var raw json.RawMessage
			if err := c.Do(ctx, "GET", "/v1/devices/"+url.PathEscape(args[0]), nil, &raw); err != nil {
				return err
			}
			var out bytes.Buffer
			json.Indent(&out, raw, "", "  ")
			_, err := os.Stdout.Write(out.Bytes())
			return err
		}
	}},
	"devices migrate": {"devices migrate ID   (a userless device left on the previous authority)", 1, func(*flag.FlagSet) func(context.Context, *adminClient, []string, bool) error {
		return func(ctx context.Context, c *adminClient, args []string, asJSON bool) error {
			var d broker.Device
			return show(ctx, c, "POST", "/v1/devices/"+url.PathEscape(args[0])+"/migrate", nil, &d, asJSON, func(w io.Writer) {
				fmt.Fprintf(w, "device\t%s\nauthority\t%s -> %s\n", d.ID, d.PreviousAuthority, d.Authority)
			})
		}
	}},
	"device remove": {"device remove ID   (revoke at once: a lost device, one that will not acknowledge retire or wipe)", 1, func(*flag.FlagSet) func(context.Context, *adminClient, []string, bool) error {
		return func(ctx context.Context, c *adminClient, args []string, asJSON bool) error {
			var r map[string]string
			return show(ctx, c, "DELETE", "/v1/devices/"+url.PathEscape(args[0]), nil, &r, asJSON, func(w io.Writer) {
				fmt.Fprintf(w, "removed	%s (its certificate and connect token are refused; it can enroll again as a new device)\n", r["removed"])
			})
		}
	}},
	"migration status": {"migration status", 0, func(*flag.FlagSet) func(context.Context, *adminClient, []string, bool) error {
		return func(ctx context.Context, c *adminClient, _ []string, asJSON bool) error {
			var st broker.MigrationStatus
			return show(ctx, c, "GET", "/v1/migration", nil, &st, asJSON, func(w io.Writer) {
				fmt.Fprintf(w, "authority\t%s (epoch %d, changed %s)\nmanaged devices\t%d\n", st.Mode, st.Epoch, when(st.ChangedAt), st.Devices)
				for _, a := range []protocol.Authority{protocol.AuthorityIntune, protocol.AuthorityOffice365} {
					fmt.Fprintf(w, "  on %s\t%d\n", a, st.ByAuthority[a])
				}
				fmt.Fprintf(w, "pending (not checked in since the change)\t%d\npushes queued\t%d (retried: %d)\nstranded userless\t%d\n",
					st.Pending, st.PushesQueued, st.Retried, st.Stranded)
				codes := make([]string, 0, len(st.FailedByCode))
				for code, n := range st.FailedByCode {
					codes = append(codes, fmt.Sprintf("  %s\t%d", code, n))
				}
				sort.Strings(codes)
				fmt.Fprintf(w, "failed latest check-in\t\n%s", strings.Join(append(codes, ""), "\n"))
				fmt.Fprintf(w, "compliance reported in the last 24 h\t%d (older: %d, never: %d)\n", st.ComplianceFresh, st.ComplianceStale, st.ComplianceNever)
			})
		}
	}},
	"enrollment-token rotate": {"enrollment-token rotate", 0, func(*flag.FlagSet) func(context.Context, *adminClient, []string, bool) error {
		return func(ctx context.Context, c *adminClient, _ []string, asJSON bool) error {
			var r map[string]string
			return show(ctx, c, "POST", "/v1/enrollment-token", nil, &r, asJSON, func(w io.Writer) {
				fmt.Fprintf(w, "enrollment token\t%s\n(the previous token no longer enrolls devices; the token file of the service holds the new one)\n", r["enrollment_token"])
			})
		}
	}},
}

func init() {
	for _, action := range []string{"lock", "wipe", "retire", "sync"} {
		kind := map[string]string{"lock": "remote_lock", "wipe": "wipe", "retire": "retire", "sync": "sync"}[action]
		adminCommands["device "+action] = adminCommand{"device " + action + " ID", 1, func(fs *flag.FlagSet) func(context.Context, *adminClient, []string, bool) error {
			message := fs.String("message", "", "message shown on the lock screen (lock only)")
			return func(ctx context.Context, c *adminClient, args []string, asJSON bool) error {
				if *message != "" && kind != "remote_lock" {
					return fmt.Errorf("--message goes with device lock only")
				}
				var cmd broker.Command
				return show(ctx, c, "POST", "/v1/devices/"+url.PathEscape(args[0])+"/commands", map[string]string{"action": kind, "message": *message}, &cmd, asJSON, func(w io.Writer) {
					fmt.Fprintf(w, "command\t%s %s\ndevice\t%s\nstate\t%s (delivered at its next check-in; a push asks for it)\n", cmd.Action, cmd.ID, cmd.Device, cmd.State)
				})
			}
		}}
	}
}

// show calls the API and prints the answer as JSON or through table.
func show(ctx context.Context, c *adminClient, method, path string, body, out any, asJSON bool, table func(io.Writer)) error {
	var raw json.RawMessage
	if err := c.Do(ctx, method, path, body, &raw); err != nil {
		return err
	}
	if asJSON {
		var b bytes.Buffer
		json.Indent(&b, raw, "", "  ")
		_, err := os.Stdout.Write(b.Bytes())
		return err
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("unexpected answer from the admin API: %w", err)
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	table(w)
	return w.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func when(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.Local().Format("2006-01-02 15:04:05")
}

// runAdmin runs the admin command named by the first one or two words of
// args.
func runAdmin(args []string) (bool, error) {
	if len(args) < 2 {
		return false, nil
	}
	name := args[0] + " " + args[1]
	cmd, ok := adminCommands[name]
	if !ok {
		return false, nil
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	run := cmd.flags(fs)
	client, asJSON := adminFlags(fs)
	fs.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage: mdm-broker %s\n\nFlags:\n%s", cmd.usage, fs.FlagUsages())
	}
	if err := fs.Parse(args[2:]); err != nil {
		if err == flag.ErrHelp {
			return true, nil
		}
		return true, err
	}
	if fs.NArg() != cmd.args {
		fs.Usage()
		return true, fmt.Errorf("%s takes %d argument(s), got %d", name, cmd.args, fs.NArg())
	}
	c, err := client()
	if err != nil {
		return true, err
	}
	return true, run(context.Background(), c, fs.Args(), *asJSON)
}

// adminGroup reports whether word starts some admin command.
func adminGroup(word string) bool { return adminUsageFor(word) != "" }

// adminUsageFor lists the usage of the admin commands starting with word.
func adminUsageFor(word string) string {
	var lines []string
	for name, c := range adminCommands {
		if strings.HasPrefix(name, word+" ") {
			lines = append(lines, "  mdm-broker "+c.usage)
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// adminUsage lists the admin commands for the main usage text.
func adminUsage() string {
	names := make([]string, 0, len(adminCommands))
	for _, c := range adminCommands {
		names = append(names, "  "+c.usage)
	}
	sort.Strings(names)
	return strings.Join(names, "\n")
}
