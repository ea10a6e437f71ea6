package main

import (
	"bytes"
	"flag"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/poprelay/poprelay/internal/addr"
	"github.com/poprelay/poprelay/internal/cdb"
	"github.com/poprelay/poprelay/internal/grant"
	"github.com/poprelay/poprelay/internal/merge"
	"github.com/poprelay/poprelay/internal/quote"
	"github.com/poprelay/poprelay/internal/rules"
)

var checkCmd = &command{
	name:  "check",
	short: "what tcpserver decides for that client now, and why",
	usage: "IP [--host H] [--info I] [options]",
	help: `Say what tcpserver -x decides for a client at IP with the current CDB, as
tcpserver looks it up: under the text tcpserver spells the address in
(Debian's IPv6 tcpserver compresses even one zero group, so
2001:db8:0:1:1:1:1:1 is looked up as 2001:db8::1:1:1:1:1; give an IPv4
client of tcpserver -6 as ::ffff:a.b.c.d). --host is the remote host name
(tcpserver without -H), --info the ident answer (without -R). Prints the
decision (allow or deny), the key that matched, where the record came from
(the static rule FILE:LINE, or the grant, its user, and the catch-all deny
it overrides), what became of the address's grant when its record did not
decide (refused, denied, expired), and every variable the record sets, one
NAME=VALUE per line. A user name is shown Go-quoted, and a service name
or value that holds anything but printable characters (a control, bidi
or format character, invalid UTF-8, a backslash or a double quote) is
too. When a grant decided and the rules file has host-name
rules (=host, =.domain), a warning says the grant overrides them; another
says when vpopmail's roaming users are on (see rebuild). A rules
file the writers hold back (see rebuild) is read as the last confirmed
rules they publish, CDB.rules, with a warning.`,
	flags: func(fs *flag.FlagSet) func(*env, []string) error {
		host := fs.String("host", "", "the client's host name `H` (TCPREMOTEHOST)")
		info := fs.String("info", "", "the client's ident answer `I` (TCPREMOTEINFO)")
		return func(e *env, args []string) error {
			if len(args) != 1 {
				return usagef("one IP address expected")
			}
			a, err := netip.ParseAddr(args[0])
			if err != nil || a.Zone() != "" {
				return perm("unable to check %q: not an IP address", args[0])
			}
			q := rules.Query{IP: addr.Key(a)}
			fs.Visit(func(f *flag.Flag) {
				switch f.Name {
				case "host":
					q.Host, q.HasHost = *host, true
				case "info":
					q.Info, q.HasInfo = *info, true
				}
			})
			return e.check(q, a, args[0])
		}
	},
}

func (e *env) check(q rules.Query, a netip.Addr, arg string) error {
	db, err := cdb.Open(e.cfg.CDB)
	if err != nil {
		return unable("read "+e.cfg.CDB, err)
	}
	defer db.Close()
	d, err := rules.Lookup(db, q)
	if err != nil {
		return unable("read "+e.cfg.CDB, err)
	}
	out := &bytes.Buffer{}
	if q.IP != arg {
		fmt.Fprintf(out, "address: %s is looked up as %q\n", arg, q.IP)
	}
	decision := "allow"
	if d.Deny {
		decision = "deny"
	}
	fmt.Fprintf(out, "decision: %s\n", decision)
	rs, rerr := e.publishedRules()
	var ix *rules.Index
	if rerr == nil {
		ix = rules.NewIndex(rs)
	}
	granted := false
	if !d.Matched {
		fmt.Fprintf(out, "key: (none)\nfrom: no record matched; tcpserver allows with no settings\n")
	} else {
		fmt.Fprintf(out, "key: %q\n", d.Key)
		var from string
		from, granted = e.origin(db, ix, rerr, d.Key)
		fmt.Fprintf(out, "from: %s\n", from)
	}
	if !granted && ix != nil {
		if note := e.grantNote(ix, a, q.IP); note != "" {
			fmt.Fprintf(out, "grant: %s\n", note)
		}
	}
	if d.Matched && !d.Deny {
		for _, v := range d.Environ() {
			// TCPREMOTEINFO may be a user's name.
			fmt.Fprintf(out, "env: %s=%s\n", v.Name, quote.Value(v.Value))
		}
	}
	if _, err = e.stdout.Write(out.Bytes()); err != nil {
		return err
	}
	if granted {
		e.warnHostRules(rs, "this grant overrides")
	}
	e.warnVpopmail()
	return nil
}

