package merge

import (
	"cmp"
	"encoding/binary"
	"io"
	"reflect"
	"slices"
	"time"

	"github.com/poprelay/poprelay/internal/cdb"
	"github.com/poprelay/poprelay/internal/grant"
	"github.com/poprelay/poprelay/internal/quote"
	"github.com/poprelay/poprelay/internal/rules"
)

// Set is a merge kept current one grant at a time, for a daemon that
// republishes on every change (relayctl watch). The static records are
// compiled once per change of the rules or options, each grant's records
// (key, value and hash) once per change of that grant, and the grants are
// kept in address order. The Set keeps the database it last wrote in
// memory (see image): the next one is that one with the runs of records
// that did not change copied over, the changed grants' records put in
// between, and the hash tables made again, then written in one write.
// Its output is byte for byte what Write gives for the same rules,
// grants, options and time.
//
// A Set is not safe for concurrent use.
type Set struct {
	rs     []rules.Rule
	opt    Options
	m      *merger
	static []rec

	byIP  map[string]int32 // grant address → index in ents
	ents  []entry
	meta  []emeta // beside ents: what Write counts of each, compact
	free  []int32 // unused indexes in ents
	order []int32 // ents in address order; dead ones are skipped
	added []int32 // ents put since the last publish, not yet in order
	dead  []int32 // deleted ents, free once out of order and added

	buf []int32 // spare order

	img     image
	touched []addr128 // addresses whose grant changed since the image

	// The caps (Options.Caps). With a per-user cap, each user's
	// entries are linked through entry.unext and uprev from users, and
	// the users with more entries than the cap are crowded: only they
	// are looked at by the per-user cap at a publish.
	users   map[string]uhead
	crowded map[string]struct{}
	capped  []int32 // the entries a cap refused at the last publish
	cspare  []int32
	cbuf    []capCand
	tbuf    []int64
}

// uhead is one user's entries: the first, and how many.
type uhead struct{ first, n int32 }

// addr128 is an address as entry holds it.
type addr128 struct{ hi, lo uint64 }

func (a addr128) cmp(hi, lo uint64) int {
	if c := cmp.Compare(a.hi, hi); c != 0 {
		return c
	}
	return cmp.Compare(a.lo, lo)
}

// emeta is what Write counts of an entry, kept beside it in a compact
// array so that counting 100k grants reads 1.6 MB in order, not 100k
// entries scattered over 30 MB.
type emeta struct {
	exp                      int64 // nanos(entry.exp)
	state                    uint8 // metaDead, metaBad, metaRefused or metaLive
	capped                   uint8 // capNone, CapUser or CapTotal, as of the last publish
	capNext                  uint8 // the cap deciding, during applyCaps
	login                    int64 // nanos(entry.g.Time), for the total cap
	noUser                   bool  // entry.g.User == "": first for the total cap
	prim, twin               bool  // it has the record
	shadow, denied, override uint8
}

const (
	metaDead = iota
	metaBad  // refused: not a canonical address, expired or not (as Write counts)
	metaRefused
	metaLive
)

// rec is one record, ready to write.
type rec struct {
	key, value []byte
	h          uint32
}

// entry is one grant and its records.
type entry struct {
	g        grant.Grant
	hi, lo   uint64 // address, IPv4 as IPv4-mapped IPv6
	exp      time.Time
	refused  string
	prim     rec // the record under the address's own key, if key == nil none
	twin     rec // the one under the ::ffff: key of an IPv4 address (Mapped)
	shadow   int // keys whose exact static record won
	denied   int // keys a static rule denies
	override int // keys relayed over the catch-all deny
	dead     bool

	inUser       bool  // linked in its user's list
	uprev, unext int32 // its user's other entries; -1 none
}

// NewSet returns an empty Set merging with the static rules rs.
func NewSet(rs []rules.Rule, opt Options) *Set {
	s := &Set{byIP: map[string]int32{}, users: map[string]uhead{}, crowded: map[string]struct{}{}}
	s.Configure(rs, opt)
	return s
}

