package main

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
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
