package t

import (
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
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

// TestRelayctlInstallScript runs scripts/install into a staging directory:
// modes, a second run changes nothing, an existing /etc/tcp.smtp is left
// alone, --dry-run writes nothing, --uninstall leaves the admin's files.
func TestRelayctlInstallScript(t *testing.T) {
	// scripts/install runs in an isolated root, never here, even with --destdir.
	if !isolatedBody(t, nil) {
		return
	}
	for _, c := range []string{"relayctl", "cdbbuild", "checkpassword-wrap"} {
		if _, err := os.Stat(bin(c)); err != nil {
			t.Fatalf("%s is not built: %v", c, err)
		}
	}
	dest := t.TempDir()
	args := []string{"--destdir", dest, "--prefix", "/usr/local", "--from", binDir}

	// --dry-run writes nothing.
	out := runInstall(t, append(args, "--dry-run")...)
	if ents, _ := os.ReadDir(dest); len(ents) != 0 {
		t.Fatalf("--dry-run wrote %v", ents)
	}
	if !strings.Contains(out, "install -m 0755") || !strings.Contains(out, "chmod 2770") {
		t.Errorf("--dry-run does not say what it would do:\n%s", out)
	}

	// An admin's rules file is never touched.
	os.MkdirAll(filepath.Join(dest, "etc"), 0o755)
	mine := "10.0.0.:allow,RELAYCLIENT=\"\"\n:deny\n"
	os.WriteFile(filepath.Join(dest, "etc", "tcp.smtp"), []byte(mine), 0o600)

	runInstall(t, args...)
	for path, want := range map[string]fs.FileMode{
		"usr/local/bin/relayctl":                   0o755,
		"usr/local/bin/cdbbuild":                   0o755,
		"usr/local/bin/checkpassword-wrap":         0o755 | fs.ModeSetgid,
		"var/spool/poprelay":                       0o770 | fs.ModeSetgid | fs.ModeDir,
		"etc/tcp.smtp":                             0o600,
		"etc/tcp.smtp.cdb":                         0o644,
		"etc/poprelay/never":                       0o644,
		"etc/cron.d/poprelay":                      0o644,
		"usr/local/share/poprelay/qmail-pop3d.run": 0o755,
		"usr/local/share/poprelay/qmail-smtpd.run": 0o755,
		"usr/local/share/poprelay/cron":            0o644,
	} {
		fi, err := os.Stat(filepath.Join(dest, path))
		if err != nil {
			t.Errorf("%s: %v", path, err)
			continue
		}
		if got := fi.Mode() & (fs.ModePerm | fs.ModeSetgid | fs.ModeSticky | fs.ModeDir); got != want {
			t.Errorf("%s: mode %v, want %v", path, got, want)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(dest, "etc", "tcp.smtp")); string(b) != mine {
		t.Errorf("/etc/tcp.smtp was changed: %q", b)
	}
	if m, _ := filepath.Glob(filepath.Join(repoRoot, "docs", "*.8")); len(m) > 0 {
		if _, err := os.Stat(filepath.Join(dest, "usr/local/share/man/man8", filepath.Base(m[0]))); err != nil {
			t.Errorf("man page: %v", err)
		}
	}
	cron, _ := os.ReadFile(filepath.Join(dest, "etc", "cron.d", "poprelay"))
	if !strings.Contains(string(cron), "\n* * * * * root command -v relayctl >/dev/null && relayctl expire\n") {
		t.Errorf("cron file:\n%s", cron)
	}

	// The CDB was built from the admin's rules.
	cmd := exec.Command(bin("relayctl"), "check", "10.0.0.5", "--cdb", filepath.Join(dest, "etc", "tcp.smtp.cdb"),
		"--rules", filepath.Join(dest, "etc", "tcp.smtp"), "--spool", filepath.Join(dest, "var/spool/poprelay"))
	cmd.Env = baseEnv()
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "env: RELAYCLIENT=") {
		t.Errorf("relayctl check on the installed CDB: %v\n%s", err, out)
	}

	// A second run changes nothing.
	before := tree(t, dest)
	runInstall(t, args...)
	if after := tree(t, dest); after != before {
		t.Errorf("a second install changed the tree:\nbefore:\n%s\nafter:\n%s", before, after)
	}

	// Uninstall removes ours and keeps the admin's.
	runInstall(t, "--uninstall", "--destdir", dest, "--prefix", "/usr/local")
	for _, gone := range []string{"usr/local/bin/relayctl", "usr/local/bin/checkpassword-wrap", "etc/cron.d/poprelay", "usr/local/share/poprelay"} {
		if _, err := os.Stat(filepath.Join(dest, gone)); err == nil {
			t.Errorf("%s survived --uninstall", gone)
		}
	}
	for _, kept := range []string{"etc/tcp.smtp", "etc/tcp.smtp.cdb", "var/spool/poprelay", "etc/poprelay/never"} {
		if _, err := os.Stat(filepath.Join(dest, kept)); err != nil {
			t.Errorf("--uninstall removed %s", kept)
		}
	}
}