// sameOptions tells whether a and b classify grants alike.
func sameOptions(a, b Options) bool {
	if a.MaxAge != b.MaxAge || a.KeepRBL != b.KeepRBL || a.RemoteInfo != b.RemoteInfo || a.Mapped != b.Mapped {
		return false
	}
	if a.Never == nil || b.Never == nil {
		return a.Never == nil && b.Never == nil
	}
	// The same set, by identity; one of a type == cannot compare is
	// taken as new.
	ta := reflect.TypeOf(a.Never)
	return ta == reflect.TypeOf(b.Never) && ta.Comparable() && a.Never == b.Never
}

// Configure sets the static rules and the options (Now is ignored: Write
// takes the time). Unless both are the very ones the Set has (the same
// slice, equal options with the same Never), every grant is classified
// again. Logf and Verbosef are taken as they come.
func (s *Set) Configure(rs []rules.Rule, opt Options) {
	same := s.m != nil && sameOptions(s.opt, opt) && len(rs) == len(s.rs) &&
		(len(rs) == 0 || &rs[0] == &s.rs[0])
	if s.m == nil || opt.Caps.PerUser != s.opt.Caps.PerUser {
		// The caps are decided at each publish; the users' lists
		// are kept only with a per-user cap.
		s.opt.Caps = opt.Caps
		clear(s.users)
		clear(s.crowded)
		for i := range s.ents {
			s.ents[i].inUser = false
			if !s.ents[i].dead {
				s.userAdd(int32(i))
			}
		}
	}
	s.opt = opt
	if same {
		s.m.opt = opt
		return
	}
	s.rs = rs
	s.m = newMerger(rules.NewIndex(rs), opt)
	s.static = s.static[:0]
	for i := range rs {
		v := rs[i].Value()
		for _, k := range rs[i].Keys {
			kb := []byte(k)
			s.static = append(s.static, rec{kb, v, cdb.Hash(kb)})
		}
	}
	for i := range s.ents {
		if !s.ents[i].dead {
			s.classify(int32(i))
		}
	}
	// Every record may have changed: the next image is made afresh.
	s.img.ok = false
	s.touched = s.touched[:0]
}

// Put adds g, or replaces the grant for its address.
func (s *Set) Put(g grant.Grant) {
	if i, ok := s.byIP[g.IP]; ok {
		e := &s.ents[i]
		if e.g == g {
			return
		}
		if e.g.User != g.User {
			s.userDel(i)
			e.g = g
			s.userAdd(i)
		}
		e.g = g
		s.classify(i)
		s.touch(e)
		return
	}
	var i int32
	if k := len(s.free); k > 0 {
		i, s.free = s.free[k-1], s.free[:k-1]
	} else {
		s.ents = append(s.ents, entry{})
		s.meta = append(s.meta, emeta{})
		i = int32(len(s.ents) - 1)
	}
	s.ents[i] = entry{g: g}
	s.userAdd(i)
	s.classify(i)
	s.touch(&s.ents[i])
	s.byIP[g.IP] = i
	s.added = append(s.added, i)
}

// Delete removes the grant for ip, if there is one.
func (s *Set) Delete(ip string) {
	i, ok := s.byIP[ip]
	if !ok {
		return
	}
	delete(s.byIP, ip)
	s.userDel(i)
	e := &s.ents[i]
	s.touch(e)
	// The address stays, for sortOrder to find the entry in order.
	*e = entry{dead: true, hi: e.hi, lo: e.lo}
	s.meta[i] = emeta{state: metaDead}
	s.dead = append(s.dead, i) // in order or in added: skipped, then dropped
}

// userAdd links ents[i] into its user's list, with a per-user cap.
func (s *Set) userAdd(i int32) {
	e := &s.ents[i]
	u := e.g.User
	if s.opt.Caps.PerUser <= 0 || u == "" {
		return
	}
	h, ok := s.users[u]
	e.inUser, e.uprev, e.unext = true, -1, -1
	if ok {
		e.unext = h.first
		s.ents[h.first].uprev = i
	}
	h.first = i
	h.n++
	s.users[u] = h
	if int(h.n) > s.opt.Caps.PerUser {
		s.crowded[u] = struct{}{}
	}
}

