package share

import (
	"container/heap"
	"sort"
	"time"

	"github.com/poprelay/poprelay/internal/quote"
)

// hostCaps keeps at most max grants per origin host (the "host" of a
// grant's value): over it, the host's oldest grant (earliest login, then
// earliest exp) goes. A host that shares more than its share, by a bug or
// on purpose, crowds out no other host's grants and cannot make a mirror
// hold more than max of its own. max <= 0: no cap.
type hostCaps struct {
	max     int
	hosts   map[string]*capHeap
	dropped map[string]int       // per host, since its last report
	said    map[string]time.Time // when each host was last reported
}

func newHostCaps(max int) *hostCaps {
	return &hostCaps{max: max, hosts: map[string]*capHeap{}, dropped: map[string]int{}, said: map[string]time.Time{}}
}

// add counts s for its host and returns the grant that no longer fits
// (s itself if it is that host's oldest), if any.
func (hc *hostCaps) add(s Shared) (Shared, bool) {
	if hc.max <= 0 {
		return Shared{}, false
	}
	h := hc.hosts[s.Host]
	if h == nil {
		h = &capHeap{at: map[string]int{}}
		hc.hosts[s.Host] = h
	}
	if i, ok := h.at[s.IP]; ok {
		h.items[i] = s
		heap.Fix(h, i)
	} else {
		heap.Push(h, s)
	}
	if h.Len() <= hc.max {
		return Shared{}, false
	}
	out := heap.Pop(h).(Shared)
	hc.dropped[s.Host]++
	return out, true
}

// remove forgets s (a grant deleted, replaced or expired).
func (hc *hostCaps) remove(s Shared) {
	h := hc.hosts[s.Host]
	if h == nil {
		return
	}
	if i, ok := h.at[s.IP]; ok {
		heap.Remove(h, i)
	}
	if h.Len() == 0 {
		delete(hc.hosts, s.Host)
	}
}

// report logs each host that had grants dropped since it was last
// reported, at most once per every for each host (0: now).
func (hc *hostCaps) report(c *Cluster, now time.Time, every time.Duration) {
	var names []string
	for host := range hc.dropped {
		if every == 0 || now.Sub(hc.said[host]) >= every {
			names = append(names, host)
		}
	}
	sort.Strings(names)
	for _, host := range names {
		c.logf("warning: etcd holds more grants shared by host %s than the cap of %d (%s): keeping its %d newest, %d dropped; that host is misbehaving or its etcd credentials are misused",
			quoteHost(host), hc.max, EnvMaxPerHost, hc.hosts[host].Len(), hc.dropped[host])
		delete(hc.dropped, host)
		hc.said[host] = now
	}
}

func quoteHost(h string) string {
	if h == "" {
		return "(none given)"
	}
	return quote.Quote(h)
}

// capHeap is one host's grants, oldest on top, with each address's
// place.
type capHeap struct {
	items []Shared
	at    map[string]int
}

func (h *capHeap) Len() int { return len(h.items) }

// Less: a goes before b (sooner dropped) if it is older; the same age,
// the greater address first, so that the choice does not depend on the
// order of reading.
func (h *capHeap) Less(i, j int) bool {
	a, b := h.items[i], h.items[j]
	if !a.Time.Equal(b.Time) {
		return a.Time.Before(b.Time)
	}
	if !a.Expires.Equal(b.Expires) {
		return a.Expires.Before(b.Expires)
	}
	return a.IP > b.IP
}

func (h *capHeap) Swap(i, j int) {
	h.items[i], h.items[j] = h.items[j], h.items[i]
	h.at[h.items[i].IP] = i
	h.at[h.items[j].IP] = j
}

func (h *capHeap) Push(x any) {
	s := x.(Shared)
	h.at[s.IP] = len(h.items)
	h.items = append(h.items, s)
}

func (h *capHeap) Pop() any {
	n := len(h.items) - 1
	s := h.items[n]
	h.items = h.items[:n]
	delete(h.at, s.IP)
	return s
}

// skipLog logs keys that hold no usable grant: the first few of each
// minute one by one, then how many more, so that a million junk keys
// cost a few log lines, not a million.
type skipLog struct {
	c     *Cluster
	under string // the prefix read
	start time.Time
	n     int // logged since start
	more  int // not logged since start
}

// skipsShown is how many skipped keys are logged one by one a minute.
const skipsShown = 5

func (c *Cluster) newSkips(under string) *skipLog {
	return &skipLog{c: c, under: under, start: c.opt.Now()}
}

func (s *skipLog) add(err error) {
	now := s.c.opt.Now()
	if now.Sub(s.start) >= time.Minute {
		s.flush()
		s.start, s.n = now, 0
	}
	if s.n < skipsShown {
		s.n++
		s.c.logf("warning: skipping %v", err)
		return
	}
	s.more++
}

// flush logs how many skipped keys were not logged.
func (s *skipLog) flush() {
	if s.more > 0 {
		s.c.logf("warning: skipped %d more damaged keys under %s", s.more, s.under)
		s.more = 0
	}
}

// done ends a full read's log.
func (s *skipLog) done() { s.flush() }
