// Package merge writes the CDB tcpserver reads: the admin's static rules,
// then one record per granted address, as design.md ("Rebuilding the CDB")
// describes.
//
// A grant is keyed by the text tcpserver looks its client up under
// (addr.Key): the dotted quad for IPv4, the IPv6 patch's own compressed
// form for IPv6 ("2001:db8::1:1:1:1:1", not RFC 5952's
// "2001:db8:0:1:1:1:1:1"); with Options.Mapped an IPv4 grant also gets its
// "::ffff:a.b.c.d" key, which only a tcpserver run with -6 looks up. The
// spool keeps its own canonical names; the key text is made here.
//
// For each live grant (not expired, not refused by the never-grant set,
// and whose key does not end in ":" or ".", which tcpserver would also
// match as a prefix of other addresses) and each of its keys:
//   - if the static rules have a record for exactly that key, it wins and
//     the grant adds nothing;
//   - otherwise the static rule tcpserver would match for that key decides:
//     an address, prefix or range deny stays a deny (no record); an allow,
//     or no rule at all, gives a record with that rule's settings plus
//     RELAYCLIENT="" (unless the rule sets RELAYCLIENT), RBLSMTPD=""
//     (unless the rule sets RBLSMTPD or KeepRBL), and TCPREMOTEINFO=user if
//     RemoteInfo;
//   - the empty-key catch-all ":deny" is no one's in particular: a grant
//     overrides it, as vpopmail's exact-address roaming records did, and
//     gets a record with RELAYCLIENT="" and RBLSMTPD="" (unless KeepRBL)
//     alone (the deny's settings were never anyone's environment).
//
// tcpserver tries the exact address before "=host" and "=.domain" rules,
// so a grant record also overrides every host-name rule (HostRules lists
// them, for a warning).
//
// With Mapped, the two keys of an IPv4 grant are decided together, the
// strict way: an exact static record for either, or a deny by a rule
// written for either (any rule but the catch-all), leaves both without a
// grant record. The admin wrote "1.2.3.4:deny" or "1.2.3.:deny" for that
// client, whichever way a tcpserver spells its address.
//
// The output is a function of the input: static records in file order,
// then the grant records sorted by address.
package merge

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/poprelay/poprelay/internal/addr"
	"github.com/poprelay/poprelay/internal/cdb"
	"github.com/poprelay/poprelay/internal/grant"
	"github.com/poprelay/poprelay/internal/quote"
	"github.com/poprelay/poprelay/internal/rules"
)

// Refuser says whether an address must never be granted; *never.Set is
// one. Write calls it from several goroutines at once.
type Refuser interface {
	Refuse(ip string) (reason string, refused bool)
}

// Options control a merge.
type Options struct {
	Now        time.Time
	MaxAge     time.Duration // for grants without their own expiry
	KeepRBL    bool          // do not add RBLSMTPD=""
	RemoteInfo bool          // add TCPREMOTEINFO=user
	Mapped     bool          // also key IPv4 grants as ::ffff:a.b.c.d (tcpserver -6)
	Never      Refuser       // nil: refuse nothing here
	Caps       Caps          // the per-user and total caps; zero: none

	// Logf, if set, hears of every grant the never-grant set refuses: a
	// sign of a misconfigured wrapper or a tampered spool.
	Logf func(format string, args ...any)
	// Verbosef, if set, hears of every key a static deny leaves without
	// relay: routine, as users log in from denied networks.
	Verbosef func(format string, args ...any)
}

// Status is what became of one key of a grant.
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

// Key is the fate of one key of a grant.
type Key struct {
	Key    string
	Status Status
	// Rule is the static rule that decided; nil if none matched. For a
	// Relay key it is the rule whose settings the record carries, or the
	// catch-all deny the grant overrides (Override).
	Rule     *rules.Rule
	Override bool   // Relay over the empty-key catch-all deny
	Value    []byte // the record written, for Relay
}

// Entry is the fate of one grant.
type Entry struct {
	Expired bool
	Refused string // why it is refused (never-grant set, a key that opens a range, a cap); "" if it is not
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
	Static   int // static rules written
	Grants   int // grants read
	Relayed  int // grants that got at least one record
	Records  int // grant records written
	Expired  int
	Refused  int // by the never-grant set, a bad address or a key that opens a range
	Capped   int // refused by the per-user cap (Caps.PerUser)
	OverCap  int // refused by the total cap (Caps.Total): warn loudly
	Denied   int // keys denied by a static rule
	Shadow   int // keys whose exact static record won
	Override int // keys relayed over the catch-all deny
}