// userDel unlinks ents[i] from its user's list.
func (s *Set) userDel(i int32) {
	e := &s.ents[i]
	if !e.inUser {
		return
	}
	u := e.g.User
	h := s.users[u]
	if e.uprev >= 0 {
		s.ents[e.uprev].unext = e.unext
	} else {
		h.first = e.unext
	}
	if e.unext >= 0 {
		s.ents[e.unext].uprev = e.uprev
	}
	e.inUser, e.uprev, e.unext = false, -1, -1
	h.n--
	if h.n == 0 {
		delete(s.users, u)
	} else {
		s.users[u] = h
	}
	if int(h.n) <= s.opt.Caps.PerUser {
		delete(s.crowded, u)
	}
}

// applyCaps decides the caps for the time now (Caps), noting each
// entry whose decision changed as touched: its records go into the
// next image, or out of it. Only the crowded users' entries are looked
// at for the per-user cap. The total cap counts the candidates in the
// compact meta and, only when they are over it, finds the login time of
// the Total-th newest among them (a selection over 8 bytes a
// candidate), then decides the few at that very time by the rule
// itself: with a million grants over the cap a publish stays a few
// passes over meta.
func (s *Set) applyCaps(now time.Time) {
	c := s.opt.Caps
	t := nanos(now)
	prev, next := s.capped, s.cspare[:0]
	for _, i := range prev {
		s.meta[i].capNext = capNone
	}
	cand := func(m *emeta) bool { return m.state == metaLive && m.exp > t }
	candOf := func(i int32) capCand {
		e := &s.ents[i]
		return capCand{user: e.g.User, t: nanos(e.g.Time), hi: e.hi, lo: e.lo, id: i}
	}
	byUser := 0
	if c.PerUser > 0 {
		for u := range s.crowded {
			cs := s.cbuf[:0]
			for i := s.users[u].first; i >= 0; i = s.ents[i].unext {
				if cand(&s.meta[i]) {
					cs = append(cs, candOf(i))
				}
			}
			k := c.perUser(cs)
			for _, r := range cs[k:] {
				s.meta[r.id].capNext = CapUser
				next = append(next, r.id)
			}
			byUser += len(cs) - k
			s.cbuf = cs
		}
	}
	if c.Total > 0 {
		n := 0
		for i := range s.meta {
			if cand(&s.meta[i]) {
				n++
			}
		}
		if c.over(n - byUser) {
			// The user-less first (newer): those take the first of
			// the Total places, the users' grants what is left.
			noUser := 0
			for i := range s.meta {
				if m := &s.meta[i]; m.noUser && cand(m) {
					noUser++
				}
			}
			next = s.totalTier(true, c.Total, cand, candOf, next)
			next = s.totalTier(false, c.Total-min(noUser, c.Total), cand, candOf, next)
		}
	}
	for _, list := range [][]int32{prev, next} {
		for _, i := range list {
			m := &s.meta[i]
			if m.state == metaDead || m.capped == m.capNext {
				continue
			}
			m.capped = m.capNext
			s.touch(&s.ents[i])
		}
	}
	s.capped, s.cspare = next, prev[:0]
}

// totalTier is the total cap over the candidates of one tier (without
// a user, or with one) that the per-user cap kept: only the k newest
// are kept, the others noted CapTotal in next, which it returns.
func (s *Set) totalTier(noUser bool, k int, cand func(*emeta) bool, candOf func(int32) capCand, next []int32) []int32 {
	in := func(m *emeta) bool { return m.noUser == noUser && cand(m) && m.capNext == capNone }
	ts := s.tbuf[:0]
	for i := range s.meta {
		if m := &s.meta[i]; in(m) {
			ts = append(ts, m.login)
		}
	}
	s.tbuf = ts
	if len(ts) <= k {
		return next
	}
	if k == 0 {
		for i := range s.meta {
			if m := &s.meta[i]; in(m) {
				m.capNext = CapTotal
				next = append(next, int32(i))
			}
		}
		return next
	}
	cut, newer := kthNewestTime(ts, k)
	cs := s.cbuf[:0]
	for i := range s.meta {
		m := &s.meta[i]
		switch {
		case !in(m) || m.login > cut:
		case m.login == cut:
			cs = append(cs, candOf(int32(i)))
		default:
			m.capNext = CapTotal
			next = append(next, int32(i))
		}
	}
	// Of those at the cut, the rule decides (by address).
	newest(cs, k-newer)
	for _, r := range cs[k-newer:] {
		s.meta[r.id].capNext = CapTotal
		next = append(next, r.id)
	}
	s.cbuf = cs
	return next
}

