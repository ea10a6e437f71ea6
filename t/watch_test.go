package t

import (
	"bufio"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// watcher is a running "relayctl watch" whose stderr lines are collected.
type watcher struct {
	cmd   *exec.Cmd
	mu    sync.Mutex
	lines []string
	done  chan struct{}
}

func (s *relayctlSite) startWatch(t *testing.T, args ...string) *watcher {
	t.Helper()
	cmd, stderr := start(t, s.env, true, bin("relayctl"), append([]string{"watch", "--debounce", "2ms"}, args...)...)
	w := &watcher{cmd: cmd, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		r := bufio.NewReader(stderr)
		for {
			line, err := r.ReadString('\n')
			if line != "" {
				t.Log(time.Now().Format("15:04:05.000") + " watch: " + strings.TrimRight(line, "\n"))
				w.mu.Lock()
				w.lines = append(w.lines, line)
				w.mu.Unlock()
			}
			if err != nil {
				return
			}
		}
	}()
	w.waitLine(t, "rebuilt: start", 5*time.Second)
	return w
}

// waitLine waits for a stderr line containing s.
func (w *watcher) waitLine(t *testing.T, s string, limit time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		w.mu.Lock()
		for _, l := range w.lines {
			if strings.Contains(l, s) {
				w.mu.Unlock()
				return l
			}
		}
		w.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("watch never said %q", s)
	return ""
}

// relayClient polls the real tcpserver from src until RELAYCLIENT is set
// (want true) or absent (want false), and returns the time it took.
func relayClient(t *testing.T, ts *Tcpserver, src string, want bool, limit time.Duration) (time.Duration, map[string]string) {
	t.Helper()
	start := time.Now()
	for {
		env := envFrom(dialFrom(t, src, ts.Port, ""))
		_, has := env["RELAYCLIENT"]
		if has == want {
			return time.Since(start), env
		}
		if time.Since(start) > limit {
			t.Fatalf("%s: RELAYCLIENT present=%v after %v, want %v (env %v)", src, has, limit, want, env)
		}
		// Not faster: each probe leaves a TIME_WAIT socket bound to src,
		// and thousands of them slow down the kernel's port search.
		time.Sleep(10 * time.Millisecond)
	}
}

func TestWatchEndToEnd(t *testing.T) {
	s := newRelayctlSite(t, "127.0.0.:allow,QMAILQUEUE=\"/var/qmail/bin/simscan\"\n:allow\n")
	w := s.startWatch(t, "--metrics", "127.0.0.1:0")
	ts := startTcpserver(t, baseEnv(), []string{"-x", s.cdb, "-R", "-H"}, "/usr/bin/env")

	if _, env := relayClient(t, ts, "127.0.0.31", false, time.Second); env["QMAILQUEUE"] != "/var/qmail/bin/simscan" {
		t.Fatalf("static rules not in the CDB: %v", env)
	}

	// A wrapped login: the real wrapper records 127.0.0.31.
	login := exec.Command(bin("checkpassword-wrap"), "--spool", s.spool, "--service", "pop3", "/bin/true")
	login.Env = append(baseEnv(), "TCPREMOTEIP=127.0.0.31", "USER=alice")
	if out, err := login.CombinedOutput(); err != nil {
		t.Fatalf("checkpassword-wrap: %v: %s", err, out)
	}
	took, env := relayClient(t, ts, "127.0.0.31", true, 2*time.Second)
	if env["QMAILQUEUE"] != "/var/qmail/bin/simscan" {
		t.Errorf("static QMAILQUEUE lost in the grant: %v", env)
	}
	t.Logf("login -> tcpserver sees RELAYCLIENT after %v", took)
	// Another address is untouched.
	relayClient(t, ts, "127.0.0.32", false, time.Second)

	// A revoke closes it.
	s.relayctl(t, "revoke", "127.0.0.31")
	relayClient(t, ts, "127.0.0.31", false, time.Second)

	// An expiry closes it on time, with no cron and no event.
	granted := time.Now()
	t.Logf("%s allow 127.0.0.33 for 2s", granted.Format("15:04:05.000"))
	s.relayctl(t, "allow", "127.0.0.33", "--for", "2s", "--user", "bob")
	relayClient(t, ts, "127.0.0.33", true, time.Second)
	took, _ = relayClient(t, ts, "127.0.0.33", false, 4*time.Second)
	if elapsed := time.Since(granted); elapsed < time.Second {
		t.Errorf("2s grant closed after %v", elapsed)
	}
	t.Logf("2s grant closed %v after it was made", time.Since(granted))

	// A bad edit of the static rules: reported with file:line, the last
	// good rules stay, and logins still open relaying.
	bad := s.rules + ".new"
	os.WriteFile(bad, []byte("127.0.0.:allow,QMAILQUEUE=\"/x\n"), 0o644)
	if err := os.Rename(bad, s.rules); err != nil {
		t.Fatal(err)
	}
	w.waitLine(t, s.rules+":1: unable to parse this line", 2*time.Second)
	login = exec.Command(bin("checkpassword-wrap"), "--spool", s.spool, "--service", "imap", "/bin/true")
	login.Env = append(baseEnv(), "TCPREMOTEIP=127.0.0.34", "USER=carol")
	if out, err := login.CombinedOutput(); err != nil {
		t.Fatalf("checkpassword-wrap: %v: %s", err, out)
	}
	_, env = relayClient(t, ts, "127.0.0.34", true, time.Second)
	if env["QMAILQUEUE"] != "/var/qmail/bin/simscan" {
		t.Errorf("last good rules not kept: %v", env)
	}

	// The spool deleted and recreated: the watcher goes on.
	if err := os.RemoveAll(s.spool); err != nil {
		t.Fatal(err)
	}
	relayClient(t, ts, "127.0.0.34", false, time.Second)
	if err := os.Mkdir(s.spool, 0o755); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	login = exec.Command(bin("checkpassword-wrap"), "--spool", s.spool, "--service", "imap", "/bin/true")
	login.Env = append(baseEnv(), "TCPREMOTEIP=127.0.0.35", "USER=dave")
	if out, err := login.CombinedOutput(); err != nil {
		t.Fatalf("checkpassword-wrap: %v: %s", err, out)
	}
	relayClient(t, ts, "127.0.0.35", true, 2*time.Second)

	// Metrics are served.
	addr := strings.TrimSpace(strings.TrimPrefix(strings.TrimSuffix(w.waitLine(t, "metrics on http://", time.Second), "/metrics\n"), "relayctl: metrics on http://"))
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"poprelay_grants_live 1\n", "poprelay_login_to_cdb_seconds_count", `poprelay_errors_total{kind="rules"} `} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if strings.Contains(string(body), `poprelay_errors_total{kind="rules"} 0`) {
		t.Errorf("the bad rules edit was not counted")
	}

	// SIGTERM: a clean exit, status 0.
	w.cmd.Process.Signal(syscall.SIGTERM)
	<-w.done
	if err := w.cmd.Wait(); err != nil {
		t.Errorf("watch exit after SIGTERM: %v", err)
	}
}
