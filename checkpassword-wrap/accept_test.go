package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// fdOf returns the descriptor of a connection or listener (kept open
// by the caller).
func fdOf(t *testing.T, c interface {
	SyscallConn() (syscall.RawConn, error)
}) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var fd int
	rc.Control(func(f uintptr) { fd = int(f) })
	return fd
}

// pair returns both ends of a loopback TCP connection to addr: the one
// the dialer opened and the one the listener accepted.
func pair(t *testing.T, addr string) (opened, acceptedConn *net.TCPConn, ln *net.TCPListener) {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	a, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return c.(*net.TCPConn), a.(*net.TCPConn), l.(*net.TCPListener)
}

func TestAccepted(t *testing.T) {
	dir := t.TempDir()
	ports := filepath.Join(dir, "ports")
	opened, acc, ln := pair(t, "127.0.0.1:0")
	port := ln.Addr().(*net.TCPAddr).Port

	// A connection opened to a service, and a high port nobody listed.
	for name, fd := range map[string]int{"opened": fdOf(t, opened), "accepted on a high port": fdOf(t, acc)} {
		if ok, why := accepted(fd, ports); ok || !strings.Contains(why, "neither privileged nor listed in "+ports) {
			t.Errorf("%s: %v %q", name, ok, why)
		}
	}
	if ok, why := accepted(fdOf(t, ln), ports); ok || why != "standard input is a listening socket" {
		t.Errorf("listener: %v %q", ok, why)
	}
	if os.Geteuid() != 0 {
		t.Skip("SKIP: a privileged port and a root-owned ports file need root")
	}

	// The admin lists the high port: accepted; the opened end is not.
	os.WriteFile(ports, []byte("# POP3 on a high port\n2110-2119\n"+strconv.Itoa(port)+"\n"), 0o644)
	if ok, why := accepted(fdOf(t, acc), ports); !ok {
		t.Errorf("listed port: %q", why)
	}
	if ok, _ := accepted(fdOf(t, opened), ports); ok {
		t.Error("the opened end of a listed port's connection was accepted")
	}
	// A ports file others can write, or with a bad line, lists nothing.
	os.Chmod(ports, 0o666)
	if ok, why := accepted(fdOf(t, acc), ports); ok || !strings.Contains(why, "(ignored: it must be a regular file of root's that no one else can write)") {
		t.Errorf("world-writable ports file: %v %q", ok, why)
	}
	os.WriteFile(ports, []byte(strconv.Itoa(port)+"\nhttp\n"), 0o644)
	os.Chmod(ports, 0o644)
	if ok, why := accepted(fdOf(t, acc), ports); ok || !strings.Contains(why, "(ignored: "+ports+":2: not a port or range)") {
		t.Errorf("bad ports file: %v %q", ok, why)
	}

	// A privileged port: accepted without any list; the opened end not.
	var low *net.TCPListener
	for p := 1023; p > 900 && low == nil; p-- {
		if l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p)); err == nil {
			low = l.(*net.TCPListener)
		}
	}
	if low == nil {
		t.Fatal("no free privileged port")
	}
	low.Close()
	opened, acc, _ = pair(t, low.Addr().String())
	if ok, why := accepted(fdOf(t, acc), filepath.Join(dir, "none")); !ok {
		t.Errorf("privileged port: %q", why)
	}
	if ok, _ := accepted(fdOf(t, opened), filepath.Join(dir, "none")); ok {
		t.Error("a connection opened to a privileged port was accepted")
	}
}

