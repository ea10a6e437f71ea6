package t

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// importStanding gives the site n standing grants (10.0.0.0 on), as a
// site has them: in the folded file, taken over from vpopmail's
// open-smtp by relayctl import, which also rebuilds the CDB.
func importStanding(t *testing.T, s *relayctlSite, n int) {
	t.Helper()
	open := filepath.Join(s.dir, "open-smtp")
	writeOpenSMTPTo(t, open, n, func(i int) string { return fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255) })
	s.relayctl(t, "import", "--vpopmail", open)
}

// burnCPUs keeps every CPU busy with shell loops (other processes, as
// other work on a saturated machine) until the test ends.
func burnCPUs(t testing.TB) {
	t.Helper()
	for range runtime.NumCPU() {
		start(t, baseEnv(), false, "/bin/sh", "-c", "while :; do :; done")
	}
}

// rebuiltGrants parses the grant count of a watcher's "rebuilt: REASON: N
// grants in ..." line.
func rebuiltGrants(line, reason string) (int, bool) {
	rest, ok := strings.CutPrefix(strings.TrimPrefix(line, "relayctl: "), "rebuilt: "+reason+": ")
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(strings.Fields(rest)[0])
	return n, err == nil
}

// TestWatchStorm: with 100,000 standing grants, a login storm that never
// pauses (a real checkpassword-wrap process per login, launched 100 a
// second whatever the machine does), and shell loops keeping every CPU
// busy at the watcher's own priority, the watcher keeps publishing while
// the storm lasts: at least one publish per 50 logins, counted from its
// log, not timed. A watcher whose publishes cost a full merge of every
// grant (or one that waits for a quiet moment) falls behind here: the one
// before the incremental merge published 7 times in this storm (43 now),
// on a 2-core machine at load 17.
func TestWatchStorm(t *testing.T) {
	const standing, logins, per = 100_000, 1000, 50
	s := newRelayctlSite(t, "127.0.0.1:allow,RELAYCLIENT=\"\"\n10.:allow\n:deny\n")
	// 101,000 grants in the end: over the default total cap.
	s.env = append(s.env, "POPRELAY_MAXGRANTS=200000")
	importStanding(t, s, standing)
	w := s.startWatch(t, "--max-delay", "50ms")
	burnCPUs(t)

	var wg sync.WaitGroup
	var mu sync.Mutex
	var failed []string
	tick := time.NewTicker(10 * time.Millisecond)
	for i := range logins {
		<-tick.C
		cmd := exec.Command(bin("checkpassword-wrap"), "--spool", s.spool, "/bin/true")
		cmd.Env = baseEnv(fmt.Sprintf("TCPREMOTEIP=172.16.%d.%d", i>>8, i&255), fmt.Sprint("USER=storm", i), "POPRELAY_NEVER=") // a user each: within the per-user cap
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := cmd.Wait(); err != nil || !strings.Contains(stderr.String(), "ip=") {
				mu.Lock()
				failed = append(failed, fmt.Sprintf("%v %s", err, stderr.String()))
				mu.Unlock()
			}
		}()
	}
	tick.Stop()
	// The publishes the storm saw: those logged before its last login.
	w.mu.Lock()
	during := 0
	for _, l := range w.lines {
		if _, ok := rebuiltGrants(l, "change"); ok {
			during++
		}
	}
	w.mu.Unlock()
	wg.Wait()
	for _, f := range failed {
		t.Errorf("a login failed: %s", f)
	}
	// Every login is published in the end.
	w.waitLine(t, fmt.Sprintf("%d grants", standing+logins))
	t.Logf("%d logins with %d standing grants: %d publishes during the storm (%d CPUs busy)", logins, standing, during, runtime.NumCPU())
	if during < logins/per {
		t.Errorf("%d publishes during a storm of %d logins; want at least one per %d logins (%d)", during, logins, per, logins/per)
	}
}
