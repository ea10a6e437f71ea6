package t

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestRobustConcurrent runs many relayctl allow, revoke, rebuild and
// expire processes and wrapper logins at once (6 workers of 12 steps; 16
// of 40 under make stress), over a spool holding expired grants: no update
// is lost (the spool ends with exactly the grants allowed or logged in and
// not revoked, the expired ones gone), and after one more expire (cron's
// run, which publishes the last logins) the final CDB is byte for byte
// what a fresh rebuild of the final spool writes.
func TestRobustConcurrent(t *testing.T) {
	workers, steps := sized(6, 16), sized(12, 40)
	s := newRelayctlSite(t, bigRules(300, tornTail))
	for i := range 20 {
		os.WriteFile(filepath.Join(s.spool, ip4(11, i)), []byte("user=old\nservice=pop3\ntime=1000\n"), 0o640)
	}
	if r := s.run(t, "rebuild"); r.code != 0 {
		t.Fatal(r.stderr)
	}
	var mu sync.Mutex
	want := map[string]bool{}
	revoked := map[string]bool{}
	var fails []string
	fail := func(format string, args ...any) {
		mu.Lock()
		fails = append(fails, fmt.Sprintf(format, args...))
		mu.Unlock()
	}
	var procs atomic.Int64
	relayctl := func(args ...string) {
		procs.Add(1)
		cmd := exec.Command(bin("relayctl"), args...)
		cmd.Env = s.env
		if out, err := cmd.CombinedOutput(); err != nil {
			fail("relayctl %q: %v: %s", args, err, out)
		}
	}
	start := time.Now()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range steps {
				ip := ip4(12+w, i)
				user := fmt.Sprint("w", w)
				switch i % 4 {
				case 0:
					relayctl("allow", ip, "--user", user)
					mu.Lock()
					want[ip] = true
					mu.Unlock()
				case 1:
					// A login; the next expire or rebuild publishes it.
					procs.Add(1)
					cmd := exec.Command(bin("checkpassword-wrap"), "/bin/true")
					cmd.Env = append(slices.Clone(s.env), "TCPREMOTEIP="+ip, "USER="+user)
					out, err := cmd.CombinedOutput()
					if err != nil || !strings.Contains(string(out), "checkpassword-wrap: ip="+ip+" ") {
						fail("login from %s: %v: %s", ip, err, out)
					}
					mu.Lock()
					want[ip] = true
					mu.Unlock()
				case 2:
					relayctl("allow", ip, "--user", user)
					relayctl("revoke", ip)
					mu.Lock()
					revoked[ip] = true
					mu.Unlock()
				case 3:
					relayctl("rebuild")
					relayctl("expire")
				}
			}
		})
	}
	wg.Wait()
	waitGone(t, "POPRELAY_CDB="+s.cdb)
	took := time.Since(start)
	relayctl("expire")
	for _, f := range fails {
		t.Error(f)
	}

	gs, other := spoolEntries(t, s.spool)
	var got, exp []string
	for ip := range gs {
		got = append(got, ip)
	}
	for ip := range want {
		exp = append(exp, ip)
	}
	sort.Strings(got)
	sort.Strings(exp)
	if !slices.Equal(got, exp) || len(other) != 0 {
		t.Errorf("lost or stray updates: the spool holds %d grants %q and %q; want %d %q", len(got), got, other, len(exp), exp)
	}

	final := s.mustCDB(t)
	fresh := filepath.Join(s.dir, "fresh.cdb")
	if r := s.run(t, "rebuild", "--cdb", fresh); r.code != 0 {
		t.Fatal(r.stderr)
	}
	if b, _ := os.ReadFile(fresh); !bytes.Equal(final, b) {
		t.Errorf("the final CDB (%d bytes) differs from a fresh rebuild of the final spool (%d bytes)", len(final), len(b))
	}
	for ip := range want {
		if !relays(t, s.cdb, ip) {
			t.Errorf("%s does not relay", ip)
		}
	}
	for ip := range revoked {
		if relays(t, s.cdb, ip) {
			t.Errorf("%s was revoked and relays", ip)
		}
	}
	for i := range 20 {
		if relays(t, s.cdb, ip4(11, i)) {
			t.Errorf("the expired %s relays", ip4(11, i))
		}
	}
	if d := s.debris(t); len(d) != 0 {
		t.Errorf("temp files left: %q", d)
	}
	t.Logf("%d workers × %d steps (%d processes) in %v: %d grants, final CDB == fresh rebuild",
		workers, steps, procs.Load(), took.Round(time.Millisecond), len(got))
}
