package t

import (
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/poprelay/poprelay/internal/cdb"
)

// needRoot skips a test visibly when not root, and fails it in CI.
func needRoot(t *testing.T, why string) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("CI runs as root; %s", why)
	}
	t.Skipf("SKIP: %s", why)
}

// TestSecurityInstallPrivileges installs with scripts/install (into a
// staging directory) and tests its privilege model with a throwaway user
// outside the spool's group: the user cannot write (or even list) the
// spool; the installed setgid wrapper, run by the user with a forged
// TCPREMOTEIP, records nothing when stdin is not a socket or a socket
// from another address; with a real socket it records only that address,
// in the spool only: a hostile --spool or a symlink planted in the spool
// makes it write nowhere else; the next program runs without the group.
func TestSecurityInstallPrivileges(t *testing.T) {
	needRoot(t, "the privilege test creates a user and a group")
	// It adds a user and a group: in an isolated root, never here.
	if !isolatedBody(t, nil) {
		return
	}
	useradd, userdel := need(t, "useradd"), need(t, "userdel")
	groupadd, groupdel := need(t, "groupadd"), need(t, "groupdel")
	dest, err := os.MkdirTemp("", "poprelay-install-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dest) })
	os.Chmod(dest, 0o755)
	runInstall(t, "--destdir", dest, "--prefix", "/usr/local", "--from", binDir)
	wrap := filepath.Join(dest, "usr/local/bin/checkpassword-wrap")
	spool := filepath.Join(dest, "var/spool/poprelay")

	// The group: poprelay if this machine has it (the script used it),
	// else an equivalent throwaway group given the script's modes.
	suffix := strconv.Itoa(os.Getpid() % 100000)
	gid := -1
	if out, err := exec.Command("getent", "group", "poprelay").Output(); err == nil {
		gid, _ = strconv.Atoi(strings.Split(string(out), ":")[2])
	} else {
		group := "prsg" + suffix
		if out, err := exec.Command(groupadd, "--system", group).CombinedOutput(); err != nil {
			t.Fatalf("groupadd: %v %s", err, out)
		}
		t.Cleanup(func() { exec.Command(groupdel, group).Run() })
		gid = wrID(t, "-g", group, "")
		for _, p := range []string{wrap, spool} {
			fi, _ := os.Stat(p)
			os.Chown(p, 0, gid)
			os.Chmod(p, fi.Mode()) // chown clears the setgid bit
		}
	}
	for p, want := range map[string]fs.FileMode{wrap: 0o755 | fs.ModeSetgid, spool: 0o770 | fs.ModeSetgid | fs.ModeDir} {
		fi, _ := os.Stat(p)
		if fi.Mode()&(fs.ModePerm|fs.ModeSetgid|fs.ModeSticky|fs.ModeDir) != want || int(fi.Sys().(*syscall.Stat_t).Gid) != gid {
			t.Fatalf("%s: mode %v gid %d; want %v gid %d", p, fi.Mode(), fi.Sys().(*syscall.Stat_t).Gid, want, gid)
		}
	}

	user := "prsu" + suffix
	if out, err := exec.Command(useradd, "-M", "-N", "-s", "/usr/sbin/nologin", user).CombinedOutput(); err != nil {
		t.Fatalf("useradd: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command(userdel, user).Run() })
	uid, ugid := wrID(t, "-u", "", user), wrID(t, "-g", "", user)
	if ugid == gid {
		t.Fatalf("the user's group is the spool's")
	}
	asUser := func(env []string, stdin *os.File, name string, args ...string) result {
		t.Helper()
		c := exec.Command(name, args...)
		c.Env = baseEnv(env...)
		c.Stdin = stdin
		c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(ugid), Groups: []uint32{}}}
		var out, errb strings.Builder
		c.Stdout, c.Stderr = &out, &errb
		err := c.Run()
		r := result{stdout: out.String(), stderr: errb.String()}
		if ee, ok := err.(*exec.ExitError); ok {
			r.code = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("%s as %s: %v", name, user, err)
		}
		return r
	}

	// A grant made by root, which the user must not read either.
	os.WriteFile(filepath.Join(spool, "192.0.2.9"), []byte("user=secret\nservice=pop3\ntime=1\n"), 0o640)
	os.Chown(filepath.Join(spool, "192.0.2.9"), 0, gid)
	before := tree(t, dest)
	outsideBefore := treeExcept(t, dest, spool)

	// Straight at the spool: write, link, list, read.
	for _, sh := range []string{
		"echo user=x > " + spool + "/203.0.113.1",
		"ln -s /etc/passwd " + spool + "/203.0.113.1",
		"ls " + spool,
		"cat " + spool + "/192.0.2.9",
		"mv " + spool + "/192.0.2.9 " + spool + "/203.0.113.1",
	} {
		if r := asUser(nil, nil, "/bin/sh", "-c", sh); r.code == 0 {
			t.Errorf("as a non-member, %q succeeded: %s", sh, r.stdout)
		}
	}
	if after := tree(t, dest); after != before {
		t.Fatalf("a non-member changed the installation:\n%s\n%s", before, after)
	}

	// The wrapper with a forged address and stdin not a socket.
	devnull, _ := os.Open(os.DevNull)
	defer devnull.Close()
	r := asUser([]string{"TCPREMOTEIP=203.0.113.1", "USER=" + user}, devnull, wrap, "--spool", spool, "/bin/cat", "/proc/self/status")
	if want := fmt.Sprintf("checkpassword-wrap: warning: not recording ip=203.0.113.1 user=%s service=pop3: standard input is not a TCP socket and uid %d is neither root nor in group %d\n", user, uid, gid); r.stderr != want {
		t.Errorf("forged address, stdin /dev/null: stderr %q; want %q", r.stderr, want)
	}
	if g := wrStatusGid(r.stdout); g != fmt.Sprintf("%d\t%d\t%d\t%d", ugid, ugid, ugid, ugid) {
		t.Errorf("the next program kept the group: Gid %q", g)
	}

	// A TCP socket as stdin: the peer is the truth.
	// A connection accepted on a privileged port (a service's, as the
	// wrapper demands of an untrusted caller).
	sock := func(src string) *os.File {
		t.Helper()
		ln := lowListener(t, "tcp4", "127.0.0.1")
		defer ln.Close()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 30 * time.Second}
		c, err := d.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		a, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		f, err := a.(*net.TCPConn).File()
		a.Close()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	r = asUser([]string{"TCPREMOTEIP=203.0.113.1", "USER=" + user}, sock("127.0.11.50"), wrap, "--spool", spool, "/bin/true")
	if !strings.Contains(r.stderr, "not recording ip=203.0.113.1") || !strings.Contains(r.stderr, "standard input is a TCP connection from 127.0.11.50, not from 203.0.113.1") {
		t.Errorf("forged address over a socket from elsewhere: stderr %q", r.stderr)
	}
	// --never is opened with the caller's own rights, not the group's:
	// the root grant above, which only the group may read, is neither
	// read nor quoted through the setgid bit, and nothing is recorded.
	r = asUser([]string{"TCPREMOTEIP=127.0.11.53", "USER=" + user}, sock("127.0.11.53"), wrap, "--spool", spool, "--never", filepath.Join(spool, "192.0.2.9"), "/bin/true")
	if !strings.Contains(r.stderr, "not recording ip=127.0.11.53") || !strings.Contains(r.stderr, "permission denied") || strings.Contains(r.stderr, "secret") {
		t.Errorf("--never naming a file only the group may read: stderr %q", r.stderr)
	}
	if after := tree(t, dest); after != before {
		t.Fatalf("a forged login changed the installation:\n%s\n%s", before, after)
	}

	// Hostile spools: nothing is written outside the real spool.
	etc := filepath.Join(dest, "etc")
	groupRead := filepath.Join(dest, "group-read")
	os.Mkdir(groupRead, 0o750)
	os.Chown(groupRead, 0, gid)
	outsideBefore = treeExcept(t, dest, spool)
	link := filepath.Join(dest, "spool-link")
	os.Symlink(etc, link)
	for _, hostile := range []string{etc, link, groupRead, spool + "/../..", filepath.Join(dest, "usr/local/bin")} {
		r := asUser([]string{"TCPREMOTEIP=127.0.11.51", "USER=" + user}, sock("127.0.11.51"), wrap, "--spool", hostile, "/bin/true")
		if !strings.Contains(r.stderr, "unable to record ip=127.0.11.51") || !strings.Contains(r.stderr, "permission denied") {
			t.Errorf("--spool %s: stderr %q", hostile, r.stderr)
		}
	}
	// A symlink planted in the spool under the client's name (by root:
	// the user cannot) is replaced, never written through.
	target := filepath.Join(etc, "tcp.smtp")
	os.Symlink(target, filepath.Join(spool, "127.0.11.52"))
	r = asUser([]string{"TCPREMOTEIP=127.0.11.52", "USER=" + user}, sock("127.0.11.52"), wrap, "--spool", spool, "/bin/true")
	if r.stderr != fmt.Sprintf("checkpassword-wrap: ip=127.0.11.52 user=%s service=pop3\n", user) {
		t.Errorf("login over a socket: stderr %q", r.stderr)
	}
	if fi, err := os.Lstat(filepath.Join(spool, "127.0.11.52")); err != nil || !fi.Mode().IsRegular() || fi.Sys().(*syscall.Stat_t).Gid != uint32(gid) {
		t.Errorf("the grant is not a regular file of the group: %v %v", fi, err)
	}
	os.Remove(link)
	if after := treeExcept(t, dest, spool); after != outsideBefore {
		t.Errorf("files changed outside the spool:\nbefore:\n%s\nafter:\n%s", outsideBefore, after)
	}
	ents, _ := os.ReadDir(spool)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"127.0.11.52", "192.0.2.9"}) {
		t.Errorf("the spool holds %q", names)
	}
}

