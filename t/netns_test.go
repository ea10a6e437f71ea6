package t

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// Debian's IPv6 tcpserver (ucspi-tcp-ipv6, fefe's IPv6 patch) conflicts
// with ucspi-tcp, so it is never installed: ipv6Tools unpacks its .deb
// (apt-get download, dpkg -x) into a temp dir and returns the directory
// holding its tcpserver and tcprulescheck. POPRELAY_UCSPI_IPV6 names an
// unpacked one instead. A download that fails skips the test, except in CI.
func ipv6Tools(t *testing.T) string {
	t.Helper()
	if d := os.Getenv("POPRELAY_UCSPI_IPV6"); d != "" {
		return d
	}
	need(t, "dpkg")
	need(t, "apt-get")
	dir := t.TempDir()
	get := exec.Command("apt-get", "download", "ucspi-tcp-ipv6")
	get.Dir = dir
	if out, err := get.CombinedOutput(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("apt-get download ucspi-tcp-ipv6: %v\n%s", err, out)
		}
		t.Skipf("SKIP: apt-get download ucspi-tcp-ipv6: %v: %s", err, lastLine(string(out)))
	}
	debs, _ := filepath.Glob(filepath.Join(dir, "ucspi-tcp-ipv6_*.deb"))
	if len(debs) != 1 {
		t.Fatalf("apt-get download left %q", debs)
	}
	root := filepath.Join(dir, "root")
	if out, err := exec.Command("dpkg", "-x", debs[0], root).CombinedOutput(); err != nil {
		t.Fatalf("dpkg -x: %v\n%s", err, out)
	}
	bin := filepath.Join(root, "usr", "bin")
	for _, p := range []string{"tcpserver", "tcprulescheck"} {
		if _, err := os.Stat(filepath.Join(bin, p)); err != nil {
			t.Fatal(err)
		}
	}
	return bin
}

func lastLine(s string) string {
	s = strings.TrimRight(s, "\n")
	return s[strings.LastIndexByte(s, '\n')+1:]
}

// inNetns runs the test's body in a network namespace of its own (unshare
// -n, as root), where 2001::/16 and fd00::/8 are routed to loopback and any address
// may be bound, so clients connect from whatever IPv6 address the test
// picks. Call it first, after preparing what needs the real network (as
// ipv6Tools does), passing that on in env (KEY=VALUE):
//
//	func TestX(t *testing.T) {
//		tools := ipv6Tools(t)
//		if !inNetns(t, "POPRELAY_UCSPI_IPV6="+tools) {
//			return
//		}
//		... connect from 2001:db8:0:1:1:1:1:1 ...
//	}
//
// It returns true in the inner run; outside it returns false after the
// inner run, whose log it forwards, whose failure fails the test and whose
// skip skips it. Without root it skips, except in CI.
func inNetns(t *testing.T, env ...string) bool {
	t.Helper()
	if os.Getenv("POPRELAY_NETNS_TEST") == t.Name() {
		for _, args := range [][]string{
			{"link", "set", "lo", "up"},
			{"-6", "route", "add", "local", "2001::/16", "dev", "lo", "table", "local"},
			{"-6", "route", "add", "local", "fd00::/8", "dev", "lo", "table", "local"},
		} {
			if out, err := exec.Command(need(t, "ip"), args...).CombinedOutput(); err != nil {
				t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
			}
		}
		// Bind to any address: every client address is made up.
		if err := os.WriteFile("/proc/sys/net/ipv6/ip_nonlocal_bind", []byte("1\n"), 0); err != nil {
			t.Fatal(err)
		}
		return true
	}
	if os.Getuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("not root: CI must run this test as root")
		}
		t.Skip("SKIP: needs root for a network namespace (unshare -n)")
	}
	need(t, "ip")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(t.Name(), "/")
	for i, p := range parts {
		parts[i] = "^" + regexp.QuoteMeta(p) + "$"
	}
	cmd := exec.Command(need(t, "unshare"), "-n", "--", self, "-test.v", "-test.count=1", "-test.timeout=10m",
		"-test.run", strings.Join(parts, "/"))
	cmd.Dir, _ = os.Getwd()
	cmd.Env = append(os.Environ(), append(env, "POPRELAY_NETNS_TEST="+t.Name(), "POPRELAY_BIN="+binDir)...)
	out, err := cmd.CombinedOutput()
	for _, l := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
		t.Log("netns: " + l)
	}
	var ee *exec.ExitError
	switch {
	case err != nil && !errors.As(err, &ee):
		t.Fatalf("unshare -n: %v", err)
	case err != nil:
		t.Fatalf("the test failed in its network namespace: %v", err)
	case strings.Contains(string(out), "--- SKIP: "+t.Name()):
		if os.Getenv("CI") != "" {
			t.Fatal("skipped in its network namespace; CI must run it")
		}
		t.Skip("SKIP: skipped in its network namespace (see above)")
	case !strings.Contains(string(out), "--- PASS: "+t.Name()):
		t.Fatal("the test did not run in its network namespace")
	}
	return false
}

// startTcpserver6 runs Debian's IPv6 tcpserver from dir ("tcpserver -v
// [opts] HOST PORT prog..."), bound to host (0 is both families, as
// Debian's default), and waits until it listens.
func startTcpserver6(t testing.TB, dir, host string, env []string, opts []string, prog ...string) *Tcpserver {
	t.Helper()
	return startTcpserverOn(t, filepath.Join(dir, "tcpserver"), host, env, opts, prog...)
}

// hostPort is addr:port with brackets for IPv6.
func hostPort(ip string, port int) string {
	if strings.Contains(ip, ":") {
		return fmt.Sprintf("[%s]:%d", ip, port)
	}
	return fmt.Sprintf("%s:%d", ip, port)
}
