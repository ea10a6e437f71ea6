// Package t holds poprelay's end-to-end tests: the real binaries against
// the real tcpserver, tcprules, Dovecot and etcd, on loopback, with ports
// chosen at run time. Run them with "make test" (or "make e2e").
package t

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// binDir holds checkpassword-wrap, relayctl and cdbbuild.
var binDir string

// repoRoot is the checkout the tests run from.
var repoRoot string

func TestMain(m *testing.M) {
	wd, err := os.Getwd()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(111)
	}
	repoRoot = filepath.Dir(wd)
	binDir = os.Getenv("POPRELAY_BIN")
	var tmp string
	if binDir == "" {
		tmp, err = os.MkdirTemp("", "poprelay-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(111)
		}
		binDir = tmp
		for _, cmd := range []string{"checkpassword-wrap", "relayctl", "cdbbuild"} {
			if m, _ := filepath.Glob(filepath.Join(repoRoot, cmd, "*.go")); len(m) == 0 {
				continue
			}
			c := exec.Command("go", "build", "-o", filepath.Join(binDir, cmd), "./"+cmd)
			c.Dir = repoRoot
			c.Stdout, c.Stderr = os.Stderr, os.Stderr
			if err := c.Run(); err != nil {
				fmt.Fprintf(os.Stderr, "building %s: %v\n", cmd, err)
				os.Exit(111)
			}
		}
	}
	live := liveInstall()
	code := m.Run()
	// Inside an isolated root (isolatedBody) the test installs on purpose.
	if now := liveInstall(); now != live && os.Getenv("POPRELAY_ISOLATED_TEST") == "" {
		// A test installed onto this machine instead of an isolated
		// root (isolate_test.go): say what it changed.
		fmt.Fprintf(os.Stderr, "FAIL: the tests changed this machine's poprelay install:\nbefore:\n%safter:\n%s", live, now)
		code = 1
	}
	if debDir != "" {
		os.RemoveAll(debDir)
	}
	if tmp != "" {
		os.RemoveAll(tmp)
	}
	os.Exit(code)
}

// bin returns the path of one of our commands.
func bin(name string) string { return filepath.Join(binDir, name) }

// need returns the path of an external tool, failing the test in CI (where
// .ci/run installs every tool) and skipping it visibly elsewhere.
func need(t testing.TB, tool string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/lib/dovecot"} {
		if st, err := os.Stat(filepath.Join(dir, tool)); err == nil && st.Mode().IsRegular() {
			return filepath.Join(dir, tool)
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s is not installed; .ci/run should have installed it", tool)
	}
	t.Skipf("SKIP: %s is not installed", tool)
	return ""
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// start runs a command in its own process group and kills the group (by
// PID) when the test ends. Its stderr goes to the returned pipe reader if
// wantStderr, else to the test log.
func start(t testing.TB, env []string, wantStderr bool, name string, args ...string) (*exec.Cmd, *bufio.Reader) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var r *bufio.Reader
	if wantStderr {
		pr, err := cmd.StderrPipe()
		if err != nil {
			t.Fatal(err)
		}
		r = bufio.NewReader(pr)
	} else {
		cmd.Stderr = &testLog{t: t, prefix: filepath.Base(name) + ": "}
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
	})
	return cmd, r
}

// testLog forwards a child's stderr to the test log, line by line.
type testLog struct {
	t      testing.TB
	prefix string
	buf    []byte
}

func (l *testLog) Write(p []byte) (int, error) {
	l.buf = append(l.buf, p...)
	for {
		i := strings.IndexByte(string(l.buf), '\n')
		if i < 0 {
			break
		}
		l.t.Log(l.prefix + string(l.buf[:i]))
		l.buf = l.buf[i+1:]
	}
	return len(p), nil
}

// Tcpserver is a running real tcpserver on 127.0.0.1.
type Tcpserver struct {
	Port   int
	Cmd    *exec.Cmd
	Stderr *bufio.Reader
}

