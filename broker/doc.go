// Package broker is the management service that devices check in to: the
// tenant's MDM authority and its changes, the device registry, the profile
// catalog of each authority, check-in handling, the push queue with its
// retries, the command queue, and the device certificates of the service's
// own CA, all on a durable bbolt store.
//
// The service is transport-agnostic: HandleMessage takes one MQTT message a
// device published and returns the messages to publish in answer, and
// DuePushes returns the pushes that are due. Time comes from the Clock in
// Options, so tests and the simulator run it on their own clock.
//
// The domain rules are those of DESIGN.md: the authority is unknown until
// set and never unknown again; each change has an epoch and pushes every
// enrolled device; a device moves to the new authority at its next
// check-in, keeping the old authority's profiles without successor for
// seven days; iOS and iPadOS devices fail with apns_certificate_missing
// until the new authority has an APNs certificate; userless devices stay on
// the old authority until an admin migrates them.
//
// Security: Broker authenticates every MQTT connection in one mochi hook.
// Over TLS a device presents its MDM certificate; on the plain-TCP
// listener (ListenTCP, only when asked for) and the in-process transport
// (Broker.Connect) it sends its connect token (CA.ConnectToken), a
// password bound to its certificate. An in-process client may then send
// its packets through Broker.Session instead of its connection, as
// decoded packets under the client it authenticated as: topic access is
// checked for each, and a PUBLISH is bounded as on a connection. An enrolling client sends the
// enrollment token. Unknown, wiped, retired, unenrolled and removed
// devices, expired certificates and certificates replaced by a renewal
// are refused. Each client may use only its own topics. Device messages
// that fail the protocol's decoding, name another device than their
// topic, repeat or predate an applied message, or come from more than
// MaxClockSkew ahead are dropped without changing the store, counted by
// reason in the metrics, and logged at a bounded rate; so are refused
// connections and topic accesses. The admin API (NewAdminHandler) needs
// the bearer token on every endpoint but GET /healthz and decodes bodies
// strictly (protocol.DecodeJSON).
//
// Delivery: the service takes device messages in the broker's publish
// hook, before mochi acknowledges them (authHook.OnPublish), and its
// answer goes straight back to the device in the same goroutine when
// mochi's routing would deliver it the same way (Broker.deliver): the
// device's own topic, which no other client may read, held at the
// answer's QoS over MQTT 3.1 or 3.1.1, with nothing unacknowledged that
// the answer could overtake. Pushes (QoS 0) reach in-process clients
// whose connection writes at once (ImmediateConn) the same way, from the
// fan-out, and all of them do, so none can overtake another; others go
// through mochi, and a push for a device with no session is not
// published, since no client could read it.
//
// Reconnections: mochi (v2.7.9) ends a clean session after its
// connection closed, deleting the client from its list by client id; a
// device that connected again in between lost its new entry and got
// nothing more from the broker until its next connection. The broker's
// hook makes a connecting client wait until the earlier connection has
// let go (Broker.awaitRelease, TestReconnectWhileClosing).
package broker
