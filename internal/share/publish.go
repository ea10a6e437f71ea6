package share

import (
	"container/list"
	"context"
	"errors"
	"sync"
	"time"

	"github.com/poprelay/poprelay/internal/grant"
)

// PublisherOptions tune a Publisher. All are optional.
type PublisherOptions struct {
	// Backlog caps the changes kept while etcd is unreachable (the
	// latest per IP); default 100000. When full, the oldest change is
	// dropped (and logged) and a full resync runs once etcd is back.
	Backlog int
	// Workers is how many writes run at once; default 4.
	Workers int
	// Resync is the period of a full resync of this host's grants
	// against etcd, a safety net; default 10m, negative: never.
	Resync time.Duration
	// OnDone is called after each change is settled in etcd (err nil),
	// refused (ErrRevoked) or given up; nil ignores. It runs on a
	// worker and must not block.
	OnDone func(ip string, err error)
}

// Publisher copies one host's grants to etcd. Its methods never block on
// the network: they queue the change, and Run writes it. While etcd is
// unreachable the queue is a backlog holding the latest change per IP in
// the order of the changes; it is replayed in that order when etcd
// returns.
type Publisher struct {
	c   *Cluster
	opt PublisherOptions

	mu       sync.Mutex
	last     map[string]grant.Grant // the host's live grants at the last Sync
	queue    *list.List             // of *job, oldest first
	index    map[string]*list.Element
	inflight map[string]bool
	refused  map[string]time.Time // login times refused by a marker
	resync   bool                 // a full resync is due
	down     bool                 // the last write failed for want of etcd
	dropped  int                  // changes dropped since the last overflow log
	wake     chan struct{}
	stats    PublisherStats
}

// PublisherStats counts what a Publisher did.
type PublisherStats struct {
	Written  int // grants written
	Deleted  int // keys deleted
	Skipped  int // a newer grant was already there, or ours was gone
	Refused  int // refused by a revocation marker
	Failed   int // writes that failed and were queued again
	Dropped  int // changes dropped from a full backlog
	Resyncs  int // full resyncs done
	Backlog  int // changes waiting now (queued and in flight)
	Down     bool
	LastFail string // the last error, for logs
}

// job is one change: share a grant, or delete the key if it still holds
// value.
type job struct {
	ip    string
	g     grant.Grant
	del   bool
	value []byte
}

// Publisher returns a Publisher writing through c. Start it with Run.
func (c *Cluster) Publisher(opt PublisherOptions) *Publisher {
	if opt.Backlog <= 0 {
		opt.Backlog = 100000
	}
	if opt.Workers <= 0 {
		opt.Workers = 4
	}
	if opt.Resync == 0 {
		opt.Resync = 10 * time.Minute
	}
	return &Publisher{
		c:        c,
		opt:      opt,
		last:     map[string]grant.Grant{},
		queue:    list.New(),
		index:    map[string]*list.Element{},
		inflight: map[string]bool{},
		refused:  map[string]time.Time{},
		resync:   true,
		wake:     make(chan struct{}, 1),
	}
}

func sameGrant(a, b grant.Grant) bool {
	return a.IP == b.IP && a.User == b.User && a.Service == b.Service &&
		a.Time.Equal(b.Time) && a.Expires.Equal(b.Expires)
}

// Sync takes the host's complete set of live grants (what watch.Watcher
// passes to Publish) and queues what changed since the last Sync: new
// and refreshed grants are shared; grants that vanished before their
// expiry (revoked or removed here) are deleted if etcd still holds this
// host's copy. Expired grants need nothing: every mirror drops them at
// exp and the lease removes the key.
func (p *Publisher) Sync(live []grant.Grant, now time.Time) {
	next := make(map[string]grant.Grant, len(live))
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, g := range live {
		next[g.IP] = g
		if old, ok := p.last[g.IP]; !ok || !sameGrant(old, g) {
			p.enqueue(&job{ip: g.IP, g: g})
		}
	}
	for ip, old := range p.last {
		if _, ok := next[ip]; ok {
			continue
		}
		if old.Expiry(p.c.opt.MaxAge).After(now) {
			p.enqueue(&job{ip: ip, del: true, value: p.c.encode(old, p.c.opt.Host)})
		}
	}
	p.last = next
	p.kick()
}

// Put queues one new or refreshed grant of this host.
func (p *Publisher) Put(g grant.Grant) {
	p.mu.Lock()
	p.last[g.IP] = g
	p.enqueue(&job{ip: g.IP, g: g})
	p.mu.Unlock()
	p.kick()
}

