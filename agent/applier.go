package agent

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/mdm-authority/mdm/protocol"
)

// Applier puts profiles into effect on the device. The agent calls it after
// the new state is persisted; Reconcile at start-up repairs whatever a crash
// interrupted.
type Applier interface {
	// Install installs p, or replaces the profile with the same Type,
	// Authority and Name.
	Install(p Profile) error
	// Remove removes p; removing a profile that is not there is not an
	// error.
	Remove(p Profile) error
	// Reconcile makes the device hold exactly the installed profiles.
	Reconcile(installed []Profile) error
}

var _ Applier = (*FileApplier)(nil)

const (
	// Profile files and their directories are readable by everyone: other
	// tools on the device (VPN and Wi-Fi clients, mail set-up) read them.
	profileFileMode = 0o644
	profileDirMode  = 0o755

	profileExt = ".json"

	// maxEscapedName is the longest percent-escaped name used as is. Beyond
	// it a name is written in base64 instead, so that with profileExt and
	// WriteFileAtomic's temporary suffix a file name stays under the
	// 255-byte limit of common file systems: percent-escaping can triple a
	// name, and 128 bytes of non-ASCII text would become 384.
	maxEscapedName = 200
	// longNamePrefix marks a base64 name. The percent form never contains
	// '~', so the two forms cannot be confused.
	longNamePrefix = "~"
)

// FileApplier materialises each profile as one JSON file (the Profile's
// JSON, indented) at Dir/<authority>/<type>/<escaped name>.json, such as
// Dir/intune/wifi/Corp%20Wi-Fi.json, for other tools on the device to read.
// Names are escaped by escapeName so that any name is a safe file name; two
// names differing only in letter case get two files, which assumes a
// case-sensitive file system, as Linux devices have.
type FileApplier struct {
	// Dir is the root of the profile tree. The applier owns it: Reconcile
	// removes any *.json file under it that is not an installed profile.
	Dir string
}

// NewFileApplier returns an applier that keeps profiles under dir.
func NewFileApplier(dir string) *FileApplier {
	return &FileApplier{Dir: dir}
}

// Install writes p's file, replacing any earlier version atomically.
func (a *FileApplier) Install(p Profile) error {
	path, err := a.path(p)
	if err != nil {
		return fmt.Errorf("install profile: %w", err)
	}
	if err := a.write(path, p); err != nil {
		return fmt.Errorf("install profile %q: %w", p.Name, err)
	}
	return nil
}

// Remove deletes p's file and the directories it leaves empty. The removal
// is not synced to disk: if a crash undoes it, Reconcile removes the file
// again at start-up.
func (a *FileApplier) Remove(p Profile) error {
	path, err := a.path(p)
	if err != nil {
		return fmt.Errorf("remove profile: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove profile %q: %w", p.Name, err)
	}
	typeDir := filepath.Dir(path)
	a.removeIfEmpty(typeDir)
	a.removeIfEmpty(filepath.Dir(typeDir))
	return nil
}

// Reconcile writes every profile of installed whose file is missing or
// differs in content or mode, removes every other *.json file under Dir and
// the leftover temporary files of interrupted writes, and then the empty
// directories. Files of other kinds are left alone. It carries on past
// errors, so that one bad profile or unreadable file does not stop the
// repair of the others, and returns them all.
func (a *FileApplier) Reconcile(installed []Profile) error {
	var errs []error
	want := make(map[string]Profile, len(installed))
	paths := make([]string, 0, len(installed))
	for _, p := range installed {
		path, err := a.path(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if _, dup := want[path]; !dup {
			paths = append(paths, path)
		}
		// The later of two entries for one file wins, as installing them in
		// order would leave it.
		want[path] = p
	}

	var dirs []string
	current := make(map[string]bool, len(installed))
	// The trailing separator makes the walk follow Dir itself if it is a
	// symbolic link (WalkDir follows none); the paths it gives below root are
	// cleaned, so they match those of path.
	root := filepath.Clean(a.Dir)
	if !strings.HasSuffix(root, string(filepath.Separator)) {
		root += string(filepath.Separator)
	}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if path == root && errors.Is(err, fs.ErrNotExist) {
				return fs.SkipAll // nothing installed yet
			}
			errs = append(errs, err)
			return nil
		}
		if d.IsDir() {
			if path != root {
				dirs = append(dirs, path)
			}
			return nil
		}
		name := d.Name()
		if isAtomicTemp(name, profileExt) {
			// Reconcile runs at start-up, before any write of this process, so
			// a temporary file can only be the debris of a crash.
			if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
			return nil
		}
		if filepath.Ext(name) != profileExt {
			return nil
		}
		if p, ok := want[path]; ok {
			ok, err := a.upToDate(path, d, p)
			if err != nil {
				errs = append(errs, err)
			}
			current[path] = ok
			return nil
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
		return nil
	})
	if err != nil {
		errs = append(errs, err)
	}

	for _, path := range paths {
		if current[path] {
			continue
		}
		if err := a.write(path, want[path]); err != nil {
			errs = append(errs, err)
		}
	}
	// WalkDir lists a directory before its contents, so going backwards
	// empties children before their parents.
	for i := len(dirs) - 1; i >= 0; i-- {
		a.removeIfEmpty(dirs[i])
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("reconcile profiles in %s: %w", a.Dir, err)
	}
	return nil
}

