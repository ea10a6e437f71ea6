package t

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/poprelay/poprelay/internal/wait"
)

// asNobody runs a command as uid/gid 65534 (nobody/nogroup, present on
// every Debian machine: the test creates no user).
func asNobody(t *testing.T, limit time.Duration, name string, args ...string) result {
	t.Helper()
	c := exec.Command(name, args...)
	c.Env = baseEnv()
	c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}, Setpgid: true}
	var out, errb strings.Builder
	c.Stdout, c.Stderr = &out, &errb
	if err := c.Start(); err != nil {
		t.Fatalf("%s as nobody: %v", name, err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Wait() }()
	var err error
	r := result{}
	select {
	case err = <-done:
	case <-time.After(limit):
		syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
		err = <-done
		r.timedOut = true
	}
	r.stdout, r.stderr = out.String(), errb.String()
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%s as nobody: %v", name, err)
	}
	return r
}

// TestSecurityLockFile: a local user cannot freeze the CDB's writers.
// The lock file relayctl creates is one nobody cannot open, so nobody
// cannot flock it; an old world-readable lock file (and one owned by
// another user) is repaired; a symlink, FIFO or directory at the lock path
// is refused, never followed or waited on; and a lock held by someone
// makes relayctl exit 111 after --lock-timeout instead of waiting
// forever, while the watcher logs it and retries.
func TestSecurityLockFile(t *testing.T) {
	needRoot(t, "the lock file test runs flock as nobody")
	flock := need(t, "flock")
	s := newRelayctlSite(t, "10.:deny\n:allow\n")
	// nobody may reach the directory: only the lock file's mode stops it.
	os.Chmod(s.dir, 0o755)
	os.Chmod(filepath.Dir(s.dir), 0o755)
	os.WriteFile(filepath.Join(s.spool, "127.0.0.51"), []byte("user=u\nservice=pop3\ntime="+strconv.FormatInt(time.Now().Unix(), 10)+"\n"), 0o640)
	lockPath := s.cdb + ".lock"
	if r := s.run(t, "rebuild"); r.code != 0 {
		t.Fatalf("rebuild: %d %s", r.code, r.stderr)
	}
	fi, err := os.Lstat(lockPath)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode() != 0o600 || fi.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Errorf("lock file: mode %v uid %d, want 0600 root", fi.Mode(), fi.Sys().(*syscall.Stat_t).Uid)
	}
	// What issue 16 did: flock -s as a local user, holding it for a day.
	if r := asNobody(t, wait.Patience, flock, "-n", "-s", lockPath, "true"); r.code == 0 || r.timedOut {
		t.Errorf("nobody could flock %s (exit %d)", lockPath, r.code)
	} else if !strings.Contains(r.stderr, "Permission denied") {
		t.Errorf("nobody's flock: exit %d, %q", r.code, r.stderr)
	}

	// An old 0644 lock file, and one owned by nobody: repaired.
	for _, owner := range []int{0, 65534} {
		os.Chmod(lockPath, 0o644)
		os.Chown(lockPath, owner, owner)
		r := s.run(t, "rebuild")
		if r.code != 0 || !strings.Contains(r.stderr, "relayctl: warning: "+lockPath+" had mode 0644") || !strings.Contains(r.stderr, ": repaired") {
			t.Errorf("owner %d, mode 0644: rebuild exit %d, %q", owner, r.code, r.stderr)
		}
		fi, _ := os.Lstat(lockPath)
		if fi.Mode() != 0o600 || fi.Sys().(*syscall.Stat_t).Uid != 0 {
			t.Errorf("after repair: mode %v uid %d", fi.Mode(), fi.Sys().(*syscall.Stat_t).Uid)
		}
	}

	// Not a regular file at the lock path: refused at once.
	target := filepath.Join(s.dir, "elsewhere")
	for _, c := range []struct {
		what string
		fn   func() error
	}{
		{"not a regular file (a symbolic link)", func() error { return os.Symlink(target, lockPath) }},
		{"not a regular file (a FIFO)", func() error { return syscall.Mkfifo(lockPath, 0o600) }},
		{"not a regular file (a directory)", func() error { return os.Mkdir(lockPath, 0o700) }},
	} {
		os.Remove(lockPath)
		if err := c.fn(); err != nil {
			t.Fatal(err)
		}
		r := s.run(t, "rebuild")
		if r.code != 111 || !strings.Contains(r.stderr, "relayctl: fatal: unable to lock "+lockPath+": ") || !strings.Contains(r.stderr, c.what) {
			t.Errorf("lock path %s: exit %d, %q", c.what, r.code, r.stderr)
		}
	}
	os.Remove(lockPath)
	if _, err := os.Lstat(target); err == nil {
		t.Error("the symlink was followed")
	}

	// A held lock: relayctl gives up after --lock-timeout, exit 111.
	if r := s.run(t, "rebuild"); r.code != 0 {
		t.Fatalf("rebuild: %d %s", r.code, r.stderr)
	}
	holder, err := os.Open(lockPath)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	if err := syscall.Flock(int(holder.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"rebuild", "--lock-timeout", "1s"}, {"allow", "127.0.0.52", "--lock-timeout", "1"}} {
		r := s.run(t, args...)
		if want := "relayctl: fatal: unable to lock " + lockPath + ": held by another process for 1s\n"; r.code != 111 || r.stderr != want {
			t.Errorf("%q under a held lock: exit %d (timed out %v), %q; want 111, %q", args, r.code, r.timedOut, r.stderr, want)
		}
	}
	// The watcher logs it and retries; it publishes once the lock is free.
	w := &watcher{done: make(chan struct{})}
	cmd, stderr := start(t, append(s.env, "POPRELAY_LOCK_TIMEOUT=1s"), true, bin("relayctl"), "watch", "--debounce", "2ms")
	w.cmd = cmd
	go func() {
		defer close(w.done)
		for {
			line, err := stderr.ReadString('\n')
			if line != "" {
				t.Log("watch: " + strings.TrimRight(line, "\n"))
				w.mu.Lock()
				w.lines = append(w.lines, line)
				w.mu.Unlock()
			}
			if err != nil {
				return
			}
		}
	}()
	w.waitLine(t, "unable to lock "+lockPath+": held by another process for 1s")
	holder.Close()
	w.waitLine(t, "rebuilt: retry")
	if !relays(t, s.cdb, "127.0.0.51") {
		t.Error("the watcher did not publish once the lock was free")
	}
}
