package broker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net/url"
	"os"
	"runtime"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/mdm-authority/mdm/protocol"
)

// ServiceIdentity is the common name of the service's client certificate
// on an external broker: with Mosquitto's use_identity_as_username it is
// the service's user name, which its ACL file gives every uplink and
// enrollment request to read and every downlink and enrollment answer to
// write. No device can have it: the service names devices "d-…".
const ServiceIdentity = "mdm-service"

// publisher sends the service's answers and pushes to devices: the
// embedded broker, or the service's client of an external broker.
type publisher interface {
	publish(out []Outgoing)
}

// runFanOut publishes the pushes that are due through p, at most perTick
// of them at each tick, until ctx is done (see Broker.RunFanOut).
func runFanOut(ctx context.Context, svc *Service, p publisher, log *slog.Logger, ticks <-chan time.Time, perTick int) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ticks:
			out, err := svc.DuePushes(perTick)
			if err != nil {
				return fmt.Errorf("fan-out: %w", err)
			}
			p.publish(out)
			if len(out) > 0 {
				log.Debug("pushes published", "count", len(out))
			}
		}
	}
}

// RemoteConfig configures the service's client of an external broker.
type RemoteConfig struct {
	// URL is the broker's address: tls://HOST:PORT (ssl:// and mqtts://
	// are taken as tls://). The service always connects over TLS, since
	// it proves its identity with a client certificate.
	URL string
	// TLS is the client's TLS configuration: RootCAs to trust the
	// broker's server certificate, and Certificates or
	// GetClientCertificate for the service's own.
	TLS *tls.Config
	// ClientID is the service's MQTT client id; default ServiceIdentity.
	// Mosquitto with use_username_as_clientid replaces it with the
	// certificate's common name anyway.
	ClientID string
	// Logger receives the log; default discards it.
	Logger *slog.Logger
	// Workers is how many messages the service handles at once; default
	// 64. Messages of one device go to one worker, in order.
	Workers int
}

// Remote attaches the service to an external MQTT broker (Mosquitto, a
// RabbitMQ, EMQX or VerneMQ cluster) as one of its clients, instead of
// embedding a broker: it subscribes to every uplink and enrollment request
// of its tenant (QoS 1), hands each message to Service.HandleMessage and
// publishes the answers. The broker authenticates devices and keeps them
// to their own topics (scripts/mosquitto has a configuration that does
// what the embedded broker does).
//
// A message is acknowledged once it has been handled, on a persistent
// session (clean session off): a message that arrives while the service
// is away or restarting waits at the broker, and one that was being
// handled when the connection broke comes again, which the service
// recognises (a check-in is answered as replayed, an enrollment request
// gets its first answer again).
//
// What the embedded broker does and an external one cannot be asked to:
// removing a device does not end its live session (the broker keeps it
// until the device disconnects; the service refuses its messages from
// then on), and nothing counts refused connections or topic accesses
// (see the broker's own log and metrics).
type Remote struct {
	svc    *Service
	cfg    RemoteConfig
	log    *slog.Logger
	drops  *rateLog // dropped device messages
	pubErr *rateLog // failed publishes
	client paho.Client

	queues   []chan paho.Message
	stopping chan struct{}
	workers  sync.WaitGroup
	// firstSub carries the outcome of the first subscription to connect.
	firstSub chan error
	first    sync.Once
}