// KeyForms returns the keys a grant for the canonical address ip is
// written under: addr.Key of the address, and with mapped, for IPv4, its
// "::ffff:a.b.c.d" form. It returns nil for text that is not a canonical
// address.
func KeyForms(ip string, mapped bool) []string {
	a, ok := canonical(ip, nil)
	if !ok {
		return nil
	}
	keys := []string{addr.Key(a.Unmap())}
	if mapped && a.Is4In6() {
		keys = append(keys, addr.Key(a))
	}
	return keys
}

// GrantIP returns the canonical address (as the spool names it) of the
// grant a record keyed key would belong to, and whether key is a key a
// grant is written under (addr.Key of an address, or the ::ffff: form of
// an IPv4 one).
func GrantIP(key string) (string, bool) {
	a, err := netip.ParseAddr(key)
	if err != nil || a.Zone() != "" || addr.Key(a) != key {
		return "", false
	}
	return a.Unmap().String(), true
}

// canonical parses ip and reports whether it is a canonical address as
// the grant store writes it: IPv4 dotted quad, or IPv6 in RFC 5952 form
// that is not IPv4-mapped, without a zone. It returns the address in its
// 16-byte form (IPv4 mapped into IPv6).
func canonical(ip string, buf []byte) (netip.Addr, bool) {
	a, err := netip.ParseAddr(ip)
	if err != nil || a.Zone() != "" || a.Is4In6() {
		return netip.Addr{}, false
	}
	return netip.AddrFrom16(a.As16()), string(a.AppendTo(buf[:0])) == ip
}

// keyOf appends the key of address a (16-byte form) to b: its own, or with
// twin its ::ffff: form.
func keyOf(b []byte, a netip.Addr, twin bool) []byte {
	if twin {
		return addr.AppendKey(b, a)
	}
	return addr.AppendKey(b, a.Unmap())
}

// decision is the static rule tcpserver would match for keys with a given
// prefix part, and the grant record value it leads to.
type decision struct {
	rule     *rules.Rule
	deny     bool
	override bool   // the rule is the catch-all deny, which grants override
	value    []byte // without TCPREMOTEINFO
}

type merger struct {
	ix   *rules.Index
	opt  Options
	memo map[string]int32 // prefix part of a key → index in decs
	decs []decision
	kbuf [2][]byte // the keys of the grant at hand
	abuf []byte    // for canonical
}

func newMerger(ix *rules.Index, opt Options) *merger {
	return &merger{ix: ix, opt: opt, memo: map[string]int32{}, abuf: make([]byte, 0, 64),
		kbuf: [2][]byte{make([]byte, 0, 64), make([]byte, 0, 64)}}
}

// prefixPart is the part of a key that decides which non-exact key
// tcpserver finds: its prefixes all end at a "." or ":", so every key with
// the same text up to its last separator finds the same record.
func prefixPart(key []byte) []byte {
	i := len(key) - 1
	for i >= 0 && key[i] != '.' && key[i] != ':' {
		i--
	}
	return key[:i+1]
}

