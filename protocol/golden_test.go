package protocol

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/fxamacker/cbor/v2"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// TestGolden checks every message kind byte for byte against
// testdata/NAME.cbor and its diagnostic notation against testdata/NAME.diag,
// and that the golden bytes decode back to the same message.
func TestGolden(t *testing.T) {
	covered := map[Kind]bool{}
	for name, env := range golden() {
		t.Run(name, func(t *testing.T) {
			covered[env.Kind()] = true
			got, err := Encode(env)
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			diag, err := cbor.Diagnose(got)
			if err != nil {
				t.Fatalf("Diagnose: %v", err)
			}
			binPath := filepath.Join("testdata", name+".cbor")
			diagPath := filepath.Join("testdata", name+".diag")
			if *update {
				writeFile(t, binPath, got)
				writeFile(t, diagPath, []byte(diag+"\n"))
			}
			want := readFile(t, binPath)
			if !bytes.Equal(got, want) {
				t.Errorf("Encode(%s) =\n%x\nwant (%s)\n%x", name, got, binPath, want)
			}
			if wantDiag := strings.TrimSpace(string(readFile(t, diagPath))); diag != wantDiag {
				t.Errorf("Diagnose(%s) =\n%s\nwant (%s)\n%s", name, diag, diagPath, wantDiag)
			}
			back, err := Decode(want)
			if err != nil {
				t.Fatalf("Decode(%s): %v", binPath, err)
			}
			if !reflect.DeepEqual(back, env) {
				t.Errorf("Decode(%s) = %+v; want %+v", binPath, back, env)
			}
		})
	}
	for _, k := range Kinds {
		if !covered[k] {
			t.Errorf("no golden message of kind %s", k)
		}
	}
}

// TestSpecExamples keeps the specification true: README.md must show the
// diagnostic notation of every golden message and every error code.
func TestSpecExamples(t *testing.T) {
	spec := string(readFile(t, "README.md"))
	names := make([]string, 0, len(golden()))
	for name := range golden() {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		diag := strings.TrimSpace(string(readFile(t, filepath.Join("testdata", name+".diag"))))
		if !strings.Contains(spec, diag) {
			t.Errorf("README.md does not show testdata/%s.diag:\n%s", name, diag)
		}
	}
	for c := ErrorCode(0); c.Valid(); c++ {
		row := fmt.Sprintf("| %d | `%s` | %s |", c, c, c.Hint())
		if !strings.Contains(spec, row) {
			t.Errorf("README.md lacks the error code row\n%s", row)
		}
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./protocol -run Golden -update to create it)", err)
	}
	return b
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}
