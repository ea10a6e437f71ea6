package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// PortsFile lists the local ports, besides the privileged ones, on which
// a connection on standard input counts as accepted by a service (POP3 or
// IMAP on a high port). Only root's word counts: it is the admin's file,
// owned by root and writable by no one else, never a flag or variable,
// which the caller of a setgid program sets as it likes.
const PortsFile = "/etc/poprelay/ports"

// stdinAccepted tells whether standard input, a connected TCP socket, is
// a connection a service accepted rather than one the caller opened: a
// connection the caller opens gets a local port from the ephemeral range,
// and an ordinary user can neither bind nor listen on a privileged port.
// So its local port must be privileged (below 1024, or below the
// system's ip_unprivileged_port_start if lower, and below the ephemeral
// range) or listed in the ports file. And it must be a socket of the
// wrapper's own network namespace: in one of its own (unshare -Urn: a
// user namespace and a network namespace, no privilege needed) a user may
// listen on port 110, put any address on lo, connect from it and hand the
// accepted socket, by SCM_RIGHTS, to a process outside that runs the
// wrapper. If not, why says so for the log.
func stdinAccepted(portsFile string) (ok bool, why string) {
	return accepted(0, portsFile)
}

// accepted is stdinAccepted for the socket fd.
func accepted(fd int, portsFile string) (ok bool, why string) {
	if v, err := syscall.GetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_ACCEPTCONN); err != nil || v != 0 {
		return false, "standard input is a listening socket"
	}
	if ok, why := ownNetns(fd); !ok {
		return false, why
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		return false, fmt.Sprintf("standard input has no local address: %v", err)
	}
	var port int
	switch sa := sa.(type) {
	case *syscall.SockaddrInet4:
		port = sa.Port
	case *syscall.SockaddrInet6:
		port = sa.Port
	default:
		return false, "standard input is not an IP socket"
	}
	if port < privilegedBelow() {
		return true, ""
	}
	listed, note := listedPorts(portsFile)
	if listed[port] {
		return true, ""
	}
	return false, fmt.Sprintf("standard input is a connection to local port %d, which is neither privileged nor listed in %s%s: only a connection a service accepted proves where the client is", port, portsFile, note)
}

// netnsCookie returns the cookie of the network namespace the socket fd
// belongs to (SO_NETNS_COOKIE, Linux 5.14 and later): it is set when the
// namespace is made and never given to another. A var so that a test can
// stand for a kernel without it.
var netnsCookie = func(fd int) (uint64, error) {
	return unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
}

// ownNetns tells whether the socket fd belongs to the wrapper's own
// network namespace, told by comparing its SO_NETNS_COOKIE with that of a
// socket the wrapper makes. Where that cannot be told (an older kernel:
// ENOPROTOOPT) the answer is no: a socket of a namespace the caller made
// proves nothing about where the client is.
func ownNetns(fd int) (ok bool, why string) {
	cantTell := "unable to tell whether standard input is a socket of this host's network namespace"
	theirs, err := netnsCookie(fd)
	if err != nil {
		return false, fmt.Sprintf("%s (SO_NETNS_COOKIE: %v; Linux 5.14 or later tells it)", cantTell, err)
	}
	s, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return false, fmt.Sprintf("%s (socket: %v)", cantTell, err)
	}
	defer syscall.Close(s)
	ours, err := netnsCookie(s)
	if err != nil {
		return false, fmt.Sprintf("%s (SO_NETNS_COOKIE: %v; Linux 5.14 or later tells it)", cantTell, err)
	}
	if theirs != ours {
		return false, "standard input is a connection of another network namespace (in one of their own, made with unshare -Urn, users may listen on any port)"
	}
	return true, ""
}

// privilegedBelow is the first port an ordinary user may bind, or that
// the kernel may give an outgoing connection, whichever is lower, at most
// 1024. The /proc/sys/net files are those of the network namespace of the
// process that reads them, the wrapper's own; that is the right one only
// because ownNetns has made sure the socket is of that namespace too (the
// limits of a namespace a user made are the user's to set).
func privilegedBelow() int {
	below := 1024
	if v, ok := procInt("/proc/sys/net/ipv4/ip_unprivileged_port_start", 0); ok && v < below {
		below = v
	}
	if v, ok := procInt("/proc/sys/net/ipv4/ip_local_port_range", 0); ok && v < below {
		below = v
	}
	return below
}

// procInt reads the field-th number of a /proc file.
func procInt(path string, field int) (int, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	f := strings.Fields(string(b))
	if field >= len(f) {
		return 0, false
	}
	n, err := strconv.Atoi(f[field])
	return n, err == nil
}

// listedPorts reads the ports file: one port or range (2110-2119) per
// line, # comments. A missing file lists nothing; a file that root does
// not own alone (another owner, group- or world-writable, not a regular
// file) or with a bad line lists nothing either, and note says why.
func listedPorts(path string) (map[int]bool, string) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, ""
		}
		return nil, fmt.Sprintf(" (unable to read it: %v)", innermost(err))
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Sprintf(" (unable to read it: %v)", innermost(err))
	}
	st := fi.Sys().(*syscall.Stat_t)
	if !fi.Mode().IsRegular() || st.Uid != 0 || fi.Mode().Perm()&0o022 != 0 {
		return nil, " (ignored: it must be a regular file of root's that no one else can write)"
	}
	ports := map[int]bool{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(line, "-")
		a, err1 := strconv.Atoi(strings.TrimSpace(lo))
		b := a
		var err2 error
		if isRange {
			b, err2 = strconv.Atoi(strings.TrimSpace(hi))
		}
		if err1 != nil || err2 != nil || a < 1 || b > 65535 || a > b || b-a > 65535 {
			return nil, fmt.Sprintf(" (ignored: %s:%d: not a port or range)", path, n)
		}
		for p := a; p <= b; p++ {
			ports[p] = true
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Sprintf(" (unable to read it: %v)", err)
	}
	return ports, ""
}
