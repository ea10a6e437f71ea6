package t

import (
	"os/exec"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/poprelay/poprelay/internal/etcdtest"
)

// wrapLogin runs the real checkpassword-wrap as a login from ip.
func wrapLogin(t *testing.T, s *relayctlSite, ip, user string) {
	t.Helper()
	login := exec.Command(bin("checkpassword-wrap"), "--spool", s.spool, "--service", "pop3", "/bin/true")
	login.Env = append(baseEnv(), "TCPREMOTEIP="+ip, "USER="+user)
	if out, err := login.CombinedOutput(); err != nil {
		t.Fatalf("checkpassword-wrap: %v: %s", err, out)
	}
}

// TestEtcdTwoHosts: one etcd, two "hosts" on this machine with their own
// spool, CDB and relayctl watch: A (POP/IMAP) publishes, B (SMTP) mirrors
// and serves a real tcpserver -x. Login, revoke, expiry, etcd down (and
// B's watcher restarted meanwhile), etcd back.
func TestEtcdTwoHosts(t *testing.T) {
	e := etcdtest.Start(t)
	a := newRelayctlSite(t, ":allow\n")
	b := newRelayctlSite(t, "127.0.0.:allow,QMAILQUEUE=\"/var/qmail/bin/simscan\"\n:allow\n")
	// The watchers give up on a request after 2s, so that they notice
	// soon that etcd is down (A keeps a backlog, B falls back on its
	// cache); they retry whatever fails. The one-shot commands run
	// through aCtl may wait 30s for etcd: on a busy machine a request
	// that should succeed must not time out.
	for _, s := range []*relayctlSite{a, b} {
		s.env = append(s.env, "POPRELAY_ETCD_ENDPOINTS="+e.Client, "POPRELAY_ETCD_TIMEOUT=2s")
	}
	aCtl := *a
	aCtl.env = append(slices.Clone(a.env), "POPRELAY_ETCD_TIMEOUT=30s")
	wa := a.startWatch(t, "--publish", "etcd")
	wb := b.startWatch(t, "--source", "etcd")
	ts := startTcpserver(t, baseEnv(), []string{"-x", b.cdb, "-R", "-H"}, "/usr/bin/env")
	relayClient(t, ts, "127.0.0.41", false)

	// A wrapped login on A opens relaying on B.
	wrapLogin(t, a, "127.0.0.41", "alice")
	took, env := relayClient(t, ts, "127.0.0.41", true)
	t.Logf("login on A -> RELAYCLIENT on B after %v", took)
	if env["QMAILQUEUE"] != "/var/qmail/bin/simscan" {
		t.Errorf("B's static rules lost in the grant: %v", env)
	}

	// A revoke on A (cluster-wide) closes it on B.
	aCtl.relayctl(t, "revoke", "127.0.0.41")
	took, _ = relayClient(t, ts, "127.0.0.41", false)
	t.Logf("revoke on A -> closed on B after %v", took)

	// A short grant closes on B at its exp. It lasts long enough for any
	// machine to show it on B first; then the test waits for the expiry
	// and checks it did not come early (the spool keeps whole seconds).
	const length = 15 * time.Second
	t0 := time.Now()
	aCtl.relayctl(t, "allow", "127.0.0.42", "--for", length.String())
	relayClient(t, ts, "127.0.0.42", true)
	relayClient(t, ts, "127.0.0.42", false)
	if d := time.Since(t0); d < length-time.Second {
		t.Errorf("a %v grant closed on B after %v", length, d)
	}
	t.Logf("%v grant closed on B %v after it was made", length, time.Since(t0).Round(time.Millisecond))

	// etcd killed: B keeps its CDB and still expires on time, even
	// across a restart of B's watcher (from its cache).
	aCtl.relayctl(t, "allow", "127.0.0.43")
	aCtl.relayctl(t, "allow", "127.0.0.44", "--for", length.String())
	t0 = time.Now()
	relayClient(t, ts, "127.0.0.43", true)
	relayClient(t, ts, "127.0.0.44", true)
	wb.cmd.Process.Signal(syscall.SIGTERM)
	<-wb.done
	e.Kill()
	wb = b.startWatch(t, "--source", "etcd")
	wb.waitLine(t, "from the cache")
	relayClient(t, ts, "127.0.0.43", true)
	relayClient(t, ts, "127.0.0.44", false)
	if d := time.Since(t0); d < length-time.Second {
		t.Errorf("a %v grant closed after %v", length, d)
	}
	relayClient(t, ts, "127.0.0.43", true)

	// A login on A while etcd is down waits in A's backlog, and reaches
	// B once etcd is back.
	mark := wa.mark()
	wrapLogin(t, a, "127.0.0.45", "bob")
	wa.waitLineAfter(t, mark, "keeping a backlog")
	relayClient(t, ts, "127.0.0.45", false)
	e.Start()
	took, _ = relayClient(t, ts, "127.0.0.45", true)
	t.Logf("etcd restarted -> backlog login on B after %v", took)
	relayClient(t, ts, "127.0.0.43", true)
}