// treeExcept is tree(root) without the entries under skip, with symlinks
// shown as links (never followed).
func treeExcept(t *testing.T, root, skip string) string {
	t.Helper()
	var lines []string
	for _, line := range strings.Split(tree(t, root), "\n") {
		rel, _, _ := strings.Cut(line, " ")
		p := filepath.Join(root, rel)
		if p == skip || strings.HasPrefix(p, skip+"/") {
			continue
		}
		lines = append(lines, line)
	}
	return strings.Join(lines, "\n") + "\n"
}

// TestSecurityOneAddress: a grant opens the relay to its one address and
// nothing wider. The CDB with grants is the CDB without them plus, at the
// end, records whose keys are exactly the granted addresses, as tcpserver
// spells them; no prefix, host or empty key is added or changed, the
// static records stay first and unchanged; a grant refused (the never-grant
// set: a POP proxy) or under a static deny adds no relay. A real tcpserver
// -x agrees: the neighbours of a granted address do not relay.
func TestSecurityOneAddress(t *testing.T) {
	s := newRelayctlSite(t, `127.0.0.66:deny
127.0.12.:allow,QMAILQUEUE="/var/qmail/bin/qq"
198.51.100.:deny
:allow
`)
	never := filepath.Join(s.dir, "never")
	os.WriteFile(never, []byte("# the POP proxy\n127.0.12.99\n"), 0o644)
	for i, kv := range s.env {
		if kv == "POPRELAY_NEVER=" {
			s.env[i] = "POPRELAY_NEVER=" + never
		}
	}
	records := func() [][2]string {
		t.Helper()
		db, err := cdb.Open(s.cdb)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		var rs [][2]string
		db.ForEach(func(k, v []byte) error {
			rs = append(rs, [2]string{string(k), string(v)})
			return nil
		})
		return rs
	}
	if r := s.run(t, "rebuild"); r.code != 0 {
		t.Fatal(r.stderr)
	}
	static := records()
	granted := []string{"127.0.12.23", "2001:db8::7"}
	for _, ip := range append(granted, "127.0.12.99", "127.0.0.66", "198.51.100.7", "127.0.0.1") {
		os.WriteFile(filepath.Join(s.spool, ip), fmt.Appendf(nil, "user=u\nservice=pop3\ntime=%d\n", time.Now().Unix()), 0o640)
	}
	if r := s.run(t, "rebuild"); r.code != 0 {
		t.Fatal(r.stderr)
	}
	all := records()
	if len(all) < len(static) || !slices.Equal(all[:len(static)], static) {
		t.Fatalf("the static records changed:\nbefore %q\nafter %q", static, all)
	}
	allowed := map[string]bool{"127.0.12.23": true, "2001:db8::7": true}
	var added []string
	for _, r := range all[len(static):] {
		added = append(added, r[0])
		if strings.Contains(r[1], "+RELAYCLIENT=") && !allowed[r[0]] {
			t.Errorf("a relay record for %q", r[0])
		}
		if !allowed[r[0]] && !strings.HasPrefix(r[1], "D\x00") {
			t.Errorf("a record for %q that is not a deny: %q", r[0], r[1])
		}
	}
	for k := range allowed {
		if !slices.Contains(added, k) {
			t.Errorf("no record for the grant key %s (added: %q)", k, added)
		}
	}

	ts := startTcpserver(t, baseEnv(), []string{"-x", s.cdb, "-R", "-H"}, "/usr/bin/env")
	for ip, want := range map[string]bool{"127.0.12.23": true, "127.0.12.22": false, "127.0.12.24": false, "127.0.12.99": false, "127.0.12.230": false, "127.0.13.23": false} {
		env := s.agree(t, ts, ip)
		if _, has := env["RELAYCLIENT"]; has != want {
			t.Errorf("%s: RELAYCLIENT %v, want %v (env %v)", ip, has, want, env)
		}
	}
	if env := s.agree(t, ts, "127.0.0.66"); env != nil {
		t.Errorf("127.0.0.66 is denied statically; tcpserver ran the program: %v", env)
	}
}
