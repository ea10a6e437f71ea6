package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/poprelay/poprelay/internal/grant"
	"github.com/poprelay/poprelay/internal/merge"
	"github.com/poprelay/poprelay/internal/quote"
	"github.com/poprelay/poprelay/internal/rules"
	"github.com/poprelay/poprelay/internal/share"
)

var expireCmd = &command{
	name:  "expire",
	short: "remove expired grants; rebuild if any went or a login is unpublished (for cron)",
	usage: "[options]",
	help: `Remove the grants older than the max age (or past their own expiry, from
allow --for) from the spool, and those the per-user cap refuses (beyond
a user's --max-per-user newest: a newer login of the user displaced
them); those over --max-grants stay, refused while the total is over
it, and relay again when it is not. Remove temp files a crash left there, and
rebuild the CDB if any grant went, or if a live grant is not in the CDB
yet (a login since the last rebuild: expire compares each grant's
records with the CDB's). So cron alone publishes a login within its
period; without relayctl watch, run it every minute, as
/etc/cron.d/poprelay (installed by scripts/install and the package) does.
Silent when there is nothing to do. A rules file that became empty or
lost more than half its rules is held back, as by watch: a rebuild of
expire publishes the last confirmed rules (CDB.rules) with the grants
and warns, until relayctl rebuild confirms the file.`,
	flags: func(fs *flag.FlagSet) func(*env, []string) error {
		return func(e *env, args []string) error {
			if len(args) > 0 {
				return usagef("no arguments expected")
			}
			return e.locked(func() error {
				now := e.now()
				gs, err := e.grants(true)
				if err != nil {
					return unable("list grants in "+e.cfg.Spool, err)
				}
				live, gone := grant.Split(gs, now, e.cfg.MaxAge)
				live, capped, over, err := e.dropCapped(live)
				if err != nil {
					return err
				}
				if len(gone)+len(capped) > 0 {
					ips := make([]string, 0, len(gone)+len(capped))
					for _, g := range gone {
						ips = append(ips, g.IP)
					}
					if err := e.fold(live, append(ips, capped...)); err != nil {
						return err
					}
				}
				for _, g := range gone {
					e.vlogf("expired %s (user %s, login %s)", g.IP, quote.Quote(g.User), g.Time.Format(time.RFC3339))
				}
				e.cleanSpool()
				var rerr error
				if len(gone)+len(capped) > 0 {
					rerr = e.rebuildAfter(fmt.Sprintf("expired %d grants, removed %d over the per-user cap", len(gone), len(capped)))
				} else if ip, uerr := e.unpublished(live, over); uerr != nil {
					rerr = uerr
				} else if ip != "" {
					e.vlogf("the grant for %s is not in %s yet: rebuilding", ip, e.cfg.CDB)
					rerr = e.rebuildAfter("a grant for " + ip + " not yet published")
				}
				return rerr
			})
		}
	},
}

// dropCapped splits live into the grants expire keeps and the
// addresses of those the per-user cap refuses (merge.Capped), which
// expire removes from the spool: a newer login of the same user
// displaced them for good, and they would only pile up. A grant the
// total cap refuses stays: a surge of logins (or a run with a lower
// --max-grants than the watcher's) refuses it for now, and it relays
// again once the surge is gone, until its own expiry. over tells which
// of kept the total cap refuses (nil: none), which have no record.
func (e *env) dropCapped(live []grant.Grant) (kept []grant.Grant, capped []string, over []bool, err error) {
	opt, err := e.mergeOptions()
	if err != nil {
		return nil, nil, nil, err
	}
	why := merge.Capped(live, opt)
	byUser := opt.Caps.CapReason(merge.CapUser)
	n := 0
	for i, g := range live {
		if why[i] == byUser && byUser != "" {
			e.vlogf("removed %s (user %s, login %s): %s", g.IP, quote.Quote(g.User), g.Time.Format(time.RFC3339), why[i])
			capped = append(capped, g.IP)
			continue
		}
		if why[i] != "" {
			if over == nil {
				over = make([]bool, len(live))
			}
			over[n] = true
		}
		live[n] = g
		n++
	}
	clear(live[n:])
	if over != nil {
		over = over[:n]
	}
	return live[:n], capped, over, nil
}

