package protocol

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
)

// Version is the protocol version this package speaks. A receiver rejects
// any other version (see the versioning policy in the specification).
const Version = 1

// Limits on decoded input. Decode enforces them while it decodes, before
// it allocates for what the input claims, so the largest hostile payload
// costs a few times MaxPayload in memory (TestDecodeMemoryBounded).
const (
	MaxPayload       = 64 << 10 // bytes in one MQTT payload
	MaxNesting       = 8        // levels of nested arrays and maps
	MaxArrayElements = 256      // elements in any one array
	MaxMapPairs      = 64       // pairs in any one map
	MaxProfiles      = 256      // profiles in a check-in or response
	MaxCommands      = 64       // commands in one response
	MaxSettings      = 64       // settings in one profile
	MaxSettingsTotal = 1024     // settings in all profiles of one message
	MaxFailures      = 32       // compliance failures in one report
	MaxCSR           = 4 << 10  // bytes of a certificate signing request
	MaxCertificate   = 8 << 10  // bytes of a DER certificate
	MaxTokenLen      = 256      // bytes of an enrollment token
	MaxUserLen       = 256      // bytes of a user principal name
	MaxNameLen       = 128      // bytes of a profile or device name
	MaxShortText     = 64       // bytes of an OS version or setting key
	MaxMessageText   = 1024     // bytes of a free-text message or setting value
	MaxNextCheckIn   = 7 * 24 * 3600
	// MaxTimestamp is the last millisecond of year 9999.
	MaxTimestamp Timestamp = 253402300799999
)

// Decoding errors. Decode wraps one of them with the details; CodeOf maps
// them to the error code a service answers with.
var (
	ErrTooLarge  = errors.New("payload larger than 64 KiB")
	ErrMalformed = errors.New("malformed CBOR")
	ErrVersion   = errors.New("unsupported protocol version")
	ErrKind      = errors.New("unknown message kind")
	ErrInvalid   = errors.New("invalid message")
)

// CodeOf returns the error code that answers an error of Decode or
// Topic.Admits.
func CodeOf(err error) ErrorCode {
	switch {
	case err == nil:
		return CodeNone
	case errors.Is(err, ErrVersion):
		return CodeUnsupportedVersion
	case errors.Is(err, ErrDeviceMismatch):
		return CodeDeviceMismatch
	default:
		return CodeBadRequest
	}
}

// Kind is the type of message an envelope carries.
type Kind uint8

// Message kinds.
const (
	KindEnrollRequest    Kind = 1
	KindEnrollResponse   Kind = 2
	KindCheckIn          Kind = 3
	KindCheckInResponse  Kind = 4
	KindPush             Kind = 5
	KindCommand          Kind = 6
	KindCommandResult    Kind = 7
	KindComplianceReport Kind = 8
	KindUnenroll         Kind = 9
)

// Kinds lists every message kind in wire order.
var Kinds = []Kind{
	KindEnrollRequest, KindEnrollResponse, KindCheckIn, KindCheckInResponse, KindPush,
	KindCommand, KindCommandResult, KindComplianceReport, KindUnenroll,
}

var kindNames = names{
	"", "enroll_request", "enroll_response", "checkin", "checkin_response", "push",
	"command", "command_result", "compliance_report", "unenroll",
}

// String returns the kind's name, such as "checkin".
func (k Kind) String() string { return kindNames.format(uint8(k), "kind") }

// Valid reports whether k is a defined kind.
func (k Kind) Valid() bool { return kindNames.valid(uint8(k)) }

// Topic returns the kind of topic that messages of kind k travel on; a
// receiver drops a message that arrives on any other.
func (k Kind) Topic() TopicKind {
	switch k {
	case KindEnrollRequest:
		return TopicEnrollRequest
	case KindEnrollResponse:
		return TopicEnrollResponse
	case KindCheckIn, KindCommandResult, KindComplianceReport, KindUnenroll:
		return TopicUplink
	case KindCheckInResponse, KindPush, KindCommand:
		return TopicDownlink
	}
	return 0
}

