package watch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/poprelay/poprelay/internal/atomic"
	"github.com/poprelay/poprelay/internal/cdb"
	"github.com/poprelay/poprelay/internal/grant"
	"github.com/poprelay/poprelay/internal/merge"
	"github.com/poprelay/poprelay/internal/rules"
	"github.com/poprelay/poprelay/internal/wait"
)

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkLoginStorm drives logins at a fixed rate against a spool of
// live grants and measures, for each login, the time from the grant's
// write (Store.Record returning, fsync and rename done) to a published CDB
// holding its key. Run it once, e.g.
//
//	go test -run '^$' -bench LoginStorm -benchtime 1x ./internal/watch
//
// POPRELAY_BENCH_GRANTS, _RATE and _SECONDS change the load (defaults
// 100000 grants, 200 logins/s, 30 s).
func BenchmarkLoginStorm(b *testing.B) {
	nGrants := envInt("POPRELAY_BENCH_GRANTS", 100000)
	rate := envInt("POPRELAY_BENCH_RATE", 200)
	secs := envInt("POPRELAY_BENCH_SECONDS", 30)

	dir := b.TempDir()
	spool := filepath.Join(dir, "spool")
	rulesPath := filepath.Join(dir, "tcp.smtp")
	cdbPath := filepath.Join(dir, "tcp.smtp.cdb")
	os.Mkdir(spool, 0o755)
	os.WriteFile(rulesPath, []byte("127.0.0.1:allow,RELAYCLIENT=\"\"\n10.:allow,QMAILQUEUE=\"/var/qmail/bin/simscan\"\n:allow\n"), 0o644)
	// The standing grants, written directly (the format of the store)
	// to keep the setup short; the logins under test go through Record.
	now := time.Now()
	for i := range nGrants {
		ip := fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255)
		body := fmt.Sprintf("user=u%d\nservice=pop3\ntime=%d\n", i, now.Unix())
		if err := os.WriteFile(filepath.Join(spool, ip), []byte(body), 0o640); err != nil {
			b.Fatal(err)
		}
	}
	store := grant.New(spool)

	var mu sync.Mutex
	pending := map[string]time.Time{} // IP -> time its Record returned
	var lat []time.Duration
	rebuilds := 0
	// The watcher's incremental merge (Write, as relayctl watch runs
	// it); after each publish the new CDB is read for the pending logins.
	write := func(fill func(f io.Writer) error) error {
		if err := atomic.WriteFile(cdbPath, 0o644, func(f *os.File) error { return fill(f) }); err != nil {
			return err
		}
		done := time.Now()
		db, err := cdb.Open(cdbPath)
		if err != nil {
			return err
		}
		defer db.Close()
		mu.Lock()
		rebuilds++
		for ip, t0 := range pending {
			if _, ok, _ := db.Find([]byte(ip)); ok {
				lat = append(lat, done.Sub(t0))
				delete(pending, ip)
			}
		}
		mu.Unlock()
		return nil
	}
	w := New(Config{Spool: spool, Rules: rulesPath, Source: store, Rescan: time.Hour,
		Publish: func([]rules.Rule, []grant.Grant, time.Time) error { return errors.New("not used") },
		Write:   write,
		Options: func() (merge.Options, error) { return merge.Options{MaxAge: time.Hour}, nil },
		OnError: func(kind string, err error) { b.Logf("%s: %v", kind, err) }})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	wait.For(b, "the first full build", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return rebuilds > 0
	})
	mu.Lock()
	rebuilds = 0
	mu.Unlock()

	b.ResetTimer()
	cpu0, wall0 := cpuTime(), time.Now()
	tick := time.NewTicker(time.Second / time.Duration(rate))
	total := rate * secs
	for i := range total {
		<-tick.C
		ip := fmt.Sprintf("172.16.%d.%d", i>>8&255, i&255)
		if err := store.Record(grant.Grant{IP: ip, User: "roamer", Service: "imap", Time: time.Now()}); err != nil {
			b.Fatal(err)
		}
		mu.Lock()
		pending[ip] = time.Now()
		mu.Unlock()
	}
	tick.Stop()
	// Let the last logins land (polled every 5ms, not wait.For's up to
	// 50ms: the wall time below includes this).
	for deadline := wait.Deadline(b); ; {
		mu.Lock()
		n := len(pending)
		mu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d logins never reached the CDB", n)
		}
		time.Sleep(5 * time.Millisecond) // pacing of the benchmark's poller
	}
	wall, cpu := time.Since(wall0), cpuTime()-cpu0
	b.StopTimer()
	cancel()
	<-done

	mu.Lock()
	defer mu.Unlock()
	if len(pending) > 0 {
		b.Fatalf("%d logins never reached the CDB", len(pending))
	}
	slices.Sort(lat)
	q := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000 }
	b.ReportMetric(q(0.50), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
	b.ReportMetric(q(1), "max-ms")
	b.ReportMetric(float64(rebuilds)/wall.Seconds(), "rebuilds/s")
	b.ReportMetric(cpu.Seconds()/wall.Seconds(), "cpu-cores")
	b.Logf("%d grants standing, %d logins at %d/s: p50 %.1f ms, p99 %.1f ms, max %.1f ms; %d rebuilds (%.1f/s); CPU %.2f cores (watcher and load generator together)",
		nGrants, total, rate, q(0.5), q(0.99), q(1), rebuilds, float64(rebuilds)/wall.Seconds(), cpu.Seconds()/wall.Seconds())
}

func envInt(name string, def int) int {
	var n int
	if _, err := fmt.Sscan(os.Getenv(name), &n); err == nil && n > 0 {
		return n
	}
	return def
}