// Remove queues the removal of this host's grant for ip (its key is
// deleted only if it still holds this host's copy).
func (p *Publisher) Remove(ip string) {
	p.mu.Lock()
	if old, ok := p.last[ip]; ok {
		delete(p.last, ip)
		p.enqueue(&job{ip: ip, del: true, value: p.c.encode(old, p.c.opt.Host)})
	}
	p.mu.Unlock()
	p.kick()
}

// Stats returns the counters so far.
func (p *Publisher) Stats() PublisherStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.stats
	s.Backlog = p.queue.Len() + len(p.inflight)
	s.Down = p.down
	return s
}

// Pending is the number of changes not yet settled in etcd.
func (p *Publisher) Pending() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.queue.Len() + len(p.inflight)
}

// enqueue adds j as the latest change for its IP. Called with p.mu held.
func (p *Publisher) enqueue(j *job) {
	if e, ok := p.index[j.ip]; ok {
		p.queue.Remove(e)
	}
	p.index[j.ip] = p.queue.PushBack(j)
	for p.queue.Len() > p.opt.Backlog {
		front := p.queue.Front()
		old := front.Value.(*job)
		p.queue.Remove(front)
		delete(p.index, old.ip)
		if p.dropped == 0 {
			p.c.logf("warning: etcd backlog full (%d changes): dropping the oldest (%s); a full resync follows when etcd is back", p.opt.Backlog, old.ip)
		}
		p.dropped++
		p.stats.Dropped++
		p.resync = true
	}
}

// requeue puts a failed job back at the front, unless a newer change for
// its IP arrived meanwhile. Called with p.mu held.
func (p *Publisher) requeue(j *job) {
	if _, ok := p.index[j.ip]; ok {
		return
	}
	p.index[j.ip] = p.queue.PushFront(j)
}

func (p *Publisher) kick() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// take removes the oldest job whose IP is not being written. Called with
// p.mu held.
func (p *Publisher) take() *job {
	for e := p.queue.Front(); e != nil; e = e.Next() {
		j := e.Value.(*job)
		if p.inflight[j.ip] {
			continue
		}
		p.queue.Remove(e)
		delete(p.index, j.ip)
		p.inflight[j.ip] = true
		return j
	}
	return nil
}

// result is what a worker reports.
type result struct {
	j      *job
	resync bool // the job was a full resync
	err    error
	wrote  bool
}

