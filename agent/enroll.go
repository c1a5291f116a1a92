package agent

import (
	"cmp"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/mdm-authority/mdm/protocol"
)

// EnrollOptions describe an enrollment.
type EnrollOptions struct {
	// Dir is the state directory.
	Dir string
	// Broker is the service's MQTT URL, mqtts://HOST:PORT.
	Broker string
	// EnrollBroker, when set, is where the device enrolls instead of
	// Broker: a broker that takes device identities from certificates
	// on one listener and enrolling clients with a password on another
	// (Mosquitto, see scripts/mosquitto). Broker is still the one kept.
	EnrollBroker string
	// Tenant is the tenant id the service serves.
	Tenant string
	// Token is the tenant's enrollment token.
	Token string
	// CA verifies the service's TLS certificate: the service's ca.crt.
	CA *x509.CertPool
	// User is the user principal name; empty enrolls a userless (bulk)
	// device, which is not migrated when the authority changes.
	User     string
	Platform protocol.Platform
	// Name is the device's display name, such as its host name.
	Name      string
	OSVersion string
	// Clock is the time source; nil means the real clock.
	Clock Clock
	// Timeout bounds the wait for the service's answer; zero means 30 s.
	Timeout time.Duration
}

// ErrEnrolled means the state directory already holds an enrolled device.
var ErrEnrolled = errors.New("this state directory already holds an enrolled device")

// ErrRefused means the service refused the enrollment; the message says why
// and what to do.
var ErrRefused = errors.New("enrollment refused")

// EnrolledState returns the state of a device that the service enrolled
// at now: req is the request it sent (with its CSR, which it reuses to
// renew), resp the service's answer. A refusal gives an error wrapping
// ErrRefused. The agent calls it from Enroll; the simulator, which enrolls
// its devices itself, too.
func EnrolledState(tenant, broker string, req *protocol.EnrollRequest, resp *protocol.EnrollResponse, now time.Time) (*State, error) {
	if resp.Error != protocol.CodeNone {
		return nil, fmt.Errorf("%w: %s: %s", ErrRefused, resp.Error, resp.Message)
	}
	cert, err := x509.ParseCertificate(resp.Certificate)
	if err != nil {
		return nil, fmt.Errorf("certificate from the service: %w", err)
	}
	return &State{
		Version: StateVersion, Tenant: tenant, Device: resp.Device, Platform: req.Platform, User: req.User,
		EnrollmentType: req.Type, Name: req.Name, Broker: broker, EnrolledAt: now,
		Certificate: resp.Certificate, CertNotAfter: cert.NotAfter, CACertificate: resp.CACertificate,
		ConnectToken: resp.ConnectToken, RenewalCSR: req.CSR, Authority: resp.Authority, Epoch: resp.Epoch, AuthoritySince: now,
		OSVersion: req.OSVersion, NextCheckIn: now,
	}, nil
}

// Enroll generates the device's key, sends a signing request with the
// enrollment token and stores the identity the service issues. The key is
// written owner-only and never leaves the device.
func Enroll(ctx context.Context, o EnrollOptions) (*State, error) {
	if o.Clock == nil {
		o.Clock = realClock{}
	}
	if o.Timeout == 0 {
		o.Timeout = 30 * time.Second
	}
	if err := protocol.ValidID(o.Tenant); err != nil {
		return nil, fmt.Errorf("tenant %q: %w", o.Tenant, err)
	}
	if !o.Platform.Valid() {
		return nil, errors.New("platform missing: pass --platform")
	}
	files := layout(o.Dir)
	st, err := files.load()
	switch {
	case err == nil && st.Stopped == "":
		return nil, fmt.Errorf("%w (device %s): run mdm-agent unenroll first, or use another --state", ErrEnrolled, st.Device)
	case err != nil && !errors.Is(err, ErrNotEnrolled):
		// An unreadable state may still be a live enrollment: never
		// overwrite its key.
		return nil, fmt.Errorf("%w; enrolling would replace it: fix or move it away first", err)
	}
	// Readable by all: tools on the device read the profile files under
	// it. The key, the state and the socket inside are owner-only.
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate device key: %w", err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, fmt.Errorf("certificate signing request: %w", err)
	}
	var rid [8]byte
	if _, err := rand.Read(rid[:]); err != nil {
		return nil, err
	}
	request := hex.EncodeToString(rid[:])
	typ := protocol.EnrollUser
	if o.User == "" {
		typ = protocol.EnrollBulk
	}
	req := &protocol.EnrollRequest{CSR: csr, Token: o.Token, Platform: o.Platform, OSVersion: o.OSVersion, User: o.User, Type: typ, Name: o.Name}

	s, err := dial(ctx, sessionConfig{
		broker: cmp.Or(o.EnrollBroker, o.Broker), tls: &tls.Config{RootCAs: o.CA},
		clientID: protocol.EnrollClientPrefix + request, username: "enroll", password: o.Token,
	})
	if err != nil {
		return nil, err
	}
	defer s.close()
	answers := make(chan protocol.Envelope, 1)
	err = s.subscribe(ctx, protocol.EnrollResponseTopic(o.Tenant, request), func(_ string, payload []byte) {
		if env, err := protocol.Decode(payload); err == nil {
			select {
			case answers <- env:
			default:
			}
		}
	})
	if err != nil {
		return nil, err
	}
	id, err := protocol.NewMessageID(rand.Reader)
	if err != nil {
		return nil, err
	}
	tok, err := s.publish(protocol.EnrollRequestTopic(o.Tenant, request), protocol.Envelope{ID: id, Sent: protocol.At(o.Clock.Now()), Body: req})
	if err != nil {
		return nil, err
	}
	if err := wait(ctx, tok); err != nil {
		return nil, fmt.Errorf("send enrollment request: %w (is --tenant the service's tenant?)", err)
	}
	timeout := time.NewTimer(o.Timeout)
	defer timeout.Stop()
	var resp *protocol.EnrollResponse
	for resp == nil {
		select {
		case env := <-answers:
			if m, ok := env.Body.(*protocol.EnrollResponse); ok && env.ReplyTo == id {
				resp = m
			}
		case <-timeout.C:
			return nil, fmt.Errorf("no answer from the service within %s: is --tenant %q the service's tenant, and is the service running?", o.Timeout, o.Tenant)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	st, err = EnrolledState(o.Tenant, o.Broker, req, resp, o.Clock.Now())
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	// The key first: a crash before the state is written leaves a key
	// without an enrollment, which the next enrollment replaces.
	if err := WriteFileAtomic(files.key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return nil, fmt.Errorf("save device key: %w", err)
	}
	if err := files.save(st); err != nil {
		return nil, err
	}
	return st, nil
}