// Get returns the grant for ip.
func (s *Set) Get(ip string) (grant.Grant, bool) {
	i, ok := s.byIP[ip]
	if !ok {
		return grant.Grant{}, false
	}
	return s.ents[i].g, true
}

// Len is the number of grants.
func (s *Set) Len() int { return len(s.byIP) }

// touch notes that the records at e's address may have changed since the
// image. So many changes that the image is made afresh anyway are not
// kept.
func (s *Set) touch(e *entry) {
	if !s.img.ok {
		return
	}
	if len(s.touched) > len(s.ents)/4 {
		s.img.ok = false
		s.touched = s.touched[:0]
		return
	}
	s.touched = append(s.touched, addr128{e.hi, e.lo})
}

// classify computes the records of ents[i] from its grant, and its meta.
func (s *Set) classify(i int32) {
	e := &s.ents[i]
	s.classifyEntry(e)
	m := emeta{exp: nanos(e.exp), login: nanos(e.g.Time), noUser: e.g.User == "", state: metaLive, prim: e.prim.key != nil, twin: e.twin.key != nil,
		shadow: uint8(e.shadow), denied: uint8(e.denied), override: uint8(e.override)}
	switch e.refused {
	case "":
	case notCanonical:
		m.state = metaBad
	default:
		m.state = metaRefused
	}
	s.meta[i] = m
}

// classifyEntry computes e's records from its grant.
func (s *Set) classifyEntry(e *entry) {
	m := s.m
	g := &e.g
	e.prim, e.twin, e.refused, e.shadow, e.denied, e.override = rec{}, rec{}, "", 0, 0, 0
	e.exp = g.Expiry(s.opt.MaxAge)
	a, ok := canonical(g.IP, m.abuf)
	b := a.As16()
	e.hi, e.lo = binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])
	if !ok {
		e.refused = notCanonical
	} else {
		e.refused = m.refuse(g, a)
	}
	if e.refused != "" {
		if s.opt.Logf != nil && e.exp.After(time.Now()) {
			s.opt.Logf("refused grant for %s (user %s): %s", g.IP, quote.Quote(g.User), e.refused)
		}
		return
	}
	fs, n, err := m.forms(a)
	if err != nil {
		// The index found a key it has no rule for: a bug. The grant
		// gets no record rather than a wrong one.
		e.refused = err.Error()
		return
	}
	for j, f := range fs[:n] {
		switch f.status {
		case Static:
			e.shadow++
		case Denied:
			e.denied++
			if s.opt.Verbosef != nil {
				s.opt.Verbosef("no relay for %s (user %s): %s denies it", m.kbuf[j], quote.Quote(g.User), where(f.rule))
			}
		case Relay:
			if m.decs[f.dec].override {
				e.override++
			}
			key := slices.Clone(m.kbuf[j])
			r := rec{key, m.recordValue(f.dec, g.User), cdb.Hash(key)}
			if j == 0 {
				e.prim = r
			} else {
				e.twin = r
			}
		}
	}
}

