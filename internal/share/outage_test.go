package share

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/poprelay/poprelay/internal/etcdtest"
	"github.com/poprelay/poprelay/internal/grant"
)

// logs collects log lines for checks.
type logs struct {
	t     testing.TB
	mu    sync.Mutex
	lines []string
}

func (l *logs) logf(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	l.t.Log(s)
	l.mu.Lock()
	l.lines = append(l.lines, s)
	l.mu.Unlock()
}

func (l *logs) has(sub string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range l.lines {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

func ips(gs []grant.Grant) map[string]bool {
	m := map[string]bool{}
	for _, g := range gs {
		m[g.IP] = true
	}
	return m
}

// TestOutage: etcd killed → the publisher keeps a backlog, the mirror
// keeps its copy and still expires on time; etcd restarted from the same
// data → the backlog is replayed and the mirror catches up.
func TestOutage(t *testing.T) {
	e := etcdtest.Start(t)
	pl := &logs{t: t}
	ml := &logs{t: t}
	pop := open(t, Options{Host: "pop1", Logf: pl.logf}, e.Client)
	smtp := open(t, Options{Host: "smtp1", Logf: ml.logf}, e.Client)
	m := runMirror(t, smtp)
	<-m.Ready()
	p := runPublisher(t, pop, PublisherOptions{})

	now := time.Now()
	short := grant.Grant{IP: "192.0.2.1", User: "short", Service: "pop3", Time: now, Expires: now.Add(4 * time.Second)}
	long := grant.Grant{IP: "192.0.2.2", User: "long", Service: "pop3", Time: now}
	live := []grant.Grant{short, long}
	p.Sync(live, now)
	etcdtest.Eventually(t, 5*time.Second, "both grants in the mirror", func() bool { return has(m, short.IP) && has(m, long.IP) })

	e.Kill()
	down := time.Now()
	for i := 0; i < 10; i++ {
		live = append(live, grant.Grant{IP: fmt.Sprintf("198.51.100.%d", i+1), User: "late", Service: "imap", Time: time.Now()})
	}
	p.Sync(live, time.Now()) // returns at once
	if d := time.Since(down); d > 50*time.Millisecond {
		t.Errorf("Sync took %v with etcd down", d)
	}
	// The mirror keeps what it had ...
	gs, err := m.List()
	if err != nil || len(gs) != 2 {
		t.Fatalf("mirror while down: %v, %v", gs, err)
	}
	etcdtest.Eventually(t, 10*time.Second, "the publisher to notice", func() bool { return p.Stats().Down })
	if st := p.Stats(); st.Backlog != 10 {
		t.Errorf("backlog %d, want 10", st.Backlog)
	}
	if gs, err := m.List(); err != nil || len(gs) != 2 {
		t.Fatalf("mirror while down: %v, %v", gs, err)
	}
	// ... and expires on time by itself.
	etcdtest.Eventually(t, 5*time.Second, "the short grant to expire", func() bool { return !has(m, short.IP) })
	if late := time.Since(short.Expires); late > 200*time.Millisecond {
		t.Errorf("expired %v late", late)
	}
	if gs, err := m.List(); err != nil || len(gs) != 1 || gs[0].IP != long.IP {
		t.Fatalf("mirror after expiry: %v, %v", gs, err)
	}

	e.Start()
	up := time.Now()
	etcdtest.Eventually(t, 15*time.Second, "the backlog to reach the mirror", func() bool {
		gs, _ := m.List()
		return len(gs) == 11
	})
	t.Logf("caught up %v after the restart", time.Since(up).Round(time.Millisecond))
	etcdtest.Eventually(t, 5*time.Second, "the backlog to drain", func() bool { return p.Pending() == 0 })
	if !pl.has("etcd unreachable") || !pl.has("etcd is back") {
		t.Errorf("publisher logs: %q", pl.lines)
	}
}

// TestBacklogOverflow: a full backlog drops the oldest changes, and the
// resync after etcd returns restores them.
func TestBacklogOverflow(t *testing.T) {
	e := etcdtest.Start(t)
	pl := &logs{t: t}
	pop := open(t, Options{Host: "pop1", Logf: pl.logf}, e.Client)
	p := runPublisher(t, pop, PublisherOptions{Backlog: 5})
	etcdtest.Eventually(t, 5*time.Second, "the first resync", func() bool { return p.Stats().Resyncs == 1 })
	e.Kill()
	// Up to Workers changes may be in flight (stuck on the dead etcd)
	// besides the 5 queued: 20 changes overflow the backlog whatever the
	// timing.
	const n, workers = 20, 4
	var live []grant.Grant
	for i := 0; i < n; i++ {
		live = append(live, grant.Grant{IP: fmt.Sprintf("203.0.113.%d", i+1), User: "u", Service: "pop3", Time: time.Now()})
		p.Sync(live, time.Now())
	}
	etcdtest.Eventually(t, 10*time.Second, "the publisher to notice", func() bool { return p.Stats().Down })
	st := p.Stats()
	if st.Dropped < n-5-workers || st.Backlog > 5+workers {
		t.Fatalf("stats %+v: want at least %d dropped, backlog at most %d", st, n-5-workers, 5+workers)
	}
	if !pl.has("backlog full") {
		t.Error("no log line for the dropped changes")
	}
	e.Start()
	etcdtest.Eventually(t, 15*time.Second, "all the grants in etcd", func() bool {
		gs, err := pop.List(context.Background())
		return err == nil && len(gs) == n
	})
}

// TestCompaction: the watch's start revision is compacted away → a fresh
// full read, and nothing is lost; later changes still arrive.
func TestCompaction(t *testing.T) {
	e := etcdtest.Start(t)
	ml := &logs{t: t}
	c := open(t, Options{Host: "pop1", Logf: ml.logf}, e.Client)
	ctx := context.Background()
	now := time.Now()
	mk := func(i int) grant.Grant {
		return grant.Grant{IP: fmt.Sprintf("192.0.2.%d", i), User: "u", Service: "pop3", Time: now}
	}
	for i := 1; i <= 3; i++ {
		if err := c.Allow(ctx, mk(i)); err != nil {
			t.Fatal(err)
		}
	}
	m := c.Mirror(nil)
	var once sync.Once
	m.beforeWatch = func() {
		once.Do(func() {
			// Between the first read and its watch: change things,
			// then compact past the mirror's revision.
			if _, err := c.Revoke(ctx, mk(1).IP, "test"); err != nil {
				t.Error(err)
			}
			if err := c.Allow(ctx, mk(4)); err != nil {
				t.Error(err)
			}
			resp, err := c.Client().Get(ctx, "x")
			if err != nil {
				t.Error(err)
				return
			}
			if _, err := c.Client().Compact(ctx, resp.Header.Revision); err != nil {
				t.Error(err)
			}
		})
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { m.Run(rctx); close(done) }()
	defer func() { cancel(); <-done }()
	etcdtest.Eventually(t, 10*time.Second, "a second full read", func() bool { return m.Reloads() >= 2 })
	etcdtest.Eventually(t, 5*time.Second, "the changes", func() bool {
		gs, _ := m.List()
		s := ips(gs)
		return len(gs) == 3 && !s[mk(1).IP] && s[mk(4).IP]
	})
	if !ml.has("compacted") {
		t.Errorf("no log of the compaction: %q", ml.lines)
	}
	// The new watch works.
	if err := c.Allow(ctx, mk(5)); err != nil {
		t.Fatal(err)
	}
	etcdtest.Eventually(t, 5*time.Second, "a change after the re-read", func() bool { return has(m, mk(5).IP) })
}

// TestMirrorCache: an SMTP host restarted while etcd is down serves the
// grants it knew from its cache, and still expires them on time.
func TestMirrorCache(t *testing.T) {
	old := cacheEvery
	cacheEvery = 50 * time.Millisecond
	defer func() { cacheEvery = old }()
	e := etcdtest.Start(t)
	c := open(t, Options{Host: "smtp1"}, e.Client)
	cache := t.TempDir() + "/grants.json"
	ctx := context.Background()
	now := time.Now()
	short := grant.Grant{IP: "192.0.2.61", User: "s", Service: "pop3", Time: now, Expires: now.Add(4 * time.Second)}
	long := grant.Grant{IP: "192.0.2.62", User: "l", Service: "pop3", Time: now}
	for _, g := range []grant.Grant{short, long} {
		if err := c.Allow(ctx, g); err != nil {
			t.Fatal(err)
		}
	}
	m := c.Mirror(nil)
	m.UseCache(cache)
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { m.Run(rctx); close(done) }()
	<-m.Ready()
	cancel()
	<-done // writes the cache

	e.Kill()
	ml := &logs{t: t}
	c2 := open(t, Options{Host: "smtp1", Logf: ml.logf}, e.Client)
	var mu sync.Mutex
	var told []string
	m2 := c2.Mirror(func(ips []string) { mu.Lock(); told = append(told, ips...); mu.Unlock() })
	m2.UseCache(cache)
	if _, err := m2.List(); err != ErrNotReady {
		t.Fatalf("List before anything: %v", err)
	}
	rctx, cancel = context.WithCancel(ctx)
	done = make(chan struct{})
	go func() { m2.Run(rctx); close(done) }()
	defer func() { cancel(); <-done }()
	select {
	case <-m2.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("not ready from the cache")
	}
	if gs, err := m2.List(); err != nil || len(gs) != 2 {
		t.Fatalf("from the cache: %v %v", gs, err)
	}
	mu.Lock()
	if len(told) != 2 {
		t.Errorf("callback told %v", told)
	}
	mu.Unlock()
	etcdtest.Eventually(t, 6*time.Second, "the short grant to expire", func() bool { return !has(m2, short.IP) })
	if late := time.Since(short.Expires); late > 200*time.Millisecond || late < 0 {
		t.Errorf("expired %v late", late)
	}
	if !has(m2, long.IP) || !ml.has("from the cache") {
		t.Fatalf("long grant lost, or no log: %q", ml.lines)
	}
	// etcd returns: the mirror takes etcd's data.
	e.Start()
	if err := c2.Allow(ctx, grant.Grant{IP: "192.0.2.63", User: "n", Time: time.Now()}); err != nil {
		t.Fatal(err)
	}
	etcdtest.Eventually(t, 15*time.Second, "etcd's data", func() bool { return has(m2, "192.0.2.63") })
}
