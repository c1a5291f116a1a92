package protocol

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"

	"github.com/fxamacker/cbor/v2"
)

// The reference codec: the CBOR library's reflection over the struct tags,
// with the protocol's one encoding mode and one decoding mode, which define
// the encoding and the limits. The codec in wire.go must agree with it on
// every input: TestFastPathMatchesReference and FuzzDecode check that.

// encMode is the protocol's one encoding mode: core deterministic
// encoding, so that the same message always has the same bytes.
var encMode = func() cbor.EncMode {
	em, err := cbor.CoreDetEncOptions().EncMode()
	if err != nil {
		panic(err)
	}
	return em
}()

// decMode is the protocol's one decoding mode: the limits on depth and
// counts, and no tags, indefinite lengths, duplicate keys, invalid UTF-8 or
// simple values but false, true, null and undefined.
var decMode = func() cbor.DecMode {
	var reject []func(*cbor.SimpleValueRegistry) error
	for sv := range 256 {
		if (sv < 20 || sv > 31) && sv != 24 {
			reject = append(reject, cbor.WithRejectedSimpleValue(cbor.SimpleValue(sv)))
		}
	}
	simple, err := cbor.NewSimpleValueRegistryFromDefaults(reject...)
	if err != nil {
		panic(err)
	}
	dm, err := cbor.DecOptions{
		SimpleValues:     simple,
		DupMapKey:        cbor.DupMapKeyEnforcedAPF,
		MaxNestedLevels:  MaxNesting,
		MaxArrayElements: MaxArrayElements,
		MaxMapPairs:      MaxMapPairs,
		IndefLength:      cbor.IndefLengthForbidden,
		TagsMd:           cbor.TagsForbidden,
		UTF8:             cbor.UTF8RejectInvalid,
		NaN:              cbor.NaNDecodeForbidden,
		Inf:              cbor.InfDecodeForbidden,
	}.DecMode()
	if err != nil {
		panic(err)
	}
	return dm
}()

type refEnvelopeOut struct {
	Version uint64    `cbor:"1,keyasint"`
	Kind    Kind      `cbor:"2,keyasint"`
	ID      MessageID `cbor:"3,keyasint"`
	Sent    Timestamp `cbor:"4,keyasint"`
	Body    any       `cbor:"5,keyasint"`
	Device  string    `cbor:"6,keyasint,omitempty"`
	ReplyTo MessageID `cbor:"7,keyasint,omitzero"`
}

type refEnvelopeIn struct {
	Version uint64          `cbor:"1,keyasint"`
	Kind    Kind            `cbor:"2,keyasint"`
	ID      MessageID       `cbor:"3,keyasint"`
	Sent    Timestamp       `cbor:"4,keyasint"`
	Body    cbor.RawMessage `cbor:"5,keyasint"`
	Device  string          `cbor:"6,keyasint"`
	ReplyTo MessageID       `cbor:"7,keyasint"`
}

func referenceEncode(e Envelope) ([]byte, error) {
	return encMode.Marshal(refEnvelopeOut{Version: Version, Kind: e.Kind(), ID: e.ID, Sent: e.Sent,
		Body: e.Body, Device: e.Device, ReplyTo: e.ReplyTo})
}

