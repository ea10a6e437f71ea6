package main

import (
	"bytes"
	"flag"
	"fmt"
	"net/netip"
	"time"

	"github.com/poprelay/poprelay/internal/cdb"
	"github.com/poprelay/poprelay/internal/grant"
	"github.com/poprelay/poprelay/internal/merge"
	"github.com/poprelay/poprelay/internal/rules"
)

var checkCmd = &command{
	name:  "check",
	short: "what tcpserver decides for that client now, and why",
	usage: "IP [--host H] [--info I] [options]",
	help: `Say what tcpserver -x decides for a client at IP with the current CDB, as
tcpserver looks it up (give IP as tcpserver prints it: Debian's IPv6
tcpserver shows an IPv4 client as ::ffff:a.b.c.d). --host is the remote host
name (tcpserver without -H), --info the ident answer (without -R). Prints
the decision (allow or deny), the key that matched, where the record came
from (the static rule FILE:LINE, or the grant and its user), and every
variable the record sets, one NAME=VALUE per line.`,
	flags: func(fs *flag.FlagSet) func(*env, []string) error {
		host := fs.String("host", "", "the client's host name `H` (TCPREMOTEHOST)")
		info := fs.String("info", "", "the client's ident answer `I` (TCPREMOTEINFO)")
		return func(e *env, args []string) error {
			if len(args) != 1 {
				return usagef("one IP address expected")
			}
			if _, err := netip.ParseAddr(args[0]); err != nil {
				return perm("unable to check %q: not an IP address", args[0])
			}
			q := rules.Query{IP: args[0]}
			fs.Visit(func(f *flag.Flag) {
				switch f.Name {
				case "host":
					q.Host, q.HasHost = *host, true
				case "info":
					q.Info, q.HasInfo = *info, true
				}
			})
			return e.check(q)
		}
	},
}

func (e *env) check(q rules.Query) error {
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
	decision := "allow"
	if d.Deny {
		decision = "deny"
	}
	fmt.Fprintf(out, "decision: %s\n", decision)
	if !d.Matched {
		fmt.Fprintf(out, "key: (none)\nfrom: no record matched; tcpserver allows with no settings\n")
		_, err := e.stdout.Write(out.Bytes())
		return err
	}
	fmt.Fprintf(out, "key: %q\n", d.Key)
	fmt.Fprintf(out, "from: %s\n", e.origin(db, d.Key))
	if !d.Deny {
		for _, v := range d.Environ() {
			fmt.Fprintf(out, "env: %s=%s\n", v.Name, v.Value)
		}
	}
	_, err = e.stdout.Write(out.Bytes())
	return err
}

// origin tells where the record for key came from: the static rules come
// first in the CDB, so a key the rules file has is a static rule; other
// exact address keys are grants.
func (e *env) origin(db *cdb.Reader, key string) string {
	rs, err := e.readRules()
	if err != nil {
		return fmt.Sprintf("unknown (%v)", err)
	}
	ix := rules.NewIndex(rs)
	value, _, _ := db.Find([]byte(key))
	if r, ok := ix.Rule(key); ok {
		s := fmt.Sprintf("static rule %s:%d", e.cfg.Rules, r.Line)
		if !bytes.Equal(r.Value(), value) {
			s += " (the rules file has changed since the CDB was built; run relayctl rebuild)"
		}
		return s
	}
	ip := merge.GrantIP(key)
	if c, err := grant.CanonicalIP(ip); err != nil || c != ip {
		return "not in the rules file, and not an address a grant makes (the rules file has changed since the CDB was built?)"
	}
	g, ok, err := e.store().Get(ip)
	switch {
	case err != nil:
		return fmt.Sprintf("not in the rules file; the grant for %s is unreadable: %s", ip, why(err))
	case !ok:
		return fmt.Sprintf("not in the rules file, and the spool has no grant for %s (revoked or expired since the last rebuild?)", ip)
	}
	left := g.Expiry(e.cfg.MaxAge).Sub(e.now()).Round(time.Second)
	return fmt.Sprintf("grant for %s: user %q, service %s, login %s, expires in %s",
		g.IP, g.User, g.Service, g.Time.Format(time.RFC3339), left)
}
