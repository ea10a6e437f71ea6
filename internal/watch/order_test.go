package watch

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/poprelay/poprelay/internal/grant"
)

// TestReorder: after any sequence of adds, refreshes and removals, the
// incrementally kept order holds exactly the map's grants, in address
// order, each with its latest content.
func TestReorder(t *testing.T) {
	rnd := rand.New(rand.NewPCG(3, 5))
	w := New(Config{Spool: "/nonexistent", Rules: ""})
	ips := func() string {
		if rnd.IntN(4) == 0 {
			return fmt.Sprintf("2001:db8::%x", rnd.IntN(300))
		}
		return fmt.Sprintf("10.%d.%d.%d", rnd.IntN(3), rnd.IntN(4), rnd.IntN(40))
	}
	for round := range 300 {
		if round%50 == 0 {
			// As after a full scan: the whole map, sorted.
			var gs []grant.Grant
			for _, g := range w.grants {
				gs = append(gs, g)
			}
			grant.SortByAddr(gs)
			w.order.reset(gs)
		}
		clear(w.changed)
		for range rnd.IntN(20) {
			ip := ips()
			if rnd.IntN(3) == 0 {
				delete(w.grants, ip)
			} else {
				w.grants[ip] = grant.Grant{IP: ip, User: fmt.Sprint("u", round), Service: "pop3", Time: time.Unix(int64(round), 0)}
			}
			w.changed[ip] = time.Now()
		}
		w.order.update(w.grants, w.changed)
		if len(w.order.gs) != len(w.grants) || len(w.order.addrs) != len(w.order.gs) {
			t.Fatalf("round %d: order has %d grants (%d addresses), map %d", round, len(w.order.gs), len(w.order.addrs), len(w.grants))
		}
		for i, g := range w.order.gs {
			if w.grants[g.IP] != g {
				t.Fatalf("round %d: %s is stale in the order", round, g.IP)
			}
			if w.order.addrs[i] != netip.MustParseAddr(g.IP) {
				t.Fatalf("round %d: address of %s out of step", round, g.IP)
			}
			if i > 0 && !w.order.addrs[i-1].Less(w.order.addrs[i]) {
				t.Fatalf("round %d: %s before %s", round, w.order.gs[i-1].IP, g.IP)
			}
		}
		if !slices.IsSortedFunc(w.order.addrs, netip.Addr.Compare) {
			t.Fatalf("round %d: not sorted", round)
		}
	}
}
