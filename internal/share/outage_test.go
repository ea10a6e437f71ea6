package share

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/poprelay/poprelay/internal/etcdtest"
	"github.com/poprelay/poprelay/internal/grant"
	"github.com/poprelay/poprelay/internal/wait"
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
// data → the backlog is replayed and the mirror catches up. (That Sync
// never waits for etcd is TestSyncNeverBlocks.)
func TestOutage(t *testing.T) {
	e := etcdtest.Start(t)
	pl := &logs{t: t}
	ml := &logs{t: t}
	clk := newClock() // the SMTP host's
	pop := openQuick(t, Options{Host: "pop1", Logf: pl.logf}, e.Client)
	smtp := open(t, Options{Host: "smtp1", Logf: ml.logf, Now: clk.Now}, e.Client)
	m := runMirror(t, smtp)
	<-m.Ready()
	p := runPublisher(t, pop, PublisherOptions{})
	// The publisher's first resync, done: running late, it would queue
	// the two grants below a second time, and the backlog would hold
	// more than the 10 changes made while etcd is down.
	wait.For(t, "the first resync", func() bool { return p.Stats().Resyncs == 1 })

	now := time.Now()
	short := grant.Grant{IP: "192.0.2.1", User: "short", Service: "pop3", Time: now, Expires: now.Add(10 * time.Minute)}
	long := grant.Grant{IP: "192.0.2.2", User: "long", Service: "pop3", Time: now}
	live := []grant.Grant{short, long}
	p.Sync(live, now)
	wait.For(t, "both grants in the mirror", func() bool { return has(m, short.IP) && has(m, long.IP) })
	wait.For(t, "the publisher to settle", func() bool { return p.Pending() == 0 })

	e.Kill()
	for i := 0; i < 10; i++ {
		live = append(live, grant.Grant{IP: fmt.Sprintf("198.51.100.%d", i+1), User: "late", Service: "imap", Time: time.Now()})
	}
	p.Sync(live, time.Now())
	// The mirror keeps what it had ...
	gs, err := m.List()
	if err != nil || len(gs) != 2 {
		t.Fatalf("mirror while down: %v, %v", gs, err)
	}
	wait.For(t, "the publisher to notice", func() bool { return p.Stats().Down })
	if st := p.Stats(); st.Backlog != 10 {
		t.Errorf("backlog %d, want 10", st.Backlog)
	}
	if gs, err := m.List(); err != nil || len(gs) != 2 {
		t.Fatalf("mirror while down: %v, %v", gs, err)
	}
	// ... and expires on time by itself: there until exp, gone at exp.
	clk.Set(short.Expires.Add(-time.Nanosecond))
	if !has(m, short.IP) {
		t.Fatal("short grant gone before its exp")
	}
	clk.Set(short.Expires)
	if gs, err := m.List(); err != nil || len(gs) != 1 || gs[0].IP != long.IP {
		t.Fatalf("mirror at the short grant's exp: %v, %v", gs, err)
	}

	e.Start()
	up := time.Now()
	wait.For(t, "the backlog to reach the mirror", func() bool {
		gs, _ := m.List()
		return len(gs) == 11
	})
	t.Logf("caught up %v after the restart", time.Since(up).Round(time.Millisecond))
	wait.For(t, "the backlog to drain", func() bool { return p.Pending() == 0 })
	if !pl.has("etcd unreachable") || !pl.has("etcd is back") {
		t.Errorf("publisher logs: %q", pl.lines)
	}
}

// TestSyncNeverBlocks: Sync, Put and Remove return while every write to
// etcd hangs (an endpoint that accepts connections and never answers,
// and an hour's timeout): a login never waits for etcd.
func TestSyncNeverBlocks(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c := openTimeout(t, Options{Host: "pop1"}, time.Hour, "http://"+ln.Addr().String())
	p := runPublisher(t, c, PublisherOptions{Workers: 2})
	returned := make(chan struct{})
	go func() {
		defer close(returned)
		var live []grant.Grant
		now := time.Now()
		for i := 0; i < 10; i++ {
			g := grant.Grant{IP: fmt.Sprintf("198.51.100.%d", i+1), User: "u", Service: "pop3", Time: now}
			live = append(live, g)
			p.Sync(live, now)
			p.Put(g)
		}
		p.Remove(live[0].IP)
		p.Sync(live[5:], now)
	}()
	select {
	case <-returned:
	case <-time.After(wait.Patience):
		t.Fatal("Sync blocked on an etcd that never answers")
	}
	if p.Pending() == 0 {
		t.Fatal("nothing pending with etcd unreachable")
	}
}

