// Command testdevice enrolls one test device with a running mdm-broker and
// checks it in once, speaking only the protocol of protocol/README.md over
// MQTT/TLS. It is a smoke test for a fresh service, and an example of a
// device written from the specification; the full device agent is
// cmd/mdm-agent.
//
//	go run ./scripts/testdevice --data ./mdm-data --platform android --user ada@contoso.example
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	flag "github.com/spf13/pflag"

	"github.com/mdm-authority/mdm/protocol"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "testdevice: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	addr := flag.String("mqtt", "127.0.0.1:8883", "address of the service's MQTT over TLS")
	data := flag.String("data", "", "data directory of the service, to read ca.crt and enrollment.token from")
	caFile := flag.String("ca", "", "CA certificate of the service (default DATA/ca.crt)")
	tokenFile := flag.String("token-file", "", "file holding the enrollment token (default DATA/enrollment.token)")
	tenant := flag.String("tenant", "default", "tenant id of the service")
	platformName := flag.String("platform", "android", "platform: ios, ipados, macos, android, windows")
	user := flag.String("user", "", "user principal name; empty enrolls a userless (bulk) device")
	flag.Parse()
	if *caFile == "" {
		*caFile = filepath.Join(*data, "ca.crt")
	}
	if *tokenFile == "" {
		*tokenFile = filepath.Join(*data, "enrollment.token")
	}
	platform, err := protocol.ParsePlatform(*platformName)
	if err != nil {
		return err
	}
	caPEM, err := os.ReadFile(*caFile)
	if err != nil {
		return fmt.Errorf("CA certificate: %w (pass --data or --ca)", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("%s holds no PEM certificate", *caFile)
	}
	token, err := os.ReadFile(*tokenFile)
	if err != nil {
		return fmt.Errorf("enrollment token: %w (pass --data or --token-file)", err)
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return err
	}
	var r [8]byte
	rand.Read(r[:])
	request := hex.EncodeToString(r[:])
	typ := protocol.EnrollUser
	if *user == "" {
		typ = protocol.EnrollBulk
	}
	host, _, err := net.SplitHostPort(*addr)
	if err != nil {
		return fmt.Errorf("--mqtt %q: want host:port", *addr)
	}
	// The name checked against the service's TLS certificate: the host
	// dialled (serve --mqtt-name adds names to the certificate).
	tlsCfg := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12, ServerName: host}

	// Enrollment: client id enroll-<request>, the token as password.
	body, err := roundTrip(*addr, tlsCfg, protocol.EnrollClientPrefix+request, strings.TrimSpace(string(token)),
		protocol.EnrollResponseTopic(*tenant, request), protocol.EnrollRequestTopic(*tenant, request), "",
		&protocol.EnrollRequest{CSR: csr, Token: strings.TrimSpace(string(token)), Platform: platform, User: *user, Type: typ, Name: "testdevice"})
	if err != nil {
		return fmt.Errorf("enroll: %w", err)
	}
	enrolled := body.(*protocol.EnrollResponse)
	if enrolled.Error != protocol.CodeNone {
		return fmt.Errorf("enrollment refused: %s: %s", enrolled.Error, enrolled.Error.Hint())
	}
	fmt.Printf("enrolled   %s (%s, authority %s)\n", enrolled.Device, platform, enrolled.Authority)

	// Check-in: client id = device id, the MDM certificate for TLS.
	tlsCfg.Certificates = []tls.Certificate{{Certificate: [][]byte{enrolled.Certificate}, PrivateKey: key}}
	cert, _ := x509.ParseCertificate(enrolled.Certificate)
	body, err = roundTrip(*addr, tlsCfg, enrolled.Device, "",
		protocol.DownlinkTopic(*tenant, enrolled.Device), protocol.UplinkTopic(*tenant, enrolled.Device), enrolled.Device,
		&protocol.CheckIn{Reason: protocol.CheckInEnrollment, CertificateExpiry: protocol.At(cert.NotAfter)})
	if err != nil {
		return fmt.Errorf("check in: %w", err)
	}
	resp := body.(*protocol.CheckInResponse)
	if resp.Error != protocol.CodeNone {
		return fmt.Errorf("check-in refused: %s: %s", resp.Error, resp.Error.Hint())
	}
	fmt.Printf("checked in authority %s, epoch %d, %d profiles, %d commands\n", resp.Authority, resp.Epoch, len(resp.Profiles), len(resp.Commands))
	for _, p := range resp.Profiles {
		fmt.Printf("  profile  %s %q v%d\n", p.Type, p.Name, p.Version)
	}
	return nil
}

// roundTrip connects, subscribes to in, publishes body on out and returns
// the body of the first answer to it.
func roundTrip(addr string, cfg *tls.Config, clientID, password, in, out, device string, body protocol.Body) (protocol.Body, error) {
	answers := make(chan protocol.Envelope, 4)
	opts := paho.NewClientOptions().AddBroker("ssl://" + addr).SetClientID(clientID).SetTLSConfig(cfg).
		SetAutoReconnect(false).SetConnectTimeout(10 * time.Second)
	if password != "" {
		opts.SetUsername("enroll").SetPassword(password)
	}
	c := paho.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
		hint := "is the service running there?"
		if tok.Error() != nil && strings.Contains(tok.Error().Error(), "Authorized") {
			hint = "the service refused the credentials: a wrong or rotated enrollment token, or a device it no longer manages"
		}
		return nil, fmt.Errorf("connect to %s as %s: %v (%s)", addr, clientID, tok.Error(), hint)
	}
	defer c.Disconnect(100)
	if tok := c.Subscribe(in, 1, func(_ paho.Client, m paho.Message) {
		if env, err := protocol.Decode(m.Payload()); err == nil {
			answers <- env
		}
	}); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		return nil, fmt.Errorf("subscribe %s: %v", in, tok.Error())
	}
	id, err := protocol.NewMessageID(rand.Reader)
	if err != nil {
		return nil, err
	}
	payload, err := protocol.Encode(protocol.Envelope{ID: id, Sent: protocol.At(time.Now()), Device: device, Body: body})
	if err != nil {
		return nil, err
	}
	if tok := c.Publish(out, 1, false, payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		return nil, fmt.Errorf("publish %s: %v (the service closes the connection on a topic that is not the client's own: is --tenant the service's tenant?)", out, tok.Error())
	}
	deadline := time.After(30 * time.Second)
	for {
		select {
		case env := <-answers:
			if env.ReplyTo == id {
				return env.Body, nil
			}
		case <-deadline:
			return nil, errors.New("no answer within 30 s; is the service running, and is this its tenant?")
		}
	}
}
