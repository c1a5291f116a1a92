package agent

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mdm-authority/mdm/protocol"
)

// applierTestProfile returns a profile of Intune with settings, so that its file
// has every field.
func applierTestProfile(typ protocol.ProfileType, name string, version uint64) Profile {
	return Profile{
		Type:        typ,
		Name:        name,
		Authority:   protocol.AuthorityIntune,
		Version:     version,
		Settings:    protocol.Settings{{Key: "server", Value: "contoso.example"}},
		InstalledAt: time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC),
	}
}

// readProfileJSON decodes the profile file at path.
func readProfileJSON(t *testing.T, path string) Profile {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(string(b), "}\n") || !strings.Contains(string(b), "\n  \"name\"") {
		t.Errorf("%s = %q; want indented JSON ending in a newline", path, b)
	}
	var p Profile
	if err := json.Unmarshal(b, &p); err != nil {
		t.Fatalf("decode %s: %v", path, err)
	}
	return p
}

// profileTree returns the files and directories under dir, relative to it,
// directories with a trailing slash.
func profileTree(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || path == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		if d.IsDir() {
			rel += "/"
		}
		out = append(out, filepath.ToSlash(rel))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func assertProfileTree(t *testing.T, dir string, want ...string) {
	t.Helper()
	if got := profileTree(t, dir); !slices.Equal(got, want) {
		t.Errorf("tree under %s = %q; want %q", dir, got, want)
	}
}

func assertPerm(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != want {
		t.Errorf("mode of %s = %v; want %v", path, info.Mode().Perm(), want)
	}
}

func TestFileApplierInstall(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "profiles")
	a := NewFileApplier(dir)
	p := applierTestProfile(protocol.ProfileWiFi, "Corp Wi-Fi", 1)
	if err := a.Install(p); err != nil {
		t.Fatalf("Install(%q) = %v; want nil", p.Name, err)
	}
	path := filepath.Join(dir, "intune", "wifi", "Corp%20Wi-Fi.json")
	if got := readProfileJSON(t, path); got.Version != 1 || got.Name != p.Name || got.Settings[0] != p.Settings[0] {
		t.Errorf("installed file = %+v; want %+v", got, p)
	}
	assertPerm(t, path, 0o644)
	for _, d := range []string{dir, filepath.Join(dir, "intune"), filepath.Join(dir, "intune", "wifi")} {
		assertPerm(t, d, 0o755)
	}

	// Replacing keeps one file, with the new version.
	p.Version = 2
	if err := a.Install(p); err != nil {
		t.Fatalf("Install(%q) again = %v; want nil", p.Name, err)
	}
	if got := readProfileJSON(t, path); got.Version != 2 {
		t.Errorf("replaced file has version %d; want 2", got.Version)
	}
	assertProfileTree(t, dir, "intune/", "intune/wifi/", "intune/wifi/Corp%20Wi-Fi.json")

	// A name that looks like a path stays one file inside Dir.
	evil := applierTestProfile(protocol.ProfileVPN, "../../etc/passwd", 1)
	if err := a.Install(evil); err != nil {
		t.Fatalf("Install(%q) = %v; want nil", evil.Name, err)
	}
	if got := readProfileJSON(t, filepath.Join(dir, "intune", "vpn", "%2E.%2F..%2Fetc%2Fpasswd.json")); got.Name != evil.Name {
		t.Errorf("installed name = %q; want %q", got.Name, evil.Name)
	}
}

func TestFileApplierRejects(t *testing.T) {
	a := NewFileApplier(t.TempDir())
	bad := func(f func(*Profile)) Profile {
		p := applierTestProfile(protocol.ProfileEmail, "Mail", 1)
		f(&p)
		return p
	}
	tests := []struct {
		name string
		p    Profile
		want string
	}{
		{"empty name", bad(func(p *Profile) { p.Name = "" }), "empty name"},
		{"long name", bad(func(p *Profile) { p.Name = strings.Repeat("x", protocol.MaxNameLen+1) }), "more than 128"},
		{"unknown type", bad(func(p *Profile) { p.Type = 99 }), "unknown type"},
		{"unknown authority", bad(func(p *Profile) { p.Authority = 99 }), "unknown authority"},
	}
	for _, tt := range tests {
		for op, f := range map[string]func(Profile) error{"Install": a.Install, "Remove": a.Remove} {
			if err := f(tt.p); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("%s(%s) = %v; want an error containing %q", op, tt.name, err, tt.want)
			}
		}
	}
	assertProfileTree(t, a.Dir)
}

