// Package merge writes the CDB tcpserver reads: the admin's static rules,
// then one record per granted address, as design.md ("Rebuilding the CDB")
// describes.
//
// For each live grant (not expired, not refused by the never-grant set) and
// each key form of its address (an IPv4 address and its "::ffff:a.b.c.d"
// twin, which Debian's IPv6 tcpserver looks IPv4 clients up under; an IPv6
// address alone):
//   - if the static rules have a record for exactly that key, it wins and
//     the grant adds nothing;
//   - otherwise the static rule tcpserver would match for that key decides:
//     a deny stays a deny (no record); an allow, or no rule at all, gives a
//     record with that rule's settings plus RELAYCLIENT="" (unless the rule
//     sets RELAYCLIENT), RBLSMTPD="" (unless the rule sets RBLSMTPD or
//     KeepRBL), and TCPREMOTEINFO=user if RemoteInfo.
//
// The two forms of an IPv4 grant are decided together, the strict way: an
// exact static record for either form, or a deny by a rule written for
// either form (any rule but the default, empty-key one), leaves both
// without a grant record. The admin wrote "1.2.3.4:deny" or "1.2.3.:deny"
// for that client, whichever way a tcpserver spells its address. A default
// ":deny" is no one's in particular: it only decides the forms it is the
// match for.
//
// The output is a function of the input: static records in file order,
// then the grant records sorted by key.
package merge

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/poprelay/poprelay/internal/cdb"
	"github.com/poprelay/poprelay/internal/grant"
	"github.com/poprelay/poprelay/internal/rules"
)

// Refuser says whether an address must never be granted; *never.Set is
// one.
type Refuser interface {
	Refuse(ip string) (reason string, refused bool)
}

// Options control a merge.
type Options struct {
	Now        time.Time
	MaxAge     time.Duration // for grants without their own expiry
	KeepRBL    bool          // do not add RBLSMTPD=""
	RemoteInfo bool          // add TCPREMOTEINFO=user
	Never      Refuser       // nil: refuse nothing here

	// Logf, if set, hears of every grant the never-grant set refuses: a
	// sign of a misconfigured wrapper or a tampered spool.
	Logf func(format string, args ...any)
	// Verbosef, if set, hears of every key form a static deny leaves
	// without relay: routine, as users log in from denied networks.
	Verbosef func(format string, args ...any)
}

// Status is what became of one key form of a grant.
type Status int

const (
	Relay  Status = iota // a grant record was written for the key
	Static               // the static rules have this exact key; theirs wins
	Denied               // the static rule tcpserver would match denies
)

func (s Status) String() string {
	switch s {
	case Relay:
		return "relay"
	case Static:
		return "static"
	case Denied:
		return "denied"
	}
	return fmt.Sprintf("Status(%d)", int(s))
}

// Key is the fate of one key form of a grant.
type Key struct {
	Key    string
	Status Status
	Rule   *rules.Rule // the static rule that decided; nil if none matched
	Value  []byte      // the record written, for Relay
}

// Entry is the fate of one grant.
type Entry struct {
	Expired bool
	Refused string // why the never-grant set refused it; "" if it did not
	Keys    []Key  // set when neither expired nor refused
}

// Live reports whether the grant got at least one relay record.
func (e Entry) Live() bool {
	for _, k := range e.Keys {
		if k.Status == Relay {
			return true
		}
	}
	return false
}

// Summary counts what a Write did.
type Summary struct {
	Static  int // static rules written
	Grants  int // grants read
	Relayed int // grants that got at least one record
	Records int // grant records written
	Expired int
	Refused int
	Denied  int // key forms denied by a static rule
	Shadow  int // key forms whose exact static record won
}

// KeyForms returns the keys tcpserver may look a client with this
// canonical address up under: the address, and for IPv4 its
// IPv4-mapped IPv6 twin.
func KeyForms(ip string) []string {
	if strings.IndexByte(ip, ':') < 0 {
		return []string{ip, "::ffff:" + ip}
	}
	return []string{ip}
}

// GrantIP returns the canonical address behind a key form: the inverse of
// KeyForms.
func GrantIP(key string) string {
	if rest, ok := strings.CutPrefix(key, "::ffff:"); ok && strings.IndexByte(rest, ':') < 0 && strings.IndexByte(rest, '.') >= 0 {
		return rest
	}
	return key
}

// canonical parses ip and reports whether it is a canonical address as
// the grant store writes it: IPv4 dotted quad, or IPv6 in RFC 5952 form
// that is not IPv4-mapped, without a zone. It returns the address as 16
// bytes.
func canonical(ip string, buf []byte) ([16]byte, bool) {
	a, err := netip.ParseAddr(ip)
	if err != nil || a.Zone() != "" || a.Is4In6() {
		return [16]byte{}, false
	}
	return a.As16(), string(a.AppendTo(buf[:0])) == ip
}

const twinPrefix = "::ffff:"

