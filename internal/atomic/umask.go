package atomic

import (
	"io/fs"
	"sync"
	"syscall"
)

var umaskOnce = sync.OnceValue(func() fs.FileMode {
	// There is no way to read the umask without setting it; do it once,
	// early, and put it straight back.
	m := syscall.Umask(0)
	syscall.Umask(m)
	return fs.FileMode(m)
})

func umask() fs.FileMode { return umaskOnce() }
