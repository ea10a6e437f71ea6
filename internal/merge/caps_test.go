package merge

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/poprelay/poprelay/internal/cdbtest"
	"github.com/poprelay/poprelay/internal/grant"
	"github.com/poprelay/poprelay/internal/rules"
)

// at is a grant of user from ip, logged in ago before now.
func at(ip, user string, ago time.Duration) grant.Grant {
	return grant.Grant{IP: ip, User: user, Service: "pop3", Time: now.Add(-ago)}
}

// TestCaps: which grants the caps leave published, through Write, the
// Set, Capped and ClassifyAll alike: the newest of each user (ties by
// address), users without a name uncapped, expired and refused grants not
// counted, denied ones counted, the total cap over what the per-user cap
// kept.
func TestCaps(t *testing.T) {
	const static = "10.9.:deny\n:allow\n"
	m := time.Minute
	alice := func(n int) []grant.Grant {
		var gs []grant.Grant
		for i := range n {
			gs = append(gs, at(fmt.Sprintf("2001:db8::%x", i+1), "alice", time.Duration(n-i)*m)) // ::n newest
		}
		return gs
	}
	tests := []struct {
		name   string
		caps   Caps
		gs     []grant.Grant
		want   []string          // published, by address
		reason map[string]string // refused by a cap: "user" or "total"
		sum    Summary           // Capped, OverCap only
	}{
		{name: "no caps", gs: alice(5),
			want: []string{"2001:db8::1", "2001:db8::2", "2001:db8::3", "2001:db8::4", "2001:db8::5"}},
		{name: "at the cap", caps: Caps{PerUser: 5}, gs: alice(5),
			want: []string{"2001:db8::1", "2001:db8::2", "2001:db8::3", "2001:db8::4", "2001:db8::5"}},
		{name: "over the cap: the newest", caps: Caps{PerUser: 2}, gs: alice(5),
			want:   []string{"2001:db8::4", "2001:db8::5"},
			reason: map[string]string{"2001:db8::1": "user", "2001:db8::2": "user", "2001:db8::3": "user"},
			sum:    Summary{Capped: 3}},
		{name: "ties broken by address", caps: Caps{PerUser: 2},
			gs:     []grant.Grant{at("10.0.0.3", "bob", m), at("10.0.0.1", "bob", m), at("10.0.0.2", "bob", m), at("10.0.0.9", "bob", 2*m)},
			want:   []string{"10.0.0.1", "10.0.0.2"},
			reason: map[string]string{"10.0.0.3": "user", "10.0.0.9": "user"},
			sum:    Summary{Capped: 2}},
		{name: "each user on their own", caps: Caps{PerUser: 1},
			gs:     []grant.Grant{at("10.0.0.1", "bob", m), at("10.0.0.2", "bob", 2*m), at("10.0.0.3", "carol", 3*m), at("10.0.0.4", "Bob", 4*m)},
			want:   []string{"10.0.0.1", "10.0.0.3", "10.0.0.4"},
			reason: map[string]string{"10.0.0.2": "user"},
			sum:    Summary{Capped: 1}},
		{name: "no user, no per-user cap", caps: Caps{PerUser: 1},
			gs:   []grant.Grant{at("10.0.0.1", "", m), at("10.0.0.2", "", 2*m), at("10.0.0.3", "", 3*m)},
			want: []string{"10.0.0.1", "10.0.0.2", "10.0.0.3"}},
		{name: "expired and refused grants do not count", caps: Caps{PerUser: 1},
			gs:   []grant.Grant{at("10.0.0.1", "bob", 2*time.Hour), at("10.7.0.1", "bob", m), at("10.0.0.2", "bob", 3*m)},
			want: []string{"10.0.0.2"}},
		{name: "a denied grant counts", caps: Caps{PerUser: 1},
			gs:     []grant.Grant{at("10.9.0.1", "bob", m), at("10.0.0.2", "bob", 3*m)},
			want:   nil,
			reason: map[string]string{"10.0.0.2": "user"},
			sum:    Summary{Capped: 1}},
		{name: "total: the newest", caps: Caps{Total: 2},
			gs:     []grant.Grant{at("10.0.0.1", "a", 3*m), at("10.0.0.2", "b", m), at("10.0.0.3", "", 2*m)},
			want:   []string{"10.0.0.2", "10.0.0.3"},
			reason: map[string]string{"10.0.0.1": "total"},
			sum:    Summary{OverCap: 1}},
		{name: "total after the per-user cap", caps: Caps{PerUser: 2, Total: 3},
			gs: append(alice(4), at("10.0.0.1", "b", 10*m), at("10.0.0.2", "c", 30*time.Second)),
			// alice's ::3 and ::4 (1 and 2 minutes ago), then c, then
			// b (10 minutes) is past the total of 3.
			want:   []string{"10.0.0.2", "2001:db8::3", "2001:db8::4"},
			reason: map[string]string{"2001:db8::1": "user", "2001:db8::2": "user", "10.0.0.1": "total"},
			sum:    Summary{Capped: 2, OverCap: 1}},
		{name: "total: ties at the cut by address", caps: Caps{Total: 2},
			gs:     []grant.Grant{at("10.0.0.4", "a", m), at("10.0.0.2", "b", m), at("10.0.0.3", "c", m), at("10.0.0.1", "d", 2*m), at("10.0.0.9", "e", 0)},
			want:   []string{"10.0.0.2", "10.0.0.9"},
			reason: map[string]string{"10.0.0.1": "total", "10.0.0.3": "total", "10.0.0.4": "total"},
			sum:    Summary{OverCap: 3}},
		{name: "total: the user-less first", caps: Caps{PerUser: 5, Total: 3},
			gs: []grant.Grant{at("10.0.0.1", "", 50*m), at("10.0.0.2", "", 40*m), at("10.0.0.3", "a", m), at("10.0.0.4", "b", 2*m), at("10.0.0.5", "a", 3*m)},
			// the admin's two, older, then a's newest
			want:   []string{"10.0.0.1", "10.0.0.2", "10.0.0.3"},
			reason: map[string]string{"10.0.0.4": "total", "10.0.0.5": "total"},
			sum:    Summary{OverCap: 2}},
		{name: "total: more user-less than the total", caps: Caps{Total: 2},
			gs:     []grant.Grant{at("10.0.0.1", "", 50*m), at("10.0.0.2", "", 40*m), at("10.0.0.3", "", 30*m), at("10.0.0.4", "b", m)},
			want:   []string{"10.0.0.2", "10.0.0.3"},
			reason: map[string]string{"10.0.0.1": "total", "10.0.0.4": "total"},
			sum:    Summary{OverCap: 2}},
		{name: "at the total", caps: Caps{Total: 3},
			gs:   []grant.Grant{at("10.0.0.1", "a", 3*m), at("10.0.0.2", "b", m), at("10.0.0.3", "", 2*m)},
			want: []string{"10.0.0.1", "10.0.0.2", "10.0.0.3"}},
	}
	rs, err := rules.Parse(strings.NewReader(static), "tcp.smtp")
	if err != nil {
		t.Fatal(err)
	}
	ix := rules.NewIndex(rs)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opt := Options{Now: now, MaxAge: time.Hour, Never: refuser{"10.7."}, Caps: tc.caps}
			db, sum := build(t, static, tc.gs, opt)
			var got []string
			for _, g := range tc.gs {
				if strings.Contains(decide(t, db, g.IP), "RELAYCLIENT") {
					got = append(got, g.IP)
				}
			}
			slices.Sort(got)
			if !slices.Equal(got, tc.want) {
				t.Errorf("published %q, want %q", got, tc.want)
			}
			if sum.Capped != tc.sum.Capped || sum.OverCap != tc.sum.OverCap {
				t.Errorf("summary: %d capped, %d over the total; want %d, %d", sum.Capped, sum.OverCap, tc.sum.Capped, tc.sum.OverCap)
			}
			// The Set, put in the reverse order, writes the same.
			set := NewSet(rs, opt)
			for _, g := range slices.Backward(tc.gs) {
				set.Put(g)
			}
			var f cdbtest.File
			if ssum, _, err := set.Write(&f, now); err != nil || !bytes.Equal(f.Bytes(), db) || ssum != sum {
				t.Errorf("the Set differs from Write: %v, summary %+v / %+v", err, ssum, sum)
			}
			// Capped and ClassifyAll tell the same, with the reason.
			why := Capped(tc.gs, opt)
			ens, err := ClassifyAll(ix, tc.gs, opt)
			if err != nil {
				t.Fatal(err)
			}
			for i, g := range tc.gs {
				want := ""
				switch tc.reason[g.IP] {
				case "user":
					want = tc.caps.CapReason(CapUser)
				case "total":
					want = tc.caps.CapReason(CapTotal)
				}
				if why[i] != want || (want != "" && ens[i].Refused != want) || IsCapReason(why[i]) != (want != "") {
					t.Errorf("%s: Capped %q, ClassifyAll %q; want %q", g.IP, why[i], ens[i].Refused, want)
				}
			}
		})
	}
}