func TestFileApplierRemove(t *testing.T) {
	dir := t.TempDir()
	a := NewFileApplier(dir)
	wifi := applierTestProfile(protocol.ProfileWiFi, "Corp", 1)
	home := applierTestProfile(protocol.ProfileWiFi, "Home", 1)
	for _, p := range []Profile{wifi, home} {
		if err := a.Install(p); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name string
		p    Profile
		want []string
	}{
		{"one of two", wifi, []string{"intune/", "intune/wifi/", "intune/wifi/Home.json"}},
		{"not there", wifi, []string{"intune/", "intune/wifi/", "intune/wifi/Home.json"}},
		{"last one, directories go", home, nil},
		{"nothing left", home, nil},
	}
	for _, tt := range tests {
		if err := a.Remove(tt.p); err != nil {
			t.Fatalf("Remove(%q) (%s) = %v; want nil", tt.p.Name, tt.name, err)
		}
		assertProfileTree(t, dir, tt.want...)
	}
	if _, err := os.Stat(dir); err != nil {
		t.Errorf("Remove took Dir itself: %v", err)
	}
}

func TestFileApplierReconcile(t *testing.T) {
	dir := t.TempDir()
	a := NewFileApplier(dir)
	current := applierTestProfile(protocol.ProfileWiFi, "Current", 1)
	stale := applierTestProfile(protocol.ProfileVPN, "Stale", 2)
	private := applierTestProfile(protocol.ProfileEmail, "Private", 1)
	missing := applierTestProfile(protocol.ProfileCompliance, "Missing", 1)
	stray := applierTestProfile(protocol.ProfileCertificate, "Stray", 1)
	for _, p := range []Profile{current, stale, private, stray} {
		if err := a.Install(p); err != nil {
			t.Fatal(err)
		}
	}
	write := func(rel, content string, perm os.FileMode) {
		t.Helper()
		path := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), perm); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, perm); err != nil {
			t.Fatal(err)
		}
	}
	// An older version of Stale, as a crash between persisting the state
	// and applying it leaves; Private with a mode other tools cannot read; a
	// profile file in a place of its own; a temporary file a crash left;
	// files that are not profiles.
	privateJSON, err := encodeProfileFile(private)
	if err != nil {
		t.Fatal(err)
	}
	write("intune/vpn/Stale.json", `{"name": "Stale", "version": 1}`, 0o644)
	write("intune/email/Private.json", string(privateJSON), 0o600)
	write("office365/wifi/Old.json", "{}\n", 0o644)
	write("intune/wifi/.Current.json.tmp-123", "{", 0o600)
	write("README", "not a profile\n", 0o644)
	write("intune/wifi/notes.txt", "kept\n", 0o644)
	before, err := os.Stat(filepath.Join(dir, "intune/wifi/Current.json"))
	if err != nil {
		t.Fatal(err)
	}

	if err := a.Reconcile([]Profile{current, stale, private, missing}); err != nil {
		t.Fatalf("Reconcile = %v; want nil", err)
	}
	assertProfileTree(t, dir,
		"README",
		"intune/",
		"intune/compliance/", "intune/compliance/Missing.json",
		"intune/email/", "intune/email/Private.json",
		"intune/vpn/", "intune/vpn/Stale.json",
		"intune/wifi/", "intune/wifi/Current.json", "intune/wifi/notes.txt",
	)
	if got := readProfileJSON(t, filepath.Join(dir, "intune/vpn/Stale.json")); got.Version != 2 || len(got.Settings) != 1 {
		t.Errorf("reconciled Stale = %+v; want %+v", got, stale)
	}
	assertPerm(t, filepath.Join(dir, "intune/email/Private.json"), 0o644)
	after, err := os.Stat(filepath.Join(dir, "intune/wifi/Current.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(before, after) {
		t.Errorf("Reconcile rewrote Current.json, which was up to date")
	}

	// Nothing installed: every profile goes, other files stay.
	if err := a.Reconcile(nil); err != nil {
		t.Fatalf("Reconcile(nil) = %v; want nil", err)
	}
	assertProfileTree(t, dir, "README", "intune/", "intune/wifi/", "intune/wifi/notes.txt")
}

