package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeFactsTestFile writes content to a file in a fresh temporary directory
// and returns its path.
func writeFactsTestFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestReadOSRelease(t *testing.T) {
	tests := []struct {
		name, content, want string
	}{
		{"debian", `PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL="https://www.debian.org/"
`, "12"},
		{"ubuntu", `PRETTY_NAME="Ubuntu 24.04.1 LTS"
NAME="Ubuntu"
VERSION_ID="24.04"
VERSION="24.04.1 LTS (Noble Numbat)"
ID=ubuntu
ID_LIKE=debian
UBUNTU_CODENAME=noble
`, "24.04"},
		{"alpine", `NAME="Alpine Linux"
ID=alpine
VERSION_ID=3.19.1
PRETTY_NAME="Alpine Linux v3.19"
`, "3.19.1"},
		{"single quotes, comments, blanks", "# generated\n\n  VERSION_ID='9.3'  \n# VERSION_ID=1\n", "9.3"},
		{"escapes", `VERSION_ID="1\".\\2\$"` + "\n", `1".\2$`},
		{"backslash kept before other characters", `VERSION_ID="1\a"`, `1\a`},
		{"unquoted escape", `VERSION_ID=1\ 2`, "1 2"},
		{"joined parts", `VERSION_ID="1".'2'.3`, "1.2.3"},
		{"trailing comment", "VERSION_ID=7 # stable", "7"},
		{"later wins", "VERSION_ID=1\nVERSION_ID=2", "2"},
		{"no final newline", "ID=x\nVERSION_ID=5", "5"},
	}
	for _, tt := range tests {
		path := writeFactsTestFile(t, "os-release", tt.content)
		got, err := ReadOSRelease(path)
		if err != nil || got != tt.want {
			t.Errorf("ReadOSRelease(%s) = %q, %v; want %q, nil", tt.name, got, err, tt.want)
		}
	}
}

