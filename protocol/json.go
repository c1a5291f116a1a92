package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxJSONDepth bounds the nesting of arrays and objects in a JSON document
// that DecodeJSON accepts. Admin requests, state and facts files nest a few
// levels; the bound keeps a hostile document from costing deep recursion.
const MaxJSONDepth = 32

// DecodeJSON decodes the single JSON value in data into v, strictly, for
// input that crosses a trust boundary: admin requests, the agent's state
// and facts files, its control socket. The error wraps ErrTooLarge when
// data is more than max bytes, and ErrMalformed when data is not valid
// UTF-8, is empty, is not JSON, holds more than one value, nests arrays
// and objects deeper than MaxJSONDepth, repeats a key in any object, has a
// field v does not know, or has a value of the wrong type for v; its text
// says where (a byte offset or the key path, such as settings.server).
//
// Keys that differ only in case count as repeated: encoding/json matches
// struct fields regardless of case and keeps the last value, so
// {"mode":"a","MODE":"b"} would otherwise pass a check of the first "mode"
// and act on the second.
func DecodeJSON(data []byte, max int, v any) error {
	if len(data) > max {
		return &jsonError{kind: ErrTooLarge, msg: fmt.Sprintf("JSON document is %d bytes, more than the limit of %d", len(data), max)}
	}
	if !utf8.Valid(data) {
		return malformedJSON(nil, "JSON document is not valid UTF-8 at byte %d", invalidUTF8At(data))
	}
	if err := checkJSON(data); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return malformedJSON(err, "%s", jsonDecodeText(err))
	}
	return nil
}

// jsonError is an error of DecodeJSON. Its text is its own, because the
// sentinel's text speaks of CBOR messages; it wraps kind and the cause.
type jsonError struct {
	kind  error // ErrTooLarge or ErrMalformed
	cause error // from encoding/json or a field's decoder, or nil
	msg   string
}

func (e *jsonError) Error() string { return e.msg }

func (e *jsonError) Unwrap() []error {
	if e.cause == nil {
		return []error{e.kind}
	}
	return []error{e.kind, e.cause}
}

func malformedJSON(cause error, format string, args ...any) error {
	return &jsonError{kind: ErrMalformed, cause: cause, msg: fmt.Sprintf(format, args...)}
}

// jsonDecodeText describes an error of json.Decoder.Decode, which reaches
// it only for input that checkJSON accepted: a wrong type, an unknown
// field, a value its type's decoder refused.
func jsonDecodeText(err error) string {
	// Only the decoder's own type error: one wrapped by a field's decoder
	// is relative to that field's value and said better by its wrapper.
	if te, ok := err.(*json.UnmarshalTypeError); ok {
		where := te.Field
		if where == "" {
			where = "the document"
		}
		return fmt.Sprintf("JSON %s at %s (byte %d) has the wrong type; want %s", te.Value, where, te.Offset, te.Type)
	}
	return "JSON document: " + strings.TrimPrefix(err.Error(), "json: ")
}

func invalidUTF8At(data []byte) int {
	for i := 0; i < len(data); {
		r, n := utf8.DecodeRune(data[i:])
		if r == utf8.RuneError && n == 1 {
			return i
		}
		i += n
	}
	return len(data)
}

// jsonFrame is an array or object that checkJSON is inside.
type jsonFrame struct {
	object  bool
	wantKey bool              // an object's next token is a key or its end
	key     string            // an object's current key
	index   int               // an array's current element
	keys    map[string]string // an object's keys so far, by their case-folded form
}