func TestFileApplierReconcileEdges(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "new")
	a := NewFileApplier(dir)
	p := applierTestProfile(protocol.ProfileWiFi, "Corp", 1)
	if err := a.Reconcile([]Profile{p}); err != nil {
		t.Fatalf("Reconcile on a missing Dir = %v; want nil", err)
	}
	assertProfileTree(t, dir, "intune/", "intune/wifi/", "intune/wifi/Corp.json")

	// Of two entries for one profile the later wins; a bad entry is
	// reported without stopping the others.
	newer := p
	newer.Version = 2
	bad := applierTestProfile(protocol.ProfileVPN, "", 1)
	err := a.Reconcile([]Profile{p, bad, newer})
	if err == nil || !strings.Contains(err.Error(), "empty name") {
		t.Errorf("Reconcile with an unnamed profile = %v; want an error saying the name is empty", err)
	}
	assertProfileTree(t, dir, "intune/", "intune/wifi/", "intune/wifi/Corp.json")
	if got := readProfileJSON(t, filepath.Join(dir, "intune/wifi/Corp.json")); got.Version != 2 {
		t.Errorf("Reconcile with a duplicate wrote version %d; want the later, 2", got.Version)
	}

	// Dir given through a symbolic link is still walked.
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(dir, link); err != nil {
		t.Skip(err)
	}
	if err := NewFileApplier(link).Reconcile(nil); err != nil {
		t.Fatalf("Reconcile(nil) through a link = %v; want nil", err)
	}
	assertProfileTree(t, dir)
}

func TestEscapeName(t *testing.T) {
	long := strings.Repeat("é", protocol.MaxNameLen/2)
	tests := []struct {
		name, want string
	}{
		{"../../etc/passwd", "%2E.%2F..%2Fetc%2Fpasswd"},
		{"", ""},
		{".hidden", "%2Ehidden"},
		{"Corp Wi-Fi", "Corp%20Wi-Fi"},
		{"a/b", "a%2Fb"},
		{"a\x00b", "a%00b"},
		{"v1.2_x-y", "v1.2_x-y"},
		{"100%", "100%25"},
		{"~home", "%7Ehome"},
		{"Café", "Caf%C3%A9"},
		// Escaped, 128 bytes of "é" would be 384 and too long for a file
		// name.
		{long, "~" + strings.Repeat("w6nDqcOp", 21) + "w6k"},
	}
	for _, tt := range tests {
		got := escapeName(tt.name)
		if got != tt.want {
			t.Errorf("escapeName(%q) = %q; want %q", tt.name, got, tt.want)
		}
		back, err := unescapeName(got)
		if err != nil || back != tt.name {
			t.Errorf("unescapeName(%q) = %q, %v; want %q, nil", got, back, err, tt.name)
		}
	}
}

func TestUnescapeNameRejects(t *testing.T) {
	for _, s := range []string{
		"%2e",          // lower-case hex
		"%41",          // 'A' needs no escape
		".hidden",      // a leading dot is escaped
		"a/b",          // '/' is escaped
		"a b",          // so is a space
		"%",            // truncated
		"%4",           // truncated
		"%G0",          // not hex
		"~" + "YWJj",   // "abc" is short enough to be percent-escaped
		"~!!",          // not base64
		"~" + "YWJjZA", // still short
	} {
		if got, err := unescapeName(s); err == nil {
			t.Errorf("unescapeName(%q) = %q, nil; want an error", s, got)
		}
	}
}

func FuzzEscapeName(f *testing.F) {
	for _, s := range []string{"", "../../etc/passwd", ".hidden", "Corp Wi-Fi", "a/b", "a\x00b", "%41", "~YWJj",
		strings.Repeat("é", 64), strings.Repeat("x", 128), strings.Repeat("/", 67)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		e := escapeName(s)
		if strings.HasPrefix(e, ".") || strings.ContainsAny(e, "/\\\x00 ") {
			t.Fatalf("escapeName(%q) = %q; want a safe file name", s, e)
		}
		for i := range len(e) {
			if c := e[i]; c >= 0x80 || c < 0x20 {
				t.Fatalf("escapeName(%q) = %q; want printable ASCII", s, e)
			}
		}
		if len(s) <= protocol.MaxNameLen && len(e)+len(profileExt) > 250 {
			t.Fatalf("escapeName(%q) = %q (%d bytes); too long for a file name", s, e, len(e))
		}
		back, err := unescapeName(e)
		if err != nil || back != s {
			t.Fatalf("unescapeName(escapeName(%q)) = %q, %v; want the name back", s, back, err)
		}
		// Read as a file name, s has at most one name.
		if name, err := unescapeName(s); err == nil && escapeName(name) != s {
			t.Fatalf("escapeName(unescapeName(%q)) = %q; want %q", s, escapeName(name), s)
		}
	})
}
