package broker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"
)

// ServerConfig configures RunServer: the whole service in one process.
type ServerConfig struct {
	// DataDir holds the store, the CA and the token files.
	DataDir string
	// Tenant is the tenant id; default "default".
	Tenant string
	// MQTTAddr is where MQTT over TLS listens, such as "127.0.0.1:8883".
	MQTTAddr string
	// MQTTNames are extra host names and IP addresses for the TLS server
	// certificate, besides localhost and the loopback addresses: the names
	// devices use to reach the service.
	MQTTNames []string
	// MQTTTCPAddr, when set, is where plain MQTT (no TLS) listens as well.
	// Devices authenticate there with their connect token, which crosses
	// the network in cleartext, so it must be a loopback address unless
	// MQTTTCPAllowRemote is set.
	MQTTTCPAddr        string
	MQTTTCPAllowRemote bool
	// MQTTURL, when set, makes the service a client of an external MQTT
	// broker at this address (tls://HOST:PORT) instead of embedding one
	// (see Remote); MQTTAddr, MQTTNames and MQTTTCPAddr are then unused.
	// The broker authenticates the devices and keeps them to their own
	// topics (scripts/mosquitto configures Mosquitto to), checking
	// certificates on real time: on a ScaledClock, start the clock in the
	// past by at least the length of the run, or the device certificates
	// the service issues are not yet valid there. Removing a device does
	// not end its session on such a broker.
	MQTTURL string
	// MQTTCertFile and MQTTKeyFile are the service's TLS client
	// certificate and key (PEM) for the external broker. By default the
	// service issues itself one from its CA at each connection, with the
	// common name ServiceIdentity (mdm-broker cert service writes the same
	// kind to files).
	MQTTCertFile, MQTTKeyFile string
	// MQTTCAFile is the CA certificate (PEM) the external broker's server
	// certificate is checked against; default the service CA, which signs
	// the one mdm-broker cert server writes.
	MQTTCAFile string
	// AdminAddr is where the admin HTTP API listens, such as
	// "127.0.0.1:8440". It speaks plain HTTP, so it must be a loopback
	// address unless AdminAllowRemote is set.
	AdminAddr        string
	AdminAllowRemote bool
	// PushRate is the most pushes the fan-out sends per second.
	PushRate int
	// CertValidity is the lifetime of device certificates.
	CertValidity time.Duration
	// RetentionPeriod is how long the previous authority's profiles stay
	// on a device after a change; default 7 days.
	RetentionPeriod time.Duration
	// Logger receives the log; default discards it.
	Logger *slog.Logger
	// Clock is the time source; default the real clock. The fan-out and
	// housekeeping tick on real time: RunServer is the real-time entry
	// point, and the simulator drives Service and Broker on its own clock.
	Clock Clock
	// Ready, when set, is called once everything listens.
	Ready func(ServerInfo)
}

// ServerInfo tells where a running server listens and keeps its files.
type ServerInfo struct {
	// MQTTAddr is the embedded broker's TLS listener; nil on an external
	// broker.
	MQTTAddr net.Addr
	// MQTTURL is the external broker the service is a client of; empty
	// with the embedded broker.
	MQTTURL string
	// MQTTTCPAddr is the plain-MQTT listener's address; nil without one.
	MQTTTCPAddr         net.Addr
	AdminURL            string
	DataDir             string
	AdminTokenFile      string
	EnrollmentTokenFile string
	CACertFile          string
	// CreatedCA is true on the first start, when the CA was created.
	CreatedCA bool
	// Repushed counts the pushes made due again at start.
	Repushed int
}

// fanOutInterval is the fan-out's tick; the rate is spread over the ticks.
const fanOutInterval = 100 * time.Millisecond

