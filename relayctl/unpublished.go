package main

import (
	"bytes"
	"os"

	"github.com/poprelay/poprelay/internal/cdb"
	"github.com/poprelay/poprelay/internal/grant"
	"github.com/poprelay/poprelay/internal/merge"
	"github.com/poprelay/poprelay/internal/rules"
)

// unpublished tells whether the CDB lacks what a rebuild would write for
// one of the live grants gs: for each key a grant relays under, the CDB's
// first record for that key must be the grant's record. It returns the
// first grant that is not published ("" when all are). This is how cron
// alone publishes a login: expire compares the CDB with the spool, so no
// clock, time stamp or extra file is trusted. A CDB that is missing or
// cannot be read counts as not published; a rules file that cannot be
// read is an error (a rebuild would fail on it too). The rules are those
// a rebuild of this run would publish: a rules file held back is
// compared as the last confirmed rules, and expire says nothing of it
// unless it rebuilds.
func (e *env) unpublished(gs []grant.Grant, over []bool) (string, error) {
	if len(gs) == 0 {
		return "", nil
	}
	res, err := e.guardRules(e.confirmRules)
	if err != nil {
		return "", err
	}
	rs := res.Rules // said by the rebuild that follows, if any
	opt, err := e.mergeOptions()
	if err != nil {
		return "", err
	}
	ix := rules.NewIndex(rs)
	// In memory: a lookup per key, and the file is a few MB at most.
	b, err := os.ReadFile(e.cfg.CDB)
	if err != nil {
		return gs[0].IP, nil
	}
	db, err := cdb.Bytes(b)
	if err != nil {
		return gs[0].IP, nil
	}
	for i, g := range gs {
		if over != nil && over[i] {
			continue // the total cap refuses it: no record
		}
		en, err := merge.Classify(ix, g, opt)
		if err != nil {
			return g.IP, nil
		}
		for _, k := range en.Keys {
			if k.Status != merge.Relay {
				continue
			}
			v, ok, err := db.Find([]byte(k.Key))
			if err != nil || !ok || !bytes.Equal(v, k.Value) {
				return g.IP, nil
			}
		}
	}
	return "", nil
}
