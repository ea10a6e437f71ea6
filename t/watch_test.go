package t

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/poprelay/poprelay/internal/wait"
)

// watcher is a running "relayctl watch" whose stderr lines are collected.
type watcher struct {
	cmd   *exec.Cmd
	mu    sync.Mutex
	lines []string
	done  chan struct{}
}

// startWatch runs "relayctl watch" in the site and waits (wait.For, as
// long as it takes) for its first publish.
func (s *relayctlSite) startWatch(t *testing.T, args ...string) *watcher {
	t.Helper()
	w := s.launchWatch(t, args...)
	// The first CDB it writes: "rebuilt: start", or a later reason if
	// its source was not ready at first (an etcd mirror).
	w.waitLine(t, "rebuilt: ")
	return w
}

// launchWatch is startWatch without waiting for a first publish: for a
// watcher that must not publish yet.
func (s *relayctlSite) launchWatch(t *testing.T, args ...string) *watcher {
	t.Helper()
	return s.runWatch(t, bin("relayctl"), append([]string{"watch", "--debounce", "2ms"}, args...)...)
}

// runWatch starts prog with argv, a "relayctl watch" command line (or
// one that execs it, such as prlimit's), in the site and collects its
// stderr lines for waitLine.
func (s *relayctlSite) runWatch(t *testing.T, prog string, argv ...string) *watcher {
	t.Helper()
	cmd, stderr := start(t, s.env, true, prog, argv...)
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
	return w
}

// waitLine waits for a stderr line containing s.
func (w *watcher) waitLine(t *testing.T, s string) string {
	t.Helper()
	return w.waitLineAfter(t, 0, s)
}

// mark is the number of lines so far, for waitLineAfter.
func (w *watcher) mark() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.lines)
}

// waitLineAfter waits for a stderr line containing s, after the first
// mark lines.
func (w *watcher) waitLineAfter(t *testing.T, mark int, s string) string {
	t.Helper()
	var found string
	wait.For(t, "watch to say "+strconv.Quote(s), func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		for _, l := range w.lines[mark:] {
			if strings.Contains(l, s) {
				found = l
				return true
			}
		}
		return false
	})
	return found
}

// relayClient polls the real tcpserver from src until RELAYCLIENT is set
// (want true) or absent (want false), and returns the time it took (for
// the log: no test asserts it) and the environment tcpserver set.
func relayClient(t *testing.T, ts *Tcpserver, src string, want bool) (time.Duration, map[string]string) {
	t.Helper()
	start := time.Now()
	var env map[string]string
	// Not faster than wait's pacing: each probe leaves a TIME_WAIT
	// socket bound to src, and thousands of them slow down the
	// kernel's port search.
	wait.Succeeds(t, fmt.Sprintf("%s: RELAYCLIENT present=%v", src, want), func() error {
		env = envFrom(dialFrom(t, src, ts.Port, ""))
		if _, has := env["RELAYCLIENT"]; has != want {
			return fmt.Errorf("present=%v, env %v", has, env)
		}
		return nil
	})
	return time.Since(start), env
}

