package merge

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/poprelay/poprelay/internal/cdb"
	"github.com/poprelay/poprelay/internal/cdbtest"
	"github.com/poprelay/poprelay/internal/grant"
	"github.com/poprelay/poprelay/internal/rules"
)

// setStatic is a rules file with every kind of rule a grant can meet.
const setStatic = `10.1.2.3:deny
10.1.:deny
10.2.:allow,QMAILQUEUE="/var/qmail/bin/qq",DATABYTES="100"
10.3.0.7:allow,RELAYCLIENT="@x"
::ffff:10.4.0.9:deny
::ffff:10.5.:deny
10.6.:allow,RBLSMTPD="-go away"
2001:db8:1::5:allow
2001:db8:2:deny
2001:db8:3:allow,X="y"
2001:db8::1:1:1:1:deny
2001:db8::1:1:0:1:allow,Y="z"
=mail.example.com:allow,RELAYCLIENT=""
:allow,DATABYTES="5"
`

// randomGrant is a grant for one of a few hundred addresses near the
// rules, some expired, some with their own expiry or floor, a few not in
// canonical form.
func randomGrant(rng *rand.Rand, now time.Time) grant.Grant {
	var ip string
	switch rng.IntN(10) {
	case 0, 1, 2, 3, 4:
		ip = fmt.Sprintf("10.%d.%d.%d", rng.IntN(8), rng.IntN(3), rng.IntN(12))
	case 5, 6:
		ip = fmt.Sprintf("2001:db8:%x::%x", rng.IntN(5), rng.IntN(9))
	case 7:
		// tcpserver's text compresses the lone zero group; some end in ':'.
		ip = netip.MustParseAddr(fmt.Sprintf("2001:db8:0:%x:1:1:%x:%x", rng.IntN(2), rng.IntN(2), rng.IntN(2))).String()
	case 8:
		ip = fmt.Sprintf("192.0.2.%d", rng.IntN(20))
	default:
		ip = []string{"010.1.1.1", "2001:DB8::1", "::ffff:10.2.0.1", "1.2.3.4.5"}[rng.IntN(4)]
	}
	g := grant.Grant{IP: ip, User: fmt.Sprintf("u%d\x00x", rng.IntN(5)), Service: "pop3",
		Time: now.Add(-time.Duration(rng.IntN(7200)) * time.Second)}
	if rng.IntN(12) == 0 {
		g.User = "" // relayctl allow without --user: no one's, no per-user cap
	}
	switch rng.IntN(6) {
	case 0:
		g.Expires = g.Time.Add(time.Duration(rng.IntN(5)) * time.Hour)
	case 1:
		g.Keep = now.Add(time.Duration(rng.IntN(3)-1) * time.Hour)
	}
	return g
}

