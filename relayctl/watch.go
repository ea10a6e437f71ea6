package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/poprelay/poprelay/internal/atomic"
	"github.com/poprelay/poprelay/internal/confirmed"
	"github.com/poprelay/poprelay/internal/grant"
	"github.com/poprelay/poprelay/internal/merge"
	"github.com/poprelay/poprelay/internal/metrics"
	"github.com/poprelay/poprelay/internal/never"
	"github.com/poprelay/poprelay/internal/share"
	"github.com/poprelay/poprelay/internal/watch"
)

var watchCmd = &command{
	name:  "watch",
	short: "keep the CDB current: rebuild within milliseconds of a login",
	usage: "[--metrics ADDR] [--debounce DUR] [--max-delay DUR] [--rescan DUR] [--settle DUR] [--source etcd | --publish etcd] [options]",
	help: `Run as a daemon that keeps the CDB current. It watches the spool and the
rules file's directory with inotify, keeps the grants and the parsed rules
in memory, and rebuilds (the same merge as rebuild, under the same lock)
DUR of --debounce after a change, or at most --max-delay after the first
change of a burst, so a login storm still publishes every --max-delay. A
timer fires at the next expiry, so grants close on time without cron.
The spool is rescanned in full at start, after lost events and every
--rescan. The rules file is read once writes to it have stopped for
--settle (an editor caught between truncating and rewriting it is not
published). A bad edit of the rules file is reported (file:line) and the
last good rules stay in use; so do the last confirmed rules (CDB.rules,
shared with expire and the other commands, so cron's expire confirms
nothing either) when the file suddenly became empty or lost more than
half its rules, with a warning, until SIGHUP or relayctl rebuild
confirms it. A spool that cannot be read never empties
the CDB. SIGHUP re-reads everything; SIGTERM and SIGINT exit after finishing a
rebuild in flight. One line per rebuild goes to standard error (for
multilog or journald). --metrics ADDR serves Prometheus metrics on
http://ADDR/metrics, to at most 64 connections at once (more are closed
at once), each cut off after 5 s without its request headers, 10 s to
read a request, 30 s to write a response or 30 s idle. These five flags also come from the environment:
POPRELAY_METRICS, POPRELAY_DEBOUNCE, POPRELAY_MAXDELAY, POPRELAY_RESCAN,
POPRELAY_SETTLE. With --source etcd (an SMTP host) the grants come from a
mirror of etcd instead of the spool; with --publish etcd (a POP/IMAP host)
the spool's grants are also shared through etcd (docs/etcd.md). The two
exclude each other. With --source etcd no CDB is written before the
mirror serves grants: while etcd does not answer at start, the cache
beside the CDB (CDB.etcd) after a second, or without one the previous
CDB stays as it is, static rule changes included, until etcd answers,
but for at most the max age after it was written: every login in it has
expired by then, and the static rules are written alone, with a
warning, until etcd answers.`,
	flags: func(fs *flag.FlagSet) func(*env, []string) error {
		metricsAddr := fs.String("metrics", "", "serve Prometheus metrics on `ADDR` (host:port)")
		debounce := fs.String("debounce", "", "quiet time before a rebuild, `DUR` (default 5ms)")
		maxDelay := fs.String("max-delay", "", "longest a change waits under a storm, `DUR` (default 50ms)")
		rescan := fs.String("rescan", "", "full rescan period, `DUR` (default 5m)")
		settle := fs.String("settle", "", "quiet time after a write to the rules file before it is read, `DUR` (default 250ms)")
		source := fs.String("source", "spool", "where the grants come from, `SOURCE`: spool, or etcd (an SMTP host of a cluster)")
		publish := fs.String("publish", "", "share this host's grants through `etcd`, the only value (a POP/IMAP host of a cluster)")
		etcdFlags := share.RegisterFlags(fs)
		return func(e *env, args []string) error {
			if len(args) > 0 {
				return usagef("no arguments expected")
			}
			opt := watchOptions{metrics: *metricsAddr, source: *source, publish: *publish}
			if err := sourceFlag("source", *source, "spool", "etcd"); err != nil {
				return err
			}
			if err := sourceFlag("publish", *publish, "", "etcd"); err != nil {
				return err
			}
			if *source == "etcd" && *publish == "etcd" {
				return usagef("--source etcd and --publish etcd exclude each other (a host that is both runs two watchers)")
			}
			if *source == "etcd" || *publish == "etcd" {
				why := "--publish etcd"
				if *source == "etcd" {
					why = "--source etcd"
				}
				c, err := e.needCluster(etcdFlags, why)
				if err != nil {
					return err
				}
				defer c.Close()
				opt.cluster = c
			}
			flags := map[string]*string{"debounce": debounce, "max-delay": maxDelay, "rescan": rescan, "settle": settle}
			dsts := map[string]*time.Duration{"debounce": &opt.debounce, "max-delay": &opt.maxDelay, "rescan": &opt.rescan, "settle": &opt.settle}
			for _, d := range watchTimes {
				v := *flags[d.name]
				if v == "" {
					v, _ = e.lookup(d.env)
				}
				*dsts[d.name] = d.def
				if v != "" {
					t, err := parseDuration(v)
					if err != nil {
						return usagef("bad duration %q for %s: %v", v, d.env, err)
					}
					*dsts[d.name] = t
				}
			}
			if opt.metrics == "" {
				opt.metrics, _ = e.lookup("POPRELAY_METRICS")
			}
			parent := e.ctx
			if parent == nil {
				parent = context.Background()
			}
			ctx, stop := signal.NotifyContext(parent, syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			return e.watch(ctx, opt)
		}
	},
}

// watchTimes are the watcher's durations: flag, variable, default.
// relayctl config shows them too.
var watchTimes = []struct {
	name, env string
	def       time.Duration
}{
	{"debounce", "POPRELAY_DEBOUNCE", 5 * time.Millisecond},
	{"max-delay", "POPRELAY_MAXDELAY", 50 * time.Millisecond},
	{"rescan", "POPRELAY_RESCAN", 5 * time.Minute},
	{"settle", "POPRELAY_SETTLE", 250 * time.Millisecond},
}

type watchOptions struct {
	metrics                    string
	source, publish            string         // "etcd" or the defaults
	cluster                    *share.Cluster // set for either
	debounce, maxDelay, rescan time.Duration
	settle                     time.Duration
	hup                        <-chan os.Signal  // nil: SIGHUP
	ready                      func(addr string) // called once serving, for tests
}

// watch runs the watcher until ctx is done.
func (e *env) watch(ctx context.Context, opt watchOptions) error {
	// Folding is for cron's expire and the other commands: a fold under
	// the watcher's lock would hold its publishes back.
	e.noFold = true
	m := metrics.New()
	// A message the merge repeats at every rebuild (a refused grant, a
	// denied one) is logged once, until the next reload.
	var seenMu sync.Mutex
	seen := map[string]bool{}
	once := func(format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		seenMu.Lock()
		defer seenMu.Unlock()
		if !seen[msg] {
			seen[msg] = true
			e.logf("warning: %s", msg)
		}
	}
	// The incremental merge: the watcher keeps every grant's records and
	// writes them with the static ones. The never-grant set is read
	// again before each publish; the same set as before is handed back
	// as the very same one, so the merge classifies nothing again.
	var lastNever *never.Set
	options := func() (merge.Options, error) {
		o, err := e.mergeOptions()
		if err != nil {
			return o, err
		}
		if set, ok := o.Never.(*never.Set); ok {
			if set.Equal(lastNever) {
				o.Never = lastNever
			} else {
				lastNever = set
			}
		}
		o.Logf = once
		return o, nil
	}
	// The CDB is written over the file it replaced last time, kept
	// beside it as .tcp.smtp.cdb.spare (see atomic.Spare): no new inode
	// and no blocks allocated and freed for each publish.
	spare := &atomic.Spare{Path: e.cfg.CDB, Perm: 0o644}
	defer spare.Remove()
	write := func(fill func(f io.Writer) error) error {
		return e.locked(func() error {
			e.cleanDebris()
			err := spare.Write(func(f *os.File) error { return fill(cdbOutput(f)) })
			if err != nil {
				return unable("write "+e.cfg.CDB, err)
			}
			return nil
		})
	}
	var src watch.Source = newSpoolSource(e)
	var mirror *share.Mirror
	var pub *share.Publisher
	var w *watch.Watcher
	switch {
	case opt.source == "etcd":
		mirror = opt.cluster.Mirror(func(ips []string) { w.Notify(ips...) })
		mirror.UseCache(e.cfg.CDB + ".etcd") // for a cold start while etcd is down
		src = mirror
	case opt.publish == "etcd":
		// The publisher is told the grants that changed at each
		// publish (every live one after a start, rescan or reload);
		// it never blocks.
		pub = opt.cluster.Publisher(share.PublisherOptions{})
		go pub.Run(ctx)
		go opt.cluster.Revocations(ctx, e.dropRevoked)
	}
	w = watch.New(watch.Config{
		Spool:    e.cfg.Spool,
		Rules:    e.cfg.Rules,
		MaxAge:   e.cfg.MaxAge,
		Debounce: opt.debounce,
		MaxDelay: opt.maxDelay,
		Rescan:   opt.rescan,
		Settle:   opt.settle,
		Source:   src,
		Write:    write,
		Share:    sharer(pub),
		Options:  options,

		Confirmed: e.cfg.confirmedPath(),
		// The same guard as every other writer's, on the same copy
		// of the confirmed rules, under the lock: a rebuild's
		// confirmation is never overwritten by a read that began
		// before it. SIGHUP confirms.
		LoadRules: func(confirm bool) (res confirmed.Result, err error) {
			locked := false
			err = e.lockedOnce(func() error {
				locked = true
				res, err = e.guardRules(confirm)
				return err
			})
			var ee *exitError
			if errors.As(err, &ee) {
				err = errors.New(ee.msg)
			}
			if err != nil && !locked {
				err = fmt.Errorf("%w: %w", err, watch.ErrTryAgain)
			}
			return res, err
		},
		Logf:    e.logf,
		Observe: m.Observe,
		OnError: m.Error,
	})

	if opt.metrics != "" {
		// At most metrics.MaxConns connections, each with timeouts:
		// scrapers must never take the descriptors publishing needs.
		ln, err := metrics.Listen(opt.metrics)
		if err != nil {
			return unable("listen on "+opt.metrics+" for metrics", err)
		}
		srv := m.Server(e.logf)
		go srv.Serve(ln)
		defer srv.Close()
		e.logf("metrics on http://%s/metrics", ln.Addr())
		if opt.ready != nil {
			opt.ready(ln.Addr().String())
		}
	}

	hup := opt.hup
	if hup == nil {
		c := make(chan os.Signal, 1)
		signal.Notify(c, syscall.SIGHUP)
		defer signal.Stop(c)
		hup = c
	}
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				e.logf("SIGHUP: re-reading the rules and the spool")
				seenMu.Lock()
				clear(seen)
				seenMu.Unlock()
				w.Reload()
			}
		}
	}()
	e.cleanSpool()
	if mirror != nil {
		// The mirror saves its cache when it stops: wait for that
		// before exiting, or a restart during an etcd outage would
		// serve an older copy.
		mctx, stopMirror := context.WithCancel(ctx)
		mirrorDone := make(chan struct{})
		go func() {
			defer close(mirrorDone)
			mirror.Run(mctx)
		}()
		defer func() {
			stopMirror()
			<-mirrorDone
		}()
		// No CDB is written before the mirror serves grants (from
		// etcd, or from its cache while etcd does not answer): a CDB
		// written now would have lost every grant only because etcd
		// could not be read. Without a cache, the previous CDB stays as
		// it is, static rules included, until etcd answers. Only a
		// host without any CDB yet gets its static rules at once.
		if !e.waitMirror(ctx, mirror) {
			return nil
		}
	}
	e.logf("watching %s and %s for %s", e.cfg.Spool, e.cfg.Rules, e.cfg.CDB)
	e.warnVpopmail()
	if err := w.Run(ctx); err != nil {
		if errors.Is(err, context.Canceled) {
			return nil
		}
		return unable("watch "+e.cfg.Spool, err)
	}
	e.logf("exiting")
	return nil
}

