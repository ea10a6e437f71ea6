package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/poprelay/poprelay/internal/wait"
)

// syncBuffer is a bytes.Buffer safe for a watcher's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// watchBriefly runs "relayctl watch args" in-process until it says it is
// watching, then stops it, and returns its exit code and stderr.
func (f *fixture) watchBriefly(args ...string) (int, string) {
	f.t.Helper()
	var errb syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e := &env{stdin: strings.NewReader(""), stdout: &errb, stderr: &errb, ctx: ctx, now: time.Now,
		lookup: func(k string) (string, bool) { v, ok := f.env[k]; return v, ok }}
	done := make(chan int)
	go func() { done <- e.run(append([]string{"watch"}, args...)) }()
	code, ended := 0, false
	wait.For(f.t, "watch to start (or end)", func() bool {
		select {
		case code = <-done:
			ended = true
			return true
		default:
		}
		return strings.Contains(errb.String(), "relayctl: watching ")
	})
	if ended {
		return code, errb.String()
	}
	cancel()
	return <-done, errb.String()
}

// closedPort is a loopback address where nothing listens.
func closedPort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestEtcdWarnings: watch, list, allow and revoke warn once, at start,
// about an etcd endpoint that lets anyone who reaches it open the relay;
// not about loopback, TLS or an etcd user.
func TestEtcdWarnings(t *testing.T) {
	f := newFixture(t)
	const open = "relayctl: warning: etcd endpoint http://192.0.2.1:2379: plain http on a non-loopback address and no authentication configured: anyone who can reach it can open the relay"
	f.env["POPRELAY_ETCD_TIMEOUT"] = "0.2"
	f.env["POPRELAY_ETCD_ENDPOINTS"] = "http://192.0.2.1:2379"
	for _, args := range [][]string{
		{"list", "--source", "etcd"},
		{"allow", "192.0.2.7"},
		{"revoke", "192.0.2.7"},
	} {
		code, _, errs := f.run(args...)
		if n := strings.Count(errs, open); n != 1 || code != 111 {
			t.Errorf("%q: exit %d, warning %d times; stderr:\n%s", args, code, n, errs)
		}
		if !strings.HasPrefix(errs, open) {
			t.Errorf("%q: the warning does not come first:\n%s", args, errs)
		}
	}
	code, errs := f.watchBriefly("--publish", "etcd")
	if n := strings.Count(errs, open); n != 1 || code != 0 {
		t.Errorf("watch: exit %d, warning %d times; stderr:\n%s", code, n, errs)
	}

	// Loopback, or an etcd user over TLS: no warning.
	for _, ep := range []string{"http://" + closedPort(t), "https://192.0.2.1:2379"} {
		f.env["POPRELAY_ETCD_ENDPOINTS"] = ep
		code, _, errs := f.run("list", "--source", "etcd")
		if code != 111 || strings.Contains(errs, "warning") {
			t.Errorf("%s: exit %d, stderr %q", ep, code, errs)
		}
	}
	// The password on the command line: a warning that ps shows it.
	f.env["POPRELAY_ETCD_ENDPOINTS"] = "http://" + closedPort(t)
	_, _, errs = f.run("revoke", "192.0.2.7", "--etcd-user", "u", "--etcd-password", "pw")
	if strings.Count(errs, "--etcd-password on the command line is visible to every local user") != 1 {
		t.Errorf("--etcd-password: stderr %q", errs)
	}
}

// TestConfigEtcdSecurity: config shows TLS, certificate, user and the
// warnings, and never the password, whether it comes from the variable,
// the flag or a file.
func TestConfigEtcdSecurity(t *testing.T) {
	f := newFixture(t)
	const secret = "Tr0ub4dor-and-3"
	pwFile := filepath.Join(f.dir, "etcd.pw")
	f.write(pwFile, secret+"\n")
	os.Chmod(pwFile, 0o640)
	f.env["POPRELAY_ETCD_ENDPOINTS"] = "http://10.0.0.5:2379,http://127.0.0.1:2379"
	out := f.ok("config")
	out = regexp.MustCompile(` {2,}`).ReplaceAllString(out, "  ")
	for _, w := range []string{
		"etcd-tls  no  derived",
		"etcd-client-cert  no  derived",
		"etcd-auth  none  derived",
		"etcd-warning  etcd endpoint http://10.0.0.5:2379: plain http on a non-loopback address and no authentication configured: anyone who can reach it can open the relay",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("config lacks %q:\n%s", w, out)
		}
	}

	f.env["POPRELAY_ETCD_ENDPOINTS"] = "https://10.0.0.5:2379"
	f.env["POPRELAY_ETCD_USER"] = "pop1"
	f.env["POPRELAY_ETCD_PASSWORD_FILE"] = pwFile
	out = f.ok("config")
	out = regexp.MustCompile(` {2,}`).ReplaceAllString(out, "  ")
	for _, w := range []string{
		"etcd-tls  yes",
		"etcd-auth  pop1, password from " + pwFile,
		"etcd-password-file  " + pwFile + "  env POPRELAY_ETCD_PASSWORD_FILE",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("config lacks %q:\n%s", w, out)
		}
	}
	if strings.Contains(out, "etcd-warning") {
		t.Errorf("warning for TLS and a user:\n%s", out)
	}
	os.Chmod(pwFile, 0o644)
	if out := f.ok("config"); !strings.Contains(out, "readable by every user") {
		t.Errorf("no warning for a world-readable password file:\n%s", out)
	}
	os.Chmod(pwFile, 0o600)
	delete(f.env, "POPRELAY_ETCD_PASSWORD_FILE")

	for i, args := range [][]string{
		{"config", "--etcd-password", secret},
		{"config"},
		{"config", "--etcd-password-file", pwFile},
	} {
		if i == 1 {
			f.env["POPRELAY_ETCD_PASSWORD"] = secret
		} else {
			delete(f.env, "POPRELAY_ETCD_PASSWORD")
		}
		code, out, errs := f.run(args...)
		if code != 0 || strings.Contains(out+errs, secret) {
			t.Errorf("%q: exit %d, the password shows:\n%s%s", args, code, out, errs)
		}
		if i < 2 && !strings.Contains(out, "(set)") {
			t.Errorf("%q: the password is not said to be set:\n%s", args, out)
		}
	}
	// Both, or an unusable file: exit 100, naming the setting, not the password.
	f.env["POPRELAY_ETCD_PASSWORD"] = secret
	f.fails(100, "POPRELAY_ETCD_PASSWORD and POPRELAY_ETCD_PASSWORD_FILE exclude each other", "config", "--etcd-password-file", pwFile)
	delete(f.env, "POPRELAY_ETCD_PASSWORD")
	f.fails(100, "password file", "list", "--source", "etcd", "--etcd-password-file", filepath.Join(f.dir, "none"))
	f.fails(100, "not a regular file", "list", "--source", "etcd", "--etcd-password-file", f.dir)
	code, _, errs := f.run("list", "--source", "etcd", "--etcd-password-file", pwFile+"x")
	if strings.Contains(errs, secret) || code != 100 {
		t.Errorf("missing file: exit %d, %q", code, errs)
	}
}
