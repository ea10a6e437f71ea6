package t

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestDebPackage builds the .deb, installs it with dpkg, runs the installed
// commands and man pages, and purges it again. It changes the system, so it
// runs only as root (as in CI), and only where no poprelay package is
// installed already.
func TestDebPackage(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIP: installing a .deb needs root")
	}
	need(t, "dpkg-deb")
	need(t, "man")
	if out, _ := exec.Command("dpkg-query", "-W", "-f=${Status}", "poprelay").Output(); strings.Contains(string(out), "ok installed") {
		t.Skip("SKIP: a poprelay package is installed on this machine already; not replacing it")
	}
	build := exec.Command("sh", "scripts/mkdeb", "0.0~test")
	build.Dir = repoRoot
	build.Stderr = &testLog{t: t, prefix: "mkdeb: "}
	out, err := build.Output()
	if err != nil {
		t.Fatalf("mkdeb: %v", err)
	}
	deb := strings.TrimSpace(string(out))
	if !strings.HasPrefix(deb, "/") {
		deb = repoRoot + "/" + deb
	}
	defer os.Remove(deb)

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
	purged := false
	defer func() {
		if !purged {
			exec.Command("dpkg", "--purge", "poprelay").Run()
		}
	}()

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
	purged = true
	for _, p := range []string{"/usr/bin/relayctl", "/usr/bin/checkpassword-wrap", "/var/spool/poprelay"} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s still there after purge", p)
		}
	}
	if err := exec.Command("getent", "group", "poprelay").Run(); err == nil {
		t.Errorf("group poprelay still there after purge")
	}
}
