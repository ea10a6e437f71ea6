package t

import (
	"context"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/poprelay/poprelay/internal/etcdtest"
	"github.com/poprelay/poprelay/internal/wait"
)

// stop ends the watcher (SIGTERM) and waits for it.
func (w *watcher) stop() {
	w.cmd.Process.Signal(syscall.SIGTERM)
	<-w.done
}

// waitAny waits for a line containing one of subs, after mark, and
// returns it.
func (w *watcher) waitAny(t *testing.T, mark int, subs ...string) string {
	t.Helper()
	var found string
	wait.For(t, "watch to say one of "+strconv.Quote(strings.Join(subs, " | ")), func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		for _, l := range w.lines[mark:] {
			for _, s := range subs {
				if strings.Contains(l, s) {
					found = l
					return true
				}
			}
		}
		return false
	})
	return found
}

// rebuilds are the grant counts of the "rebuilt:" lines after mark.
func (w *watcher) rebuilds(mark int) []int {
	w.mu.Lock()
	defer w.mu.Unlock()
	re := regexp.MustCompile(`rebuilt: [a-z ]+: (\d+) grants`)
	var n []int
	for _, l := range w.lines[mark:] {
		if m := re.FindStringSubmatch(l); m != nil {
			k, _ := strconv.Atoi(m[1])
			n = append(n, k)
		}
	}
	return n
}

// relayAll is relays for each of ips.
func relayAll(t *testing.T, path string, ips ...string) []bool {
	t.Helper()
	out := make([]bool, len(ips))
	for i, ip := range ips {
		out[i] = relays(t, path, ip)
	}
	return out
}