// RunServer runs the management service until ctx is done: the store and
// CA in cfg.DataDir, the embedded MQTT broker over TLS (or, with
// cfg.MQTTURL, a client of an external broker), the admin API, the
// rate-limited fan-out and hourly housekeeping. On the first start it
// creates the CA, an admin token and an enrollment token, each in a file
// only the owner can read. It returns nil after a clean shutdown.
func RunServer(ctx context.Context, cfg ServerConfig) error {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = realClock{}
	}
	if cfg.PushRate <= 0 {
		return fmt.Errorf("push rate %d: must be at least 1 push per second", cfg.PushRate)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	if !cfg.AdminAllowRemote && !loopback(cfg.AdminAddr) {
		return fmt.Errorf("admin API on %s: it speaks plain HTTP, so its token would cross the network in cleartext; use a loopback address (127.0.0.1:8440) or pass --admin-allow-remote behind a TLS proxy", cfg.AdminAddr)
	}
	if cfg.MQTTURL != "" && cfg.MQTTTCPAddr != "" {
		return fmt.Errorf("plain MQTT on %s: the service serves no listener of its own on an external broker (%s); configure the broker's listeners instead", cfg.MQTTTCPAddr, cfg.MQTTURL)
	}
	if cfg.MQTTTCPAddr != "" && !cfg.MQTTTCPAllowRemote && !loopback(cfg.MQTTTCPAddr) {
		return fmt.Errorf("plain MQTT on %s: device connect tokens and the enrollment token would cross the network in cleartext; use a loopback address (127.0.0.1:1883), MQTT over TLS (--mqtt), or pass --mqtt-tcp-allow-remote on a trusted network or behind a TLS proxy", cfg.MQTTTCPAddr)
	}
	info := ServerInfo{
		DataDir:             cfg.DataDir,
		AdminTokenFile:      filepath.Join(cfg.DataDir, "admin.token"),
		EnrollmentTokenFile: filepath.Join(cfg.DataDir, "enrollment.token"),
		CACertFile:          filepath.Join(cfg.DataDir, "ca.crt"),
	}
	store, err := OpenStore(filepath.Join(cfg.DataDir, "mdm.db"))
	if err != nil {
		return err
	}
	defer store.Close()
	tenant := cfg.Tenant
	if tenant == "" {
		tenant = "default"
	}
	if err := store.ClaimTenant(tenant); err != nil {
		return err
	}
	ca, created, err := LoadOrCreateCA(cfg.DataDir, tenant, cfg.Clock.Now())
	if err != nil {
		return err
	}
	info.CreatedCA = created
	svc, err := NewService(store, ca, Options{Tenant: tenant, Clock: cfg.Clock, Logger: cfg.Logger, CertValidity: cfg.CertValidity, RetentionPeriod: cfg.RetentionPeriod,
		EnrollmentTokenFile: info.EnrollmentTokenFile})
	if err != nil {
		return err
	}
	adminToken, err := loadOrCreateSecret(info.AdminTokenFile, "adm-")
	if err != nil {
		return err
	}
	if err := ensureEnrollmentToken(svc, store, info.EnrollmentTokenFile); err != nil {
		return err
	}
	if info.Repushed, err = svc.RepushPending(); err != nil {
		return err
	}

	var pub publisher
	if cfg.MQTTURL != "" {
		tlsConf, err := remoteTLS(cfg, ca, tenant)
		if err != nil {
			return err
		}
		remote, err := NewRemote(svc, RemoteConfig{URL: cfg.MQTTURL, TLS: tlsConf, Logger: cfg.Logger})
		if err != nil {
			return err
		}
		if err := remote.start(ctx); err != nil {
			return err
		}
		// Deferred, so that it runs once the fan-out has stopped
		// publishing.
		defer remote.stop()
		info.MQTTURL, pub = remote.cfg.URL, remote
	} else {
		b, err := serveEmbedded(cfg, svc, &info)
		if err != nil {
			return err
		}
		defer b.Close()
		pub = b
	}

	adminLn, err := net.Listen("tcp", cfg.AdminAddr)
	if err != nil {
		return fmt.Errorf("admin API: %w", err)
	}
	info.AdminURL = "http://" + adminLn.Addr().String()
	admin := &http.Server{Handler: NewAdminHandler(svc, adminToken, cfg.Logger), ReadHeaderTimeout: 10 * time.Second}

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := admin.Serve(adminLn); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("admin API: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return admin.Shutdown(shutdown)
	})
	g.Go(func() error {
		scale := 1.0
		if c, ok := cfg.Clock.(*ScaledClock); ok {
			scale = c.Scale()
		}
		interval, perTick := fanOutPace(cfg.PushRate, scale)
		t := time.NewTicker(interval)
		defer t.Stop()
		err := runFanOut(ctx, svc, pub, cfg.Logger, t.C, perTick)
		if errors.Is(err, context.Canceled) {
			return nil
		}
		return err
	})
	g.Go(func() error {
		t := time.NewTicker(time.Hour)
		defer t.Stop()
		for {
			if removed, err := svc.Housekeep(); err != nil {
				cfg.Logger.Error("housekeeping", "err", err)
			} else if len(removed) > 0 {
				cfg.Logger.Info("housekeeping removed devices", "count", len(removed))
			}
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
			}
		}
	})
	if cfg.Ready != nil {
		cfg.Ready(info)
	}
	return g.Wait()
}

