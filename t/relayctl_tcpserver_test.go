package t

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/poprelay/poprelay/internal/wait"
)

// relayctlEnv is the environment relayctl and the wrapper run with here.
type relayctlSite struct {
	dir, spool, rules, cdb string
	env                    []string
}

func newRelayctlSite(t *testing.T, rules string) *relayctlSite {
	t.Helper()
	dir := t.TempDir()
	s := &relayctlSite{dir: dir, spool: filepath.Join(dir, "spool"), rules: filepath.Join(dir, "tcp.smtp"), cdb: filepath.Join(dir, "tcp.smtp.cdb")}
	if err := os.Mkdir(s.spool, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.rules, []byte(rules), 0o644); err != nil {
		t.Fatal(err)
	}
	s.env = baseEnv("POPRELAY_SPOOL="+s.spool, "POPRELAY_RULES="+s.rules, "POPRELAY_CDB="+s.cdb, "POPRELAY_NEVER=")
	return s
}

// relayctl runs the relayctl binary and fails the test unless it exits 0.
func (s *relayctlSite) relayctl(t *testing.T, args ...string) string {
	t.Helper()
	if _, err := os.Stat(bin("relayctl")); err != nil {
		t.Fatalf("relayctl is not built: %v", err)
	}
	cmd := exec.Command(bin("relayctl"), args...)
	cmd.Env = s.env
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("relayctl %q: %v: %s", args, err, stderr.String())
	}
	return string(out)
}

// checkView parses "relayctl check" output into the decision and the
// variables it says the record sets.
func checkView(out string) (decision string, vars map[string]string) {
	vars = map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if d, ok := strings.CutPrefix(line, "decision: "); ok {
			decision = d
		}
		if kv, ok := strings.CutPrefix(line, "env: "); ok {
			k, v, _ := strings.Cut(kv, "=")
			vars[k] = v
		}
	}
	return decision, vars
}

// agree connects from src to the real tcpserver, asks relayctl check about
// src, fails the test if they disagree, and returns tcpserver's view: nil
// for a dropped connection, else the program's environment.
func (s *relayctlSite) agree(t *testing.T, ts *Tcpserver, src string) map[string]string {
	t.Helper()
	out := dialFrom(t, src, ts.Port, "")
	decision, vars := checkView(s.relayctl(t, "check", src))
	if out == "" {
		if decision != "deny" {
			t.Errorf("%s: tcpserver dropped the connection, relayctl check says %q", src, decision)
		}
		return nil
	}
	env := envFrom(out)
	if decision != "allow" {
		t.Errorf("%s: tcpserver ran the program, relayctl check says %q", src, decision)
	}
	for k, v := range vars {
		if got, ok := env[k]; !ok || got != v {
			t.Errorf("%s: relayctl check says %s=%q, tcpserver set %q (set: %v)", src, k, v, got, ok)
		}
	}
	for _, k := range []string{"RELAYCLIENT", "RBLSMTPD", "QMAILQUEUE", "TCPREMOTEINFO"} {
		if _, ok := env[k]; ok {
			if _, said := vars[k]; !said {
				t.Errorf("%s: tcpserver set %s, relayctl check does not say so", src, k)
			}
		}
	}
	return env
}