// decision is the static rule tcpserver would match for keys with a given
// prefix part, and the grant record value it leads to.
type decision struct {
	rule  *rules.Rule
	deny  bool
	value []byte // without TCPREMOTEINFO
}

type merger struct {
	ix       *rules.Index
	opt      Options
	memo     map[string]int32 // prefix part of a key → index in decs
	memoTwin map[string]int32 // prefix part of an IPv4 address → decision for its twin
	decs     []decision
	buf      []byte
	abuf     []byte // for canonical
}

func newMerger(ix *rules.Index, opt Options) *merger {
	return &merger{ix: ix, opt: opt, memo: map[string]int32{}, memoTwin: map[string]int32{}, abuf: make([]byte, 0, 64)}
}

// prefixPart is the part of an address that decides which non-exact key
// tcpserver finds: its prefixes all end at a "." or ":", so every address
// with the same text up to its last separator finds the same record.
func prefixPart(ip string) string {
	return ip[:strings.LastIndexAny(ip, ".:")+1]
}

// decide finds the static decision for key, which has no exact record.
// For the twin of an IPv4 address, key is the address and twin is set.
func (m *merger) decide(key string, twin bool) (int32, error) {
	p := prefixPart(key)
	memo := m.memo
	if twin {
		memo = m.memoTwin
	}
	if d, ok := memo[p]; ok {
		return d, nil
	}
	if twin {
		key = twinPrefix + key
	}
	dec, err := rules.Lookup(m.ix, rules.Query{IP: key})
	if err != nil {
		return 0, err
	}
	var d decision
	if dec.Matched {
		r, ok := m.ix.Rule(dec.Key)
		if !ok {
			return 0, fmt.Errorf("merge: index found %q but has no rule for it", dec.Key)
		}
		d.rule = r
	}
	d.deny = dec.Deny
	if !d.deny {
		d.value = m.value(dec.Env)
	}
	m.decs = append(m.decs, d)
	memo[p] = int32(len(m.decs) - 1)
	return int32(len(m.decs) - 1), nil
}

// value is the grant record for a static allow with settings env.
func (m *merger) value(env []rules.Var) []byte {
	relay, rbl := false, false
	for _, v := range env {
		switch v.Name {
		case "RELAYCLIENT":
			relay = true
		case "RBLSMTPD":
			rbl = true
		}
	}
	out := slices.Clip(env)
	if !relay {
		out = append(out, rules.Var{Name: "RELAYCLIENT"})
	}
	if !rbl && !m.opt.KeepRBL {
		out = append(out, rules.Var{Name: "RBLSMTPD"})
	}
	return rules.EncodeValue(false, out)
}

// recordValue is the record for a grant by user under decision d.
func (m *merger) recordValue(d int32, user string) []byte {
	v := m.decs[d].value
	if m.opt.RemoteInfo {
		// A NUL would end the setting early and start another one.
		user = strings.ReplaceAll(user, "\x00", "")
		v = append(slices.Clip(v), rules.EncodeValue(false, []rules.Var{{Name: "TCPREMOTEINFO", Value: user}})...)
	}
	return v
}

// fate is the fate of one key form: forms[0] is the address itself,
// forms[1] its IPv4 twin.
type fate struct {
	status Status
	rule   *rules.Rule
	dec    int32 // for Relay
}

// exact returns the static rule with exactly the key ip (with the twin
// prefix if twin), without allocating when there is none.
func (m *merger) exact(ip string, twin bool) (*rules.Rule, bool) {
	if !twin {
		return m.ix.Rule(ip)
	}
	m.buf = append(append(m.buf[:0], twinPrefix...), ip...)
	if _, ok, _ := m.ix.Find(m.buf); !ok {
		return nil, false
	}
	return m.ix.Rule(string(m.buf))
}

// forms decides every key form of g: one for IPv6, two for IPv4.
//
// The forms of one IPv4 grant are decided together, the stricter way: if
// the static rules have an exact record for either form, or a rule other
// than the default that tcpserver would match for either form denies, no
// form gets a record. An admin's "1.2.3.4:deny" or "1.2.3.:deny" is meant
// for that client whichever way a tcpserver spells its address; the
// default ":deny" denies only the forms it is the match for.
func (m *merger) forms(ip string) (fs [2]fate, n int, err error) {
	n = 1
	if strings.IndexByte(ip, ':') < 0 {
		n = 2
	}
	static, deny := -1, -1
	for i := range n {
		if r, ok := m.exact(ip, i == 1); ok {
			fs[i] = fate{status: Static, rule: r}
			if static < 0 {
				static = i
			}
			continue
		}
		d, err := m.decide(ip, i == 1)
		if err != nil {
			return fs, 0, err
		}
		fs[i] = fate{status: Relay, rule: m.decs[d].rule, dec: d}
		if dd := m.decs[d]; dd.deny {
			fs[i].status = Denied
			if deny < 0 && dd.rule != nil && dd.rule.Addr != "" {
				deny = i
			}
		}
	}
	for i := range n {
		if fs[i].status != Relay {
			continue
		}
		switch {
		case static >= 0:
			fs[i].status, fs[i].rule = Static, fs[static].rule
		case deny >= 0:
			fs[i].status, fs[i].rule = Denied, fs[deny].rule
		}
	}
	return fs, n, nil
}

