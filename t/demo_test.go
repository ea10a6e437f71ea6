package t

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestDemo runs "make demo" end to end, as a newcomer would, and checks its
// exit status and the lines that show each step behaved.
func TestDemo(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("the demo must run as root in CI")
		}
		t.Skip("SKIP: the demo needs root (Dovecot's master runs as root)")
	}
	need(t, "make")
	cmd := exec.Command("make", "-s", "demo")
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), "TERM=dumb")
	out, err := cmd.CombinedOutput()
	t.Logf("make demo:\n%s", out)
	if err != nil {
		t.Fatalf("make demo: %v", err)
	}
	for _, want := range []string{
		"220 127.0.0.2: no RELAYCLIENT",
		"PASS -> -ERR",
		"ok: spool still empty",
		"PASS -> +OK",
		"STAT -> +OK",
		"checkpassword-wrap: ip=127.0.0.2 user=alice service=pop3",
		"220 127.0.0.2: RELAYCLIENT is set: relaying allowed (QMAILQUEUE=/var/qmail/bin/qmail-queue)",
		"220 127.0.0.3: no RELAYCLIENT",
		"127.0.0.2  alice  pop3",
		"decision: allow",
		"relaying closed again for 127.0.0.2",
		"rebuilt: change: 1 grants",
		"demo: all steps behaved.",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
}
