package t

import (
	"bytes"
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
// caught between an editor's truncate and rewrite, and neither does any
// other automatic writer. `: > rules` while it runs is held back with a
// warning: logins still open relaying, with the static rules (a
// 10.:deny, 127.0.0.1's RELAYCLIENT) in the CDB. Cron's relayctl expire,
// publishing a login the watcher has not (the watcher stopped meanwhile),
// holds it back too, says so, and its CDB confirms nothing to the
// watcher. Only relayctl rebuild, or SIGHUP, confirms the empty file; a
// later expire then takes it as it is.
func TestSecurityRulesMidWrite(t *testing.T) {
	const static = "10.:deny\n127.0.0.1:allow,RELAYCLIENT=\"\"\n:allow\n"
	s := newRelayctlSite(t, static)
	w := s.startWatch(t)
	want := s.wantDecision(t)
	now := s.nowDecision(t)
	login := s.login(t)
	truncate := s.truncate(t)
	want("10.0.0.1", "deny")
	want("127.0.0.1", "allow RELAYCLIENT=")

	truncate()
	w.waitLine(t, "has 0 rules where the CDB was built from 3")
	login("127.0.0.41")
	want("127.0.0.41", "allow RBLSMTPD= RELAYCLIENT=")
	now("10.0.0.1", "deny")
	now("127.0.0.1", "allow RELAYCLIENT=")

	// Cron's expire while the watcher is busy (stopped): it publishes
	// the login the watcher has not, with the rules held back.
	expire := func(ip string, held bool) {
		t.Helper()
		w.stopIdle(t, s.cdb+".lock")
		defer w.cmd.Process.Signal(syscall.SIGCONT)
		login(ip)
		r := s.run(t, "expire")
		if r.code != 0 {
			t.Fatalf("relayctl expire: exit %d: %s", r.code, r.stderr)
		}
		t.Logf("relayctl expire: %s", r.stderr)
		now(ip, "allow RBLSMTPD= RELAYCLIENT=")
		said := strings.Contains(r.stderr, "has 0 rules where the CDB was built from 3: held back") &&
			strings.Contains(r.stderr, "run relayctl rebuild to publish "+s.rules+" as it is")
		if said != held {
			t.Errorf("relayctl expire said %q; want a held-back warning: %v", r.stderr, held)
		}
	}
	expire("127.0.0.42", true)
	now("10.0.0.1", "deny")
	now("127.0.0.1", "allow RELAYCLIENT=")
	// The watcher, going on, takes expire's CDB for no confirmation.
	login("127.0.0.43")
	want("127.0.0.43", "allow RBLSMTPD= RELAYCLIENT=")
	now("10.0.0.1", "deny")
	now("127.0.0.1", "allow RELAYCLIENT=")
	now("127.0.0.42", "allow RBLSMTPD= RELAYCLIENT=")
	// Nothing to publish: expire is silent.
	if r := s.run(t, "expire"); r.code != 0 || r.stderr != "" {
		t.Errorf("relayctl expire with nothing to do: exit %d, %q", r.code, r.stderr)
	}

	// relayctl rebuild confirms it, for the watcher too.
	s.relayctl(t, "rebuild")
	w.waitLine(t, "0 rules, confirmed by another writer (relayctl rebuild)")
	login("127.0.0.44")
	want("127.0.0.44", "allow RBLSMTPD= RELAYCLIENT=")
	now("10.0.0.1", "allow")
	now("127.0.0.1", "allow")
	now("127.0.0.41", "allow RBLSMTPD= RELAYCLIENT=")
	expire("127.0.0.45", false)
	now("10.0.0.1", "allow")

	// The full file back, then emptied again: SIGHUP confirms it, for
	// expire too.
	if err := os.WriteFile(s.rules, []byte(static), 0o644); err != nil {
		t.Fatal(err)
	}
	want("10.0.0.1", "deny")
	truncate()
	waitCount(t, w, "has 0 rules where the CDB was built from 3", 2)
	expire("127.0.0.46", true)
	now("10.0.0.1", "deny")
	w.cmd.Process.Signal(syscall.SIGHUP)
	w.waitLine(t, "0 rules, confirmed")
	want("10.0.0.1", "allow")
	now("127.0.0.1", "allow")
	now("127.0.0.46", "allow RBLSMTPD= RELAYCLIENT=")
	expire("127.0.0.47", false)
	now("10.0.0.1", "allow")
}

// TestSecurityRulesHeldCron: without a watcher, cron's relayctl expire
// (and allow, revoke) hold back a rules file that became empty against
// the rules last confirmed, kept beside the CDB as CDB.rules: each
// publish keeps the static rules, with the grants, and says so; only
// relayctl rebuild takes it as it is. A rules file that does not parse
// still stops them with FILE:LINE, the CDB unchanged. With no CDB.rules
// (an install of a release that kept none), the file is taken as it is
// and saved.
func TestSecurityRulesHeldCron(t *testing.T) {
	const static = "10.:deny\n127.0.0.1:allow,RELAYCLIENT=\"\"\n:allow\n"
	s := newRelayctlSite(t, static)
	now := s.nowDecision(t)
	login := s.login(t)
	truncate := s.truncate(t)
	copyPath := s.cdb + ".rules"
	s.relayctl(t, "rebuild")
	if fi, err := os.Lstat(copyPath); err != nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("%s after rebuild: %v", copyPath, err)
	}
	held := func(args ...string) {
		t.Helper()
		r := s.run(t, args...)
		if r.code != 0 || !strings.Contains(r.stderr, "has 0 rules where the CDB was built from 3: held back") {
			t.Errorf("relayctl %s: exit %d, %q; want a held-back warning", strings.Join(args, " "), r.code, r.stderr)
		}
		now("10.0.0.1", "deny")
		now("127.0.0.1", "allow RELAYCLIENT=")
	}
	truncate()
	login("127.0.0.41")
	held("expire")
	now("127.0.0.41", "allow RBLSMTPD= RELAYCLIENT=")
	before := s.mustCDB(t)
	if r := s.run(t, "expire"); r.code != 0 || r.stderr != "" || !bytes.Equal(before, s.mustCDB(t)) {
		t.Errorf("relayctl expire with nothing to do: exit %d, %q, CDB changed: %v", r.code, r.stderr, !bytes.Equal(before, s.mustCDB(t)))
	}
	held("allow", "127.0.0.45")
	now("127.0.0.45", "allow RBLSMTPD= RELAYCLIENT=")
	held("revoke", "127.0.0.45")
	now("127.0.0.45", "allow")

	// Bad rules: as ever, exit 100 naming FILE:LINE, CDB unchanged.
	if err := os.WriteFile(s.rules, []byte("10.0.0.1:bogus\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	login("127.0.0.46")
	before = s.mustCDB(t)
	if r := s.run(t, "expire"); r.code != 100 || !strings.Contains(r.stderr, s.rules+":1: unable to parse") || !bytes.Equal(before, s.mustCDB(t)) {
		t.Errorf("relayctl expire with bad rules: exit %d, %q, CDB changed: %v", r.code, r.stderr, !bytes.Equal(before, s.mustCDB(t)))
	}

	// relayctl rebuild confirms the empty file; expire then takes it.
	truncate()
	s.relayctl(t, "rebuild")
	now("10.0.0.1", "allow")
	now("127.0.0.41", "allow RBLSMTPD= RELAYCLIENT=")
	now("127.0.0.46", "allow RBLSMTPD= RELAYCLIENT=")
	login("127.0.0.47")
	if r := s.run(t, "expire"); r.code != 0 || r.stderr != "" {
		t.Errorf("relayctl expire after rebuild: exit %d, %q", r.code, r.stderr)
	}
	now("127.0.0.47", "allow RBLSMTPD= RELAYCLIENT=")
	now("10.0.0.1", "allow")

	// No CDB.rules yet (the previous release): the rules as they are
	// are taken, and saved; emptied after that, they are held back.
	if err := os.Remove(copyPath); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.rules, []byte(static), 0o644); err != nil {
		t.Fatal(err)
	}
	login("127.0.0.48")
	if r := s.run(t, "expire"); r.code != 0 || r.stderr != "" {
		t.Errorf("relayctl expire, first run: exit %d, %q", r.code, r.stderr)
	}
	now("10.0.0.1", "deny")
	if _, err := os.Lstat(copyPath); err != nil {
		t.Errorf("the first expire saved no %s: %v", copyPath, err)
	}
	truncate()
	login("127.0.0.49")
	held("expire")
	now("127.0.0.49", "allow RBLSMTPD= RELAYCLIENT=")
}

// wantDecision waits until the site's CDB gives ip decision.
func (s *relayctlSite) wantDecision(t *testing.T) func(ip, decision string) {
	return func(ip, decision string) {
		t.Helper()
		wait.Succeeds(t, ip+"'s decision "+strconv.Quote(decision), func() error {
			v, err := view(s.cdb, []string{ip})
			if err == nil && v[0] != decision {
				err = fmt.Errorf("decision %q", v)
			}
			return err
		})
	}
}

// nowDecision checks that the site's CDB gives ip decision now.
func (s *relayctlSite) nowDecision(t *testing.T) func(ip, decision string) {
	return func(ip, decision string) {
		t.Helper()
		v, err := view(s.cdb, []string{ip})
		if err != nil {
			t.Fatal(err)
		}
		if v[0] != decision {
			t.Errorf("%s's decision is %q, want %q", ip, v[0], decision)
		}
	}
}

// login records a grant for ip through the wrapper, as a login would.
func (s *relayctlSite) login(t *testing.T) func(ip string) {
	return func(ip string) {
		t.Helper()
		c := exec.Command(bin("checkpassword-wrap"), "--spool", s.spool, "/bin/true")
		c.Env = append(baseEnv(), "TCPREMOTEIP="+ip, "USER=alice")
		if out, err := c.CombinedOutput(); err != nil {
			t.Fatalf("checkpassword-wrap: %v: %s", err, out)
		}
	}
}

// truncate empties the site's rules file in place, as `: > rules` does.
func (s *relayctlSite) truncate(t *testing.T) func() {
	return func() {
		t.Helper()
		f, err := os.OpenFile(s.rules, os.O_WRONLY|os.O_TRUNC, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
}

// stopIdle stops the watcher (SIGSTOP) at a moment it does not hold the
// lock, so a relayctl command run meanwhile is not kept waiting.
func (w *watcher) stopIdle(t *testing.T, lock string) {
	t.Helper()
	wait.For(t, "the watcher stopped without the lock", func() bool {
		w.cmd.Process.Signal(syscall.SIGSTOP)
		f, err := os.Open(lock)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
			w.cmd.Process.Signal(syscall.SIGCONT)
			return false
		}
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		return true
	})
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
