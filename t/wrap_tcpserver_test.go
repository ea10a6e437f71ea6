package t

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/poprelay/poprelay/internal/grant"
)

// The qmail chain under test, with a real tcpserver:
//
//	tcpserver -R -H 127.0.0.1 PORT popup checkpw [checkpassword-wrap FLAGS] /usr/bin/env
//
// popup stands for qmail-popup: it reads "user password" from the client
// and hands "user\0password\0" to checkpassword on fd 3, the client's socket
// staying on fds 0 and 1. checkpw stands for checkpassword: it accepts
// alice/secret only (exit 1 otherwise), sets USER and HOME and execs the
// rest. The chain's stderr goes through a pipe (a file size limit on the
// chain must not cut it) to $ERRLOG, written before the client sees EOF.
const wrPopup = `#!/bin/bash
exec 2> >(exec cat >>"$ERRLOG")
logger=$!
IFS=' ' read -r user pass || exit 1
exec 4<&0
printf '%s\0%s\0' "$user" "$pass" | "$@" 3<&0 0<&4 4<&-
st=$?
[ $st = 0 ] || echo "popup: checkpassword exited $st" >&2
exec 2>&- 4<&-
wait $logger
`

// HOSTILE_IP, if set, replaces TCPREMOTEIP (a broken or hostile chain);
// AS_USER, if set, is "uid:gid" to switch to, as a real checkpassword does.
const wrCheckpw = `#!/bin/bash
IFS= read -r -d '' user <&3 || exit 2
IFS= read -r -d '' pass <&3 || exit 2
exec 3<&-
[ "$user" = alice ] && [ "$pass" = secret ] || exit 1
if [ -n "${HOSTILE_IP+set}" ]; then export TCPREMOTEIP="$HOSTILE_IP"; fi
export USER="$user" HOME=/nonexistent SHELL=/bin/sh
if [ -n "$AS_USER" ]; then
	exec setpriv --reuid="${AS_USER%:*}" --regid="${AS_USER#*:}" --clear-groups -- "$@"
fi
exec "$@"
`

// wrDir is a test's directory, traversable by other users (t.TempDir is
// not), with the chain's scripts in it.
type wrDir struct {
	Dir, Spool, ErrLog, Popup, Checkpw string
}

