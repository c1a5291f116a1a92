package protocol

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// jsonDoc exercises what DecodeJSON's callers decode into: enums with
// text decoders, maps, slices of structs, and a field of any type, which
// takes any nesting and so leaves the depth limit to DecodeJSON alone.
type jsonDoc struct {
	Mode     Authority         `json:"mode"`
	Count    int               `json:"count"`
	Settings map[string]string `json:"settings"`
	Items    []jsonItem        `json:"items"`
	Any      any               `json:"any"`
}

type jsonItem struct {
	Name string   `json:"name"`
	Tags []string `json:"tags"`
}

// nested returns n arrays nested in one another.
func nested(n int) string { return strings.Repeat("[", n) + strings.Repeat("]", n) }

// jsonCases are the table of TestDecodeJSON and the seeds of
// FuzzDecodeJSON.
var jsonCases = []struct {
	name string
	in   string
	want error  // nil, ErrTooLarge or ErrMalformed
	text string // in the error: what and where
}{
	{"valid", `{"mode":"intune","count":2,"settings":{"server":"mail","Serve":"x"},"items":[{"name":"a","tags":["t"]},{"name":"b"}],"any":{"k":[1,{"k":null}]}}`, nil, ""},
	{"valid null", `null`, nil, ""},
	{"trailing whitespace", "{\"count\":1}\n\t ", nil, ""},
	{"depth at the limit", `{"any":` + nested(MaxJSONDepth-1) + `}`, nil, ""},
	{"same key in sibling objects", `{"items":[{"name":"a"},{"name":"b"}]}`, nil, ""},

	{"too large", `{"settings":{"k":"` + strings.Repeat("v", 1024) + `"}}`, ErrTooLarge, "more than the limit of 1024"},
	{"empty", ``, ErrMalformed, "empty"},
	{"only whitespace", "  \n", ErrMalformed, "empty"},
	{"invalid UTF-8", "{\"settings\":{\"k\":\"\xff\"}}", ErrMalformed, "UTF-8 at byte 18"},
	{"syntax", `{"count":1,}`, ErrMalformed, "syntax error at byte"},
	{"unterminated", `{"items":[{"name":"a"}`, ErrMalformed, "ends inside items[1]"},
	{"depth over the limit", `{"any":` + nested(MaxJSONDepth) + `}`, ErrMalformed, "deeper than 32 levels at …[0][0]"},
	{"depth 100", nested(100), ErrMalformed, "deeper than 32"},
	{"duplicate key", `{"count":1,"count":2}`, ErrMalformed, "key count repeated at byte 18"},
	{"duplicate key folded", `{"count":1,"COUNT":2}`, ErrMalformed, "key COUNT repeated"},
	{"duplicate key folded non-ASCII", `{"settings":{"ſ":"1","S":"2"}}`, ErrMalformed, "key settings.S repeated at byte 25 (as \"ſ\""},
	{"duplicate key Kelvin", `{"settings":{"k":"1","\u212a":"2"}}`, ErrMalformed, "repeated"},
	{"duplicate key nested", `{"items":[{"name":"a"},{"name":"b","NAME":"c"}]}`, ErrMalformed, "key items[1].NAME repeated"},
	{"duplicate key in any", `{"any":{"a":{"b":1,"b":2}}}`, ErrMalformed, "key any.a.b repeated"},
	{"duplicate key escaped", `{"count":1,"\u0063ount":2}`, ErrMalformed, "key count repeated"},
	{"duplicate odd key", `{"settings":{"a b":"1","A B":"2"}}`, ErrMalformed, `key settings."A B" repeated`},
	{"unknown field", `{"count":1,"extra":true}`, ErrMalformed, `unknown field "extra"`},
	{"unknown nested field", `{"items":[{"name":"a","size":1}]}`, ErrMalformed, `unknown field "size"`},
	{"trailing garbage", `{"count":1} x`, ErrMalformed, "data after its value, at byte 11"},
	{"two values", `{"count":1}{"count":2}`, ErrMalformed, "data after its value"},
	{"wrong type", `{"count":"1"}`, ErrMalformed, "string at count"},
	{"wrong type nested", `{"items":[{"tags":"t"}]}`, ErrMalformed, "string at items.tags"},
	{"wrong top-level type", `[1]`, ErrMalformed, "array at the document"},
	{"number out of range", `{"any":1e400}`, ErrMalformed, "number 1e400 at any"},
	{"invalid enum", `{"mode":"sccm"}`, ErrMalformed, `unknown authority "sccm"`},
}

func TestDecodeJSON(t *testing.T) {
	for _, tc := range jsonCases {
		t.Run(tc.name, func(t *testing.T) {
			var doc jsonDoc
			err := DecodeJSON([]byte(tc.in), 1024, &doc)
			switch {
			case tc.want == nil && err != nil:
				t.Fatalf("DecodeJSON(%q) = %v; want nil", tc.in, err)
			case tc.want != nil && !errors.Is(err, tc.want):
				t.Fatalf("DecodeJSON(%q) = %v; want an error wrapping %v", tc.in, err, tc.want)
			case tc.want != nil && !strings.Contains(err.Error(), tc.text):
				t.Errorf("DecodeJSON(%q) = %q; want it to say %q", tc.in, err, tc.text)
			}
		})
	}
}

func TestDecodeJSONKeepsCause(t *testing.T) {
	var doc jsonDoc
	err := DecodeJSON([]byte(`{"count":"x"}`), 100, &doc)
	var te *json.UnmarshalTypeError
	if !errors.As(err, &te) {
		t.Errorf("DecodeJSON error %v does not wrap the *json.UnmarshalTypeError", err)
	}
}

func TestDecodeJSONLongKeyShortened(t *testing.T) {
	key := strings.Repeat("k", 10000)
	var doc jsonDoc
	err := DecodeJSON([]byte(`{"settings":{"`+key+`":"1","`+key+`":"2"}}`), 1<<16, &doc)
	if err == nil || len(err.Error()) > 200 {
		t.Errorf("DecodeJSON(repeated 10000-byte key) = %d bytes of error; want an error of at most 200", len(err.Error()))
	}
}

func TestFoldJSONKey(t *testing.T) {
	keys := []string{"mode", "MODE", "Mode", "ſ", "s", "S", "k", "K", "\u212a", "é", "É", "ß", "ẞ", "a b", "", "σ", "Σ", "ς"}
	for _, a := range keys {
		for _, b := range keys {
			if got, want := foldJSONKey(a) == foldJSONKey(b), strings.EqualFold(a, b); got != want {
				t.Errorf("foldJSONKey(%q) == foldJSONKey(%q) is %v; strings.EqualFold says %v", a, b, got, want)
			}
		}
	}
}

// FuzzDecodeJSON checks that DecodeJSON never panics, fails only with its
// two sentinels, and accepts nothing that encoding/json itself refuses.
func FuzzDecodeJSON(f *testing.F) {
	for _, tc := range jsonCases {
		f.Add([]byte(tc.in))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var doc jsonDoc
		err := DecodeJSON(data, 1<<12, &doc)
		if err != nil {
			if !errors.Is(err, ErrTooLarge) && !errors.Is(err, ErrMalformed) {
				t.Fatalf("DecodeJSON(%q) = %v; want ErrTooLarge or ErrMalformed", data, err)
			}
			return
		}
		var ref jsonDoc
		if err := json.Unmarshal(data, &ref); err != nil {
			t.Fatalf("DecodeJSON(%q) accepted what json.Unmarshal refuses: %v", data, err)
		}
	})
}
