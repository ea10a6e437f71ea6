package t

// Helpers of the reliability and security suite (robust_*_test.go,
// security_test.go): crashes, full disks, storms and hostile input.
//
// The quick sizes run in "make test"; POPRELAY_STRESS=1 ("make stress")
// runs the long ones.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/poprelay/poprelay/internal/cdb"
	"github.com/poprelay/poprelay/internal/grant"
	"github.com/poprelay/poprelay/internal/rules"
	"github.com/poprelay/poprelay/internal/wait"
)

// stress reports whether the long versions run (POPRELAY_STRESS set).
func stress() bool { return os.Getenv("POPRELAY_STRESS") != "" }

// sized returns quick in "make test" and long under "make stress".
func sized(quick, long int) int {
	if stress() {
		return long
	}
	return quick
}

// result is how a command ended.
type result struct {
	code           int // exit status; -1 killed by a signal or timed out
	stdout, stderr string
	timedOut       bool
}

// runCmd runs a command with env and stdin, killing it (and its process
// group) after limit: a hang is a failure the caller sees, never a hung
// test. limit detects hangs, it measures nothing: pass wait.Patience.
func runCmd(t testing.TB, env []string, stdin string, limit time.Duration, name string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		r.code, r.timedOut = -1, true
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		t.Fatalf("%s: %v", name, err)
	}
	return r
}

// run runs relayctl in the site with extra arguments, with a time limit.
func (s *relayctlSite) run(t testing.TB, args ...string) result {
	t.Helper()
	return runCmd(t, s.env, "", wait.Patience, bin("relayctl"), args...)
}

// mustCDB returns the bytes of the site's CDB.
func (s *relayctlSite) mustCDB(t testing.TB) []byte {
	t.Helper()
	b, err := os.ReadFile(s.cdb)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// debris lists the temp files beside the CDB (".tcp.smtp.cdb.tmp*").
func (s *relayctlSite) debris(t testing.TB) []string {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(filepath.Dir(s.cdb), "."+filepath.Base(s.cdb)+".tmp*"))
	return m
}

// decide is tcpserver's decision for ip in db, as one line: "deny", or
// "allow" and the variables of the matched record.
func decide(db rules.Finder, ip string) (string, error) {
	d, err := rules.Lookup(db, rules.Query{IP: ip})
	if err != nil {
		return "", err
	}
	if d.Deny {
		return "deny", nil
	}
	s := "allow"
	for _, v := range d.Environ() {
		s += " " + v.Name + "=" + v.Value
	}
	return s, nil
}

// view opens the CDB at path as tcpserver does, reads every record (a
// half-written file fails here) and returns the decisions for ips.
func view(path string, ips []string) ([]string, error) {
	db, err := cdb.Open(path)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	if err := db.ForEach(func(k, v []byte) error { return nil }); err != nil {
		return nil, err
	}
	out := make([]string, len(ips))
	for i, ip := range ips {
		if out[i], err = decide(db, ip); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// keys returns every key of the CDB at path, or an error for a CDB that
// is not whole.
func keys(path string) (map[string]bool, error) {
	db, err := cdb.Open(path)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	m := map[string]bool{}
	err = db.ForEach(func(k, v []byte) error {
		m[string(k)] = true
		return nil
	})
	return m, err
}

// relays tells whether the CDB at path gives RELAYCLIENT to ip.
func relays(t testing.TB, path, ip string) bool {
	t.Helper()
	v, err := view(path, []string{ip})
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return strings.Contains(v[0], "RELAYCLIENT=")
}

// spoolEntries lists a spool: its grants (those of its files over the
// folded ones, as relayctl reads them) and every name that is neither a
// grant file nor the folded file.
func spoolEntries(t testing.TB, dir string) (grants map[string]grant.Grant, other []string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	grants = map[string]grant.Grant{}
	s := grant.New(dir)
	gs, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range gs {
		grants[g.IP] = g
	}
	for _, e := range ents {
		if c, err := grant.CanonicalIP(e.Name()); err == nil && c == e.Name() && e.Type().IsRegular() {
			if _, ok := grants[c]; !ok {
				t.Errorf("spool entry %s is not a whole grant", e.Name())
			}
			continue
		}
		if e.Name() == grant.FoldedName {
			continue
		}
		other = append(other, e.Name())
	}
	sort.Strings(other)
	return grants, other
}

// bigRules is a static rules file of n lines before the given ones, so the
// CDB is large enough for a write to take a while.
func bigRules(n int, tail string) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "10.%d.%d.:allow,QMAILQUEUE=\"/var/qmail/bin/queue-%d\",DATABYTES=\"%d\"\n", i/250, i%250, i, 1000+i)
	}
	b.WriteString(tail)
	return b.String()
}

// recordAt writes a grant for ip straight into the spool.
func recordAt(t testing.TB, spool, ip, user string) {
	t.Helper()
	if err := grant.New(spool).Record(grant.Grant{IP: ip, User: user, Service: "pop3"}); err != nil {
		t.Fatal(err)
	}
}

// ip4 is 127.N.x.y for a counter, N picked per test so tests never share
// an address.
func ip4(n, i int) string {
	return "127." + strconv.Itoa(n) + "." + strconv.Itoa(i/250) + "." + strconv.Itoa(1+i%250)
}

// procsWith returns the PIDs of processes whose environment holds kv:
// background "relayctl rebuild"s started by a wrapper in their own
// session, which no process group kill reaches.
func procsWith(kv string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/environ")
		if err != nil {
			continue
		}
		for _, v := range bytes.Split(b, []byte{0}) {
			if string(v) == kv {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// waitGone waits until no process has kv in its environment.
func waitGone(t testing.TB, kv string) {
	t.Helper()
	wait.For(t, "no process left with "+kv, func() bool { return len(procsWith(kv)) == 0 })
}
