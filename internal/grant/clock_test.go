package grant

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestClockSetBack: a grant written before the clock was set back a year
// has a login time and an expiry a year ahead. Capped, it must keep its
// own length (two hours here) from now, not last the year; Expire then
// removes it on time.
func TestClockSetBack(t *testing.T) {
	s, _ := logStore(t)
	now := time.Now()
	ahead := now.Add(365 * 24 * time.Hour)
	os.WriteFile(filepath.Join(s.Dir, "1.2.3.7"), fmt.Appendf(nil, "user=a\nservice=manual\ntime=%d\nexpires=%d\n", ahead.Unix(), ahead.Add(2*time.Hour).Unix()), 0o640)
	check := func(what string, g Grant) {
		t.Helper()
		if left := g.Expiry(time.Hour).Sub(now); left > 2*time.Hour+time.Second || left < 2*time.Hour-time.Minute {
			t.Errorf("%s: expires in %v, want 2h from now (time %v, expires %v)", what, left, g.Time, g.Expires)
		}
	}
	gs, err := s.List()
	if err != nil || len(gs) != 1 {
		t.Fatalf("List = %v, %v", gs, err)
	}
	check("List", gs[0])
	g, ok, err := s.Get("1.2.3.7")
	if err != nil || !ok {
		t.Fatalf("Get = %v, %v", ok, err)
	}
	check("Get", g)
	// Record of such a grant (relayctl allow with a clock ahead) too.
	s.Record(Grant{IP: "1.2.3.8", User: "a", Service: "manual", Time: ahead, Expires: ahead.Add(2 * time.Hour)})
	g, _, _ = s.Get("1.2.3.8")
	check("Record", g)
	// Expire rewrites the capped grant and removes it after its 2 hours.
	if gone, err := expire(s, now, time.Hour); err != nil || len(gone) != 0 {
		t.Fatalf("Expire(now) = %v, %v", gone, err)
	}
	g, _, _ = s.Get("1.2.3.7")
	check("after Expire", g)
	if gone, _ := expire(s, now.Add(2*time.Hour+time.Second), time.Hour); len(gone) != 2 {
		t.Errorf("Expire 2h later removed %v, want both", gone)
	}
}
