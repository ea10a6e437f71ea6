package t

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/poprelay/poprelay/internal/grant"
)

// TestWrapConcurrentLogins: 1000 logins at once, each a checkpassword-wrap
// process: 600 from different addresses, 400 from the same two. Every
// address is recorded, no temp file is left, no entry is damaged, and every
// next program ran.
func TestWrapConcurrentLogins(t *testing.T) {
	spool := t.TempDir()
	ran := filepath.Join(t.TempDir(), "ran")
	os.Mkdir(ran, 0o755)
	want := map[string]bool{}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failures []string
	sem := make(chan struct{}, 200) // processes alive at once
	for i := range 1000 {
		ip := fmt.Sprintf("127.1.%d.%d", i/200, i%200+1)
		switch {
		case i%5 == 1:
			ip = "127.0.0.50"
		case i%5 == 3:
			ip = "::ffff:127.0.0.51"
		}
		c, _ := grant.CanonicalIP(ip)
		want[c] = true
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			cmd := exec.Command(bin("checkpassword-wrap"), "--spool", spool, "/bin/sh", "-c", `: > "$0/$1"`, ran, fmt.Sprint(i))
			cmd.Env = baseEnv("TCPREMOTEIP="+ip, fmt.Sprintf("USER=user%d", i))
			out, err := cmd.CombinedOutput()
			if err != nil || !strings.HasPrefix(string(out), "checkpassword-wrap: ip="+c+" ") {
				mu.Lock()
				failures = append(failures, fmt.Sprintf("login %d from %s: %v %q", i, ip, err, out))
				mu.Unlock()
			}
		})
	}
	start := time.Now()
	wg.Wait()
	t.Logf("1000 logins in %v", time.Since(start))
	for _, f := range failures {
		t.Error(f)
	}
	var logs []string
	s := grant.New(spool)
	s.Logf = func(format string, args ...any) { logs = append(logs, fmt.Sprintf(format, args...)) }
	gs, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(gs) != len(want) {
		t.Errorf("%d grants, want %d", len(gs), len(want))
	}
	for _, g := range gs {
		if !want[g.IP] || !strings.HasPrefix(g.User, "user") || g.Service != "pop3" {
			t.Errorf("unexpected grant %+v", g)
		}
	}
	ents, _ := os.ReadDir(spool)
	if len(ents) != len(want) {
		t.Errorf("%d entries in the spool for %d grants: temp files left?", len(ents), len(want))
	}
	if len(logs) != 0 {
		t.Errorf("damaged entries: %q", logs)
	}
	if r, _ := os.ReadDir(ran); len(r) != 1000 {
		t.Errorf("the next program ran %d times, want 1000", len(r))
	}
}
