package t

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
)

var (
	debOnce sync.Once
	debPath string
	debErr  string
	debDir  string // removed by TestMain
)

// theDeb returns the .deb of this checkout, built once per run with
// scripts/mkdeb into a temporary directory ($POPRELAY_DEB if set: the
// isolated roots get the .deb built outside, where Go is).
func theDeb(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("POPRELAY_DEB"); p != "" {
		return p
	}
	need(t, "dpkg-deb")
	debOnce.Do(func() {
		dir, err := os.MkdirTemp("", "poprelay-deb-")
		if err != nil {
			debErr = err.Error()
			return
		}
		debDir = dir
		build := exec.Command("sh", "scripts/mkdeb", "0.0~test")
		build.Dir = repoRoot
		build.Env = append(os.Environ(), "DISTDIR="+dir)
		out, err := build.CombinedOutput()
		if err != nil {
			debErr = "mkdeb: " + err.Error() + "\n" + string(out)
			return
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		debPath = lines[len(lines)-1]
		if !filepath.IsAbs(debPath) {
			debPath = filepath.Join(repoRoot, debPath)
		}
	})
	if debErr != "" {
		t.Fatal(debErr)
	}
	return debPath
}

// withDeb is an isolatedBody setup that copies the .deb in.
func withDeb(t *testing.T) func(r *isoRoot) []string {
	deb := theDeb(t)
	return func(r *isoRoot) []string {
		r.Copy(deb, "/src/poprelay.deb")
		return []string{"POPRELAY_DEB=/src/poprelay.deb"}
	}
}

// TestDebPackage builds the .deb, installs it with dpkg in an isolated
// root, runs the installed commands and man pages, and purges it again.
func TestDebPackage(t *testing.T) {
	need(t, "man")
	if !isolatedBody(t, withDeb(t)) {
		return
	}
	freshRoot(t)
	deb := theDeb(t)
	run := func(name string, args ...string) string {
		t.Helper()
		c := exec.Command(name, args...)
		c.Env = baseEnv("MANPAGER=cat", "MANWIDTH=80")
		out, err := c.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	run("dpkg", "-i", deb)

	if out := run("/usr/bin/relayctl", "--help"); !strings.Contains(out, "rebuild") {
		t.Errorf("relayctl --help does not mention rebuild:\n%s", out)
	}
	for _, page := range []string{"checkpassword-wrap", "relayctl", "cdbbuild"} {
		path := "/usr/share/man/man8/" + page + ".8.gz"
		out := run("man", "-l", path)
		if !strings.Contains(out, page) {
			t.Errorf("man -l %s does not show %s", path, page)
		}
	}
	st, err := os.Stat("/usr/bin/checkpassword-wrap")
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode()&os.ModeSetgid == 0 {
		t.Errorf("checkpassword-wrap is not setgid: %v", st.Mode())
	}
	if st, err := os.Stat("/var/spool/poprelay"); err != nil || !st.IsDir() || st.Mode().Perm() != 0o770 {
		t.Errorf("spool: %v %v", st, err)
	}
	if out := run("getent", "group", "poprelay"); !strings.HasPrefix(out, "poprelay:") {
		t.Errorf("group poprelay missing: %q", out)
	}

	run("dpkg", "--purge", "poprelay")
	for _, p := range []string{"/usr/bin/relayctl", "/usr/bin/checkpassword-wrap", "/var/spool/poprelay"} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s still there after purge", p)
		}
	}
	if err := exec.Command("getent", "group", "poprelay").Run(); err == nil {
		t.Errorf("group poprelay still there after purge")
	}
}

// TestInstallRoutesAgree installs the .deb with dpkg in one isolated root
// and the same binaries with scripts/install --prefix /usr in another,
// and compares everything each changed on the system: files, modes,
// owners and bytes (dpkg's own database and logs aside). Both also warn
// when no cron daemon and no watcher would expire grants.
func TestInstallRoutesAgree(t *testing.T) {
	need(t, "dpkg-deb")
	deb := theDeb(t)
	skip := []string{"var/lib/", "var/log/", "var/cache/", "src/", "tmp/", "root/", "run/"}
	// No cron daemon in either root, so both must warn.
	const noCron = "rm -f /usr/sbin/cron /usr/sbin/crond /usr/bin/crond /etc/init.d/busybox-cron\n"
	d := isolate(t)
	d.Copy(deb, "/src/poprelay.deb")
	debOut := d.Run(isoFresh + noCron + "dpkg -i /src/poprelay.deb 2>&1\n")
	debTree := d.Changes(skip...)

	s := isolate(t)
	s.CopyRepo("/src")
	s.Copy(deb, "/src/poprelay.deb")
	insOut := s.Run(isoFresh + noCron + "dpkg-deb -x /src/poprelay.deb /tmp/deb\n/src/scripts/install --prefix /usr --from /tmp/deb/usr/bin 2>&1\n")
	insTree := s.Changes(skip...)

	// relayctl's state file names the spool directory's inode: its
	// bytes differ from root to root.
	state := regexp.MustCompile(`(?m)^(etc/tcp\.smtp\.cdb\.state .*) [0-9a-f]{64}$`)
	debTree = state.ReplaceAllString(debTree, "$1")
	insTree = state.ReplaceAllString(insTree, "$1")
	if debTree != insTree {
		t.Errorf("the .deb and scripts/install --prefix /usr differ:\n%s", lineDiff(debTree, insTree))
	}
	for _, want := range []string{"usr/bin/checkpassword-wrap -rwxr-sr-x 0:", "var/spool/poprelay drwxrws--- 0:", "etc/cron.d/poprelay -rw-r--r-- 0:0", "usr/share/poprelay/poprelay-watch.service", "usr/share/poprelay/relayctl-watch.run -rwxr-xr-x", "usr/share/poprelay/courier-login -rwxr-xr-x", "etc/tcp.smtp.cdb -rw-r--r--"} {
		if !strings.Contains(debTree, want) {
			t.Errorf("the .deb installs no %q:\n%s", want, debTree)
		}
	}
	for _, bad := range []string{"usr/share/poprelay/install", "usr/share/poprelay/demo", "usr/share/poprelay/mkdeb"} {
		if strings.Contains(debTree, bad+" ") {
			t.Errorf("the .deb ships %s, which cannot work there", bad)
		}
	}
	for route, out := range map[string]string{"dpkg -i": debOut, "scripts/install": insOut} {
		if !strings.Contains(out, "poprelay: warning: no cron daemon is installed and relayctl watch is not running") {
			t.Errorf("%s without cron or watcher does not warn:\n%s", route, out)
		}
	}
	t.Logf("both routes:\n%s", debTree)
}

// lineDiff lists the lines only in a (-) or only in b (+).
func lineDiff(a, b string) string {
	in := func(s string) map[string]bool {
		m := map[string]bool{}
		for _, l := range strings.Split(s, "\n") {
			m[l] = true
		}
		return m
	}
	ia, ib := in(a), in(b)
	var out []string
	for _, l := range strings.Split(a, "\n") {
		if !ib[l] {
			out = append(out, "- "+l)
		}
	}
	for _, l := range strings.Split(b, "\n") {
		if !ia[l] {
			out = append(out, "+ "+l)
		}
	}
	return strings.Join(out, "\n")
}