// TestSetCapEvicts: a Set at the cap, as the watcher keeps it: each new
// login of the user publishes it and takes the user's oldest out of the
// image; the oldest comes back once a newer one is revoked.
func TestSetCapEvicts(t *testing.T) {
	rs, _ := rules.Parse(strings.NewReader(":allow\n"), "tcp.smtp")
	opt := Options{MaxAge: time.Hour, Caps: Caps{PerUser: 3}}
	set := NewSet(rs, opt)
	clock := now
	var f cdbtest.File
	publish := func() []byte {
		f = cdbtest.File{}
		if _, _, err := set.Write(&f, clock); err != nil {
			t.Fatal(err)
		}
		return f.Bytes()
	}
	relays := func(db []byte, ip string) bool { return strings.Contains(decide(t, db, ip), "RELAYCLIENT") }
	for i := range 10 {
		ip := fmt.Sprintf("2001:db8:0:1::%x", i+1)
		clock = clock.Add(time.Second)
		set.Put(grant.Grant{IP: ip, User: "mallory", Service: "imap", Time: clock})
		db := publish()
		if !relays(db, ip) {
			t.Fatalf("login %d: %s not published", i, ip)
		}
		for j := range i + 1 {
			old := fmt.Sprintf("2001:db8:0:1::%x", j+1)
			if want := j > i-3; relays(db, old) != want {
				t.Fatalf("after login %d: %s published %v, want %v", i, old, !want, want)
			}
		}
	}
	set.Delete("2001:db8:0:1::a")
	if db := publish(); !relays(db, "2001:db8:0:1::7") || relays(db, "2001:db8:0:1::6") {
		t.Fatalf("after revoking the newest, the fourth newest is not back alone")
	}
}

