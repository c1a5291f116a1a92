package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"unicode/utf8"
)

// atomicTempMarker sits between a target's name and the random part of the
// temporary file that WriteFileAtomic renames over it, so that Reconcile can
// recognise the leftovers of a crash.
const atomicTempMarker = ".tmp-"

// maxTempStem caps the part of the target's name copied into the temporary
// name: the random part and marker add up to 16 bytes, and a long target
// name must not push the temporary one past the 255-byte limit of common
// file systems.
const maxTempStem = 200

// WriteFileAtomic replaces the file at path with data, so that a crash at
// any point leaves either the old content or the new one, never a mix or a
// truncated file. It writes a temporary file in the same directory (rename
// is atomic only within one file system), syncs it, renames it over path
// and syncs the directory so that the rename itself survives a power loss.
// The file gets exactly perm, whatever the umask. On error the temporary
// file is removed and path is left as it was.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir, base := filepath.Dir(path), filepath.Base(path)
	f, err := os.CreateTemp(dir, tempPattern(base))
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("write %s: directory %s does not exist; create it first: %w", path, dir, err)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := writeAtomicTemp(f, data, perm); err != nil {
		f.Close()
		os.Remove(f.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	// The new content is in place now; a failed directory sync only means the
	// rename may not survive a power loss, and there is nothing to undo.
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("write %s: sync directory: %w", path, err)
	}
	return nil
}

// writeAtomicTemp gives the temporary file its mode and content and makes
// both durable before the rename exposes them; it closes f on success.
func writeAtomicTemp(f *os.File, data []byte, perm os.FileMode) error {
	// CreateTemp uses 0600; Chmod, unlike the mode given to open, ignores the
	// umask, so other readers get exactly what the caller asked for.
	if err := f.Chmod(perm); err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync: %w", err)
	}
	return f.Close()
}

// syncDir flushes a directory's entries, which is what makes a rename or a
// new file durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// tempPattern returns the os.CreateTemp pattern for a temporary file that
// will be renamed to base: hidden (a leading dot), so that directory
// listings and globs of other tools skip it, and carrying base so that a
// leftover says what it was for.
func tempPattern(base string) string {
	if len(base) > maxTempStem {
		cut := maxTempStem
		for cut > 0 && !utf8.RuneStart(base[cut]) {
			cut--
		}
		base = base[:cut]
	}
	return "." + base + atomicTempMarker + "*"
}

// isAtomicTemp reports whether name is a temporary file that WriteFileAtomic
// left behind for a target named like suffix (such as ".json").
func isAtomicTemp(name, suffix string) bool {
	return strings.HasPrefix(name, ".") && strings.Contains(name, suffix+atomicTempMarker)
}
