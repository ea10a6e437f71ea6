package t

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
)

// TestSecurityNetns performs the attack of issue 26, item 1, for real, as
// nobody: in a user and network namespace of its own (unshare -Urn, no
// privilege) testdata/netnsforge puts the victim's address on lo, listens
// on port 110 there, connects from the victim's address, accepts and
// passes the accepted socket (SCM_RIGHTS) to itself in the original
// namespaces, which runs the setgid wrapper with it as standard input and
// TCPREMOTEIP set to the victim. The socket's local port is 110 and its
// peer the victim, so every check but the namespace's passes: the wrapper
// refuses with one stderr line naming the other network namespace, the
// next program runs, and the spool stays empty. IPv4 and IPv6.
func TestSecurityNetns(t *testing.T) {
	needRoot(t, "the test installs a setgid wrapper and runs it as nobody")
	unshare, ip := need(t, "unshare"), need(t, "ip")
	forge := filepath.Join(installSetgidWrap(t).dir, "netnsforge")
	if out, err := exec.Command("go", "build", "-trimpath", "-o", forge, "./testdata/netnsforge").CombinedOutput(); err != nil {
		t.Fatalf("building testdata/netnsforge: %v\n%s", err, out)
	}
	os.Chmod(forge, 0o755)

	// Addresses the wrapper would grant (not loopback, multicast, this
	// host's own or link-local), nowhere on this host.
	for _, victim := range []string{"192.0.2.77", "2001:db8::77"} {
		t.Run(victim, func(t *testing.T) {
			w := installSetgidWrap(t)
			c := exec.Command(forge, unshare, ip, victim, w.wrap, w.spool)
			c.Env = baseEnv("TCPREMOTEIP="+victim, "USER=mallory")
			c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}}
			var out, errb strings.Builder
			c.Stdout, c.Stderr = &out, &errb
			err := c.Run()
			if err != nil {
				t.Fatalf("netnsforge: %v\nstdout %q\nstderr %q", err, out.String(), errb.String())
			}
			// The forged socket is what the attack says it is: accepted
			// on port 110 from the victim, of another namespace.
			m := regexp.MustCompile(`^netnsforge: local (\S+) peer (\S+) netns (\d+), this process's netns (\d+)\n`).FindStringSubmatch(out.String())
			if m == nil {
				t.Fatalf("netnsforge said %q", out.String())
			}
			if peer, _, _ := net.SplitHostPort(m[2]); m[1] != hostPort(victim, 110) || peer != victim || m[3] == m[4] {
				t.Fatalf("the forged socket is not the attack's: %s", m[0])
			}
			t.Log(strings.TrimSpace(m[0]))
			if rest := out.String()[len(m[0]):]; rest != "next ran\n" {
				t.Errorf("the next program did not run: stdout after the socket's line %q", rest)
			}
			want := fmt.Sprintf("checkpassword-wrap: warning: not recording ip=%s user=mallory service=pop3: standard input is a connection of another network namespace (in one of their own, made with unshare -Urn, users may listen on any port), and uid 65534 is neither root nor in group %d\n", victim, w.gid)
			if errb.String() != want {
				t.Errorf("stderr %q\nwant   %q", errb.String(), want)
			}
			if got := w.spoolHas(); len(got) != 0 {
				t.Errorf("a grant was forged for %s: the spool holds %q", victim, got)
				for _, name := range got {
					b, _ := os.ReadFile(filepath.Join(w.spool, name))
					t.Logf("%s: %q", name, b)
				}
			}
		})
	}
}
