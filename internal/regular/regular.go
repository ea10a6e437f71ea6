// Package regular opens files that must be regular files: a FIFO is opened
// without blocking and refused, never read (a read with no writer would
// hang), and so are a directory and a device.
package regular

import (
	"errors"
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
