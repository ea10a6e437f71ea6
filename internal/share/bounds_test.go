package share

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/poprelay/poprelay/internal/etcdtest"
	"github.com/poprelay/poprelay/internal/grant"
	"github.com/poprelay/poprelay/internal/wait"
)

// value is the JSON of a grant shared by host, logged in at t.
func value(user, host string, t time.Time) string {
	b, _ := json.Marshal(record{User: user, Service: "pop3", Host: host, Time: t.UTC(), Exp: t.Add(time.Hour).UTC()})
	return string(b)
}

func put(t testing.TB, cli *clientv3.Client, k, v string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait.Patience)
	defer cancel()
	if _, err := cli.Put(ctx, k, v); err != nil {
		t.Fatalf("put %.60q: %v", k, err)
	}
}

func count(l *logs, sub string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, s := range l.lines {
		if strings.Contains(s, sub) {
			n++
		}
	}
	return n
}

// TestReadBoundedPages: with a receive limit of 1 MiB, a page of 5000
// keys holding megabytes of junk is read again in smaller pages, a single
// key too large even alone is skipped by name, and every good grant is
// read; a few log lines tell of the hundreds of junk keys.
func TestReadBoundedPages(t *testing.T) {
	old := maxResponse
	maxResponse = 1 << 20
	defer func() { maxResponse = old }()
	e := etcdtest.Start(t)
	l := &logs{t: t}
	c := open(t, Options{Host: "smtp1", Logf: l.logf}, e.Client)
	cli := etcdtest.Client(t, e.Client)
	now := time.Now()
	junk := strings.Repeat("j", 200<<10)
	want := map[string]bool{}
	for i := 1; i <= 30; i++ {
		ip := fmt.Sprintf("192.0.2.%d", i)
		put(t, cli, c.grants+ip, value("u", "pop1", now))
		want[ip] = true
		put(t, cli, c.grants+ip+"junk", junk)                      // not an address, between two grants
		put(t, cli, c.grants+fmt.Sprintf("2001:db8::%x", i), junk) // an address, a value too large
	}
	for i := 0; i < 300; i++ {
		put(t, cli, c.grants+fmt.Sprintf("198.51.100.%d/x", i), "small junk")
	}
	put(t, cli, c.grants+"192.0.2.100", strings.Repeat("h", 1200<<10)) // over the limit alone
	gs, err := c.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if got := ips(gs); len(got) != len(want) {
		t.Errorf("read %d grants, want %d: %v", len(got), len(want), got)
	}
	if !l.has(`skipping key "/poprelay/v1/grants/192.0.2.100": `) {
		t.Errorf("the key too large alone is not named: %q", l.lines)
	}
	if n := count(l, "skipping"); n > skipsShown+2 {
		t.Errorf("%d lines for the junk keys, want at most %d", n, skipsShown+2)
	}
	if !l.has("more damaged keys under /poprelay/v1/grants/") {
		t.Errorf("no count of the junk keys not shown: %q", l.lines)
	}
	// The mirror reads the same, and so does the watch of new junk.
	m := runMirror(t, c)
	<-m.Ready()
	if got, _ := m.List(); len(got) != len(want) {
		t.Errorf("mirror: %d grants, want %d", len(got), len(want))
	}
	put(t, cli, c.grants+"2001:db8::ffff", junk)
	put(t, cli, c.grants+"192.0.2.99", value("late", "pop1", now))
	wait.For(t, "a grant after junk in the watch", func() bool { return has(m, "192.0.2.99") })
	// An event over the limit ends the watch; a full read (which skips
	// that key) and a new watch follow.
	reloads := m.Reloads()
	put(t, cli, c.grants+"192.0.2.101", strings.Repeat("h", 1200<<10))
	put(t, cli, c.grants+"192.0.2.98", value("later", "pop1", now))
	wait.For(t, "a grant after an event over the limit", func() bool { return has(m, "192.0.2.98") })
	if m.Reloads() == reloads {
		t.Errorf("no full read after an event over the limit")
	}
	if got, _ := m.List(); len(got) != len(want)+2 {
		t.Errorf("mirror after the new watch: %d grants, want %d", len(got), len(want)+2)
	}
}