// decide finds the static decision for key, which has no exact record.
func (m *merger) decide(key []byte) (int32, error) {
	p := prefixPart(key)
	if d, ok := m.memo[string(p)]; ok {
		return d, nil
	}
	dec, err := rules.Lookup(m.ix, rules.Query{IP: string(key)})
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
	switch {
	case d.deny && dec.Key == "":
		// The catch-all: a grant overrides it, with none of its
		// settings (no one ever had them: it denies).
		d.deny, d.override = false, true
		d.value = m.value(nil)
	case !d.deny:
		d.value = m.value(dec.Env)
	}
	m.decs = append(m.decs, d)
	m.memo[string(p)] = int32(len(m.decs) - 1)
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

// fate is the fate of one key: keys[0] is the address's own, keys[1] the
// ::ffff: form of an IPv4 address.
type fate struct {
	status Status
	rule   *rules.Rule
	dec    int32 // for Relay
}

// exact returns the static rule with exactly the key, without allocating
// when there is none.
func (m *merger) exact(key []byte) (*rules.Rule, bool) {
	if _, ok, _ := m.ix.Find(key); !ok {
		return nil, false
	}
	return m.ix.Rule(string(key))
}

// forms decides every key of the address a (16-byte form): one, or with
// Mapped two for IPv4. The keys are left in m.kbuf.
//
// The keys of one IPv4 grant are decided together, the stricter way: if
// the static rules have an exact record for either, or a rule other than
// the catch-all that tcpserver would match for either denies, neither gets
// a record. An admin's "1.2.3.4:deny" or "1.2.3.:deny" is meant for that
// client whichever way a tcpserver spells its address.
func (m *merger) forms(a netip.Addr) (fs [2]fate, n int, err error) {
	n = 1
	if m.opt.Mapped && a.Is4In6() {
		n = 2
	}
	static, deny := -1, -1
	for i := range n {
		m.kbuf[i] = keyOf(m.kbuf[i][:0], a, i == 1)
		key := m.kbuf[i]
		if r, ok := m.exact(key); ok {
			fs[i] = fate{status: Static, rule: r}
			if static < 0 {
				static = i
			}
			continue
		}
		d, err := m.decide(key)
		if err != nil {
			return fs, 0, err
		}
		fs[i] = fate{status: Relay, rule: m.decs[d].rule, dec: d}
		if m.decs[d].deny {
			fs[i].status = Denied
			if deny < 0 {
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

// screen says whether g is expired or refused, and returns its address
// (16-byte form).
// notCanonical is why a grant for an address not in canonical form gets
// no record. Such a grant is counted as refused even once expired.
const notCanonical = "not a canonical IP address"

func (m *merger) screen(g *grant.Grant) (a netip.Addr, expired bool, refused string) {
	a, ok := canonical(g.IP, m.abuf)
	if !ok {
		return a, false, notCanonical
	}
	if !g.Expiry(m.opt.MaxAge).After(m.opt.Now) {
		return a, true, ""
	}
	return a, false, m.refuse(g, a)
}

// refuse says why the grant g for the canonical address a (16-byte form)
// gets no record, or "": the never-grant set refuses it, or its key would
// open a range.
func (m *merger) refuse(g *grant.Grant, a netip.Addr) string {
	if m.opt.Never != nil {
		if why, ok := m.opt.Never.Refuse(g.IP); ok {
			if why == "" {
				why = "never granted"
			}
			return why
		}
	}
	// Whatever the never-grant set: a record under a key that ends in
	// ":" would open a range.
	if key := keyOf(m.kbuf[0][:0], a, false); key[len(key)-1] == ':' || key[len(key)-1] == '.' {
		return addr.Check(string(key)).Error()
	}
	return ""
}

// Classify tells what a rebuild does with g, given the static rules in ix,
// leaving out the caps (one grant does not tell them: see ClassifyAll).
func Classify(ix *rules.Index, g grant.Grant, opt Options) (Entry, error) {
	m := newMerger(ix, opt)
	var e Entry
	a, expired, refused := m.screen(&g)
	e.Expired, e.Refused = expired, refused
	if e.Expired || e.Refused != "" {
		return e, nil
	}
	fs, n, err := m.forms(a)
	if err != nil {
		return Entry{}, err
	}
	for i, f := range fs[:n] {
		k := Key{Key: string(m.kbuf[i]), Status: f.status, Rule: f.rule}
		if f.status == Relay {
			k.Value = m.recordValue(f.dec, g.User)
			k.Override = m.decs[f.dec].override
		}
		e.Keys = append(e.Keys, k)
	}
	return e, nil
}

// ClassifyAll tells what a rebuild does with each of gs, the caps
// included: a grant they refuse is Refused with a CapReason.
func ClassifyAll(ix *rules.Index, gs []grant.Grant, opt Options) ([]Entry, error) {
	capped := Capped(gs, opt)
	out := make([]Entry, len(gs))
	for i := range gs {
		if capped[i] != "" {
			out[i] = Entry{Refused: capped[i]}
			continue
		}
		e, err := Classify(ix, gs[i], opt)
		if err != nil {
			return nil, err
		}
		out[i] = e
	}
	return out, nil
}

// HostRules returns the static rules that name a host (=host, =.domain,
// =): tcpserver tries a client's exact address before them, so a grant
// record overrides them for its address. (info@=host rules come before
// the address, and still apply.)
func HostRules(rs []rules.Rule) []*rules.Rule {
	var out []*rules.Rule
	for i := range rs {
		if strings.HasPrefix(rs[i].Addr, "=") {
			out = append(out, &rs[i])
		}
	}
	return out
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
	ix := rules.NewIndex(rs)
	logf, verbosef := opt.Logf, opt.Verbosef
	if logf == nil {
		logf = func(string, ...any) {}
	}
	if verbosef == nil {
		verbosef = func(string, ...any) {}
	}

	// One rec per key that gets a record: the address's own in prims,
	// the ::ffff: forms of IPv4 addresses in twins.
	type rec struct {
		hi, lo uint64 // the address, IPv4 as IPv4-mapped IPv6
		g, dec int32
		m      int32 // the merger (part) that decided it
	}
	// The grants are classified in a few parts at once, each with its
	// own merger; what they log is logged afterwards, in grant order.
	type part struct {
		m            *merger
		sum          Summary
		prims, twins []rec
		logs         []func()
		err          error
	}
	n := 1
	if len(grants) >= parallelFrom {
		n = min(runtime.GOMAXPROCS(0), maxParts)
	}
	parts := make([]part, n)
	// Each part fills its own stretch of one slice; the stretches are
	// closed up afterwards.
	allPrims := make([]rec, len(grants))
	var allTwins []rec
	if opt.Mapped {
		allTwins = make([]rec, len(grants))
	}
	// The caps first: which candidates they refuse (by grant index).
	capped := writeCaps(grants, opt, n)
	var wg sync.WaitGroup
	for p := range parts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pt := &parts[p]
			m := newMerger(ix, opt)
			pt.m = m
			from, to := p*len(grants)/n, (p+1)*len(grants)/n
			pt.prims = allPrims[from:from:to]
			if opt.Mapped {
				pt.twins = allTwins[from:from:to]
			}
			for i := from; i < to; i++ {
				g := &grants[i]
				a, expired, refused := m.screen(g)
				switch {
				case expired:
					pt.sum.Expired++
					continue
				case refused != "":
					pt.sum.Refused++
					pt.logs = append(pt.logs, func() { logf("refused grant for %s (user %s): %s", g.IP, quote.Quote(g.User), refused) })
					continue
				case capped != nil && capped[i] == CapUser:
					pt.sum.Capped++
					continue
				case capped != nil && capped[i] == CapTotal:
					pt.sum.OverCap++
					continue
				}
				fs, nf, err := m.forms(a)
				if err != nil {
					pt.err = err
					return
				}
				b := a.As16()
				hi, lo := binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])
				relayed := false
				for j, f := range fs[:nf] {
					switch f.status {
					case Static:
						pt.sum.Shadow++
					case Denied:
						pt.sum.Denied++
						key := string(m.kbuf[j])
						pt.logs = append(pt.logs, func() { verbosef("no relay for %s (user %s): %s denies it", key, quote.Quote(g.User), where(f.rule)) })
					case Relay:
						relayed = true
						if m.decs[f.dec].override {
							pt.sum.Override++
						}
						r := rec{hi, lo, int32(i), f.dec, int32(p)}
						if j == 0 {
							pt.prims = append(pt.prims, r)
						} else {
							pt.twins = append(pt.twins, r)
						}
					}
				}
				if relayed {
					pt.sum.Relayed++
				}
			}
		}()
	}
	wg.Wait()
	prims, twins := allPrims[:0], allTwins[:0]
	for p := range parts {
		pt := &parts[p]
		if pt.err != nil {
			return sum, pt.err
		}
		for _, l := range pt.logs {
			l()
		}
		sum.Expired += pt.sum.Expired
		sum.Refused += pt.sum.Refused
		sum.Capped += pt.sum.Capped
		sum.OverCap += pt.sum.OverCap
		sum.Shadow += pt.sum.Shadow
		sum.Denied += pt.sum.Denied
		sum.Override += pt.sum.Override
		sum.Relayed += pt.sum.Relayed
		// Never past the part's own stretch: copy moves them down.
		prims, twins = append(prims, pt.prims...), append(twins, pt.twins...)
	}
	// In address order: the addresses' own keys, then the ::ffff: forms.
	// Of two grants for one address (a store never has them, but merged
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
			var b [16]byte
			binary.BigEndian.PutUint64(b[:8], r.hi)
			binary.BigEndian.PutUint64(b[8:], r.lo)
			key = keyOf(key[:0], netip.AddrFrom16(b), li == 1)
			if err := w.Add(key, parts[r.m].m.recordValue(r.dec, grants[r.g].User)); err != nil {
				return sum, err
			}
			sum.Records++
		}
	}
	return sum, nil
}

