package share

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/poprelay/poprelay/internal/grant"
)

// Mirror keeps an in-memory copy of the shared grants: a full read, then
// a watch from that revision; on compaction or a lost watch, a fresh full
// read. It offers the grants through List and Get (the watch.Source
// interface), from memory, hiding grants past their exp, so grants close
// on time even while etcd is down. Once it has read etcd, it never
// forgets what it knows because a read failed: List then answers from the
// last good data.
type Mirror struct {
	c        *Cluster
	onChange func(ips []string)

	mu      sync.RWMutex
	grants  map[string]Shared
	caps    *hostCaps // the grants counted per origin host
	skips   *skipLog  // keys of the watch that hold no usable grant
	rev     int64
	ready   chan struct{}
	loaded  bool
	reloads int

	cache     string // file of the grants for a cold start; "": none
	dirty     bool   // changed since the cache was written
	fromCache bool   // serving the cache: etcd has not answered yet

	pages pager // the page length its full reads learned

	beforeWatch func() // test hook: runs between a full read and its watch
}

// Mirror returns a Mirror of c's grants. onChange (nil ignores) is called
// from Run's goroutine with the IPs whose grant changed in etcd (added,
// replaced, deleted), after the mirror has them: a watcher re-reads them
// with Get and debounces a rebuild. It must not block for long. Grants
// reaching their exp cause no call: consumers schedule that themselves
// from Expires.
//
// The order callers may rely on, for the first grants the mirror serves
// (from the first full read of etcd, or from the cache while etcd does
// not answer): first List and Get answer with them, then onChange is
// called with their IPs and returns, then Ready is closed. A caller that
// waits for Ready has been told of every grant the mirror holds at that
// moment, and reads them with List. List and Get may answer (ErrNotReady
// no more) a little before Ready is closed, never after.
func (c *Cluster) Mirror(onChange func(ips []string)) *Mirror {
	return &Mirror{
		c:        c,
		onChange: onChange,
		grants:   map[string]Shared{},
		caps:     newHostCaps(c.cfg.MaxPerHost),
		skips:    c.newSkips(c.grants),
		ready:    make(chan struct{}),
	}
}

// Ready is closed once the mirror serves grants (after the first
// successful full read, or after loading the cache while etcd does not
// answer), and only after onChange has been told of them.
func (m *Mirror) Ready() <-chan struct{} { return m.ready }

// Revision is the etcd revision the mirror is current to.
func (m *Mirror) Revision() int64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.rev
}

// Reloads counts the full reads done so far.
func (m *Mirror) Reloads() int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.reloads
}

// List returns the live grants, in no particular order. Before the first
// successful read of etcd it returns ErrNotReady; after it, never an
// error.
func (m *Mirror) List() ([]grant.Grant, error) {
	now := m.c.opt.Now()
	m.mu.RLock()
	defer m.mu.RUnlock()
	if !m.loaded {
		return nil, ErrNotReady
	}
	out := make([]grant.Grant, 0, len(m.grants))
	for _, s := range m.grants {
		if s.Expires.After(now) {
			out = append(out, s.Grant)
		}
	}
	return out, nil
}

// Get returns ip's live grant.
func (m *Mirror) Get(ip string) (grant.Grant, bool, error) {
	now := m.c.opt.Now()
	m.mu.RLock()
	defer m.mu.RUnlock()
	if !m.loaded {
		return grant.Grant{}, false, ErrNotReady
	}
	s, ok := m.grants[ip]
	if !ok || !s.Expires.After(now) {
		return grant.Grant{}, false, nil
	}
	return s.Grant, true, nil
}

// cacheGrace is how long the first full read of etcd may take before
// the mirror serves its cache meanwhile.
var cacheGrace = time.Second

// Run keeps the mirror current until ctx is done, riding out etcd
// failures with retries; it returns nil when ctx is done. With a cache
// (UseCache), if the first full read has not succeeded within a second
// (etcd down, slow, or the read long), the mirror serves the cached
// grants until it does.
func (m *Mirror) Run(ctx context.Context) error {
	const minBackoff, maxBackoff = 100 * time.Millisecond, 5 * time.Second
	backoff := minBackoff
	failing := false
	defer m.saveCache()
	for ctx.Err() == nil {
		if err := m.firstLoad(ctx); err != nil {
			if ctx.Err() != nil {
				break
			}
			if !failing {
				m.c.logf("warning: unable to read grants from etcd, keeping the last good copy: %v", m.c.explain(err))
				failing = true
			}
			m.loadCache() // only before the first successful read
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, maxBackoff)
			continue
		}
		if failing {
			m.c.logf("etcd is back: %d grants at revision %d", m.count(), m.Revision())
			failing = false
		}
		backoff = minBackoff
		if m.beforeWatch != nil {
			m.beforeWatch()
		}
		err := m.watch(ctx)
		if ctx.Err() != nil {
			break
		}
		m.c.logf("watch ended, reading all grants again: %v", err)
	}
	return nil
}

// firstLoad is load; before the first successful read, with a cache, a
// read that takes longer than cacheGrace has the cache served meanwhile
// (on this goroutine, so onChange is never called twice at once).
func (m *Mirror) firstLoad(ctx context.Context) error {
	m.mu.RLock()
	loaded := m.loaded
	m.mu.RUnlock()
	if loaded || m.cache == "" {
		return m.load(ctx)
	}
	type read struct {
		all  map[string]Shared
		caps *hostCaps
		rev  int64
		err  error
	}
	done := make(chan read, 1)
	go func() {
		var r read
		r.all, r.caps, r.rev, r.err = m.c.readCapped(ctx, m.c.cfg.MaxPerHost, &m.pages)
		done <- r
	}()
	grace := time.NewTimer(cacheGrace)
	defer grace.Stop()
	for {
		select {
		case r := <-done:
			if r.err != nil {
				return r.err
			}
			m.install(r.all, r.caps, r.rev)
			return nil
		case <-grace.C:
			m.loadCache()
		}
	}
}

