package merge

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"hash/maphash"
	"math/rand/v2"
	"slices"
	"strings"

	"github.com/poprelay/poprelay/internal/grant"
)

// Caps bound how many grants a merge publishes, so that one user's
// logins from a whole IPv6 /64, or a flood of grants from anywhere,
// cannot grow the CDB (and the watcher's memory, and every publish)
// without end. Every path that writes the CDB decides through the same
// rule (Write, the Set, Capped for relayctl list, check and expire):
//
//   - Only a candidate is capped: a grant that has not expired at the
//     merge's time and is not refused otherwise (the never-grant set, a
//     non-canonical address, a key that opens a range). Whatever the
//     static rules make of it (relay, denied, left to an exact static
//     record), a candidate counts: it is one of its user's grants.
//   - PerUser: of one user's candidates only the PerUser newest (by
//     login time, then by address, then as given) are published; the
//     others are refused (CapUser). A grant without a user (relayctl allow
//     without --user, an import without one) is no one's: the per-user
//     cap does not apply to it. relayctl allow --user NAME counts as one
//     of NAME's grants like a login: it is the newest when made.
//   - Total: of the candidates the per-user cap keeps, only the Total
//     first are published, the others refused (CapTotal): first those
//     without a user (an admin's relayctl allow, an import; the wrapper
//     never records a grant without one), newest first, then the users'
//     grants, newest first. A flood of logins cannot push out an admin's
//     grant; the user-less grants, written by the admin alone (or a POP
//     host sharing through etcd, bounded by its per-host cap), can.
//
// Zero (or less) means no cap.
type Caps struct {
	PerUser int
	Total   int
}

// The defaults of relayctl's --max-per-user and --max-grants.
//
// 16 addresses a user: a phone, a laptop and a desktop, each dual-stack
// (an IPv4 and an IPv6 address), moving between two or three networks
// within the max age, and IPv6 privacy addresses rotating, is 12 to 18;
// a mail client that polls refreshes one grant and adds none. 2000
// logins from one /64 stay 16 records.
//
// 100000 grants in total: a CDB of about 7 MB, published by the watcher
// in milliseconds; a million took 2.2 GB in the watcher, froze relaying
// 4.6 s at start and rewrote a 75 MB CDB at each login. A site with more
// concurrent roaming users than that says so with --max-grants.
const (
	DefaultMaxPerUser = 16
	DefaultMaxGrants  = 100000
)

// The kinds of refusal by a cap, as Summary counts them.
const (
	capNone uint8 = iota
	CapUser
	CapTotal
)

// CapReason is the text relayctl list and check show for a grant the
// caps refuse (kind CapUser or CapTotal).
func (c Caps) CapReason(kind uint8) string {
	switch kind {
	case CapUser:
		return fmt.Sprintf("over the cap of %d grants per user (--max-per-user): the user's %d newest are published", c.PerUser, c.PerUser)
	case CapTotal:
		return fmt.Sprintf("over the cap of %d grants in total (--max-grants): those without a user first, then the newest, are published", c.Total)
	}
	return ""
}

// Warning is the warning a rebuild logs, every time, while sum (a merge
// with these caps) is over the total cap; "" when it is not.
func (c Caps) Warning(sum Summary) string {
	if sum.OverCap == 0 {
		return ""
	}
	return fmt.Sprintf("OVER THE CAP of %d grants in total (--max-grants, POPRELAY_MAXGRANTS): %d grants refused, %d published (those without a user first, then the newest); a flood of logins, or a site that needs a higher cap",
		c.Total, sum.OverCap, c.Total)
}

// IsCapReason tells whether a refusal reason is one of CapReason's.
func IsCapReason(why string) bool {
	return strings.HasPrefix(why, "over the cap of ")
}

// capCand is a candidate for the caps: one grant, as the caps see it.
type capCand struct {
	user   string
	t      int64 // login time, nanos
	hi, lo uint64
	id     int32 // the caller's
}

// newer orders candidates as the caps prefer them: those without a
// user first (for the total cap; one user's are all alike), then newest
// first by login time, then by address, then by id.
func newer(a, b capCand) int {
	if an, bn := a.user == "", b.user == ""; an != bn {
		if an {
			return -1
		}
		return 1
	}
	if c := cmp.Compare(b.t, a.t); c != 0 {
		return c
	}
	if c := cmp.Compare(a.hi, b.hi); c != 0 {
		return c
	}
	if c := cmp.Compare(a.lo, b.lo); c != 0 {
		return c
	}
	return cmp.Compare(a.id, b.id)
}

// newest reorders cs so that cs[:k] are its k newest (in no particular
// order), in time linear in len(cs) on average: a quickselect with a
// random pivot, so that no choice of times and addresses makes it
// quadratic. newer is a total order, so which k are the newest does not
// depend on how they are found: Write and the Set agree.
func newest(cs []capCand, k int) {
	lo, hi := 0, len(cs) // cs[:lo] are among the k newest, cs[hi:] not
	for hi-lo > 16 {
		p := cs[lo+rand.IntN(hi-lo)]
		// Three ways: newer than p, p's equal (itself), older.
		i, j, m := lo, lo, hi
		for j < m {
			switch c := newer(cs[j], p); {
			case c < 0:
				cs[i], cs[j] = cs[j], cs[i]
				i++
				j++
			case c > 0:
				m--
				cs[j], cs[m] = cs[m], cs[j]
			default:
				j++
			}
		}
		switch {
		case k < i:
			hi = i
		case k > j:
			lo = j
		default:
			return
		}
	}
	slices.SortFunc(cs[lo:hi], newer)
}

