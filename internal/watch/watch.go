// Package watch keeps a relay CDB current: it watches the grant spool and
// the static rules file with fsnotify, keeps the grants and the parsed rules
// in memory, and republishes within milliseconds of a change.
//
// A burst of changes is coalesced: a rebuild runs Debounce after the last
// change, but never later than MaxDelay after the first one, so a steady
// login storm still publishes at least every MaxDelay. Grants lapse exactly
// on time: a timer fires at the next expiry and republishes without it.
// A full rescan runs at start, after an event overflow, and every Rescan as
// a safety net. The rules file is read only once writes to it have
// stopped for Settle, so an editor that truncates and rewrites it is not
// caught halfway; a bad edit of it is logged and the last good rules stay
// in use, and so does a file that suddenly became empty or lost most of
// its rules (see package confirmed), until Reload (SIGHUP) or relayctl
// rebuild (which saves the file as the confirmed copy, Config.Confirmed)
// confirms it. A failed publish is logged and retried, and the previous
// CDB stays in place meanwhile.
package watch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/poprelay/poprelay/internal/confirmed"
	"github.com/poprelay/poprelay/internal/grant"
	"github.com/poprelay/poprelay/internal/merge"
	"github.com/poprelay/poprelay/internal/regular"
	"github.com/poprelay/poprelay/internal/rules"
)

// Source is where grants live: the spool store, or any store with the same
// two reads.
type Source interface {
	List() ([]grant.Grant, error)
	Get(ip string) (grant.Grant, bool, error)
}

// Sharer shares this host's grants with others (share.Publisher is one).
// Sync takes every live grant; Put and Remove one change each.
type Sharer interface {
	Sync(live []grant.Grant, now time.Time)
	Put(g grant.Grant)
	Remove(ip string)
}

// Stats describes one publish, for logs and metrics.
type Stats struct {
	Grants   int           // live grants published
	Duration time.Duration // time the publish took
	// Latency is, for each grant that changed since the last publish,
	// the time from the watcher seeing its file change to the publish
	// completing.
	Latency []time.Duration
	Reason  string // what triggered it: "start", "change", "expiry", ...
	// Capped and OverCap are the live grants refused by the per-user
	// and the total cap (merge.Caps; with Write only).
	Capped, OverCap int
}

// Config configures a Watcher. Spool, Rules, Source, and Publish or
// Write are required.
type Config struct {
	Spool    string        // grant spool directory
	Rules    string        // static rules file (tcprules syntax)
	MaxAge   time.Duration // grant lifetime (default 1h)
	Debounce time.Duration // quiet time before a rebuild (default 5ms)
	MaxDelay time.Duration // longest a change waits under a storm (default 50ms)
	Rescan   time.Duration // full rescan period (default 5m)
	Retry    time.Duration // wait after a failed publish (default 1s)
	// Settle is how long the rules file must see no write before it is
	// read (default 250ms).
	Settle time.Duration
	// Confirmed is the copy of the last confirmed rules (CDB.rules, see
	// package confirmed) that every writer of the CDB compares the rules
	// file with. The watcher watches it: another writer replacing it
	// (relayctl rebuild confirming the file) makes it read the rules
	// again. With the default LoadRules it is also the copy compared
	// with; "" keeps the last confirmed rules in memory alone.
	Confirmed string

	Source Source
	// Publish writes the CDB for the static rules and the live grants
	// (already without the expired ones). It must be atomic.
	Publish func(static []rules.Rule, grants []grant.Grant, now time.Time) error
	// Write, if set, is used instead of Publish: the watcher keeps the
	// merge current (a merge.Set: each grant's records computed once per
	// change of it, all of them once per change of the rules or
	// Options), and Write must publish the CDB atomically, its content
	// written whole by fill to a file at offset 0.
	Write func(fill func(f io.Writer) error) error
	// Share, if set, is told before each publish what to share with
	// other hosts: after a start, rescan, reload or retry every live
	// grant (Sync), after a change or an expiry only the grants that
	// changed since the last publish (Put, or Remove for one gone or
	// expired), so a publish under a storm, or at each of 100k grants'
	// expiries, costs it O(changes), not O(grants).
	Share Sharer
	// Options returns the merge settings for Write, before each publish.
	// While they have not changed it must return the same Never set
	// (by identity), or every grant is classified again.
	Options func() (merge.Options, error)
	// LoadRules reads the static rules file through the guard every
	// writer applies (a confirmed.Guard), confirm telling it to take the
	// file as it is (Reload); nil parses Rules and applies a Guard on
	// Confirmed.
	LoadRules func(confirm bool) (confirmed.Result, error)
	// Logf logs one line; nil discards.
	Logf func(format string, args ...any)
	// Observe is called after each successful publish; nil ignores.
	Observe func(Stats)
	// OnError is called for each failure, with its kind: "rules" (the
	// rules file is unreadable or bad), "spool" (grants unreadable),
	// "rebuild" (publish failed) or "watch" (events lost); nil ignores.
	OnError func(kind string, err error)
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
}