// TestSetMatchesWrite: a Set kept current through thousands of random
// puts, deletes, option and rules changes writes, at every step and for
// a clock that moves (and now and then goes back), the very bytes Write
// writes from scratch for the same rules and grants, and counts the same.
// Most steps change a few grants and nothing else, so the Set makes its
// database from the last one (image); the never-grant sets are pointers,
// kept by identity as relayctl watch keeps its set. The caps come and go:
// five users hold a few dozen grants each, so a per-user cap of 3 or 10
// refuses most of them (a new login of a user at the cap evicts the
// user's oldest from the image, an expiry lets an older one back in), and
// a total cap of 25 or 60 is crossed both ways as grants come and expire.
func TestSetMatchesWrite(t *testing.T) {
	rs, err := rules.Parse(strings.NewReader(setStatic), "tcp.smtp")
	if err != nil {
		t.Fatal(err)
	}
	rs2, err := rules.Parse(strings.NewReader("10.2.:deny\n2001:db8:3::4:allow,Z=\"1\"\n:deny\n"), "tcp.smtp")
	if err != nil {
		t.Fatal(err)
	}
	capsList := []Caps{{}, {PerUser: 3}, {PerUser: 10, Total: 60}, {Total: 25}, {PerUser: 1, Total: 40}, {Total: 5}}
	capped, over, ahead, noUserOver := 0, 0, 0, 0
	for seed := range uint64(6) {
		rng := rand.New(rand.NewPCG(seed, 7))
		clock := now
		never1, never2 := &refuser{"10.7.", "192.0.2.3"}, &refuser{"10.2.0.", "2001:db8:1::1"}
		opt := Options{MaxAge: time.Hour, Never: never1, Caps: capsList[seed%uint64(len(capsList))]}
		cur := rs
		set := NewSet(cur, opt)
		have := map[string]grant.Grant{}
		var f cdbtest.File
		for step := range 600 {
			n := rng.IntN(8)
			if rng.IntN(30) == 0 {
				n = 150 // a rescan's worth: the full merge of order
			}
			for range n {
				g := randomGrant(rng, clock)
				if rng.IntN(4) == 0 {
					set.Delete(g.IP)
					delete(have, g.IP)
				} else {
					set.Put(g)
					have[g.IP] = g
				}
			}
			switch rng.IntN(40) {
			case 0:
				opt.KeepRBL = !opt.KeepRBL
			case 1:
				opt.RemoteInfo = !opt.RemoteInfo
			case 4:
				opt.Mapped = !opt.Mapped
			case 2:
				if opt.Never == never1 {
					opt.Never = never2
				} else {
					opt.Never = never1
				}
			case 5, 6:
				opt.Caps = capsList[rng.IntN(len(capsList))]
			case 3:
				if &cur[0] == &rs[0] {
					cur = rs2
				} else {
					cur = rs
				}
			}
			set.Configure(cur, opt)
			clock = clock.Add(time.Duration(rng.IntN(300)) * time.Second)
			if rng.IntN(50) == 0 {
				clock = clock.Add(-time.Duration(rng.IntN(3600)) * time.Second) // set back
			}

			var gs []grant.Grant
			for _, g := range have {
				gs = append(gs, g)
			}
			o := opt
			o.Now = clock
			var want cdbtest.File
			w := cdb.NewWriter(&want)
			wsum, err := Write(w, cur, gs, o)
			if err != nil {
				t.Fatal(err)
			}
			if err := w.Finish(); err != nil {
				t.Fatal(err)
			}
			f = cdbtest.File{}
			sum, next, err := set.Write(&f, clock)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(f.Bytes(), want.Bytes()) {
				t.Fatalf("seed %d step %d: the Set's CDB differs from Write's (%d grants)\nset:   %s\nwrite: %s",
					seed, step, len(gs), dump(t, f.Bytes()), dump(t, want.Bytes()))
			}
			if sum != wsum {
				t.Fatalf("seed %d step %d: summary %+v, Write's %+v", seed, step, sum, wsum)
			}
			capped += sum.Capped
			over += sum.OverCap
			// The user-less come first for the total cap: count the
			// publishes where one older than a user's grant the total
			// cap refused is published, and those where the total cap
			// refuses user-less grants too.
			why := Capped(gs, o)
			var oldestNoUser, newestOver time.Time
			for i, g := range gs {
				switch {
				case why[i] == o.Caps.CapReason(CapTotal) && g.User == "":
					noUserOver++
				case why[i] == o.Caps.CapReason(CapTotal):
					if g.Time.After(newestOver) {
						newestOver = g.Time
					}
				case why[i] == "" && g.User == "" && g.Expiry(o.MaxAge).After(clock):
					if oldestNoUser.IsZero() || g.Time.Before(oldestNoUser) {
						oldestNoUser = g.Time
					}
				}
			}
			if !oldestNoUser.IsZero() && oldestNoUser.Before(newestOver) {
				ahead++
			}
			var wantNext time.Time
			for _, g := range gs {
				if e := g.Expiry(opt.MaxAge); e.After(clock) && (wantNext.IsZero() || e.Before(wantNext)) {
					wantNext = e
				}
			}
			if !next.Equal(wantNext) {
				t.Fatalf("seed %d step %d: next expiry %v, want %v", seed, step, next, wantNext)
			}
		}
	}
	if capped == 0 || over == 0 || ahead == 0 || noUserOver == 0 {
		t.Fatalf("the caps never bit: %d grants refused by the per-user cap, %d by the total cap; %d publishes kept a user-less grant older than a refused user's, %d user-less refused",
			capped, over, ahead, noUserOver)
	}
}

// TestSetPublishAllocs: a publish after a few changes allocates nothing
// per grant: the same handful of allocations with 20,000 grants as with
// 2,000; without caps, with the default caps and a user each, and with
// every grant one user's (the caps refusing all but the newest) or over
// the total cap.
func TestSetPublishAllocs(t *testing.T) {
	rs, _ := rules.Parse(strings.NewReader(setStatic), "tcp.smtp")
	defaults := Caps{PerUser: DefaultMaxPerUser, Total: DefaultMaxGrants}
	for _, tc := range []struct {
		name    string
		caps    Caps
		oneUser bool
	}{{"no caps", Caps{}, true}, {"default caps", defaults, false}, {"one user over the cap", defaults, true}, {"over the total", Caps{Total: 1000}, false}} {
		allocs := func(n int) float64 {
			set := NewSet(rs, Options{MaxAge: time.Hour, Caps: tc.caps})
			user := func(i int) string {
				if tc.oneUser {
					return "u"
				}
				return fmt.Sprint("u", i)
			}
			for i := range n {
				set.Put(grant.Grant{IP: fmt.Sprintf("172.%d.%d.%d", 16+i>>16, i>>8&255, i&255), User: user(i), Service: "pop3", Time: now})
			}
			var f cdbtest.File
			set.Write(&f, now)
			i := 0
			return testing.AllocsPerRun(20, func() {
				i++
				set.Put(grant.Grant{IP: fmt.Sprintf("192.168.%d.%d", i>>8&255, i&255), User: user(n + i), Service: "imap", Time: now.Add(time.Duration(i) * time.Second)})
				f.Reset()
				if _, _, err := set.Write(&f, now.Add(time.Duration(i)*time.Second)); err != nil {
					t.Fatal(err)
				}
			})
		}
		small, big := allocs(2000), allocs(20000)
		if big > small+4 {
			t.Errorf("%s: allocations per publish: %.0f with 2,000 grants, %.0f with 20,000", tc.name, small, big)
		}
	}
}