// NewRemote returns the service's client of the broker at cfg.URL. It
// does not connect yet: Run does.
func NewRemote(svc *Service, cfg RemoteConfig) (*Remote, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || u.Host == "" || u.Port() == "" {
		return nil, fmt.Errorf("MQTT broker URL %q: want tls://HOST:PORT, such as tls://127.0.0.1:8883", cfg.URL)
	}
	switch u.Scheme {
	case "tls", "ssl", "mqtts":
		u.Scheme = "tls"
	case "tcp", "mqtt":
		return nil, fmt.Errorf("MQTT broker URL %q: the service proves its identity to the broker with a client certificate, so it connects over TLS only; use tls://%s", cfg.URL, u.Host)
	default:
		return nil, fmt.Errorf("MQTT broker URL %q: scheme %q; want tls://HOST:PORT", cfg.URL, u.Scheme)
	}
	if cfg.TLS == nil {
		return nil, errors.New("MQTT broker: no TLS configuration for the service's client")
	}
	if cfg.ClientID == "" {
		cfg.ClientID = ServiceIdentity
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 64
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.URL = u.String()
	r := &Remote{svc: svc, cfg: cfg, log: cfg.Logger,
		drops: newRateLog(cfg.Logger, svc.opts.Clock), pubErr: newRateLog(cfg.Logger, svc.opts.Clock),
		queues: make([]chan paho.Message, cfg.Workers), stopping: make(chan struct{}), firstSub: make(chan error, 1)}
	for i := range r.queues {
		r.queues[i] = make(chan paho.Message, 16)
	}
	opts := paho.NewClientOptions().AddBroker(cfg.URL).SetClientID(cfg.ClientID).SetTLSConfig(cfg.TLS).
		SetProtocolVersion(4).
		// A persistent session: the broker keeps the subscriptions and
		// queues uplinks while the service is away.
		SetCleanSession(false).
		// The handler only queues a message for its device's worker,
		// which acknowledges it once handled.
		SetOrderMatters(true).SetAutoAckDisabled(true).
		SetKeepAlive(30 * time.Second).SetPingTimeout(10 * time.Second).
		SetConnectTimeout(10 * time.Second).SetWriteTimeout(10 * time.Second).
		SetAutoReconnect(true).SetMaxReconnectInterval(10 * time.Second).
		SetDefaultPublishHandler(r.onMessage).
		SetOnConnectHandler(r.onConnect).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			r.log.Warn("connection to the MQTT broker lost; reconnecting", "broker", cfg.URL, "err", err)
		}).
		SetReconnectingHandler(func(paho.Client, *paho.ClientOptions) {
			r.log.Info("reconnecting to the MQTT broker", "broker", cfg.URL)
		})
	r.client = paho.NewClient(opts)
	return r, nil
}

// connect makes the first connection and subscription, so that a broker
// that is down, refuses the certificate or refuses the subscription stops
// the start with an error that says so; later losses are reconnected.
func (r *Remote) connect(ctx context.Context) error {
	tok := r.client.Connect()
	select {
	case <-tok.Done():
	case <-ctx.Done():
		r.client.Disconnect(0)
		return ctx.Err()
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("connect to MQTT broker %s: %w (is it running, does it trust the service CA's certificate %s, and does its ACL give user %q the service's topics? see scripts/mosquitto)",
			r.cfg.URL, err, caCertFile, ServiceIdentity)
	}
	select {
	case err := <-r.firstSub:
		if err != nil {
			r.client.Disconnect(250)
		}
		return err
	case <-ctx.Done():
		r.client.Disconnect(0)
		return ctx.Err()
	}
}

// onConnect subscribes after every connection, the first and each
// reconnection: a broker that lost the session (one restarted without
// persistence) gets the subscriptions again.
func (r *Remote) onConnect(paho.Client) {
	err := r.subscribe()
	first := false
	r.first.Do(func() { r.firstSub <- err; first = true })
	switch {
	case first:
	case err != nil:
		r.log.Error("reconnected to the MQTT broker, but could not subscribe", "broker", r.cfg.URL, "err", err)
	default:
		r.log.Info("reconnected to the MQTT broker", "broker", r.cfg.URL)
	}
}

// subscribe subscribes to the service's topics.
func (r *Remote) subscribe() error {
	filters := map[string]byte{}
	for _, f := range protocol.ServiceFilters(r.svc.opts.Tenant) {
		filters[f] = 1
	}
	tok := r.client.SubscribeMultiple(filters, r.onMessage)
	if !tok.WaitTimeout(30 * time.Second) {
		return fmt.Errorf("subscribe on MQTT broker %s: no answer within 30 s", r.cfg.URL)
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("subscribe on MQTT broker %s: %w", r.cfg.URL, err)
	}
	for f, code := range tok.(*paho.SubscribeToken).Result() {
		if code > 2 {
			return fmt.Errorf("MQTT broker %s refused the service's subscription to %s: its ACL must let user %q read the uplink and enrollment request topics (see scripts/mosquitto)", r.cfg.URL, f, ServiceIdentity)
		}
	}
	r.log.Debug("subscribed", "broker", r.cfg.URL)
	return nil
}