// Run writes queued changes until ctx is done. While etcd fails, one
// write at a time probes it, backing off up to 2s; the first success
// lets all workers replay the backlog.
func (p *Publisher) Run(ctx context.Context) error {
	work := make(chan *job)
	done := make(chan result, p.opt.Workers)
	var wg sync.WaitGroup
	for i := 0; i < p.opt.Workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range work {
				done <- p.do(ctx, j)
			}
		}()
	}
	defer func() {
		close(work)
		wg.Wait()
	}()

	const minBackoff, maxBackoff = 100 * time.Millisecond, 2 * time.Second
	backoff := minBackoff
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	waiting := false // the retry timer is armed
	busy := 0        // jobs handed to workers
	resyncing := false
	var tick <-chan time.Time
	if p.opt.Resync > 0 {
		t := time.NewTicker(p.opt.Resync)
		defer t.Stop()
		tick = t.C
	}

	for {
		// Hand out work: everything (up to Workers) while etcd is up,
		// a single probe while it is down and the backoff has passed.
		p.mu.Lock()
		for busy < p.opt.Workers && !waiting && !(p.down && busy > 0) {
			var j *job
			if p.resync && !resyncing {
				p.resync = false
				resyncing = true
				j = &job{} // empty IP: a full resync
			} else if j = p.take(); j == nil {
				break
			}
			p.mu.Unlock()
			select {
			case work <- j:
				busy++
			case <-ctx.Done():
				return nil
			}
			p.mu.Lock()
		}
		p.mu.Unlock()

		select {
		case <-ctx.Done():
			// Let the workers finish what they hold.
			for busy > 0 {
				<-done
				busy--
			}
			return nil
		case <-p.wake:
		case <-tick:
			p.mu.Lock()
			p.resync = true
			p.mu.Unlock()
		case <-retry.C:
			waiting = false
		case r := <-done:
			busy--
			p.mu.Lock()
			if r.j.ip == "" {
				resyncing = false
			} else {
				delete(p.inflight, r.j.ip)
			}
			temporary := r.err != nil && !permanent(r.err) && ctx.Err() == nil
			switch {
			case temporary:
				p.stats.Failed++
				p.stats.LastFail = r.err.Error()
				if r.j.ip == "" {
					p.resync = true
				} else {
					p.requeue(r.j)
				}
				if !p.down {
					if err := p.c.explain(r.err); errors.Is(err, ErrDenied) {
						p.c.logf("warning: etcd refuses this host's writes, keeping a backlog: %v", err)
					} else {
						p.c.logf("warning: etcd unreachable, keeping a backlog: %v", err)
					}
					p.down = true
				}
				if !waiting {
					retry.Reset(backoff)
					waiting = true
					backoff = min(2*backoff, maxBackoff)
				}
			case p.down:
				p.down = false
				backoff = minBackoff
				p.c.logf("etcd is back; %d changes still queued", p.queue.Len()+len(p.inflight))
				p.dropped = 0
				// A full resync also catches what a restarted etcd lost.
				p.resync = true
			}
			if !temporary && r.j.ip != "" {
				switch {
				case errors.Is(r.err, ErrRevoked):
					p.stats.Refused++
					p.refused[r.j.ip] = r.j.g.Time
					p.c.logf("refused: %v", r.err)
				case errors.Is(r.err, ErrExpired):
					p.stats.Skipped++ // expired while queued: nothing to do
				case r.err != nil:
					p.stats.Skipped++
					p.c.logf("warning: not shared: %s: %v", r.j.ip, r.err)
				case r.wrote && r.j.del:
					p.stats.Deleted++
				case r.wrote:
					p.stats.Written++
				default:
					p.stats.Skipped++
				}
			}
			if r.j.ip == "" && r.err == nil {
				p.stats.Resyncs++
			}
			p.mu.Unlock()
			if !temporary && r.j.ip != "" && p.opt.OnDone != nil {
				p.opt.OnDone(r.j.ip, r.err)
			}
		}
	}
}

// permanent tells errors that no retry can fix.
func permanent(err error) bool {
	return errors.Is(err, ErrRevoked) || errors.Is(err, ErrExpired) ||
		errors.Is(err, grant.ErrBadField) || errors.Is(err, grant.ErrBadIP)
}

// do runs one job.
func (p *Publisher) do(ctx context.Context, j *job) result {
	switch {
	case j.ip == "":
		return result{j: j, err: p.resyncAll(ctx)}
	case j.del:
		ok, err := p.c.unshare(ctx, j.ip, j.value)
		return result{j: j, err: err, wrote: ok}
	default:
		ok, err := p.c.share(ctx, j.g, p.c.opt.Host)
		return result{j: j, err: err, wrote: ok}
	}
}

// resyncAll compares etcd with this host's grants and queues what
// differs: grants etcd lacks (or holds older), and keys of this host that
// it no longer has.
func (p *Publisher) resyncAll(ctx context.Context) error {
	shared, _, err := p.c.read(ctx, 0) // every key: this host's own must all be seen
	if err != nil {
		return err
	}
	now := p.c.opt.Now()
	host := p.c.opt.Host
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for ip, t := range p.refused {
		if g, ok := p.last[ip]; !ok || !g.Time.Equal(t) {
			delete(p.refused, ip)
		}
	}
	for ip, g := range p.last {
		if _, queued := p.index[ip]; queued || p.inflight[ip] {
			continue
		}
		if _, ok := p.refused[ip]; ok {
			continue // revoked after this login: asking again is futile
		}
		if !g.Expiry(p.c.opt.MaxAge).After(now) {
			continue
		}
		g.Expires = g.Expiry(p.c.opt.MaxAge)
		if s, ok := shared[ip]; ok && !newer(g, s.Grant) {
			continue
		}
		p.enqueue(&job{ip: ip, g: p.last[ip]})
		n++
	}
	for ip, s := range shared {
		if s.Host != host || !s.Expires.After(now) {
			continue
		}
		if _, ok := p.last[ip]; ok {
			continue
		}
		if _, queued := p.index[ip]; queued || p.inflight[ip] {
			continue
		}
		p.enqueue(&job{ip: ip, del: true, value: p.c.encode(s.Grant, host)})
		n++
	}
	if n > 0 {
		p.c.logf("resync: %d grants differ from etcd", n)
	}
	p.kick()
	return nil
}