// checkJSON checks the structure of data in one pass over its tokens: one
// value, nested at most MaxJSONDepth deep, no key twice in an object.
func checkJSON(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber() // a number too large for float64 is the field's business
	var stack []jsonFrame
	for started := false; !started || len(stack) > 0; started = true {
		tok, err := dec.Token()
		if err == io.EOF {
			if !started {
				return malformedJSON(nil, "JSON document is empty; want one value")
			}
			return malformedJSON(nil, "JSON document ends inside %s", jsonPath(stack))
		}
		if err != nil {
			return malformedJSON(err, "JSON syntax error at %s: %v", jsonWhere(dec, stack, err), err)
		}
		if n := len(stack); n > 0 && stack[n-1].object && stack[n-1].wantKey {
			f := &stack[n-1]
			if key, ok := tok.(string); ok {
				folded := foldJSONKey(key)
				f.key, f.wantKey = key, false
				if prev, dup := f.keys[folded]; dup {
					if prev != key {
						return malformedJSON(nil, "JSON key %s repeated at byte %d (as %s: keys that differ only in case are the same to a decoder)", jsonPath(stack), dec.InputOffset(), appendPathKey(nil, prev))
					}
					return malformedJSON(nil, "JSON key %s repeated at byte %d", jsonPath(stack), dec.InputOffset())
				}
				f.keys[folded] = key
				continue
			}
			// The decoder allows only a key or '}' here.
			stack = stack[:n-1]
			valueDone(stack)
			continue
		}
		switch tok {
		case json.Delim('{'), json.Delim('['):
			if len(stack) == MaxJSONDepth {
				return malformedJSON(nil, "JSON nests deeper than %d levels at %s (byte %d)", MaxJSONDepth, jsonPath(stack), dec.InputOffset())
			}
			f := jsonFrame{object: tok == json.Delim('{')}
			if f.object {
				f.wantKey, f.keys = true, map[string]string{}
			}
			stack = append(stack, f)
		case json.Delim(']'):
			stack = stack[:len(stack)-1]
			valueDone(stack)
		default:
			valueDone(stack)
		}
	}
	end := dec.InputOffset()
	if _, err := dec.Token(); err != io.EOF {
		return malformedJSON(nil, "JSON document has data after its value, at byte %d; want exactly one value", end)
	}
	return nil
}

// valueDone moves the innermost frame past the value that just ended.
func valueDone(stack []jsonFrame) {
	if n := len(stack); n > 0 {
		if f := &stack[n-1]; f.object {
			f.wantKey = true
		} else {
			f.index++
		}
	}
}

// jsonWhere locates a syntax error by its offset and the path to it.
func jsonWhere(dec *json.Decoder, stack []jsonFrame, err error) string {
	off := dec.InputOffset()
	var se *json.SyntaxError
	if errors.As(err, &se) {
		off = se.Offset
	}
	return fmt.Sprintf("byte %d (in %s)", off, jsonPath(stack))
}

// An error, which may go to a log, shows at most the innermost
// maxPathFrames levels of its path and maxPathKey bytes of each key.
const (
	maxPathFrames = 8
	maxPathKey    = 64
)

// jsonPath renders the position in the document, such as
// settings.server or profiles[2].name; the top level is "the document".
func jsonPath(stack []jsonFrame) string {
	if len(stack) == 0 {
		return "the document"
	}
	if n := len(stack); n == 1 && stack[0].object && stack[0].wantKey {
		return "the top-level object"
	}
	var b []byte
	if len(stack) > maxPathFrames {
		stack = stack[len(stack)-maxPathFrames:]
		b = append(b, "…"...)
	}
	for i, f := range stack {
		switch {
		case !f.object:
			b = append(b, '[')
			b = strconv.AppendInt(b, int64(f.index), 10)
			b = append(b, ']')
		case f.wantKey && i == len(stack)-1:
			// between keys: the object itself
		default:
			if len(b) > 0 && !bytes.HasSuffix(b, []byte("…")) {
				b = append(b, '.')
			}
			b = appendPathKey(b, f.key)
		}
	}
	return string(b)
}

// appendPathKey appends key as it is when it is a plain name and quoted
// otherwise, shortened to maxPathKey bytes.
func appendPathKey(b []byte, key string) []byte {
	short := key
	if len(short) > maxPathKey {
		cut := maxPathKey
		for cut > 0 && !utf8.RuneStart(short[cut]) {
			cut--
		}
		short = short[:cut] + "…"
	}
	plain := short != ""
	for _, r := range short {
		if !(r == '_' || r == '-' || r < utf8.RuneSelf && (unicode.IsLetter(r) || unicode.IsDigit(r))) {
			plain = false
			break
		}
	}
	if plain && short == key {
		return append(b, key...)
	}
	return strconv.AppendQuote(b, short)
}

// foldJSONKey returns the same string for keys that strings.EqualFold
// finds equal: each rune becomes the smallest of its case-folding orbit,
// as encoding/json folds field names.
func foldJSONKey(s string) string {
	b := make([]byte, 0, len(s))
	for _, r := range s {
		if 'a' <= r && r <= 'z' {
			b = append(b, byte(r-'a'+'A'))
			continue
		}
		if r < utf8.RuneSelf {
			b = append(b, byte(r))
			continue
		}
		least := r
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			least = min(least, f)
		}
		b = utf8.AppendRune(b, least)
	}
	return string(b)
}