// onMessage queues a message for the worker of its topic (its device or
// enrollment request), so that each device's messages are handled in
// order while many devices' are handled at once. It runs on paho's one
// delivery goroutine; when the workers are busy it waits, which stops
// reading from the broker, whose in-flight window bounds the backlog.
func (r *Remote) onMessage(_ paho.Client, m paho.Message) {
	h := fnv.New32a()
	h.Write([]byte(m.Topic()))
	select {
	case r.queues[h.Sum32()%uint32(len(r.queues))] <- m:
	case <-r.stopping:
		// Not acknowledged: the broker delivers it again to the next
		// session.
	}
}

// work handles the messages of one queue until the client stops.
func (r *Remote) work(q chan paho.Message) {
	defer r.workers.Done()
	for {
		select {
		case <-r.stopping:
			return
		case m := <-q:
			out, err := r.svc.HandleMessage(context.Background(), m.Topic(), m.Payload())
			if err != nil {
				r.drops.Warn("device message dropped", "topic", m.Topic(), "bytes", len(m.Payload()),
					"reason", dropNames[dropReason(err)], "err", err)
			}
			r.publish(out)
			m.Ack()
		}
	}
}

// publish sends out without waiting for the broker's acknowledgements:
// paho delivers them on the goroutine that also delivers messages, which
// may be waiting for a worker. Unlike the embedded broker, it cannot tell
// whether the device is connected, so it publishes anyway.
func (r *Remote) publish(out []Outgoing) {
	for _, o := range out {
		tok := r.client.Publish(o.Topic, o.QoS, false, o.Payload)
		select {
		case <-tok.Done():
			if err := tok.Error(); err != nil {
				r.pubErr.Warn("publish failed", "topic", o.Topic, "err", err)
			}
		default:
			go func() {
				<-tok.Done()
				if err := tok.Error(); err != nil {
					r.pubErr.Warn("publish failed", "topic", o.Topic, "err", err)
				}
			}()
		}
	}
}

// Run connects to the broker, subscribes and handles the service's
// messages until ctx is done, reconnecting (and subscribing again) when
// the connection is lost. It returns an error when the first connection
// or subscription fails, and nil after a clean shutdown: the messages
// being handled are finished and answered, the others stay with the
// broker for the next session.
func (r *Remote) Run(ctx context.Context) error {
	if err := r.start(ctx); err != nil {
		return err
	}
	<-ctx.Done()
	r.stop()
	return nil
}

// start makes the first connection and starts the workers.
func (r *Remote) start(ctx context.Context) error {
	for _, q := range r.queues {
		r.workers.Add(1)
		go r.work(q)
	}
	if err := r.connect(ctx); err != nil {
		close(r.stopping)
		r.workers.Wait()
		return err
	}
	r.log.Info("connected to the MQTT broker", "broker", r.cfg.URL, "client", r.cfg.ClientID)
	return nil
}

// stop finishes the messages being handled and disconnects.
func (r *Remote) stop() {
	close(r.stopping)
	r.workers.Wait()
	r.client.Disconnect(1000)
}

