package t

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/poprelay/poprelay/internal/wait"
)

// TestSecurityRulesMidWrite: "relayctl watch" never publishes a rules file
// caught between an editor's truncate and rewrite. `: > rules` while it
// runs is held back with a warning: logins still open relaying, with the
// static rules (a 10.:deny, 127.0.0.1's RELAYCLIENT) in the CDB. SIGHUP
// confirms the empty file; so does "relayctl rebuild" the next time.
func TestSecurityRulesMidWrite(t *testing.T) {
	const static = "10.:deny\n127.0.0.1:allow,RELAYCLIENT=\"\"\n:allow\n"
	s := newRelayctlSite(t, static)
	w := s.startWatch(t)
	want := func(ip, decision string) {
		t.Helper()
		wait.Succeeds(t, ip+"'s decision "+strconv.Quote(decision), func() error {
			v, err := view(s.cdb, []string{ip})
			if err == nil && v[0] != decision {
				err = fmt.Errorf("decision %q", v)
			}
			return err
		})
	}
	login := func(ip string) {
		t.Helper()
		c := exec.Command(bin("checkpassword-wrap"), "--spool", s.spool, "/bin/true")
		c.Env = append(baseEnv(), "TCPREMOTEIP="+ip, "USER=alice")
		if out, err := c.CombinedOutput(); err != nil {
			t.Fatalf("checkpassword-wrap: %v: %s", err, out)
		}
	}
	truncate := func() {
		t.Helper()
		f, err := os.OpenFile(s.rules, os.O_WRONLY|os.O_TRUNC, 0) // : > rules
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	want("10.0.0.1", "deny")
	want("127.0.0.1", "allow RELAYCLIENT=")

	truncate()
	w.waitLine(t, "has 0 rules where the CDB was built from 3")
	login("127.0.0.41")
	want("127.0.0.41", "allow RBLSMTPD= RELAYCLIENT=")
	want("10.0.0.1", "deny")
	want("127.0.0.1", "allow RELAYCLIENT=")

	// SIGHUP confirms it.
	w.cmd.Process.Signal(syscall.SIGHUP)
	w.waitLine(t, "0 rules, confirmed")
	want("10.0.0.1", "allow")
	want("127.0.0.1", "allow")
	want("127.0.0.41", "allow RBLSMTPD= RELAYCLIENT=")

	// The full file back, then emptied again: relayctl rebuild confirms.
	if err := os.WriteFile(s.rules, []byte(static), 0o644); err != nil {
		t.Fatal(err)
	}
	want("10.0.0.1", "deny")
	truncate()
	waitCount(t, w, "has 0 rules where the CDB was built from 3", 2)
	s.relayctl(t, "rebuild")
	w.waitLine(t, "was rebuilt by another writer")
	login("127.0.0.42")
	want("127.0.0.42", "allow RBLSMTPD= RELAYCLIENT=")
	want("10.0.0.1", "allow")
}

// snapshot returns the watcher's stderr lines so far.
func (w *watcher) snapshot() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.lines...)
}

// waitCount waits until n stderr lines of the watcher contain s.
func waitCount(t *testing.T, w *watcher, s string, n int) {
	t.Helper()
	wait.For(t, fmt.Sprintf("watch to say %q %d times", s, n), func() bool {
		c := 0
		for _, l := range w.snapshot() {
			if strings.Contains(l, s) {
				c++
			}
		}
		return c >= n
	})
}
