package agent

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	"github.com/mdm-authority/mdm/protocol"
)

// ChangeKind says what happened to a profile.
type ChangeKind uint8

// Profile changes.
const (
	// Installed is a profile new on the device.
	Installed ChangeKind = iota + 1
	// Updated is a new version of a profile of the same authority.
	Updated
	// Overwritten is a profile of the new authority that replaced a
	// same-type, same-name profile of the previous one.
	Overwritten
	// Retained is a previous authority's profile kept until a deadline.
	Retained
	// Removed is a profile the authority no longer wants.
	Removed
	// Expired is a retained profile removed at its deadline.
	Expired
)

var changeKindNames = [...]string{"", "installed", "updated", "overwritten", "retained", "removed", "expired"}

// String returns the change's name, such as "overwritten".
func (k ChangeKind) String() string {
	if int(k) < len(changeKindNames) {
		return changeKindNames[k]
	}
	return "unknown"
}

// MarshalText implements encoding.TextMarshaler for JSON output.
func (k ChangeKind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (k *ChangeKind) UnmarshalText(b []byte) error {
	for i, n := range changeKindNames {
		if i > 0 && n == string(b) {
			*k = ChangeKind(i)
			return nil
		}
	}
	return fmt.Errorf("unknown profile change %q", b)
}

// Change is one change to the installed profiles.
type Change struct {
	Kind    ChangeKind `json:"kind"`
	Profile Profile    `json:"profile"`
	// Replaced is the profile an overwrite replaced.
	Replaced *Profile `json:"replaced,omitempty"`
}

// Pair is a redundant pair: a retained profile of the previous authority
// and a profile of the current authority of the same type under another
// name. Both are in force until the retained one expires.
type Pair struct {
	Retained Profile `json:"retained"`
	Current  Profile `json:"current"`
}

// Gap is a retained profile whose type the current authority does not set:
// when it expires, the device loses that protection.
type Gap struct {
	Profile Profile   `json:"profile"`
	At      time.Time `json:"at"`
}

// applyDesired turns the installed profiles into the desired set of
// authority a. A desired profile replaces the installed one of the same
// type and name, whichever authority installed it. A profile of another
// authority without a successor stays until retainUntil, or goes at once
// when no retention period runs. Profiles of a itself that a no longer
// wants go. It returns the new set, sorted, and the changes.
func applyDesired(installed []Profile, a protocol.Authority, desired []protocol.DesiredProfile, retainUntil, now time.Time) ([]Profile, []Change) {
	type key struct {
		typ  protocol.ProfileType
		name string
	}
	want := make(map[key]*protocol.DesiredProfile, len(desired))
	for i := range desired {
		want[key{desired[i].Type, desired[i].Name}] = &desired[i]
	}
	current := make(map[key]*Profile)
	// Usually at most every installed and every desired profile: one
	// allocation each, not one per append.
	out := make([]Profile, 0, len(installed)+len(desired))
	changes := make([]Change, 0, len(installed)+len(desired))
	for _, p := range installed {
		if p.Authority == a {
			current[key{p.Type, p.Name}] = &p
		}
	}
	for _, p := range installed {
		k := key{p.Type, p.Name}
		_, wanted := want[k]
		switch {
		case p.Authority == a && wanted:
			continue // handled with the desired set below
		case p.Authority == a:
			changes = append(changes, Change{Kind: Removed, Profile: p})
		case wanted && current[k] == nil:
			continue // overwritten below
		case wanted:
			// Both the old and the new authority's profile of this name are
			// installed (a change back): the new one wins, the old one goes.
			changes = append(changes, Change{Kind: Removed, Profile: p})
		case retainUntil.After(now):
			if !p.RetainUntil.Equal(retainUntil) {
				p.RetainUntil = retainUntil
				changes = append(changes, Change{Kind: Retained, Profile: p})
			}
			out = append(out, p)
		default:
			changes = append(changes, Change{Kind: Removed, Profile: p})
		}
	}
	for i := range desired {
		d := &desired[i]
		k := key{d.Type, d.Name}
		next := Profile{Type: d.Type, Name: d.Name, Authority: a, Version: d.Version, Settings: d.Settings, InstalledAt: now}
		if cur := current[k]; cur != nil {
			if cur.Version == d.Version && slices.Equal(cur.Settings, d.Settings) && !cur.Retained() {
				out = append(out, *cur)
				continue
			}
			changes = append(changes, Change{Kind: Updated, Profile: next})
			out = append(out, next)
			continue
		}
		var replaced *Profile
		for j := range installed {
			p := &installed[j]
			if p.Authority != a && p.Type == d.Type && p.Name == d.Name {
				old := *p
				replaced = &old
				break
			}
		}
		if replaced != nil {
			changes = append(changes, Change{Kind: Overwritten, Profile: next, Replaced: replaced})
		} else {
			changes = append(changes, Change{Kind: Installed, Profile: next})
		}
		out = append(out, next)
	}
	sortProfiles(out)
	out, changes = capRetained(out, changes)
	if len(out) == 0 {
		out = nil // no profiles is nil, as the state's readers expect
	}
	if len(changes) == 0 {
		changes = nil
	}
	return out, changes
}

// capRetained keeps the device within protocol.MaxProfiles, which a check-in
// may list and a state file may hold: when the new set and the retained
// profiles together exceed it, the retained profiles that do not fit
// (the last in type and name order) are removed at once rather than at
// their deadline. Current profiles always stay.
func capRetained(out []Profile, changes []Change) ([]Profile, []Change) {
	excess := len(out) - protocol.MaxProfiles
	if excess <= 0 {
		return out, changes
	}
	type key struct {
		typ       protocol.ProfileType
		name      string
		authority protocol.Authority
	}
	dropped := map[key]bool{}
	for i := len(out) - 1; i >= 0 && excess > 0; i-- {
		if p := out[i]; p.Retained() {
			dropped[key{p.Type, p.Name, p.Authority}] = true
			changes = append(changes, Change{Kind: Removed, Profile: p})
			out = slices.Delete(out, i, i+1)
			excess--
		}
	}
	changes = slices.DeleteFunc(changes, func(ch Change) bool {
		return ch.Kind == Retained && dropped[key{ch.Profile.Type, ch.Profile.Name, ch.Profile.Authority}]
	})
	return out, changes
}

// expire removes the retained profiles whose deadline has come.
func expire(installed []Profile, now time.Time) ([]Profile, []Change) {
	due := func(p Profile) bool { return p.Retained() && !now.Before(p.RetainUntil) }
	if !slices.ContainsFunc(installed, due) {
		return installed, nil // the common case, without a copy
	}
	var changes []Change
	out := make([]Profile, 0, len(installed))
	for _, p := range installed {
		if due(p) {
			changes = append(changes, Change{Kind: Expired, Profile: p})
			continue
		}
		out = append(out, p)
	}
	return out, changes
}

// nextExpiry returns the earliest retention deadline, or the zero time.
func nextExpiry(installed []Profile) time.Time {
	var next time.Time
	for i := range installed {
		if u := installed[i].RetainUntil; !u.IsZero() && (next.IsZero() || u.Before(next)) {
			next = u
		}
	}
	return next
}

// Redundant returns the redundant pairs among the installed profiles of a
// device managed by authority a.
func Redundant(installed []Profile, a protocol.Authority) []Pair {
	var pairs []Pair
	for _, old := range installed {
		if !old.Retained() || old.Authority == a {
			continue
		}
		for _, cur := range installed {
			if cur.Authority == a && cur.Type == old.Type && cur.Name != old.Name {
				pairs = append(pairs, Pair{Retained: old, Current: cur})
			}
		}
	}
	return pairs
}

// Gaps returns the retained profiles of a device managed by authority a
// whose type a sets no profile of: the protection each gives ends at its
// deadline.
func Gaps(installed []Profile, a protocol.Authority) []Gap {
	var gaps []Gap
	for _, old := range installed {
		if !old.Retained() || old.Authority == a {
			continue
		}
		covered := slices.ContainsFunc(installed, func(p Profile) bool { return p.Authority == a && p.Type == old.Type })
		if !covered {
			gaps = append(gaps, Gap{Profile: old, At: old.RetainUntil})
		}
	}
	return gaps
}

// sortProfiles orders profiles by type, name and authority, so that state
// files and status output are stable.
func sortProfiles(ps []Profile) {
	slices.SortFunc(ps, func(a, b Profile) int {
		return cmp.Or(cmp.Compare(a.Type, b.Type), cmp.Compare(a.Name, b.Name), cmp.Compare(a.Authority, b.Authority))
	})
}