// ServiceCertificate issues the service's TLS client certificate for an
// external broker: common name ServiceIdentity, organisation the tenant,
// for client authentication only, valid from 5 minutes before now until
// now+validity, with a fresh ECDSA P-256 key. It names no device (no
// mdm:// URI), so the embedded broker admits no connection with it.
func (ca *CA) ServiceCertificate(tenant string, now time.Time, validity time.Duration) (tls.Certificate, error) {
	if err := protocol.ValidID(tenant); err != nil {
		return tls.Certificate{}, fmt.Errorf("issue service certificate: tenant: %w", err)
	}
	return ca.leafCertificate("service", &x509.Certificate{
		Subject:     pkix.Name{CommonName: ServiceIdentity, Organization: []string{tenant}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, now, validity)
}

// serviceCertValidity is the lifetime of the client certificate the
// service issues itself for each connection to an external broker. It
// matters only at the TLS handshake, but is long so that a service on a
// scaled clock started in the past still presents a valid one.
const serviceCertValidity = 365 * 24 * time.Hour

// remoteTLS is the TLS configuration of the service's client of an
// external broker: the broker's server certificate checked against the
// service CA (or cfg.MQTTCAFile), and the service's client certificate
// from cfg.MQTTCertFile and cfg.MQTTKeyFile, or issued from the CA at
// each handshake.
func remoteTLS(cfg ServerConfig, ca *CA, tenant string) (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: ca.Pool()}
	if cfg.MQTTCAFile != "" {
		pem, err := os.ReadFile(cfg.MQTTCAFile)
		if err != nil {
			return nil, fmt.Errorf("MQTT broker CA: %w", err)
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("MQTT broker CA %s: no PEM certificate in it; give the CA certificate that signed the broker's server certificate", cfg.MQTTCAFile)
		}
	}
	switch {
	case cfg.MQTTCertFile == "" && cfg.MQTTKeyFile == "":
		c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			cert, err := ca.ServiceCertificate(tenant, cfg.Clock.Now(), serviceCertValidity)
			return &cert, err
		}
	case cfg.MQTTCertFile == "" || cfg.MQTTKeyFile == "":
		return nil, errors.New("the service's client certificate for the MQTT broker needs both a certificate and a key file (or neither, to have the service issue its own from its CA)")
	default:
		if fi, err := os.Stat(cfg.MQTTKeyFile); err == nil && runtime.GOOS != "windows" && fi.Mode().Perm()&0o077 != 0 {
			return nil, fmt.Errorf("%s is readable by others (mode %04o); run chmod 600 %s", cfg.MQTTKeyFile, fi.Mode().Perm(), cfg.MQTTKeyFile)
		}
		cert, err := tls.LoadX509KeyPair(cfg.MQTTCertFile, cfg.MQTTKeyFile)
		if err != nil {
			return nil, fmt.Errorf("the service's client certificate for the MQTT broker: %w", err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}

// WriteServerCertificate issues a TLS server certificate for an external
// broker (such as Mosquitto) from the CA, for the given host names and IP
// addresses, valid from 5 minutes before now until now+validity, and
// writes it to certPath (PEM, mode 0644) and its new key to keyPath (PEM
// PKCS#8, mode 0600). Devices then trust the broker through the service
// CA's certificate that they received at enrollment.
func (ca *CA) WriteServerCertificate(names []string, now time.Time, validity time.Duration, certPath, keyPath string) error {
	dns, ips := splitHosts(names)
	cert, err := ca.ServerCertificate(dns, ips, now, validity)
	if err != nil {
		return err
	}
	return writeCertificate(cert, certPath, keyPath)
}

// WriteServiceCertificate issues the service's client certificate for an
// external broker (see ServiceCertificate) and writes it to certPath
// (PEM, mode 0644) and its key to keyPath (PEM PKCS#8, mode 0600). Whoever
// holds the key reads every device's messages and writes to every device:
// keep it as safe as the CA key.
func (ca *CA) WriteServiceCertificate(tenant string, now time.Time, validity time.Duration, certPath, keyPath string) error {
	cert, err := ca.ServiceCertificate(tenant, now, validity)
	if err != nil {
		return err
	}
	return writeCertificate(cert, certPath, keyPath)
}

// writeCertificate writes the leaf of cert and its key, each atomically;
// the key first, so that a certificate file never names a key that is
// not there.
func writeCertificate(cert tls.Certificate, certPath, keyPath string) error {
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		return fmt.Errorf("write certificate: %w", err)
	}
	if err := writeFileAtomic(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return fmt.Errorf("write certificate key: %w", err)
	}
	if err := writeFileAtomic(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o644); err != nil {
		return fmt.Errorf("write certificate: %w", err)
	}
	return nil
}