// kthNewestTime returns the login time of the k-th newest of ts (login
// times, 1 <= k <= len(ts)) and how many of ts are newer than it. ts is
// reordered. It is newest over times alone, for the Set's total cap:
// those newer than the cut are among the k newest, those older are not,
// and the rule (newer) decides among those at the cut.
func kthNewestTime(ts []int64, k int) (cut int64, newer int) {
	count := func(cut int64) (int64, int) {
		n := 0
		for _, x := range ts {
			if x > cut {
				n++
			}
		}
		return cut, n
	}
	lo, hi := 0, len(ts) // ts[:lo] are newer than ts[lo:hi], which are newer than ts[hi:]
	for hi-lo > 16 {
		p := ts[lo+rand.IntN(hi-lo)]
		i, j, m := lo, lo, hi
		for j < m {
			switch {
			case ts[j] > p:
				ts[i], ts[j] = ts[j], ts[i]
				i++
				j++
			case ts[j] < p:
				m--
				ts[j], ts[m] = ts[m], ts[j]
			default:
				j++
			}
		}
		switch {
		case k <= i:
			hi = i
		case k > j:
			lo = j
		default:
			return count(p)
		}
	}
	slices.SortFunc(ts[lo:hi], func(a, b int64) int { return cmp.Compare(b, a) })
	return count(ts[k-1])
}

// perUser reorders cs, which holds every candidate of one user, so
// that those published come first, and returns how many they are.
func (c Caps) perUser(cs []capCand) int {
	if c.PerUser <= 0 || len(cs) <= c.PerUser || cs[0].user == "" {
		return len(cs)
	}
	newest(cs, c.PerUser)
	return c.PerUser
}

// over tells whether n candidates kept by the per-user cap are over the
// total cap.
func (c Caps) over(n int) bool { return c.Total > 0 && n > c.Total }

// total reorders cs, every candidate the per-user cap kept, so that
// those published come first, and returns how many they are.
func (c Caps) total(cs []capCand) int {
	if !c.over(len(cs)) {
		return len(cs)
	}
	newest(cs, c.Total)
	return c.Total
}

// decide returns, for each of cs (every candidate of a merge), the kind
// of cap that refuses it (capNone if none), by id: out[cs[i].id]. cs is
// reordered.
func (c Caps) decide(cs []capCand, out []uint8) {
	if c.PerUser > 0 {
		// Only the users with more candidates than the cap matter.
		// They are found by counting the candidates in buckets by a
		// hash of the user (a user's bucket counts at least the
		// user's candidates): a million users of one grant each are
		// a million hashes, not a map of a million names nor a sort
		// by name. The users in a bucket over the cap are then
		// grouped by name, exactly.
		size := 64
		for size < 2*len(cs) {
			size <<= 1
		}
		seed := maphash.MakeSeed()
		bucket := func(u string) uint64 { return maphash.String(seed, u) & uint64(size-1) }
		n := make([]uint8, size)
		for i := range cs {
			if u := cs[i].user; u != "" {
				if b := bucket(u); n[b] < 255 {
					n[b]++
				}
			}
		}
		var crowd []capCand
		for i := range cs {
			if u := cs[i].user; u != "" && int(n[bucket(u)]) > c.PerUser {
				crowd = append(crowd, cs[i])
			}
		}
		slices.SortFunc(crowd, func(a, b capCand) int { return strings.Compare(a.user, b.user) })
		for i := 0; i < len(crowd); {
			j := i + 1
			for j < len(crowd) && crowd[j].user == crowd[i].user {
				j++
			}
			k := c.perUser(crowd[i:j])
			for _, r := range crowd[i+k : j] {
				out[r.id] = CapUser
			}
			i = j
		}
	}
	if c.Total > 0 {
		n := 0
		for i := range cs {
			if out[cs[i].id] == capNone {
				n++
			}
		}
		if !c.over(n) {
			return
		}
		kept := make([]capCand, 0, n)
		for i := range cs {
			if out[cs[i].id] == capNone {
				kept = append(kept, cs[i])
			}
		}
		k := c.total(kept)
		for _, r := range kept[k:] {
			out[r.id] = CapTotal
		}
	}
}

// candOf is g, whose address is a (16-byte form), as a candidate.
func candOf(g *grant.Grant, hi, lo uint64, id int32) capCand {
	return capCand{user: g.User, t: nanos(g.Time), hi: hi, lo: lo, id: id}
}

// Capped tells, for each of gs, why the caps of opt refuse it: a
// CapReason, or "" (not a candidate, or within the caps). It is what
// Write decides for the same grants at opt.Now; relayctl list, check and
// expire call it.
func Capped(gs []grant.Grant, opt Options) []string {
	out := make([]string, len(gs))
	if opt.Caps == (Caps{}) {
		return out
	}
	m := newMerger(nil, opt)
	cs := make([]capCand, 0, len(gs))
	for i := range gs {
		a, expired, refused := m.screen(&gs[i])
		if expired || refused != "" {
			continue
		}
		b := a.As16()
		cs = append(cs, candOf(&gs[i], binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:]), int32(i)))
	}
	kinds := make([]uint8, len(gs))
	opt.Caps.decide(cs, kinds)
	why := [...]string{capNone: "", CapUser: opt.Caps.CapReason(CapUser), CapTotal: opt.Caps.CapReason(CapTotal)}
	for i, k := range kinds {
		out[i] = why[k]
	}
	return out
}
