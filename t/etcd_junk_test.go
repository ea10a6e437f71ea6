package t

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/poprelay/poprelay/internal/etcdtest"
	"github.com/poprelay/poprelay/internal/wait"
)

// TestSecurityEtcdJunkKeys (issue 26, item 5): a POP host with the
// documented role (readwrite grants/) writes tens of megabytes of keys
// under grants/ that are no grants (megabyte values under addresses and
// under junk names, thousands of small junk keys, sorted among the good
// grants so that one page of 5000 keys holds tens of megabytes), and
// floods grants of its own beyond the per-host cap. An SMTP host started
// afterwards, with the default 5 s per request, still loads every good
// grant and the flooding host's newest ones only, names that host in a
// warning, and logs the junk in a few lines; the watch applies the same
// checks and cap. "make stress" (POPRELAY_STRESS=1) writes about a
// gigabyte of junk instead.
func TestSecurityEtcdJunkKeys(t *testing.T) {
	e := etcdtest.Start(t)
	dir := t.TempDir()
	pw := passwords(t, dir)
	etcdSetup(t, dir, baseEnv("ETCDCTL_ENDPOINTS="+e.Client), "roles", "password users", "enable")
	pop, err := clientv3.New(clientv3.Config{Endpoints: []string{e.Client}, DialTimeout: 30 * time.Second,
		Username: "pop1", Password: pw["pop1"], Logger: zap.NewNop(), MaxCallSendMsgSize: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer pop.Close()
	const g = "/poprelay/v1/grants/"
	now := time.Now().UTC()
	grantValue := func(user, host string, login time.Time) string {
		return `{"user":"` + user + `","service":"pop3","host":"` + host + `","time":"` + login.Format(time.RFC3339Nano) + `","exp":"` + login.Add(time.Hour).Format(time.RFC3339Nano) + `"}`
	}
	// puts writes kvs in transactions of at most 128 puts (etcd's
	// --max-txn-ops) and 1 MiB.
	puts := func(kvs [][2]string) {
		t.Helper()
		for len(kvs) > 0 {
			var ops []clientv3.Op
			size := 0
			for len(kvs) > 0 && len(ops) < 128 && (len(ops) == 0 || size+len(kvs[0][1]) < 1<<20) {
				ops = append(ops, clientv3.OpPut(kvs[0][0], kvs[0][1]))
				size += len(kvs[0][0]) + len(kvs[0][1])
				kvs = kvs[1:]
			}
			ctx, cancel := context.WithTimeout(context.Background(), wait.Patience)
			_, err := pop.Txn(ctx).Then(ops...).Commit()
			cancel()
			if err != nil {
				t.Fatalf("as pop1: %v", err)
			}
		}
	}
	bigs, bigSize, smalls := sized(24, 550), sized(1<<20, 1400<<10), sized(20000, 200000)
	junk := func(first, n int) (kvs [][2]string) {
		big := strings.Repeat("J", bigSize)
		for i := first; i < first+n; i++ {
			kvs = append(kvs, [2]string{fmt.Sprintf(g+"2001:db8:bad::%x", i), big}) // an address, a value too large
			if i%3 == 0 {
				kvs = append(kvs, [2]string{fmt.Sprintf(g+"127.0.3.5/junk%d", i), big}) // not an address, among the grants
			}
		}
		return kvs
	}
	small := func(first, n int) (kvs [][2]string) {
		for i := first; i < first+n; i++ {
			kvs = append(kvs, [2]string{fmt.Sprintf(g+"junk-%07d", i), strings.Repeat("j", 200)})
		}
		return kvs
	}
	// A user per grant: the per-user cap (16) is not what this test is of.
	flood := func(first, n int) (kvs [][2]string) {
		for i := first; i < first+n; i++ {
			ip := fmt.Sprintf("127.0.%d.%d", 10+i/250, 1+i%250)
			kvs = append(kvs, [2]string{g + ip, grantValue(fmt.Sprintf("f%d", i), "flood", now.Add(time.Duration(i-1000)*time.Second))})
		}
		return kvs
	}
	floodIP := func(i int) string { return fmt.Sprintf("127.0.%d.%d", 10+i/250, 1+i%250) }
	var good [][2]string
	for i := 1; i <= 10; i++ {
		good = append(good, [2]string{fmt.Sprintf(g+"127.0.3.%d", i), grantValue("alice", "pop1", now)})
	}
	t0 := time.Now()
	puts(good[:5])
	puts(junk(0, bigs))
	puts(small(0, smalls))
	puts(flood(0, 200))
	puts(good[5:])
	t.Logf("wrote %d MB of junk in %d keys, 200 flood grants, 10 good grants in %v", (bigs+bigs/3+1)*bigSize>>20+smalls*200>>20, bigs+bigs/3+1+smalls, time.Since(t0).Round(time.Millisecond))

	b := newRelayctlSite(t, "127.0.0.:allow,QMAILQUEUE=\"/var/qmail/bin/simscan\"\n:allow\n")
	b.env = append(b.env, "POPRELAY_ETCD_ENDPOINTS="+e.Client, "POPRELAY_ETCD_USER=smtp1",
		"POPRELAY_ETCD_PASSWORD_FILE="+filepath.Join(dir, "smtp1.pw"), "POPRELAY_ETCD_MAXPERHOST=50")
	t0 = time.Now()
	wb := b.launchWatch(t, "--source", "etcd")
	wb.waitAny(t, 0, "from the cache", "rebuilt: ")
	t.Logf("B's first CDB after %v", time.Since(t0).Round(time.Millisecond))
	// The newest 50 of the flood (150..199), every good grant.
	check := func(what string, lo, hi int, goods ...int) {
		t.Helper()
		wait.For(t, what, func() bool {
			for _, i := range goods {
				if !relays(t, b.cdb, fmt.Sprintf("127.0.3.%d", i)) {
					return false
				}
			}
			for i := 0; i < hi; i++ {
				if relays(t, b.cdb, floodIP(i)) != (i >= lo) {
					return false
				}
			}
			return true
		})
	}
	check("B's CDB with the 10 good grants and the flood's newest 50", 150, 200, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
	for _, ip := range []string{"2001:db8:bad::1", "127.0.3.5/junk0"} {
		if relays(t, b.cdb, ip) {
			t.Errorf("%s relays on B", ip)
		}
	}
	wb.waitLine(t, `host "flood" than the cap of 50`)
	r := b.run(t, "list", "--source", "etcd")
	if n, f := strings.Count(r.stdout, "127.0.3."), strings.Count(r.stdout, "127.0.10."); r.code != 0 || n != 10 || f != 50 {
		t.Errorf("list --source etcd: exit %d, %d good grants, %d of the flood (want 10, 50): %s", r.code, n, f, r.stderr)
	}

	// The watch: more junk, a newer flood, then a good grant.
	puts(junk(bigs, 4))
	puts(small(smalls, 2000))
	puts(flood(200, 60))
	puts([][2]string{{g + "127.0.3.11", grantValue("bob", "pop1", now)}})
	check("B's CDB after the watch: the flood's newest 50 are the latest", 210, 260, 1, 5, 10, 11)
	wb.mu.Lock()
	skips := 0
	for _, l := range wb.lines {
		if strings.Contains(l, "skipping") {
			skips++
		}
	}
	wb.mu.Unlock()
	// Five a minute, one by one; the rest are counted.
	if skips > 20 {
		t.Errorf("%d log lines for the junk keys, want a few", skips)
	}
}