var listCmd = &command{
	name:  "list",
	short: "show the grants in the spool",
	usage: "[--json] [--source etcd] [options]",
	help: `Show the grants in the spool (with --source etcd, those of the whole
cluster in etcd), sorted by address: IP, user, service, login
time, age, time left, and what a rebuild does with the grant: "relay" (with
"as FILE:LINE", the static rule whose settings the record carries, or "over
the catch-all deny FILE:LINE"), or "expired", "refused: WHY" (never-grant
set, a key tcpserver would match as a prefix, or over a cap: the user's
--max-per-user newest grants are published, and --max-grants of all,
those without a user first, then the newest), "denied: FILE:LINE" (an
address, prefix or range deny), "static: FILE:LINE" (an exact static record
wins). A rules file that is missing or does not parse is one warning line;
the grants are still listed, live ones as "unknown: rules unreadable".
One the writers hold back (see rebuild) is read as the last confirmed
rules they publish, CDB.rules, with a warning.
--json prints an array of objects for scripts, times in RFC 3339 and
durations in seconds. A user or service name is shown as it is only when
it holds nothing but printable characters (no control, bidi or other
format character, no invalid UTF-8, no space, backslash or double quote);
any other is shown Go-quoted ("evil\u202egnp", "x\x9b"), and --json
writes such characters as \u escapes.`,
	flags: func(fs *flag.FlagSet) func(*env, []string) error {
		asJSON := fs.Bool("json", false, "print JSON")
		source := fs.String("source", "spool", "list the grants of `SOURCE`: spool, or etcd (the whole cluster)")
		etcdFlags := share.RegisterFlags(fs)
		return func(e *env, args []string) error {
			if len(args) > 0 {
				return usagef("no arguments expected")
			}
			if err := sourceFlag("source", *source, "spool", "etcd"); err != nil {
				return err
			}
			if *source == "spool" {
				return e.list(lister(func() ([]grant.Grant, error) { return e.grants(false) }), e.cfg.Spool, *asJSON)
			}
			c, err := e.needCluster(etcdFlags, "--source etcd")
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, cancel := requestCtx()
			defer cancel()
			gs, err := c.List(ctx)
			if err != nil {
				return etcdErr("list grants in etcd", err)
			}
			return e.list(lister(func() ([]grant.Grant, error) { return gs, nil }), "etcd", *asJSON)
		}
	},
}

// listed is one row of list.
type listed struct {
	IP        string `json:"ip"`
	User      string `json:"user"`
	Service   string `json:"service"`
	Login     string `json:"login"`
	Age       int64  `json:"age"`
	Expires   string `json:"expires"`
	ExpiresIn int64  `json:"expires_in"`
	Status    string `json:"status"` // relay, expired, refused, denied, static
	Reason    string `json:"reason,omitempty"`
}

func (e *env) list(src interface{ List() ([]grant.Grant, error) }, where string, asJSON bool) error {
	gs, err := src.List()
	if err != nil {
		return unable("list grants in "+where, err)
	}
	// Unreadable rules still list the grants, saying so: the status of a
	// live grant then depends on rules no one can see.
	rs, rerr := e.publishedRules()
	if rerr != nil {
		e.logf("warning: %s: the status of each live grant is unknown", why(rerr))
	}
	ix := rules.NewIndex(rs)
	opt, err := e.mergeOptions()
	if err != nil {
		return err
	}
	now := opt.Now
	rows := make([]listed, 0, len(gs))
	ens, err := merge.ClassifyAll(ix, gs, opt)
	if err != nil {
		return unable("classify the grants", err)
	}
	for i, g := range gs {
		en := ens[i]
		exp := g.Expiry(e.cfg.MaxAge)
		r := listed{
			IP: g.IP, User: g.User, Service: g.Service,
			Login:     g.Time.Format(time.RFC3339),
			Age:       int64(now.Sub(g.Time) / time.Second),
			Expires:   exp.Format(time.RFC3339),
			ExpiresIn: int64(exp.Sub(now) / time.Second),
		}
		r.Status, r.Reason = e.status(en)
		if rerr != nil && !en.Expired && en.Refused == "" {
			r.Status, r.Reason = "unknown", "rules unreadable"
		}
		rows = append(rows, r)
	}
	if asJSON {
		// Names as they are, but no control, format or bidi
		// character raw: \u escapes (quote.JSON).
		var b bytes.Buffer
		enc := json.NewEncoder(&b)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rows); err != nil {
			return err
		}
		_, err := e.stdout.Write(quote.JSON(b.Bytes()))
		return err
	}
	w := newTable(e.stdout)
	fmt.Fprintln(w, "IP\tUSER\tSERVICE\tLOGIN\tAGE\tEXPIRES IN\tSTATUS")
	for _, r := range rows {
		login, _ := time.Parse(time.RFC3339, r.Login)
		st := r.Status
		if r.Reason != "" {
			st += ": " + r.Reason
		}
		// A name is shown as it is only if it holds nothing but
		// printable characters, else Go-quoted (quote.Name).
		user := quote.Name(r.User)
		if r.User == "" {
			user = "-"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.IP, user, quote.Name(r.Service),
			login.Local().Format("2006-01-02 15:04:05"), secs(r.Age), secs(r.ExpiresIn), st)
	}
	return w.Flush()
}

