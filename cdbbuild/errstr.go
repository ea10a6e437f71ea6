package main

import (
	"errors"
	"io/fs"
	"strings"
	"syscall"

	"github.com/poprelay/poprelay/internal/cdb"
)

// djbErr holds the strings of djb's error_str (as compiled into Debian's
// tcprules), so messages read exactly as tcprules' do.
var djbErr = map[syscall.Errno]string{
	syscall.EINTR:           "interrupted system call",
	syscall.ENOMEM:          "out of memory",
	syscall.ENOENT:          "file does not exist",
	syscall.ETXTBSY:         "text busy",
	syscall.EIO:             "input/output error",
	syscall.EEXIST:          "file already exists",
	syscall.ETIMEDOUT:       "timed out",
	syscall.EINPROGRESS:     "operation in progress",
	syscall.EAGAIN:          "temporary failure",
	syscall.EPIPE:           "broken pipe",
	syscall.EPERM:           "permission denied",
	syscall.EACCES:          "access denied",
	syscall.ENXIO:           "device not configured",
	syscall.EPROTO:          "protocol error",
	syscall.EISDIR:          "is a directory",
	syscall.ESRCH:           "no such process",
	syscall.E2BIG:           "argument list too long",
	syscall.ENOEXEC:         "exec format error",
	syscall.EBADF:           "file descriptor not open",
	syscall.ECHILD:          "no child processes",
	syscall.EDEADLK:         "operation would cause deadlock",
	syscall.EFAULT:          "bad address",
	syscall.ENOTBLK:         "not a block device",
	syscall.EBUSY:           "device busy",
	syscall.EXDEV:           "cross-device link",
	syscall.ENODEV:          "device does not support operation",
	syscall.ENOTDIR:         "not a directory",
	syscall.EINVAL:          "invalid argument",
	syscall.ENFILE:          "system cannot open more files",
	syscall.EMFILE:          "process cannot open more files",
	syscall.ENOTTY:          "not a tty",
	syscall.EFBIG:           "file too big",
	syscall.ENOSPC:          "out of disk space",
	syscall.ESPIPE:          "unseekable descriptor",
	syscall.EROFS:           "read-only file system",
	syscall.EMLINK:          "too many links",
	syscall.EDOM:            "input out of range",
	syscall.ERANGE:          "output out of range",
	syscall.EALREADY:        "operation already in progress",
	syscall.ENOTSOCK:        "not a socket",
	syscall.EMSGSIZE:        "message too long",
	syscall.ECONNRESET:      "connection reset",
	syscall.ENOBUFS:         "out of buffer space",
	syscall.ELOOP:           "symbolic link loop",
	syscall.ENAMETOOLONG:    "file name too long",
	syscall.ENOTEMPTY:       "directory not empty",
	syscall.EDQUOT:          "disk quota exceeded",
	syscall.ESTALE:          "stale NFS file handle",
	syscall.ENOLCK:          "no locks available",
	syscall.ENOSYS:          "system call not available",
	syscall.EOPNOTSUPP:      "operation not supported",
	syscall.ECONNREFUSED:    "connection refused",
	syscall.EHOSTUNREACH:    "host unreachable",
	syscall.ENETUNREACH:     "network unreachable",
	syscall.EADDRINUSE:      "address already used",
	syscall.EADDRNOTAVAIL:   "address not available",
	syscall.ECONNABORTED:    "connection aborted",
	syscall.ENOTCONN:        "not connected",
	syscall.EAFNOSUPPORT:    "address family not supported",
	syscall.EPROTONOSUPPORT: "protocol not supported",
}

// errstr describes err as djb's error_str would: the errno's string if
// there is one, else a short text of our own.
func errstr(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		if s, ok := djbErr[errno]; ok {
			return s
		}
		return "unknown error"
	}
	switch {
	case errors.Is(err, cdb.ErrCorrupt):
		return "corrupt database"
	case errors.Is(err, cdb.ErrTooBig):
		return "database would exceed 4 GiB"
	case errors.Is(err, fs.ErrNotExist):
		return "file does not exist"
	}
	return strings.TrimPrefix(err.Error(), "cdb: ")
}