// TestNewest: newest picks exactly the k newest of any input, ties in
// time and all, as a sort would.
func TestNewest(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 300 {
		n := rng.IntN(400)
		cs := make([]capCand, n)
		for i := range cs {
			cs[i] = capCand{t: int64(rng.IntN(1 + round%20)), hi: uint64(rng.IntN(3)), lo: uint64(rng.IntN(50)), id: int32(i)}
		}
		k := 0
		if n > 0 {
			k = rng.IntN(n + 1)
		}
		want := slices.Clone(cs)
		slices.SortFunc(want, newer)
		newest(cs, k)
		got := slices.Clone(cs[:k])
		slices.SortFunc(got, newer)
		if !slices.Equal(got, want[:k]) {
			t.Fatalf("round %d: n %d k %d: the k newest differ", round, n, k)
		}
	}
}

// TestKthNewestTime: the cut is the k-th largest time, and the count of
// those newer is exact, for inputs full of ties.
func TestKthNewestTime(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for round := range 500 {
		n := 1 + rng.IntN(300)
		ts := make([]int64, n)
		for i := range ts {
			ts[i] = int64(rng.IntN(1 + round%40))
		}
		k := 1 + rng.IntN(n)
		sorted := slices.Clone(ts)
		slices.Sort(sorted)
		slices.Reverse(sorted)
		want, wantNewer := sorted[k-1], 0
		for _, x := range sorted {
			if x > want {
				wantNewer++
			}
		}
		if cut, newer := kthNewestTime(ts, k); cut != want || newer != wantNewer {
			t.Fatalf("round %d: n %d k %d: cut %d, %d newer; want %d, %d", round, n, k, cut, newer, want, wantNewer)
		}
	}
}
