package t

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/poprelay/poprelay/internal/grant"
	"github.com/poprelay/poprelay/internal/wait"
)

// spawn starts a command in its own process group with stdin on
// /dev/null and its output discarded; killed with the group at the end.
func spawn(t *testing.T, env []string, name string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
	})
	return cmd
}

// kill9 kills the command's process group with SIGKILL and reports
// whether the command had already exited by itself, successfully.
func kill9(cmd *exec.Cmd) (finished bool) {
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	err := cmd.Wait()
	return err == nil
}

// checkWhole fails unless the CDB is a whole database with every static
// key and every grant of must.
func checkWhole(t *testing.T, s *relayctlSite, static []string, must map[string]bool, when string) map[string]bool {
	t.Helper()
	ks, err := keys(s.cdb)
	if err != nil {
		t.Fatalf("%s: the CDB is not whole: %v", when, err)
	}
	for _, k := range static {
		if !ks[k] {
			t.Fatalf("%s: static key %q missing from the CDB", when, k)
		}
	}
	for ip := range must {
		if !ks[ip] {
			t.Fatalf("%s: the grant for %s, published before, is missing", when, ip)
		}
	}
	return ks
}

// staticKeys are the keys of bigRules(n, tornTail).
func staticKeys(n int) []string {
	var ks []string
	for _, line := range strings.Split(bigRules(n, tornTail), "\n") {
		if k, _, ok := strings.Cut(line, ":"); ok {
			ks = append(ks, k)
		}
	}
	return ks
}

// TestRobustCrashRebuild kills "relayctl rebuild" with SIGKILL at random
// points of its run (30 times; 300 under make stress), a new grant
// recorded before each: the CDB is always whole, with every static rule
// and every grant it had; the spool keeps every grant; the temp files of
// the killed writers are gone after the next rebuild, which has them all.
func TestRobustCrashRebuild(t *testing.T) {
	runs := sized(30, 300)
	const nStatic = 3000
	s := newRelayctlSite(t, bigRules(nStatic, tornTail))
	static := staticKeys(nStatic)
	for i := range 300 {
		recordAt(t, s.spool, ip4(1, i), fmt.Sprint("old", i)) // one user each: within the per-user cap
	}
	start := time.Now()
	if r := s.run(t, "rebuild"); r.code != 0 {
		t.Fatalf("rebuild: %d %s", r.code, r.stderr)
	}
	took := time.Since(start)
	published := map[string]bool{}
	for i := range 300 {
		published[ip4(1, i)] = true
	}
	recorded := len(published)
	var finished, withDebris int
	for i := range runs {
		ip := ip4(2, i)
		recordAt(t, s.spool, ip, fmt.Sprint("new", i))
		recorded++
		cmd := spawn(t, s.env, bin("relayctl"), "rebuild")
		time.Sleep(rand.N(took * 3 / 2)) // pacing: the kill lands at a random point of the run
		if kill9(cmd) {
			finished++
		}
		if len(s.debris(t)) > 0 {
			withDebris++
		}
		ks := checkWhole(t, s, static, published, "after kill -9 of rebuild")
		if ks[ip] {
			published[ip] = true
		}
	}
	if gs, _ := spoolEntries(t, s.spool); len(gs) != recorded {
		t.Errorf("the spool holds %d grants, %d were recorded", len(gs), recorded)
	}
	if r := s.run(t, "rebuild"); r.code != 0 {
		t.Fatalf("rebuild after the kills: %d %s", r.code, r.stderr)
	}
	if d := s.debris(t); len(d) != 0 {
		t.Errorf("the next rebuild left the debris of the killed ones: %q", d)
	}
	all := map[string]bool{}
	gs, _ := spoolEntries(t, s.spool)
	for ip := range gs {
		all[ip] = true
	}
	checkWhole(t, s, static, all, "after the next rebuild")
	t.Logf("%d rebuilds killed at random within %v (one takes %v): %d had finished, %d left temp files (removed by the next rebuild), %d grants published before the last clean rebuild",
		runs, took*3/2, took.Round(time.Millisecond), finished, withDebris, len(published))
	if withDebris == 0 && !stress() {
		t.Logf("no kill landed mid-write this time")
	}
}

