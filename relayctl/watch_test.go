package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/poprelay/poprelay/internal/atomic"
	"github.com/poprelay/poprelay/internal/cdb"
	"github.com/poprelay/poprelay/internal/grant"
	"github.com/poprelay/poprelay/internal/wait"
)

// startWatch runs relayctl watch for f in this process until the test
// ends.
func startWatch(t *testing.T, f *fixture, extra map[string]string) {
	t.Helper()
	var errb bytes.Buffer
	e := &env{stdin: strings.NewReader(""), stdout: io.Discard, stderr: &syncWriter{w: &errb},
		lookup: func(k string) (string, bool) {
			if v, ok := extra[k]; ok {
				return v, true
			}
			v, ok := f.env[k]
			return v, ok
		},
		now: time.Now,
	}
	stop := runWatchEnv(t, e)
	t.Cleanup(func() {
		stop()
		if s := errb.String(); strings.Contains(s, "fatal") {
			t.Errorf("watch said: %s", s)
		}
		if _, err := os.Lstat(atomic.SpareName(f.db)); err == nil {
			t.Errorf("%s left after the watcher stopped", atomic.SpareName(f.db))
		}
	})
}

// runWatchEnv resolves e's settings and runs relayctl watch with them in
// this process, with the short debounce, delay and settle times of these
// tests, until stop: stop ends it and fails the test if it returned an
// error.
func runWatchEnv(t *testing.T, e *env) (stop func()) {
	t.Helper()
	e.cfg = newConfig(flag.NewFlagSet("relayctl watch", flag.ContinueOnError))
	if err := e.cfg.resolve(e.lookup); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- e.watch(ctx, watchOptions{debounce: 2 * time.Millisecond, maxDelay: 20 * time.Millisecond,
			rescan: time.Hour, settle: 10 * time.Millisecond, hup: make(chan os.Signal)})
	}()
	return func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("watch: %v", err)
		}
	}
}

// TestWatchMatchesRebuild: through hundreds of random logins, refreshes,
// admin grants, revokes and never-grant edits, the CDB the watcher keeps
// current (incrementally) becomes, after each batch, byte for byte the CDB
// relayctl rebuild writes from scratch for the same spool and rules.
func TestWatchMatchesRebuild(t *testing.T) {
	f := newFixture(t)
	neverFile := filepath.Join(f.dir, "never")
	f.write(neverFile, "203.0.113.9\n")
	f.env["POPRELAY_NEVER"] = neverFile
	for _, k := range []string{"POPRELAY_REMOTEINFO"} {
		f.env[k] = "1"
	}
	store := grant.New(f.spool)
	rng := rand.New(rand.NewPCG(3, 4))
	ips := []string{"192.0.2.7", "192.0.2.66", "198.51.100.4", "203.0.113.9", "127.0.0.1", "2001:db8::7", "2001:db8::1:0:0:9"}
	for i := range 60 {
		ips = append(ips, fmt.Sprintf("10.%d.%d.%d", i%3, i%5, i))
	}
	for _, ip := range ips[:20] {
		store.Record(grant.Grant{IP: ip, User: "before", Service: "pop3", Time: time.Now().Add(-time.Minute)})
	}
	f.run("rebuild")
	startWatch(t, f, nil)
	fresh := filepath.Join(f.dir, "fresh.cdb")
	for batch := range 25 {
		for range 1 + rng.IntN(12) {
			ip := ips[rng.IntN(len(ips))]
			switch rng.IntN(7) {
			case 0, 1, 2:
				age := time.Duration(rng.IntN(1800)) * time.Second
				if err := store.Record(grant.Grant{IP: ip, User: fmt.Sprintf("user%d", rng.IntN(4)), Service: "imap", Time: time.Now().Add(-age)}); err != nil {
					t.Fatal(err)
				}
			case 3:
				store.Remove(ip)
			case 4:
				store.Record(grant.Grant{IP: ip, User: "admin", Service: "manual", Time: time.Now(), Expires: time.Now().Add(48 * time.Hour)})
			case 5:
				f.write(neverFile, fmt.Sprintf("203.0.113.9\n10.%d.\n", rng.IntN(3)))
			case 6:
				// A grant whose whole life is over: dropped by both.
				store.Record(grant.Grant{IP: ip, User: "old", Service: "pop3", Time: time.Now().Add(-3 * time.Hour)})
			}
		}
		// The watcher reads the never-grant file before each publish:
		// poke it with a login, as the world would.
		store.Record(grant.Grant{IP: "192.0.2.200", User: fmt.Sprint("poke", batch), Service: "pop3"})
		var want, got []byte
		deadline := time.Now().Add(20 * time.Second)
		for {
			code, _, errs := f.run("rebuild", "--cdb", fresh)
			if code != 0 {
				t.Fatalf("rebuild: %d %s", code, errs)
			}
			want, _ = os.ReadFile(fresh)
			got, _ = os.ReadFile(f.db)
			if bytes.Equal(got, want) || time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("batch %d: the watcher's CDB (%d bytes) never became the rebuild's (%d bytes)", batch, len(got), len(want))
		}
	}
}