func dump(t *testing.T, b []byte) []byte {
	r, err := cdb.Bytes(b)
	if err != nil {
		t.Fatal(err)
	}
	return cdbtest.Dump(t, r)
}

// BenchmarkSetPublish: one changed grant, then a publish, with 100,000
// standing grants (the watcher's work per publish under a storm, without
// the file system).
func BenchmarkSetPublish(b *testing.B) {
	rs, _ := rules.Parse(strings.NewReader(setStatic), "tcp.smtp")
	set := NewSet(rs, Options{MaxAge: time.Hour})
	for i := range 100_000 {
		set.Put(grant.Grant{IP: fmt.Sprintf("172.%d.%d.%d", 16+i>>16, i>>8&255, i&255), User: "u", Service: "pop3", Time: now})
	}
	var f cdbtest.File
	set.Write(&f, now)
	b.ResetTimer()
	for i := range b.N {
		set.Put(grant.Grant{IP: fmt.Sprintf("192.168.%d.%d", i>>8&255, i&255), User: "u", Service: "imap", Time: now})
		f.Reset()
		if _, _, err := set.Write(&f, now); err != nil {
			b.Fatal(err)
		}
	}
}

// TestWriteInParts: at parallelFrom grants and more, Write classifies
// them in parts at once; its database, its summary and what it logs (in
// the order of the grants) are exactly those of Write in one part, and
// the database is the Set's.
func TestWriteInParts(t *testing.T) {
	rs, err := rules.Parse(strings.NewReader(setStatic), "tcp.smtp")
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(3, 9))
	var gs []grant.Grant
	seen := map[string]bool{}
	for i := 0; len(gs) < 3*parallelFrom; i++ {
		var g grant.Grant
		if i%5 == 0 {
			g = randomGrant(rng, now) // near the rules: denied, refused, shadowed
		} else {
			g = grant.Grant{IP: fmt.Sprintf("10.%d.%d.%d", 8+i>>16, i>>8&255, i&255), User: fmt.Sprintf("u%d", i), Service: "imap", Time: now}
		}
		if !seen[g.IP] {
			seen[g.IP] = true
			gs = append(gs, g)
		}
	}
	type result struct {
		db            []byte
		sum           Summary
		logs, verbose []string
	}
	write := func(mapped bool, from int) result {
		defer func(old int) { parallelFrom = old }(parallelFrom)
		parallelFrom = from
		var r result
		opt := Options{Now: now, MaxAge: time.Hour, Mapped: mapped, Never: refuser{"10.7.", "192.0.2.3"},
			Logf:     func(f string, a ...any) { r.logs = append(r.logs, fmt.Sprintf(f, a...)) },
			Verbosef: func(f string, a ...any) { r.verbose = append(r.verbose, fmt.Sprintf(f, a...)) }}
		var f cdbtest.File
		w := cdb.NewWriter(&f)
		var err error
		if r.sum, err = Write(w, rs, gs, opt); err != nil {
			t.Fatal(err)
		}
		if err := w.Finish(); err != nil {
			t.Fatal(err)
		}
		r.db = f.Bytes()
		return r
	}
	for _, mapped := range []bool{false, true} {
		parts, one := write(mapped, 1000), write(mapped, len(gs)+1)
		if !reflect.DeepEqual(parts, one) {
			t.Fatalf("mapped %v: Write in parts differs from Write in one: summary %+v / %+v, %d / %d log lines, %d / %d verbose",
				mapped, parts.sum, one.sum, len(parts.logs), len(one.logs), len(parts.verbose), len(one.verbose))
		}
		if len(one.logs) == 0 || len(one.verbose) == 0 {
			t.Fatalf("mapped %v: nothing logged (%d, %d lines)", mapped, len(one.logs), len(one.verbose))
		}
		set := NewSet(rs, Options{MaxAge: time.Hour, Mapped: mapped, Never: refuser{"10.7.", "192.0.2.3"}})
		for _, g := range gs {
			set.Put(g)
		}
		var f cdbtest.File
		if _, _, err := set.Write(&f, now); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(f.Bytes(), parts.db) {
			t.Fatalf("mapped %v: Write in parts differs from the Set", mapped)
		}
	}
}
