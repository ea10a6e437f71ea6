package t

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestCronPublishesLogin: the route without a daemon, as installed. A
// real tcpserver runs the POP chain as an unprivileged mail user (uid and
// gid 65534, outside the spool's group), with a wrapper installed setgid
// to the spool's group and given --rebuild, as run scripts written for
// older versions do. The login goes on and is recorded; the wrapper says
// in one line that --rebuild does nothing now, and starts nothing (a
// relayctl beside it would leave a mark). No watcher runs: "relayctl
// expire", cron's job, publishes the login, and the real tcpserver -x of
// qmail-smtpd then gives that client RELAYCLIENT, and no other.
//
// It runs in an isolated root: the POP port tcpserver listens on here is
// not privileged, so it goes in /etc/poprelay/ports, as an admin would
// list a POP service on a high port.
func TestCronPublishesLogin(t *testing.T) {
	if !isolatedBody(t, nil) {
		return
	}
	need(t, "setpriv")
	d := wrSetup(t)
	const gid = 2147480000 // a group no one is in: the spool's
	wrap := filepath.Join(d.Dir, "checkpassword-wrap")
	b, err := os.ReadFile(bin("checkpassword-wrap"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(wrap, b, 0o755)
	os.Chown(wrap, 0, gid)
	os.Chmod(wrap, 0o755|os.ModeSetgid)
	os.Chown(d.Spool, 0, gid)
	os.Chmod(d.Spool, 0o770|os.ModeSetgid)
	mark := filepath.Join(d.Dir, "relayctl-ran")
	os.WriteFile(filepath.Join(d.Dir, "relayctl"), []byte("#!/bin/sh\ntouch "+mark+"\n"), 0o755)

	rules := filepath.Join(d.Dir, "tcp.smtp")
	cdbPath := filepath.Join(d.Dir, "tcp.smtp.cdb")
	os.WriteFile(rules, []byte("127.0.0.1:allow,RELAYCLIENT=\"\"\n:allow\n"), 0o644)
	env := baseEnv("POPRELAY_SPOOL="+d.Spool, "POPRELAY_RULES="+rules, "POPRELAY_CDB="+cdbPath, "POPRELAY_NEVER=")
	relayctl := func(args ...string) {
		t.Helper()
		c := exec.Command(bin("relayctl"), args...)
		c.Env = env
		if out, err := c.CombinedOutput(); err != nil || len(out) > 0 {
			t.Fatalf("relayctl %q: %v %s", args, err, out)
		}
	}
	relayctl("rebuild")
	smtp := startTcpserver(t, baseEnv(), []string{"-x", cdbPath}, "/usr/bin/env")
	relays := func(src string) bool {
		t.Helper()
		_, ok := envFrom(dialFrom(t, src, smtp.Port, ""))["RELAYCLIENT"]
		return ok
	}

	pop := d.serve(t, []string{"AS_USER=65534:65534"}, wrap, "--rebuild", "--spool", d.Spool)
	os.MkdirAll("/etc/poprelay", 0o755)
	if err := os.WriteFile("/etc/poprelay/ports", fmt.Appendf(nil, "%d\n", pop.Port), 0o644); err != nil {
		t.Fatal(err)
	}
	out := dialFrom(t, "127.0.0.31", pop.Port, "alice secret\n")
	if v := envFrom(out); v["USER"] != "alice" || v["TCPREMOTEIP"] != "127.0.0.31" {
		t.Fatalf("the login did not go on to the next program: %q\nstderr: %s", out, d.stderr(t))
	}
	stderr := d.stderr(t)
	for _, want := range []string{
		"checkpassword-wrap: warning: --rebuild does nothing now",
		"checkpassword-wrap: ip=127.0.0.31 user=alice service=pop3\n",
	} {
		if !strings.Contains(stderr, want) {
			t.Errorf("the chain's stderr lacks %q:\n%s", want, stderr)
		}
	}
	if strings.Count(stderr, "\n") != 2 {
		t.Errorf("want two lines on stderr:\n%s", stderr)
	}
	fi, err := os.Stat(filepath.Join(d.Spool, "127.0.0.31"))
	if err != nil {
		t.Fatalf("the login was not recorded: %v", err)
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != 65534 || st.Gid != gid {
		t.Errorf("the grant file is %d:%d, want 65534:%d", st.Uid, st.Gid, gid)
	}
	if relays("127.0.0.31") {
		t.Fatal("relaying before any rebuild (the test cannot tell what published it)")
	}

	relayctl("expire") // what cron runs every minute
	if !relays("127.0.0.31") {
		t.Errorf("after relayctl expire, tcpserver gives 127.0.0.31 no RELAYCLIENT")
	}
	if relays("127.0.0.32") {
		t.Errorf("127.0.0.32 relays")
	}
	if _, err := os.Stat(mark); err == nil {
		t.Errorf("the wrapper started relayctl")
	}
}
