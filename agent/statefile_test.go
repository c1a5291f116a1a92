package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWriteFileAtomic(t *testing.T) {
	tests := []struct {
		name string
		old  []byte // nil: no file before
		data []byte
		perm os.FileMode
	}{
		{"new file", nil, []byte("new"), 0o600},
		{"replace", []byte("old content, longer than the new"), []byte("new"), 0o600},
		{"readable by others", []byte("old"), []byte("{}\n"), 0o644},
		{"old mode not kept", []byte("old"), []byte("x"), 0o640},
		{"empty", []byte("old"), nil, 0o600},
		{"long name", nil, []byte("x"), 0o600},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			base := "state"
			if tt.name == "long name" {
				// The longest name most file systems allow: the temporary
				// file must not be longer still.
				base = strings.Repeat("n", 250) + ".json"
			}
			path := filepath.Join(dir, base)
			if tt.old != nil {
				if err := os.WriteFile(path, tt.old, 0o666); err != nil {
					t.Fatal(err)
				}
			}
			if err := WriteFileAtomic(path, tt.data, tt.perm); err != nil {
				t.Fatalf("WriteFileAtomic(%q) = %v; want nil", path, err)
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != string(tt.data) {
				t.Errorf("content = %q; want %q", got, tt.data)
			}
			info, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if info.Mode().Perm() != tt.perm {
				t.Errorf("mode = %v; want %v", info.Mode().Perm(), tt.perm)
			}
			assertDirHolds(t, dir, base)
		})
	}
}

func TestWriteFileAtomicErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing", "state")
	err := WriteFileAtomic(missing, []byte("x"), 0o600)
	if err == nil || !strings.Contains(err.Error(), missing) || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("WriteFileAtomic(%q) = %v; want an error naming the path and the missing directory", missing, err)
	}

	// A rename over a directory fails after the temporary file is written:
	// the temporary file must go.
	target := filepath.Join(dir, "taken")
	if err := os.MkdirAll(filepath.Join(target, "child"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := WriteFileAtomic(target, []byte("x"), 0o600); err == nil || !strings.Contains(err.Error(), target) {
		t.Errorf("WriteFileAtomic(%q) = %v; want an error naming the path", target, err)
	}
	assertDirHolds(t, dir, "taken")
}

func TestIsAtomicTemp(t *testing.T) {
	dir := t.TempDir()
	f, err := os.CreateTemp(dir, tempPattern("Corp%20Wi-Fi.json"))
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	tests := []struct {
		name string
		want bool
	}{
		{filepath.Base(f.Name()), true},
		{"Corp%20Wi-Fi.json", false},
		{".Corp.json", false},
		{"notes.tmp-1", false},
	}
	for _, tt := range tests {
		if got := isAtomicTemp(tt.name, ".json"); got != tt.want {
			t.Errorf("isAtomicTemp(%q) = %v; want %v", tt.name, got, tt.want)
		}
	}
}

// assertDirHolds fails t unless dir holds exactly the named entries.
func assertDirHolds(t *testing.T, dir string, names ...string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	if strings.Join(got, "\n") != strings.Join(names, "\n") {
		t.Errorf("directory %s holds %q; want %q", dir, got, names)
	}
}
