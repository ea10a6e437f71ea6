package merge

import (
	"cmp"
	"encoding/binary"
	"reflect"
	"slices"
	"time"

	"github.com/poprelay/poprelay/internal/cdb"
	"github.com/poprelay/poprelay/internal/grant"
	"github.com/poprelay/poprelay/internal/rules"
)

// Set is a merge kept current one grant at a time, for a daemon that
// republishes on every change (relayctl watch). The static records are
// compiled once per change of the rules or options, each grant's records
// (key, value and hash) once per change of that grant, and the grants are
// kept in address order, so a publish after k changes costs O(k) work
// plus one sequential write of the database. Its output is byte for byte
// what Write gives for the same rules, grants, options and time.
//
// A Set is not safe for concurrent use.
type Set struct {
	rs     []rules.Rule
	opt    Options
	m      *merger
	static []rec

	byIP  map[string]int32 // grant address → index in ents
	ents  []entry
	free  []int32 // unused indexes in ents
	order []int32 // ents in address order; dead ones are skipped
	added []int32 // ents put since the last publish, not yet in order
	dead  []int32 // deleted ents, free once out of order and added

	w      *cdb.Writer
	buf    []int32 // spare order
	ksum   Summary // what the live grants' classification counts
	logged bool    // opt.Logf has heard of the refused grants
}

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
}

// NewSet returns an empty Set merging with the static rules rs.
func NewSet(rs []rules.Rule, opt Options) *Set {
	s := &Set{byIP: map[string]int32{}}
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
	s.ksum = Summary{}
	for i := range s.ents {
		if !s.ents[i].dead {
			s.classify(&s.ents[i])
		}
	}
}

// Put adds g, or replaces the grant for its address.
func (s *Set) Put(g grant.Grant) {
	if i, ok := s.byIP[g.IP]; ok {
		e := &s.ents[i]
		if e.g == g {
			return
		}
		s.count(e, -1)
		e.g = g
		s.classify(e)
		return
	}
	var i int32
	if k := len(s.free); k > 0 {
		i, s.free = s.free[k-1], s.free[:k-1]
	} else {
		s.ents = append(s.ents, entry{})
		i = int32(len(s.ents) - 1)
	}
	s.ents[i] = entry{g: g}
	s.classify(&s.ents[i])
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
	e := &s.ents[i]
	s.count(e, -1)
	// The address stays, for sortOrder to find the entry in order.
	*e = entry{dead: true, hi: e.hi, lo: e.lo}
	s.dead = append(s.dead, i) // in order or in added: skipped, then dropped
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

// count adds the classification counts of e to the summary, times d.
func (s *Set) count(e *entry, d int) {
	switch {
	case e.refused != "":
		s.ksum.Refused += d
	default:
		s.ksum.Shadow += d * e.shadow
		s.ksum.Denied += d * e.denied
		s.ksum.Override += d * e.override
	}
}

// classify computes e's records from its grant.
func (s *Set) classify(e *entry) {
	m := s.m
	g := &e.g
	e.prim, e.twin, e.refused, e.shadow, e.denied, e.override = rec{}, rec{}, "", 0, 0, 0
	e.exp = g.Expiry(s.opt.MaxAge)
	a, ok := canonical(g.IP, m.abuf)
	b := a.As16()
	e.hi, e.lo = binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])
	if !ok {
		e.refused = "not a canonical IP address"
	} else {
		e.refused = m.refuse(g, a)
	}
	if e.refused != "" {
		if s.opt.Logf != nil && e.exp.After(time.Now()) {
			s.opt.Logf("refused grant for %s (user %q): %s", g.IP, g.User, e.refused)
		}
		s.count(e, 1)
		return
	}
	fs, n, err := m.forms(a)
	if err != nil {
		// The index found a key it has no rule for: a bug. The grant
		// gets no record rather than a wrong one.
		e.refused = err.Error()
		s.count(e, 1)
		return
	}
	for j, f := range fs[:n] {
		switch f.status {
		case Static:
			e.shadow++
		case Denied:
			e.denied++
			if s.opt.Verbosef != nil {
				s.opt.Verbosef("no relay for %s (user %q): %s denies it", m.kbuf[j], g.User, where(f.rule))
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
	s.count(e, 1)
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

// Write writes the database for the time now to out through a writer the
// Set keeps (and reuses) and returns what Write would have counted (with
// Grants the grants the Set holds) and the earliest expiry of a grant
// still live at now (zero if none). It calls Finish; out must be at
// offset 0.
func (s *Set) Write(out interface {
	Write([]byte) (int, error)
	Seek(int64, int) (int64, error)
}, now time.Time) (Summary, time.Time, error) {
	s.sortOrder()
	if s.w == nil {
		s.w = cdb.NewWriter(out)
	} else {
		s.w.Reset(out)
	}
	w := s.w
	sum := s.ksum
	sum.Static = len(s.rs)
	sum.Grants = len(s.byIP)
	for _, r := range s.static {
		if err := w.AddHashed(r.key, r.value, r.h); err != nil {
			return sum, time.Time{}, err
		}
	}
	var next time.Time
	twins := false
	for _, i := range s.order {
		e := &s.ents[i]
		if !e.exp.After(now) {
			sum.Expired++
			// An expired grant is neither refused nor denied.
			if e.refused != "" {
				sum.Refused--
			} else {
				sum.Shadow -= e.shadow
				sum.Denied -= e.denied
				sum.Override -= e.override
			}
			continue
		}
		if next.IsZero() || e.exp.Before(next) {
			next = e.exp
		}
		if e.prim.key != nil || e.twin.key != nil {
			sum.Relayed++
		}
		twins = twins || e.twin.key != nil
		if e.prim.key == nil {
			continue
		}
		if err := w.AddHashed(e.prim.key, e.prim.value, e.prim.h); err != nil {
			return sum, time.Time{}, err
		}
		sum.Records++
	}
	// The ::ffff: twins (--mapped) after every primary record, as
	// Write orders them. Without any, no second walk of 100k entries
	// (it was half of a publish's time, in memory stalls).
	if twins {
		for _, i := range s.order {
			e := &s.ents[i]
			if e.twin.key == nil || !e.exp.After(now) {
				continue
			}
			if err := w.AddHashed(e.twin.key, e.twin.value, e.twin.h); err != nil {
				return sum, time.Time{}, err
			}
			sum.Records++
		}
	}
	if err := w.Finish(); err != nil {
		return sum, time.Time{}, err
	}
	return sum, next, nil
}

// Each calls fn for each grant the Set holds, in address order.
func (s *Set) Each(fn func(g grant.Grant)) {
	s.sortOrder()
	for _, i := range s.order {
		fn(s.ents[i].g)
	}
}