// TestBacklogOverflow: a full backlog drops the oldest changes, and the
// resync after etcd returns restores them.
func TestBacklogOverflow(t *testing.T) {
	e := etcdtest.Start(t)
	pl := &logs{t: t}
	pop := openQuick(t, Options{Host: "pop1", Logf: pl.logf}, e.Client)
	p := runPublisher(t, pop, PublisherOptions{Backlog: 5})
	wait.For(t, "the first resync", func() bool { return p.Stats().Resyncs == 1 })
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
	wait.For(t, "the publisher to notice", func() bool { return p.Stats().Down })
	st := p.Stats()
	if st.Dropped < n-5-workers || st.Backlog > 5+workers {
		t.Fatalf("stats %+v: want at least %d dropped, backlog at most %d", st, n-5-workers, 5+workers)
	}
	if !pl.has("backlog full") {
		t.Error("no log line for the dropped changes")
	}
	e.Start()
	wait.For(t, "all the grants in etcd", func() bool {
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
	wait.For(t, "a second full read", func() bool { return m.Reloads() >= 2 })
	wait.For(t, "the changes", func() bool {
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
	wait.For(t, "a change after the re-read", func() bool { return has(m, mk(5).IP) })
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
	short := grant.Grant{IP: "192.0.2.61", User: "s", Service: "pop3", Time: now, Expires: now.Add(10 * time.Minute)}
	long := grant.Grant{IP: "192.0.2.62", User: "l", Service: "pop3", Time: now}
	for _, g := range []grant.Grant{short, long} {
		if err := c.Allow(ctx, g); err != nil {
			t.Fatal(err)
		}
	}
	writeCache(t, c, cache)

	e.Kill()
	ml := &logs{t: t}
	clk := newClock()
	// Quick: its first read must fail for it to fall back on the cache.
	c2 := openQuick(t, Options{Host: "smtp1", Logf: ml.logf, Now: clk.Now}, e.Client)
	var m2 *Mirror
	var mu sync.Mutex
	var told []string
	var early bool // Ready closed before onChange ran
	m2 = c2.Mirror(func(ips []string) {
		mu.Lock()
		defer mu.Unlock()
		select {
		case <-m2.Ready():
			early = true
		default:
		}
		told = append(told, ips...)
	})
	m2.UseCache(cache)
	if _, err := m2.List(); err != ErrNotReady {
		t.Fatalf("List before anything: %v", err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { m2.Run(rctx); close(done) }()
	defer func() { cancel(); <-done }()
	select {
	case <-m2.Ready():
	case <-time.After(wait.Patience):
		t.Fatal("not ready from the cache")
	}
	if gs, err := m2.List(); err != nil || len(gs) != 2 {
		t.Fatalf("from the cache: %v %v", gs, err)
	}
	mu.Lock()
	if len(told) != 2 || early {
		t.Errorf("at Ready, onChange had been told %v (and ran after Ready: %v)", told, early)
	}
	mu.Unlock()
	if !ml.has("from the cache") {
		t.Errorf("no log of the cache: %q", ml.lines)
	}
	clk.Set(short.Expires.Add(-time.Nanosecond))
	if !has(m2, short.IP) || !has(m2, long.IP) {
		t.Fatal("a cached grant gone before its exp")
	}
	clk.Set(short.Expires)
	if has(m2, short.IP) || !has(m2, long.IP) {
		t.Fatal("the short grant still there at its exp, or the long one gone")
	}
	// etcd returns: the mirror takes etcd's data. c's requests wait
	// for etcd to be back (up to their timeout), not m2's quick ones.
	e.Start()
	if err := c.Allow(ctx, grant.Grant{IP: "192.0.2.63", User: "n", Time: time.Now()}); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "etcd's data", func() bool { return has(m2, "192.0.2.63") })
}

// TestMirrorCacheNotInTheWay: while the mirror writes its cache (100k
// grants took hundreds of milliseconds to encode and sync), it goes on
// taking in changes from etcd.
func TestMirrorCacheNotInTheWay(t *testing.T) {
	old := cacheEvery
	cacheEvery = 10 * time.Millisecond
	stall, writing := make(chan struct{}), make(chan struct{}, 1)
	cacheHook = func() {
		select {
		case writing <- struct{}{}:
		default:
		}
		<-stall
	}
	defer func() { cacheEvery, cacheHook = old, func() {} }()
	e := etcdtest.Start(t)
	c := open(t, Options{Host: "smtp1"}, e.Client)
	ctx := context.Background()
	now := time.Now()
	if err := c.Allow(ctx, grant.Grant{IP: "192.0.2.71", User: "a", Time: now}); err != nil {
		t.Fatal(err)
	}
	m := c.Mirror(nil)
	m.UseCache(t.TempDir() + "/grants.json")
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { m.Run(rctx); close(done) }()
	defer func() { cancel(); close(stall); <-done }()
	<-m.Ready()
	select {
	case <-writing:
	case <-time.After(wait.Patience):
		t.Fatal("the cache was never written")
	}
	// The write is stalled; a login on another host still arrives.
	if err := c.Allow(ctx, grant.Grant{IP: "192.0.2.72", User: "b", Time: now}); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "a change while the cache is written", func() bool { return has(m, "192.0.2.72") })
}

// writeCache runs a mirror of c with its cache at cache until it is
// ready, then stops it: stopping, it writes the cache of what it read.
func writeCache(t *testing.T, c *Cluster, cache string) {
	t.Helper()
	m := c.Mirror(nil)
	m.UseCache(cache)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	<-m.Ready()
	cancel()
	<-done
}
