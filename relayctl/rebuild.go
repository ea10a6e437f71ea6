package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/poprelay/poprelay/internal/atomic"
	"github.com/poprelay/poprelay/internal/cdb"
	"github.com/poprelay/poprelay/internal/confirmed"
	"github.com/poprelay/poprelay/internal/grant"
	"github.com/poprelay/poprelay/internal/lock"
	"github.com/poprelay/poprelay/internal/merge"
	"github.com/poprelay/poprelay/internal/regular"
	"github.com/poprelay/poprelay/internal/rules"
)

var rebuildCmd = &command{
	name:  "rebuild",
	short: "write the CDB from the rules file and the live grants",
	usage: "[options]",
	help: `Write the CDB from the static rules file and the live grants. Static
records come first, in file order; then, for each grant that has not
expired and is not in the never-grant set, a record keyed by the text
tcpserver looks its client up under (Debian's IPv6 tcpserver compresses
even one zero group: 2001:db8::1:1:1:1:1), with --mapped also the
::ffff:a.b.c.d key of an IPv4 address (a tcpserver run with -6), with the
settings of the static rule tcpserver would have matched, plus
RELAYCLIENT="" (unless that rule sets RELAYCLIENT), RBLSMTPD="" (unless it
sets RBLSMTPD, or --keep-rbl) and with --remoteinfo TCPREMOTEINFO=user. An
exact static record for the address wins, and an address, prefix or range
deny stays a deny; the catch-all ":deny" does not stop a grant (the record
gets RELAYCLIENT="" and RBLSMTPD="" alone). A grant whose key would end in
":" (2001:db8:aaaa::) is refused: tcpserver would also match it as a
prefix. tcpserver tries the exact address before host-name rules
(=host, =.domain), so a grant overrides them: rebuild warns when the rules
file has any, and when vpopmail's roaming users are on (its
~vpopmail/etc/open-smtp written within --max-age: vchkpw rebuilds the
CDB itself at every login). The CDB is replaced atomically under the lock; on any failure
the old one stays. Temp files a killed writer left beside the CDB are removed, and so
are those in the spool older than a minute. A missing rules file is an
error; --rules "" means none. Once the spool holds 1000 grant files
(the logins since), rebuild folds them into SPOOL/.grants, one file,
and removes them, a part at a time with the lock released in between;
expire, revoke and import fold too. The grant files as read are saved
beside the CDB in CDB.state, so the next run reads only those that
changed since; a state file that is missing, damaged, for another
spool, or writable by anyone but its owner (root) is ignored with a
warning and replaced. rebuild takes the rules file as it is and saves
it beside the CDB as CDB.rules, the rules last confirmed (before the
CDB: a save that fails is exit 111, the CDB unchanged). The other
commands that write the CDB (watch, expire, allow, revoke, import) hold
back a rules file that became empty or lost more than half its rules
against CDB.rules: they publish the grants with the confirmed rules and
warn "FILE has N rules where the CDB was built from M"; run relayctl
rebuild (or send the watcher SIGHUP) to publish the file as it is.`,
	flags: func(fs *flag.FlagSet) func(*env, []string) error {
		return func(e *env, args []string) error {
			if len(args) > 0 {
				return usagef("no arguments expected")
			}
			// The one confirmation of a rules file that shrank.
			e.confirmRules = true
			return e.locked(func() error {
				_, err := e.rebuild()
				if err == nil {
					e.warnHostRules(e.built.rs, "grants override")
					e.warnVpopmail()
					e.cleanSpool()
				}
				return err
			})
		}
	},
}

// locked runs fn holding the CDB's lock, waiting for it at most
// --lock-timeout, then removes the grant files a fold in fn left
// (sweepSpool).
func (e *env) locked(fn func() error) error {
	err := e.lockedOnce(fn)
	e.sweepSpool()
	return err
}

// lockedOnce runs fn holding the CDB's lock.
func (e *env) lockedOnce(fn func() error) error {
	l, err := lock.Lock(e.cfg.Lock(), e.cfg.LockTimeout)
	if err != nil {
		return unable("lock "+e.cfg.Lock(), err)
	}
	if l.Repaired != "" {
		e.logf("warning: %s had %s: repaired", e.cfg.Lock(), l.Repaired)
	}
	defer l.Unlock()
	return fn()
}

// store returns the grant store, logging skipped entries.
func (e *env) store() *grant.Store {
	s := grant.New(e.cfg.Spool)
	s.Logf = func(format string, args ...any) {
		e.logf("warning: spool: "+format, args...)
	}
	return s
}

// readRules parses the static rules file as it is. A parse error is
// permanent; a file that cannot be read is temporary, except one that is
// not a regular file (a directory, a FIFO: opened without blocking).
func (e *env) readRules() ([]rules.Rule, error) {
	_, rs, err := e.readRulesText()
	return rs, err
}

