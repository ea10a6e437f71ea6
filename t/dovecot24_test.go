package t

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Dovecot 2.4 is Debian 13's (trixie). The test runs it in a chroot made
// with debootstrap from the Debian mirror apt already uses, cached between
// test runs on this machine (os.UserCacheDir()/poprelay/trixie-dovecot,
// never under /etc or /var), and installs poprelay there with
// scripts/install into an overlay of that cache, so the cache stays clean.
// Building the cache takes minutes (measured: about 5, 3 of them
// debootstrap); a test that finds it built starts in seconds.

// trixieRecipe is what the cache holds; its stamp file records it, and a
// cache with another stamp (or none: half-built) is rebuilt.
const trixieRecipe = "debootstrap --variant=minbase trixie + apt-get install --no-install-recommends dovecot-core dovecot-pop3d dovecot-imapd (v1)\n"

// chrootPath is PATH inside the chroot.
const chrootPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// trixieDovecot returns the root of the cached Debian 13 file system with
// Dovecot 2.4, building it first if needed. It holds a shared flock on
// the cache's lock file until the test ends; a build holds it exclusively,
// so concurrent test runs neither build twice nor see a cache replaced
// under them. Without the tools, root or the mirror it skips, in CI it
// fails.
func trixieDovecot(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("the Dovecot 2.4 test must run as root in CI (chroot, mounts)")
		}
		t.Skip("SKIP: the Dovecot 2.4 test needs root (chroot, mounts)")
	}
	for _, tool := range []string{"debootstrap", "unshare", "nsenter", "chroot", "mount"} {
		need(t, tool)
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		t.Fatalf("no cache directory for the Debian 13 chroot: %v", err)
	}
	base := filepath.Join(cache, "poprelay")
	if err := os.MkdirAll(base, 0o755); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(base, "trixie-dovecot")
	lock, err := os.OpenFile(dir+".lock", os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lock.Close() })
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "stamp")); err != nil || string(b) != trixieRecipe {
		buildTrixie(t, base, dir)
	} else {
		t.Logf("Debian 13 chroot: cached in %s", dir)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_SH); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "root")
}

// buildTrixie builds the cache into a temp dir beside dir and renames it
// into place when complete, stamp included. The caller holds the lock.
func buildTrixie(t *testing.T, base, dir string) {
	t.Helper()
	// What a killed run left behind, and a cache of another recipe.
	old, _ := filepath.Glob(dir + ".tmp-*")
	for _, p := range append(old, dir) {
		if err := os.RemoveAll(p); err != nil {
			t.Fatal(err)
		}
	}
	mirror := debianMirror(t)
	tmp, err := os.MkdirTemp(base, "trixie-dovecot.tmp-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp) // gone by then if the build succeeded
	root := filepath.Join(tmp, "root")
	// In a private mount namespace, so that nothing debootstrap or the
	// packages mount outlives the build, even when it is killed.
	script := `set -eu
root=$1 mirror=$2
debootstrap --variant=minbase trixie "$root" "$mirror"
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
mount --rbind /proc "$root/proc"
mount --rbind /dev "$root/dev"
inroot() { chroot "$root" /usr/bin/env -i ` + chrootPath + ` LC_ALL=C DEBIAN_FRONTEND=noninteractive "$@"; }
inroot apt-get -q update
inroot apt-get -q install -y --no-install-recommends dovecot-core dovecot-pop3d dovecot-imapd
inroot apt-get clean
`
	begin := time.Now()
	t.Logf("Debian 13 chroot: building in %s from %s (minutes; cached for later runs)", tmp, mirror)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "--mount", "--propagation", "private", "sh", "-c", script, "build", root, mirror)
	cmd.Env = baseEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("building the Debian 13 chroot: %v\n%s", err, lastLines(string(out), 30))
	}
	if err := os.WriteFile(filepath.Join(tmp, "stamp"), []byte(trixieRecipe), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		t.Fatal(err)
	}
	t.Logf("Debian 13 chroot: built in %v", time.Since(begin).Round(time.Second))
}

