package share

import (
	"bufio"
	"encoding/json"
	"os"
	"time"

	"github.com/poprelay/poprelay/internal/atomic"
	"github.com/poprelay/poprelay/internal/grant"
)

// cacheFile is the JSON of a mirror's cache.
type cacheFile struct {
	Revision int64         `json:"revision"`
	Written  time.Time     `json:"written"`
	Grants   []cachedGrant `json:"grants"`
}

type cachedGrant struct {
	IP      string    `json:"ip"`
	User    string    `json:"user"`
	Service string    `json:"service,omitempty"`
	Host    string    `json:"host,omitempty"` // origin host; older caches have none
	Time    time.Time `json:"time"`
	Exp     time.Time `json:"exp"`
}

// UseCache makes the mirror keep a copy of the grants in path (mode
// 0600, written atomically at most every 10 seconds when something
// changed, and when Run returns). If etcd does not answer when Run
// starts, the mirror serves the cached grants, still expiring them at
// their exp, until etcd answers: an SMTP host restarted during an etcd
// outage keeps relaying for the grants it knew, and closes them on time.
// Call it before Run.
func (m *Mirror) UseCache(path string) { m.cache = path }

// cacheHook runs before each write of a cache (tests stall it).
var cacheHook = func() {}

// saveCache writes the cache if it is due.
func (m *Mirror) saveCache() {
	m.mu.RLock()
	if m.cache == "" || !m.dirty || m.fromCache {
		m.mu.RUnlock()
		return
	}
	now := m.c.opt.Now()
	cf := cacheFile{Revision: m.rev, Written: now.UTC(), Grants: make([]cachedGrant, 0, len(m.grants))}
	for _, g := range m.grants {
		if g.Expires.After(now) {
			cf.Grants = append(cf.Grants, cachedGrant{IP: g.IP, User: g.User, Service: g.Service, Host: g.Host, Time: g.Time.UTC(), Exp: g.Expires.UTC()})
		}
	}
	m.dirty = false
	m.mu.RUnlock()
	cacheHook()
	err := atomic.WriteFile(m.cache, 0o600, func(f *os.File) error {
		w := bufio.NewWriter(f)
		if err := json.NewEncoder(w).Encode(cf); err != nil {
			return err
		}
		return w.Flush()
	})
	if err != nil {
		m.c.logf("warning: unable to write the grant cache %s: %v", m.cache, err)
		m.mu.Lock()
		m.dirty = true
		m.mu.Unlock()
	}
}

// loadCache serves the cached grants while etcd has not answered yet.
func (m *Mirror) loadCache() {
	if m.cache == "" {
		return
	}
	f, err := os.Open(m.cache)
	if os.IsNotExist(err) {
		return
	}
	if err != nil {
		m.c.logf("warning: unable to read the grant cache: %v", err)
		return
	}
	defer f.Close()
	var cf cacheFile
	if err := json.NewDecoder(bufio.NewReader(f)).Decode(&cf); err != nil {
		m.c.logf("warning: unable to read the grant cache %s: %v", m.cache, err)
		return
	}
	now := m.c.opt.Now()
	gs := make(map[string]Shared, len(cf.Grants))
	caps := newHostCaps(m.c.cfg.MaxPerHost)
	for _, c := range cf.Grants {
		if canon, err := grant.CanonicalIP(c.IP); err != nil || canon != c.IP || !c.Exp.After(now) ||
			checkField(c.User) != nil || checkField(c.Service) != nil || checkField(c.Host) != nil {
			continue
		}
		s := Shared{Grant: grant.Grant{IP: c.IP, User: c.User, Service: c.Service, Time: c.Time, Expires: c.Exp}, Host: c.Host}
		gs[c.IP] = s
		if out, ok := caps.add(s); ok {
			delete(gs, out.IP)
		}
	}
	m.mu.Lock()
	if m.loaded {
		m.mu.Unlock()
		return
	}
	m.grants, m.caps, m.loaded, m.fromCache = gs, caps, true, true
	m.mu.Unlock()
	m.c.logf("etcd does not answer: serving %d grants from the cache written %s", len(gs), cf.Written.Format(time.RFC3339))
	if m.onChange != nil && len(gs) > 0 {
		ips := make([]string, 0, len(gs))
		for ip := range gs {
			ips = append(ips, ip)
		}
		m.onChange(ips)
	}
	close(m.ready) // after onChange: see Mirror
}
