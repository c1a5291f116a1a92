package broker

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"strings"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mdm-authority/mdm/protocol"
)

// EnrollClientPrefix starts the MQTT client id of an enrolling client.
const EnrollClientPrefix = protocol.EnrollClientPrefix

// EnrollUsername is the MQTT user name of an enrolling client; its
// password is the tenant's enrollment token.
const EnrollUsername = "enroll"

// The listeners a client can come through. Over TLS a device proves who
// it is with its MDM certificate; through the others, which have no client
// certificate, with its connect token.
const (
	listenerTLS    = "tls"
	listenerTCP    = "tcp"
	memoryListener = "memory"
)

// Why a connection was refused: the reason label of
// mdm_connections_total, and the log's.
const (
	connAccepted      = iota
	connWill          // asked for a will, which no client may leave
	connClientID      // client id outside the scheme
	connNoCredentials // no certificate on TLS, or no user name or password elsewhere
	connBadToken      // wrong enrollment token or connect token
	connCertificate   // a certificate this service did not issue, or not a device certificate
	connExpired       // the device certificate expired
	connMismatch      // the certificate or user name names another device or tenant
	connNotManaged    // unknown, wiped, retired or removed device
	connRevoked       // a certificate that a renewal replaced
	connInternal      // the store failed
	connResults
)

var connNames = [connResults]string{"accepted", "will", "client_id", "no_credentials", "bad_token",
	"untrusted_certificate", "expired", "identity_mismatch", "not_managed", "revoked", "internal"}

// authHook is the broker's one hook for authentication and access
// control. It authenticates every connection, whichever listener it came
// through, and keeps every client to its own topics: a device publishes
// only to its uplink topic and subscribes only to its downlink topic; an
// enrolling client only to the enrollment topics of its own request.
// Wildcards never reach another client's topics, since no topic with a
// wildcard parses. The service takes what devices publish from this hook
// (OnPublish), inside the broker, so no client can take it.
type authHook struct {
	mqtt.HookBase
	svc    *Service
	log    *rateLog
	broker *Broker
}

// ID implements mqtt.Hook.
func (h *authHook) ID() string { return "mdm-auth" }

// Provides implements mqtt.Hook.
func (h *authHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnPublish, mqtt.OnPublishDropped,
		mqtt.OnSessionEstablish, mqtt.OnSessionEstablished}, []byte{b})
}

// OnSessionEstablished runs once mochi has listed a client: a network
// client listed while the broker closes is stopped (see
// Broker.stopIfClosing).
func (h *authHook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	h.broker.stopIfClosing(cl)
}

// OnSessionEstablish runs once a client has authenticated, before mochi
// takes over an earlier connection with the same client id and lists the
// new client: it waits until that earlier connection has let go (see
// Broker.awaitRelease).
func (h *authHook) OnSessionEstablish(cl *mqtt.Client, _ packets.Packet) {
	h.broker.awaitRelease(cl)
}

// OnPublishDropped tells the broker's tracker that a message it counted
// will not reach its client (whose queue was full).
func (h *authHook) OnPublishDropped(cl *mqtt.Client, pk packets.Packet) {
	h.broker.track(-1)
}

// OnPublish rejects retained messages: nothing in the protocol is
// retained, and a retained message would reach a device long after its
// sender left.
//
// It also hands the service what a client publishes to it (to its uplink
// or enrollment request topic, the only topics a client may write), and
// tells mochi to acknowledge the message without routing it: the
// service is the one reader of those topics, since no client may
// subscribe to them (OnACLCheck), so looking up their subscribers in
// mochi's topic tree would only find the service again. The service
// handles the message before mochi writes its PUBACK, in the goroutine
// of the client's connection, as an inline subscription would after it.
// mochi calls no later hook's OnPublish for a message this one takes.
func (h *authHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil
	}
	if pk.FixedHeader.Retain {
		h.svc.metrics.aclDenied.Add(1)
		h.log.Warn("retained message refused", "client", cl.ID, "remote", cl.Net.Remote, "topic", pk.TopicName)
		return pk, packets.ErrRejectPacket
	}
	if h.broker.serviceTopic(pk.TopicName) {
		h.broker.onMessage(cl, pk)
		return pk, packets.CodeSuccessIgnore
	}
	return pk, nil
}

// OnConnectAuthenticate admits a client that proves its identity, and
// counts and logs (at a bounded rate) every refusal.
func (h *authHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	r, err := h.authenticate(cl, pk)
	h.svc.metrics.connects[r].Add(1)
	if r == connAccepted {
		return true
	}
	args := []any{"client", cl.ID, "remote", cl.Net.Remote, "listener", cl.Net.Listener, "reason", connNames[r]}
	if err != nil {
		args = append(args, "err", err)
	}
	h.log.Warn("connection refused", args...)
	return false
}

