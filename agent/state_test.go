package agent

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mdm-authority/mdm/protocol"
)

// TestHostileStateFile gives the agent state files it did not write: each
// is refused with an error that says what is wrong, by every command that
// reads the state, and the file is left as it was.
func TestHostileStateFile(t *testing.T) {
	st := enrolledState(protocol.PlatformIOS)
	st.Profiles = []Profile{{Type: protocol.ProfileEmail, Name: "Corp Mail", Authority: protocol.AuthorityOffice365, Version: 1, InstalledAt: t0}}
	valid, err := st.Encode()
	if err != nil {
		t.Fatal(err)
	}
	good := string(valid)
	// edit replaces the first old in the valid file, which must hold it.
	edit := func(old, new string) string {
		if !strings.Contains(good, old) {
			t.Fatalf("the state file lacks %q:\n%s", old, good)
		}
		return strings.Replace(good, old, new, 1)
	}
	tests := []struct {
		name, content string
		want          string
		is            error
	}{
		{"repeated key", edit(`"device": "d-1"`, `"device": "d-1", "device": "d-2"`), "key device repeated", protocol.ErrMalformed},
		{"repeated key in another case", edit(`"device": "d-1"`, `"device": "d-1", "Device": "d-2"`), "key Device repeated", protocol.ErrMalformed},
		{"repeated key in a profile", edit(`"name": "Corp Mail"`, `"name": "Corp Mail", "NAME": "Other"`), "key profiles[0].NAME repeated", protocol.ErrMalformed},
		{"deep nesting", edit(`"profiles": [`, `"profiles": [`+strings.Repeat("[", 100)+strings.Repeat("]", 100)+`,`), "deeper than 32", protocol.ErrMalformed},
		{"unknown field", edit(`"device": "d-1"`, `"device": "d-1", "admin": true`), `unknown field "admin"`, protocol.ErrMalformed},
		{"trailing data", good + `{"version": 1}`, "data after its value", protocol.ErrMalformed},
		{"not UTF-8", edit(`"d-1"`, "\"d-\xff\""), "UTF-8", protocol.ErrMalformed},
		{"unknown version", edit(`"version": 1`, `"version": 2`), "state file version 2 (this agent reads 1)", ErrStateVersion},
		{"unknown version with new fields", edit(`"version": 1`, `"version": 2, "trust": {"level": 3}`), "state file version 2", ErrStateVersion},
		{"enrolled before 1970", edit(`"enrolled_at": "2026-03-02T09:00:00Z"`, `"enrolled_at": "0001-01-01T00:00:01Z"`), "enrolled_at 0001-01-01T00:00:01Z is outside years 1970 to 9999", nil},
		{"check-in in 1500", edit(`"authority_since": "2026-03-02T09:00:00Z"`, `"authority_since": "1500-01-01T00:00:00Z"`), "authority_since 1500-01-01", nil},
		{"after 9999 by its offset", edit(`"cert_not_after": "2027-03-02T09:00:00Z"`, `"cert_not_after": "9999-12-31T23:59:59-23:00"`), "cert_not_after 9999-12-31T23:59:59-23:00 is outside", nil},
		{"profile installed before 1970", edit(`"installed_at": "2026-03-02T09:00:00Z"`, `"installed_at": "1969-12-31T23:59:59Z"`), "profiles[0].installed_at", nil},
		{"time of the wrong type", edit(`"enrolled_at": "2026-03-02T09:00:00Z"`, `"enrolled_at": 1772442000`), "input is not a JSON string", protocol.ErrMalformed},
		{"oversized", good + strings.Repeat(" ", maxStateSize), "more than", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := DecodeState([]byte(tt.content)); err == nil || !strings.Contains(err.Error(), tt.want) || tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("DecodeState(%s) = %v; want an error saying %q", tt.name, err, tt.want)
			}
			dir := t.TempDir()
			path := filepath.Join(dir, "state.json")
			if err := os.WriteFile(path, []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			before, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			ctx := t.Context()
			for cmd, err := range map[string]error{
				"run":      Run(ctx, Options{Dir: dir}),
				"unenroll": UnenrollOffline(ctx, dir, nil, nil, true),
				"status": func() error {
					_, err := LoadState(dir)
					return err
				}(),
			} {
				if err == nil || !strings.Contains(err.Error(), path) {
					t.Errorf("%s on the state file = %v; want an error naming %s", cmd, err, path)
				}
			}
			after, err := os.Stat(path)
			if err != nil {
				t.Fatalf("the state file is gone: %v", err)
			}
			got, _ := os.ReadFile(path)
			if !bytes.Equal(got, []byte(tt.content)) || !after.ModTime().Equal(before.ModTime()) || after.Mode() != before.Mode() {
				t.Errorf("the state file was changed")
			}
			entries, _ := os.ReadDir(dir)
			if len(entries) != 1 {
				t.Errorf("the state directory holds %d entries; want the state file alone", len(entries))
			}
		})
	}
	if _, err := DecodeState(valid); err != nil {
		t.Errorf("DecodeState(valid) = %v; want nil", err)
	}
	st.NextCheckIn, st.LastAttempt = protocol.MaxTimestamp.Time(), time.Unix(0, 0).UTC()
	limits, err := st.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := DecodeState(limits); err != nil {
		t.Errorf("DecodeState(times at the limits) = %v; want nil", err)
	}
}
