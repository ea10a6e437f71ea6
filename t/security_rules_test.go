package t

import (
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
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
		deadline := time.Now().Add(5 * time.Second)
		for {
			v, err := view(s.cdb, []string{ip})
			if err == nil && v[0] == decision {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: decision %q (%v); want %q", ip, v, err, decision)
			}
			time.Sleep(5 * time.Millisecond)
		}
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
	w.waitLine(t, "has 0 rules where the CDB was built from 3", 5*time.Second)
	login("127.0.0.41")
	want("127.0.0.41", "allow RBLSMTPD= RELAYCLIENT=")
	want("10.0.0.1", "deny")
	want("127.0.0.1", "allow RELAYCLIENT=")

	// SIGHUP confirms it.
	w.cmd.Process.Signal(syscall.SIGHUP)
	w.waitLine(t, "0 rules, confirmed", 5*time.Second)
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
	w.waitLine(t, "was rebuilt by another writer", 5*time.Second)
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
	deadline := time.Now().Add(5 * time.Second)
	for {
		c := 0
		for _, l := range w.snapshot() {
			if strings.Contains(l, s) {
				c++
			}
		}
		if c >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("watch said %q %d times; want %d", s, c, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
