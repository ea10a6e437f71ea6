package t

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Tests that install (scripts/install, dpkg -i, the maintainer scripts)
// never do it on the machine they run on: they run a shell script inside
// an isolated root, a throwaway copy of this machine's root file system.
//
// isoDriver runs as root in a private mount namespace and a PID
// namespace of its own (unshare -m --propagation private -p -f): it
// mounts a tmpfs, copies the files a test gave into the tmpfs as the
// upper layer of an overlay of /, mounts the overlay, a /proc of the
// namespace (the root sees only its own processes: no watcher of this
// machine, and all of them die with the script) and binds /sys and /dev
// into it, and runs the script under chroot with a clean environment. Every write lands in the tmpfs, which
// vanishes with the namespace: the machine's /etc, /var, /usr, group
// database and dpkg database stay as they were. The network is the
// machine's (loopback ports chosen at run time work). After the script,
// it lists what the script changed (the overlay's upper layer) for
// isoRoot.Changes. Overlay lower layers do not cross mount points, which
// is why files come in by copy: the checkout or /tmp may be a mount of
// its own. It works nested (an overlay of an overlay with a tmpfs upper
// layer), which TestIsolationKeepsLiveInstall uses.
//
// $1: the host directory with the manifest ("SRC<TAB>DST" lines), the
// script (copied to /poprelay-test/script), and where the listing goes.
const isoDriver = `set -eu
h=$1
u=$h/mnt
mount -t tmpfs -o mode=0755 poprelay-test "$u"
mkdir "$u/upper" "$u/work" "$u/root"
while IFS='	' read -r src dst; do
	mkdir -p "$u/upper$(dirname "$dst")"
	cp -a "$src" "$u/upper$dst"
done < "$h/manifest"
mkdir -p "$u/upper/poprelay-test"
cp "$h/script" "$u/upper/poprelay-test/script"
mount -t overlay overlay -o "lowerdir=/,upperdir=$u/upper,workdir=$u/work" "$u/root"
mount -t proc proc "$u/root/proc"
for d in sys dev; do
	mount --rbind "/$d" "$u/root/$d"
done
st=0
chroot "$u/root" /usr/bin/env -i \
	PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
	HOME=/root LC_ALL=C DEBIAN_FRONTEND=noninteractive CI="${CI:-}" \
	POPRELAY_ISOLATED=1 \
	/bin/sh -eu /poprelay-test/script || st=$?
cd "$u/upper"
find . -mindepth 1 ! -path ./poprelay-test ! -path './poprelay-test/*' \
	-printf '%P\t%M\t%U:%G\t%y\t%l\n' > "$h/changes"
find . -type f ! -path './poprelay-test/*' -exec sha256sum {} + > "$h/sums"
exit $st
`

var (
	isoOnce    sync.Once
	isoMissing string // why no isolated root can be made here; "" if one can
)

// isoProbe finds out once whether this machine can make an isolated root,
// by making one.
func isoProbe() {
	if os.Geteuid() != 0 {
		isoMissing = "not root (an overlay mount needs root)"
		return
	}
	for _, tool := range []string{"unshare", "chroot", "mount", "find", "sha256sum", "cp"} {
		if _, err := exec.LookPath(tool); err != nil {
			if _, err := os.Stat("/usr/sbin/" + tool); err != nil {
				isoMissing = tool + " is not installed"
				return
			}
		}
	}
	r := &isoRoot{}
	if out, err := r.exec("test -w /etc && test -d /proc/self\necho isolated"); err != nil || out != "isolated\n" {
		isoMissing = fmt.Sprintf("unable to make an overlay of / in a private mount namespace: %v: %s", err, strings.TrimSpace(out))
	}
}

// isoRoot is a script to run in an isolated root and the files it needs.
// Each Run is a fresh root: nothing carries over from one to the next.
type isoRoot struct {
	t       testing.TB
	copies  [][2]string
	changes string // the listing of the last Run
	sums    string
}

// isolate returns an isolated root, or skips the test naming what is
// missing; in CI (CI set), where every machine can make one, it fails.
func isolate(t testing.TB) *isoRoot {
	t.Helper()
	isoOnce.Do(isoProbe)
	if isoMissing != "" {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI must be able to install into an isolated root: %s", isoMissing)
		}
		t.Skipf("SKIP: installing needs an isolated root, and %s", isoMissing)
	}
	return &isoRoot{t: t}
}