// TestRelayctlTcpserver runs a real tcpserver -x on the CDB relayctl
// writes: a grant adds RELAYCLIENT and keeps the static rule's settings,
// expiry takes it away, a static deny stays, and relayctl check agrees
// with tcpserver every time.
func TestRelayctlTcpserver(t *testing.T) {
	s := newRelayctlSite(t, `127.0.0.1:allow,RELAYCLIENT=""
127.0.0.66:deny
127.0.0.:allow,QMAILQUEUE="/var/qmail/bin/qmail-scanner-queue"
:deny
`)
	s.relayctl(t, "rebuild")
	ts := startTcpserver(t, baseEnv(), []string{"-x", s.cdb, "-R", "-H"}, "/usr/bin/env")

	const alice, bob, carol = "127.0.0.23", "127.0.0.24", "127.0.0.25"
	for _, src := range []string{alice, bob, carol} {
		env := s.agree(t, ts, src)
		if _, ok := env["RELAYCLIENT"]; ok || env["QMAILQUEUE"] == "" {
			t.Fatalf("%s before any grant: %v", src, env)
		}
	}

	// A manual grant.
	s.relayctl(t, "allow", alice, "--user", "alice")
	env := s.agree(t, ts, alice)
	if v, ok := env["RELAYCLIENT"]; !ok || v != "" || env["QMAILQUEUE"] != "/var/qmail/bin/qmail-scanner-queue" || env["RBLSMTPD"] != "" {
		t.Errorf("%s after allow: RELAYCLIENT=%q(%v) QMAILQUEUE=%q", alice, v, ok, env["QMAILQUEUE"])
	}
	if !strings.Contains(s.relayctl(t, "check", alice), `grant for 127.0.0.23: user "alice"`) {
		t.Errorf("check does not name the grant")
	}

	// A grant made by a login through the wrapper (stdin not a socket,
	// run by root: trusted), then a rebuild.
	if _, err := os.Stat(bin("checkpassword-wrap")); err == nil {
		cmd := exec.Command(bin("checkpassword-wrap"), "/bin/true")
		cmd.Env = append(s.env, "TCPREMOTEIP="+bob, "USER=bob")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("checkpassword-wrap: %v: %s", err, out)
		}
	} else {
		t.Logf("checkpassword-wrap not built (%v): granting %s with relayctl", err, bob)
		s.relayctl(t, "allow", bob, "--user", "bob")
	}
	s.relayctl(t, "rebuild")
	env = s.agree(t, ts, bob)
	if _, ok := env["RELAYCLIENT"]; !ok || env["QMAILQUEUE"] == "" {
		t.Errorf("%s after a wrapped login and rebuild: %v", bob, env)
	}
	if !strings.Contains(s.relayctl(t, "check", bob), `user "bob"`) {
		t.Errorf("check does not name bob's grant")
	}

	// A grant for a while relays; a short one expires, and expire
	// takes it away and nothing else. The test never races the short
	// grant's clock: it waits until expire has removed it, whenever that
	// is.
	const dave = "127.0.0.26"
	s.relayctl(t, "allow", carol, "--for", "1h")
	if _, ok := s.agree(t, ts, carol)["RELAYCLIENT"]; !ok {
		t.Errorf("%s: no RELAYCLIENT after allow --for 1h", carol)
	}
	s.relayctl(t, "allow", dave, "--for", "1s")
	wait.For(t, dave+"'s 1s grant to expire", func() bool {
		if out := s.relayctl(t, "expire"); out != "" {
			t.Errorf("expire printed %q", out)
		}
		env := s.agree(t, ts, dave)
		if env["QMAILQUEUE"] == "" {
			t.Fatalf("%s after expire: %v", dave, env)
		}
		_, ok := env["RELAYCLIENT"]
		return !ok
	})
	for _, ip := range []string{alice, carol} {
		if _, ok := s.agree(t, ts, ip)["RELAYCLIENT"]; !ok {
			t.Errorf("%s lost its grant to expire", ip)
		}
	}

	// A static deny is never turned into a relay.
	s.relayctl(t, "allow", "127.0.0.66")
	if env := s.agree(t, ts, "127.0.0.66"); env != nil {
		t.Errorf("127.0.0.66 is denied statically, got %v", env)
	}

	// Revoked: back to the static rule.
	s.relayctl(t, "revoke", "--user", "alice")
	env = s.agree(t, ts, alice)
	if _, ok := env["RELAYCLIENT"]; ok || env["QMAILQUEUE"] == "" {
		t.Errorf("%s after revoke: %v", alice, env)
	}
}
