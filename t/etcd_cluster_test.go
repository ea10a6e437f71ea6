package t

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/poprelay/poprelay/internal/etcdtest"
	"github.com/poprelay/poprelay/internal/grant"
	"github.com/poprelay/poprelay/internal/share"
	"github.com/poprelay/poprelay/internal/wait"
)

// shareOpen opens a share.Cluster on endpoints, closed at test end.
func shareOpen(t testing.TB, host string, endpoints ...string) *share.Cluster {
	t.Helper()
	// Requests may take 30s: on a busy machine a request that should
	// succeed must not time out.
	c, err := share.Open(share.Config{Endpoints: endpoints, DialTimeout: 30 * time.Second},
		share.Options{Host: host, Logf: func(f string, a ...any) { t.Logf(host+": "+f, a...) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// seen records when a mirror first reported each IP.
type seen struct {
	mu sync.Mutex
	at map[string]time.Time
}

func (s *seen) add(ips []string) {
	now := time.Now()
	s.mu.Lock()
	for _, ip := range ips {
		if _, ok := s.at[ip]; !ok {
			s.at[ip] = now
		}
	}
	s.mu.Unlock()
}

func (s *seen) when(ip string) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.at[ip]
	return t, ok
}

// runShare runs a mirror and a publisher until the test ends.
func runShare(t testing.TB, smtp, pop *share.Cluster, popt share.PublisherOptions) (*share.Mirror, *seen, *share.Publisher) {
	t.Helper()
	s := &seen{at: map[string]time.Time{}}
	m := smtp.Mirror(s.add)
	p := pop.Publisher(popt)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); m.Run(ctx) }()
	go func() { defer wg.Done(); p.Run(ctx) }()
	t.Cleanup(func() { cancel(); wg.Wait() })
	select {
	case <-m.Ready():
	case <-time.After(wait.Patience):
		t.Fatal("mirror not ready")
	}
	return m, s, p
}

// TestEtcdClusterLeaderKill: three etcd members on loopback; the leader
// is killed in the middle of a stream of logins. No grant is lost: every
// one reaches the mirror, and propagation resumes.
func TestEtcdClusterLeaderKill(t *testing.T) {
	nodes := etcdtest.StartCluster(t, 3)
	var eps []string
	for _, n := range nodes {
		eps = append(eps, n.Client)
	}
	pop := shareOpen(t, "pop1", eps...)
	smtp := shareOpen(t, "smtp1", eps...)
	m, s, p := runShare(t, smtp, pop, share.PublisherOptions{})

	const n, rate = 400, 100 // logins, per second
	var all []string
	killAt := n / 3
	var killed *etcdtest.Node
	var killTime time.Time
	cli := etcdtest.Client(t, eps...)
	tick := time.NewTicker(time.Second / rate)
	defer tick.Stop()
	start := time.Now()
	for i := 0; i < n; i++ {
		<-tick.C
		if i == killAt {
			wait.For(t, "a leader", func() bool {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				for _, e := range nodes {
					if e.IsLeader(ctx, cli) {
						killed = e
					}
				}
				return killed != nil
			})
			killed.Kill()
			killTime = time.Now()
			t.Logf("killed the leader %s after %d logins", killed.Name, i)
		}
		g := grant.Grant{IP: fmt.Sprintf("10.9.%d.%d", i/200, i%200+1), User: fmt.Sprint("u", i), Service: "pop3", Time: time.Now()}
		all = append(all, g.IP)
		p.Put(g)
	}
	t.Logf("%d logins in %v", n, time.Since(start).Round(time.Millisecond))
	wait.For(t, "every grant in the mirror", func() bool {
		gs, _ := m.List()
		return len(gs) == n
	})
	var worst time.Duration
	for _, ip := range all[killAt:] {
		if at, ok := s.when(ip); ok && at.Sub(killTime) > worst {
			worst = at.Sub(killTime)
		}
	}
	t.Logf("all %d grants mirrored; the last one of the stream arrived %v after the kill; publisher %+v", n, worst.Round(time.Millisecond), p.Stats())

	// Propagation resumes on the two survivors.
	g := grant.Grant{IP: "10.9.9.9", User: "after", Service: "imap", Time: time.Now()}
	t0 := time.Now()
	p.Put(g)
	wait.For(t, "a login after the failover", func() bool { _, ok := s.when(g.IP); return ok })
	t.Logf("a login after the failover: %v", time.Since(t0).Round(time.Microsecond))

	// The killed member comes back and catches up.
	killed.Start()
	killed.WaitReady()
	one := etcdtest.Client(t, killed.Client)
	resp, err := one.Get(context.Background(), share.DefaultPrefix+"grants/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count != n+1 {
		t.Fatalf("restarted member has %v grants (%v), want %d", resp.Count, err, n+1)
	}
}