// startTcpserver runs "tcpserver -v [opts] 127.0.0.1 PORT prog..." with a
// port chosen now, and waits until it listens. opts come before the host,
// e.g. "-x", "rules.cdb", "-R", "-H".
func startTcpserver(t testing.TB, env []string, opts []string, prog ...string) *Tcpserver {
	t.Helper()
	return startTcpserverOn(t, need(t, "tcpserver"), "127.0.0.1", env, opts, prog...)
}

// startTcpserverOn runs "tcpserver -v [opts] HOST PORT prog..." with the
// tcpserver binary at path.
func startTcpserverOn(t testing.TB, tcpserver, host string, env []string, opts []string, prog ...string) *Tcpserver {
	t.Helper()
	return launchTcpserver(t, tcpserver, host, func() int { return freePort(t) }, env, opts, prog...)
}

// launchTcpserver runs "tcpserver -v [opts] HOST PORT prog..." on a port
// from pick, and waits until it listens; a port taken meanwhile is
// retried with another.
func launchTcpserver(t testing.TB, tcpserver, host string, pick func() int, env []string, opts []string, prog ...string) *Tcpserver {
	t.Helper()
	for try := 0; try < 5; try++ {
		port := pick()
		args := append([]string{"-v"}, opts...)
		args = append(args, host, fmt.Sprint(port))
		args = append(args, prog...)
		cmd, stderr := start(t, env, true, tcpserver, args...)
		line, err := stderr.ReadString('\n')
		if err == nil && strings.HasPrefix(line, "tcpserver: status: 0/") {
			// Keep draining stderr so tcpserver never blocks on it.
			go io.Copy(&testLog{t: t, prefix: "tcpserver: "}, stderr)
			return &Tcpserver{Port: port, Cmd: cmd, Stderr: stderr}
		}
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
		t.Logf("tcpserver on port %d did not start (%q, %v); retrying", port, line, err)
	}
	t.Fatal("tcpserver would not start")
	return nil
}

// connectFrom connects to 127.0.0.1:port from the source address src (any
// 127.0.0.0/8 address works on Linux loopback), with a minute to talk:
// the deadline only ends a hung conversation, and a busy machine may
// take seconds to fork the server's program.
// From an IPv6 src it connects to [::1]:port (see inNetns).
func connectFrom(src string, port int) (net.Conn, error) {
	d := net.Dialer{
		LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)},
		Timeout:   30 * time.Second,
	}
	dst := "127.0.0.1"
	if strings.Contains(src, ":") {
		dst = "::1"
	}
	c, err := d.Dial("tcp", hostPort(dst, port))
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(time.Minute))
	return c, nil
}

// dialFrom connects to 127.0.0.1:port from src (see connectFrom), sends
// input, closes the write side and returns everything the server sent.
func dialFrom(t testing.TB, src string, port int, input string) string {
	t.Helper()
	c, err := connectFrom(src, port)
	if err != nil {
		t.Fatalf("dial from %s: %v", src, err)
	}
	defer c.Close()
	if input != "" {
		io.WriteString(c, input)
	}
	c.(*net.TCPConn).CloseWrite()
	out, _ := io.ReadAll(c)
	return string(out)
}

// envFrom parses "NAME=VALUE" lines (as printed by env) into a map.
func envFrom(out string) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if name, value, ok := strings.Cut(line, "="); ok {
			m[name] = value
		}
	}
	return m
}

// baseEnv is a minimal environment for child processes.
func baseEnv(extra ...string) []string {
	return append([]string{"PATH=" + os.Getenv("PATH"), "LC_ALL=C"}, extra...)
}

// benchOnly skips a measurement unless POPRELAY_BENCH is set ("make
// bench-e2e"): figures are proven in benchmark runs, never as timed
// assertions in the test suite, where a loaded machine would fail them.
func benchOnly(t testing.TB) {
	t.Helper()
	if os.Getenv("POPRELAY_BENCH") == "" {
		t.Skip("SKIP: a measurement; run it with make bench-e2e")
	}
}