// waitMirror waits until the mirror serves grants, or ctx is done
// (false), saying why while it waits. If there is no CDB yet, it
// waits only a moment: there are no grants to lose, and without a CDB
// tcpserver -x refuses every connection.
//
// Without a usable cache the previous CDB is held, but not for ever:
// it may hold grants nothing here can close (their exps are in no file
// the watcher reads), and they must close by their exp. A login's exp
// is at most the max age after its login, so every login in a CDB
// written at T has expired by T + max age: from then on the CDB is
// replaced by the static rules alone, with a warning, until etcd
// answers. A grant given a longer life (relayctl allow --for, an exp
// chosen by etcd's writer) closes early then, which fails closed.
func (e *env) waitMirror(ctx context.Context, mirror *share.Mirror) bool {
	patience := time.NewTimer(5 * time.Second)
	defer patience.Stop()
	select {
	case <-mirror.Ready():
		return true
	case <-ctx.Done():
		return false
	case <-patience.C:
	}
	fi, err := os.Lstat(e.cfg.CDB)
	if errors.Is(err, os.ErrNotExist) {
		e.logf("warning: etcd does not answer yet and there is no %s: writing it with the static rules alone until etcd answers", e.cfg.CDB)
		return true
	}
	now := e.now()
	written := now // a CDB that cannot be looked at is taken as written now
	if err == nil && fi.ModTime().Before(now) {
		written = fi.ModTime()
	}
	until := written.Add(e.cfg.MaxAge)
	if !until.After(now) {
		e.logf("warning: etcd does not answer yet and there is no usable grant cache (%s): %s was written %s, over the max age (%s) ago, so its grants may have expired: writing it with the static rules alone until etcd answers", e.cfg.CDB+".etcd", e.cfg.CDB, written.UTC().Format(time.RFC3339), e.cfg.MaxAge)
		return true
	}
	e.logf("warning: etcd does not answer yet and there is no usable grant cache (%s): %s stays as it is, static rule changes included, until etcd answers or until %s (the max age after it was written), when its grants may have expired", e.cfg.CDB+".etcd", e.cfg.CDB, until.UTC().Format(time.RFC3339))
	bound := time.NewTimer(until.Sub(now))
	defer bound.Stop()
	select {
	case <-mirror.Ready():
		e.logf("etcd answers: publishing")
		return true
	case <-ctx.Done():
		return false
	case <-bound.C:
		e.logf("warning: etcd still does not answer and the grants of %s may have expired (written %s, max age %s): writing it with the static rules alone until etcd answers", e.cfg.CDB, written.UTC().Format(time.RFC3339), e.cfg.MaxAge)
		return true
	}
}

// spoolSource is the spool as the watcher reads it: a full read goes
// through the state file (only changed grant files are read, and the state
// is saved under the lock, the spool folded when it holds many), a single
// grant is read from its file, or its claimed file, or the folded file,
// kept in memory while it is unchanged.
type spoolSource struct {
	e   *env
	get *grant.Getter
}

func newSpoolSource(e *env) spoolSource {
	return spoolSource{e, &grant.Getter{Store: e.store()}}
}

func (s spoolSource) List() (gs []grant.Grant, err error) {
	err = s.e.locked(func() error {
		gs, err = s.e.grants(true)
		return err
	})
	return gs, err
}

func (s spoolSource) Get(ip string) (grant.Grant, bool, error) { return s.get.Get(ip) }

// sharer is pub as a watch.Sharer, or nil (not a nil pointer in an
// interface) without one.
func sharer(pub *share.Publisher) watch.Sharer {
	if pub == nil {
		return nil
	}
	return pub
}
