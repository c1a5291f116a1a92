// Command mdm-broker runs the MDM management service: the tenant's MDM
// authority, device enrollment and check-ins over MQTT (embedded broker,
// TLS), profiles, commands and the admin HTTP API.
//
//	mdm-broker serve [--data DIR] [--tenant ID] [--mqtt ADDR] [--admin ADDR] [--push-rate N]
//	mdm-broker serve --mqtt-url tls://HOST:PORT   (a client of an external broker)
//	mdm-broker cert server --name HOST            (a certificate for that broker)
//	mdm-broker authority set office365
//	mdm-broker devices list --authority intune
//
// Run it without arguments for the list of commands.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	flag "github.com/spf13/pflag"

	"github.com/mdm-authority/mdm/broker"
)

const usageHead = `Usage: mdm-broker <command> [flags]

Run the service:
  serve [--data DIR] [--tenant ID] [--mqtt ADDR] [--mqtt-name NAME ...]
        [--mqtt-tcp ADDR] [--admin ADDR] [--push-rate N] [--cert-validity D]
        [--retention D] [--time-scale N] [-v]
  serve --mqtt-url tls://HOST:PORT [--mqtt-cert FILE --mqtt-key FILE]
        [--mqtt-ca FILE] ...   (a client of an external broker, such as
        Mosquitto: see scripts/mosquitto)

Certificates from the service CA for an external broker:
  cert server --name HOST [--name HOST ...] [--out DIR] [--data DIR]
  cert service [--out DIR] [--data DIR]

Administer a running service (tables by default, --json for JSON; the
admin token is read from DATA/admin.token):
`

const usageTail = `

Add --help to any command for its flags.
`

func usage() string { return usageHead + adminUsage() + usageTail }

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage())
		os.Exit(2)
	}
	if os.Args[1] == "-h" || os.Args[1] == "--help" || os.Args[1] == "help" {
		fmt.Print(usage())
		return
	}
	if os.Args[1] == "cert" {
		if err := certCommand(os.Args[2:]); err != nil {
			fmt.Fprintf(os.Stderr, "mdm-broker cert: %v\n", err)
			os.Exit(1)
		}
		return
	}
	if os.Args[1] == "serve" {
		if err := serve(os.Args[2:]); err != nil {
			fmt.Fprintf(os.Stderr, "mdm-broker serve: %v\n", err)
			os.Exit(1)
		}
		return
	}
	ran, err := runAdmin(os.Args[1:])
	if !ran && adminGroup(os.Args[1]) {
		fmt.Fprintf(os.Stderr, "mdm-broker %s: name a subcommand:\n%s\n", os.Args[1], adminUsageFor(os.Args[1]))
		os.Exit(2)
	}
	if !ran {
		fmt.Fprintf(os.Stderr, "mdm-broker: unknown command %q\n\n%s", strings.Join(os.Args[1:min(3, len(os.Args))], " "), usage())
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "mdm-broker: %v\n", err)
		os.Exit(1)
	}
}

// defaultDataDir is the per-user state directory: $XDG_STATE_HOME or
// ~/.local/state, then mdm-broker.
func defaultDataDir() string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "mdm-broker")
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "mdm-broker-data"
	}
	return filepath.Join(home, ".local", "state", "mdm-broker")
}

// externalClockLead is how far in the past a scaled clock starts when the
// service is a client of an external broker: a run may last this much
// virtual time before the service's time passes the broker's real time.
const externalClockLead = 30 * 24 * time.Hour

// scaleLine is the banner's line for a scaled clock.
func scaleLine(scale float64, external bool) string {
	if scale == 1 {
		return ""
	}
	line := fmt.Sprintf("\n  clock              %g times real time (--time-scale: a virtual day in %s)", scale, (time.Duration(float64(24*time.Hour) / scale)).Round(time.Second))
	if external {
		line += fmt.Sprintf("\n                     started %s in the past: the broker checks certificates on real time,\n                     so a run can last %s of virtual time", externalClockLead, externalClockLead)
	}
	return line
}

// mqttLine is the banner's line for MQTT: the embedded broker's TLS
// listener, or the external broker.
func mqttLine(i broker.ServerInfo) string {
	if i.MQTTURL != "" {
		return fmt.Sprintf("MQTT broker        %s  (external; the service is its client %q)", i.MQTTURL, broker.ServiceIdentity)
	}
	return fmt.Sprintf("MQTT over TLS      %s", i.MQTTAddr)
}

