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
package broker