func TestWatchEndToEnd(t *testing.T) {
	s := newRelayctlSite(t, "127.0.0.:allow,QMAILQUEUE=\"/var/qmail/bin/simscan\"\n:allow\n")
	w := s.startWatch(t, "--metrics", "127.0.0.1:0")
	ts := startTcpserver(t, baseEnv(), []string{"-x", s.cdb, "-R", "-H"}, "/usr/bin/env")

	if _, env := relayClient(t, ts, "127.0.0.31", false); env["QMAILQUEUE"] != "/var/qmail/bin/simscan" {
		t.Fatalf("static rules not in the CDB: %v", env)
	}

	// A wrapped login: the real wrapper records 127.0.0.31.
	login := exec.Command(bin("checkpassword-wrap"), "--spool", s.spool, "--service", "pop3", "/bin/true")
	login.Env = append(baseEnv(), "TCPREMOTEIP=127.0.0.31", "USER=alice")
	if out, err := login.CombinedOutput(); err != nil {
		t.Fatalf("checkpassword-wrap: %v: %s", err, out)
	}
	took, env := relayClient(t, ts, "127.0.0.31", true)
	if env["QMAILQUEUE"] != "/var/qmail/bin/simscan" {
		t.Errorf("static QMAILQUEUE lost in the grant: %v", env)
	}
	t.Logf("login -> tcpserver sees RELAYCLIENT after %v", took)
	// Another address is untouched.
	relayClient(t, ts, "127.0.0.32", false)

	// A revoke closes it.
	s.relayctl(t, "revoke", "127.0.0.31")
	relayClient(t, ts, "127.0.0.31", false)

	// An expiry closes it on time, with no cron and no event. The grant
	// lasts long enough for any machine to publish it before it ends;
	// then the test waits for the expiry, whenever it comes, and checks
	// it did not come early (the spool keeps whole seconds).
	const length = 15 * time.Second
	granted := time.Now()
	t.Logf("%s allow 127.0.0.33 for %v", granted.Format("15:04:05.000"), length)
	s.relayctl(t, "allow", "127.0.0.33", "--for", length.String(), "--user", "bob")
	relayClient(t, ts, "127.0.0.33", true)
	relayClient(t, ts, "127.0.0.33", false)
	if closed := time.Now(); closed.Before(granted.Add(length - time.Second)) {
		t.Errorf("a %v grant closed after %v", length, closed.Sub(granted))
	}
	w.waitLine(t, "rebuilt: expiry")
	t.Logf("%v grant closed %v after it was made", length, time.Since(granted))

	// A bad edit of the static rules: reported with file:line, the last
	// good rules stay, and logins still open relaying.
	bad := s.rules + ".new"
	os.WriteFile(bad, []byte("127.0.0.:allow,QMAILQUEUE=\"/x\n"), 0o644)
	if err := os.Rename(bad, s.rules); err != nil {
		t.Fatal(err)
	}
	w.waitLine(t, s.rules+":1: unable to parse this line")
	login = exec.Command(bin("checkpassword-wrap"), "--spool", s.spool, "--service", "imap", "/bin/true")
	login.Env = append(baseEnv(), "TCPREMOTEIP=127.0.0.34", "USER=carol")
	if out, err := login.CombinedOutput(); err != nil {
		t.Fatalf("checkpassword-wrap: %v: %s", err, out)
	}
	_, env = relayClient(t, ts, "127.0.0.34", true)
	if env["QMAILQUEUE"] != "/var/qmail/bin/simscan" {
		t.Errorf("last good rules not kept: %v", env)
	}

	// The spool deleted and recreated: the watcher goes on.
	if err := os.RemoveAll(s.spool); err != nil {
		t.Fatal(err)
	}
	relayClient(t, ts, "127.0.0.34", false)
	if err := os.Mkdir(s.spool, 0o755); err != nil {
		t.Fatal(err)
	}
	login = exec.Command(bin("checkpassword-wrap"), "--spool", s.spool, "--service", "imap", "/bin/true")
	login.Env = append(baseEnv(), "TCPREMOTEIP=127.0.0.35", "USER=dave")
	if out, err := login.CombinedOutput(); err != nil {
		t.Fatalf("checkpassword-wrap: %v: %s", err, out)
	}
	relayClient(t, ts, "127.0.0.35", true)

	// Metrics are served.
	addr := strings.TrimSpace(strings.TrimPrefix(strings.TrimSuffix(w.waitLine(t, "metrics on http://"), "/metrics\n"), "relayctl: metrics on http://"))
	// The watcher counts a publish just after the CDB's rename, which
	// a client can see first: wait for the count.
	var body []byte
	wait.Succeeds(t, "metrics of the last publish", func() error {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			return err
		}
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, want := range []string{"poprelay_grants_live 1\n", "poprelay_login_to_cdb_seconds_count", `poprelay_errors_total{kind="rules"} `} {
			if !strings.Contains(string(body), want) {
				return fmt.Errorf("metrics lack %q: %s", want, grepLines(string(body), "poprelay_"))
			}
		}
		return nil
	})
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

// grepLines returns the lines of s that start with prefix, one line.
func grepLines(s, prefix string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "; ")
}
