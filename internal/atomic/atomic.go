// Package atomic publishes files the djb way: write a dot-named temporary
// file in the target's directory, fsync it, close it, rename it over the
// target and fsync the directory. A reader sees the old file or the new
// one, never a part; on any failure the temporary file is removed and the
// old file stays as it was.
package atomic

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// WriteFile writes the file at path through fn and publishes it. The new
// file keeps the mode of the file it replaces, or gets perm (less the
// umask) if there is none. fn gets the temporary file, positioned at 0; it
// may seek in it.
func WriteFile(path string, perm fs.FileMode, fn func(f *os.File) error) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	mode, err := modeFor(path, perm)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := fn(f); err != nil {
		return err
	}
	// CreateTemp makes 0600.
	if err := f.Chmod(mode); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return syncDir(dir)
}

// modeFor is the mode of a file that replaces path: path's own, or perm
// less the umask (as open(2) would make it) if there is none. A path
// that is not a regular file is not replaced.
func modeFor(path string, perm fs.FileMode) (fs.FileMode, error) {
	st, err := os.Stat(path)
	if err != nil {
		return perm &^ umask(), nil
	}
	if !st.Mode().IsRegular() {
		return 0, &fs.PathError{Op: "replace", Path: path, Err: errors.New("not a regular file")}
	}
	return st.Mode().Perm(), nil
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return &fs.PathError{Op: "sync", Path: dir, Err: err}
	}
	return nil
}

// Clean removes the temporary files a WriteFile of path left behind when
// its process was killed (the dot-named ".BASE.tmpNNN" files in path's
// directory) and returns their names. Only regular files are removed, a
// symlink of such a name is unlinked itself, never followed; anything else
// is left. Call it only while holding a lock that every writer of path
// holds while it writes: a temp file then belongs to no live writer.
func Clean(path string) ([]string, error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	prefix := "." + base + ".tmp"
	var gone []string
	var errs []error
	for _, e := range ents {
		name := e.Name()
		rest, ok := strings.CutPrefix(name, prefix)
		if !ok || rest == "" || strings.Trim(rest, "0123456789") != "" {
			continue
		}
		if t := e.Type(); t != 0 && t != fs.ModeSymlink {
			continue
		}
		if err := syscall.Unlink(filepath.Join(dir, name)); err != nil {
			if err != syscall.ENOENT {
				errs = append(errs, &fs.PathError{Op: "remove", Path: filepath.Join(dir, name), Err: err})
			}
			continue
		}
		gone = append(gone, name)
	}
	return gone, errors.Join(errs...)
}
