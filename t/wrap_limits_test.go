package t

import (
	"os/exec"
	"strings"
	"testing"
)

// TestWrapUnderSoftlimit pins the memory limits the wrapper can run under,
// which scripts/qmail-pop3d.run and the man page rely on: a data limit of
// 100 MB (softlimit -d 100000000) works; an address-space limit like the
// one "softlimit -m 20000000" sets kills any Go program at start, so the
// run script must not use -m. If the second half ever fails, the Go
// runtime got leaner and the documentation can say so.
func TestWrapUnderSoftlimit(t *testing.T) {
	prlimit := need(t, "prlimit")
	run := func(limit string) (string, error) {
		cmd := exec.Command(prlimit, limit, bin("checkpassword-wrap"), "--spool", t.TempDir(), "/bin/echo", "next program ran")
		cmd.Env = baseEnv("TCPREMOTEIP=127.0.0.40", "USER=alice")
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := run("--data=100000000")
	if err != nil || !strings.Contains(out, "next program ran") {
		t.Errorf("under a 100 MB data limit: %v\n%s", err, out)
	}
	if !strings.Contains(out, "ip=127.0.0.40") {
		t.Errorf("under a 100 MB data limit the grant was not recorded:\n%s", out)
	}
	if out, err := run("--as=20000000"); err == nil {
		t.Logf("the wrapper now starts under a 20 MB address-space limit; softlimit -m may be fine:\n%s", out)
	}
}