// nilBody reports whether b is a nil pointer of one of the body types.
func nilBody(b Body) bool {
	switch b := b.(type) {
	case *EnrollRequest:
		return b == nil
	case *EnrollResponse:
		return b == nil
	case *CheckIn:
		return b == nil
	case *CheckInResponse:
		return b == nil
	case *Push:
		return b == nil
	case *Command:
		return b == nil
	case *CommandResult:
		return b == nil
	case *ComplianceReport:
		return b == nil
	case *Unenroll:
		return b == nil
	}
	return false
}

func newBody(k Kind) Body {
	switch k {
	case KindEnrollRequest:
		return new(EnrollRequest)
	case KindEnrollResponse:
		return new(EnrollResponse)
	case KindCheckIn:
		return new(CheckIn)
	case KindCheckInResponse:
		return new(CheckInResponse)
	case KindPush:
		return new(Push)
	case KindCommand:
		return new(Command)
	case KindCommandResult:
		return new(CommandResult)
	case KindComplianceReport:
		return new(ComplianceReport)
	case KindUnenroll:
		return new(Unenroll)
	}
	return nil
}

// MessageID identifies one message: 16 random bytes chosen by the sender.
// Responses name the request they answer with it.
type MessageID [16]byte

// NewMessageID reads a message id from r: crypto/rand.Reader in a real
// device, a seeded source in the simulator so runs repeat.
func NewMessageID(r io.Reader) (MessageID, error) {
	var id MessageID
	if _, err := io.ReadFull(r, id[:]); err != nil {
		return id, fmt.Errorf("new message id: %w", err)
	}
	if id.IsZero() {
		id[0] = 1 // the zero id means "none"
	}
	return id, nil
}

// IsZero reports whether id is unset.
func (id MessageID) IsZero() bool { return id == MessageID{} }

// String returns id in hex.
func (id MessageID) String() string { return hex.EncodeToString(id[:]) }

// MarshalText implements encoding.TextMarshaler (hex) for JSON and logs.
func (id MessageID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler: 32 hex digits, or
// nothing for the zero id.
func (id *MessageID) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		*id = MessageID{}
		return nil
	}
	if len(b) != 2*len(id) {
		return fmt.Errorf("message id %.40q: want %d hex digits", b, 2*len(id))
	}
	if _, err := hex.Decode(id[:], b); err != nil {
		return fmt.Errorf("message id %.40q: %w", b, err)
	}
	return nil
}

// UnmarshalCBOR decodes a byte string of exactly 16 bytes, in any valid
// encoding of its length; null and undefined leave the id zero ("absent").
// The default decoding of a Go array would silently truncate or pad other
// lengths. The codec's fast path uses the same rule; this method serves the
// reflection codec the tests compare it with.
func (id *MessageID) UnmarshalCBOR(data []byte) error {
	r := reader{b: data}
	err := r.messageID("message id", id)
	if err == nil && r.off != len(data) {
		err = errors.New("message id: trailing data")
	}
	return err
}

// Envelope is one message on the wire: the header every message has and
// the body of one kind.
type Envelope struct {
	// ID identifies the message; it must not be zero.
	ID MessageID
	// Sent is when the sender sent the message, by its clock.
	Sent Timestamp
	// Device names the device on uplink and downlink messages; it must
	// match the device of the topic. Enrollment messages leave it empty.
	Device string
	// ReplyTo is the ID of the request a response answers. It is required
	// on enrollment and check-in responses.
	ReplyTo MessageID
	// Body is the message itself.
	Body Body
}

// Kind returns the kind of the envelope's body, or 0 if it has none.
func (e *Envelope) Kind() Kind {
	if e.Body == nil {
		return 0
	}
	return e.Body.Kind()
}

// Encode encodes e deterministically (CBOR core deterministic encoding):
// the same envelope always gives the same bytes.
func Encode(e Envelope) ([]byte, error) {
	return Append(make([]byte, 0, 1024), e)
}

