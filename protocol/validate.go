package protocol

import (
	"encoding/binary"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// validator collects the first rule a message breaks. Its methods do
// nothing once it has failed, so a body's validate reads as a list of rules.
type validator struct {
	err error
	// decoded skips the character checks of text fields, which the
	// reader made while decoding them.
	decoded bool
}

func (v *validator) fail(field, rule string) {
	if v.err == nil {
		v.err = fmt.Errorf("%w: %s: %s", ErrInvalid, field, rule)
	}
}

// text checks a single-line text field: UTF-8, no control characters, and
// a length in bytes between min and max.
func (v *validator) text(field, s string, min, max int) {
	if v.err != nil {
		return
	}
	switch {
	case len(s) < min:
		v.fail(field, "required")
	case len(s) > max:
		v.fail(field, fmt.Sprintf("longer than %d bytes", max))
	case !v.decoded:
		if err := checkText(s); err != "" {
			v.fail(field, err)
		}
	}
}

// checkText returns what is wrong with the characters of a single-line
// text, or "" if nothing is: it must be UTF-8 without control characters.
func checkText(s string) string {
	ascii := true
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c == 0x7f {
			return "contains a control character"
		}
		ascii = ascii && c < 0x80
	}
	if !ascii && !utf8.ValidString(s) {
		return "not valid UTF-8"
	}
	if !ascii && strings.ContainsFunc(s, unicode.IsControl) {
		return "contains a control character"
	}
	return ""
}

// checkTextBytes is checkText for the decoder's hot path. It tests eight
// bytes at a time for printable ASCII, the common case, and leaves
// anything else to checkText.
func checkTextBytes(b []byte) string {
	const (
		ones  = 0x0101010101010101
		highs = 0x8080808080808080
	)
	i := 0
	for ; i+8 <= len(b); i += 8 {
		x := binary.LittleEndian.Uint64(b[i:])
		del := x ^ 0x7f7f7f7f7f7f7f7f
		if x&highs != 0 || // a byte of 0x80 or more
			(x-0x20*ones)&^x&highs != 0 || // a byte below 0x20
			(del-ones)&^del&highs != 0 { // a byte equal to 0x7f
			return checkText(string(b))
		}
	}
	for ; i < len(b); i++ {
		if c := b[i]; c < 0x20 || c >= 0x7f {
			return checkText(string(b))
		}
	}
	return ""
}

func (v *validator) bytes(field string, b []byte, min, max int) {
	switch {
	case len(b) < min:
		v.fail(field, "required")
	case len(b) > max:
		v.fail(field, fmt.Sprintf("longer than %d bytes", max))
	}
}

func (v *validator) id(field, s string) {
	if v.err != nil {
		return
	}
	if err := ValidID(s); err != nil {
		v.fail(field, err.Error())
	}
}

func (v *validator) enum(field string, valid bool) {
	if !valid {
		v.fail(field, "unknown value")
	}
}

func (v *validator) count(field string, n, max int) {
	if n > max {
		v.fail(field, fmt.Sprintf("more than %d entries", max))
	}
}

// time checks that ts lies between the Unix epoch and year 9999, and that
// it is set when required.
func (v *validator) time(field string, ts Timestamp, required bool) {
	switch {
	case ts < 0 || ts > MaxTimestamp:
		v.fail(field, "outside years 1970 to 9999")
	case required && ts == 0:
		v.fail(field, "required")
	}
}

// settings checks a profile's settings. The field names are constants:
// building them per call would allocate on the hot path.
func (v *validator) settings(s Settings) {
	if v.err != nil {
		return
	}
	v.count("profiles[].settings", len(s), MaxSettings)
	for i, kv := range s {
		v.text("profiles[].settings key", kv.Key, 1, MaxShortText)
		v.text("profiles[].settings value", kv.Value, 0, MaxMessageText)
		if v.decoded {
			continue // the reader refused duplicate keys already
		}
		for _, prev := range s[:i] {
			if prev.Key == kv.Key {
				v.fail("profiles[].settings", fmt.Sprintf("key %q listed twice", kv.Key))
				return
			}
		}
	}
}

// profileKey identifies a profile within a list: the type, the name and,
// on a device, the authority that installed it.
type profileKey struct {
	typ  ProfileType
	auth Authority
	name string
}

// unique checks that the n keys returned by key are distinct. Small lists,
// the common case, are compared pairwise on the stack.
func (v *validator) unique(field string, n int, key func(int) profileKey) {
	if v.err != nil || n < 2 {
		return
	}
	if n <= 16 {
		var stack [16]profileKey
		keys := stack[:n]
		for i := range keys {
			keys[i] = key(i)
		}
		for i := 1; i < n; i++ {
			for j := 0; j < i; j++ {
				if keys[j] == keys[i] {
					v.fail(field, fmt.Sprintf("%s %q listed twice", keys[i].typ, keys[i].name))
					return
				}
			}
		}
		return
	}
	seen := make(map[profileKey]struct{}, n)
	for i := 0; i < n; i++ {
		k := key(i)
		if _, dup := seen[k]; dup {
			v.fail(field, fmt.Sprintf("%s %q listed twice", k.typ, k.name))
			return
		}
		seen[k] = struct{}{}
	}
}
