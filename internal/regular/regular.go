// Package regular opens files that must be regular files: a FIFO is opened
// without blocking and refused, never read (a read with no writer would
// hang), and so are a directory and a device.
package regular

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"
)

// ErrNotRegular reports a path that is a FIFO, a directory or a device.
var ErrNotRegular = errors.New("not a regular file")

// Open opens the file at path for reading without blocking on a FIFO, and
// refuses anything but a regular file (ErrNotRegular in a *fs.PathError).
// It returns the open file and its FileInfo.
func Open(path string) (*os.File, fs.FileInfo, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, nil, &fs.PathError{Op: "open", Path: path, Err: ErrNotRegular}
	}
	return f, st, nil
}

// ErrUntrusted reports a file that ReadOwned will not believe.
var ErrUntrusted = errors.New("untrusted file")

// untrusted is an error wrapping ErrUntrusted whose text is msg alone.
type untrusted struct{ msg string }

func (e untrusted) Error() string { return e.msg }
func (e untrusted) Unwrap() error { return ErrUntrusted }

// ReadOwned reads the whole of a file that only its owner can have
// written: it must be a regular file (a symlink is never followed, a FIFO
// never waited on), owned by root or by this process's user, writable by
// no one else, and at most max bytes long. A file that fails a check, or
// cannot be read whole, is an error wrapping ErrUntrusted that names path
// and why; a file that cannot be opened (a missing one: fs.ErrNotExist)
// is the error of the open. It returns the bytes and the file's stat.
func ReadOwned(path string, max int64) ([]byte, *syscall.Stat_t, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, nil, untrusted{path + " is a symlink"}
		}
		return nil, nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.Mode().IsRegular():
		return nil, nil, untrusted{path + " is not a regular file"}
	case !ok:
		return nil, nil, untrusted{path + ": no owner"}
	case st.Uid != 0 && int(st.Uid) != os.Geteuid():
		return nil, nil, untrusted{fmt.Sprintf("%s is owned by uid %d", path, st.Uid)}
	case fi.Mode().Perm()&0o022 != 0:
		return nil, nil, untrusted{fmt.Sprintf("%s is writable by group or others (%v)", path, fi.Mode().Perm())}
	case fi.Size() > max:
		return nil, nil, untrusted{fmt.Sprintf("%s is %d bytes long", path, fi.Size())}
	}
	buf := make([]byte, fi.Size())
	if _, err := io.ReadFull(f, buf); err != nil {
		return nil, nil, untrusted{fmt.Sprintf("%s: %v", path, err)}
	}
	return buf, st, nil
}
