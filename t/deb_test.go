package t

import (
	"os"
	"os/exec"
	"path/filepath"
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