// TestPerHostCap: a host that shares more grants than the cap keeps its
// newest ones, in a full read and in the watch, and crowds out no other
// host's; the warning names it.
func TestPerHostCap(t *testing.T) {
	e := etcdtest.Start(t)
	l := &logs{t: t}
	c, err := Open(Config{Endpoints: []string{e.Client}, DialTimeout: 30 * time.Second, MaxPerHost: 3}, Options{Host: "smtp1", Logf: l.logf})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cli := etcdtest.Client(t, e.Client)
	t0 := time.Now().Add(-time.Minute)
	at := func(i int) time.Time { return t0.Add(time.Duration(i) * time.Second) }
	for i := 1; i <= 5; i++ {
		put(t, cli, c.grants+fmt.Sprintf("192.0.2.%d", i), value("u", "flood", at(i)))
	}
	put(t, cli, c.grants+"198.51.100.1", value("v", "pop2", at(0)))
	put(t, cli, c.grants+"198.51.100.2", value("v", "pop2", at(0)))
	m := runMirror(t, c)
	<-m.Ready()
	check := func(what string, want ...string) {
		t.Helper()
		wait.For(t, what, func() bool {
			gs, _ := m.List()
			got := ips(gs)
			if len(got) != len(want) {
				return false
			}
			for _, ip := range want {
				if !got[ip] {
					return false
				}
			}
			return true
		})
	}
	check("the newest 3 of host flood and both of pop2", "192.0.2.3", "192.0.2.4", "192.0.2.5", "198.51.100.1", "198.51.100.2")
	if !l.has(`host "flood" than the cap of 3`) {
		t.Errorf("no warning naming the host: %q", l.lines)
	}
	// The watch: a newer grant pushes the oldest out, an older one
	// does not get in, a deletion makes room.
	put(t, cli, c.grants+"192.0.2.6", value("u", "flood", at(6)))
	check("the newest 3 after a new login", "192.0.2.4", "192.0.2.5", "192.0.2.6", "198.51.100.1", "198.51.100.2")
	put(t, cli, c.grants+"192.0.2.7", value("u", "flood", at(1)))
	put(t, cli, c.grants+"198.51.100.3", value("v", "pop2", at(0))) // a marker: the put before it was applied
	check("an older grant kept out", "192.0.2.4", "192.0.2.5", "192.0.2.6", "198.51.100.1", "198.51.100.2", "198.51.100.3")
	ctx, cancel := context.WithTimeout(context.Background(), wait.Patience)
	defer cancel()
	if _, err := cli.Delete(ctx, c.grants+"192.0.2.4"); err != nil {
		t.Fatal(err)
	}
	put(t, cli, c.grants+"192.0.2.8", value("u", "flood", at(2)))
	check("room after a deletion", "192.0.2.8", "192.0.2.5", "192.0.2.6", "198.51.100.1", "198.51.100.2", "198.51.100.3")
	// A grant moving to another host leaves the first host's count.
	put(t, cli, c.grants+"192.0.2.5", value("u", "pop3", at(5)))
	put(t, cli, c.grants+"192.0.2.9", value("u", "flood", at(1)))
	check("a grant moved to another host", "192.0.2.8", "192.0.2.5", "192.0.2.6", "192.0.2.9", "198.51.100.1", "198.51.100.2", "198.51.100.3")
}

// TestPerHostCapSkipsExpired: an expired key counts toward no host's
// cap, in the full read (List, the mirror) and in the watch: with a cap
// of 2, expired keys of the host with newer login times do not push out
// its two live grants.
func TestPerHostCapSkipsExpired(t *testing.T) {
	e := etcdtest.Start(t)
	l := &logs{t: t}
	c, err := Open(Config{Endpoints: []string{e.Client}, DialTimeout: 30 * time.Second, MaxPerHost: 2}, Options{Host: "smtp1", Logf: l.logf})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cli := etcdtest.Client(t, e.Client)
	now := time.Now()
	expired := func(user string, login time.Time) string {
		b, _ := json.Marshal(record{User: user, Service: "pop3", Host: "pop1", Time: login.UTC(), Exp: now.Add(-time.Second).UTC()})
		return string(b)
	}
	put(t, cli, c.grants+"192.0.2.1", value("u", "pop1", now.Add(-30*time.Minute)))
	put(t, cli, c.grants+"192.0.2.2", value("u", "pop1", now.Add(-20*time.Minute)))
	put(t, cli, c.grants+"192.0.2.3", expired("u", now.Add(-10*time.Second)))
	put(t, cli, c.grants+"192.0.2.4", expired("u", now.Add(-5*time.Second)))
	want := func(gs []grant.Grant) error {
		got := ips(gs)
		if len(got) != 2 || !got["192.0.2.1"] || !got["192.0.2.2"] {
			return fmt.Errorf("got %v, want the two live grants 192.0.2.1 and 192.0.2.2", got)
		}
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait.Patience)
	defer cancel()
	gs, err := c.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := want(gs); err != nil {
		t.Errorf("List: %v", err)
	}
	m := runMirror(t, c)
	<-m.Ready()
	gs, _ = m.List()
	if err := want(gs); err != nil {
		t.Errorf("the mirror's full read: %v", err)
	}
	// The watch: two more expired keys with newer logins, then a marker
	// of another host.
	put(t, cli, c.grants+"192.0.2.5", expired("u", now.Add(-2*time.Second)))
	put(t, cli, c.grants+"192.0.2.6", expired("u", now.Add(-time.Second)))
	put(t, cli, c.grants+"198.51.100.1", value("v", "pop2", now))
	wait.For(t, "the marker in the mirror", func() bool {
		gs, _ := m.List()
		return ips(gs)["198.51.100.1"]
	})
	gs, _ = m.List()
	var pop1 []grant.Grant
	for _, g := range gs {
		if g.IP != "198.51.100.1" {
			pop1 = append(pop1, g)
		}
	}
	if err := want(pop1); err != nil {
		t.Errorf("the mirror's watch: %v", err)
	}
}

