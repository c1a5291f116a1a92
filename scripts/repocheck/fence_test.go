package repocheck

import (
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/mdm-authority/mdm"

// fence is one import rule: packages under from must never reach packages
// under to, directly or through other packages of the module.
type fence struct {
	from, to string
	why      string
}

var fences = []fence{
	{"protocol", "", "protocol is the leaf wire contract: it imports nothing else of ours"},
	{"agent", "broker", "the agent runs on devices and must not carry the service"},
	{"agent", "fleetsim", "the agent must not depend on the simulator that drives it"},
	{"broker", "agent", "the service must not depend on the device side"},
}

// allowedInProtocol lists the only modules outside the standard library
// that protocol may import.
var allowedInProtocol = []string{"github.com/fxamacker/cbor/v2"}

// importGraph maps each package of the module (path relative to the module
// root) to the imports of its Go files, tests included.
type importGraph map[string][]string

func TestImportFences(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root not found at %s: %v", root, err)
	}
	g, err := readGraph(root)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := g["protocol"]; !ok {
		t.Fatal("package protocol not found: the walk is broken")
	}
	for _, v := range g.violations() {
		t.Error(v)
	}
}

// TestFencesCatchViolations checks the checker on a made-up graph, so the
// fence test cannot pass by finding nothing to check.
func TestFencesCatchViolations(t *testing.T) {
	g := importGraph{
		"protocol":       {"fmt", module + "/fleetsim"},
		"agent":          {module + "/agent/schedule"},
		"agent/schedule": {module + "/fleetsim"},
		"fleetsim":       {module + "/broker"},
		"broker":         {"github.com/some/dep", module + "/protocol"},
	}
	got := strings.Join(g.violations(), "\n")
	for _, want := range []string{
		"protocol imports " + module + "/fleetsim",
		"agent reaches broker",
		"agent reaches fleetsim",
		"agent/schedule reaches fleetsim",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("violations() misses %q; got:\n%s", want, got)
		}
	}
	if strings.Contains(got, "broker reaches agent") {
		t.Errorf("violations() reports a fence that holds:\n%s", got)
	}
}

func readGraph(root string) (importGraph, error) {
	g := importGraph{}
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			name := d.Name()
			if path != root && (strings.HasPrefix(name, ".") || name == "testdata") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, filepath.Dir(path))
		if err != nil {
			return err
		}
		pkg := filepath.ToSlash(rel)
		for _, imp := range f.Imports {
			p, err := strconv.Unquote(imp.Path.Value)
			if err != nil {
				return err
			}
			if !slices.Contains(g[pkg], p) {
				g[pkg] = append(g[pkg], p)
			}
		}
		if _, ok := g[pkg]; !ok {
			g[pkg] = nil
		}
		return nil
	})
	return g, err
}

// under reports whether pkg is dir or inside it.
func under(pkg, dir string) bool { return pkg == dir || strings.HasPrefix(pkg, dir+"/") }

// reach returns the module packages pkg imports, directly or not.
func (g importGraph) reach(pkg string) []string {
	seen := map[string]bool{}
	var walk func(string)
	walk = func(p string) {
		for _, imp := range g[p] {
			rel, ok := strings.CutPrefix(imp, module+"/")
			if !ok || seen[rel] {
				continue
			}
			seen[rel] = true
			walk(rel)
		}
	}
	walk(pkg)
	out := make([]string, 0, len(seen))
	for p := range seen {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

func (g importGraph) violations() []string {
	var out []string
	pkgs := make([]string, 0, len(g))
	for p := range g {
		pkgs = append(pkgs, p)
	}
	slices.Sort(pkgs)
	for _, pkg := range pkgs {
		if under(pkg, "protocol") {
			for _, imp := range g[pkg] {
				stdlib := !strings.Contains(strings.Split(imp, "/")[0], ".")
				if !stdlib && !slices.Contains(allowedInProtocol, imp) {
					out = append(out, pkg+" imports "+imp+": "+fences[0].why)
				}
			}
		}
		for _, f := range fences[1:] {
			if !under(pkg, f.from) {
				continue
			}
			for _, r := range g.reach(pkg) {
				if under(r, f.to) {
					out = append(out, pkg+" reaches "+f.to+" (through "+r+"): "+f.why)
				}
			}
		}
	}
	return out
}