// authenticate decides on a connection:
//   - an enrolling client (client id "enroll-<request>") sends the user
//     name "enroll" and the enrollment token as its password;
//   - a device on the TLS listener presents its MDM certificate, which
//     must name it (its client id), be signed by the service CA, not have
//     expired, and be the device's current certificate;
//   - a device elsewhere (in-process, plain TCP) sends its id as the user
//     name and its connect token as the password, which is bound to its
//     current certificate in the same way.
//
// The device must be one the service manages: not wiped, retired or
// removed.
func (h *authHook) authenticate(cl *mqtt.Client, pk packets.Packet) (int, error) {
	c := &pk.Connect
	if c.WillFlag {
		// The broker publishes a will without an ACL check: no client
		// may leave one, or it could write to another device's topics.
		return connWill, nil
	}
	if strings.HasPrefix(cl.ID, EnrollClientPrefix) {
		if protocol.ValidID(strings.TrimPrefix(cl.ID, EnrollClientPrefix)) != nil {
			return connClientID, nil
		}
		switch {
		case !c.UsernameFlag || !c.PasswordFlag:
			return connNoCredentials, nil
		case string(c.Username) != EnrollUsername:
			return connMismatch, errors.New("an enrolling client's user name is " + EnrollUsername)
		case !h.svc.checkToken(string(c.Password)):
			return connBadToken, nil
		}
		return connAccepted, nil
	}
	if protocol.ValidID(cl.ID) != nil {
		return connClientID, nil
	}
	if cl.Net.Listener != listenerTLS {
		switch {
		case !c.UsernameFlag || !c.PasswordFlag:
			return connNoCredentials, nil
		case string(c.Username) != cl.ID:
			return connMismatch, errors.New("the user name must be the device id, the client id")
		}
		return h.svc.admitDevice(cl.ID, credential{token: string(c.Password)})
	}
	cert := peerCertificate(cl)
	if cert == nil {
		return connNoCredentials, errors.New("no client certificate")
	}
	tenant, device, err := h.svc.ca.DeviceIdentity(cert, h.svc.opts.Clock.Now())
	switch {
	case errors.Is(err, ErrCertificateExpired):
		return connExpired, err
	case err != nil:
		return connCertificate, err
	case tenant != h.svc.opts.Tenant || device != cl.ID:
		return connMismatch, errors.New("the certificate names device " + device + " of tenant " + tenant)
	}
	return h.svc.admitDevice(device, credential{serial: cert.SerialNumber.Text(16)})
}

// peerCertificate returns the client certificate of a TLS connection, or
// nil.
func peerCertificate(cl *mqtt.Client) *x509.Certificate {
	tc, ok := cl.Net.Conn.(*tls.Conn)
	if !ok {
		return nil
	}
	peers := tc.ConnectionState().PeerCertificates
	if len(peers) == 0 {
		return nil
	}
	return peers[0]
}

// credential is what a device connects with: the serial of the
// certificate it presented, or its connect token.
type credential struct {
	serial string
	token  string
}

// matches reports whether c is the credential of the certificate with
// that serial.
func (s *Service) matches(device string, c credential, serial string) bool {
	if serial == "" {
		return false
	}
	if c.token != "" {
		return s.ca.CheckConnectToken(s.opts.Tenant, device, serial, c.token)
	}
	return c.serial == serial
}

// admitDevice decides whether a device may connect with credential c. The
// device's current certificate is admitted until it expires; the one a
// renewal replaced until the device first connects with the new one, so
// that a device that lost the renewal's answer can still check in (and
// renew again). The first connection with the new one revokes the old.
func (s *Service) admitDevice(id string, c credential) (int, error) {
	now := s.opts.Clock.Now()
	var d *Device
	err := s.store.View(func(tx *Tx) (err error) {
		d, err = tx.Device(id)
		return err
	})
	switch {
	case errors.Is(err, ErrNotFound):
		return connNotManaged, errors.New("no such device")
	case err != nil:
		return connInternal, err
	case !d.Managed():
		return connNotManaged, errors.New("device is " + d.State.String())
	}
	switch {
	case s.matches(id, c, d.CertSerial):
		if !now.Before(d.CertNotAfter) {
			return connExpired, nil
		}
		if d.PrevCertSerial != "" {
			if err := s.revokePrevious(id, d.CertSerial); err != nil {
				return connInternal, err
			}
		}
		return connAccepted, nil
	case s.matches(id, c, d.PrevCertSerial):
		if !now.Before(d.PrevCertNotAfter) {
			return connExpired, nil
		}
		return connAccepted, nil
	case c.token != "":
		return connBadToken, nil
	}
	return connRevoked, errors.New("certificate serial " + c.serial + " is not the device's current one")
}

// revokePrevious forgets the certificate a renewal replaced, once the
// device has connected with current, its successor.
func (s *Service) revokePrevious(id, current string) error {
	return s.store.Update(func(tx *Tx) error {
		d, err := tx.Device(id)
		if err != nil || d.CertSerial != current || d.PrevCertSerial == "" {
			return err
		}
		d.PrevCertSerial, d.PrevCertNotAfter = "", time.Time{}
		return tx.PutDevice(d)
	})
}

// OnACLCheck allows a client its own topics only.
func (h *authHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if h.allowed(cl, topic, write) {
		return true
	}
	h.svc.metrics.aclDenied.Add(1)
	h.log.Warn("topic access refused", "client", cl.ID, "remote", cl.Net.Remote, "topic", topic, "write", write)
	return false
}

func (h *authHook) allowed(cl *mqtt.Client, topic string, write bool) bool {
	t, err := protocol.ParseTopic(topic)
	if err != nil || t.Tenant != h.svc.opts.Tenant {
		return false
	}
	switch t.Kind {
	case protocol.TopicUplink, protocol.TopicEnrollRequest:
		return write && cl.ID == topicClient(t)
	case protocol.TopicDownlink, protocol.TopicEnrollResponse:
		return !write && cl.ID == topicClient(t)
	}
	return false
}

// topicClient is the id of the one client that may use a topic of the
// scheme: the device itself, or the enrolling client of the request.
func topicClient(t protocol.Topic) string {
	if t.Kind == protocol.TopicEnrollRequest || t.Kind == protocol.TopicEnrollResponse {
		return EnrollClientPrefix + t.ID
	}
	return t.ID
}