// screen says whether g is expired or refused, and returns its address.
func (m *merger) screen(g *grant.Grant) (a [16]byte, expired bool, refused string) {
	a, ok := canonical(g.IP, m.abuf)
	if !ok {
		return a, false, "not a canonical IP address"
	}
	if !g.Expiry(m.opt.MaxAge).After(m.opt.Now) {
		return a, true, ""
	}
	if m.opt.Never != nil {
		if why, ok := m.opt.Never.Refuse(g.IP); ok {
			if why == "" {
				why = "never granted"
			}
			return a, false, why
		}
	}
	return a, false, ""
}

// Classify tells what a rebuild does with g, given the static rules in ix.
func Classify(ix *rules.Index, g grant.Grant, opt Options) (Entry, error) {
	m := newMerger(ix, opt)
	var e Entry
	_, e.Expired, e.Refused = m.screen(&g)
	if e.Expired || e.Refused != "" {
		return e, nil
	}
	fs, n, err := m.forms(g.IP)
	if err != nil {
		return Entry{}, err
	}
	keys := KeyForms(g.IP)
	for i, f := range fs[:n] {
		k := Key{Key: keys[i], Status: f.status, Rule: f.rule}
		if f.status == Relay {
			k.Value = m.recordValue(f.dec, g.User)
		}
		e.Keys = append(e.Keys, k)
	}
	return e, nil
}

// Write adds the records of the static rules rs, then those of the live
// grants, to w. It does not call w.Finish.
func Write(w *cdb.Writer, rs []rules.Rule, grants []grant.Grant, opt Options) (Summary, error) {
	var sum Summary
	if err := rules.Compile(w, rs); err != nil {
		return sum, err
	}
	sum.Static = len(rs)
	sum.Grants = len(grants)
	m := newMerger(rules.NewIndex(rs), opt)
	logf, verbosef := opt.Logf, opt.Verbosef
	if logf == nil {
		logf = func(string, ...any) {}
	}
	if verbosef == nil {
		verbosef = func(string, ...any) {}
	}

	// One rec per key form that gets a record: the address's own in
	// prims, IPv4 twins in twins.
	type rec struct {
		hi, lo uint64 // the address, IPv4 as IPv4-mapped IPv6
		g, dec int32
	}
	prims := make([]rec, 0, len(grants))
	twins := make([]rec, 0, len(grants))
	for i := range grants {
		g := &grants[i]
		a, expired, refused := m.screen(g)
		switch {
		case expired:
			sum.Expired++
			continue
		case refused != "":
			sum.Refused++
			logf("refused grant for %s (user %q): %s", g.IP, g.User, refused)
			continue
		}
		fs, n, err := m.forms(g.IP)
		if err != nil {
			return sum, err
		}
		hi, lo := binary.BigEndian.Uint64(a[:8]), binary.BigEndian.Uint64(a[8:])
		relayed := false
		for j, f := range fs[:n] {
			switch f.status {
			case Static:
				sum.Shadow++
			case Denied:
				sum.Denied++
				key := g.IP
				if j == 1 {
					key = twinPrefix + key
				}
				verbosef("no relay for %s (user %q): %s denies it", key, g.User, where(f.rule))
			case Relay:
				relayed = true
				if j == 0 {
					prims = append(prims, rec{hi, lo, int32(i), f.dec})
				} else {
					twins = append(twins, rec{hi, lo, int32(i), f.dec})
				}
			}
		}
		if relayed {
			sum.Relayed++
		}
	}
	// In address order: the addresses' own keys, then the IPv4 twins. Of
	// two grants for one address (a store never has them, but merged
	// sources might) the latest login wins, then the first given.
	order := func(a, b rec) int {
		if c := cmp.Compare(a.hi, b.hi); c != 0 {
			return c
		}
		if c := cmp.Compare(a.lo, b.lo); c != 0 {
			return c
		}
		if c := grants[b.g].Time.Compare(grants[a.g].Time); c != 0 {
			return c
		}
		return cmp.Compare(a.g, b.g)
	}
	slices.SortFunc(prims, order)
	slices.SortFunc(twins, order)

	var key []byte
	for li, list := range [][]rec{prims, twins} {
		for i, r := range list {
			if i > 0 && list[i-1].hi == r.hi && list[i-1].lo == r.lo {
				continue
			}
			key = key[:0]
			if li == 1 {
				key = append(key, twinPrefix...)
			}
			key = append(key, grants[r.g].IP...)
			if err := w.Add(key, m.recordValue(r.dec, grants[r.g].User)); err != nil {
				return sum, err
			}
			sum.Records++
		}
	}
	return sum, nil
}

func where(r *rules.Rule) string {
	if r == nil {
		return "no rule"
	}
	return fmt.Sprintf("rule %q (line %d)", r.Addr, r.Line)
}