// TestRobustCrashWatch kills "relayctl watch" with SIGKILL at random
// points (20 times; 200 under make stress) while grants arrive: the CDB
// is always whole; the next watch publishes every grant recorded and
// removes the temp files the killed one left; SIGTERM then exits 0.
func TestRobustCrashWatch(t *testing.T) {
	runs := sized(20, 200)
	const nStatic = 3000
	s := newRelayctlSite(t, bigRules(nStatic, tornTail))
	static := staticKeys(nStatic)
	for i := range 200 {
		recordAt(t, s.spool, ip4(5, i), fmt.Sprint("old", i)) // one user each: within the per-user cap
	}
	if r := s.run(t, "rebuild"); r.code != 0 {
		t.Fatalf("rebuild: %d %s", r.code, r.stderr)
	}
	published := map[string]bool{}
	for i := range 200 {
		published[ip4(5, i)] = true
	}
	n, withDebris := 0, 0
	for range runs {
		cmd := spawn(t, s.env, bin("relayctl"), "watch", "--debounce", "1ms", "--max-delay", "5ms")
		deadline := time.Now().Add(rand.N(150 * time.Millisecond))
		for time.Now().Before(deadline) {
			recordAt(t, s.spool, ip4(6, n), fmt.Sprint("new", n))
			n++
			time.Sleep(rand.N(20 * time.Millisecond)) // pacing: logins arrive at random times
		}
		kill9(cmd)
		if len(s.debris(t)) > 0 {
			withDebris++
		}
		ks := checkWhole(t, s, static, published, "after kill -9 of watch")
		for j := range n {
			if ks[ip4(6, j)] {
				published[ip4(6, j)] = true
			}
		}
	}
	// The next watch publishes everything and cleans up.
	w := s.startWatch(t)
	all := map[string]bool{}
	for ip := range published {
		all[ip] = true
	}
	for j := range n {
		all[ip4(6, j)] = true
	}
	var missing int
	var err error
	wait.For(t, "the restarted watch to publish every grant", func() bool {
		var ks map[string]bool
		ks, err = keys(s.cdb)
		missing = 0
		for ip := range all {
			if !ks[ip] {
				missing++
			}
		}
		if err == nil && missing == 0 {
			return true
		}
		t.Logf("the restarted watch has not published %d of %d grants yet (%v)", missing, len(all), err)
		return false
	})
	checkWhole(t, s, static, all, "after the restart")
	if d := s.debris(t); len(d) != 0 {
		t.Errorf("the restarted watch left the temp files of the killed one: %q", d)
	}
	syscall.Kill(w.cmd.Process.Pid, syscall.SIGTERM)
	<-w.done
	if err := w.cmd.Wait(); err != nil {
		t.Errorf("watch after SIGTERM: %v", err)
	}
	t.Logf("%d watches killed at random while %d grants arrived: %d left temp files beside the CDB; the restarted one published all %d grants",
		runs, n, withDebris, len(all))
}