// path returns where p's file lives, or why p cannot have one.
func (a *FileApplier) path(p Profile) (string, error) {
	switch {
	case !p.Type.Valid():
		return "", fmt.Errorf("profile %q has unknown type %s", p.Name, p.Type)
	case !p.Authority.Valid():
		return "", fmt.Errorf("profile %q has unknown %s", p.Name, p.Authority)
	case p.Name == "":
		return "", fmt.Errorf("%s profile of %s has an empty name", p.Type, p.Authority)
	case len(p.Name) > protocol.MaxNameLen:
		return "", fmt.Errorf("profile name %q is %d bytes, more than %d", p.Name, len(p.Name), protocol.MaxNameLen)
	}
	return filepath.Join(a.Dir, p.Authority.String(), p.Type.String(), escapeName(p.Name)+profileExt), nil
}

// write creates path's directories and writes p's file there.
func (a *FileApplier) write(path string, p Profile) error {
	typeDir := filepath.Dir(path)
	for _, dir := range []string{a.Dir, filepath.Dir(typeDir), typeDir} {
		if err := mkdirReadable(dir); err != nil {
			return err
		}
	}
	data, err := encodeProfileFile(p)
	if err != nil {
		return err
	}
	// A new directory's entry is not synced to its parent; if a crash loses
	// it, Reconcile writes the file again at start-up.
	return WriteFileAtomic(path, data, profileFileMode)
}

// upToDate reports whether the file at path holds exactly p, with the mode
// that lets other tools read it.
func (a *FileApplier) upToDate(path string, d fs.DirEntry, p Profile) (bool, error) {
	if !d.Type().IsRegular() {
		return false, nil
	}
	info, err := d.Info()
	if err != nil {
		return false, err
	}
	if info.Mode().Perm() != profileFileMode {
		return false, nil
	}
	have, err := os.ReadFile(path)
	if err != nil {
		return false, err
	}
	want, err := encodeProfileFile(p)
	if err != nil {
		return false, err
	}
	return bytes.Equal(have, want), nil
}

// removeIfEmpty removes dir if it is empty and below Dir. Errors are
// ignored: a directory that is not empty is still in use, and an empty one
// left behind is harmless and goes at the next Reconcile.
func (a *FileApplier) removeIfEmpty(dir string) {
	if dir == filepath.Clean(a.Dir) {
		return
	}
	// os.Remove tries unlink first, which fails on a directory; rmdir then
	// fails on one that is not empty, so nothing in use can go.
	os.Remove(dir)
}

// mkdirReadable creates dir if it is missing, with profileDirMode
// regardless of the umask, and leaves an existing one as it is.
func mkdirReadable(dir string) error {
	err := os.Mkdir(dir, profileDirMode)
	if errors.Is(err, fs.ErrExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return os.Chmod(dir, profileDirMode)
}

// encodeProfileFile returns the content of p's file.
func encodeProfileFile(p Profile) ([]byte, error) {
	b, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode profile %q: %w", p.Name, err)
	}
	return append(b, '\n'), nil
}

// escapeName turns a profile name into a file name, without the extension,
// that is safe (no '/', NUL or "..", never hidden) and readable: ASCII
// letters, digits, '-', '_' and '.' (except a leading '.') stay, every other
// byte becomes %XX, so "Corp Wi-Fi" is "Corp%20Wi-Fi". A name whose escaped
// form would be longer than maxEscapedName is written as "~" and its
// unpadded URL-safe base64 instead. unescapeName reverses it.
func escapeName(name string) string {
	n := len(name)
	for i := range len(name) {
		if !keepNameByte(name, i) {
			n += 2
		}
	}
	if n > maxEscapedName {
		return longNamePrefix + base64.RawURLEncoding.EncodeToString([]byte(name))
	}
	const upperHex = "0123456789ABCDEF"
	b := make([]byte, 0, n)
	for i := range len(name) {
		if keepNameByte(name, i) {
			b = append(b, name[i])
		} else {
			b = append(b, '%', upperHex[name[i]>>4], upperHex[name[i]&0xf])
		}
	}
	return string(b)
}

// keepNameByte reports whether escapeName keeps byte i of name as it is.
func keepNameByte(name string, i int) bool {
	switch c := name[i]; {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '_':
		return true
	case c == '.':
		return i > 0
	}
	return false
}

// unescapeName returns the name that escapeName turned into s. It accepts
// only what escapeName produces, so that each name has one file name.
func unescapeName(s string) (string, error) {
	var name string
	if rest, ok := strings.CutPrefix(s, longNamePrefix); ok {
		b, err := base64.RawURLEncoding.DecodeString(rest)
		if err != nil {
			return "", fmt.Errorf("unescape name %q: %w", s, err)
		}
		name = string(b)
	} else {
		b := make([]byte, 0, len(s))
		for i := 0; i < len(s); i++ {
			if s[i] != '%' {
				b = append(b, s[i])
				continue
			}
			if i+3 > len(s) {
				return "", fmt.Errorf("unescape name %q: truncated escape at byte %d", s, i)
			}
			var c [1]byte
			if _, err := hex.Decode(c[:], []byte(s[i+1:i+3])); err != nil {
				return "", fmt.Errorf("unescape name %q: bad escape at byte %d", s, i)
			}
			b = append(b, c[0])
			i += 2
		}
		name = string(b)
	}
	if escapeName(name) != s {
		return "", fmt.Errorf("unescape name %q: not a name that escapeName writes", s)
	}
	return name, nil
}
