// Package lock serializes writers of one file with flock(2) on a companion
// lock file. The lock belongs to the open file, so it is released when the
// process dies, and two Locks in one process exclude each other too.
package lock

import (
	"os"
	"syscall"
)

// File is a held lock.
type File struct {
	f *os.File
}

// Lock creates path if needed and waits for an exclusive lock on it. The
// file is opened read-only: flock needs no more, so a lock file someone
// else created works as long as it is readable.
func Lock(path string) (*File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|syscall.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, err
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		if err != syscall.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, &os.PathError{Op: "lock", Path: path, Err: err}
	}
	return &File{f}, nil
}

// Unlock releases the lock.
func (l *File) Unlock() error {
	return l.f.Close()
}
