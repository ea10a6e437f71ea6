package t

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestUninstallClosesRelays: uninstalling, by scripts/install --uninstall,
// dpkg --remove or dpkg --purge, rewrites the CDB from the static rules
// alone, byte for byte what the real tcprules makes of them, so that no
// grant is left relaying with nothing to expire it, and says so; remove
// keeps the spool and the group, purge removes both, the rules and the
// CDB stay. A rules file that does not compile stops the uninstall before
// anything is removed. Each route runs in its own isolated root.
func TestUninstallClosesRelays(t *testing.T) {
	need(t, "tcprules")
	const rules = "10.9.:deny\n127.0.0.1:allow,RELAYCLIENT=\"\"\n:allow,QMAILQUEUE=\"/var/qmail/bin/qmail-queue\"\n"
	for _, route := range []struct {
		name             string
		deb              bool
		uninstall        []string
		relayctl         string
		keepsSpool, fail bool
		rules            string
	}{
		{name: "install", uninstall: []string{"/src/scripts/install", "--uninstall"}, relayctl: "/usr/local/bin/relayctl", keepsSpool: true, rules: rules},
		{name: "deb-remove", deb: true, uninstall: []string{"dpkg", "--remove", "poprelay"}, relayctl: "/usr/bin/relayctl", keepsSpool: true, rules: rules},
		{name: "deb-purge", deb: true, uninstall: []string{"dpkg", "--purge", "poprelay"}, relayctl: "/usr/bin/relayctl", rules: rules},
		{name: "bad-rules", uninstall: []string{"/src/scripts/install", "--uninstall"}, relayctl: "/usr/local/bin/relayctl", keepsSpool: true, fail: true, rules: rules},
	} {
		t.Run(route.name, func(t *testing.T) {
			var setup func(r *isoRoot) []string
			if route.deb {
				setup = withDeb(t)
			}
			if !isolatedBody(t, setup) {
				return
			}
			freshRoot(t)
			sh := func(args ...string) (string, error) {
				c := exec.Command(args[0], args[1:]...)
				c.Env = baseEnv("HOME=/root")
				out, err := c.CombinedOutput()
				return string(out), err
			}
			must := func(args ...string) string {
				t.Helper()
				out, err := sh(args...)
				if err != nil {
					t.Fatalf("%q: %v\n%s", args, err, out)
				}
				return out
			}
			if route.deb {
				must("dpkg", "-i", theDeb(t))
			} else {
				must("/src/scripts/install", "--from", "/src/bin")
			}
			if err := os.WriteFile("/etc/tcp.smtp", []byte(route.rules), 0o644); err != nil {
				t.Fatal(err)
			}
			must(route.relayctl, "allow", "192.0.2.7", "--user", "alice")
			if out := must(route.relayctl, "check", "192.0.2.7"); !strings.Contains(out, "RELAYCLIENT") {
				t.Fatalf("the grant does not relay before the uninstall:\n%s", out)
			}
			if _, err := os.Stat("/etc/tcp.smtp.cdb.rules"); err != nil {
				t.Errorf("relayctl allow saved no copy of the confirmed rules: %v", err)
			}
			// An edited cron file is the admin's.
			cronEdited := false
			if b, err := os.ReadFile("/etc/cron.d/poprelay"); err == nil && !route.deb {
				os.WriteFile("/etc/cron.d/poprelay", append(b, "# mine\n"...), 0o644)
				cronEdited = true
			}
			if route.fail {
				os.WriteFile("/etc/tcp.smtp", []byte(route.rules+"10.0.0.1:bogus\n"), 0o644)
			}
			before, _ := os.ReadFile("/etc/tcp.smtp.cdb")
			// An SMTP host's cache of the grants in etcd (watch
			// --source etcd writes it beside the CDB).
			os.WriteFile("/etc/tcp.smtp.cdb.etcd", []byte("{}\n"), 0o600)
			// The spare a watcher killed with -9 leaves beside it.
			os.WriteFile("/etc/.tcp.smtp.cdb.spare", before, 0o644)

			out, err := sh(route.uninstall...)
			t.Logf("%s:\n%s", strings.Join(route.uninstall, " "), out)
			cdbNow, _ := os.ReadFile("/etc/tcp.smtp.cdb")
			if route.fail {
				if err == nil || !strings.Contains(out, "unable to rewrite /etc/tcp.smtp.cdb") {
					t.Errorf("uninstall with rules that do not compile: %v, want a failure that says why", err)
				}
				if _, err := os.Stat(route.relayctl); err != nil {
					t.Errorf("the failed uninstall removed relayctl: %v", err)
				}
				if !bytes.Equal(cdbNow, before) {
					t.Errorf("the failed uninstall changed the CDB")
				}
				return
			}
			if err != nil {
				t.Fatalf("uninstall: %v", err)
			}
			if !strings.Contains(out, "rewrote /etc/tcp.smtp.cdb from /etc/tcp.smtp alone") {
				t.Errorf("the uninstall does not say it rewrote the CDB")
			}
			// What tcprules makes of the rules alone.
			dir := t.TempDir()
			tr := exec.Command("tcprules", filepath.Join(dir, "want.cdb"), filepath.Join(dir, "want.tmp"))
			tr.Stdin = strings.NewReader(route.rules)
			if out, err := tr.CombinedOutput(); err != nil {
				t.Fatalf("tcprules: %v %s", err, out)
			}
			want, _ := os.ReadFile(filepath.Join(dir, "want.cdb"))
			if !bytes.Equal(cdbNow, want) {
				t.Errorf("after the uninstall /etc/tcp.smtp.cdb (%d bytes) is not what tcprules makes of /etc/tcp.smtp (%d bytes): grants still relay", len(cdbNow), len(want))
			}
			if b, _ := os.ReadFile("/etc/tcp.smtp"); string(b) != route.rules {
				t.Errorf("the uninstall changed /etc/tcp.smtp: %q", b)
			}
			if _, err := os.Stat(route.relayctl); err == nil {
				t.Errorf("%s is still there", route.relayctl)
			}
			_, spoolErr := os.Stat("/var/spool/poprelay/192.0.2.7")
			groupErr := exec.Command("getent", "group", "poprelay").Run()
			if route.keepsSpool && (spoolErr != nil || groupErr != nil) {
				t.Errorf("remove must keep the spool and the group: %v, %v", spoolErr, groupErr)
			}
			if !route.keepsSpool {
				if _, err := os.Stat("/var/spool/poprelay"); err == nil || groupErr == nil {
					t.Errorf("purge must remove the spool and the group")
				}
				for _, p := range []string{"/etc/tcp.smtp.cdb.state", "/etc/tcp.smtp.cdb.lock", "/etc/tcp.smtp.cdb.rules", "/etc/tcp.smtp.cdb.etcd", "/etc/.tcp.smtp.cdb.spare"} {
					if _, err := os.Stat(p); err == nil {
						t.Errorf("purge left %s", p)
					}
				}
			}
			if cronEdited {
				if _, err := os.Stat("/etc/cron.d/poprelay"); err != nil {
					t.Errorf("the uninstall removed a cron file the admin edited")
				}
			}
		})
	}
}