func secs(n int64) string { return (time.Duration(n) * time.Second).String() }

// status names what a rebuild does with a grant.
func (e *env) status(en merge.Entry) (status, reason string) {
	switch {
	case en.Expired:
		return "expired", ""
	case en.Refused != "":
		return "refused", en.Refused
	case en.Live():
		var notes []string
		for i, k := range en.Keys {
			var note string
			switch {
			case k.Status != merge.Relay:
				note = fmt.Sprintf("%s %s: %s", k.Key, k.Status, e.ruleWhere(k.Rule))
			case k.Override:
				note = "over the catch-all deny " + e.ruleWhere(k.Rule)
			case k.Rule != nil:
				note = "as " + e.ruleWhere(k.Rule)
			}
			if note != "" && i > 0 {
				note = k.Key + " " + note
			}
			if note != "" {
				notes = append(notes, note)
			}
		}
		return "relay", strings.Join(notes, "; ")
	}
	k := en.Keys[0]
	for _, kk := range en.Keys {
		if kk.Status == merge.Static {
			k = kk
		}
	}
	return k.Status.String(), e.ruleWhere(k.Rule)
}

// ruleWhere names a static rule as FILE:LINE.
func (e *env) ruleWhere(r *rules.Rule) string {
	if r == nil {
		return "no rule"
	}
	return fmt.Sprintf("%s:%d", e.cfg.Rules, r.Line)
}

var allowCmd = &command{
	name:  "allow",
	short: "grant IP by hand, then rebuild",
	usage: "IP [--for DUR] [--user NAME] [options]",
	help: `Grant IP by hand, as if NAME had logged in from it now, then rebuild.
The grant lasts the max age, or DUR with --for. With --user it is one of
NAME's grants for --max-per-user like a login (the newest when made: it
displaces NAME's oldest, and NAME's later logins may displace it);
without, it is no one's and only --max-grants counts it. An address in the
never-grant set, or one whose key would end in ":" (2001:db8:aaaa::, which
tcpserver would also match as a prefix), is refused (exit 100). With etcd
configured (--etcd-endpoints) the grant is also shared cluster-wide; if
etcd refuses these credentials (exit 100) nothing is granted, not even
here, and if etcd cannot be reached the grant is made here and the exit
is 111.`,
	flags: func(fs *flag.FlagSet) func(*env, []string) error {
		dur := fs.String("for", "", "how long the grant lasts, `DUR` (default: the max age)")
		user := fs.String("user", "", "the user `NAME` to record")
		etcdFlags := share.RegisterFlags(fs)
		return func(e *env, args []string) error {
			if len(args) != 1 {
				return usagef("one IP address expected")
			}
			ip, err := grant.CanonicalIP(args[0])
			if err != nil {
				return perm("unable to grant %q: %v", args[0], err)
			}
			g := grant.Grant{IP: ip, User: *user, Service: "manual", Time: e.now()}
			if *dur != "" {
				d, err := parseDuration(*dur)
				if err != nil {
					return usagef("bad --for %q: %v", *dur, err)
				}
				g.Expires = g.Time.Add(d)
			}
			set, err := e.cfg.loadNever()
			if err != nil {
				return err
			}
			if why, refused := set.Refuse(ip); refused {
				return perm("unable to grant %s: never granted: %s", ip, why)
			}
			// The cluster first, outside the CDB lock (the watcher
			// needs it); a failure there still grants here, then
			// exits 111.
			c, err := e.cluster(etcdFlags)
			if err != nil {
				return err
			}
			var cerr error
			if c != nil {
				defer c.Close()
				ctx, cancel := requestCtx()
				defer cancel()
				if err := c.Allow(ctx, g); err != nil {
					if errors.Is(err, grant.ErrBadField) {
						return perm("unable to grant %s: %v", ip, err)
					}
					if errors.Is(err, share.ErrDenied) {
						// Nothing is granted: a publishing watcher
						// with these credentials could not share it
						// either.
						return perm("unable to grant %s: %v; nothing was granted (cluster-wide allow needs an etcd user with the admin role, see docs/etcd.md)", ip, err)
					}
					// A publishing watcher shares the local grant
					// when etcd is back.
					cerr = unable("share the grant for "+ip+" through etcd", err)
				}
			}
			err = e.locked(func() error {
				if err := e.store().Record(g); err != nil {
					if errors.Is(err, grant.ErrBadField) {
						return perm("unable to grant %s: %v", ip, err)
					}
					return unable("record grant for "+ip+" in "+e.cfg.Spool, err)
				}
				e.vlogf("granted %s (user %s) until %s", ip, quote.Quote(g.User), g.Expiry(e.cfg.MaxAge).Format(time.RFC3339))
				if err := e.rebuildAfter("granted " + ip); err != nil {
					return err
				}
				// Say so when the static rules keep the grant from relaying.
				if en, err := merge.Classify(e.built.ix, g, e.built.opt); err == nil && !en.Live() {
					st, reason := e.status(en)
					e.logf("warning: %s gets no relay: %s: %s", ip, st, reason)
				}
				return nil
			})
			if err != nil {
				if cerr != nil {
					e.logf("fatal: %s", cerr)
				}
				return err
			}
			return cerr
		}
	},
}