// sortOrder brings order up to date: the grants put since, in address
// order, merged in; the dead ones dropped.
func (s *Set) sortOrder() {
	if len(s.added) == 0 && len(s.dead) == 0 {
		return
	}
	add := s.added[:0]
	for _, i := range s.added {
		if !s.ents[i].dead {
			add = append(add, i)
		}
	}
	byAddr := func(x, y int32) int {
		a, b := &s.ents[x], &s.ents[y]
		if c := cmp.Compare(a.hi, b.hi); c != 0 {
			return c
		}
		return cmp.Compare(a.lo, b.lo)
	}
	slices.SortFunc(add, byAddr)
	if len(add)+len(s.dead) <= 64 {
		// A few changes (a storm's publish): find each by binary
		// search and move the rest of order along, no comparison of
		// every entry.
		find := func(i int32) int {
			e := &s.ents[i]
			p, _ := slices.BinarySearchFunc(s.order, e, func(j int32, e *entry) int {
				f := &s.ents[j]
				if c := cmp.Compare(f.hi, e.hi); c != 0 {
					return c
				}
				return cmp.Compare(f.lo, e.lo)
			})
			return p
		}
		for _, i := range s.dead {
			// Of the entries in order at its address, the dead one
			// (a new grant for the address may sit beside it).
			for p := find(i); p < len(s.order) && s.ents[s.order[p]].hi == s.ents[i].hi && s.ents[s.order[p]].lo == s.ents[i].lo; p++ {
				if s.order[p] == i {
					s.order = slices.Delete(s.order, p, p+1)
					break
				}
			}
		}
		for _, i := range add {
			s.order = slices.Insert(s.order, find(i), i)
		}
		s.added = s.added[:0]
		s.free = append(s.free, s.dead...)
		s.dead = s.dead[:0]
		return
	}
	out := s.buf[:0]
	j := 0
	for _, i := range s.order {
		if s.ents[i].dead {
			continue
		}
		for j < len(add) && byAddr(add[j], i) < 0 {
			out = append(out, add[j])
			j++
		}
		out = append(out, i)
	}
	out = append(out, add[j:]...)
	s.buf, s.order = s.order, out
	s.added = s.added[:0]
	s.free = append(s.free, s.dead...)
	s.dead = s.dead[:0]
}

// Write writes the database for the time now to out, at offset 0, in
// one write, and returns what Write would have counted (with Grants the
// grants the Set holds) and the earliest expiry of a grant still live at
// now (zero if none).
func (s *Set) Write(out io.Writer, now time.Time) (Summary, time.Time, error) {
	s.sortOrder()
	s.applyCaps(now)
	sum, next := s.count(now)
	if err := s.build(now); err != nil {
		return sum, time.Time{}, err
	}
	if _, err := out.Write(s.img.db); err != nil {
		return sum, time.Time{}, err
	}
	return sum, next, nil
}

// count is Write's summary and next expiry, from meta.
func (s *Set) count(now time.Time) (Summary, time.Time) {
	sum := Summary{Static: len(s.rs), Grants: len(s.byIP)}
	t := nanos(now)
	first, exp := -1, int64(0)
	for i := range s.meta {
		m := &s.meta[i]
		if m.state == metaDead {
			continue
		}
		live := m.exp > t
		if live && (first < 0 || m.exp < exp) {
			first, exp = i, m.exp
		}
		switch {
		case m.state == metaBad:
			sum.Refused++ // expired or not, as Write counts it
			continue
		case !live:
			// An expired grant is neither refused nor denied.
			sum.Expired++
			continue
		case m.state == metaRefused:
			sum.Refused++
			continue
		case m.capped == CapUser:
			sum.Capped++
			continue
		case m.capped == CapTotal:
			sum.OverCap++
			continue
		}
		sum.Shadow += int(m.shadow)
		sum.Denied += int(m.denied)
		sum.Override += int(m.override)
		if m.prim || m.twin {
			sum.Relayed++
		}
		if m.prim {
			sum.Records++
		}
		if m.twin {
			sum.Records++
		}
	}
	if first < 0 {
		return sum, time.Time{}
	}
	return sum, s.ents[first].exp
}

// Each calls fn for each grant the Set holds, in address order.
func (s *Set) Each(fn func(g grant.Grant)) {
	s.sortOrder()
	for _, i := range s.order {
		fn(s.ents[i].g)
	}
}