func wrSetup(t *testing.T) *wrDir {
	t.Helper()
	need(t, "tcpserver")
	dir, err := os.MkdirTemp("", "poprelay-wrap-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	d := &wrDir{
		Dir:     dir,
		Spool:   filepath.Join(dir, "spool"),
		ErrLog:  filepath.Join(dir, "stderr"),
		Popup:   filepath.Join(dir, "popup"),
		Checkpw: filepath.Join(dir, "checkpw"),
	}
	for p, text := range map[string]string{d.Popup: wrPopup, d.Checkpw: wrCheckpw} {
		if err := os.WriteFile(p, []byte(text), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(d.Spool, 0o770); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(d.ErrLog, nil, 0o666)
	os.Chmod(d.ErrLog, 0o666)
	return d
}

// serve starts tcpserver running the chain; wrap is the wrapper's command
// line (empty: no wrapper), env extra variables for the chain.
func (d *wrDir) serve(t *testing.T, env []string, wrap ...string) *Tcpserver {
	t.Helper()
	prog := append([]string{d.Popup, d.Checkpw}, wrap...)
	prog = append(prog, "/usr/bin/env")
	return startTcpserver(t, baseEnv(append([]string{"ERRLOG=" + d.ErrLog}, env...)...), []string{"-R", "-H"}, prog...)
}

// stderr returns and clears what the chains wrote on stderr.
func (d *wrDir) stderr(t *testing.T) string {
	t.Helper()
	b, _ := os.ReadFile(d.ErrLog)
	os.Truncate(d.ErrLog, 0)
	return string(b)
}

// login logs in as alice with pass from src and returns the next program's
// environment (empty when it did not run).
func wrLogin(t *testing.T, ts *Tcpserver, src, pass string) map[string]string {
	t.Helper()
	return envFrom(dialFrom(t, src, ts.Port, "alice "+pass+"\n"))
}

// spoolNames lists the spool.
func (d *wrDir) spoolNames(t *testing.T) []string {
	t.Helper()
	ents, err := os.ReadDir(d.Spool)
	if err != nil {
		return nil
	}
	var n []string
	for _, e := range ents {
		n = append(n, e.Name())
	}
	return n
}

// tree lists every path under the test's directory but the spool's content.
func (d *wrDir) tree(t *testing.T) []string {
	t.Helper()
	var paths []string
	filepath.Walk(d.Dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && filepath.Dir(p) != d.Spool {
			paths = append(paths, p)
		}
		return nil
	})
	return paths
}

func TestWrapTcpserver(t *testing.T) {
	d := wrSetup(t)
	ts := d.serve(t, nil, bin("checkpassword-wrap"), "--spool", d.Spool)
	plain := d.serve(t, nil)

	for _, src := range []string{"127.0.0.2", "127.0.0.3", "127.0.0.77"} {
		before := time.Now().Add(-time.Second)
		env := wrLogin(t, ts, src, "secret")
		if env["USER"] != "alice" || env["TCPREMOTEIP"] != src {
			t.Fatalf("login from %s: the next program did not run as expected: %v", src, env)
		}
		g, ok, err := grant.New(d.Spool).Get(src)
		if err != nil || !ok || g.User != "alice" || g.Service != "pop3" || g.Time.Before(before.Truncate(time.Second)) {
			t.Errorf("login from %s: grant %+v, %v, %v", src, g, ok, err)
		}
		if got, want := d.stderr(t), "checkpassword-wrap: ip="+src+" user=alice service=pop3\n"; got != want {
			t.Errorf("login from %s: stderr %q; want %q", src, got, want)
		}
		// The same login with and without the wrapper: the same bytes on
		// the client's side, ports aside (the next program sees the same
		// environment, in the same order, and the wrapper never writes
		// there).
		with := wrNoPorts(dialFrom(t, src, ts.Port, "alice secret\n"))
		without := wrNoPorts(dialFrom(t, src, plain.Port, "alice secret\n"))
		if with != without || !strings.Contains(with, "USER=alice\n") {
			t.Errorf("login from %s: through the wrapper the client got\n%s\nwithout\n%s", src, with, without)
		}
		d.stderr(t)
	}
	if n := d.spoolNames(t); !slices.Equal(n, []string{"127.0.0.2", "127.0.0.3", "127.0.0.77"}) {
		t.Errorf("spool holds %q", n)
	}
	d.stderr(t)

	// A wrong password: checkpw exits 1, nothing runs, nothing is recorded.
	if env := wrLogin(t, ts, "127.0.0.4", "wrong"); len(env) != 0 {
		t.Errorf("wrong password: the next program ran: %v", env)
	}
	if _, ok, _ := grant.New(d.Spool).Get("127.0.0.4"); ok {
		t.Error("wrong password: recorded")
	}
	if got := d.stderr(t); got != "popup: checkpassword exited 1\n" {
		t.Errorf("wrong password: stderr %q", got)
	}

	// 127.0.0.1 is where a local proxy connects from: never granted.
	if env := wrLogin(t, ts, "127.0.0.1", "secret"); env["USER"] != "alice" {
		t.Errorf("from 127.0.0.1: %v", env)
	}
	if got := d.stderr(t); got != "checkpassword-wrap: not recording ip=127.0.0.1 user=alice service=pop3: never granted: loopback 127.0.0.1\n" {
		t.Errorf("from 127.0.0.1: stderr %q", got)
	}
	if n := d.spoolNames(t); len(n) != 3 {
		t.Errorf("spool holds %q", n)
	}
}

// TestWrapTcpserverNever: entries of a never-grant file, a single address
// and a prefix, are refused through the whole chain.
func TestWrapTcpserverNever(t *testing.T) {
	d := wrSetup(t)
	nf := filepath.Join(d.Dir, "never")
	os.WriteFile(nf, []byte("# the POP proxy\n127.0.0.5\n127.0.1.\n"), 0o644)
	ts := d.serve(t, []string{"POPRELAY_NEVER=" + nf}, bin("checkpassword-wrap"), "--spool", d.Spool)
	for src, why := range map[string]string{
		"127.0.0.5":  "never-grant entry 127.0.0.5 (" + nf + ":2)",
		"127.0.1.9":  "never-grant entry 127.0.1. (" + nf + ":3)",
		"127.0.0.1":  "loopback 127.0.0.1",
		"127.0.0.6":  "",
		"127.0.10.1": "",
	} {
		if env := wrLogin(t, ts, src, "secret"); env["USER"] != "alice" {
			t.Errorf("from %s: the next program did not run: %v", src, env)
		}
		_, ok, _ := grant.New(d.Spool).Get(src)
		got := d.stderr(t)
		if why == "" {
			if !ok || got != "checkpassword-wrap: ip="+src+" user=alice service=pop3\n" {
				t.Errorf("from %s: recorded %v, stderr %q", src, ok, got)
			}
			continue
		}
		if ok || got != "checkpassword-wrap: not recording ip="+src+" user=alice service=pop3: never granted: "+why+"\n" {
			t.Errorf("from %s: recorded %v, stderr %q", src, ok, got)
		}
	}
}

// TestWrapTcpserverHostile: hostile or broken TCPREMOTEIP values reach the
// wrapper; nothing is created outside the spool, the next program runs,
// and stderr says why nothing was recorded.
func TestWrapTcpserverHostile(t *testing.T) {
	d := wrSetup(t)
	before := d.tree(t)
	for _, tc := range []struct{ ip, record, stderr string }{
		{"../../etc/passwd", "", `client address ../../etc/passwd is not an IP address`},
		{"1.2.3.4/../x", "", `client address 1.2.3.4/../x is not an IP address`},
		{"1.2.3.4\nRELAYCLIENT", "", `client address "1.2.3.4\nRELAYCLIENT" is not an IP address`},
		{"001.002.003.004", "", `client address 001.002.003.004 is not an IP address`},
		{"", "", `client address "" is not an IP address`},
		{strings.Repeat("9", 10240), "", `client address 999999999999999`},
		{"127.0.0.9%lo", "", `client address 127.0.0.9%lo is not an IP address`},
		{"::ffff:127.0.0.9", "127.0.0.9", "checkpassword-wrap: ip=127.0.0.9 user=alice service=pop3\n"},
		// A valid address that is not the client's: stdin is the client's
		// TCP socket, and its peer is the truth.
		{"198.51.100.7", "", "standard input is a TCP connection from 127.0.0.9, not from 198.51.100.7"},
	} {
		ts := d.serve(t, []string{"HOSTILE_IP=" + tc.ip}, bin("checkpassword-wrap"), "--spool", d.Spool)
		env := wrLogin(t, ts, "127.0.0.9", "secret")
		if env["USER"] != "alice" {
			t.Errorf("%.30q: the next program did not run: %v", tc.ip, env)
		}
		got := d.stderr(t)
		if !strings.Contains(got, tc.stderr) || strings.Count(got, "\n") != 1 || len(got) > 300 {
			t.Errorf("%.30q: stderr %q; want one line with %q", tc.ip, got, tc.stderr)
		}
		if n := d.spoolNames(t); tc.record == "" && len(n) != 0 || tc.record != "" && !slices.Equal(n, []string{tc.record}) {
			t.Errorf("%.30q: spool holds %q", tc.ip, n)
		}
		os.Remove(filepath.Join(d.Spool, "127.0.0.9"))
		ts.Cmd.Process.Kill()
	}
	if after := d.tree(t); !slices.Equal(before, after) {
		t.Errorf("files outside the spool: before %q, after %q", before, after)
	}
}

// wrReadOnly makes dir a directory nobody can write, even root, and
// tells whether it could.
func wrReadOnly(t *testing.T, dir string) bool {
	t.Helper()
	if os.Geteuid() != 0 {
		os.Chmod(dir, 0o555)
		return true
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "ro,size=64k", "poprelay-test", dir).CombinedOutput(); err != nil {
		t.Logf("SKIP read-only case: as root it needs a read-only mount: %v %s", err, out)
		return false
	}
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
	return true
}

// wrFull returns a directory on a full file system (root only).
func wrFull(t *testing.T, dir string) bool {
	t.Helper()
	if os.Geteuid() != 0 {
		return false
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=16k", "poprelay-test", dir).CombinedOutput(); err != nil {
		t.Logf("no tmpfs for the full-disk case: %v %s", err, out)
		return false
	}
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
	f, _ := os.Create(filepath.Join(dir, "filler"))
	buf := make([]byte, 4096)
	for {
		if _, err := f.Write(buf); err != nil {
			break
		}
	}
	f.Close()
	return true
}

// TestWrapTcpserverSpoolTrouble: a missing, read-only or full spool, a
// file size limit and a planted symlink: the login goes on, stderr says
// why, nothing is written outside the spool.
func TestWrapTcpserverSpoolTrouble(t *testing.T) {
	prlimit := need(t, "prlimit")
	d := wrSetup(t)
	wrap := bin("checkpassword-wrap")
	type spoolCase struct {
		name, spool string
		wrap        []string
		stderr      string
	}
	cases := []spoolCase{
		{"missing", filepath.Join(d.Dir, "missing"), nil, "no such file or directory"},
		{"file size limit", d.Spool, []string{prlimit, "--fsize=1", "--"}, "file too large"},
	}
	os.Mkdir(filepath.Join(d.Dir, "ro"), 0o755)
	if wrReadOnly(t, filepath.Join(d.Dir, "ro")) {
		why := "read-only file system"
		if os.Geteuid() != 0 {
			why = "permission denied"
		}
		cases = append(cases, spoolCase{"read-only", filepath.Join(d.Dir, "ro"), nil, why})
	}
	full := filepath.Join(d.Dir, "full")
	os.Mkdir(full, 0o755)
	if wrFull(t, full) {
		cases = append(cases, spoolCase{"disk full", full, nil, "no space left on device"})
	} else {
		t.Log("SKIP: the disk-full case needs root (a tiny tmpfs); the file size limit case stands for it")
	}
	before := d.tree(t)
	for _, tc := range cases {
		ts := d.serve(t, nil, append(tc.wrap, wrap, "--spool", tc.spool)...)
		if env := wrLogin(t, ts, "127.0.0.10", "secret"); env["USER"] != "alice" {
			t.Errorf("%s: the next program did not run: %v", tc.name, env)
		}
		got := d.stderr(t)
		if !strings.HasPrefix(got, "checkpassword-wrap: warning: unable to record ip=127.0.0.10 user=alice service=pop3: ") ||
			!strings.Contains(got, tc.stderr) || strings.Count(got, "\n") != 1 {
			t.Errorf("%s: stderr %q", tc.name, got)
		}
		if ents, _ := os.ReadDir(tc.spool); tc.name != "disk full" && len(ents) != 0 || tc.name == "disk full" && len(ents) != 1 {
			t.Errorf("%s: spool holds %v", tc.name, ents)
		}
		ts.Cmd.Process.Kill()
	}
	if after := d.tree(t); !slices.Equal(before, after) {
		t.Errorf("files outside the spool: before %q, after %q", before, after)
	}

	// A symlink planted in the spool under the client's name is replaced by
	// the grant, and what it pointed to is untouched.
	target := filepath.Join(d.Dir, "target")
	os.WriteFile(target, []byte("precious\n"), 0o644)
	os.Symlink(target, filepath.Join(d.Spool, "127.0.0.11"))
	os.Symlink(d.Dir, filepath.Join(d.Spool, "127.0.0.12"))
	ts := d.serve(t, nil, wrap, "--spool", d.Spool)
	for _, src := range []string{"127.0.0.11", "127.0.0.12"} {
		if env := wrLogin(t, ts, src, "secret"); env["USER"] != "alice" {
			t.Errorf("symlink %s: the next program did not run: %v", src, env)
		}
		fi, err := os.Lstat(filepath.Join(d.Spool, src))
		if err != nil || !fi.Mode().IsRegular() {
			t.Errorf("symlink %s: %v, %v", src, fi, err)
		}
	}
	if b, _ := os.ReadFile(target); string(b) != "precious\n" {
		t.Errorf("written through a symlink: %q", b)
	}
	if _, err := os.Stat(filepath.Join(d.Dir, "127.0.0.12")); err == nil {
		t.Error("a grant was created outside the spool through a directory symlink")
	}
}

// TestWrapPrivilege: the production privilege model. The wrapper is setgid
// to a group that owns the spool (root:GROUP 2770); a mail user outside
// the group logs in through the chain and the grant is recorded; the same
// user cannot write the spool by itself, cannot forge a grant by running
// the wrapper with TCPREMOTEIP set, and the next program runs without the
// group privilege. Root only: it creates a group and a user.
func TestWrapPrivilege(t *testing.T) {
	// It adds a user and a group: in an isolated root, never here.
	if !isolatedBody(t, nil) {
		return
	}
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI runs as root; this test needs it")
		}
		t.Skip("SKIP: the privilege test needs root (it creates a group and a user)")
	}
	useradd, userdel := need(t, "useradd"), need(t, "userdel")
	groupadd, groupdel := need(t, "groupadd"), need(t, "groupdel")
	need(t, "setpriv")
	d := wrSetup(t)
	suffix := strconv.Itoa(os.Getpid() % 100000)
	group, user := "prwg"+suffix, "prwu"+suffix
	if out, err := exec.Command(groupadd, "--system", group).CombinedOutput(); err != nil {
		t.Fatalf("groupadd: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command(groupdel, group).Run() })
	if out, err := exec.Command(useradd, "--system", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", user).CombinedOutput(); err != nil {
		t.Fatalf("useradd: %v %s", err, out)
	}
	t.Cleanup(func() {
		exec.Command(userdel, user).Run()
		exec.Command(groupdel, user).Run()
	})
	gid := wrID(t, "-g", group, "")
	uid, ugid := wrID(t, "-u", "", user), wrID(t, "-g", "", user)

	// Install: wrapper root:GROUP 2755, spool root:GROUP 2770.
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

	asUser := func(env []string, stdin *os.File, name string, args ...string) (string, string, error) {
		c := exec.Command(name, args...)
		c.Env = baseEnv(env...)
		c.Stdin = stdin
		c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(ugid), Groups: []uint32{}}}
		var out, errb strings.Builder
		c.Stdout, c.Stderr = &out, &errb
		err := c.Run()
		return out.String(), errb.String(), err
	}

	// The user cannot write the spool by itself.
	if _, _, err := asUser(nil, nil, "/bin/sh", "-c", "echo user=x > "+d.Spool+"/203.0.113.1"); err == nil {
		t.Error("a non-member wrote into the spool")
	}
	// Nor forge a grant through the wrapper: stdin is not a TCP socket.
	devnull, _ := os.Open(os.DevNull)
	defer devnull.Close()
	out, errs, err := asUser([]string{"TCPREMOTEIP=203.0.113.1", "USER=" + user}, devnull, wrap, "--spool", d.Spool, "/bin/cat", "/proc/self/status")
	if err != nil {
		t.Fatalf("wrapper as %s: %v %s", user, err, errs)
	}
	want := fmt.Sprintf("checkpassword-wrap: warning: not recording ip=203.0.113.1 user=%s service=pop3: standard input is not a TCP socket and uid %d is neither root nor in group %d\n", user, uid, gid)
	if errs != want {
		t.Errorf("forged grant: stderr %q; want %q", errs, want)
	}
	if n := d.spoolNames(t); len(n) != 0 {
		t.Errorf("forged grant: spool holds %q", n)
	}
	// The next program runs without the group: real, effective, saved and
	// file-system gids are the user's own.
	if g := wrStatusGid(out); g != fmt.Sprintf("%d\t%d\t%d\t%d", ugid, ugid, ugid, ugid) {
		t.Errorf("the next program's Gid line: %q (the setgid group %d must be gone)", g, gid)
	}

	// --never cannot make the wrapper read (and quote in an error) a file
	// only the group may read: it is opened with the caller's own rights.
	os.WriteFile(filepath.Join(d.Spool, "203.0.113.9"), []byte("user=secretuser\nservice=pop3\ntime=1\n"), 0o640)
	os.Chown(filepath.Join(d.Spool, "203.0.113.9"), 0, gid)
	// A privileged port: only a connection a service accepted there
	// counts for an untrusted caller.
	ts0 := startTcpserverPriv(t, baseEnv("ERRLOG="+d.ErrLog, fmt.Sprintf("AS_USER=%d:%d", uid, ugid)), "127.0.0.1", []string{"-R", "-H"},
		d.Popup, d.Checkpw, wrap, "--spool", d.Spool, "--never", filepath.Join(d.Spool, "203.0.113.9"), "/bin/true")
	dialFrom(t, "127.0.0.21", ts0.Port, "alice secret\n")
	if got := d.stderr(t); strings.Contains(got, "secretuser") || !strings.Contains(got, "unable to read never-grant file") || !strings.Contains(got, "permission denied") {
		t.Errorf("--never naming a group-only file: stderr %q", got)
	}
	os.Remove(filepath.Join(d.Spool, "203.0.113.9"))
	if n := d.spoolNames(t); len(n) != 0 {
		t.Errorf("--never naming a group-only file: spool holds %q", n)
	}

	// A real login through tcpserver, with checkpw switching to the user
	// as a real checkpassword does: recorded, file owned by the user and
	// the spool's group, privilege dropped for the next program.
	ts := startTcpserverPriv(t, baseEnv("ERRLOG="+d.ErrLog, fmt.Sprintf("AS_USER=%d:%d", uid, ugid)), "127.0.0.1", []string{"-R", "-H"},
		d.Popup, d.Checkpw, wrap, "--spool", d.Spool, "/bin/cat", "/proc/self/status")
	status := dialFrom(t, "127.0.0.20", ts.Port, "alice secret\n")
	if g := wrStatusGid(status); g != fmt.Sprintf("%d\t%d\t%d\t%d", ugid, ugid, ugid, ugid) {
		t.Errorf("through tcpserver: the next program's Gid line %q", g)
	}
	if got := d.stderr(t); got != "checkpassword-wrap: ip=127.0.0.20 user=alice service=pop3\n" {
		t.Errorf("through tcpserver: stderr %q", got)
	}
	fi, err := os.Stat(filepath.Join(d.Spool, "127.0.0.20"))
	if err != nil {
		t.Fatalf("through tcpserver: not recorded: %v", err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if int(st.Uid) != uid || int(st.Gid) != gid || fi.Mode().Perm() != 0o640 {
		t.Errorf("grant file owner %d:%d mode %v; want %d:%d 0640", st.Uid, st.Gid, fi.Mode(), uid, gid)
	}
	// Another user's login from the same address refreshes it (2770, no
	// sticky bit: a rename over another user's file is allowed).
	ts2 := startTcpserverPriv(t, baseEnv("ERRLOG="+d.ErrLog, "AS_USER=65534:65534"), "127.0.0.1", []string{"-R", "-H"},
		d.Popup, d.Checkpw, wrap, "--spool", d.Spool, "/bin/true")
	dialFrom(t, "127.0.0.20", ts2.Port, "alice secret\n")
	if got := d.stderr(t); got != "checkpassword-wrap: ip=127.0.0.20 user=alice service=pop3\n" {
		t.Errorf("refresh by another uid: stderr %q", got)
	}
	if fi, _ := os.Stat(filepath.Join(d.Spool, "127.0.0.20")); fi.Sys().(*syscall.Stat_t).Uid != 65534 {
		t.Error("refresh by another uid: file not replaced")
	}
}

// wrNoPorts drops the lines that differ between two tcpservers.
func wrNoPorts(out string) string {
	var keep []string
	for _, line := range strings.SplitAfter(out, "\n") {
		if !strings.HasPrefix(line, "TCPLOCALPORT=") && !strings.HasPrefix(line, "TCPREMOTEPORT=") {
			keep = append(keep, line)
		}
	}
	return strings.Join(keep, "")
}

// wrID runs id(1) for a group or user number.
func wrID(t *testing.T, flag, group, user string) int {
	t.Helper()
	var out []byte
	var err error
	if group != "" {
		out, err = exec.Command("getent", "group", group).Output()
		if err == nil {
			f := strings.Split(strings.TrimSpace(string(out)), ":")
			n, _ := strconv.Atoi(f[2])
			return n
		}
	} else {
		out, err = exec.Command("id", flag, user).Output()
		if err == nil {
			n, _ := strconv.Atoi(strings.TrimSpace(string(out)))
			return n
		}
	}
	t.Fatalf("id %s %s%s: %v", flag, group, user, err)
	return 0
}

// wrStatusGid returns the values of the Gid: line of /proc/PID/status.
func wrStatusGid(status string) string {
	for _, line := range strings.Split(status, "\n") {
		if v, ok := strings.CutPrefix(line, "Gid:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