func referenceDecode(data []byte) (Envelope, error) {
	if len(data) > MaxPayload {
		return Envelope{}, ErrTooLarge
	}
	var w refEnvelopeIn
	if err := decMode.Unmarshal(data, &w); err != nil {
		return Envelope{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if w.Version != Version {
		return Envelope{}, ErrVersion
	}
	body := newBody(w.Kind)
	if body == nil {
		return Envelope{}, ErrKind
	}
	if len(w.Body) == 0 || w.Body[0] == 0xf6 || w.Body[0] == 0xf7 {
		return Envelope{}, ErrInvalid // absent, null or undefined: no body
	}
	if err := decMode.Unmarshal(w.Body, body); err != nil {
		return Envelope{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	e := Envelope{ID: w.ID, Sent: w.Sent, Device: w.Device, ReplyTo: w.ReplyTo, Body: body}
	return e, e.Validate()
}

// randomEnvelope returns a valid message of a random kind with a random
// choice of optional fields, for the agreement tests.
func randomEnvelope(r *rand.Rand) Envelope {
	pick := func(n int) int { return r.IntN(n) }
	maybe := func() bool { return r.IntN(2) == 0 }
	text := func(max int) string {
		const alphabet = "abcXYZ019 -_.@é漢"
		b := make([]rune, 1+r.IntN(max))
		rs := []rune(alphabet)
		for i := range b {
			b[i] = rs[r.IntN(len(rs))]
		}
		return string(b)
	}
	opt := func(s string) string {
		if maybe() {
			return ""
		}
		return s
	}
	id := func() string { return fmt.Sprintf("id-%d", r.Uint32()) }
	ts := func() Timestamp { return Timestamp(r.Int64N(int64(MaxTimestamp))) }
	optTS := func() Timestamp {
		if maybe() {
			return 0
		}
		return ts()
	}
	blob := func(max int) []byte {
		b := make([]byte, 1+r.IntN(max))
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		return b
	}
	optBlob := func(max int) []byte {
		if maybe() {
			return nil
		}
		return blob(max)
	}
	authority := func() Authority { return Authority(1 + pick(2)) }
	compliance := func() Compliance {
		c := Compliance{State: ComplianceState(pick(3)), EvaluatedAt: optTS()}
		for range pick(3) {
			c.Failures = append(c.Failures, text(40))
		}
		return c
	}
	var msgID, reply MessageID
	for i := range msgID {
		msgID[i], reply[i] = byte(r.Uint32()), byte(r.Uint32())
	}
	msgID[0], reply[0] = 1, 2
	env := Envelope{ID: msgID, Sent: ts() + 1, Device: id()}
	switch Kinds[pick(len(Kinds))] {
	case KindEnrollRequest:
		env.Device = ""
		m := &EnrollRequest{CSR: blob(300), Token: text(30), Platform: Platforms[pick(len(Platforms))],
			OSVersion: opt(text(10)), User: opt(text(40)), Type: EnrollmentType(1 + pick(3)), Name: opt(text(40))}
		if m.User == "" {
			m.Type = EnrollDEP
		}
		env.Body = m
	case KindEnrollResponse:
		env.Device, env.ReplyTo = "", reply
		if maybe() {
			env.Body = &EnrollResponse{Error: ErrorCode(1 + pick(13)), Message: opt(text(80))}
		} else {
			env.Body = &EnrollResponse{Device: id(), Certificate: blob(500), Authority: authority(),
				Epoch: r.Uint64N(5), CACertificate: optBlob(500)}
		}
	case KindCheckIn:
		m := &CheckIn{Reason: CheckInReason(1 + pick(5)), Compliance: compliance(), CertificateExpiry: ts() + 1,
			DesiredVersion: r.Uint64(), Epoch: r.Uint64N(3), OSVersion: opt(text(10)), RenewalCSR: optBlob(300)}
		for i := range pick(20) {
			m.Profiles = append(m.Profiles, InstalledProfile{Type: ProfileType(1 + pick(6)),
				Name: fmt.Sprintf("%s %d", text(20), i), Authority: authority(), Version: r.Uint64(), RetainUntil: optTS()})
		}
		env.Body = m
	case KindCheckInResponse:
		env.ReplyTo = reply
		if maybe() && maybe() {
			env.Body = &CheckInResponse{Error: ErrorCode(1 + pick(13)), Message: opt(text(80))}
			break
		}
		m := &CheckInResponse{Authority: authority(), Epoch: r.Uint64N(9), ChangedAt: optTS(),
			DesiredVersion: r.Uint64(), RetainUntil: optTS(), NextCheckIn: uint32(pick(MaxNextCheckIn + 1)),
			Certificate: optBlob(400)}
		for i := range pick(20) {
			p := DesiredProfile{Type: ProfileType(1 + pick(6)), Name: fmt.Sprintf("%s %d", text(20), i), Version: r.Uint64()}
			for j := range pick(4) {
				p.Settings = append(p.Settings, Setting{Key: fmt.Sprintf("k%d%s", j, text(8)), Value: opt(text(30))})
			}
			// A deterministic sender's order, which Decode keeps.
			slices.SortFunc(p.Settings, func(a, b Setting) int {
				if keyLess(a.Key, b.Key) {
					return -1
				}
				return 1
			})
			m.Profiles = append(m.Profiles, p)
		}
		for range pick(3) {
			m.Commands = append(m.Commands, Command{ID: id(), Action: CommandKind(1 + pick(4)), Issued: optTS(), Message: opt(text(30))})
		}
		env.Body = m
	case KindPush:
		env.Body = &Push{Epoch: r.Uint64N(4), Reason: PushReason(pick(5))}
	case KindCommand:
		env.Body = &Command{ID: id(), Action: CommandKind(1 + pick(4)), Issued: optTS(), Message: opt(text(30))}
	case KindCommandResult:
		env.Body = &CommandResult{ID: id(), Status: CommandStatus(1 + pick(3)), Completed: optTS(), Error: opt(text(50))}
	case KindComplianceReport:
		env.Body = &ComplianceReport{Compliance: compliance(), OSVersion: opt(text(10))}
	case KindUnenroll:
		env.Body = &Unenroll{Reason: opt(text(50))}
	}
	return env
}

// agreementCases returns the golden messages, the benchmark messages and
// generated ones.
func agreementCases(t testing.TB) map[string]Envelope {
	cases := golden()
	in, out := benchCheckIn(10)
	cases["bench_checkin"], cases["bench_checkin_response"] = in, out
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 500 {
		env := randomEnvelope(r)
		if err := env.Validate(); err != nil {
			t.Fatalf("generated message %d is invalid: %v", i, err)
		}
		cases[fmt.Sprintf("random_%03d_%s", i, env.Kind())] = env
	}
	return cases
}

// TestFastPathMatchesReference checks that the hand-written codec writes
// the bytes the reflection codec writes and reads back the same values.
func TestFastPathMatchesReference(t *testing.T) {
	for name, env := range agreementCases(t) {
		fast, err := Encode(env)
		if err != nil {
			t.Fatalf("%s: Encode: %v", name, err)
		}
		ref, err := referenceEncode(env)
		if err != nil {
			t.Fatalf("%s: reference encode: %v", name, err)
		}
		if !bytes.Equal(fast, ref) {
			t.Fatalf("%s: Encode =\n%x\nreference =\n%x", name, fast, ref)
		}
		got, err := Decode(fast)
		if err != nil {
			t.Fatalf("%s: Decode: %v", name, err)
		}
		want, err := referenceDecode(fast)
		if err != nil {
			t.Fatalf("%s: reference decode: %v", name, err)
		}
		if !reflect.DeepEqual(got, want) || !reflect.DeepEqual(got, env) {
			t.Fatalf("%s: Decode = %+v\nreference = %+v\nsent = %+v", name, got, want, env)
		}
	}
}

// FuzzDecode feeds arbitrary bytes to Decode. It must not panic, must agree
// with the reference decoder on what it accepts and what it returns, and
// whatever it accepts must encode to the reference's bytes and survive a
// round trip. Seeds: the golden vectors.
func FuzzDecode(f *testing.F) {
	seeds, err := filepath.Glob(filepath.Join("testdata", "*.cbor"))
	if err != nil || len(seeds) == 0 {
		f.Fatalf("no seeds in testdata: %v", err)
	}
	for _, path := range seeds {
		b, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := Decode(data)
		want, refErr := referenceDecode(data)
		if (err == nil) != (refErr == nil) {
			t.Fatalf("Decode error %v; reference error %v", err, refErr)
		}
		if err != nil {
			return
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("Decode = %+v; reference = %+v", got, want)
		}
		again, err := Encode(got)
		if err != nil {
			t.Fatalf("Encode of a decoded message: %v", err)
		}
		ref, err := referenceEncode(got)
		if err != nil {
			t.Fatalf("reference encode of a decoded message: %v", err)
		}
		if !bytes.Equal(again, ref) {
			t.Fatalf("Encode =\n%x\nreference =\n%x", again, ref)
		}
		// Re-encoding normalizes (settings order, shortest forms); from
		// there on a round trip must be exact.
		back, err := Decode(again)
		if err != nil {
			t.Fatalf("Decode of re-encoded message: %v", err)
		}
		third, err := Encode(back)
		if err != nil || !bytes.Equal(third, again) {
			t.Fatalf("round trip not stable: %v\n%x\n%x", err, third, again)
		}
	})
}
