package t

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strconv"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/poprelay/poprelay/internal/etcdtest"
	"github.com/poprelay/poprelay/internal/grant"
	"github.com/poprelay/poprelay/internal/share"
	"github.com/poprelay/poprelay/internal/wait"
)

// TestEtcdLatency measures publish → mirror latency against a real etcd
// holding many live grants: logins at a steady rate go through a
// Publisher, and a Mirror (as on an SMTP host) reports them. The preload
// is 100k grants (10k with -short; POPRELAY_ETCD_PRELOAD overrides).
func TestEtcdLatency(t *testing.T) {
	benchOnly(t)
	preload, logins, rate := 100000, 2000, 200
	if testing.Short() {
		preload, logins = 10000, 400
	}
	if s := os.Getenv("POPRELAY_ETCD_PRELOAD"); s != "" {
		preload, _ = strconv.Atoi(s)
	}
	e := etcdtest.Start(t)
	cli := etcdtest.Client(t, e.Client)

	t0 := time.Now()
	preloadGrants(t, cli, preload)
	t.Logf("preloaded %d grants in %v", preload, time.Since(t0).Round(time.Millisecond))

	pop := shareOpen(t, "pop1", e.Client)
	smtp := shareOpen(t, "smtp1", e.Client)
	t0 = time.Now()
	m, s, p := runShare(t, smtp, pop, share.PublisherOptions{})
	t.Logf("mirror's first full read: %v", time.Since(t0).Round(time.Millisecond))
	if gs, err := m.List(); err != nil || len(gs) != preload {
		t.Fatalf("mirror has %d grants (%v), want %d", len(gs), err, preload)
	}

	var ru0 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	sent := make(map[string]time.Time, logins)
	tick := time.NewTicker(time.Second / time.Duration(rate))
	t0 = time.Now()
	for i := 0; i < logins; i++ {
		<-tick.C
		g := grant.Grant{IP: fmt.Sprintf("2001:db8::%x", i+1), User: fmt.Sprint("u", i), Service: "imap", Time: time.Now()}
		sent[g.IP] = time.Now()
		p.Put(g)
	}
	tick.Stop()
	wait.For(t, "every login in the mirror", func() bool {
		gs, _ := m.List()
		return len(gs) == preload+logins
	})
	wall := time.Since(t0)
	var ru1 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	var lat []time.Duration
	for ip, at := range sent {
		got, ok := s.when(ip)
		if !ok {
			t.Fatalf("%s never reported", ip)
		}
		lat = append(lat, got.Sub(at))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(q float64) time.Duration { return lat[int(q*float64(len(lat)-1))].Round(10 * time.Microsecond) }
	cpu := time.Duration(ru1.Utime.Nano()+ru1.Stime.Nano()-ru0.Utime.Nano()-ru0.Stime.Nano()) / time.Duration(1)
	t.Logf("%d logins at %d/s over %d preloaded grants: publish → mirror p50 %v, p90 %v, p99 %v, max %v",
		logins, rate, preload, pct(0.5), pct(0.9), pct(0.99), lat[len(lat)-1].Round(10*time.Microsecond))
	t.Logf("test process (publisher + mirror + client) CPU %v over %v wall (%.0f%% of a core); max RSS %d MB; etcd RSS %d MB; leases in etcd: %d",
		cpu.Round(time.Millisecond), wall.Round(time.Millisecond), 100*cpu.Seconds()/wall.Seconds(), ru1.Maxrss/1024, e.RSS()/1024, leaseCount(t, cli))
	if p99 := lat[int(0.99*float64(len(lat)-1))]; p99 > time.Second {
		t.Logf("NOTE: p99 %v is over the 1s goal", p99)
	}
}

// preloadGrants writes n grants (10.x.y.z, one hour left) straight into
// etcd, in transactions of 128 puts, in the documented JSON, on one
// two-hour lease, from four POP hosts (pop0 to pop3) in turn: 100k of
// them stay within the default per-host cap (share.DefaultMaxPerHost).
func preloadGrants(t testing.TB, cli *clientv3.Client, n int) {
	t.Helper()
	ctx := context.Background()
	lease, err := cli.Grant(ctx, 7200)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	var ops []clientv3.Op
	flush := func() {
		if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			t.Fatal(err)
		}
		ops = ops[:0]
	}
	for i := 0; i < n; i++ {
		v, _ := json.Marshal(map[string]any{"user": fmt.Sprint("user", i), "service": "pop3", "host": fmt.Sprint("pop", i%4),
			"time": now, "exp": now.Add(time.Hour)})
		ip := fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255)
		ops = append(ops, clientv3.OpPut(share.DefaultPrefix+"grants/"+ip, string(v), clientv3.WithLease(lease.ID)))
		if len(ops) == 128 {
			flush()
		}
	}
	if len(ops) > 0 {
		flush()
	}
}

func leaseCount(t testing.TB, cli *clientv3.Client) int {
	resp, err := cli.Leases(context.Background())
	if err != nil {
		return -1
	}
	return len(resp.Leases)
}
