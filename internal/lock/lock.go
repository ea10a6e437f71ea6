// Package lock serializes writers of one file with flock(2) on a companion
// lock file. The lock belongs to the open file, so it is released when the
// process dies, and two Locks in one process exclude each other too.
//
// flock works on a read-only descriptor, so whoever can open the lock
// file can hold it forever and freeze every writer. The lock file is
// therefore only for those who may write beside it: mode 0600, or 0660
// with the directory's group when that directory is group-writable (the
// group may rebuild there). A lock file with wider permissions or a
// foreign owner is repaired when this process may (root, or its owner),
// and refused otherwise; a symbolic link, FIFO, directory or device at
// the lock path is refused, never followed or opened for real. Waiting is
// bounded: Lock gives up with ErrBusy after a timeout.
package lock

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// ErrBusy is the error of a lock still held by another process when the
// timeout ran out.
var ErrBusy = errors.New("held by another process")

// ErrUnsafe is the error of a lock file that others could open, or that
// is not a regular file.
var ErrUnsafe = errors.New("unsafe lock file")

// File is a held lock.
type File struct {
	f *os.File
	// Repaired says what was wrong with an existing lock file that Lock
	// fixed ("mode 0644" ...), for a warning; "" if nothing.
	Repaired string
}

// policy is who may open the lock file: its mode, and the group that may
// (-1 for none), from the directory the lock file is in.
func policy(dir string) (mode uint32, gid int, err error) {
	fi, err := os.Stat(dir)
	if err != nil {
		return 0, 0, err
	}
	st := fi.Sys().(*syscall.Stat_t)
	// Group-writable but not world-writable: that group may write the
	// CDB's directory, so it may lock. Anything else: the owner alone.
	if st.Mode&0o020 != 0 && st.Mode&0o002 == 0 && st.Gid != 0 {
		return 0o660, int(st.Gid), nil
	}
	return 0o600, -1, nil
}

// Lock opens (creating it if needed) the lock file at path and waits up to
// timeout (0: do not wait) for an exclusive lock on it. A lock still held
// then is an error wrapping ErrBusy; an unsafe lock file that cannot be
// repaired, one wrapping ErrUnsafe.
func Lock(path string, timeout time.Duration) (*File, error) {
	f, repaired, err := open(path)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(timeout)
	pause := time.Millisecond
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return &File{f: f, Repaired: repaired}, nil
		}
		if err != syscall.EWOULDBLOCK && err != syscall.EINTR {
			f.Close()
			return nil, &os.PathError{Op: "lock", Path: path, Err: err}
		}
		left := time.Until(deadline)
		if left <= 0 {
			f.Close()
			return nil, &os.PathError{Op: "lock", Path: path, Err: fmt.Errorf("%w for %v", ErrBusy, timeout)}
		}
		time.Sleep(min(pause, left)) // pacing: flock has no timeout, so a bounded wait polls
		pause = min(2*pause, 25*time.Millisecond)
	}
}

// open opens the lock file safely, creating or repairing it as the policy
// says, and tells what it repaired.
func open(path string) (*os.File, string, error) {
	mode, gid, err := policy(filepath.Dir(path))
	if err != nil {
		return nil, "", err
	}
	// Never open what is not a regular file: a FIFO would block, a
	// device could act on the open. O_NOFOLLOW below closes the race.
	if fi, err := os.Lstat(path); err == nil && !fi.Mode().IsRegular() {
		return nil, "", unsafe(path, "not a regular file (%s)", kind(fi.Mode()))
	}
	flags := syscall.O_RDONLY | syscall.O_NOFOLLOW | syscall.O_NONBLOCK | syscall.O_CLOEXEC
	created := true
	fd, err := syscall.Open(path, flags|syscall.O_CREAT|syscall.O_EXCL, mode)
	if err == syscall.EEXIST {
		created = false
		fd, err = syscall.Open(path, flags, 0)
	}
	if err == syscall.ELOOP {
		return nil, "", unsafe(path, "not a regular file (a symbolic link)")
	}
	if err != nil {
		return nil, "", &os.PathError{Op: "open", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	repaired, err := check(f, path, mode, gid, created)
	if err != nil {
		f.Close()
		return nil, "", err
	}
	return f, repaired, nil
}

// check makes the open lock file's type, owner and mode safe: the mode
// exactly mode (umask aside), the group gid if one may lock, the owner
// root or this process. It repairs what it may and refuses the rest.
func check(f *os.File, path string, mode uint32, gid int, created bool) (string, error) {
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		return "", &os.PathError{Op: "stat", Path: path, Err: err}
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFREG {
		return "", unsafe(path, "not a regular file")
	}
	euid := os.Geteuid()
	perm := st.Mode & 0o7777
	var wrong []string
	wantGid := st.Gid
	if gid >= 0 {
		wantGid = uint32(gid)
	}
	if perm != mode {
		wrong = append(wrong, fmt.Sprintf("mode %04o", perm))
	}
	// The group matters only when it may open the file.
	if gid >= 0 && st.Gid != wantGid {
		wrong = append(wrong, fmt.Sprintf("group %d", st.Gid))
	}
	// Another user's file: its owner may chmod it open again at will.
	// Where a group may lock, its members' files are theirs to share.
	foreign := st.Uid != 0 && int(st.Uid) != euid
	if foreign && (gid < 0 || euid == 0) {
		wrong = append(wrong, fmt.Sprintf("owner %d", st.Uid))
	}
	if len(wrong) == 0 {
		return "", nil
	}
	what := join(wrong)
	if euid != 0 && foreign {
		return "", unsafe(path, "%s lets others hold the lock; only root or its owner can fix it (chmod %o, owner root)", what, mode)
	}
	uid := -1
	if euid == 0 && st.Uid != 0 {
		uid = 0
	}
	g := -1
	if st.Gid != wantGid {
		g = int(wantGid)
	}
	if uid >= 0 || g >= 0 {
		if err := f.Chown(uid, g); err != nil {
			return "", unsafe(path, "%s: unable to fix it: %v", what, err)
		}
	}
	// Chmod after chown: chown clears setuid and setgid bits.
	if err := f.Chmod(fs.FileMode(mode)); err != nil {
		return "", unsafe(path, "%s: unable to fix it: %v", what, err)
	}
	if created {
		return "", nil // the umask's doing, not a finding
	}
	return what, nil
}

// unsafe is an ErrUnsafe about path.
func unsafe(path, format string, args ...any) error {
	return &os.PathError{Op: "lock", Path: path, Err: fmt.Errorf("%w: "+format, append([]any{ErrUnsafe}, args...)...)}
}

func join(s []string) string {
	out := s[0]
	for _, x := range s[1:] {
		out += ", " + x
	}
	return out
}

func kind(m fs.FileMode) string {
	switch {
	case m&fs.ModeSymlink != 0:
		return "a symbolic link"
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a FIFO"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeDevice != 0:
		return "a device"
	}
	return m.Type().String()
}

// Unlock releases the lock.
func (l *File) Unlock() error {
	return l.f.Close()
}