var revokeCmd = &command{
	name:  "revoke",
	short: "remove grants, then rebuild",
	usage: "IP | --user NAME [options]",
	help: `Remove the grant for IP, or every grant of user NAME, then rebuild. No
such grant is an error (exit 100). With etcd configured (--etcd-endpoints)
the grant is also deleted cluster-wide, and a revocation marker (kept for
the max age) stops a delayed copy from bringing it back; if etcd refuses
or cannot be reached, the local grant is removed all the same and the
exit is 100 or 111.`,
	flags: func(fs *flag.FlagSet) func(*env, []string) error {
		user := fs.String("user", "", "revoke every grant of user `NAME`")
		etcdFlags := share.RegisterFlags(fs)
		return func(e *env, args []string) error {
			byUser := false
			fs.Visit(func(f *flag.Flag) { byUser = byUser || f.Name == "user" })
			switch {
			case byUser && len(args) > 0, !byUser && len(args) != 1:
				return usagef("one IP address or --user NAME expected")
			}
			var ip string
			if !byUser {
				var err error
				if ip, err = grant.CanonicalIP(args[0]); err != nil {
					return perm("unable to revoke %q: %v", args[0], err)
				}
			}
			// The cluster first, outside the CDB lock (the watcher
			// needs it); a failure there still revokes here, then
			// exits 111.
			c, err := e.cluster(etcdFlags)
			if err != nil {
				return err
			}
			var gone []string // revoked here or in the cluster
			var cerr error
			if c != nil {
				defer c.Close()
				ctx, cancel := requestCtx()
				defer cancel()
				by := "relayctl@" + c.Host()
				if byUser {
					ips, err := c.RevokeUser(ctx, *user, by)
					gone = append(gone, ips...)
					if err != nil {
						cerr = etcdErr("revoke the grants of "+*user+" through etcd", err)
					}
				} else {
					// The marker is left even without a grant, so a
					// late replay cannot bring one back.
					ok, err := c.Revoke(ctx, ip, by)
					if err != nil {
						cerr = etcdErr("revoke "+ip+" through etcd", err)
					}
					if ok {
						gone = append(gone, ip)
					}
				}
			}
			err = e.locked(func() error {
				if !byUser {
					// Whatever has its name in the spool goes, a
					// symlink too (itself, never what it points to).
					ok, err := e.store().RemoveFile(ip)
					if err != nil {
						return unable("revoke "+ip, err)
					}
					if ok && !slices.Contains(gone, ip) {
						gone = append(gone, ip)
					}
				}
				gs, err := e.grants(true)
				if err != nil {
					return unable("list grants in "+e.cfg.Spool, err)
				}
				n := 0
				for _, g := range gs {
					if (byUser && g.User == *user) || (!byUser && g.IP == ip) {
						if !slices.Contains(gone, g.IP) {
							gone = append(gone, g.IP)
						}
						continue
					}
					gs[n] = g
					n++
				}
				if n < len(gs) {
					if err := e.fold(gs[:n], gone); err != nil {
						return err
					}
				}
				switch {
				case len(gone) > 0 || cerr != nil:
				case byUser:
					return perm("unable to revoke: no grant for user %s", quote.Quote(*user))
				default:
					return perm("unable to revoke %s: no grant for it", ip)
				}
				for _, ip := range gone {
					e.vlogf("revoked %s", ip)
				}
				if len(gone) == 0 {
					return nil
				}
				return e.rebuildAfter("revoked " + strings.Join(gone, " "))
			})
			if err != nil {
				if cerr != nil {
					e.logf("fatal: %s", cerr)
				}
				return err
			}
			return cerr
		}
	},
}
