package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/mdm-authority/mdm/protocol"
)

// tcpKeepAlive makes the kernel probe an idle connection after a minute,
// every 15 s, and drop it after 4 unanswered probes: a dead connection is
// noticed within two minutes without waking the process.
var tcpKeepAlive = net.KeepAliveConfig{Enable: true, Idle: time.Minute, Interval: 15 * time.Second, Count: 4}

// opTimeout bounds each MQTT operation (connect, subscribe, publish).
const opTimeout = 30 * time.Second

// brokerAddress checks a broker URL and returns paho's form of it and the
// host name to verify the service's certificate against. The service's
// MQTT listener is TLS: mqtts://, ssl:// and tls:// are accepted.
func brokerAddress(raw string) (addr, host string, err error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", "", fmt.Errorf("broker URL %q: %w", raw, err)
	}
	switch u.Scheme {
	case "mqtts", "ssl", "tls":
	default:
		return "", "", fmt.Errorf("broker URL %q: want mqtts://HOST:PORT (the service serves MQTT over TLS)", raw)
	}
	if u.Port() == "" {
		u.Host = net.JoinHostPort(u.Hostname(), "8883")
	}
	if u.Hostname() == "" || (u.Path != "" && u.Path != "/") {
		return "", "", fmt.Errorf("broker URL %q: want mqtts://HOST:PORT", raw)
	}
	return "ssl://" + u.Host, u.Hostname(), nil
}

// session is one MQTT connection of the device or of an enrolling client.
type session struct {
	client paho.Client
	// lost is set when the connection dropped, possibly before the
	// runner's loop learnt that it was up.
	lost atomic.Bool
}

// sessionConfig describes a connection.
type sessionConfig struct {
	broker   string
	tls      *tls.Config
	clientID string
	username string
	password string
	// keepAlive is the MQTT keep-alive; zero leaves it off and relies on
	// TCP keep-alive, which costs the idle process no wakeups (paho checks
	// its MQTT keep-alive every 5 seconds).
	keepAlive time.Duration
	// onLost is called when an established connection drops.
	onLost func(error)
}

// dial connects; it never retries, the caller does.
func dial(ctx context.Context, sc sessionConfig) (*session, error) {
	s := new(session)
	return s, s.connect(ctx, sc)
}

// connect connects s. Callbacks may refer to s before it returns.
func (s *session) connect(ctx context.Context, sc sessionConfig) error {
	addr, host, err := brokerAddress(sc.broker)
	if err != nil {
		return err
	}
	cfg := sc.tls.Clone()
	cfg.ServerName = host
	cfg.MinVersion = tls.VersionTLS12
	opts := paho.NewClientOptions().AddBroker(addr).SetClientID(sc.clientID).SetTLSConfig(cfg).
		SetCleanSession(true).SetAutoReconnect(false).SetConnectRetry(false).
		SetKeepAlive(sc.keepAlive).SetPingTimeout(10 * time.Second).SetConnectTimeout(opTimeout).
		SetDialer(&net.Dialer{Timeout: opTimeout, KeepAliveConfig: tcpKeepAlive}).
		SetWriteTimeout(opTimeout).SetOrderMatters(false)
	if sc.username != "" {
		opts.SetUsername(sc.username).SetPassword(sc.password)
	}
	if sc.onLost != nil {
		opts.SetConnectionLostHandler(func(_ paho.Client, err error) { sc.onLost(err) })
	}
	s.client = paho.NewClient(opts)
	if err := wait(ctx, s.client.Connect()); err != nil {
		s.client.Disconnect(0)
		return fmt.Errorf("connect to %s as %s: %w", sc.broker, sc.clientID, explainConnect(err))
	}
	return nil
}

// explainConnect adds what to do to a connection error.
func explainConnect(err error) error {
	var unknown x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	switch {
	case errors.As(err, &unknown):
		return fmt.Errorf("%w (the service's certificate is not signed by the CA given: pass the service's ca.crt with --ca)", err)
	case errors.As(err, &hostErr):
		return fmt.Errorf("%w (use the host name the service's certificate names: mdm-broker serve --mqtt-name adds names)", err)
	case strings.Contains(err.Error(), "not Authorized"), strings.Contains(err.Error(), "bad user name or password"):
		return fmt.Errorf("%w (the service refused the credentials: a wrong or rotated enrollment token, or a device it no longer manages)", err)
	}
	return fmt.Errorf("%w (is the service running and reachable there?)", err)
}

// wait waits for a paho token, the context or opTimeout.
func wait(ctx context.Context, tok paho.Token) error {
	t := time.NewTimer(opTimeout)
	defer t.Stop()
	select {
	case <-tok.Done():
		return tok.Error()
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return errors.New("no answer from the broker within " + opTimeout.String())
	}
}

// subscribe subscribes at QoS 1 and hands every message to fn.
func (s *session) subscribe(ctx context.Context, topic string, fn func(topic string, payload []byte)) error {
	tok := s.client.Subscribe(topic, 1, func(_ paho.Client, m paho.Message) { fn(m.Topic(), m.Payload()) })
	if err := wait(ctx, tok); err != nil {
		return fmt.Errorf("subscribe %s: %w", topic, err)
	}
	if st, ok := tok.(*paho.SubscribeToken); ok && st.Result()[topic] == 0x80 {
		return fmt.Errorf("subscribe %s: refused by the broker", topic)
	}
	return nil
}

// publish encodes env and publishes it at QoS 1; the token completes when
// the broker acknowledges it.
func (s *session) publish(topic string, env protocol.Envelope) (paho.Token, error) {
	b, err := protocol.Encode(env)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", env.Kind(), err)
	}
	return s.client.Publish(topic, 1, false, b), nil
}

func (s *session) close() { s.client.Disconnect(250) }
