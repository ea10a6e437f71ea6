package t

import (
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
)

// tree lists every path under root with its mode and a hash of its
// content.
func tree(t *testing.T, root string) string {
	t.Helper()
	var lines []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		line := fmt.Sprintf("%s %v", rel, fi.Mode())
		if fi.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			line += fmt.Sprintf(" %x", sha256.Sum256(b))
		}
		lines = append(lines, line)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func runInstall(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(filepath.Join(repoRoot, "scripts", "install"), args...)
	cmd.Env = baseEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("scripts/install %q: %v\n%s", args, err, out)
	}
	return string(out)
}

// TestRelayctlInstallScript runs scripts/install for real, in an isolated
// root: --dry-run writes nothing; modes and owners; an existing
// /etc/tcp.smtp is left alone; a warning when no cron daemon and no
// watcher would expire grants, none with cron; a second run changes
// nothing and prints nothing; a re-install of a changed wrapper never
// leaves it without setgid (the new file is made with its final mode and
// group, then renamed); --uninstall leaves the admin's files.
func TestRelayctlInstallScript(t *testing.T) {
	// scripts/install runs in an isolated root, never here.
	if !isolatedBody(t, nil) {
		return
	}
	freshRoot(t)
	for _, c := range []string{"relayctl", "cdbbuild", "checkpassword-wrap"} {
		if _, err := os.Stat(bin(c)); err != nil {
			t.Fatalf("%s is not built: %v", c, err)
		}
	}
	args := []string{"--from", binDir}
	for _, p := range []string{"/usr/sbin/cron", "/usr/sbin/crond", "/usr/bin/crond"} {
		os.Remove(p)
	}

	// --dry-run writes nothing.
	out := runInstall(t, append(args, "--dry-run")...)
	for _, p := range []string{"/usr/local/bin/relayctl", "/var/spool/poprelay", "/etc/cron.d/poprelay", "/etc/poprelay/never"} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("--dry-run made %s", p)
		}
	}
	if !strings.Contains(out, "install -m 2755 -g poprelay") || !strings.Contains(out, "chmod 2770") {
		t.Errorf("--dry-run does not say what it would do:\n%s", out)
	}

	// An admin's rules file is never touched.
	mine := "10.0.0.:allow,RELAYCLIENT=\"\"\n:allow\n"
	os.WriteFile("/etc/tcp.smtp", []byte(mine), 0o600)

	out = runInstall(t, args...)
	if !strings.Contains(out, "poprelay: warning: no cron daemon is installed and relayctl watch is not running") {
		t.Errorf("no warning without cron and watcher:\n%s", out)
	}
	group := ""
	if b, err := exec.Command("getent", "group", "poprelay").Output(); err == nil {
		group = strings.Split(string(b), ":")[2]
	} else {
		t.Fatalf("no group poprelay: %v", err)
	}
	for path, want := range map[string]string{
		"/usr/local/bin/relayctl":                          "-rwxr-xr-x 0:0",
		"/usr/local/bin/cdbbuild":                          "-rwxr-xr-x 0:0",
		"/usr/local/bin/checkpassword-wrap":                "grwxr-xr-x 0:" + group,
		"/var/spool/poprelay":                              "dgrwxrwx--- 0:" + group,
		"/etc/tcp.smtp":                                    "-rw------- 0:0",
		"/etc/tcp.smtp.cdb":                                "-rw-r--r-- 0:0",
		"/etc/poprelay/never":                              "-rw-r--r-- 0:0",
		"/etc/cron.d/poprelay":                             "-rw-r--r-- 0:0",
		"/usr/local/share/man/man8/relayctl.8.gz":          "-rw-r--r-- 0:0",
		"/usr/local/share/doc/poprelay/README.md":          "-rw-r--r-- 0:0",
		"/usr/local/share/poprelay/qmail-pop3d.run":        "-rwxr-xr-x 0:0",
		"/usr/local/share/poprelay/qmail-smtpd.run":        "-rwxr-xr-x 0:0",
		"/usr/local/share/poprelay/relayctl-watch.run":     "-rwxr-xr-x 0:0",
		"/usr/local/share/poprelay/poprelay-watch.service": "-rw-r--r-- 0:0",
		"/usr/local/share/poprelay/cron":                   "-rw-r--r-- 0:0",
		"/usr/local/share/poprelay/courier-login":          "-rwxr-xr-x 0:0",
	} {
		if got := modeOwner(t, path); got != want {
			t.Errorf("%s: %s, want %s", path, got, want)
		}
	}
	if b, _ := os.ReadFile("/etc/tcp.smtp"); string(b) != mine {
		t.Errorf("/etc/tcp.smtp was changed: %q", b)
	}
	cron, _ := os.ReadFile("/etc/cron.d/poprelay")
	if !strings.Contains(string(cron), "\n* * * * * root command -v relayctl >/dev/null && relayctl expire\n") {
		t.Errorf("cron file:\n%s", cron)
	}
	// The CDB was built from the admin's rules.
	cmd := exec.Command("/usr/local/bin/relayctl", "check", "10.0.0.5")
	cmd.Env = baseEnv()
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "env: RELAYCLIENT=") {
		t.Errorf("relayctl check on the installed CDB: %v\n%s", err, out)
	}

	// With a cron daemon, no warning; and a second run changes nothing
	// and says nothing.
	os.WriteFile("/usr/sbin/cron", []byte("#!/bin/sh\n"), 0o755)
	dirs := []string{"/usr/local/bin", "/usr/local/share/poprelay", "/usr/local/share/man/man8", "/etc/poprelay", "/etc/cron.d", "/var/spool/poprelay"}
	before := trees(t, dirs...)
	if out := runInstall(t, args...); out != "" {
		t.Errorf("a second install printed:\n%s", out)
	}
	if after := trees(t, dirs...); after != before {
		t.Errorf("a second install changed the tree:\nbefore:\n%s\nafter:\n%s", before, after)
	}

	// A changed wrapper is replaced by a file made with its final mode
	// and group, renamed into place: nothing ever sets the installed
	// wrapper's mode or group itself (which would drop setgid for a
	// moment: chgrp clears it, and "install -m 0755" over it too).
	from := t.TempDir()
	for _, c := range []string{"relayctl", "cdbbuild", "checkpassword-wrap"} {
		b, _ := os.ReadFile(bin(c))
		if c == "checkpassword-wrap" {
			b = append(b, 0)
		}
		os.WriteFile(filepath.Join(from, c), b, 0o755)
	}
	out = runInstall(t, "--from", from, "--dry-run")
	wrap := "/usr/local/bin/checkpassword-wrap"
	var steps []string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "checkpassword-wrap") && !strings.Contains(l, ".8") {
			steps = append(steps, l)
		}
	}
	tmp := "/usr/local/bin/.checkpassword-wrap.poprelay-new"
	if want := []string{"install -m 2755 -g poprelay " + from + "/checkpassword-wrap " + tmp, "mv -f " + tmp + " " + wrap}; !slices.Equal(steps, want) {
		t.Errorf("re-installing the wrapper takes the steps\n%s\nwant\n%s", strings.Join(steps, "\n"), strings.Join(want, "\n"))
	}
	st0, _ := os.Stat(wrap)
	runInstall(t, "--from", from)
	st1, _ := os.Stat(wrap)
	if os.SameFile(st0, st1) || modeOwner(t, wrap) != "grwxr-xr-x 0:"+group {
		t.Errorf("re-installed wrapper: same file %v, %s", os.SameFile(st0, st1), modeOwner(t, wrap))
	}

	// Uninstall removes ours and keeps the admin's.
	runInstall(t, "--uninstall")
	for _, gone := range []string{"/usr/local/bin/relayctl", "/usr/local/bin/checkpassword-wrap", "/etc/cron.d/poprelay", "/usr/local/share/poprelay", "/usr/local/share/man/man8/relayctl.8.gz", "/usr/local/share/doc/poprelay"} {
		if _, err := os.Stat(gone); err == nil {
			t.Errorf("%s survived --uninstall", gone)
		}
	}
	for _, kept := range []string{"/etc/tcp.smtp", "/etc/tcp.smtp.cdb", "/var/spool/poprelay", "/etc/poprelay/never"} {
		if _, err := os.Stat(kept); err != nil {
			t.Errorf("--uninstall removed %s", kept)
		}
	}
}

// modeOwner is "MODE UID:GID" of path.
func modeOwner(t *testing.T, path string) string {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		return err.Error()
	}
	st := fi.Sys().(*syscall.Stat_t)
	return fmt.Sprintf("%v %d:%d", fi.Mode(), st.Uid, st.Gid)
}

// trees is tree of each dir, with modes, owners and contents.
func trees(t *testing.T, dirs ...string) string {
	var b strings.Builder
	for _, d := range dirs {
		fmt.Fprintf(&b, "%s:\n%s\n", d, tree(t, d))
	}
	return b.String()
}
