package share

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/poprelay/poprelay/internal/grant"
)

// Revocations calls fn for every revocation marker in etcd, first those
// already there, then each new one as it is made, until ctx is done; it
// rides out etcd failures and compactions by reading all markers again
// (so fn may see a marker twice). A POP/IMAP host uses it to drop a
// revoked address from its own spool when the login is not newer than
// the revocation:
//
//	go c.Revocations(ctx, func(ip string, at time.Time) {
//		if g, ok, _ := store.Get(ip); ok && !g.Time.After(at) {
//			store.Remove(ip)
//		}
//	})
//
// fn runs on Revocations' goroutine.
func (c *Cluster) Revocations(ctx context.Context, fn func(ip string, at time.Time)) error {
	const minBackoff, maxBackoff = 100 * time.Millisecond, 5 * time.Second
	backoff := minBackoff
	skips := c.newSkips(c.revoked)
	seen := func(key, value []byte) {
		ip := string(key[len(c.revoked):])
		if len(ip) > maxIP {
			return
		}
		if canon, err := grant.CanonicalIP(ip); err != nil || canon != ip {
			return
		}
		var m marker
		if len(value) > maxValue || json.Unmarshal(value, &m) != nil || m.Time.IsZero() {
			skips.add(fmt.Errorf("damaged marker %s", quoteKey(key)))
			return
		}
		fn(ip, m.Time)
	}
	for ctx.Err() == nil {
		// In bounded pages, as the grants (see scan).
		rev, err := c.scan(ctx, c.revoked, func(kv *mvccpb.KeyValue) { seen(kv.Key, kv.Value) }, skips, nil)
		skips.flush()
		if err != nil {
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, maxBackoff)
			continue
		}
		backoff = minBackoff
		wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		wch := c.cli.Watch(wctx, c.revoked, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
		for wr := range wch {
			if wr.Err() != nil || wr.Canceled {
				break
			}
			for _, ev := range wr.Events {
				if ev.Type == mvccpb.PUT {
					seen(ev.Kv.Key, ev.Kv.Value)
				}
			}
		}
		wcancel()
	}
	return nil
}
