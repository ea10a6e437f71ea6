package share

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/poprelay/poprelay/internal/etcdtest"
	"github.com/poprelay/poprelay/internal/grant"
	"github.com/poprelay/poprelay/internal/merge"
	"github.com/poprelay/poprelay/internal/wait"
)

func TestFromEnv(t *testing.T) {
	env := map[string]string{
		EnvEndpoints:  "http://10.0.0.1:2379, http://10.0.0.2:2379",
		EnvPrefix:     "/mail/poprelay/",
		EnvTimeout:    "3",
		EnvCert:       "/etc/poprelay/c.pem",
		EnvKey:        "/etc/poprelay/k.pem",
		EnvMaxPerHost: "2500",
	}
	c, err := FromEnv(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Endpoints) != 2 || c.Endpoints[1] != "http://10.0.0.2:2379" || c.DialTimeout != 3*time.Second || c.Prefix != "/mail/poprelay/" || c.MaxPerHost != 2500 {
		t.Fatalf("got %+v", c)
	}
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	f := RegisterFlags(fs)
	if err := fs.Parse([]string{"-etcd-endpoints", "http://a:1,http://b:2", "-etcd-timeout", "750ms"}); err != nil {
		t.Fatal(err)
	}
	env[EnvPassword], env[EnvUser] = "pw", "poprelay"
	c, err = f.Resolve(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Endpoints) != 2 || c.Endpoints[0] != "http://a:1" || c.DialTimeout != 750*time.Millisecond || c.Cert != "/etc/poprelay/c.pem" || c.Password != "pw" {
		t.Fatalf("after flags: %+v", c)
	}
	srcs := map[string]string{}
	for _, st := range f.Settings() {
		srcs[st.Name] = st.Source + " " + st.Value
	}
	if srcs["etcd-endpoints"] != "flag --etcd-endpoints http://a:1,http://b:2" || srcs["etcd-cert"] != "env POPRELAY_ETCD_CERT /etc/poprelay/c.pem" ||
		srcs["etcd-password"] != "env POPRELAY_ETCD_PASSWORD (set)" || srcs["etcd-ca"] != "default " {
		t.Fatalf("settings: %q", srcs)
	}
	fs = flag.NewFlagSet("y", flag.ContinueOnError)
	f = RegisterFlags(fs)
	if c, err := f.Resolve(func(string) string { return "" }); err != nil || c.Enabled() {
		t.Fatalf("empty: %+v, %v", c, err)
	}
	if st := f.Settings(); st[7].Name != "etcd-prefix" || st[7].Value != DefaultPrefix || st[8].Value != "5s" ||
		st[9].Name != "etcd-max-per-host" || st[9].Value != "50000" {
		t.Fatalf("defaults: %+v", st)
	}
	for _, bad := range []map[string]string{
		{EnvTimeout: "soon"},
		{EnvCert: "c.pem"},
		{EnvUser: "root"},
		{EnvPrefix: "/no/slash"},
		{EnvMaxPerHost: "0"},
		{EnvMaxPerHost: "-5"},
		{EnvMaxPerHost: "many"},
	} {
		if _, err := FromEnv(func(k string) string { return bad[k] }); !errors.Is(err, ErrConfig) {
			t.Errorf("%v: got %v, want ErrConfig", bad, err)
		}
	}
	if _, err := Open(Config{}, Options{}); !errors.Is(err, ErrConfig) {
		t.Errorf("Open without endpoints: %v", err)
	}
}

func TestBucket(t *testing.T) {
	c := &Cluster{opt: Options{Bucket: time.Minute}}
	base := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct{ exp, end time.Time }{
		{base, base},
		{base.Add(time.Nanosecond), base.Add(time.Minute)},
		{base.Add(59 * time.Second), base.Add(time.Minute)},
	} {
		if got := c.bucketEnd(tc.exp); !got.Equal(tc.end) {
			t.Errorf("bucketEnd(%v) = %v, want %v", tc.exp, got, tc.end)
		}
	}
}