// TestRobustCrashWrap kills checkpassword-wrap with SIGKILL at random
// points of a login (30 times; 300 under make stress): every grant file
// in the spool is whole, no grant recorded before is lost, and what a
// kill leaves is a dot-named temp file that no reader takes for a grant
// and that the cleanup removes once stale (a minute: a younger one may be
// a login in flight). Under make stress the test waits that minute and
// checks that the next "relayctl rebuild" removes them.
func TestRobustCrashWrap(t *testing.T) {
	runs := sized(30, 300)
	s := newRelayctlSite(t, tornTail)
	// How long a login takes here.
	start := time.Now()
	r := runCmd(t, append(s.env[:len(s.env):len(s.env)], "TCPREMOTEIP="+ip4(7, 0), "USER=first"), "", wait.Patience, bin("checkpassword-wrap"), "/bin/true")
	if r.code != 0 {
		t.Fatalf("wrapper: %d %s", r.code, r.stderr)
	}
	took := time.Since(start)
	recorded := map[string]bool{ip4(7, 0): true}
	finished := 0
	for i := 1; i <= runs; i++ {
		ip := ip4(7, i)
		env := append(s.env[:len(s.env):len(s.env)], "TCPREMOTEIP="+ip, "USER=u"+ip)
		cmd := spawn(t, env, bin("checkpassword-wrap"), "/bin/true")
		time.Sleep(rand.N(took * 3 / 2)) // pacing: the kill lands at a random point of the login
		if kill9(cmd) {
			finished++
		}
		gs, other := spoolEntries(t, s.spool)
		for ip := range recorded {
			if _, ok := gs[ip]; !ok {
				t.Fatalf("kill -9 of a login lost the grant for %s", ip)
			}
		}
		if g, ok := gs[ip]; ok {
			if g.User != "u"+ip {
				t.Errorf("%s: grant %+v", ip, g)
			}
			recorded[ip] = true
		}
		for _, name := range other {
			if !strings.HasPrefix(name, ".tmp-") {
				t.Errorf("kill -9 of a login left %q in the spool", name)
			}
		}
	}
	gs, debris := spoolEntries(t, s.spool)
	if len(gs) != len(recorded) {
		t.Errorf("%d grants, %d recorded", len(gs), len(recorded))
	}
	// The grants recorded are published.
	if r := s.run(t, "rebuild"); r.code != 0 {
		t.Fatalf("rebuild: %d %s", r.code, r.stderr)
	}
	for ip := range recorded {
		if !relays(t, s.cdb, ip) {
			t.Errorf("%s was recorded and does not relay after a rebuild", ip)
		}
	}
	t.Logf("%d logins killed at random within %v (one takes %v): %d had finished, %d grants recorded, %d temp files left",
		runs, took*3/2, took.Round(time.Microsecond), finished, len(recorded), len(debris))
	if stress() && len(debris) > 0 {
		// The real thing: once the temp files are a minute old (by
		// their inode change time, which no one can set back), the
		// next rebuild removes them.
		t.Logf("waiting for the temp files to go stale (a minute)")
		wait.For(t, "the temp files to be a minute old", func() bool {
			for _, name := range debris {
				var st syscall.Stat_t
				if err := syscall.Stat(filepath.Join(s.spool, name), &st); err == nil && time.Since(time.Unix(st.Ctim.Unix())) <= time.Minute+time.Second {
					return false
				}
			}
			return true
		})
		if r := s.run(t, "rebuild"); r.code != 0 {
			t.Fatalf("rebuild: %d %s", r.code, r.stderr)
		}
	} else {
		// What the next run does a minute later, with its clock.
		if err := grant.New(s.spool).Clean(time.Now().Add(2 * time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	after, other := spoolEntries(t, s.spool)
	if len(other) != 0 || len(after) != len(recorded) {
		t.Errorf("after the cleanup: %d grants (want %d), other entries %q", len(after), len(recorded), other)
	}
}

// TestRobustCrashFold kills "relayctl expire" with SIGKILL at random
// points (30 times; 300 under make stress) while it folds the spool:
// each round records new logins and one expired grant, so every expire
// folds every grant file, drops the expired one and removes the files.
// After each kill every live grant recorded is still there, as recorded,
// whatever step the fold had reached; the next expire finishes the job:
// the spool holds the folded file alone, and the CDB equals a fresh
// rebuild.
func TestRobustCrashFold(t *testing.T) {
	runs := sized(30, 300)
	s := newRelayctlSite(t, tornTail)
	want := map[string]string{}
	for i := range 300 {
		ip := ip4(8, i)
		recordAt(t, s.spool, ip, "old"+ip)
		want[ip] = "old" + ip
	}
	old := func(ip string) {
		t.Helper()
		err := grant.New(s.spool).Record(grant.Grant{IP: ip, User: "expired", Service: "pop3", Time: time.Now().Add(-3 * time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
	}
	round := func(i int) {
		for j := range 10 {
			ip := ip4(10+i%100, j)
			user := fmt.Sprintf("u%d-%d", i, j)
			recordAt(t, s.spool, ip, user)
			want[ip] = user
		}
		old(ip4(9, i+1))
	}
	old(ip4(9, 0))
	if r := s.run(t, "expire"); r.code != 0 {
		t.Fatalf("expire: %d %s", r.code, r.stderr)
	}
	// How long a round's expire takes here.
	round(runs)
	start := time.Now()
	if r := s.run(t, "expire"); r.code != 0 {
		t.Fatalf("expire: %d %s", r.code, r.stderr)
	}
	took := time.Since(start)
	check := func(when string) {
		t.Helper()
		gs, _ := spoolEntries(t, s.spool)
		for ip, user := range want {
			if g, ok := gs[ip]; !ok || g.User != user {
				t.Fatalf("%s: the grant for %s (user %s) is %+v, %v", when, ip, user, g, ok)
			}
		}
	}
	check("after the first fold")
	finished := 0
	for i := range runs {
		round(i)
		cmd := spawn(t, s.env, bin("relayctl"), "expire")
		time.Sleep(rand.N(took * 3 / 2)) // pacing: the kill lands at a random point of the run
		if kill9(cmd) {
			finished++
		}
		check(fmt.Sprintf("after kill -9 of expire %d", i))
	}
	old(ip4(9, runs+5)) // so that it folds
	if r := s.run(t, "expire"); r.code != 0 {
		t.Fatalf("expire after the kills: %d %s", r.code, r.stderr)
	}
	check("after the next expire")
	gs, other := spoolEntries(t, s.spool)
	if len(gs) != len(want) || len(other) != 0 {
		t.Errorf("the spool holds %d grants (want %d) and %q", len(gs), len(want), other)
	}
	if ents, _ := os.ReadDir(s.spool); len(ents) != 1 {
		t.Errorf("the spool after the next expire: %d entries, want the folded file alone", len(ents))
	}
	fresh := filepath.Join(s.dir, "fresh.cdb")
	if r := s.run(t, "rebuild", "--cdb", fresh); r.code != 0 {
		t.Fatal(r.stderr)
	}
	a, _ := os.ReadFile(fresh)
	if !bytes.Equal(a, s.mustCDB(t)) {
		t.Error("the CDB after the kills differs from a fresh rebuild")
	}
	t.Logf("%d expires killed at random within %v (one takes %v): %d had finished", runs, took*3/2, took.Round(time.Millisecond), finished)
}