// writeCaps is what the caps of opt refuse of grants, by index (nil if
// nothing can be), screened in n parts at once.
func writeCaps(grants []grant.Grant, opt Options, n int) []uint8 {
	c := opt.Caps
	if c.PerUser <= 0 && (c.Total <= 0 || len(grants) <= c.Total) {
		return nil
	}
	cands := make([]capCand, len(grants))
	lens := make([]int, n)
	var wg sync.WaitGroup
	for p := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := newMerger(nil, opt)
			from, to := p*len(grants)/n, (p+1)*len(grants)/n
			cs := cands[from:from:to]
			for i := from; i < to; i++ {
				a, expired, refused := m.screen(&grants[i])
				if expired || refused != "" {
					continue
				}
				b := a.As16()
				cs = append(cs, candOf(&grants[i], binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:]), int32(i)))
			}
			lens[p] = len(cs)
		}()
	}
	wg.Wait()
	all := cands[:0]
	for p := range n {
		from := p * len(grants) / n
		all = append(all, cands[from:from+lens[p]]...)
	}
	out := make([]uint8, len(grants))
	c.decide(all, out)
	return out
}

// Write classifies the grants in parts at once from parallelFrom grants
// on, in at most maxParts.
var parallelFrom = 20000

const maxParts = 4

func where(r *rules.Rule) string {
	if r == nil {
		return "no rule"
	}
	return fmt.Sprintf("rule %q (line %d)", r.Addr, r.Line)
}