func TestHostCapsOrder(t *testing.T) {
	hc := newHostCaps(2)
	t0 := time.Now()
	mk := func(ip string, sec int, host string) Shared {
		return Shared{Grant: grant.Grant{IP: ip, Time: t0.Add(time.Duration(sec) * time.Second), Expires: t0.Add(time.Hour)}, Host: host}
	}
	for _, tc := range []struct {
		s       Shared
		out     string // "" none
		dropped bool
	}{
		{mk("10.0.0.1", 5, "a"), "", false},
		{mk("10.0.0.2", 3, "a"), "", false},
		{mk("10.0.0.3", 4, "a"), "10.0.0.2", true}, // the oldest goes
		{mk("10.0.0.4", 1, "a"), "10.0.0.4", true}, // older than all kept: itself
		{mk("10.0.0.5", 1, "b"), "", false},        // another host
		{mk("10.0.0.1", 9, "a"), "", false},        // a refresh of one kept
		{mk("10.0.0.6", 4, "a"), "10.0.0.6", true}, // same age as 10.0.0.3: the greater address goes
	} {
		out, ok := hc.add(tc.s)
		if ok != tc.dropped || (ok && out.IP != tc.out) {
			t.Errorf("add %s: dropped %v %s, want %v %s", tc.s.IP, ok, out.IP, tc.dropped, tc.out)
		}
	}
	if hc.dropped["a"] != 3 || hc.hosts["a"].Len() != 2 || hc.hosts["b"].Len() != 1 {
		t.Errorf("counts: dropped %v, a %d", hc.dropped, hc.hosts["a"].Len())
	}
	hc.remove(mk("10.0.0.5", 1, "b"))
	if _, ok := hc.hosts["b"]; ok {
		t.Error("an empty host is kept")
	}
}

// TestMirrorCacheEtcdStopped: etcd stopped (SIGSTOP: its port still
// accepts connections, nothing answers) and requests that wait 30 s: the
// mirror serves its cache after a second, without waiting for the read
// to fail, then takes etcd's data once etcd goes on.
func TestMirrorCacheEtcdStopped(t *testing.T) {
	e := etcdtest.Start(t)
	c := open(t, Options{Host: "smtp1"}, e.Client)
	cache := t.TempDir() + "/grants.json"
	ctx := context.Background()
	now := time.Now()
	if err := c.Allow(ctx, grant.Grant{IP: "192.0.2.81", User: "a", Service: "pop3", Time: now}); err != nil {
		t.Fatal(err)
	}
	writeCache(t, c, cache)

	pid := e.Cmd.Process.Pid
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(pid, syscall.SIGCONT)
	l := &logs{t: t}
	c2 := open(t, Options{Host: "smtp1", Logf: l.logf}, e.Client)
	m2 := c2.Mirror(nil)
	m2.UseCache(cache)
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { m2.Run(rctx); close(done) }()
	defer func() { cancel(); <-done }()
	select {
	case <-m2.Ready():
	case <-time.After(wait.Patience):
		t.Fatal("not ready from the cache")
	}
	if !has(m2, "192.0.2.81") || !l.has("from the cache") {
		t.Fatalf("the cached grant is not served: %q", l.lines)
	}
	syscall.Kill(pid, syscall.SIGCONT)
	if err := c.Allow(ctx, grant.Grant{IP: "192.0.2.82", User: "b", Time: time.Now()}); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "etcd's data after SIGCONT", func() bool { return has(m2, "192.0.2.82") && has(m2, "192.0.2.81") })
}