// origin tells where the record for key came from, and whether it is a
// grant's: the static rules come first in the CDB, so a key the rules file
// has is a static rule; other exact address keys are grants.
func (e *env) origin(db *cdb.Reader, ix *rules.Index, rerr error, key string) (string, bool) {
	if rerr != nil {
		return fmt.Sprintf("unknown (%v)", rerr), false
	}
	value, _, _ := db.Find([]byte(key))
	if r, ok := ix.Rule(key); ok {
		s := fmt.Sprintf("static rule %s:%d", e.cfg.Rules, r.Line)
		if !bytes.Equal(r.Value(), value) {
			s += " (the rules file has changed since the CDB was built; run relayctl rebuild)"
		}
		return s, false
	}
	ip, ok := merge.GrantIP(key)
	if !ok {
		return "not in the rules file, and not an address a grant makes (the rules file has changed since the CDB was built?)", false
	}
	g, ok, err := e.store().Get(ip)
	switch {
	case err != nil:
		return fmt.Sprintf("not in the rules file; the grant for %s is unreadable: %s", ip, why(err)), true
	case !ok:
		return fmt.Sprintf("not in the rules file, and the spool has no grant for %s (revoked or expired since the last rebuild?)", ip), true
	}
	left := g.Expiry(e.cfg.MaxAge).Sub(e.now()).Round(time.Second)
	s := fmt.Sprintf("grant for %s: user %s, service %s, login %s, expires in %s",
		g.IP, quote.Quote(g.User), quote.Name(g.Service), g.Time.Format(time.RFC3339), left)
	if opt, err := e.mergeOptions(); err == nil {
		if en, err := merge.Classify(ix, g, opt); err == nil {
			for _, k := range en.Keys {
				if k.Key == key && k.Status == merge.Relay && k.Rule != nil {
					if k.Override {
						s += "; it overrides the catch-all deny " + e.ruleWhere(k.Rule)
					} else {
						s += "; settings of " + e.ruleWhere(k.Rule)
					}
				}
			}
		}
	}
	return s, true
}

// capReason tells why the caps refuse g, or "": they are a matter of
// every grant, so the spool is read.
func (e *env) capReason(g grant.Grant, opt merge.Options) string {
	if opt.Caps == (merge.Caps{}) {
		return ""
	}
	gs, err := e.grants(false)
	if err != nil {
		return ""
	}
	why := merge.Capped(gs, opt)
	for i := range gs {
		if gs[i].IP == g.IP {
			return why[i]
		}
	}
	return ""
}

// grantNote says what became of the grant for a, if the spool has one,
// when its record did not decide for key: refused (and why), expired,
// denied, left to a static record, or keyed otherwise.
func (e *env) grantNote(ix *rules.Index, a netip.Addr, key string) string {
	ip := a.Unmap().String()
	g, ok, err := e.store().Get(ip)
	if err != nil {
		return fmt.Sprintf("the grant for %s is unreadable: %s", ip, why(err))
	}
	if !ok {
		return ""
	}
	opt, err := e.mergeOptions()
	if err != nil {
		return ""
	}
	en, err := merge.Classify(ix, g, opt)
	if err != nil {
		return ""
	}
	if why := e.capReason(g, opt); why != "" && !en.Expired && en.Refused == "" {
		en = merge.Entry{Refused: why}
	}
	st, reason := e.status(en)
	if reason != "" {
		st += ": " + reason
	}
	if en.Live() {
		var keys []string
		mine := false
		for _, k := range en.Keys {
			if k.Status == merge.Relay {
				keys = append(keys, strconv.Quote(k.Key))
				mine = mine || k.Key == key
			}
		}
		switch {
		case mine:
			st += " (not in the CDB yet: run relayctl rebuild)"
		case a.Is4In6():
			st += fmt.Sprintf(" under %s, not %q (--mapped adds the ::ffff: key, for tcpserver -6)", strings.Join(keys, ", "), key)
		default:
			st += fmt.Sprintf(" under %s, not %q", strings.Join(keys, ", "), key)
		}
	}
	return fmt.Sprintf("for %s (user %s): %s", ip, quote.Quote(g.User), st)
}