func TestDecodeRejects(t *testing.T) {
	c := &Cluster{grants: DefaultPrefix + "grants/", opt: Options{MaxAge: time.Hour}}
	ok := `{"user":"a","time":"2026-11-26T12:00:00Z","exp":"2026-11-26T13:00:00Z"}`
	if _, _, err := c.decode([]byte(c.grants+"10.0.0.1"), []byte(ok)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ key, value string }{
		{"010.0.0.1", ok},
		{"::FFFF:10.0.0.1", ok},
		{"10.0.0.1/8", ok},
		{"10.0.0.1", `{"user":"a"}`},
		{"10.0.0.1", `not json`},
		{"10.0.0.1", `{"user":"a\u0000+RELAYCLIENT=","time":"2026-11-26T12:00:00Z","exp":"2026-11-26T13:00:00Z"}`},
		{"10.0.0.1", `{"user":"a\nb","time":"2026-11-26T12:00:00Z","exp":"2026-11-26T13:00:00Z"}`},
	} {
		if _, _, err := c.decode([]byte(c.grants+tc.key), []byte(tc.value)); err == nil {
			t.Errorf("decode(%q, %q) accepted", tc.key, tc.value)
		}
	}
}

// runMirror runs a mirror of c until the test ends.
func runMirror(t testing.TB, c *Cluster) *Mirror {
	t.Helper()
	m := c.Mirror(func([]string) {})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return m
}

func runPublisher(t testing.TB, c *Cluster, opt PublisherOptions) *Publisher {
	t.Helper()
	p := c.Publisher(opt)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return p
}

func has(m *Mirror, ip string) bool {
	_, ok, _ := m.Get(ip)
	return ok
}

func TestPublishMirrorRevoke(t *testing.T) {
	e := etcdtest.Start(t)
	now := time.Now()
	pop := open(t, Options{Host: "pop1"}, e.Client)
	smtp := open(t, Options{Host: "smtp1"}, e.Client)
	m := runMirror(t, smtp)
	<-m.Ready()
	p := runPublisher(t, pop, PublisherOptions{})

	alice := grant.Grant{IP: "192.0.2.1", User: "alice", Service: "pop3", Time: now}
	bob := grant.Grant{IP: "2001:db8::1", User: "bob", Service: "imap", Time: now}
	p.Sync([]grant.Grant{alice, bob}, now)
	wait.For(t, "the mirror to see both grants", func() bool { return has(m, alice.IP) && has(m, bob.IP) })
	g, _, _ := m.Get(alice.IP)
	if g.User != "alice" || g.Service != "pop3" || !g.Time.Equal(now) || !g.Expires.Equal(now.Add(time.Hour)) {
		t.Fatalf("mirror has %+v", g)
	}
	shared, err := smtp.ListShared(context.Background())
	if err != nil || len(shared) != 2 || shared[0].Host != "pop1" {
		t.Fatalf("ListShared = %+v, %v", shared, err)
	}

	// Removing a grant on the POP host deletes its key.
	p.Sync([]grant.Grant{alice}, now)
	wait.For(t, "bob to go", func() bool { return !has(m, bob.IP) })

	// A cluster-wide revoke deletes it everywhere and leaves a marker.
	if ok, err := smtp.Revoke(context.Background(), alice.IP, "admin"); err != nil || !ok {
		t.Fatalf("Revoke = %v, %v", ok, err)
	}
	wait.For(t, "alice to go", func() bool { return !has(m, alice.IP) })

	// A delayed replay of the old login is refused ...
	if _, err := pop.share(context.Background(), alice, "pop1"); !errors.Is(err, ErrRevoked) {
		t.Fatalf("replay after revoke: %v, want ErrRevoked", err)
	}
	p.Put(alice)
	wait.For(t, "the publisher to settle", func() bool { return p.Pending() == 0 })
	if st := p.Stats(); st.Refused != 1 {
		t.Fatalf("stats %+v, want one refused", st)
	}
	// ... a new login is not.
	later := alice
	later.Time = time.Now().Add(time.Millisecond)
	p.Put(later)
	wait.For(t, "the new login to arrive", func() bool { return has(m, alice.IP) })

	// RevokeUser and Allow.
	ips, err := smtp.RevokeUser(context.Background(), "alice", "")
	if err != nil || len(ips) != 1 || ips[0] != alice.IP {
		t.Fatalf("RevokeUser = %v, %v", ips, err)
	}
	wait.For(t, "alice to go again", func() bool { return !has(m, alice.IP) })
	allow := grant.Grant{IP: "198.51.100.9", User: "admin", Service: "manual", Time: time.Now(), Expires: time.Now().Add(2 * time.Hour)}
	if err := smtp.Allow(context.Background(), allow); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "the allowance", func() bool { return has(m, allow.IP) })
	list, err := pop.List(context.Background())
	if err != nil || len(list) != 1 || list[0].IP != allow.IP || !list[0].Expires.Equal(allow.Expires) {
		t.Fatalf("List = %+v, %v", list, err)
	}
}