func (m *Mirror) count() int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return len(m.grants)
}

// load replaces the copy by a full read and reports what changed.
func (m *Mirror) load(ctx context.Context) error {
	all, caps, rev, err := m.c.readCapped(ctx, m.c.cfg.MaxPerHost, &m.pages)
	if err != nil {
		return err
	}
	m.install(all, caps, rev)
	return nil
}

// install makes a full read the copy and reports what changed.
func (m *Mirror) install(fresh map[string]Shared, caps *hostCaps, rev int64) {
	var changed []string
	m.mu.Lock()
	for ip, s := range fresh {
		if old, ok := m.grants[ip]; !ok || !sameGrant(old.Grant, s.Grant) {
			changed = append(changed, ip)
		}
	}
	for ip := range m.grants {
		if _, ok := fresh[ip]; !ok {
			changed = append(changed, ip)
		}
	}
	for host, at := range m.caps.said { // keep the rate of the warnings
		if _, ok := caps.said[host]; !ok {
			caps.said[host] = at
		}
	}
	m.grants, m.caps, m.rev = fresh, caps, rev
	m.reloads++
	m.dirty, m.fromCache = true, false
	first := !m.loaded
	m.loaded = true
	m.mu.Unlock()
	if len(changed) > 0 && m.onChange != nil {
		m.onChange(changed)
	}
	if first {
		close(m.ready) // after onChange: see Mirror
	}
}

// cacheEvery is how often a changed cache is written.
var cacheEvery = 10 * time.Second

// errWatchClosed reports a watch channel closed without an error.
var errWatchClosed = errors.New("share: watch closed")

// watch applies changes from the mirror's revision on, until the watch
// fails (compaction, lost leader) or ctx is done. Expired grants are
// pruned from memory once a minute.
func (m *Mirror) watch(ctx context.Context) error {
	// WithRequireLeader: a member cut off from its cluster closes the
	// watch instead of going silent, and the next read finds a member
	// that is still in the cluster.
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	// No WithPrevKV: the old values are not needed, and a hostile
	// writer's would double what each event costs. A response over the
	// client's receive limit (maxResponse) ends the watch, and a fresh
	// full read (bounded, see scan) follows.
	wch := m.c.cli.Watch(wctx, m.c.grants, clientv3.WithPrefix(),
		clientv3.WithRev(m.Revision()+1), clientv3.WithProgressNotify())
	prune := time.NewTicker(time.Minute)
	defer prune.Stop()
	// The cache is written beside the watch, never in its way: encoding
	// 100k grants and syncing them took hundreds of milliseconds, in which
	// no login reached this host's CDB.
	saving, stopSaving := context.WithCancel(wctx)
	saved := make(chan struct{})
	go func() {
		defer close(saved)
		m.saveCache()
		save := time.NewTicker(cacheEvery)
		defer save.Stop()
		for {
			select {
			case <-saving.Done():
				return
			case <-save.C:
				m.saveCache()
			}
		}
	}()
	defer func() { stopSaving(); <-saved }()
	for {
		select {
		case <-prune.C:
			m.prune()
			continue
		case resp, ok := <-wch:
			if !ok {
				return errWatchClosed
			}
			if err := resp.Err(); err != nil {
				return err
			}
			if resp.Canceled {
				return errWatchClosed
			}
			m.apply(resp)
		}
	}
}

// apply takes one watch response into the copy, with the checks and the
// per-host cap of a full read.
func (m *Mirror) apply(resp clientv3.WatchResponse) {
	var changed []string
	m.mu.Lock()
	drop := func(ip string) {
		if old, ok := m.grants[ip]; ok {
			m.caps.remove(old)
			delete(m.grants, ip)
			changed = append(changed, ip)
		}
	}
	for _, ev := range resp.Events {
		kv := ev.Kv
		ip := string(kv.Key[min(len(m.c.grants), len(kv.Key)):])
		switch ev.Type {
		case mvccpb.PUT:
			g, host, err := m.c.decode(kv.Key, kv.Value)
			if err != nil {
				// The key no longer holds a usable grant.
				m.skips.add(err)
				drop(ip)
				continue
			}
			if m.caps.max > 0 && !g.Expires.After(m.c.opt.Now()) {
				// Expired: it relays nowhere and must not take a
				// live grant's place in its host's count.
				drop(ip)
				continue
			}
			s := Shared{Grant: g, Host: host}
			if old, ok := m.grants[g.IP]; ok && old.Host != host {
				m.caps.remove(old)
			}
			m.grants[g.IP] = s
			changed = append(changed, g.IP)
			if out, ok := m.caps.add(s); ok {
				delete(m.grants, out.IP)
				if out.IP != g.IP {
					changed = append(changed, out.IP)
				}
			}
		case mvccpb.DELETE:
			drop(ip)
		}
	}
	if rev := resp.Header.Revision; rev > m.rev {
		m.rev = rev
	}
	if len(changed) > 0 {
		m.dirty = true
	}
	m.caps.report(m.c, m.c.opt.Now(), time.Minute)
	m.mu.Unlock()
	if len(changed) > 0 && m.onChange != nil {
		m.onChange(changed)
	}
}

// prune forgets expired grants, and logs what the rate limits held back.
func (m *Mirror) prune() {
	now := m.c.opt.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	for ip, s := range m.grants {
		if !s.Expires.After(now) {
			m.caps.remove(s)
			delete(m.grants, ip)
		}
	}
	m.skips.flush()
	m.caps.report(m.c, now, time.Minute)
}