func TestReadOSReleaseErrors(t *testing.T) {
	tests := []struct {
		name, content, want string
	}{
		{"debian sid", "PRETTY_NAME=\"Debian GNU/Linux trixie/sid\"\nID=debian\n", "no VERSION_ID"},
		{"empty", `VERSION_ID=""`, "VERSION_ID is empty"},
		{"unclosed double quote", `VERSION_ID="12`, "line 1: VERSION_ID: double quote is not closed"},
		{"unclosed single quote", "ID=x\nVERSION_ID='12", "line 2: VERSION_ID: single quote is not closed"},
		{"final backslash", `VERSION_ID=12\`, "ends with a backslash"},
		{"too long", "VERSION_ID=" + strings.Repeat("1", 65), "more than 64"},
	}
	for _, tt := range tests {
		path := writeFactsTestFile(t, "os-release", tt.content)
		got, err := ReadOSRelease(path)
		if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), path) {
			t.Errorf("ReadOSRelease(%s) = %q, %v; want an error naming the file and containing %q", tt.name, got, err, tt.want)
		}
	}
	missing := filepath.Join(t.TempDir(), "os-release")
	if _, err := ReadOSRelease(missing); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("ReadOSRelease(%q) = %v; want an error naming the file", missing, err)
	}
}

func TestLoadFacts(t *testing.T) {
	tests := []struct {
		name, content string
		want          Facts
	}{
		{"full", `{"os_version": "17.4", "passcode": true, "encrypted": false}`, Facts{OSVersion: "17.4", Passcode: true}},
		{"missing fields", `{"encrypted": true}`, Facts{Encrypted: true}},
		{"whitespace around", "\n  {\"os_version\": \"12\"}\n\n", Facts{OSVersion: "12"}},
		{"longest version", `{"os_version": "` + strings.Repeat("1", 64) + `"}`, Facts{OSVersion: strings.Repeat("1", 64)}},
	}
	for _, tt := range tests {
		path := writeFactsTestFile(t, "facts.json", tt.content)
		got, err := LoadFacts(path)
		if err != nil || got != tt.want {
			t.Errorf("LoadFacts(%s) = %+v, %v; want %+v, nil", tt.name, got, err, tt.want)
		}
	}
}

func TestLoadFactsErrors(t *testing.T) {
	tests := []struct {
		name, content, want string
	}{
		{"empty", "", "file is empty"},
		{"only whitespace", " \n", "file is empty"},
		{"malformed", `{"os_version": "17.4",}`, "invalid character"},
		{"not an object", `["17.4"]`, "JSON array at the document"},
		{"wrong type", `{"passcode": "yes"}`, "JSON string at passcode"},
		{"unknown field", `{"os_version": "17.4", "pascode": true}`, `unknown field "pascode"`},
		{"repeated key", `{"passcode": false, "passcode": true}`, "key passcode repeated"},
		{"repeated key in another case", `{"passcode": false, "Passcode": true}`, "key Passcode repeated"},
		{"deep nesting", `{"os_version": ` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `}`, "deeper than 32"},
		{"trailing data", `{"os_version": "17.4"} {}`, "data after its value"},
		{"trailing garbage", `{"os_version": "17.4"}x`, "data after its value"},
		{"long version", `{"os_version": "` + strings.Repeat("1", 65) + `"}`, "os_version is 65 bytes, more than 64"},
		{"oversized", `{"os_version": "17.4"}` + strings.Repeat(" ", 64<<10), "larger than the limit of 64 KiB"},
	}
	for _, tt := range tests {
		path := writeFactsTestFile(t, "facts.json", tt.content)
		got, err := LoadFacts(path)
		if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), path) {
			t.Errorf("LoadFacts(%s) = %+v, %v; want an error naming the file and containing %q", tt.name, got, err, tt.want)
		}
	}
	missing := filepath.Join(t.TempDir(), "facts.json")
	if _, err := LoadFacts(missing); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("LoadFacts(%q) = %v; want an error naming the file", missing, err)
	}
}

func TestCompareVersions(t *testing.T) {
	tests := []struct {
		a, b string
		want int
	}{
		{"17.4", "17.10", -1},
		{"17.10", "17.4", 1},
		{"12", "12.0", 0},
		{"12.0.0", "12", 0},
		{"12.0.1", "12", 1},
		{"10.0.19045", "10.0.22631", -1},
		{"10.0.19045", "10", 1},
		{"017.04", "17.4", 0},
		{"999999999", "1000000", 1},
		{"3", "3", 0},
	}
	for _, tt := range tests {
		got, err := CompareVersions(tt.a, tt.b)
		if err != nil || got != tt.want {
			t.Errorf("CompareVersions(%q, %q) = %v, %v; want %v, nil", tt.a, tt.b, got, err, tt.want)
		}
	}
}

func TestCompareVersionsErrors(t *testing.T) {
	tests := []struct {
		a, b, want string
	}{
		{"17.4-beta", "17", `"17.4-beta": component 2 ("4-beta") is not a number`},
		{"17", "17.x", `"17.x": component 2 ("x") is not a number`},
		{"", "1", "empty version"},
		{"1..2", "1", `"1..2": component 2 ("")`},
		{"1.", "1", `"1.": component 2 ("")`},
		{".1", "1", `".1": component 1 ("")`},
		{"1.1234567890", "1", `component 2 ("1234567890") is not 1 to 9 digits`},
		{"+1", "1", `component 1 ("+1") is not a number`},
		{" 1", "1", `component 1 (" 1") is not a number`},
	}
	for _, tt := range tests {
		got, err := CompareVersions(tt.a, tt.b)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("CompareVersions(%q, %q) = %v, %v; want an error containing %q", tt.a, tt.b, got, err, tt.want)
		}
	}
}

func FuzzCompareVersions(f *testing.F) {
	for _, s := range [][2]string{{"17.4", "17.10"}, {"12", "12.0"}, {"10.0.19045", "10"}, {"1.x", "1"}, {"", "0"}, {"007", "7.0.0"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		ab, errA := CompareVersions(a, b)
		ba, errB := CompareVersions(b, a)
		if (errA == nil) != (errB == nil) {
			t.Fatalf("CompareVersions(%q, %q) = %v but CompareVersions(%q, %q) = %v; want both to fail or neither", a, b, errA, b, a, errB)
		}
		if errA != nil {
			return
		}
		if ab != -ba || ab < -1 || ab > 1 {
			t.Fatalf("CompareVersions(%q, %q) = %d and CompareVersions(%q, %q) = %d; want opposite signs in -1..1", a, b, ab, b, a, ba)
		}
		if self, err := CompareVersions(a, a); err != nil || self != 0 {
			t.Fatalf("CompareVersions(%q, %q) = %d, %v; want 0, nil", a, a, self, err)
		}
	})
}