// Copy copies the file or directory src of this machine to dst (an
// absolute path) in the root, with its mode and owner.
func (r *isoRoot) Copy(src, dst string) {
	if !filepath.IsAbs(dst) || strings.ContainsAny(src+dst, "\t\n") {
		r.t.Fatalf("isoRoot.Copy(%q, %q): want an absolute destination, no tabs or newlines", src, dst)
	}
	r.copies = append(r.copies, [2]string{src, filepath.Clean(dst)})
}

// CopyRepo copies what installing needs from this checkout to dir in
// the root: the built commands (bin/), scripts/, docs/, packaging/, the
// README and the LICENSE. scripts/install then runs as dir/scripts/install.
func (r *isoRoot) CopyRepo(dir string) {
	for _, p := range []string{"scripts", "docs", "packaging", "README.md", "LICENSE"} {
		r.Copy(filepath.Join(repoRoot, p), filepath.Join(dir, p))
	}
	for _, c := range []string{"relayctl", "cdbbuild", "checkpassword-wrap"} {
		r.Copy(bin(c), filepath.Join(dir, "bin", c))
	}
}

// Run runs script with sh -eu in a fresh isolated root and returns what
// it wrote on stdout and stderr; a non-zero exit fails the test.
func (r *isoRoot) Run(script string) string {
	r.t.Helper()
	out, err := r.exec(script)
	if err != nil {
		r.t.Fatalf("in the isolated root: %v\nscript:\n%s\noutput:\n%s", err, script, out)
	}
	return out
}

// RunErr is Run that returns the error instead of failing.
func (r *isoRoot) RunErr(script string) (string, error) {
	return r.exec(script)
}