// syncWriter serializes writes from the watcher's goroutines.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// TestWatchThroughFolds: while other runs fold the spool (expire with an
// expired grant: every grant file goes into the folded file), the
// watcher never publishes a CDB without a standing grant, and ends equal
// to a fresh rebuild. A reader polls the CDB all along.
func TestWatchThroughFolds(t *testing.T) {
	f := newFixture(t)
	store := grant.New(f.spool)
	var standing []string
	for i := range 40 {
		ip := fmt.Sprintf("192.0.2.%d", i+10)
		standing = append(standing, ip)
		store.Record(grant.Grant{IP: ip, User: fmt.Sprintf("stay%d", i), Service: "pop3", Time: time.Now()}) // each within the per-user cap
	}
	f.run("rebuild")
	startWatch(t, f, nil)
	all := func() (bool, error) {
		b, err := os.ReadFile(f.db)
		if err != nil {
			return false, err
		}
		db, err := cdb.Bytes(b)
		if err != nil {
			return false, err
		}
		for _, ip := range standing {
			if _, ok, err := db.Find([]byte(ip)); !ok || err != nil {
				return false, fmt.Errorf("%s missing", ip)
			}
		}
		return true, nil
	}
	stop := make(chan struct{})
	var reads, gaps int
	var gap error
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if ok, err := all(); !ok {
				gaps++
				gap = err
			}
			reads++
		}
	})
	folds := 0
	for round := range 15 {
		for i := range 5 {
			store.Record(grant.Grant{IP: fmt.Sprintf("10.1.%d.%d", round, i), User: "churn", Service: "imap", Time: time.Now()})
		}
		// An expired grant: expire folds every grant file without it.
		store.Record(grant.Grant{IP: fmt.Sprintf("10.2.0.%d", round), User: "old", Service: "pop3", Time: time.Now().Add(-3 * time.Hour)})
		if code, _, errs := f.run("expire"); code != 0 {
			t.Fatalf("expire: %d %s", code, errs)
		}
		if ents, _ := os.ReadDir(f.spool); len(ents) == 1 && ents[0].Name() == grant.FoldedName {
			folds++
		}
	}
	close(stop)
	wg.Wait()
	if gaps > 0 {
		t.Errorf("%d of %d reads of the CDB lacked a standing grant: %v", gaps, reads, gap)
	}
	if folds == 0 {
		t.Fatal("no expire folded the spool")
	}
	fresh := filepath.Join(f.dir, "fresh.cdb")
	f.run("rebuild", "--cdb", fresh)
	want, _ := os.ReadFile(fresh)
	wait.For(t, "the watcher's CDB to equal a fresh rebuild", func() bool {
		got, _ := os.ReadFile(f.db)
		return bytes.Equal(got, want)
	})
	t.Logf("%d folds, %d reads of the CDB", folds, reads)
}