// TestMirrorReadyOrder: the grants of the first read are in the mirror
// and onChange has been told of them before Ready is closed (the order
// Mirror documents), so whoever waits for Ready never acts on an empty
// set.
func TestMirrorReadyOrder(t *testing.T) {
	e := etcdtest.Start(t)
	c := open(t, Options{Host: "smtp1"}, e.Client)
	now := time.Now()
	for _, ip := range []string{"192.0.2.71", "192.0.2.72"} {
		if err := c.Allow(context.Background(), grant.Grant{IP: ip, User: "u", Time: now}); err != nil {
			t.Fatal(err)
		}
	}
	var m *Mirror
	var mu sync.Mutex
	var told []string
	var early bool // Ready closed before onChange ran
	var listed int // what List held when onChange ran
	m = c.Mirror(func(ips []string) {
		mu.Lock()
		defer mu.Unlock()
		select {
		case <-m.Ready():
			early = true
		default:
		}
		gs, _ := m.List()
		listed = len(gs)
		told = append(told, ips...)
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	<-m.Ready()
	mu.Lock()
	defer mu.Unlock()
	if early || len(told) != 2 || listed != 2 {
		t.Fatalf("at Ready: onChange told %v (after Ready: %v), List held %d when told", told, early, listed)
	}
}

func TestNewerWins(t *testing.T) {
	e := etcdtest.Start(t)
	a := open(t, Options{Host: "popA"}, e.Client)
	b := open(t, Options{Host: "popB"}, e.Client)
	ctx := context.Background()
	now := time.Now()
	old := grant.Grant{IP: "192.0.2.7", User: "alice", Service: "pop3", Time: now.Add(-10 * time.Minute)}
	young := grant.Grant{IP: "192.0.2.7", User: "bob", Service: "imap", Time: now}
	if ok, err := b.share(ctx, young, "popB"); err != nil || !ok {
		t.Fatal(ok, err)
	}
	// A's older login (a late replay) does not replace B's.
	if ok, err := a.share(ctx, old, "popA"); err != nil || ok {
		t.Fatalf("older replaced newer: %v %v", ok, err)
	}
	// A removing its own grant does not delete B's.
	if ok, err := a.unshare(ctx, old.IP, a.encode(old, "popA")); err != nil || ok {
		t.Fatalf("A deleted B's grant: %v %v", ok, err)
	}
	gs, _ := a.List(ctx)
	if len(gs) != 1 || gs[0].User != "bob" {
		t.Fatalf("List = %+v", gs)
	}
	// An expired grant is not shared.
	if _, err := a.share(ctx, grant.Grant{IP: "192.0.2.8", Time: now.Add(-2 * time.Hour)}, "popA"); !errors.Is(err, ErrExpired) {
		t.Fatalf("expired grant: %v", err)
	}
}

// TestExpiryLocal: grants close at exp in the mirror on its own, with no
// help from etcd (here the lease outlives exp by minutes): still there
// an instant before exp, gone at exp.
func TestExpiryLocal(t *testing.T) {
	e := etcdtest.Start(t)
	clk := newClock()
	c := open(t, Options{Host: "pop1", Now: clk.Now}, e.Client)
	m := runMirror(t, c)
	<-m.Ready()
	now := clk.Now()
	g := grant.Grant{IP: "192.0.2.9", User: "carol", Service: "pop3", Time: now, Expires: now.Add(10 * time.Minute)}
	if err := c.Allow(context.Background(), g); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "the grant", func() bool { return has(m, g.IP) })
	clk.Set(g.Expires.Add(-time.Nanosecond))
	if !has(m, g.IP) {
		t.Fatal("gone before its exp")
	}
	clk.Set(g.Expires)
	if has(m, g.IP) {
		t.Fatal("still there at its exp")
	}
	// etcd still has the key: the lease only cleans up later.
	resp, err := c.Client().Get(context.Background(), DefaultPrefix+"grants/"+g.IP)
	if err != nil || len(resp.Kvs) != 1 || resp.Kvs[0].Lease == 0 {
		t.Fatalf("key in etcd: %v %v", resp, err)
	}
}

// TestLeaseBuckets: many grants, few leases.
func TestLeaseBuckets(t *testing.T) {
	e := etcdtest.Start(t)
	c := open(t, Options{Host: "pop1"}, e.Client)
	p := runPublisher(t, c, PublisherOptions{Workers: 8})
	now := time.Now()
	var gs []grant.Grant
	// 2000 logins spread over 5 minutes: 5 or 6 one-minute buckets.
	for i := 0; i < 2000; i++ {
		gs = append(gs, grant.Grant{
			IP:      fmt.Sprintf("10.1.%d.%d", i/250, i%250+1),
			User:    fmt.Sprint("u", i),
			Service: "pop3",
			Time:    now.Add(-time.Duration(i) * 150 * time.Millisecond),
		})
	}
	p.Sync(gs, now)
	wait.For(t, "2000 grants written", func() bool { return p.Stats().Written == 2000 })
	resp, err := c.Client().Leases(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("2000 grants, %d leases", len(resp.Leases))
	if n := len(resp.Leases); n < 5 || n > 7 {
		t.Fatalf("%d leases for 2000 grants over 5 minutes, want 5 to 7", n)
	}
	// Each key's lease outlives its exp, by less than a bucket + slack.
	ttl, err := c.Client().TimeToLive(context.Background(), clientv3.LeaseID(resp.Leases[0].ID))
	if err != nil || ttl.TTL <= 0 {
		t.Fatalf("TimeToLive: %v %v", ttl, err)
	}
	kv, err := c.Client().Get(context.Background(), DefaultPrefix+"grants/10.1.0.1")
	if err != nil || len(kv.Kvs) != 1 {
		t.Fatal(err)
	}
	lt, err := c.Client().TimeToLive(context.Background(), clientv3.LeaseID(kv.Kvs[0].Lease))
	if err != nil {
		t.Fatal(err)
	}
	left := time.Duration(lt.TTL) * time.Second
	if want := time.Until(now.Add(time.Hour)); left < want || left > want+90*time.Second+time.Second {
		t.Fatalf("lease has %v left, grant %v", left, want)
	}
}

func TestRevocations(t *testing.T) {
	e := etcdtest.Start(t)
	c := open(t, Options{Host: "pop1"}, e.Client)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := c.Revoke(ctx, "192.0.2.1", "admin"); err != nil {
		t.Fatal(err)
	}
	type rev struct {
		ip string
		at time.Time
	}
	got := make(chan rev, 10)
	go c.Revocations(ctx, func(ip string, at time.Time) { got <- rev{ip, at} })
	before := time.Now()
	if _, err := c.Revoke(ctx, "2001:db8::7", "admin"); err != nil {
		t.Fatal(err)
	}
	want := []string{"192.0.2.1", "2001:db8::7"}
	for i, ip := range want {
		select {
		case r := <-got:
			if r.ip != ip {
				t.Fatalf("revocation %d: %s, want %s", i, r.ip, ip)
			}
			if i == 1 && (r.at.Before(before.Add(-time.Second)) || r.at.After(time.Now())) {
				t.Fatalf("marker time %v", r.at)
			}
		case <-time.After(wait.Patience):
			t.Fatalf("no revocation %d", i)
		}
	}
}

// TestDefaultPerHostCap: with the default caps, one origin host that
// floods etcd keeps at most half of the SMTP host's default total cap,
// so the others' grants keep at least the other half (docs/SECURITY.md,
// guarantee 15): a per-host default equal to the total let one host's
// grants fill it.
func TestDefaultPerHostCap(t *testing.T) {
	if 2*DefaultMaxPerHost > merge.DefaultMaxGrants {
		t.Errorf("DefaultMaxPerHost %d is over half of merge.DefaultMaxGrants %d: one flooding host fills the total cap", DefaultMaxPerHost, merge.DefaultMaxGrants)
	}
}