// ErrTryAgain, wrapped by an error of LoadRules, says the rules could
// not be read for a passing reason (the lock they are read under was
// busy): the next publish, or its retry, reads them again. Any other
// error waits for the next change of the rules file.
var ErrTryAgain = errors.New("try again")

// eventBuffer is how many fsnotify events may wait while a rebuild runs;
// beyond it fsnotify's reader waits (the kernel queues the rest).
const eventBuffer = 8192

// Watcher is a running watch. Create it with New and run it with Run.
type Watcher struct {
	cfg    Config
	reload chan struct{}

	notifyMu sync.Mutex
	notified map[string]time.Time // IPs changed in a non-file source
	poke     chan struct{}

	static      []rules.Rule
	haveRules   bool
	set         *merge.Set           // the grants, in address order, with their records
	changed     map[string]time.Time // IPs seen changing since the last publish
	shared      map[string]bool      // IPs whose grant changed since the last Share
	fullScan    bool
	scanned     bool // a full scan ran since the last Share
	scanFailing bool // the last full scan failed; read again on the next timer
	rulesStale  bool
	confirm     bool // the next rules read is taken whatever its size
	held        int  // rules in the file held back; -1: nothing held
	heldLast    int  // the confirmed rules published meanwhile
	guard       *confirmed.Guard
	copyID      confirmed.FileID // Confirmed as the last rules read found or saved it
}

