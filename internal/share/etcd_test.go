package share

import (
	"sync"
	"testing"
	"time"
)

// open returns a Cluster for the endpoints, closed at test end. Its
// requests may take 30 seconds: a request a test expects to succeed must
// not fail because the machine is busy.
func open(t testing.TB, opt Options, endpoints ...string) *Cluster {
	t.Helper()
	return openTimeout(t, opt, 30*time.Second, endpoints...)
}

// openQuick is open for a host that must notice soon that etcd is down
// (a publisher keeping a backlog, a mirror falling back on its cache):
// its requests give up after 2 seconds. Expect no one-shot request
// through it to succeed on a busy machine.
func openQuick(t testing.TB, opt Options, endpoints ...string) *Cluster {
	t.Helper()
	return openTimeout(t, opt, 2*time.Second, endpoints...)
}

func openTimeout(t testing.TB, opt Options, d time.Duration, endpoints ...string) *Cluster {
	t.Helper()
	if opt.Logf == nil {
		opt.Logf = t.Logf
	}
	c, err := Open(Config{Endpoints: endpoints, DialTimeout: d}, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// clock is a test's clock for Options.Now: it stands still until the
// test moves it, so a test checks expiry at its exact instant instead of
// waiting for it in real time.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Now()} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	c.now = t
	c.mu.Unlock()
}