// TestEtcdColdStartKeepsGrants (issue 26, item 4): an SMTP watcher
// (--source etcd) started while etcd is stopped (SIGSTOP: its port
// accepts connections, nothing answers; requests wait 10 s) never
// publishes a CDB without the grants it knew. With its cache beside the
// CDB, it publishes the cached grants (and an admin's change to the
// static rules, merged with them); without a cache, it leaves the
// previous CDB as it is, static rules included, until etcd answers.
// Once etcd goes on, the watcher takes etcd's grants and follows their
// changes.
func TestEtcdColdStartKeepsGrants(t *testing.T) {
	e := etcdtest.Start(t)
	b := newRelayctlSite(t, "127.0.0.:allow,QMAILQUEUE=\"/var/qmail/bin/simscan\"\n:allow\n")
	b.env = append(b.env, "POPRELAY_ETCD_ENDPOINTS="+e.Client, "POPRELAY_ETCD_TIMEOUT=10s")
	cli := etcdtest.Client(t, e.Client)
	now := time.Now().UTC()
	grantValue := func(user string) string {
		return `{"user":"` + user + `","service":"pop3","host":"pop1","time":"` + now.Format(time.RFC3339Nano) + `","exp":"` + now.Add(time.Hour).Format(time.RFC3339Nano) + `"}`
	}
	const g = "/poprelay/v1/grants/"
	putKey := func(k, v string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), wait.Patience)
		defer cancel()
		if _, err := cli.Put(ctx, k, v); err != nil {
			t.Fatal(err)
		}
	}
	putKey(g+"127.0.0.51", grantValue("alice"))
	putKey(g+"127.0.0.52", grantValue("bob"))

	wb := b.startWatch(t, "--source", "etcd")
	wait.For(t, "both grants in B's CDB", func() bool {
		r := relayAll(t, b.cdb, "127.0.0.51", "127.0.0.52")
		return r[0] && r[1]
	})
	wb.stop() // writes the cache, b.cdb + ".etcd"
	if _, err := os.Stat(b.cdb + ".etcd"); err != nil {
		t.Fatalf("no cache after the watcher stopped: %v", err)
	}

	resume := pauseEtcd(t, e)

	// With the cache: the first CDB written holds the grants.
	wb = b.launchWatch(t, "--source", "etcd")
	wb.waitLine(t, "rebuilt: ")
	if n := wb.rebuilds(0); n[0] != 2 {
		t.Errorf("etcd stopped, cache beside the CDB: the first CDB written had %d grants, want 2 (rebuilds %v)", n[0], n)
	}
	if r := relayAll(t, b.cdb, "127.0.0.51", "127.0.0.52"); !r[0] || !r[1] {
		t.Errorf("etcd stopped, cache beside the CDB: the CDB relays 127.0.0.51, .52: %v", r)
	}
	// A static rule added meanwhile is published with the cached grants.
	mark := wb.mark()
	if err := os.WriteFile(b.rules, []byte("127.0.0.77:allow,STATIC=\"1\"\n127.0.0.:allow,QMAILQUEUE=\"/var/qmail/bin/simscan\"\n:allow\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "the new static rule in B's CDB", func() bool {
		ds, err := view(b.cdb, []string{"127.0.0.77"})
		return err == nil && strings.Contains(ds[0], "STATIC=1")
	})
	if r := relayAll(t, b.cdb, "127.0.0.51", "127.0.0.52"); !r[0] || !r[1] {
		t.Errorf("a static rule changed while etcd is stopped: the CDB lost the cached grants: %v", r)
	}
	for _, n := range wb.rebuilds(mark) {
		if n != 2 {
			t.Errorf("a CDB written while etcd is stopped had %d grants, want 2", n)
		}
	}
	wb.stop()

	// Without a cache: the previous CDB stays, until etcd answers.
	if err := os.Remove(b.cdb + ".etcd"); err != nil {
		t.Fatal(err)
	}
	wb = b.launchWatch(t, "--source", "etcd")
	line := wb.waitAny(t, 0, "rebuilt: ", "no usable grant cache")
	if strings.Contains(line, "rebuilt: ") {
		t.Errorf("etcd stopped, no cache: the watcher wrote a CDB: %s", line)
	}
	os.WriteFile(b.rules, []byte("127.0.0.78:allow,STATIC=\"2\"\n127.0.0.:allow,QMAILQUEUE=\"/var/qmail/bin/simscan\"\n:allow\n"), 0o644)
	if r := relayAll(t, b.cdb, "127.0.0.51", "127.0.0.52"); !r[0] || !r[1] {
		t.Errorf("etcd stopped, no cache: the CDB lost the grants: %v", r)
	}
	if n := wb.rebuilds(0); len(n) > 0 {
		t.Errorf("etcd stopped, no cache: CDBs written with %v grants", n)
	}

	// etcd goes on: the watcher publishes etcd's grants with the new
	// static rules, then follows etcd's changes.
	resume()
	wb.waitLine(t, "rebuilt: ")
	if n := wb.rebuilds(0); n[0] != 2 {
		t.Errorf("etcd back: the first CDB had %d grants, want 2", n[0])
	}
	wait.For(t, "the static rule held back while etcd was stopped", func() bool {
		ds, err := view(b.cdb, []string{"127.0.0.78"})
		return err == nil && strings.Contains(ds[0], "STATIC=2")
	})
	putKey(g+"127.0.0.53", grantValue("carol"))
	ctx, cancel := context.WithTimeout(context.Background(), wait.Patience)
	defer cancel()
	if _, err := cli.Delete(ctx, g+"127.0.0.52"); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "etcd's changes in B's CDB", func() bool {
		r := relayAll(t, b.cdb, "127.0.0.51", "127.0.0.52", "127.0.0.53")
		return r[0] && !r[1] && r[2]
	})
}