func (r *isoRoot) exec(script string) (string, error) {
	h, err := os.MkdirTemp("", "poprelay-iso-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(h)
	var manifest strings.Builder
	for _, c := range r.copies {
		fmt.Fprintf(&manifest, "%s\t%s\n", c[0], c[1])
	}
	for name, data := range map[string]string{"driver": isoDriver, "script": script, "manifest": manifest.String()} {
		if err := os.WriteFile(filepath.Join(h, name), []byte(data), 0o600); err != nil {
			return "", err
		}
	}
	if err := os.Mkdir(filepath.Join(h, "mnt"), 0o700); err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "--mount", "--propagation", "private", "--pid", "--fork", "/bin/sh", filepath.Join(h, "driver"), h)
	cmd.Env = append(baseEnv(), "CI="+os.Getenv("CI"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	// Whatever the script left running dies with it.
	if cmd.Process != nil {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	ch, _ := os.ReadFile(filepath.Join(h, "changes"))
	sums, _ := os.ReadFile(filepath.Join(h, "sums"))
	r.changes, r.sums = string(ch), string(sums)
	return out.String(), err
}

// Changes lists what the last Run changed in the root, one path a line,
// sorted: "PATH MODE UID:GID [sha256]" ("PATH whiteout" for a removal;
// "PATH -> TARGET" for a symlink). Paths under one of the skip prefixes
// (e.g. "var/lib/dpkg/") are left out.
func (r *isoRoot) Changes(skip ...string) string {
	sum := map[string]string{}
	for _, l := range strings.Split(r.sums, "\n") {
		if h, p, ok := strings.Cut(l, "  "); ok {
			sum[strings.TrimPrefix(p, "./")] = h
		}
	}
	var lines []string
next:
	for _, l := range strings.Split(r.changes, "\n") {
		f := strings.Split(l, "\t")
		if len(f) != 5 {
			continue
		}
		for _, s := range skip {
			if strings.HasPrefix(f[0]+"/", s) {
				continue next
			}
		}
		switch f[3] {
		case "c":
			lines = append(lines, f[0]+" whiteout")
		case "l":
			lines = append(lines, f[0]+" -> "+f[4])
		case "f":
			lines = append(lines, fmt.Sprintf("%s %s %s %s", f[0], f[1], f[2], sum[f[0]]))
		default:
			lines = append(lines, fmt.Sprintf("%s %s %s", f[0], f[1], f[2]))
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// liveInstallPaths are where an installed poprelay keeps what an admin
// must never lose to a test run: grants, rules, CDBs, the never-grant
// file, the cron file, the commands, the group and dpkg's record of the
// package.
var liveInstallPaths = []string{
	"/var/spool/poprelay", "/etc/tcp.smtp", "/etc/tcp.smtp.cdb", "/etc/tcp.smtp.cdb.lock",
	"/etc/poprelay", "/etc/cron.d/poprelay", "/etc/default/poprelay",
	"/usr/local/bin/relayctl", "/usr/local/bin/checkpassword-wrap", "/usr/local/bin/cdbbuild",
	"/usr/bin/relayctl", "/usr/bin/checkpassword-wrap", "/usr/bin/cdbbuild",
	"/usr/local/share/poprelay", "/usr/share/poprelay",
	"/var/lib/dpkg/info/poprelay.list", "/var/lib/dpkg/info/poprelay.postrm",
	"/var/lib/dpkg/statoverride",
}

// liveInstall describes the live install of this machine, if any: every
// file under liveInstallPaths with its mode, owner and content hash, the
// group poprelay and dpkg's status of the package. Two calls return the
// same text exactly when nothing of it changed.
func liveInstall() string {
	var b strings.Builder
	for _, root := range liveInstallPaths {
		filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
			if err != nil {
				if !os.IsNotExist(err) {
					fmt.Fprintf(&b, "%s: %v\n", p, err)
				}
				return nil
			}
			st := fi.Sys().(*syscall.Stat_t)
			fmt.Fprintf(&b, "%s %v %d:%d", p, fi.Mode(), st.Uid, st.Gid)
			if fi.Mode().IsRegular() {
				data, err := os.ReadFile(p)
				if err != nil {
					fmt.Fprintf(&b, " %v", err)
				}
				fmt.Fprintf(&b, " %x", sha256.Sum256(data))
			}
			b.WriteString("\n")
			return nil
		})
	}
	group, _ := exec.Command("getent", "group", "poprelay").Output()
	fmt.Fprintf(&b, "group: %s\n", bytes.TrimSpace(group))
	status, _ := exec.Command("dpkg-query", "-W", "-f=${Status} ${Version}", "poprelay").Output()
	fmt.Fprintf(&b, "dpkg: %s\n", status)
	return b.String()
}

// isolatedBody runs the calling test inside a fresh isolated root: the
// test binary itself, with -test.run naming just this test, copied in
// with the checkout's parts (CopyRepo, at /src, so the inner repoRoot is
// /src and POPRELAY_BIN /src/bin). It returns true in that inner run,
// where the test's body may install onto "/" for real; outside it
// returns false after the inner run, whose log it forwards, whose
// failure fails the test and whose skip skips it. setup, if not nil,
// adds copies and variables (KEY=VALUE) for the inner run.
//
//	func TestX(t *testing.T) {
//		if !isolatedBody(t, nil) {
//			return
//		}
//		... dpkg -i, scripts/install, useradd: all in the throwaway root ...
//	}
func isolatedBody(t *testing.T, setup func(r *isoRoot) []string) bool {
	t.Helper()
	if os.Getenv("POPRELAY_ISOLATED_TEST") == t.Name() {
		return true
	}
	r := isolate(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	r.CopyRepo("/src")
	r.Copy(self, "/src/t/t.test")
	env := []string{"POPRELAY_ISOLATED_TEST=" + t.Name(), "POPRELAY_BIN=/src/bin"}
	if setup != nil {
		env = append(env, setup(r)...)
	}
	var script strings.Builder
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		fmt.Fprintf(&script, "export %s=%s\n", k, shellQuote(v))
	}
	parts := strings.Split(t.Name(), "/")
	for i, p := range parts {
		parts[i] = "^" + regexp.QuoteMeta(p) + "$"
	}
	run := strings.Join(parts, "/")
	fmt.Fprintf(&script, "cd /src/t\nexec ./t.test -test.v -test.count=1 -test.timeout=15m -test.run %s\n", shellQuote(run))
	out, err := r.RunErr(script.String())
	for _, l := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		t.Log("isolated: " + l)
	}
	switch {
	case err != nil:
		t.Fatalf("the test failed in its isolated root: %v", err)
	case strings.Contains(out, "--- SKIP: "+t.Name()):
		if os.Getenv("CI") != "" {
			t.Fatal("skipped in its isolated root; CI must run it")
		}
		t.Skip("SKIP: skipped in its isolated root (see above)")
	case !strings.Contains(out, "--- PASS: "+t.Name()):
		t.Fatal("the test did not run in its isolated root")
	}
	return false
}

// shellQuote quotes s for sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// isolatedTests names the tests whose body runs in an isolated root (they
// call isolatedBody), read from the sources of this package.
func isolatedTests(t *testing.T) []string {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(repoRoot, "t", "*_test.go"))
	name := regexp.MustCompile(`^(Test\w+)\(t \*testing\.T\)`)
	var tests []string
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, fn := range strings.Split(string(src), "\nfunc ")[1:] {
			if m := name.FindStringSubmatch(fn); m != nil && strings.Contains(fn, "isolatedBody(t, ") {
				tests = append(tests, m[1])
			}
		}
	}
	sort.Strings(tests)
	return tests
}

// TestIsolationKeepsLiveInstall proves that the tests which install leave
// a live install alone. In an outer isolated root it makes a live install
// as an admin has one (scripts/install; rules in /etc/tcp.smtp; grants in
// the spool; the CDB built from both), runs every test that installs
// (isolatedTests) there, nested, and compares the live install before and
// after: files, modes, owners and bytes of the spool, rules, CDB, lock,
// never-grant and cron files and commands, the group and dpkg's state.
// Then it breaks isolation on purpose (an uninstall run straight in that
// root) to show the comparison sees it.
//
// The outer root is an overlay of this machine, so it inherits this
// machine's own install if it has one: its grants, rules and CDB, its
// commands, its package. The test must not depend on what that holds (a
// live server has grants: they used to count in, "3 grants, want 2"), so
// the outer root first takes the inherited install away (isoFresh) and
// then makes the live install it checks, whose grants are exactly the two
// it made. To show that, the outer root always starts with an install of
// its own planted as this machine's would be (a spool with a grant of
// user "host-grant", rules, a CDB: in the overlay a planted file and one
// of the machine are the same to every program), whatever this machine
// holds.
func TestIsolationKeepsLiveInstall(t *testing.T) {
	tests := isolatedTests(t)
	if len(tests) < 4 {
		t.Fatalf("found only %q calling isolatedBody", tests)
	}
	deb := theDeb(t)
	r := isolate(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	r.CopyRepo("/src")
	r.Copy(self, "/src/t/t.test")
	r.Copy(deb, "/src/poprelay.deb")
	// TestSslserver runs an sslserver only when given one (it skips
	// without, even in CI: sslserver_test.go).
	sslEnv := ""
	if p := os.Getenv("POPRELAY_SSLSERVER"); p != "" {
		r.Copy(p, "/src/sslserver")
		sslEnv = "POPRELAY_SSLSERVER=/src/sslserver "
	}
	host := t.TempDir()
	hostFiles := map[string]string{
		"spool": "/var/spool/poprelay", "rules": "/etc/tcp.smtp", "rules.cdb": "/etc/tcp.smtp.cdb",
	}
	if err := os.WriteFile(filepath.Join(host, "rules"), []byte(":allow\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(host, "spool"), 0o2770); err != nil {
		t.Fatal(err)
	}
	plant := exec.Command(bin("relayctl"), "allow", "203.0.113.44", "--user", "host-grant", "--for", "24h",
		"--spool", filepath.Join(host, "spool"), "--rules", filepath.Join(host, "rules"),
		"--cdb", filepath.Join(host, "rules.cdb"))
	plant.Env = baseEnv("POPRELAY_NEVER=")
	if out, err := plant.CombinedOutput(); err != nil {
		t.Fatalf("planting the machine's own install: %v\n%s", err, out)
	}
	for src, dst := range hostFiles {
		r.Copy(filepath.Join(host, src), dst)
	}
	out := r.Run(`
relayctl() { /src/bin/relayctl "$@"; }
printf 'inherited grants: %s\n' "$(relayctl list 2>&1 | grep -c host-grant)"
` + isoFresh + `unset -f relayctl
snap() {
	for p in /var/spool/poprelay /etc/tcp.smtp /etc/tcp.smtp.cdb /etc/tcp.smtp.cdb.lock \
		/etc/poprelay /etc/cron.d/poprelay /usr/local/bin/relayctl /usr/local/bin/cdbbuild \
		/usr/local/bin/checkpassword-wrap /usr/local/share/poprelay; do
		[ -e "$p" ] || { echo "absent $p"; continue; }
		find "$p" -printf '%p %M %u:%g %s\n' | sort
		find "$p" -type f -exec sha256sum {} + | sort
	done
	echo "group: $(getent group poprelay)"
	echo "dpkg: $(dpkg-query -W -f='${Status}' poprelay 2>&1)"
}
/src/scripts/install --from /src/bin >/dev/null
cat >/etc/tcp.smtp <<'RULES'
10.9.:deny
127.0.0.1:allow,RELAYCLIENT=""
:allow,QMAILQUEUE="/var/qmail/bin/qmail-queue"
RULES
relayctl allow 192.0.2.7 --user alice
relayctl allow 198.51.100.9 --user bob
relayctl list | grep -c relay | sed 's/^/live grants: /'
relayctl list | awk 'NR > 1 {print $2}' | sort | tr '\n' ' ' | sed 's/^/live users: /; s/$/\n/'
snap >/tmp/live-before
cd /src/t
st=0
` + sslEnv + `POPRELAY_BIN=/src/bin POPRELAY_DEB=/src/poprelay.deb ./t.test -test.v -test.count=1 -test.timeout=20m \
	-test.run '^(` + strings.Join(tests, "|") + `)$' >/tmp/nested 2>&1 || st=$?
grep -E '^(--- |ok|FAIL|PASS)' /tmp/nested || true
[ $st = 0 ] || { cat /tmp/nested; echo "nested tests: exit $st"; exit 1; }
snap >/tmp/live-after
if cmp -s /tmp/live-before /tmp/live-after; then
	echo "live install unchanged"
else
	diff /tmp/live-before /tmp/live-after || true
fi
# The detector: what an install test did to a live install before
# isolation (uninstall, here straight in this root) is seen.
/src/scripts/install --uninstall >/dev/null 2>&1
snap >/tmp/live-broken
cmp -s /tmp/live-before /tmp/live-broken || echo "detector: an install outside isolation is seen"
`)
	t.Logf("outer root:\n%s", out)
	if !strings.Contains(out, "inherited grants: 1\n") {
		t.Errorf("the outer root did not inherit the planted install of the machine")
	}
	if !strings.Contains(out, "live grants: 2\n") || !strings.Contains(out, "live users: alice bob \n") {
		t.Errorf("the live install does not hold exactly the 2 grants it made (alice, bob)")
	}
	for _, name := range tests {
		if name == "TestSslserver" && sslEnv == "" && strings.Contains(out, "--- SKIP: "+name+" ") {
			continue
		}
		if !strings.Contains(out, "--- PASS: "+name+" ") {
			t.Errorf("%s did not pass in the root with the live install", name)
		}
	}
	if !strings.Contains(out, "live install unchanged\n") {
		t.Errorf("the tests that install changed the live install")
	}
	if !strings.Contains(out, "detector: an install outside isolation is seen\n") {
		t.Errorf("the comparison cannot see an install outside isolation")
	}
}

// isoFresh, run first in an isolated root, takes away any poprelay install
// the root inherited from the machine (or, nested, from an outer root's
// live install), so a test starts as on a machine without poprelay.
const isoFresh = `if dpkg-query -W -f='${Status}' poprelay 2>/dev/null | grep -q 'ok installed'; then
	dpkg --purge poprelay >/dev/null 2>&1 || true
fi
rm -rf /usr/local/bin/relayctl /usr/local/bin/cdbbuild /usr/local/bin/checkpassword-wrap \
	/usr/local/share/poprelay /usr/local/share/doc/poprelay /etc/tcp.smtp /etc/tcp.smtp.cdb \
	/etc/tcp.smtp.cdb.lock /etc/tcp.smtp.cdb.state /etc/poprelay /etc/cron.d/poprelay /var/spool/poprelay
rm -f /usr/local/share/man/man8/relayctl.8* /usr/local/share/man/man8/cdbbuild.8* /usr/local/share/man/man8/checkpassword-wrap.8*
if getent group poprelay >/dev/null; then groupdel poprelay; fi
`

// freshRoot runs isoFresh inside an isolated root (isolatedBody).
func freshRoot(t *testing.T) {
	t.Helper()
	if os.Getenv("POPRELAY_ISOLATED") == "" {
		t.Fatal("freshRoot outside an isolated root")
	}
	if out, err := exec.Command("/bin/sh", "-c", isoFresh).CombinedOutput(); err != nil {
		t.Fatalf("clearing the isolated root: %v\n%s", err, out)
	}
}