func TestSmaller(t *testing.T) {
	old := maxResponse
	maxResponse = 16 << 20
	defer func() { maxResponse = old }()
	big := func(msg string) error { return status.Error(codes.ResourceExhausted, msg) }
	for _, tc := range []struct {
		n    int
		err  error
		want int
	}{
		{5000, big("grpc: received message larger than max (1048576000 vs. 16777216)"), 40},
		{5000, big("grpc: received message larger than max (20000000 vs. 16777216)"), 2097},
		{5000, big("etcdserver: too many requests"), 2500},
		{5000, context.DeadlineExceeded, 312},
		{2, big("grpc: received message larger than max (99999999999 vs. 16777216)"), 1},
		{1, errors.New("x"), 1},
	} {
		if got := smaller(tc.n, tc.err); got != tc.want {
			t.Errorf("smaller(%d, %v) = %d, want %d", tc.n, tc.err, got, tc.want)
		}
	}
}

// TestScanPagesStartSmall: a full read asks for firstPage keys at
// first, not a page of 5000 (etcd builds a page in memory whatever its
// bytes), grows from there while the keys are small, and a mirror's
// next full read starts at the length the large keys of the last one
// called for.
func TestScanPagesStartSmall(t *testing.T) {
	old := maxResponse
	maxResponse = 1 << 20
	defer func() { maxResponse = old }()
	e := etcdtest.Start(t)
	c := open(t, Options{Host: "smtp1"}, e.Client)
	var mu sync.Mutex
	var limits []int
	c.scanHook = func(n int) {
		mu.Lock()
		limits = append(limits, n)
		mu.Unlock()
	}
	took := func() []int {
		mu.Lock()
		defer mu.Unlock()
		l := limits
		limits = nil
		return l
	}
	cli := etcdtest.Client(t, e.Client)
	now := time.Now()
	ctx := context.Background()
	for i := 0; i < 3000; i += 100 {
		var ops []clientv3.Op
		for j := i; j < i+100; j++ {
			ops = append(ops, clientv3.OpPut(c.grants+fmt.Sprintf("10.0.%d.%d", j/256, j%256), value("u", "pop1", now)))
		}
		tctx, cancel := context.WithTimeout(ctx, wait.Patience)
		_, err := cli.Txn(tctx).Then(ops...).Commit()
		cancel()
		if err != nil {
			t.Fatal(err)
		}
	}
	m := c.Mirror(nil)
	if err := m.load(ctx); err != nil {
		t.Fatal(err)
	}
	l := took()
	if len(l) == 0 || l[0] != firstPage {
		t.Fatalf("small keys: the first page asked for %v keys, want %d", l, firstPage)
	}
	t.Logf("small keys: pages of %v keys", l)
	if l[len(l)-1] <= firstPage {
		t.Errorf("small keys: the pages did not grow: %v", l)
	}
	if err := m.load(ctx); err != nil {
		t.Fatal(err)
	}
	if l := took(); l[0] != firstPage {
		t.Errorf("small keys, second read: the first page asked for %d keys, want %d", l[0], firstPage)
	}

	// Large keys: the next read starts at what they called for.
	junk := strings.Repeat("j", 100<<10)
	for i := 0; i < 20; i++ {
		put(t, cli, c.grants+fmt.Sprintf("10.0.5.%d/junk", i), junk)
	}
	if err := m.load(ctx); err != nil {
		t.Fatal(err)
	}
	l = took()
	learned := m.pages.start()
	t.Logf("large keys: pages of %v keys, the next read starts at %d", l, learned)
	if l[0] != firstPage || learned >= firstPage {
		t.Fatalf("large keys: pages %v, then learned %d, want a first page of %d and less after", l, learned, firstPage)
	}
	if got, _ := m.List(); len(got) != 3000 {
		t.Errorf("large keys: %d grants read, want 3000", len(got))
	}
	if err := m.load(ctx); err != nil {
		t.Fatal(err)
	}
	if l := took(); l[0] != learned {
		t.Errorf("large keys, next read: the first page asked for %d keys, want the %d learned", l[0], learned)
	}
	// A read without a mirror (List) learns nothing and starts small.
	if _, err := c.List(ctx); err != nil {
		t.Fatal(err)
	}
	if l := took(); l[0] != firstPage {
		t.Errorf("List: the first page asked for %d keys, want %d", l[0], firstPage)
	}
}
