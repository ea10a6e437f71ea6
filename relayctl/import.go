package main

import (
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/poprelay/poprelay/internal/grant"
	"github.com/poprelay/poprelay/internal/migrate"
)

var importCmd = &command{
	name:  "import",
	short: "take over grants from vpopmail or relay-ctrl",
	usage: "--vpopmail FILE | --relay-ctrl DIR [options]",
	help: `Take over the live grants of the tool poprelay replaces, then rebuild, so
roaming users keep relaying across the switch. --vpopmail reads vpopmail's
~vpopmail/etc/open-smtp ("IP:allow,...<TAB>UNIXTIME" lines; the user is
not recorded there); --relay-ctrl reads relay-ctrl's spool directory (one
file per IP, its mtime the login time, USER and DOMAIN inside). Grants
already past the max age, addresses in the never-grant set, and addresses
whose grant in the spool is newer are skipped. A bad open-smtp line stops
the import (exit 100, FILE:LINE) before anything is recorded.`,
	flags: func(fs *flag.FlagSet) func(*env, []string) error {
		vpop := fs.String("vpopmail", "", "vpopmail's open-smtp `FILE`")
		rc := fs.String("relay-ctrl", "", "relay-ctrl's spool `DIR`")
		return func(e *env, args []string) error {
			if len(args) > 0 || (*vpop == "") == (*rc == "") {
				return usagef("one of --vpopmail FILE or --relay-ctrl DIR expected")
			}
			var gs []grant.Grant
			var err error
			if *vpop != "" {
				f, ferr := os.Open(*vpop)
				if ferr != nil {
					return unable("read "+*vpop, ferr)
				}
				gs, err = migrate.Vpopmail(f, *vpop)
				f.Close()
				var le *migrate.LineError
				if errors.As(err, &le) {
					return perm("%v", err)
				}
				if err != nil {
					return unable("read "+*vpop, err)
				}
			} else {
				gs, err = migrate.RelayCtrl(*rc, func(name, why string) {
					e.vlogf("skipped %s/%s: %s", *rc, name, why)
				})
				if err != nil {
					return unable("read "+*rc, err)
				}
			}
			return e.importGrants(gs)
		}
	},
}

func (e *env) importGrants(gs0 []grant.Grant) error {
	set, err := e.cfg.loadNever()
	if err != nil {
		return err
	}
	now := e.now()
	return e.locked(func() error {
		gs, err := e.grants(true)
		if err != nil {
			return unable("list grants in "+e.cfg.Spool, err)
		}
		have := make(map[string]int, len(gs))
		for i, g := range gs {
			have[g.IP] = i
		}
		take := make([]grant.Grant, 0, len(gs0))
		for _, g := range gs0 {
			if !g.Expiry(e.cfg.MaxAge).After(now) {
				e.vlogf("skipped %s: expired", g.IP)
				continue
			}
			if why, refused := set.Refuse(g.IP); refused {
				e.logf("warning: skipped %s: never granted: %s", g.IP, why)
				continue
			}
			if err := grant.Prepare(&g, now); err != nil {
				return unable("record grant for "+g.IP+" in "+e.cfg.Spool, err)
			}
			if i, ok := have[g.IP]; ok && !gs[i].Time.Before(g.Time) {
				e.vlogf("skipped %s: the spool's grant is newer", g.IP)
				continue
			}
			take = append(take, g)
		}
		// In address order, the latest of each address (migrate's
		// readers give each address once already).
		grant.SortByAddr(take)
		k := 0
		for i, g := range take {
			if i > 0 && g.IP == take[k-1].IP {
				if g.Time.After(take[k-1].Time) {
					take[k-1] = g
				}
				continue
			}
			take[k] = g
			k++
		}
		take = take[:k]
		n := len(take)
		e.vlogf("imported %d of %d grants", n, len(gs0))
		if n == 0 {
			return nil
		}
		// Into the folded file at once, as a login over each grant it
		// replaces: one file written, not one per grant.
		if err := e.fold(grant.Overlay(gs, take), nil); err != nil {
			return err
		}
		return e.rebuildAfter(fmt.Sprintf("imported %d grants", n))
	})
}