// readRulesText is readRules, with the text parsed.
func (e *env) readRulesText() ([]byte, []rules.Rule, error) {
	path := e.cfg.Rules
	if path == "" {
		return nil, nil, nil
	}
	f, _, err := regular.Open(path)
	if errors.Is(err, regular.ErrNotRegular) {
		return nil, nil, perm("unable to read %s: not a regular file", path)
	}
	if err != nil {
		return nil, nil, unable("read "+path, err)
	}
	defer f.Close()
	text, err := io.ReadAll(f)
	if err != nil {
		return nil, nil, unable("read "+path, err)
	}
	rs, err := rules.Parse(bytes.NewReader(text), path)
	var pe *rules.ParseError
	switch {
	case errors.As(err, &pe):
		return nil, nil, perm("%s", pe.Error())
	case errors.Is(err, rules.ErrLineTooLong):
		return nil, nil, perm("unable to read %s: %v", path, err)
	case err != nil:
		return nil, nil, unable("read "+path, err)
	}
	return text, rs, nil
}

// guardRules reads the static rules a writer of the CDB publishes: the
// rules file, unless it became empty or lost more than half its rules
// against the last confirmed ones (CDB.rules), which are then returned
// instead, Held. With confirm (relayctl rebuild) the file is taken as it
// is; every other writer (watch, expire, allow, revoke, import) applies
// the guard, so none of them confirms a truncated file by publishing it.
// Rules taken are saved as CDB.rules. A file that cannot be read or
// parsed is an error, as before. The caller holds the lock.
func (e *env) guardRules(confirm bool) (confirmed.Result, error) {
	text, rs, err := e.readRulesText()
	if err != nil || e.cfg.Rules == "" {
		return confirmed.Result{Rules: rs, File: len(rs)}, err
	}
	if e.guard == nil {
		e.guard = &confirmed.Guard{Path: e.cfg.confirmedPath(), Source: e.cfg.Rules}
	}
	res, err := e.guard.Apply(text, rs, confirm)
	if err != nil {
		return res, unable("save "+e.cfg.confirmedPath()+" (the rules as confirmed; the CDB is unchanged)", err)
	}
	if res.First {
		e.vlogf("no confirmed copy of %s yet: taking it as it is, saved as %s", e.cfg.Rules, e.cfg.confirmedPath())
	}
	return res, nil
}

// publishedRules reads the static rules as the writers publish them, for
// a command that only reads (list, check): a rules file held back is
// shown as the last confirmed rules, with a warning. Nothing is saved; a
// copy this user may not read is not compared with.
func (e *env) publishedRules() ([]rules.Rule, error) {
	text, rs, err := e.readRulesText()
	if err != nil || e.cfg.Rules == "" {
		return rs, err
	}
	g := &confirmed.Guard{Path: e.cfg.confirmedPath(), Source: e.cfg.Rules, ReadOnly: true}
	res, err := g.Apply(text, rs, false)
	if err != nil {
		return rs, nil
	}
	if res.Held {
		e.logf("warning: %s has %d rules where the CDB was built from %d: held back, shown as the last confirmed rules (%s); run relayctl rebuild to publish %s as it is",
			e.cfg.Rules, res.File, res.Last, e.cfg.confirmedPath(), e.cfg.Rules)
	}
	return res.Rules, nil
}

// writerRules is guardRules for a command that writes the CDB, saying
// once per run what the guard did.
func (e *env) writerRules() ([]rules.Rule, error) {
	res, err := e.guardRules(e.confirmRules)
	if err != nil {
		return nil, err
	}
	var msgs []string
	for _, w := range res.Warnings {
		msgs = append(msgs, "warning: "+w)
	}
	if res.Held {
		msgs = append(msgs, fmt.Sprintf("warning: %s has %d rules where the CDB was built from %d: held back, the CDB keeps the last confirmed rules (%s) with the grants; run relayctl rebuild to publish %s as it is",
			e.cfg.Rules, res.File, res.Last, e.cfg.confirmedPath(), e.cfg.Rules))
	}
	for _, m := range msgs {
		if !e.said[m] {
			if e.said == nil {
				e.said = map[string]bool{}
			}
			e.said[m] = true
			e.logf("%s", m)
		}
	}
	return res.Rules, nil
}

// mergeOptions are the merge settings of this run.
func (e *env) mergeOptions() (merge.Options, error) {
	set, err := e.cfg.loadNever()
	if err != nil {
		return merge.Options{}, err
	}
	return merge.Options{
		Now:        e.now(),
		MaxAge:     e.cfg.MaxAge,
		KeepRBL:    e.cfg.KeepRBL,
		RemoteInfo: e.cfg.RemoteInfo,
		Mapped:     e.cfg.Mapped,
		Never:      set,
		Caps:       e.cfg.caps(),
	}, nil
}