// debianMirror returns the first Debian mirror of apt's sources (one-line
// sources.list and deb822 .sources files) that serves trixie. None: skip,
// or fail in CI.
func debianMirror(t *testing.T) string {
	t.Helper()
	var uris []string
	files, _ := filepath.Glob("/etc/apt/sources.list.d/*.sources")
	for _, f := range files {
		b, _ := os.ReadFile(f)
		for _, stanza := range strings.Split(string(b), "\n\n") {
			kv := map[string]string{}
			for _, line := range strings.Split(stanza, "\n") {
				if k, v, ok := strings.Cut(line, ":"); ok && !strings.HasPrefix(k, "#") {
					kv[strings.ToLower(strings.TrimSpace(k))] = strings.TrimSpace(v)
				}
			}
			if strings.Contains(kv["types"], "deb") && !strings.Contains(kv["suites"], "security") {
				uris = append(uris, strings.Fields(kv["uris"])...)
			}
		}
	}
	lists, _ := filepath.Glob("/etc/apt/sources.list.d/*.list")
	for _, f := range append([]string{"/etc/apt/sources.list"}, lists...) {
		b, _ := os.ReadFile(f)
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) > 1 && f[1][0] == '[' { // deb [options] uri suite
				for len(f) > 1 && !strings.HasSuffix(f[1], "]") {
					f = append(f[:1], f[2:]...)
				}
				f = append(f[:1], f[2:]...)
			}
			if len(f) >= 3 && f[0] == "deb" && !strings.Contains(f[2], "security") {
				uris = append(uris, f[1])
			}
		}
	}
	client := &http.Client{Timeout: 20 * time.Second}
	var tried []string
	for _, u := range uris {
		u = strings.TrimRight(u, "/")
		resp, err := client.Get(u + "/dists/trixie/Release")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return u
			}
			err = fmt.Errorf("%s", resp.Status)
		}
		tried = append(tried, fmt.Sprintf("%s: %v", u, err))
	}
	msg := fmt.Sprintf("no Debian mirror of apt's sources serves trixie (%s)", strings.Join(tried, "; "))
	if len(uris) == 0 {
		msg = "no Debian mirror in /etc/apt/sources.list*"
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("the Dovecot 2.4 test needs Debian 13 from the mirror: %s", msg)
	}
	t.Skipf("SKIP: the Dovecot 2.4 test needs Debian 13 from the mirror: %s", msg)
	return ""
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// docSnippet returns the code block of docs/dovecot.md that follows the
// marker comment <!-- NAME: ... -->, verbatim.
func docSnippet(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "docs", "dovecot.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "<!-- "+name+":")
	if ok {
		_, rest, ok = strings.Cut(rest, "\n```\n")
	}
	if ok {
		rest, _, ok = strings.Cut(rest, "\n```\n")
	}
	if !ok {
		t.Fatalf("docs/dovecot.md has no code block after <!-- %s: ... -->", name)
	}
	return rest + "\n"
}

// dovecot24Common is the rest of dovecot.conf for 2.4, the settings of
// dovecotCommon in 2.4's names, with paths inside the chroot.
const dovecot24Common = `# poprelay end-to-end test: Dovecot 2.4 in a Debian 13 chroot.
dovecot_config_version = 2.4.1
dovecot_storage_version = 2.4.1
base_dir = /poprelay-test/run
state_dir = /poprelay-test/state
log_path = /poprelay-test/dovecot.log
protocols = pop3 imap
listen = 127.0.0.1
auth_allow_cleartext = yes
auth_mechanisms = plain login
auth_failure_delay = 0
default_internal_user = dovecot
default_login_user = dovenull
mail_driver = maildir
mail_path = ~/Maildir
ssl = yes
ssl_server_cert_file = /poprelay-test/cert.pem
ssl_server_key_file = /poprelay-test/key.pem

passdb passwd-file {
  passwd_file_path = /poprelay-test/users
}
userdb passwd-file {
  passwd_file_path = /poprelay-test/users
}
service pop3-login {
  inet_listener pop3 {
    listen = 127.0.0.1
    port = @POP3@
  }
  inet_listener pop3s {
    listen = 127.0.0.1
    port = @POP3S@
    ssl = yes
  }
}
service imap-login {
  inet_listener imap {
    listen = 127.0.0.1
    port = @IMAP@
  }
  inet_listener imaps {
    port = 0
  }
}
`

