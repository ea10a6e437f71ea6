package t

import (
	"os/exec"
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
	for _, s := range []*relayctlSite{a, b} {
		s.env = append(s.env, "POPRELAY_ETCD_ENDPOINTS="+e.Client, "POPRELAY_ETCD_TIMEOUT=1s")
	}
	a.startWatch(t, "--publish", "etcd")
	wb := b.startWatch(t, "--source", "etcd")
	ts := startTcpserver(t, baseEnv(), []string{"-x", b.cdb, "-R", "-H"}, "/usr/bin/env")
	relayClient(t, ts, "127.0.0.41", false, time.Second)

	// A wrapped login on A opens relaying on B within a second.
	wrapLogin(t, a, "127.0.0.41", "alice")
	took, env := relayClient(t, ts, "127.0.0.41", true, time.Second)
	t.Logf("login on A -> RELAYCLIENT on B after %v", took)
	if env["QMAILQUEUE"] != "/var/qmail/bin/simscan" {
		t.Errorf("B's static rules lost in the grant: %v", env)
	}

	// A revoke on A (cluster-wide) closes it on B.
	a.relayctl(t, "revoke", "127.0.0.41")
	took, _ = relayClient(t, ts, "127.0.0.41", false, time.Second)
	t.Logf("revoke on A -> closed on B after %v", took)

	// A short grant closes on B at its exp.
	t0 := time.Now()
	a.relayctl(t, "allow", "127.0.0.42", "--for", "2s")
	relayClient(t, ts, "127.0.0.42", true, time.Second)
	relayClient(t, ts, "127.0.0.42", false, 4*time.Second)
	t.Logf("2s grant closed on B %v after it was made", time.Since(t0).Round(time.Millisecond))

	// etcd killed: B keeps its CDB and still expires on time, even
	// across a restart of B's watcher (from its cache).
	a.relayctl(t, "allow", "127.0.0.43")
	a.relayctl(t, "allow", "127.0.0.44", "--for", "5s")
	t0 = time.Now()
	relayClient(t, ts, "127.0.0.43", true, time.Second)
	relayClient(t, ts, "127.0.0.44", true, time.Second)
	wb.cmd.Process.Signal(syscall.SIGTERM)
	<-wb.done
	e.Kill()
	b.startWatch(t, "--source", "etcd")
	relayClient(t, ts, "127.0.0.43", true, time.Second)
	relayClient(t, ts, "127.0.0.44", true, time.Second)
	relayClient(t, ts, "127.0.0.44", false, 5*time.Second)
	if d := time.Since(t0); d < 4*time.Second {
		t.Errorf("5s grant closed after %v", d)
	}
	relayClient(t, ts, "127.0.0.43", true, time.Second)

	// A login on A while etcd is down reaches B once etcd is back.
	wrapLogin(t, a, "127.0.0.45", "bob")
	time.Sleep(500 * time.Millisecond)
	relayClient(t, ts, "127.0.0.45", false, time.Second)
	e.Start()
	t0 = time.Now()
	took, _ = relayClient(t, ts, "127.0.0.45", true, 10*time.Second)
	t.Logf("etcd restarted -> backlog login on B after %v", took)
	relayClient(t, ts, "127.0.0.43", true, time.Second)
}
