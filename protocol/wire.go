package protocol

import (
	"errors"
	"fmt"
	"math"
	"unicode/utf8"
)

// This file is the fast path of the codec. The struct tags on the message
// types are the schema, and the CBOR library's reflection codec with the
// protocol's encoding and decoding modes is the reference: the hand-written
// encoder and decoder below produce the same bytes and the same values,
// which the tests check on every golden and generated message and the fuzz
// target on every input.
// They exist because reflection costs three to five times more on the
// check-in hot path, and the library's separate well-formedness pass
// another third of the decoder's time. The decoder enforces the limits of
// the reference decoding mode itself, in one pass: no tags, no indefinite
// lengths, no unknown simple values, bounded depth and counts, checked
// before anything is allocated for them.

const (
	majorUint   byte = 0 << 5
	majorNeg    byte = 1 << 5
	majorBytes  byte = 2 << 5
	majorText   byte = 3 << 5
	majorArray  byte = 4 << 5
	majorMap    byte = 5 << 5
	majorTag    byte = 6 << 5
	majorSimple byte = 7 << 5
)

// writer appends CBOR in core deterministic encoding: shortest heads,
// map keys in the order of their encoded bytes.
type writer struct{ b []byte }

func (w *writer) head(major byte, n uint64) {
	switch {
	case n < 24:
		w.b = append(w.b, major|byte(n))
	case n <= math.MaxUint8:
		w.b = append(w.b, major|24, byte(n))
	case n <= math.MaxUint16:
		w.b = append(w.b, major|25, byte(n>>8), byte(n))
	case n <= math.MaxUint32:
		w.b = append(w.b, major|26, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	default:
		w.b = append(w.b, major|27, byte(n>>56), byte(n>>48), byte(n>>40), byte(n>>32),
			byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
}

func (w *writer) int(v int64) {
	if v < 0 {
		w.head(majorNeg, uint64(-(v + 1)))
		return
	}
	w.head(majorUint, uint64(v))
}

func (w *writer) text(s string) {
	w.head(majorText, uint64(len(s)))
	w.b = append(w.b, s...)
}

func (w *writer) bytes(b []byte) {
	w.head(majorBytes, uint64(len(b)))
	w.b = append(w.b, b...)
}

// mapWriter writes a struct as a map with small integer keys, which the
// caller writes in ascending order. The count is patched in at the end:
// every struct of the protocol has fewer than 24 fields, so the map head
// is always one byte.
type mapWriter struct {
	w  *writer
	at int
	n  byte
}

func (w *writer) beginMap() mapWriter {
	w.b = append(w.b, majorMap)
	return mapWriter{w: w, at: len(w.b) - 1}
}

func (m *mapWriter) end() { m.w.b[m.at] = majorMap | m.n }

func (m *mapWriter) key(k uint64) {
	m.w.head(majorUint, k)
	m.n++
}

// uint writes an unsigned field; omitEmpty leaves out a zero value, as the
// omitempty tag option does.
func (m *mapWriter) uint(k, v uint64, omitEmpty bool) {
	if omitEmpty && v == 0 {
		return
	}
	m.key(k)
	m.w.head(majorUint, v)
}

func (m *mapWriter) time(k uint64, ts Timestamp, omitEmpty bool) {
	if omitEmpty && ts == 0 {
		return
	}
	m.key(k)
	m.w.int(int64(ts))
}

func (m *mapWriter) text(k uint64, s string, omitEmpty bool) {
	if omitEmpty && s == "" {
		return
	}
	m.key(k)
	m.w.text(s)
}

func (m *mapWriter) bytes(k uint64, b []byte, omitEmpty bool) {
	if omitEmpty && len(b) == 0 {
		return
	}
	m.key(k)
	m.w.bytes(b)
}

func (m *mapWriter) id(k uint64, id *MessageID, omitZero bool) {
	if omitZero && id.IsZero() {
		return
	}
	m.key(k)
	m.w.bytes(id[:])
}

// settings writes a text-to-text map with its keys in core deterministic
// order: shorter keys first, then bytewise. Settings from a deterministic
// sender are already in that order; others are sorted on a copy.
func (w *writer) settings(s Settings) {
	w.head(majorMap, uint64(len(s)))
	sorted := true
	for i := 1; i < len(s); i++ {
		if !keyLess(s[i-1].Key, s[i].Key) {
			sorted = false
			break
		}
	}
	if !sorted {
		var stack [16]Setting
		c := append(stack[:0], s...)
		// Insertion sort: settings are few.
		for i := 1; i < len(c); i++ {
			for j := i; j > 0 && keyLess(c[j].Key, c[j-1].Key); j-- {
				c[j], c[j-1] = c[j-1], c[j]
			}
		}
		s = c
	}
	for _, kv := range s {
		w.text(kv.Key)
		w.text(kv.Value)
	}
}

func keyLess(a, b string) bool {
	if len(a) != len(b) {
		return len(a) < len(b)
	}
	return a < b
}

func (w *writer) envelope(e *Envelope) {
	m := w.beginMap()
	m.uint(1, Version, false)
	m.uint(2, uint64(e.Body.Kind()), false)
	m.id(3, &e.ID, false)
	m.time(4, e.Sent, false)
	m.key(5)
	w.body(e.Body)
	m.text(6, e.Device, true)
	m.id(7, &e.ReplyTo, true)
	m.end()
}

func (w *writer) body(b Body) {
	switch b := b.(type) {
	case *EnrollRequest:
		m := w.beginMap()
		m.bytes(1, b.CSR, false)
		m.text(2, b.Token, false)
		m.uint(3, uint64(b.Platform), false)
		m.text(4, b.OSVersion, true)
		m.text(5, b.User, true)
		m.uint(6, uint64(b.Type), false)
		m.text(7, b.Name, true)
		m.end()
	case *EnrollResponse:
		m := w.beginMap()
		m.text(1, b.Device, true)
		m.bytes(2, b.Certificate, true)
		m.uint(3, uint64(b.Authority), true)
		m.uint(4, b.Epoch, true)
		m.bytes(5, b.CACertificate, true)
		m.uint(6, uint64(b.Error), true)
		m.text(7, b.Message, true)
		m.text(8, b.ConnectToken, true)
		m.end()
	case *CheckIn:
		m := w.beginMap()
		m.uint(1, uint64(b.Reason), false)
		if len(b.Profiles) > 0 {
			m.key(2)
			w.head(majorArray, uint64(len(b.Profiles)))
			for i := range b.Profiles {
				p := &b.Profiles[i]
				pm := w.beginMap()
				pm.uint(1, uint64(p.Type), false)
				pm.text(2, p.Name, false)
				pm.uint(3, uint64(p.Authority), false)
				pm.uint(4, p.Version, false)
				pm.time(5, p.RetainUntil, true)
				pm.end()
			}
		}
		m.key(3)
		w.compliance(&b.Compliance)
		m.time(4, b.CertificateExpiry, false)
		m.uint(5, b.DesiredVersion, true)
		m.uint(6, b.Epoch, true)
		m.text(7, b.OSVersion, true)
		m.bytes(8, b.RenewalCSR, true)
		m.end()
	case *CheckInResponse:
		m := w.beginMap()
		m.uint(1, uint64(b.Authority), true)
		m.uint(2, b.Epoch, true)
		m.time(3, b.ChangedAt, true)
		m.uint(4, b.DesiredVersion, true)
		if len(b.Profiles) > 0 {
			m.key(5)
			w.head(majorArray, uint64(len(b.Profiles)))
			for i := range b.Profiles {
				p := &b.Profiles[i]
				pm := w.beginMap()
				pm.uint(1, uint64(p.Type), false)
				pm.text(2, p.Name, false)
				pm.uint(3, p.Version, false)
				if len(p.Settings) > 0 {
					pm.key(4)
					w.settings(p.Settings)
				}
				pm.end()
			}
		}
		m.time(6, b.RetainUntil, true)
		if len(b.Commands) > 0 {
			m.key(7)
			w.head(majorArray, uint64(len(b.Commands)))
			for i := range b.Commands {
				w.body(&b.Commands[i])
			}
		}
		m.uint(8, uint64(b.NextCheckIn), true)
		m.bytes(9, b.Certificate, true)
		m.uint(10, uint64(b.Error), true)
		m.text(11, b.Message, true)
		m.text(12, b.ConnectToken, true)
		m.end()
	case *Push:
		m := w.beginMap()
		m.uint(1, b.Epoch, true)
		m.uint(2, uint64(b.Reason), true)
		m.end()
	case *Command:
		m := w.beginMap()
		m.text(1, b.ID, false)
		m.uint(2, uint64(b.Action), false)
		m.time(3, b.Issued, true)
		m.text(4, b.Message, true)
		m.end()
	case *CommandResult:
		m := w.beginMap()
		m.text(1, b.ID, false)
		m.uint(2, uint64(b.Status), false)
		m.time(3, b.Completed, true)
		m.text(4, b.Error, true)
		m.end()
	case *ComplianceReport:
		m := w.beginMap()
		m.key(1)
		w.compliance(&b.Compliance)
		m.text(2, b.OSVersion, true)
		m.end()
	case *Unenroll:
		m := w.beginMap()
		m.text(1, b.Reason, true)
		m.end()
	}
}

func (w *writer) compliance(c *Compliance) {
	m := w.beginMap()
	m.uint(1, uint64(c.State), false)
	m.time(2, c.EvaluatedAt, true)
	if len(c.Failures) > 0 {
		m.key(3)
		w.head(majorArray, uint64(len(c.Failures)))
		for _, f := range c.Failures {
			w.text(f)
		}
	}
	m.end()
}

// reader decodes well-formed CBOR into the message types. Text fields are
// substrings of one copy of the input, made at the first text field: one
// allocation per message instead of one per string, at the price of keeping
// the message's bytes alive while any of its strings is.
type reader struct {
	b     []byte
	off   int
	arena string
	depth int // arrays and maps open around the current position
}

var errShort = errors.New("unexpected end of data")

// typeError describes a value of the wrong CBOR type for its field.
type typeError struct {
	field string
	got   byte
}

func (e *typeError) Error() string {
	return fmt.Sprintf("%s: unexpected CBOR major type %d", e.field, e.got>>5)
}

// head reads an item head: the major type and its argument.
func (r *reader) head() (major byte, arg uint64, err error) {
	if r.off >= len(r.b) {
		return 0, 0, errShort
	}
	ib := r.b[r.off]
	r.off++
	if ai := ib & 0x1f; ai < 24 {
		return ib & 0xe0, uint64(ai), nil
	}
	return r.longHead(ib)
}

// longHead reads the argument bytes that follow an initial byte whose
// additional information is 24 to 27.
func (r *reader) longHead(ib byte) (major byte, arg uint64, err error) {
	major, ai := ib&0xe0, ib&0x1f
	switch {
	case ai <= 27:
		n := 1 << (ai - 24)
		if len(r.b)-r.off < n {
			return 0, 0, errShort
		}
		for _, c := range r.b[r.off : r.off+n] {
			arg = arg<<8 | uint64(c)
		}
		r.off += n
		return major, arg, nil
	}
	return 0, 0, fmt.Errorf("unsupported additional information %d", ai)
}

// null consumes a CBOR null or undefined, which leave a field at its zero
// value as they do in the reference decoder.
func (r *reader) null() bool {
	if r.off < len(r.b) && (r.b[r.off] == 0xf6 || r.b[r.off] == 0xf7) {
		r.off++
		return true
	}
	return false
}

func (r *reader) uint(field string, max uint64) (uint64, error) {
	if r.off < len(r.b) && r.b[r.off] < 24 && uint64(r.b[r.off]) <= max {
		r.off++ // the common case: a small unsigned value in one byte
		return uint64(r.b[r.off-1]), nil
	}
	if r.null() {
		return 0, nil
	}
	major, v, err := r.head()
	if err != nil {
		return 0, err
	}
	if major != majorUint {
		return 0, &typeError{field, major}
	}
	if v > max {
		return 0, fmt.Errorf("%s: %d overflows", field, v)
	}
	return v, nil
}

func (r *reader) uint8(field string) (uint8, error) {
	v, err := r.uint(field, math.MaxUint8)
	return uint8(v), err
}

func (r *reader) time(field string) (Timestamp, error) {
	if r.null() {
		return 0, nil
	}
	major, v, err := r.head()
	if err != nil {
		return 0, err
	}
	if v > math.MaxInt64 {
		return 0, fmt.Errorf("%s: %d overflows", field, v)
	}
	switch major {
	case majorUint:
		return Timestamp(v), nil
	case majorNeg:
		return Timestamp(-1 - int64(v)), nil
	}
	return 0, &typeError{field, major}
}

func (r *reader) raw(field string, want byte) ([]byte, error) {
	major, n, err := r.head()
	if err != nil {
		return nil, err
	}
	if major != want {
		return nil, &typeError{field, major}
	}
	if uint64(len(r.b)-r.off) < n {
		return nil, errShort
	}
	s := r.b[r.off : r.off+int(n)]
	r.off += int(n)
	return s, nil
}

func (r *reader) text(field string) (string, error) {
	if r.off < len(r.b) && r.b[r.off]&0xe0 != majorText && r.null() {
		return "", nil
	}
	s, err := r.raw(field, majorText)
	if err != nil {
		return "", err
	}
	if msg := checkTextBytes(s); msg != "" {
		return "", fmt.Errorf("%s: %s", field, msg)
	}
	if len(s) == 0 {
		return "", nil
	}
	if r.arena == "" {
		r.arena = string(r.b)
	}
	end := r.off
	return r.arena[end-len(s) : end], nil
}

func (r *reader) bytes(field string) ([]byte, error) {
	if r.null() {
		return nil, nil
	}
	s, err := r.raw(field, majorBytes)
	if err != nil {
		return nil, err
	}
	return append([]byte(nil), s...), nil
}

func (r *reader) messageID(field string, id *MessageID) error {
	if r.null() {
		return nil
	}
	b, err := r.raw(field, majorBytes)
	if err != nil {
		return err
	}
	if len(b) != len(id) {
		return fmt.Errorf("%s: must be 16 bytes, not %d", field, len(b))
	}
	copy(id[:], b)
	return nil
}

// array reads an array head and enters it; the caller calls r.depth--
// after the elements. Callers handle null before calling it.
func (r *reader) array(field string) (int, error) {
	major, n, err := r.head()
	if err != nil {
		return 0, err
	}
	if major != majorArray {
		return 0, &typeError{field, major}
	}
	return int(n), r.open(major, n)
}

// skip steps over the value of an unknown field. It enforces what the
// reference decoding mode enforces on such values: well-formedness, no
// tags, no indefinite lengths, no simple values but false, true, null and
// undefined, no NaN or infinity, and the limits on depth and counts. Like
// the reference, it does not look inside text or map keys of values it
// ignores.
func (r *reader) skip() error {
	start := r.off
	major, n, err := r.head()
	if err != nil {
		return err
	}
	switch major {
	case majorBytes, majorText:
		if uint64(len(r.b)-r.off) < n {
			return errShort
		}
		r.off += int(n)
	case majorArray, majorMap:
		if err := r.open(major, n); err != nil {
			return err
		}
		if major == majorMap {
			n *= 2
		}
		for range n {
			if err := r.skip(); err != nil {
				return err
			}
		}
		r.depth--
	case majorTag:
		return errors.New("CBOR tags are not allowed")
	case majorSimple:
		switch ai := r.b[start] & 0x1f; {
		case ai < 20 || ai == 24:
			return errors.New("CBOR simple values other than false, true, null and undefined are not allowed")
		case ai == 25 && n&0x7c00 == 0x7c00,
			ai == 26 && n&0x7f800000 == 0x7f800000,
			ai == 27 && n&0x7ff0000000000000 == 0x7ff0000000000000:
			return errors.New("NaN and infinite floating-point values are not allowed")
		}
	}
	return nil
}

// open enters an array or map of n elements or pairs, enforcing the limits
// on nesting and counts before anything is allocated for it.
func (r *reader) open(major byte, n uint64) error {
	if r.depth++; r.depth > MaxNesting {
		return fmt.Errorf("nested deeper than %d levels", MaxNesting)
	}
	if major == majorMap && n > MaxMapPairs {
		return fmt.Errorf("map of %d pairs, more than %d", n, MaxMapPairs)
	}
	if major == majorArray && n > MaxArrayElements {
		return fmt.Errorf("array of %d elements, more than %d", n, MaxArrayElements)
	}
	return nil
}

// errUnknownField is returned by a fields callback for a key it does not
// know; the reader then skips the value.
var errUnknownField = errors.New("unknown field")

// fields reads a map of a struct and calls fn with each key, positioned at
// the value. Duplicate keys are errors, known or unknown, as in decMode.
func (r *reader) fields(what string, fn func(key uint64) error) error {
	if r.null() {
		return nil
	}
	major, n, err := r.head()
	if err != nil {
		return err
	}
	if major != majorMap {
		return &typeError{what, major}
	}
	// On error the decode is abandoned, so only the success path needs to
	// leave the map.
	if err := r.open(major, n); err != nil {
		return err
	}
	var seen uint64
	var unknown []any
	for range n {
		var key uint64
		var other any
		if r.off < len(r.b) && r.b[r.off] < 24 {
			// The common case: a field number below 24, one byte.
			key = uint64(r.b[r.off])
			r.off++
		} else if key, other, err = r.mapKey(what); err != nil {
			return err
		}
		if other == nil && key < 64 {
			if seen&(1<<key) != 0 {
				return fmt.Errorf("%s: duplicate map key %d", what, key)
			}
			seen |= 1 << key
			err := fn(key)
			if err == nil {
				continue
			}
			if err != errUnknownField {
				return err
			}
		} else {
			if other == nil {
				other = key
			}
			for _, u := range unknown {
				if u == other {
					return fmt.Errorf("%s: duplicate map key %v", what, other)
				}
			}
			unknown = append(unknown, other)
		}
		if err := r.skip(); err != nil {
			return err
		}
	}
	r.depth--
	return nil
}

// negativeKey is a negative integer map key, -1-n.
type negativeKey uint64

// mapKey reads a struct map key. An unsigned key is returned as a number
// with a nil other; a text or negative key, which can only be an unknown
// field, is returned as other for duplicate detection.
func (r *reader) mapKey(what string) (key uint64, other any, err error) {
	if r.off < len(r.b) && r.b[r.off]&0xe0 == majorText {
		// Any text is a valid unknown key; only UTF-8 is required.
		s, err := r.raw(what+" key", majorText)
		if err == nil && !utf8.Valid(s) {
			err = fmt.Errorf("%s key: invalid UTF-8", what)
		}
		return 0, string(s), err
	}
	major, v, err := r.head()
	if err != nil {
		return 0, nil, err
	}
	if v > math.MaxInt64 {
		// Integer keys are int64 in the reference decoder too.
		return 0, nil, fmt.Errorf("%s: map key overflows int64", what)
	}
	switch major {
	case majorUint:
		return v, nil, nil
	case majorNeg:
		return 0, negativeKey(v), nil
	}
	return 0, nil, fmt.Errorf("%s: map key of CBOR major type %d", what, major>>5)
}

// envelopeIn is a decoded envelope before its body is: the body is kept as
// the span of its bytes, since the kind may follow it in the map.
type envelopeIn struct {
	version   uint64
	kind      Kind
	env       Envelope
	body      Body // decoded when kind and version preceded it
	bodyStart int
	bodyEnd   int
}

func (r *reader) envelope(in *envelopeIn) error {
	in.bodyStart = -1
	return r.fields("envelope", func(k uint64) (err error) {
		switch k {
		case 1:
			in.version, err = r.uint("version", math.MaxUint64)
		case 2:
			var v uint8
			v, err = r.uint8("kind")
			in.kind = Kind(v)
		case 3:
			err = r.messageID("id", &in.env.ID)
		case 4:
			in.env.Sent, err = r.time("sent")
		case 5:
			if r.null() {
				return nil // an absent body: refused below
			}
			in.bodyStart = r.off
			if in.body = newBody(in.kind); in.body != nil && in.version == Version {
				// The usual order: kind and version came first, so the
				// body decodes in place.
				return r.body(in.body)
			}
			in.body = nil
			err = r.skip()
			in.bodyEnd = r.off
		case 6:
			in.env.Device, err = r.text("device")
		case 7:
			err = r.messageID("reply_to", &in.env.ReplyTo)
		default:
			return errUnknownField
		}
		return err
	})
}

// body decodes the body b, which newBody made for the kind.
func (r *reader) body(b Body) error {
	switch m := b.(type) {
	case *EnrollRequest:
		return r.fields("enroll_request", func(k uint64) (err error) {
			switch k {
			case 1:
				m.CSR, err = r.bytes("csr")
			case 2:
				m.Token, err = r.text("token")
			case 3:
				err = r.enum("platform", (*uint8)(&m.Platform))
			case 4:
				m.OSVersion, err = r.text("os_version")
			case 5:
				m.User, err = r.text("user")
			case 6:
				err = r.enum("type", (*uint8)(&m.Type))
			case 7:
				m.Name, err = r.text("name")
			default:
				return errUnknownField
			}
			return err
		})
	case *EnrollResponse:
		return r.fields("enroll_response", func(k uint64) (err error) {
			switch k {
			case 1:
				m.Device, err = r.text("device")
			case 2:
				m.Certificate, err = r.bytes("certificate")
			case 3:
				err = r.enum("authority", (*uint8)(&m.Authority))
			case 4:
				m.Epoch, err = r.uint("epoch", math.MaxUint64)
			case 5:
				m.CACertificate, err = r.bytes("ca_certificate")
			case 6:
				err = r.enum("error", (*uint8)(&m.Error))
			case 7:
				m.Message, err = r.text("message")
			case 8:
				m.ConnectToken, err = r.text("connect_token")
			default:
				return errUnknownField
			}
			return err
		})
	case *CheckIn:
		return r.fields("checkin", func(k uint64) (err error) {
			switch k {
			case 1:
				err = r.enum("reason", (*uint8)(&m.Reason))
			case 2:
				m.Profiles, err = r.installedProfiles()
			case 3:
				err = r.compliance(&m.Compliance)
			case 4:
				m.CertificateExpiry, err = r.time("certificate_expiry")
			case 5:
				m.DesiredVersion, err = r.uint("desired_version", math.MaxUint64)
			case 6:
				m.Epoch, err = r.uint("epoch", math.MaxUint64)
			case 7:
				m.OSVersion, err = r.text("os_version")
			case 8:
				m.RenewalCSR, err = r.bytes("renewal_csr")
			default:
				return errUnknownField
			}
			return err
		})
	case *CheckInResponse:
		return r.fields("checkin_response", func(k uint64) (err error) {
			switch k {
			case 1:
				err = r.enum("authority", (*uint8)(&m.Authority))
			case 2:
				m.Epoch, err = r.uint("epoch", math.MaxUint64)
			case 3:
				m.ChangedAt, err = r.time("changed_at")
			case 4:
				m.DesiredVersion, err = r.uint("desired_version", math.MaxUint64)
			case 5:
				m.Profiles, err = r.desiredProfiles()
			case 6:
				m.RetainUntil, err = r.time("retain_until")
			case 7:
				m.Commands, err = r.commands()
			case 8:
				var v uint64
				v, err = r.uint("next_checkin", math.MaxUint32)
				m.NextCheckIn = uint32(v)
			case 9:
				m.Certificate, err = r.bytes("certificate")
			case 10:
				err = r.enum("error", (*uint8)(&m.Error))
			case 11:
				m.Message, err = r.text("message")
			case 12:
				m.ConnectToken, err = r.text("connect_token")
			default:
				return errUnknownField
			}
			return err
		})
	case *Push:
		return r.fields("push", func(k uint64) (err error) {
			switch k {
			case 1:
				m.Epoch, err = r.uint("epoch", math.MaxUint64)
			case 2:
				err = r.enum("reason", (*uint8)(&m.Reason))
			default:
				return errUnknownField
			}
			return err
		})
	case *Command:
		return r.command(m)
	case *CommandResult:
		return r.fields("command_result", func(k uint64) (err error) {
			switch k {
			case 1:
				m.ID, err = r.text("id")
			case 2:
				err = r.enum("status", (*uint8)(&m.Status))
			case 3:
				m.Completed, err = r.time("completed")
			case 4:
				m.Error, err = r.text("error")
			default:
				return errUnknownField
			}
			return err
		})
	case *ComplianceReport:
		return r.fields("compliance_report", func(k uint64) (err error) {
			switch k {
			case 1:
				err = r.compliance(&m.Compliance)
			case 2:
				m.OSVersion, err = r.text("os_version")
			default:
				return errUnknownField
			}
			return err
		})
	case *Unenroll:
		return r.fields("unenroll", func(k uint64) (err error) {
			if k != 1 {
				return errUnknownField
			}
			m.Reason, err = r.text("reason")
			return err
		})
	}
	return fmt.Errorf("no decoder for %T", b)
}

func (r *reader) enum(field string, dst *uint8) (err error) {
	*dst, err = r.uint8(field)
	return err
}

func (r *reader) installedProfiles() ([]InstalledProfile, error) {
	if r.null() {
		return nil, nil
	}
	n, err := r.array("profiles")
	if err != nil {
		return nil, err
	}
	ps := make([]InstalledProfile, n)
	for i := range ps {
		p := &ps[i]
		err := r.fields("profiles[]", func(k uint64) (err error) {
			switch k {
			case 1:
				err = r.enum("type", (*uint8)(&p.Type))
			case 2:
				p.Name, err = r.text("name")
			case 3:
				err = r.enum("authority", (*uint8)(&p.Authority))
			case 4:
				p.Version, err = r.uint("version", math.MaxUint64)
			case 5:
				p.RetainUntil, err = r.time("retain_until")
			default:
				return errUnknownField
			}
			return err
		})
		if err != nil {
			return nil, err
		}
	}
	r.depth--
	return ps, nil
}

func (r *reader) desiredProfiles() ([]DesiredProfile, error) {
	if r.null() {
		return nil, nil
	}
	n, err := r.array("profiles")
	if err != nil {
		return nil, err
	}
	ps := make([]DesiredProfile, n)
	// The settings of all profiles share one backing array; each profile's
	// span is recorded while decoding and sliced out at the end.
	var all Settings
	var spanStack [32][2]int
	spans := spanStack[:0]
	if n > len(spanStack) {
		spans = make([][2]int, 0, n)
	}
	for i := range ps {
		p := &ps[i]
		span := [2]int{-1, -1}
		err := r.fields("profiles[]", func(k uint64) (err error) {
			switch k {
			case 1:
				err = r.enum("type", (*uint8)(&p.Type))
			case 2:
				p.Name, err = r.text("name")
			case 3:
				p.Version, err = r.uint("version", math.MaxUint64)
			case 4:
				if r.null() {
					span = [2]int{-1, -1}
					return nil
				}
				span[0] = len(all)
				all, err = r.appendSettings(all)
				span[1] = len(all)
			default:
				return errUnknownField
			}
			return err
		})
		if err != nil {
			return nil, err
		}
		spans = append(spans, span)
	}
	r.depth--
	for i, span := range spans {
		if span[0] >= 0 {
			ps[i].Settings = all[span[0]:span[1]:span[1]]
		}
	}
	return ps, nil
}

// appendSettings decodes a settings map and appends it to s. A null map
// leaves s as it is; a map, even empty, makes s non-nil.
func (r *reader) appendSettings(s Settings) (Settings, error) {
	if r.null() {
		return s, nil
	}
	major, n, err := r.head()
	if err != nil {
		return s, err
	}
	if major != majorMap {
		return s, &typeError{"settings", major}
	}
	if err := r.open(major, n); err != nil {
		return s, err
	}
	if uint64(len(s))+n > MaxSettingsTotal {
		return s, fmt.Errorf("settings: more than %d in one message", MaxSettingsTotal)
	}
	if s == nil {
		s = make(Settings, 0, max(n, 16))
	}
	start := len(s)
	for range n {
		var kv Setting
		if kv.Key, err = r.text("settings key"); err != nil {
			return s, err
		}
		for _, prev := range s[start:] {
			if prev.Key == kv.Key {
				return s, fmt.Errorf("settings: duplicate map key %q", kv.Key)
			}
		}
		if kv.Value, err = r.text("settings value"); err != nil {
			return s, err
		}
		s = append(s, kv)
	}
	r.depth--
	return s, nil
}

func (r *reader) commands() ([]Command, error) {
	if r.null() {
		return nil, nil
	}
	n, err := r.array("commands")
	if err != nil {
		return nil, err
	}
	cs := make([]Command, n)
	for i := range cs {
		if err := r.command(&cs[i]); err != nil {
			return nil, err
		}
	}
	r.depth--
	return cs, nil
}

func (r *reader) command(c *Command) error {
	return r.fields("command", func(k uint64) (err error) {
		switch k {
		case 1:
			c.ID, err = r.text("id")
		case 2:
			err = r.enum("action", (*uint8)(&c.Action))
		case 3:
			c.Issued, err = r.time("issued")
		case 4:
			c.Message, err = r.text("message")
		default:
			return errUnknownField
		}
		return err
	})
}

func (r *reader) compliance(c *Compliance) error {
	return r.fields("compliance", func(k uint64) (err error) {
		switch k {
		case 1:
			err = r.enum("state", (*uint8)(&c.State))
		case 2:
			c.EvaluatedAt, err = r.time("evaluated_at")
		case 3:
			if r.null() {
				return nil
			}
			var n int
			if n, err = r.array("failures"); err != nil {
				return err
			}
			c.Failures = make([]string, n)
			for i := range c.Failures {
				if c.Failures[i], err = r.text("failures[]"); err != nil {
					return err
				}
			}
			r.depth--
		default:
			return errUnknownField
		}
		return err
	})
}