// serveEmbedded starts the embedded broker and its listeners.
func serveEmbedded(cfg ServerConfig, svc *Service, info *ServerInfo) (*Broker, error) {
	b, err := NewBroker(svc, cfg.Logger)
	if err != nil {
		return nil, err
	}
	names := []string{"localhost", "127.0.0.1", "::1"}
	if host, _, _ := net.SplitHostPort(cfg.MQTTAddr); host != "" {
		if ip := net.ParseIP(host); ip == nil || !ip.IsUnspecified() {
			names = append(names, host)
		}
	}
	for _, n := range cfg.MQTTNames {
		if !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	if info.MQTTAddr, err = b.ListenTLS(cfg.MQTTAddr, names); err != nil {
		return nil, err
	}
	if cfg.MQTTTCPAddr != "" {
		if info.MQTTTCPAddr, err = b.ListenTCP(cfg.MQTTTCPAddr); err != nil {
			return nil, err
		}
	}
	if err := b.Serve(); err != nil {
		return nil, fmt.Errorf("start MQTT broker: %w", err)
	}
	return b, nil
}

// fanOutPace spreads a rate of pushes per second over ticks: ten a second
// with rate/10 pushes each, or, below 10 per second, one push per tick;
// the tick is always perTick/rate seconds, so the rate is exact.
// On a clock scale times faster than real time the ticks are that much
// closer (down to 5 ms), so that a push still goes out within about a
// tenth of a virtual second's worth of ticks, at the same rate per real
// second.
func fanOutPace(rate int, scale float64) (time.Duration, int) {
	interval := max(time.Duration(float64(fanOutInterval)/max(scale, 1)), 5*time.Millisecond)
	perTick := max(int(float64(rate)*interval.Seconds()), 1)
	return time.Duration(perTick) * time.Second / time.Duration(rate), perTick
}

// loopback reports whether addr (host:port) is on a loopback address.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// loadOrCreateSecret reads a token from path, or creates a random one
// there (mode 0600) on first use.
func loadOrCreateSecret(path, prefix string) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
			return "", fmt.Errorf("%s is readable by others (mode %v); run chmod 600 %s", path, fi.Mode().Perm(), path)
		}
		tok := strings.TrimSpace(string(b))
		if tok == "" {
			return "", fmt.Errorf("%s is empty; delete it to have a new token created", path)
		}
		return tok, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	var r [24]byte
	if _, err := rand.Read(r[:]); err != nil {
		return "", err
	}
	tok := prefix + hex.EncodeToString(r[:])
	return tok, writeFileAtomic(path, []byte(tok+"\n"), 0o600)
}

// ensureEnrollmentToken creates the enrollment token on the first start;
// later starts keep the one in the store (only its hash is there) and its
// file.
func ensureEnrollmentToken(svc *Service, store *Store, path string) error {
	var hash []byte
	if err := store.View(func(tx *Tx) error { hash = tx.TokenHash(); return nil }); err != nil {
		return err
	}
	if hash != nil {
		fi, err := os.Stat(path)
		switch {
		case err != nil:
			svc.opts.Logger.Warn("enrollment token file missing; rotate the token to write a new one", "file", path)
		case fi.Mode().Perm()&0o077 != 0:
			return fmt.Errorf("%s is readable by others (mode %v); run chmod 600 %s", path, fi.Mode().Perm(), path)
		}
		return nil
	}
	_, err := svc.RotateEnrollmentToken()
	return err
}

// writeFileAtomic writes data to path through a temporary file in the same
// directory, synced and renamed: a crash leaves the old file or the new.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