// New returns a Watcher for cfg, with defaults filled in.
func New(cfg Config) *Watcher {
	if cfg.MaxAge <= 0 {
		cfg.MaxAge = time.Hour
	}
	if cfg.Debounce <= 0 {
		cfg.Debounce = 5 * time.Millisecond
	}
	if cfg.MaxDelay < cfg.Debounce {
		cfg.MaxDelay = 10 * cfg.Debounce
	}
	if cfg.Rescan <= 0 {
		cfg.Rescan = 5 * time.Minute
	}
	if cfg.Retry <= 0 {
		cfg.Retry = time.Second
	}
	if cfg.Settle <= 0 {
		cfg.Settle = 250 * time.Millisecond
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	cfg.Spool = filepath.Clean(cfg.Spool)
	if cfg.Rules != "" {
		cfg.Rules = filepath.Clean(cfg.Rules)
	}
	return &Watcher{
		cfg:     cfg,
		reload:  make(chan struct{}, 1),
		poke:    make(chan struct{}, 1),
		set:     merge.NewSet(nil, merge.Options{MaxAge: cfg.MaxAge}),
		changed: map[string]time.Time{},
		shared:  map[string]bool{},
		held:    -1,
		guard:   &confirmed.Guard{Path: cfg.Confirmed, Source: cfg.Rules},
	}
}

// Notify tells the running watcher that the grants for ips changed in
// the Source (for a source that is not the spool, such as an etcd
// mirror): it re-reads them with Get and rebuilds, debounced like a spool
// change. It never blocks.
func (w *Watcher) Notify(ips ...string) {
	now := time.Now()
	w.notifyMu.Lock()
	if w.notified == nil {
		w.notified = map[string]time.Time{}
	}
	for _, ip := range ips {
		if _, ok := w.notified[ip]; !ok {
			w.notified[ip] = now
		}
	}
	w.notifyMu.Unlock()
	select {
	case w.poke <- struct{}{}:
	default:
	}
}

// Reload asks the running watcher to re-read the rules and rescan the
// spool (what SIGHUP does).
func (w *Watcher) Reload() {
	select {
	case w.reload <- struct{}{}:
	default:
	}
}

// fail logs a failure and reports it by kind: "rules", "spool",
// "rebuild" or "watch".
func (w *Watcher) fail(kind, what string, err error) {
	w.cfg.Logf("warning: %s: %v", what, err)
	if w.cfg.OnError != nil {
		w.cfg.OnError(kind, fmt.Errorf("%s: %w", what, err))
	}
}

// loadRules re-reads the static rules file, keeping the last good rules
// on any error. A missing file is an error too, as for relayctl rebuild: a
// CDB without the admin's rules would silently drop them. A file that
// became empty or lost more than half its rules, against the last
// confirmed rules, is held back (those rules are published) unless the
// read is confirmed: the same guard as every other writer's, on the same
// copy of the confirmed rules, so no other writer's publish confirms it.
// An empty Rules path means no static rules.
func (w *Watcher) loadRules() {
	w.rulesStale = false
	confirm := w.confirm
	w.confirm = false
	if w.cfg.Rules == "" {
		w.static, w.haveRules = nil, true
		return
	}
	load := w.cfg.LoadRules
	if load == nil {
		load = w.readRules
	}
	res, err := load(confirm)
	// This read's own save of the copy is no news; a copy saved since
	// is (it has another FileID).
	w.copyID = res.CopyID
	if err != nil {
		w.rulesStale = errors.Is(err, ErrTryAgain)
		w.fail("rules", "bad or unreadable rules"+w.keeping(), err)
		return
	}
	for _, msg := range res.Warnings {
		w.cfg.Logf("warning: %s", msg)
	}
	if res.Held {
		if w.held != res.File || w.heldLast != res.Last {
			w.held, w.heldLast = res.File, res.Last
			w.fail("rules", fmt.Sprintf("%s has %d rules where the CDB was built from %d", w.cfg.Rules, res.File, res.Last),
				errors.New("held back until relayctl rebuild or SIGHUP confirms it (publishing the last confirmed rules)"))
		}
		w.static, w.haveRules = res.Rules, true
		return
	}
	if w.held >= 0 {
		what := "no longer held back"
		switch {
		case confirm:
			what = "confirmed"
		case res.Matched:
			what = "confirmed by another writer (relayctl rebuild)"
		}
		w.cfg.Logf("%s: %d rules, %s", w.cfg.Rules, res.File, what)
		w.held = -1
	}
	w.static, w.haveRules = res.Rules, true
}

// readRules parses the rules file through the watcher's own Guard; a
// FIFO or a directory is an error, never a hang.
func (w *Watcher) readRules(confirm bool) (confirmed.Result, error) {
	f, _, err := regular.Open(w.cfg.Rules)
	if errors.Is(err, regular.ErrNotRegular) {
		return confirmed.Result{}, fmt.Errorf("%s: not a regular file", w.cfg.Rules)
	}
	if err != nil {
		return confirmed.Result{}, err
	}
	defer f.Close()
	text, err := io.ReadAll(f)
	if err != nil {
		return confirmed.Result{}, err
	}
	rs, err := rules.Parse(bytes.NewReader(text), w.cfg.Rules)
	if err != nil {
		return confirmed.Result{}, err
	}
	return w.guard.Apply(text, rs, confirm)
}

func (w *Watcher) keeping() string {
	if w.haveRules {
		return " (keeping the last good rules)"
	}
	return " (no usable rules yet: CDB not written)"
}

// scan re-reads every grant from the source.
func (w *Watcher) scan() error {
	gs, err := w.cfg.Source.List()
	if err != nil {
		return err
	}
	// Only the grants that differ from what the set holds are
	// classified again.
	seen := make(map[string]bool, len(gs))
	for _, g := range gs {
		seen[g.IP] = true
		w.set.Put(g)
	}
	var gone []string
	w.set.Each(func(g grant.Grant) {
		if !seen[g.IP] {
			gone = append(gone, g.IP)
		}
	})
	for _, ip := range gone {
		w.set.Delete(ip)
	}
	w.fullScan = false
	w.scanned = true
	return nil
}

// refresh re-reads the grants whose files changed.
func (w *Watcher) refresh() {
	for ip := range w.changed {
		g, ok, err := w.cfg.Source.Get(ip)
		old, had := w.set.Get(ip)
		switch {
		case err != nil:
			w.fail("spool", "unable to read grant "+ip, err)
		case ok:
			w.set.Put(g)
			if !had || old != g {
				w.shared[ip] = true
			}
		default:
			w.set.Delete(ip)
			if had {
				w.shared[ip] = true
			}
		}
	}
}

// share tells the Sharer what to share before a publish for reason.
func (w *Watcher) share(reason string, now time.Time) {
	if w.cfg.Share == nil {
		return
	}
	// An expiry publish shares nothing new: every mirror drops an
	// expired grant by itself, and etcd's lease removes its key.
	if (reason == "change" || reason == "expiry") && !w.scanned {
		for ip := range w.shared {
			if g, ok := w.set.Get(ip); ok && g.Expiry(w.cfg.MaxAge).After(now) {
				w.cfg.Share.Put(g)
			} else {
				w.cfg.Share.Remove(ip)
			}
		}
	} else {
		var live []grant.Grant
		w.set.Each(func(g grant.Grant) {
			if g.Expiry(w.cfg.MaxAge).After(now) {
				live = append(live, g)
			}
		})
		w.cfg.Share.Sync(live, now)
	}
	clear(w.shared)
	w.scanned = false
}

// publish rebuilds the CDB from memory and returns the next expiry.
func (w *Watcher) publish(reason string) (next time.Time, err error) {
	start := time.Now()
	if w.rulesStale || !w.haveRules {
		w.loadRules()
	}
	if !w.haveRules {
		return time.Time{}, errors.New("no usable static rules")
	}
	scanFailed := false
	if w.fullScan {
		if err := w.scan(); err != nil {
			// Never publish an empty CDB because a read failed: go on
			// with the grants last seen (they still expire on time)
			// and read again soon.
			if !w.scanFailing {
				w.fail("spool", "unable to read the spool, using the grants last seen", err)
			}
			w.scanFailing, scanFailed = true, true
			w.refresh()
		} else if w.scanFailing {
			w.cfg.Logf("spool %s readable again", w.cfg.Spool)
			w.scanFailing = false
		}
	} else {
		w.refresh()
	}
	now := w.cfg.Now()
	opt := merge.Options{MaxAge: w.cfg.MaxAge}
	if w.cfg.Write != nil && w.cfg.Options != nil {
		if opt, err = w.cfg.Options(); err != nil {
			return time.Time{}, err
		}
	}
	w.set.Configure(w.static, opt)
	w.share(reason, now)
	live := 0
	var sum merge.Summary
	if w.cfg.Write != nil {
		err = w.cfg.Write(func(f io.Writer) error {
			var nx time.Time
			sum, nx, err = w.set.Write(f, now)
			live, next = sum.Grants-sum.Expired-sum.Capped-sum.OverCap, nx
			return err
		})
	} else {
		var gs []grant.Grant
		w.set.Each(func(g grant.Grant) {
			exp := g.Expiry(w.cfg.MaxAge)
			if !exp.After(now) {
				return
			}
			gs = append(gs, g)
			if next.IsZero() || exp.Before(next) {
				next = exp
			}
		})
		live = len(gs)
		err = w.cfg.Publish(w.static, gs, now)
	}
	if err != nil {
		return time.Time{}, err
	}
	if scanFailed {
		if retry := now.Add(w.cfg.Retry); next.IsZero() || retry.Before(next) {
			next = retry
		}
	}
	done := time.Now()
	st := Stats{Grants: live, Duration: done.Sub(start), Reason: reason, Capped: sum.Capped, OverCap: sum.OverCap}
	for _, seen := range w.changed {
		st.Latency = append(st.Latency, done.Sub(seen))
	}
	clear(w.changed)
	w.cfg.Logf("rebuilt: %s: %d grants in %.1f ms", reason, st.Grants, float64(st.Duration.Microseconds())/1000)
	if warn := opt.Caps.Warning(sum); warn != "" {
		// At every publish while it lasts, not once.
		w.cfg.Logf("warning: %s", warn)
	}
	if w.cfg.Observe != nil {
		w.cfg.Observe(st)
	}
	return next, nil
}

// addWatches (re)registers the spool, its parent and the rules file's
// directory. Missing directories are skipped: the parent's events bring
// the spool back when it is recreated.
func (w *Watcher) addWatches(fw *fsnotify.Watcher) {
	dirs := []string{filepath.Dir(w.cfg.Spool), w.cfg.Spool}
	if w.cfg.Rules != "" {
		dirs = append(dirs, filepath.Dir(w.cfg.Rules))
	}
	if w.cfg.Confirmed != "" {
		dirs = append(dirs, filepath.Dir(filepath.Clean(w.cfg.Confirmed)))
	}
	have := map[string]bool{}
	for _, d := range fw.WatchList() {
		have[filepath.Clean(d)] = true
	}
	for _, d := range dirs {
		if have[d] {
			continue
		}
		if err := fw.Add(d); err != nil && !errors.Is(err, os.ErrNotExist) {
			w.fail("watch", "unable to watch "+d, err)
		}
		have[d] = true
	}
}

// classify tells what an event means: a grant file changed (its IP), the
// spool itself appeared or vanished, or the rules file changed. The copy
// of the confirmed rules changed by another writer (relayctl rebuild
// confirming the file) is a rules event too: the rules are read again
// and compared with it. A CDB another writer published confirms nothing:
// cron's relayctl expire publishes the rules it held back.
func (w *Watcher) classify(ev fsnotify.Event) (ip string, spool, rulesChanged bool) {
	name := filepath.Clean(ev.Name)
	switch {
	case w.cfg.Confirmed != "" && w.cfg.Rules != "" && name == filepath.Clean(w.cfg.Confirmed):
		if id := confirmed.StatID(w.cfg.Confirmed); id != w.copyID {
			w.copyID = id
			return "", false, true
		}
		return "", false, false
	case w.cfg.Rules != "" && name == w.cfg.Rules:
		return "", false, true
	case name == w.cfg.Spool:
		return "", true, false
	case filepath.Dir(name) == w.cfg.Spool:
		base := filepath.Base(name)
		if ip, ok := grant.ClaimedIP(base); ok {
			return ip, false, false // a fold claiming ip's file
		}
		if base == grant.FoldedName {
			// A fold, or a grant revoked or expired from the folded
			// file: read everything again.
			return "", true, false
		}
		if strings.HasPrefix(base, ".") {
			return "", false, false // temp files; the rename brings the grant
		}
		return base, false, false
	}
	return "", false, false
}

// Run watches until ctx is done. A publish in flight is always finished
// before Run returns. It returns an error only if the watch cannot start.
func (w *Watcher) Run(ctx context.Context) error {
	// Buffered: events that come while a rebuild runs wait in the channel
	// and are all taken in by the next one (see drain).
	fw, err := fsnotify.NewBufferedWatcher(eventBuffer)
	if err != nil {
		return err
	}
	defer fw.Close()
	w.addWatches(fw)

	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	expiry := time.NewTimer(time.Hour)
	expiry.Stop()
	rescan := time.NewTicker(w.cfg.Rescan)
	defer rescan.Stop()
	// A write to the rules file restarts this timer; the rules are read
	// when it fires, once the writer has gone quiet.
	settle := time.NewTimer(time.Hour)
	settle.Stop()

	var pendingSince time.Time // zero: nothing pending
	retrying := false          // the expiry timer is a retry after a failure
	// The first event handled right after a rebuild most likely happened
	// during it, while the loop was busy: it has waited since the rebuild
	// began, and the cap counts from there. Under a login storm this
	// makes rebuilds follow each other, each taking in what arrived
	// during the last, instead of adding up to MaxDelay per round.
	var runStart, runEnd time.Time
	arm := func() {
		now := time.Now()
		if pendingSince.IsZero() {
			pendingSince = now
			if now.Sub(runEnd) < time.Millisecond {
				pendingSince = runStart
			}
		}
		d := w.cfg.Debounce
		if lim := pendingSince.Add(w.cfg.MaxDelay).Sub(now); lim < d {
			d = max(lim, 0)
		}
		debounce.Reset(d)
	}
	run := func(reason string) {
		pendingSince = time.Time{}
		debounce.Stop()
		runStart = time.Now()
		defer func() { runEnd = time.Now() }()
		next, err := w.publish(reason)
		if err != nil {
			w.fail("rebuild", "rebuild failed, previous CDB kept", err)
			w.fullScan = true
			retrying = true
			expiry.Reset(w.cfg.Retry)
			return
		}
		retrying = false
		if next.IsZero() {
			expiry.Stop()
		} else {
			expiry.Reset(max(next.Sub(w.cfg.Now()), 0))
		}
	}

	// handle takes in one event and tells whether it calls for a rebuild.
	handle := func(ev fsnotify.Event) bool {
		ip, spool, rc := w.classify(ev)
		switch {
		case rc:
			settle.Reset(w.cfg.Settle)
			return false
		case spool:
			// The spool was created, removed or renamed: watch it
			// again and rescan it.
			w.addWatches(fw)
			w.fullScan = true
		case ip != "":
			if _, seen := w.changed[ip]; !seen {
				w.changed[ip] = time.Now()
			}
		default:
			return false
		}
		return true
	}
	// drain takes in every event already queued, so one rebuild covers
	// all the logins that came while the last one ran.
	drain := func() {
		for {
			select {
			case ev, ok := <-fw.Events:
				if !ok {
					return
				}
				handle(ev)
			default:
				return
			}
		}
	}

	w.fullScan = true
	w.rulesStale = true
	run("start")
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-fw.Events:
			if !ok {
				return errors.New("watch: fsnotify closed")
			}
			if handle(ev) {
				arm()
			}
		case err, ok := <-fw.Errors:
			if !ok {
				return errors.New("watch: fsnotify closed")
			}
			// Overflow or another loss of events: trust nothing.
			w.fail("watch", "events lost, rescanning", err)
			w.fullScan = true
			arm()
		case <-w.poke:
			w.notifyMu.Lock()
			for ip, at := range w.notified {
				if _, ok := w.changed[ip]; !ok {
					w.changed[ip] = at
				}
			}
			clear(w.notified)
			w.notifyMu.Unlock()
			arm()
		case <-settle.C:
			w.rulesStale = true
			arm()
		case <-debounce.C:
			drain()
			run("change")
		case <-expiry.C:
			if retrying || w.scanFailing {
				w.addWatches(fw)
				w.fullScan = true
				run("retry")
			} else {
				run("expiry")
			}
		case <-rescan.C:
			w.addWatches(fw)
			w.fullScan = true
			w.rulesStale = true
			run("rescan")
		case <-w.reload:
			w.addWatches(fw)
			w.fullScan = true
			w.rulesStale = true
			w.confirm = true
			run("reload")
		}
	}
}