// plainMQTT is the banner's line for the plain-MQTT listener, if any.
func plainMQTT(addr net.Addr) string {
	if addr == nil {
		return ""
	}
	return "\n  plain MQTT         " + addr.String() + "  (no TLS: devices use their connect token)"
}

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	data := fs.String("data", "", "directory of the store, the CA and the token files (default $XDG_STATE_HOME/mdm-broker or ~/.local/state/mdm-broker)")
	tenant := fs.String("tenant", "default", "tenant id, as it appears in the MQTT topics")
	mqttAddr := fs.String("mqtt", "127.0.0.1:8883", "address of MQTT over TLS")
	mqttNames := fs.StringArray("mqtt-name", nil, "a host name or IP address devices use to reach the service, added to its TLS certificate (repeat for several; localhost and loopback are always in)")
	tcpAddr := fs.String("mqtt-tcp", "", "also serve plain MQTT without TLS on this address, such as 127.0.0.1:1883 (off by default; devices authenticate with their connect token, in cleartext: loopback only unless --mqtt-tcp-allow-remote)")
	tcpRemote := fs.Bool("mqtt-tcp-allow-remote", false, "let --mqtt-tcp listen on a non-loopback address (a trusted load-test network, or behind a TLS-terminating proxy)")
	adminAddr := fs.String("admin", "127.0.0.1:8440", "address of the admin HTTP API (plain HTTP: loopback only unless --admin-allow-remote)")
	allowRemote := fs.Bool("admin-allow-remote", false, "let the admin API listen on a non-loopback address (put a TLS proxy in front of it)")
	pushRate := fs.Int("push-rate", 500, "most check-in pushes sent per second during a fan-out")
	validity := fs.Duration("cert-validity", 365*24*time.Hour, "lifetime of the device certificates the service issues")
	timeScale := fs.Float64("time-scale", 1, "run the service's clock this many times faster than real time (1 to 3600), for load tests with fleetsim --mqtt on a fresh --data directory; an 8-day scenario takes 8d/N")
	retention := fs.Duration("retention", broker.RetentionPeriod, "how long the previous authority's profiles stay on a device after an authority change (Intune: 7 days; shorter to watch a migration end, such as 10m)")
	mqttURL := fs.String("mqtt-url", "", "be a client of the external MQTT broker at this address, tls://HOST:PORT, instead of embedding one (Mosquitto: see scripts/mosquitto); --mqtt, --mqtt-name and --mqtt-tcp are then not used")
	mqttCert := fs.String("mqtt-cert", "", "with --mqtt-url: the service's client certificate (PEM); default one the service issues itself from its CA at each connection, common name "+broker.ServiceIdentity)
	mqttKey := fs.String("mqtt-key", "", "with --mqtt-url: the key of --mqtt-cert (PEM, mode 0600)")
	mqttCA := fs.String("mqtt-ca", "", "with --mqtt-url: the CA certificate that signed the broker's server certificate (default the service CA, DATA/ca.crt, which mdm-broker cert server uses)")
	verbose := fs.BoolP("verbose", "v", false, "log at debug level")
	fs.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage: mdm-broker serve [flags]\n\nRuns the management service until interrupted (Ctrl-C).\n\nFlags:\n%s", fs.FlagUsages())
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q: give the data directory with --data", fs.Arg(0))
	}
	if *retention <= 0 {
		return fmt.Errorf("--retention %s: want a positive duration, such as 168h (7 days, Intune's) or 10m", *retention)
	}
	if *mqttURL != "" {
		for _, name := range []string{"mqtt", "mqtt-name", "mqtt-tcp", "mqtt-tcp-allow-remote"} {
			if fs.Changed(name) {
				return fmt.Errorf("--%s and --mqtt-url exclude each other: on an external broker the service has no listener of its own; configure the broker's", name)
			}
		}
	} else {
		for _, name := range []string{"mqtt-cert", "mqtt-key", "mqtt-ca"} {
			if fs.Changed(name) {
				return fmt.Errorf("--%s needs --mqtt-url: it is for a client of an external broker", name)
			}
		}
	}
	var clock broker.Clock
	origin := time.Now()
	if *timeScale != 1 && *mqttURL != "" {
		// The external broker checks device certificates on real time:
		// the service's scaled time must stay behind it, or the
		// certificates it issues are not valid yet there.
		origin = origin.Add(-externalClockLead)
	}
	if *timeScale != 1 {
		c, err := broker.NewScaledClock(origin, *timeScale)
		if err != nil {
			return fmt.Errorf("--time-scale: %w", err)
		}
		clock = c
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	dir := *data
	if dir == "" {
		dir = defaultDataDir()
		logger.Info("no --data given: using the per-user default", "dir", dir)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return broker.RunServer(ctx, broker.ServerConfig{
		DataDir: dir, Tenant: *tenant, MQTTAddr: *mqttAddr, MQTTNames: *mqttNames,
		MQTTTCPAddr: *tcpAddr, MQTTTCPAllowRemote: *tcpRemote,
		MQTTURL: *mqttURL, MQTTCertFile: *mqttCert, MQTTKeyFile: *mqttKey, MQTTCAFile: *mqttCA,
		AdminAddr: *adminAddr, AdminAllowRemote: *allowRemote,
		PushRate: *pushRate, CertValidity: *validity, RetentionPeriod: *retention, Logger: logger, Clock: clock,
		Ready: func(i broker.ServerInfo) {
			fmt.Printf(`mdm-broker serving tenant %q
  %s%s
  admin API          %s
  data               %s
  admin token        %s
  enrollment token   %s
  CA certificate     %s  (devices need it to trust the service)
  retention          %s  (old authority's profiles after a change)%s
Press Ctrl-C to stop.
`, *tenant, mqttLine(i), plainMQTT(i.MQTTTCPAddr), i.AdminURL, i.DataDir, i.AdminTokenFile, i.EnrollmentTokenFile, i.CACertFile, *retention, scaleLine(*timeScale, i.MQTTURL != ""))
			if i.Repushed > 0 {
				logger.Info("pushes pending from the last run made due again", "count", i.Repushed)
			}
		},
	})
}

// certCommand writes certificates from the service CA for an external
// broker: its server certificate, or the service's client certificate.
func certCommand(args []string) error {
	if len(args) == 0 || (args[0] != "server" && args[0] != "service") {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			fmt.Print(certUsage)
			return nil
		}
		return fmt.Errorf("name what to issue:\n%s", certUsage)
	}
	kind := args[0]
	fs := flag.NewFlagSet("cert "+kind, flag.ContinueOnError)
	data := fs.String("data", "", "the service's data directory, where its CA is (created there if missing, as serve does; default as for serve)")
	tenant := fs.String("tenant", "default", "tenant id: names a CA created here, and goes into the service certificate")
	out := fs.String("out", "", "directory to write the certificate and key to (default the data directory)")
	validity := fs.Duration("validity", 365*24*time.Hour, "lifetime of the certificate")
	var names *[]string
	if kind == "server" {
		names = fs.StringArray("name", nil, "a host name or IP address clients use to reach the broker (repeat for several; at least one)")
	}
	fs.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage: mdm-broker cert %s [flags]\n\nFlags:\n%s", kind, fs.FlagUsages())
	}
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if names != nil && len(*names) == 0 {
		return errors.New("cert server needs --name HOST: the host name or IP address devices and the service use to reach the broker, such as --name mqtt.example.net --name 127.0.0.1")
	}
	dir := *data
	if dir == "" {
		dir = defaultDataDir()
	}
	if *out == "" {
		*out = dir
	}
	now := time.Now()
	ca, _, err := broker.LoadOrCreateCA(dir, *tenant, now)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(*out, 0o700); err != nil {
		return err
	}
	certPath, keyPath := filepath.Join(*out, kind+".crt"), filepath.Join(*out, kind+".key")
	if kind == "server" {
		err = ca.WriteServerCertificate(*names, now, *validity, certPath, keyPath)
	} else {
		err = ca.WriteServiceCertificate(*tenant, now, *validity, certPath, keyPath)
	}
	if err != nil {
		return err
	}
	fmt.Printf("%s certificate  %s\nkey                 %s\nCA certificate      %s\n", kind, certPath, keyPath, filepath.Join(dir, "ca.crt"))
	return nil
}

const certUsage = `Usage: mdm-broker cert server|service [flags]

  cert server --name HOST [--name HOST ...]
      the TLS server certificate of an external broker (Mosquitto's
      certfile and keyfile): server.crt, server.key
  cert service
      the service's client certificate for the broker (common name
      ` + broker.ServiceIdentity + `): service.crt, service.key. serve --mqtt-url
      issues itself one at each connection; this one is for
      serve --mqtt-cert/--mqtt-key, or for looking at the traffic with
      mosquitto_sub. Its key reads every device's messages: keep it safe.

Both come from the service CA in --data (created there if missing) and
are written to --out (default the data directory).
`
