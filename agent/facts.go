package agent

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/mdm-authority/mdm/protocol"
)

const (
	// maxFactsSize bounds the facts file: it holds three short fields, and a
	// bound keeps a mistaken path (a log, a disk image) from being read whole.
	maxFactsSize = 64 << 10
	// maxOSVersionLen bounds Facts.OSVersion, which the agent reports to the
	// service.
	maxOSVersionLen = 64
	// maxVersionDigits bounds a version component so that it fits an int on
	// every platform and compares as a number.
	maxVersionDigits = 9
)

// ReadOSRelease returns the VERSION_ID of an os-release file, such as
// "12" from Debian's /etc/os-release or "3.19.1" from Alpine's. The format
// is shell-like (os-release(5)): KEY=value lines, '#' comments, values
// optionally in double quotes (with backslash escapes) or single quotes
// (literal). Lines that do not concern VERSION_ID are not checked.
func ReadOSRelease(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("read os release: %w", err)
	}
	defer f.Close()
	var version string
	found := false
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		raw, ok := strings.CutPrefix(line, "VERSION_ID=")
		if !ok {
			continue
		}
		// A later assignment wins, as when a shell sources the file.
		version, err = unquoteShellWord(raw)
		if err != nil {
			return "", fmt.Errorf("read os release %s: line %d: VERSION_ID: %w", path, n, err)
		}
		found = true
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("read os release %s: %w", path, err)
	}
	switch {
	case !found:
		// Debian testing and unstable, for one, have no VERSION_ID.
		return "", fmt.Errorf("read os release %s: no VERSION_ID line; give the OS version in the facts file instead", path)
	case version == "":
		return "", fmt.Errorf("read os release %s: VERSION_ID is empty; give the OS version in the facts file instead", path)
	case len(version) > maxOSVersionLen:
		return "", fmt.Errorf("read os release %s: VERSION_ID is %d bytes, more than %d", path, len(version), maxOSVersionLen)
	}
	return version, nil
}

// unquoteShellWord returns the value of the shell word at the start of s:
// unquoted text up to a blank, in which a backslash escapes the next
// character; "double-quoted" text, in which a backslash escapes only '"',
// '\', '$' and '`'; and 'single-quoted' text, taken literally. Adjacent
// parts join, as in the shell. What follows the first blank is ignored.
func unquoteShellWord(s string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case ' ', '\t':
			return b.String(), nil
		case '\\':
			i++
			if i == len(s) {
				return "", errors.New("ends with a backslash")
			}
			b.WriteByte(s[i])
		case '\'':
			end := strings.IndexByte(s[i+1:], '\'')
			if end < 0 {
				return "", errors.New("single quote is not closed")
			}
			b.WriteString(s[i+1 : i+1+end])
			i += 1 + end
		case '"':
			j := i + 1
			for ; j < len(s) && s[j] != '"'; j++ {
				if s[j] == '\\' && j+1 < len(s) && strings.IndexByte("\"\\$`", s[j+1]) >= 0 {
					j++
				}
				b.WriteByte(s[j])
			}
			if j == len(s) {
				return "", errors.New("double quote is not closed")
			}
			i = j
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), nil
}

// LoadFacts reads a JSON facts file, such as
// {"os_version": "17.4", "passcode": true, "encrypted": false}. It is
// strict, because a misspelt field would otherwise silently read as false
// and make the device look noncompliant: unknown fields, repeated keys
// (also in another case: "Passcode" after "passcode"), trailing data, files
// over 64 KiB and OS versions over 64 bytes are errors. Missing fields read
// as zero values.
func LoadFacts(path string) (Facts, error) {
	f, err := os.Open(path)
	if err != nil {
		return Facts{}, fmt.Errorf("load facts: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFactsSize+1))
	if err != nil {
		return Facts{}, fmt.Errorf("load facts %s: %w", path, err)
	}
	if len(data) > maxFactsSize {
		return Facts{}, fmt.Errorf("load facts %s: file is larger than the limit of %d KiB; check the path", path, maxFactsSize>>10)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return Facts{}, fmt.Errorf("load facts %s: file is empty; want a JSON object like %s", path, factsExample)
	}
	var facts Facts
	if err := protocol.DecodeJSON(data, maxFactsSize, &facts); err != nil {
		return Facts{}, fmt.Errorf("load facts %s: %w; want a JSON object like %s", path, err, factsExample)
	}
	if len(facts.OSVersion) > maxOSVersionLen {
		return Facts{}, fmt.Errorf("load facts %s: os_version is %d bytes, more than %d", path, len(facts.OSVersion), maxOSVersionLen)
	}
	return facts, nil
}

// factsExample shows a valid facts file in error messages.
const factsExample = `{"os_version": "17.4", "passcode": true, "encrypted": false}`

// CompareVersions compares two dotted numeric versions and returns -1, 0 or
// +1 as a is older than, the same as or newer than b. Components compare as
// numbers ("17.4" < "17.10") and missing ones count as zero ("12" ==
// "12.0"). Each component is 1 to 9 ASCII digits; anything else, such as
// "17.4-beta", is an error.
func CompareVersions(a, b string) (int, error) {
	va, err := parseVersion(a)
	if err != nil {
		return 0, err
	}
	vb, err := parseVersion(b)
	if err != nil {
		return 0, err
	}
	for i := range max(len(va), len(vb)) {
		var x, y int
		if i < len(va) {
			x = va[i]
		}
		if i < len(vb) {
			y = vb[i]
		}
		if x != y {
			if x < y {
				return -1, nil
			}
			return 1, nil
		}
	}
	return 0, nil
}

// parseVersion splits a dotted numeric version into its components.
func parseVersion(s string) ([]int, error) {
	if s == "" {
		return nil, errors.New("parse version: empty version; want digits separated by dots, such as 17.4")
	}
	parts := strings.Split(s, ".")
	v := make([]int, len(parts))
	for i, part := range parts {
		if part == "" || len(part) > maxVersionDigits {
			return nil, fmt.Errorf("parse version %q: component %d (%q) is not 1 to %d digits", s, i+1, part, maxVersionDigits)
		}
		for j := range len(part) {
			c := part[j]
			if c < '0' || c > '9' {
				return nil, fmt.Errorf("parse version %q: component %d (%q) is not a number; use digits separated by dots", s, i+1, part)
			}
			v[i] = v[i]*10 + int(c-'0')
		}
	}
	return v, nil
}