// Append is Encode appending to dst, for callers that reuse a buffer.
//
// Encode checks the envelope's header but not the body: receivers validate
// every message they decode, and tests call Validate on what they build.
// Leaving the body unchecked here keeps the sender's hot path short.
func Append(dst []byte, e Envelope) ([]byte, error) {
	if err := e.validateHeader(); err != nil {
		return dst, fmt.Errorf("encode %s: %w", e.Kind(), err)
	}
	w := writer{b: dst}
	w.envelope(&e)
	if n := len(w.b) - len(dst); n > MaxPayload {
		return dst, fmt.Errorf("encode %s: %d bytes: %w", e.Kind(), n, ErrTooLarge)
	}
	return w.b, nil
}

// Decode decodes and validates one message. The error wraps ErrTooLarge,
// ErrMalformed, ErrVersion, ErrKind or ErrInvalid. Fields this version does
// not know are ignored, so newer senders can add them.
func Decode(data []byte) (Envelope, error) {
	if len(data) > MaxPayload {
		return Envelope{}, fmt.Errorf("decode: %d bytes: %w", len(data), ErrTooLarge)
	}
	r := reader{b: data}
	var in envelopeIn
	if err := r.envelope(&in); err != nil {
		return Envelope{}, fmt.Errorf("decode: %w: %v", ErrMalformed, err)
	}
	if r.off != len(data) {
		return Envelope{}, fmt.Errorf("decode: %w: %d bytes after the message", ErrMalformed, len(data)-r.off)
	}
	if in.version != Version {
		return Envelope{}, fmt.Errorf("decode: version %d, this side speaks %d: %w", in.version, Version, ErrVersion)
	}
	body := in.body
	if body == nil {
		if body = newBody(in.kind); body == nil {
			return Envelope{}, fmt.Errorf("decode: kind %d: %w", in.kind, ErrKind)
		}
		if in.bodyStart < 0 {
			return Envelope{}, fmt.Errorf("decode %s: body missing: %w", in.kind, ErrInvalid)
		}
		r = reader{b: data[in.bodyStart:in.bodyEnd]}
		if err := r.body(body); err != nil {
			return Envelope{}, fmt.Errorf("decode %s body: %w: %v", in.kind, ErrMalformed, err)
		}
	}
	e := in.env
	e.Body = body
	if err := e.validate(true); err != nil {
		return Envelope{}, fmt.Errorf("decode %s: %w", in.kind, err)
	}
	return e, nil
}

// validate checks the header and the body. decoded says the text fields
// come from the reader, which has already checked their characters.
func (e *Envelope) validate(decoded bool) error {
	if err := e.validateHeader(); err != nil {
		return err
	}
	v := validator{decoded: decoded}
	// Concrete calls, not the interface method: through an interface the
	// validator would escape to the heap on every message.
	switch b := e.Body.(type) {
	case *EnrollRequest:
		b.validate(&v)
	case *EnrollResponse:
		b.validate(&v)
	case *CheckIn:
		b.validate(&v)
	case *CheckInResponse:
		b.validate(&v)
	case *Push:
		b.validate(&v)
	case *Command:
		b.validate(&v)
	case *CommandResult:
		b.validate(&v)
	case *ComplianceReport:
		b.validate(&v)
	case *Unenroll:
		b.validate(&v)
	}
	return v.err
}

func (e *Envelope) validateHeader() error {
	if e.Body == nil || nilBody(e.Body) {
		return fmt.Errorf("%w: body missing", ErrInvalid)
	}
	v := validator{}
	if e.ID.IsZero() {
		v.fail("id", "must not be zero")
	}
	v.time("sent", e.Sent, true)
	switch e.Kind().Topic() {
	case TopicUplink, TopicDownlink:
		v.id("device", e.Device)
	default:
		if e.Device != "" {
			v.fail("device", "must be empty on enrollment messages")
		}
	}
	switch e.Kind() {
	case KindEnrollResponse, KindCheckInResponse:
		if e.ReplyTo.IsZero() {
			v.fail("reply_to", "required on a response")
		}
	}
	return v.err
}

// Validate checks the envelope and its body as Decode does. Senders call it
// in their tests to be sure receivers will accept what they build.
func (e *Envelope) Validate() error { return e.validate(false) }
