// Package protocol is the wire contract between MDM devices and the
// management service: the MQTT topic scheme, the CBOR messages inside one
// envelope, the enumerations with their string forms, and the limits that
// make decoding hostile input safe.
//
// Every message is an [Envelope] encoded with [Encode] and decoded with
// [Decode]. Encoding is deterministic (CBOR core deterministic encoding), so
// the same message always gives the same bytes; decoding enforces the size,
// depth and count limits, rejects duplicate map keys, unknown versions and
// unknown kinds, and validates every field, while ignoring fields it does
// not know so that newer senders can add them.
//
// The package imports only the standard library; its tests use the CBOR
// library's reflection codec as the reference that the package's own codec
// must match byte for byte (see wire.go). The agent, the service and the
// simulator all build on it. README.md beside
// this file is the complete specification, written so that a device can be
// implemented in another language from it alone.
package protocol
