package t

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// lowListener listens on host at a free privileged port chosen now.
func lowListener(t *testing.T, network, host string) net.Listener {
	t.Helper()
	for p := 1023; p > 600; p-- {
		if l, err := net.Listen(network, net.JoinHostPort(host, strconv.Itoa(p))); err == nil {
			t.Cleanup(func() { l.Close() })
			return l
		}
	}
	t.Fatal("no free privileged port")
	return nil
}

// freePrivPorts returns n distinct privileged ports on 127.0.0.1 that
// were free a moment ago (the tests run as root, which may listen there).
func freePrivPorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	for range n {
		l := lowListener(t, "tcp4", "127.0.0.1")
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// startTcpserverPriv is startTcpserver on host at a free privileged port
// (below 1024: a connection accepted there comes from a service, which
// is what the wrapper demands of an untrusted caller's standard input).
func startTcpserverPriv(t *testing.T, env []string, host string, opts []string, prog ...string) *Tcpserver {
	t.Helper()
	pick := func() int {
		l := lowListener(t, "tcp4", host)
		defer l.Close()
		return l.Addr().(*net.TCPAddr).Port
	}
	return launchTcpserver(t, need(t, "tcpserver"), host, pick, env, opts, prog...)
}

// setgidWrap is a copy of the wrapper installed setgid to a group nobody
// is not in, and its spool (root:group 2770): scripts/install's model.
type setgidWrap struct {
	wrap  string // the setgid wrapper, which only nobody and root may reach
	spool string
	gid   int    // the spool's group
	dir   string // the test's directory, which nobody may read and search
}

// spoolHas lists the names in the spool.
func (w setgidWrap) spoolHas() []string {
	ents, _ := os.ReadDir(w.spool)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// installSetgidWrap installs the wrapper setgid to an existing system
// group that nobody is not in (the test writes no group database), with
// its spool, in a directory of the test's.
func installSetgidWrap(t *testing.T) setgidWrap {
	t.Helper()
	var gid int
	for _, name := range []string{"mail", "news", "daemon"} {
		if g, err := user.LookupGroup(name); err == nil {
			gid, _ = strconv.Atoi(g.Gid)
			break
		}
	}
	if gid == 0 || gid == 65534 {
		t.Fatalf("no group for the spool (gid %d)", gid)
	}
	dir := t.TempDir()
	for d := dir; d != "/" && d != "."; d = filepath.Dir(d) {
		if st, err := os.Stat(d); err == nil && st.Mode().Perm()&0o005 != 0o005 {
			os.Chmod(d, st.Mode().Perm()|0o005)
		}
	}
	// Only nobody (and root) may reach the setgid copy: no other local
	// user gets a program setgid to a system group for the test's length.
	wrapDir := filepath.Join(dir, "bin")
	os.Mkdir(wrapDir, 0o700)
	wrap := filepath.Join(wrapDir, "checkpassword-wrap")
	b, err := os.ReadFile(bin("checkpassword-wrap"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(wrap, b, 0o755)
	os.Chown(wrap, 0, gid)
	os.Chmod(wrap, 0o755|os.ModeSetgid)
	os.Chown(wrapDir, 65534, 65534)
	os.Chmod(wrapDir, 0o500)
	spool := filepath.Join(dir, "spool")
	os.Mkdir(spool, 0o770)
	os.Chown(spool, 0, gid)
	os.Chmod(spool, 0o770|os.ModeSetgid)
	return setgidWrap{wrap: wrap, spool: spool, gid: gid, dir: dir}
}

// TestSecurityAcceptedSocket: a local user cannot forge a grant with a
// socket of their own. Run as nobody, the setgid wrapper refuses (one
// stderr line, the next program runs, nothing recorded) when standard
// input is a connection nobody opened to the forged address (over IPv4,
// or IPv6 to its ::ffff: form), one accepted by a listener on a high port
// (anyone can listen there), a connected UDP socket, a unix socket or a
// listening socket. A real login, accepted by tcpserver on a privileged
// port and run as nobody (-u/-g), is recorded.
func TestSecurityAcceptedSocket(t *testing.T) {
	needRoot(t, "the test installs a setgid wrapper and runs it as nobody")
	need(t, "tcpserver")

	w := installSetgidWrap(t)
	wrap, spool, spoolHas := w.wrap, w.spool, w.spoolHas

	forge := func(what, ip string, stdin *os.File, want string) {
		t.Helper()
		c := exec.Command(wrap, "--spool", spool, "/bin/echo", "next ran")
		c.Env = baseEnv("TCPREMOTEIP="+ip, "USER=anyone")
		c.Stdin = stdin
		c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}}
		var out, errb strings.Builder
		c.Stdout, c.Stderr = &out, &errb
		err := c.Run()
		if err != nil || out.String() != "next ran\n" {
			t.Errorf("%s: %v, stdout %q", what, err, out.String())
		}
		prefix := "checkpassword-wrap: warning: not recording ip=" + strings.TrimPrefix(ip, "::ffff:") + " user=anyone service=pop3: "
		if lines := strings.Count(errb.String(), "\n"); lines != 1 || !strings.HasPrefix(errb.String(), prefix) || !strings.Contains(errb.String(), want) {
			t.Errorf("%s: stderr %q; want one line %q...%q", what, errb.String(), prefix, want)
		}
		if got := spoolHas(); len(got) != 0 {
			t.Fatalf("%s: recorded %q", what, got)
		}
	}
	fileOf := func(c interface{ File() (*os.File, error) }) *os.File {
		t.Helper()
		f, err := c.File()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	const notAccepted = "which is neither privileged nor listed in /etc/poprelay/ports"

	// A privileged service on 127.0.0.10; the forger connects out to it.
	svc := lowListener(t, "tcp4", "127.0.0.10")
	svcPort := svc.Addr().(*net.TCPAddr).Port
	go func() {
		for {
			c, err := svc.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.21")}, Timeout: 30 * time.Second}
	out, err := d.Dial("tcp4", svc.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	forge("connected out", "127.0.0.10", fileOf(out.(*net.TCPConn)), notAccepted)

	// The same over an IPv6 socket, to the ::ffff: form of the address.
	fd6, err := syscall.Socket(syscall.AF_INET6, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	sa6 := &syscall.SockaddrInet6{Port: svcPort, Addr: [16]byte{10: 0xff, 11: 0xff, 12: 127, 13: 0, 14: 0, 15: 10}}
	if err := syscall.Connect(fd6, sa6); err != nil {
		t.Fatal(err)
	}
	f6 := os.NewFile(uintptr(fd6), "tcp6")
	defer f6.Close()
	forge("connected out over IPv6 to ::ffff:127.0.0.10", "::ffff:127.0.0.10", f6, notAccepted)
	forge("connected out over IPv6, plain address", "127.0.0.10", f6, notAccepted)

	// Accepted by the forger's own listener on a high port.
	hl, err := net.Listen("tcp4", "127.0.0.11:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hl.Close()
	d.LocalAddr = &net.TCPAddr{IP: net.ParseIP("127.0.0.22")}
	hc, err := d.Dial("tcp4", hl.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Close()
	ha, err := hl.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer ha.Close()
	forge("accepted on a high port", "127.0.0.22", fileOf(ha.(*net.TCPConn)), fmt.Sprintf("local port %d, %s", hl.Addr().(*net.TCPAddr).Port, notAccepted))

	// A connected UDP socket, a unix socket, a listening socket.
	uc, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.ParseIP("127.0.0.23")}, &net.UDPAddr{IP: net.ParseIP("127.0.0.10"), Port: svcPort})
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	forge("connected UDP", "127.0.0.10", fileOf(uc), "standard input is not a TCP socket")
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	us := os.NewFile(uintptr(fds[0]), "unix")
	defer us.Close()
	defer syscall.Close(fds[1])
	forge("unix socket", "127.0.0.10", us, "standard input is not a TCP socket")
	forge("listening socket", "127.0.0.10", fileOf(svc.(*net.TCPListener)), "standard input is not a TCP socket")

	// A real login: tcpserver accepts on a privileged port and runs the
	// wrapper as nobody.
	ts := startTcpserverPriv(t, baseEnv(), "127.0.0.12", []string{"-u", "65534", "-g", "65534"},
		"/usr/bin/env", "USER=alice", wrap, "--spool", spool, "/bin/echo", "+OK")
	d.LocalAddr = &net.TCPAddr{IP: net.ParseIP("127.0.0.24")}
	lc, err := d.Dial("tcp4", "127.0.0.12:"+strconv.Itoa(ts.Port))
	if err != nil {
		t.Fatal(err)
	}
	lc.SetDeadline(time.Now().Add(time.Minute))
	got, _ := io.ReadAll(lc)
	lc.Close()
	if string(got) != "+OK\n" {
		t.Errorf("login: got %q", got)
	}
	if names := spoolHas(); len(names) != 1 || names[0] != "127.0.0.24" {
		t.Errorf("a real login on a privileged port recorded %q, want 127.0.0.24", names)
	} else if st, err := os.Stat(filepath.Join(spool, "127.0.0.24")); err != nil || st.Sys().(*syscall.Stat_t).Uid != 65534 {
		t.Errorf("the grant was not written by nobody: %v", err)
	}
}