// otherNetnsPair makes, as root, a network namespace of its own in a
// locked OS thread (unshare CLONE_NEWNET, lo up) and there both ends of a
// connection to 127.0.0.1:110 and the listener: what a user gets with
// unshare -Urn. The thread ends with its goroutine; the sockets stay.
func otherNetnsPair(t *testing.T) (opened, acceptedFd, listener int) {
	t.Helper()
	type fds struct {
		opened, accepted, listener int
		err                        error
	}
	ch := make(chan fds)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread is not reused
		r := fds{opened: -1, accepted: -1, listener: -1}
		defer func() { ch <- r }()
		step := func(what string, err error) bool {
			if err != nil && r.err == nil {
				r.err = fmt.Errorf("%s: %w", what, err)
			}
			return r.err == nil
		}
		if !step("unshare", unix.Unshare(unix.CLONE_NEWNET)) {
			return
		}
		s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if !step("socket", err) {
			return
		}
		defer unix.Close(s)
		ifr, err := unix.NewIfreq("lo")
		if !step("ifreq", err) || !step("SIOCGIFFLAGS", unix.IoctlIfreq(s, unix.SIOCGIFFLAGS, ifr)) {
			return
		}
		ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
		if !step("SIOCSIFFLAGS", unix.IoctlIfreq(s, unix.SIOCSIFFLAGS, ifr)) {
			return
		}
		sa := &unix.SockaddrInet4{Port: 110, Addr: [4]byte{127, 0, 0, 1}}
		r.listener, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if !step("socket", err) || !step("bind", unix.Bind(r.listener, sa)) || !step("listen", unix.Listen(r.listener, 1)) {
			return
		}
		r.opened, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if !step("socket", err) || !step("connect", unix.Connect(r.opened, sa)) {
			return
		}
		r.accepted, _, err = unix.Accept4(r.listener, unix.SOCK_CLOEXEC)
		step("accept", err)
	}()
	r := <-ch
	for _, fd := range []int{r.opened, r.accepted, r.listener} {
		if fd >= 0 {
			t.Cleanup(func() { unix.Close(fd) })
		}
	}
	if r.err != nil {
		t.Fatalf("a connection in a network namespace of its own: %v", r.err)
	}
	return r.opened, r.accepted, r.listener
}

// TestAcceptedOtherNetns: a connection accepted on port 110 in another
// network namespace is refused, and so is every socket when the kernel
// cannot tell the namespace; in the wrapper's own namespace a connection
// accepted on a privileged port still is accepted.
func TestAcceptedOtherNetns(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI runs as root")
		}
		t.Skip("SKIP: a network namespace of its own needs root")
	}
	none := filepath.Join(t.TempDir(), "none")
	const other = "standard input is a connection of another network namespace (in one of their own, made with unshare -Urn, users may listen on any port)"
	opened, acc, ln := otherNetnsPair(t)
	if sa, err := unix.Getsockname(acc); err != nil || sa.(*unix.SockaddrInet4).Port != 110 {
		t.Fatalf("accepted end: %v %v", sa, err)
	}
	if ok, why := accepted(acc, none); ok || why != other {
		t.Errorf("accepted on port 110 in another namespace: %v %q", ok, why)
	}
	if ok, why := accepted(opened, none); ok || why != other {
		t.Errorf("opened in another namespace: %v %q", ok, why)
	}
	if ok, why := accepted(ln, none); ok || why != "standard input is a listening socket" {
		t.Errorf("listener in another namespace: %v %q", ok, why)
	}

	// In this namespace, a privileged port: accepted.
	var low net.Listener
	for p := 1023; p > 900 && low == nil; p-- {
		low, _ = net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
	}
	if low == nil {
		t.Fatal("no free privileged port")
	}
	low.Close()
	_, here, _ := pair(t, low.Addr().String())
	if ok, why := accepted(fdOf(t, here), none); !ok {
		t.Fatalf("privileged port in this namespace: %q", why)
	}

	// A kernel before 5.14 has no SO_NETNS_COOKIE: no socket is believed.
	real := netnsCookie
	t.Cleanup(func() { netnsCookie = real })
	netnsCookie = func(int) (uint64, error) { return 0, unix.ENOPROTOOPT }
	const cantTell = "unable to tell whether standard input is a socket of this host's network namespace (SO_NETNS_COOKIE: protocol not available; Linux 5.14 or later tells it)"
	for name, fd := range map[string]int{"here": fdOf(t, here), "other": acc} {
		if ok, why := accepted(fd, none); ok || why != cantTell {
			t.Errorf("%s without SO_NETNS_COOKIE: %v %q", name, ok, why)
		}
	}
}
