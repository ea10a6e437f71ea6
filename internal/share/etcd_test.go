package share

import (
	"testing"
	"time"
)

// open returns a Cluster for the endpoints, closed at test end.
func open(t testing.TB, opt Options, endpoints ...string) *Cluster {
	t.Helper()
	if opt.Logf == nil {
		opt.Logf = t.Logf
	}
	c, err := Open(Config{Endpoints: endpoints, DialTimeout: 2 * time.Second}, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
