package t

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestWrapRebuild: --rebuild runs "relayctl rebuild" (the one next to the
// wrapper) after recording, detached in its own session with /dev/null on
// stdin and stdout, without delaying the next program; nothing is rebuilt
// when nothing was recorded. A fake relayctl stands in and reports what it
// saw after a delay.
func TestWrapRebuild(t *testing.T) {
	dir := t.TempDir()
	spool := filepath.Join(dir, "spool")
	os.Mkdir(spool, 0o755)
	wrap := filepath.Join(dir, "checkpassword-wrap")
	b, err := os.ReadFile(bin("checkpassword-wrap"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(wrap, b, 0o755)
	report := filepath.Join(dir, "report")
	os.WriteFile(filepath.Join(dir, "relayctl"), []byte(`#!/bin/sh
stdio="stdin=$(readlink /proc/$$/fd/0) stdout=$(readlink /proc/$$/fd/1)"
sleep 1
{
	echo "args=$*"
	echo "sid=$(cut -d' ' -f6 /proc/$$/stat) pid=$$"
	echo "$stdio"
	ls "$POPRELAY_SPOOL"
} > "`+report+`.tmp"
mv "`+report+`.tmp" "`+report+`"
`), 0o755)

	run := func(env ...string) (time.Duration, string) {
		cmd := exec.Command(wrap, "--rebuild", "/bin/echo", "next ran")
		cmd.Env = baseEnv(append([]string{"POPRELAY_SPOOL=" + spool}, env...)...)
		// A file, not a pipe: the rebuild keeps stderr open after the
		// wrapper's exec, and Output would wait for a pipe to close.
		ef, err := os.CreateTemp(dir, "stderr")
		if err != nil {
			t.Fatal(err)
		}
		defer ef.Close()
		cmd.Stderr = ef
		start := time.Now()
		out, err := cmd.Output()
		d := time.Since(start)
		stderr, _ := os.ReadFile(ef.Name())
		if err != nil || string(out) != "next ran\n" {
			t.Fatalf("wrapper: %v, stdout %q, stderr %q", err, out, stderr)
		}
		return d, string(stderr)
	}

	// Nothing recorded: no rebuild.
	run("TCPREMOTEIP=127.0.0.1", "USER=alice")
	time.Sleep(1500 * time.Millisecond)
	if _, err := os.Stat(report); err == nil {
		t.Fatal("rebuilt although nothing was recorded")
	}

	d, stderr := run("TCPREMOTEIP=127.0.0.60", "USER=alice")
	if d > 700*time.Millisecond {
		t.Errorf("the next program waited %v for the rebuild", d)
	}
	if stderr != "checkpassword-wrap: ip=127.0.0.60 user=alice service=pop3\n" {
		t.Errorf("stderr %q", stderr)
	}
	var got string
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if b, err := os.ReadFile(report); err == nil {
			got = string(b)
			break
		}
	}
	if got == "" {
		t.Fatal("relayctl rebuild never ran")
	}
	lines := strings.Split(got, "\n")
	if lines[0] != "args=rebuild" {
		t.Errorf("relayctl ran with %q", lines[0])
	}
	var sid, pid string
	for _, f := range strings.Fields(lines[1]) {
		if v, ok := strings.CutPrefix(f, "sid="); ok {
			sid = v
		}
		if v, ok := strings.CutPrefix(f, "pid="); ok {
			pid = v
		}
	}
	if sid == "" || sid != pid {
		t.Errorf("relayctl is not a session leader: %q", lines[1])
	}
	if lines[2] != "stdin=/dev/null stdout=/dev/null" {
		t.Errorf("relayctl's stdio: %q", lines[2])
	}
	if !strings.Contains(got, "\n127.0.0.60\n") {
		t.Errorf("relayctl did not see the grant (the environment is passed on for a trusted caller): %q", got)
	}
}