// TestEtcdColdStartClosesExpired (issue 26, review of item 4): the
// previous CDB that a watcher started while etcd is stopped keeps
// without a cache is not kept for ever: its grants have no exp the
// watcher can read, so once every login in it may have expired (the
// max age after the CDB was written) the static rules are published
// alone, with a warning, until etcd answers. A grant whose exp passes
// while etcd is stopped stops relaying; before its exp it relays (the
// hold of item 4); once etcd answers, its grants are published again.
func TestEtcdColdStartClosesExpired(t *testing.T) {
	e := etcdtest.Start(t)
	b := newRelayctlSite(t, "127.0.0.:allow,QMAILQUEUE=\"/var/qmail/bin/simscan\"\n:allow\n")
	// Short enough for a quick test, long enough for the first watcher
	// to publish the grant and stop before it expires on a busy machine.
	const maxAge = 15 * time.Second
	b.env = append(b.env, "POPRELAY_ETCD_ENDPOINTS="+e.Client, "POPRELAY_ETCD_TIMEOUT=10s", "POPRELAY_MAXAGE="+maxAge.String())
	cli := etcdtest.Client(t, e.Client)
	const g = "/poprelay/v1/grants/"
	putGrant := func(ip, user string) time.Time {
		t.Helper()
		now := time.Now().UTC()
		exp := now.Add(maxAge)
		v := `{"user":"` + user + `","service":"pop3","host":"pop1","time":"` + now.Format(time.RFC3339Nano) + `","exp":"` + exp.Format(time.RFC3339Nano) + `"}`
		ctx, cancel := context.WithTimeout(context.Background(), wait.Patience)
		defer cancel()
		if _, err := cli.Put(ctx, g+ip, v); err != nil {
			t.Fatal(err)
		}
		return exp
	}
	exp := putGrant("127.0.0.61", "alice")
	wb := b.startWatch(t, "--source", "etcd")
	wait.For(t, "the grant in B's CDB", func() bool { return relays(t, b.cdb, "127.0.0.61") })
	wb.stop()
	if !relays(t, b.cdb, "127.0.0.61") {
		t.Fatalf("the grant expired before the first watcher stopped: the machine is too slow for a max age of %v", maxAge)
	}
	if err := os.Remove(b.cdb + ".etcd"); err != nil {
		t.Fatal(err)
	}

	resume := pauseEtcd(t, e)
	wb = b.launchWatch(t, "--source", "etcd")
	defer wb.stop()
	wb.waitAny(t, 0, "rebuilt: ", "no usable grant cache")
	// Item 4: before its exp, the grant still relays (checked only if
	// the read ended a second before it, the CDB's mtime and this clock
	// being the same clock).
	r := relays(t, b.cdb, "127.0.0.61")
	if time.Now().Before(exp.Add(-time.Second)) && !r {
		t.Errorf("etcd stopped, no cache: the grant no longer relays before its exp")
	}
	wait.For(t, "the grant past its exp to stop relaying while etcd is stopped", func() bool {
		return !relays(t, b.cdb, "127.0.0.61")
	})
	wb.waitLine(t, "writing it with the static rules alone until etcd answers")
	if ds, err := view(b.cdb, []string{"127.0.0.9"}); err != nil || !strings.Contains(ds[0], "QMAILQUEUE=/var/qmail/bin/simscan") {
		t.Errorf("the CDB written while etcd is stopped lacks the static rules: %q %v", ds, err)
	}

	// etcd goes on: the watcher follows it again.
	resume()
	putGrant("127.0.0.62", "bob")
	wait.For(t, "a grant made after etcd answers in B's CDB", func() bool { return relays(t, b.cdb, "127.0.0.62") })
	if relays(t, b.cdb, "127.0.0.61") {
		t.Errorf("the expired grant relays again once etcd answers")
	}
}

// pauseEtcd stops e's etcd process (SIGSTOP, by PID): its port still
// takes connections, and nothing answers on them. It returns the function
// that resumes it (SIGCONT); the test's end resumes it if nothing did.
func pauseEtcd(t *testing.T, e *etcdtest.Node) (resume func()) {
	t.Helper()
	pid := e.Cmd.Process.Pid
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	resume = func() { once.Do(func() { syscall.Kill(pid, syscall.SIGCONT) }) }
	t.Cleanup(resume)
	return resume
}