// chrootNS is the start of every shell script that works in the overlay:
// in a private mount namespace (unshare -m), the cached chroot ($lower)
// under the test's upper layer at $root, /proc and /dev bound, the
// checkout and the built commands read-only at /mnt/src and /mnt/bin.
// The network is the host's.
const chrootNS = `set -eu
lower=$1 upper=$2 work=$3 root=$4 src=$5 bin=$6
mount -t overlay overlay -o "lowerdir=$lower,upperdir=$upper,workdir=$work" "$root"
mount --rbind /proc "$root/proc"
mount --rbind /dev "$root/dev"
for m in "$src:/mnt/src" "$bin:/mnt/bin"; do
	mount --bind "${m%%:*}" "$root${m#*:}"
	mount -o remount,bind,ro "$root${m#*:}"
done
inroot() { chroot "$root" /usr/bin/env -i ` + chrootPath + ` LC_ALL=C "$@"; }
`

// TestDovecot24PostLogin: Debian 13's Dovecot 2.4 runs checkpassword-wrap
// as its post-login script, configured with docs/dovecot.md's 2.4 snippet
// verbatim, poprelay installed by scripts/install in the chroot
// (/usr/local/bin, the group poprelay, /var/spool/poprelay). Logins over
// POP3, POP3 over TLS and IMAP from the host record their grants (relayctl
// list in the chroot shows them); wrong passwords record nothing; each
// login's audit line is in Dovecot's log at info level, and the log holds
// no error.
func TestDovecot24PostLogin(t *testing.T) {
	lower := trixieDovecot(t)
	for _, c := range []string{"checkpassword-wrap", "relayctl", "cdbbuild"} {
		if _, err := os.Stat(bin(c)); err != nil {
			t.Fatalf("%s was not built (%v)", c, err)
		}
	}
	snippet := docSnippet(t, "dovecot-2.4-postlogin")

	u := t.TempDir()
	upper, work, root := filepath.Join(u, "upper"), filepath.Join(u, "work"), filepath.Join(u, "root")
	test := filepath.Join(upper, "poprelay-test")
	for _, d := range []string{work, root, test, filepath.Join(test, "run"), filepath.Join(test, "state"),
		filepath.Join(upper, "mnt", "src"), filepath.Join(upper, "mnt", "bin"), filepath.Join(upper, "home")} {
		dvMkdir(t, d, 0o755)
	}
	home := filepath.Join(upper, "home", dvUser)
	dvMkdir(t, home, 0o700)
	if err := os.Chown(home, dvMailUID, dvMailUID); err != nil {
		t.Fatal(err)
	}
	dvWriteFile(t, filepath.Join(test, "users"), 0o644, fmt.Sprintf("%s:{PLAIN}%s:%d:%d::/home/%s::\n",
		dvUser, dvPass, dvMailUID, dvMailUID, dvUser))
	dvTLSCert(t, test)
	args := []string{lower, upper, work, root, repoRoot, binDir}
	ns := func(script string) []string {
		return append([]string{"unshare", "--mount", "--propagation", "private", "sh", "-c", chrootNS + script, "chroot"}, args...)
	}

	// Install as an admin would, then the version.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	argv := ns("inroot sh /mnt/src/scripts/install --from /mnt/bin >&2\ninroot dovecot --version\n")
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = baseEnv()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	version, err := cmd.Output()
	if err != nil {
		t.Fatalf("scripts/install in the chroot: %v\n%s", err, stderr.String())
	}
	t.Logf("dovecot --version: %s", strings.TrimSpace(string(version)))
	if !strings.HasPrefix(string(version), "2.4.") {
		t.Errorf("dovecot --version %q in the Debian 13 chroot; want 2.4.x", version)
	}

	// The 2.3 snippet, for the check at the end that 2.4 refuses it.
	conf23 := strings.NewReplacer("@POP3@", fmt.Sprint(freePort(t)), "@IMAP@", fmt.Sprint(freePort(t)),
		"@POP3S@", fmt.Sprint(freePort(t)), "/poprelay-test/run", "/poprelay-test/run23",
		"/poprelay-test/dovecot.log", "/poprelay-test/dovecot23.log").Replace(dovecot24Common) +
		strings.ReplaceAll(snippet, "$SET:default_internal_user", "$default_internal_user")
	dvWriteFile(t, filepath.Join(test, "dovecot23.conf"), 0o644, conf23)
	dvMkdir(t, filepath.Join(test, "run23"), 0o755)

	dv := &dovecotServer{Conf: filepath.Join(test, "dovecot.conf"), Log: filepath.Join(test, "dovecot.log")}
	dv.launch(t, func(ports *strings.Replacer) string {
		return ports.Replace(dovecot24Common) + snippet
	}, baseEnv(), ns("exec chroot \"$root\" /usr/bin/env -i "+chrootPath+" LC_ALL=C dovecot -F -c /poprelay-test/dovecot.conf\n")...)
	spool := filepath.Join(upper, "var", "spool", "poprelay")

	if dvPOP3(t, "127.0.0.5", dv.POP3, false, "wrong") {
		t.Fatal("POP3 accepted a wrong password")
	}
	if dvIMAP(t, "127.0.0.6", dv.IMAP, "wrong") {
		t.Fatal("IMAP accepted a wrong password")
	}
	dvWantSpool(t, spool)

	if !dvPOP3(t, "127.0.0.2", dv.POP3, false, dvPass) {
		t.Fatal("POP3 login from 127.0.0.2 failed")
	}
	dvWantGrant(t, spool, "127.0.0.2", "pop3")
	if !dvIMAP(t, "127.0.0.3", dv.IMAP, dvPass) {
		t.Fatal("IMAP login from 127.0.0.3 failed")
	}
	dvWantGrant(t, spool, "127.0.0.3", "imap")
	// With TLS the wrapper's standard input is a UNIX socket: it records
	// only because extra_groups = poprelay makes it trusted.
	if !dvPOP3(t, "127.0.0.4", dv.POP3S, true, dvPass) {
		t.Fatal("POP3S login from 127.0.0.4 failed")
	}
	dvWantGrant(t, spool, "127.0.0.4", "pop3")
	dvWantSpool(t, spool, "127.0.0.2", "127.0.0.3", "127.0.0.4")
	dvWantAudit(t, dv, "127.0.0.2", "127.0.0.3", "127.0.0.4")

	// What the admin sees in the chroot, through the running Dovecot's
	// mount namespace.
	inside := func(argv ...string) *exec.Cmd {
		cmd := exec.CommandContext(ctx, "nsenter", append([]string{"-t", fmt.Sprint(dv.Cmd.Process.Pid), "-m",
			"chroot", root, "/usr/bin/env", "-i", chrootPath, "LC_ALL=C"}, argv...)...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
		return cmd
	}
	out, err := inside("relayctl", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("relayctl list in the chroot: %v\n%s", err, out)
	}
	want := map[string]string{"127.0.0.2": "pop3", "127.0.0.3": "imap", "127.0.0.4": "pop3"}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 3 && want[f[0]] != "" && f[1] == dvUser && f[2] == want[f[0]] && strings.Contains(sc.Text(), "relay") {
			delete(want, f[0])
		}
	}
	if len(want) != 0 {
		t.Errorf("relayctl list in the chroot lacks %v:\n%s", want, out)
	}

	// 2.3's "user = $default_internal_user": 2.4 refuses to start, which
	// is why docs/dovecot.md has a snippet for each.
	out, err = inside("dovecot", "-F", "-c", "/poprelay-test/dovecot23.conf").CombinedOutput()
	b, _ := os.ReadFile(filepath.Join(test, "dovecot23.log"))
	if err == nil || !strings.Contains(string(out)+string(b), "User doesn't exist: $default_internal_user") {
		t.Errorf("Dovecot 2.4 with 2.3's user line: %v, want it refused (User doesn't exist)\n%s%s", err, out, b)
	}
}