// cdbOutput lets a test make the CDB's file fail like a full disk.
var cdbOutput = func(f *os.File) io.WriteSeeker { return f }

// rebuild writes the CDB; the caller holds the lock.
func (e *env) rebuild() (merge.Summary, error) {
	var sum merge.Summary
	rs, err := e.writerRules()
	if err != nil {
		return sum, err
	}
	if e.cfg.Rules == "" {
		e.vlogf("no rules file: building from grants alone")
	}
	gs, err := e.grants(true)
	if err != nil {
		return sum, unable("list grants in "+e.cfg.Spool, err)
	}
	opt, err := e.mergeOptions()
	if err != nil {
		return sum, err
	}
	opt.Logf = func(format string, args ...any) {
		e.logf("warning: "+format, args...)
	}
	opt.Verbosef = e.vlogf
	if sum, err = e.writeCDB(rs, gs, opt); err != nil {
		return sum, err
	}
	if w := opt.Caps.Warning(sum); w != "" {
		e.logf("warning: %s", w)
	}
	e.built = &built{rules.NewIndex(rs), opt, rs}
	return sum, nil
}

// writeCDB merges rs and gs into the CDB and publishes it atomically; the
// caller holds the lock. (watch keeps its merge current instead: a
// merge.Set, written through watch.Config.Write.)
func (e *env) writeCDB(rs []rules.Rule, gs []grant.Grant, opt merge.Options) (merge.Summary, error) {
	var sum merge.Summary
	e.cleanDebris()
	err := atomic.WriteFile(e.cfg.CDB, 0o644, func(f *os.File) error {
		w := cdb.NewWriter(cdbOutput(f))
		var err error
		if sum, err = merge.Write(w, rs, gs, opt); err != nil {
			return err
		}
		return w.Finish()
	})
	if err != nil {
		return sum, unable("write "+e.cfg.CDB, err)
	}
	e.vlogf("wrote %s: %d static rules; %d grants: %d relayed (%d records), %d expired, %d refused, %d over the per-user cap, %d over the total cap, %d key forms denied, %d left to static records",
		e.cfg.CDB, sum.Static, sum.Grants, sum.Relayed, sum.Records, sum.Expired, sum.Refused, sum.Capped, sum.OverCap, sum.Denied, sum.Shadow)
	return sum, nil
}

// cleanDebris removes the temp files a writer killed mid-write (kill -9,
// a crash) left beside the CDB. The caller holds the lock, which every
// writer holds while its temp file exists, so they belong to no one.
func (e *env) cleanDebris() {
	gone, err := atomic.Clean(e.cfg.CDB)
	for _, name := range gone {
		e.vlogf("removed %s, left by an interrupted write", name)
	}
	if err != nil {
		e.logf("warning: unable to remove temp files beside %s: %s", e.cfg.CDB, why(err))
	}
}

// cleanSpool removes the temp files a killed login or expire left in the
// spool, once they are old enough to belong to no one (a minute).
func (e *env) cleanSpool() {
	s := e.store()
	var err error
	if e.snap != nil {
		// The temp files this run's scan saw: no second read of
		// the spool. (One created since is a login in flight.)
		err = s.CleanTemps(e.snap, e.now())
	} else {
		err = s.Clean(e.now())
	}
	if err != nil {
		e.logf("warning: unable to clean %s: %s", e.cfg.Spool, why(err))
	}
}

// built is what the last rebuild of this run merged.
type built struct {
	ix  *rules.Index
	opt merge.Options
	rs  []rules.Rule
}

// warnHostRules says, in one line, which host-name rules of rs a grant
// record overrides: tcpserver tries the exact address before =host and
// =.domain, so they never apply to a granted address.
func (e *env) warnHostRules(rs []rules.Rule, what string) {
	hs := merge.HostRules(rs)
	if len(hs) == 0 {
		return
	}
	var names []string
	for i, r := range hs {
		if i == 3 {
			names = append(names, fmt.Sprintf("and %d more", len(hs)-3))
			break
		}
		d := "allow"
		if r.Deny {
			d = "deny"
		}
		names = append(names, fmt.Sprintf("%s:%d %s:%s", e.cfg.Rules, r.Line, r.Addr, d))
	}
	e.logf("warning: %s host-name rules (tcpserver tries a client's address before its host name): %s", what, strings.Join(names, ", "))
}

// rebuildAfter is the rebuild that follows a change of the spool.
func (e *env) rebuildAfter(change string) error {
	if _, err := e.rebuild(); err != nil {
		var ee *exitError
		if errors.As(err, &ee) {
			ee.msg = fmt.Sprintf("%s (%s in the spool; the CDB is unchanged)", ee.msg, change)
		}
		return err
	}
	return nil
}
