package t

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/poprelay/poprelay/internal/wait"
)

// Courier-IMAP and Courier POP3 are Debian 12's (courier-imap
// 5.0.13+1.0.16, courier-pop 1.0.16). They conflict with the Dovecot
// packages the other tests use (both provide imap-server and
// pop3-server), so TestCourier installs them in an isolated root
// (isolate_test.go), from .debs that apt-get download fetches once into
// os.UserCacheDir()/poprelay/courier-debs (never /etc or /var).

// courierPackages are what Debian's courier-imap and courier-pop need
// beyond what this machine has (apt-get -s install courier-imap
// courier-pop, less the MTA, gnutls-bin and expect, which the login path
// does not use).
var courierPackages = []string{
	"courier-imap", "courier-pop", "courier-base", "courier-authlib",
	"courier-authdaemon", "courier-authlib-userdb", "libcourier-unicode4",
	"libgamin0", "gamin", "libpcre3", "libltdl7", "libidn12",
}

// courierDebs returns the directory of the cached .debs, downloading
// them first if needed. Without root, apt or the mirror it skips; in CI
// it fails.
func courierDebs(t *testing.T) string {
	t.Helper()
	fail := t.Skipf
	if os.Getenv("CI") != "" {
		fail = t.Fatalf
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		fail("SKIP: the Courier test needs apt-get download for Debian's courier-imap: %v", err)
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		t.Fatalf("no cache directory for Courier's .debs: %v", err)
	}
	base := filepath.Join(cache, "poprelay")
	if err := os.MkdirAll(base, 0o755); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(base, "courier-debs")
	stamp := strings.Join(courierPackages, " ") + "\n"
	lock, err := os.OpenFile(dir+".lock", os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "stamp")); err == nil && string(b) == stamp {
		return dir
	}
	os.RemoveAll(dir)
	tmp, err := os.MkdirTemp(base, "courier-debs.tmp-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	os.Chmod(tmp, 0o755) // apt's _apt user writes the downloads
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "apt-get", append([]string{"-q", "download"}, courierPackages...)...)
	cmd.Dir = tmp
	cmd.Env = baseEnv()
	if out, err := cmd.CombinedOutput(); err != nil {
		fail("SKIP: apt-get download of Debian's Courier packages: %v\n%s", err, lastLines(string(out), 10))
	}
	if err := os.WriteFile(filepath.Join(tmp, "stamp"), []byte(stamp), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

// readmeSnippet returns the sh code block of README.md that follows the
// marker comment <!-- NAME: ... -->, verbatim but for the indent of the
// list item it is in.
func readmeSnippet(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "<!-- "+name+":")
	var out strings.Builder
	indent, in := "", false
	for _, line := range strings.Split(rest, "\n")[1:] {
		if !in {
			if strings.TrimSpace(line) != "```sh" {
				break
			}
			indent, in = line[:strings.Index(line, "`")], true
			continue
		}
		if line == indent+"```" {
			return out.String()
		}
		out.WriteString(strings.TrimPrefix(line, indent) + "\n")
	}
	t.Fatalf("README.md has no sh code block right after <!-- %s: ... --> (found %v)", name, ok)
	return ""
}

// runSh runs a shell script, failing the test on error.
func runSh(t *testing.T, script string, args ...string) string {
	t.Helper()
	cmd := exec.Command("/bin/sh", append([]string{"-euc", script, "sh"}, args...)...)
	cmd.Env = baseEnv("HOME=/root")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v\nscript:\n%s\noutput:\n%s", err, script, out)
	}
	return string(out)
}

// courierLog collects a child's stderr lines, for waiting on one.
type courierLog struct {
	mu    sync.Mutex
	lines []string
	t     *testing.T
	name  string
}

func (l *courierLog) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		l.mu.Lock()
		l.lines = append(l.lines, sc.Text())
		l.mu.Unlock()
		l.t.Logf("%s: %s", l.name, sc.Text())
	}
}

// wait returns the first line holding want, waiting for it as long as
// wait.Holds does.
func (l *courierLog) wait(want string) (line string, ok bool) {
	ok = wait.Holds(l.t, func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		for _, s := range l.lines {
			if strings.Contains(s, want) {
				line = s
				return true
			}
		}
		return false
	})
	return line, ok
}

// waitListening waits until what, a server the test started, takes
// connections on 127.0.0.1:port.
func waitListening(t *testing.T, what string, port int) {
	t.Helper()
	wait.For(t, fmt.Sprintf("%s to listen on %d", what, port), func() bool {
		c, err := connectFrom("127.0.0.1", port)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

// count is how many lines hold s.
func (l *courierLog) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, x := range l.lines {
		if strings.Contains(x, s) {
			n++
		}
	}
	return n
}

// courierStart is Debian's start command of one Courier service,
// /usr/lib/courier/imapd, imapd-ssl, pop3d or pop3d-ssl, as those scripts
// run it: a clean environment (env -i), the service's configuration files
// sourced with set -a, then couriertcpd with the login program and the
// program it runs after a login. Only courierlogger (which would send the
// log to syslog) is left out, and the address and port are the test's;
// the TLS cache files the scripts make first are made in TestCourier.
const courierStart = `set -a
prefix=/usr
exec_prefix=/usr
sbindir=/usr/sbin
bindir=/usr/bin
libexecdir=/usr/lib/courier
. /etc/courier/$1
. /etc/courier/$1-ssl
case $1 in
imapd) if test ! -z "$IMAP_ULIMITD"; then ulimit -v $IMAP_ULIMITD; fi ;;
esac
case $2 in
plain) IMAP_STARTTLS=${IMAPDSTARTTLS:-}; tls= ;;
tls) IMAP_TLS=1; POP3_TLS=1; tls="$COURIERTLS -server -tcpd -user=courier" ;;
# Debian's own IMAP_ULIMITD, as before the README's snippet.
lowlimit) ulimit -v 131072; IMAP_STARTTLS=${IMAPDSTARTTLS:-}; tls= ;;
# The login program itself, not the shim in its place: no stage.
nostage-plain) IMAP_STARTTLS=${IMAPDSTARTTLS:-}; tls= ;;
nostage-tls) IMAP_TLS=1; POP3_TLS=1; tls="$COURIERTLS -server -tcpd -user=courier" ;;
esac
case $1 in
imapd) login="/usr/lib/courier/courier/imaplogin /usr/bin/imapd" ;;
pop3d) login="/usr/lib/courier/courier/courierpop3login /usr/lib/courier/courier/courierpop3d" ;;
esac
case $2 in
nostage-*) login=$(echo $login | sed 's/login /login.poprelay /') ;;
esac
exec /usr/sbin/couriertcpd -address=127.0.0.1 -maxprocs=$MAXDAEMONS -maxperip=$MAXPERIP $TCPDOPTS $3 $tls $login ${MAILDIRPATH}
`

// TestCourier: Debian 12's Courier-IMAP and Courier POP3, installed in an
// isolated root with dpkg, poprelay with scripts/install, the shim put in
// place by README.md's snippet (dpkg-divert). A system user and a virtual
// user of authuserdb log in with real passwords. Over plain POP3 and IMAP
// the login, run as the mail user (untrusted), is recorded with the full
// address AUTHENTICATED names: standard input is the connection
// couriertcpd accepted. Over imaps, pop3s and IMAP STARTTLS standard input
// is couriertls's socketpair: nothing is recorded for the system user, with
// one line saying why, while the virtual user whose userdb group is
// poprelay (the trusted route) is recorded. The sessions work after the
// login (SELECT, STAT: the shim ran the real imapd and courierpop3d), a
// wrong password records nothing, and the grants relay through a real
// tcpserver -x after relayctl rebuild, the refused ones do not. The
// imapd services run under the start scripts' ulimit -v IMAP_ULIMITD, as
// the README's snippet sets it; one under Debian's own 131072 KB, where
// the Go wrapper could not start, logs in unrecorded, the shim saying why.
func TestCourier(t *testing.T) {
	if !isolatedBody(t, func(r *isoRoot) []string {
		r.Copy(courierDebs(t), "/courier-debs")
		return nil
	}) {
		return
	}
	// In the isolated root: Courier replaces Dovecot as apt would, its
	// services kept from starting.
	runSh(t, `printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
chmod 755 /usr/sbin/policy-rc.d
dpkg -r --force-depends dovecot-imapd dovecot-pop3d >/dev/null 2>&1 || true
dpkg --unpack --force-depends --force-unsafe-io --no-triggers /courier-debs/*.deb >/dev/null
# What configuring the packages does and this test needs: the
# conffiles in place, the user courier and the run directories
# (courier-base's postinst also makes dhparams and certificates with
# gnutls-bin's certtool).
for f in $(find /etc -name '*.dpkg-new'); do mv "$f" "${f%.dpkg-new}"; done
adduser --quiet --system --group --no-create-home --home /var/lib/courier courier
install -d -o root -g courier -m 0775 /run/courier
install -d -o courier -g courier -m 0750 /run/courier/authdaemon /var/lib/courier
ldconfig
# The program after the login is fixed in Debian's start scripts.
for f in imapd imapd-ssl; do grep -q '/usr/bin/imapd ${MAILDIRPATH}"$' /usr/lib/courier/$f; done
for f in pop3d pop3d-ssl; do grep -q 'courier/courierpop3d ${MAILDIRPATH}"$' /usr/lib/courier/$f; done
/src/scripts/install >/dev/null
`)
	runSh(t, readmeSnippet(t, "courier"))
	for _, p := range []string{"/usr/bin/imapd", "/usr/lib/courier/courier/courierpop3d", "/usr/lib/courier/courier/imaplogin", "/usr/lib/courier/courier/courierpop3login"} {
		if l, err := os.Readlink(p); err != nil || l != "/usr/local/share/poprelay/courier-login" {
			t.Fatalf("%s: %q, %v; want the shim", p, l, err)
		}
	}

	// A system user and a virtual one (the uid vmail, the group
	// poprelay: no one else runs as them), both in authuserdb.
	cert := t.TempDir()
	dvTLSCert(t, cert)
	runSh(t, `useradd -m alice
useradd -r -M -d /var/vmail -g poprelay vmail
install -d -o vmail -g poprelay -m 0700 /var/vmail
maildirmake.courier /home/alice/Maildir && chown -R alice: /home/alice/Maildir
su -s /bin/sh vmail -c 'maildirmake.courier /var/vmail/bob'
userdb alice@example.com set uid=$(id -u alice) gid=$(id -g alice) home=/home/alice mail=/home/alice/Maildir
echo secret | userdbpw -md5 | userdb alice@example.com set systempw
userdb bob@example.com set uid=$(id -u vmail) gid=$(getent group poprelay | cut -d: -f3) home=/var/vmail mail=/var/vmail/bob
echo hidden | userdbpw -md5 | userdb bob@example.com set systempw
makeuserdb
sed -i 's/^authmodulelist=.*/authmodulelist="authuserdb"/' /etc/courier/authdaemonrc
# What the start scripts do before they start couriertcpd: the TLS
# session cache files, courier's (couriertls runs as courier).
for s in imapd pop3d; do
	f=$(set +u; . /etc/courier/$s-ssl; echo "$TLS_CACHEFILE")
	rm -f "$f"; touch "$f"; chown courier:courier "$f"; chmod 600 "$f"
done
# A spool of the test's (the root may hold a live install's), named
# where the docs say: the start scripts export what these files set.
install -d -g poprelay -m 2770 /var/spool/poprelay-courier
for s in imapd pop3d; do
	echo POPRELAY_SPOOL=/var/spool/poprelay-courier >>/etc/courier/$s
done
for s in imapd pop3d; do
	cat "$1/key.pem" "$1/cert.pem" > /etc/courier/$s.pem
	chown root:courier /etc/courier/$s.pem
	chmod 0640 /etc/courier/$s.pem
done
`, cert)
	start(t, baseEnv(), false, "/bin/sh", "-c", "set -a; . /etc/courier/authdaemonrc; exec /usr/lib/courier/courier-authlib/authdaemond")
	wait.For(t, "authdaemond's socket", func() bool {
		_, err := os.Stat("/run/courier/authdaemon/socket")
		return err == nil
	})

	// The four services on ports of the test's, which the ports file
	// lists (on 110, 143, 993 and 995 it needs none).
	type svc struct{ conf, mode string }
	ports := map[svc]int{}
	var list strings.Builder
	for _, s := range []svc{{"imapd", "plain"}, {"imapd", "tls"}, {"pop3d", "plain"}, {"pop3d", "tls"}, {"imapd", "lowlimit"}, {"imapd", "nostage-plain"}, {"imapd", "nostage-tls"}} {
		ports[s] = freePort(t)
		fmt.Fprintf(&list, "%d\n", ports[s])
	}
	dvWriteFile(t, "/etc/poprelay/ports", 0o644, list.String())
	logs := map[svc]*courierLog{}
	for s, port := range ports {
		l := &courierLog{t: t, name: s.conf + "-" + s.mode}
		_, stderr := start(t, []string{}, true, "/bin/sh", "-c", courierStart, "sh", s.conf, s.mode, fmt.Sprint(port))
		go l.read(stderr)
		logs[s] = l
	}
	for s, port := range ports {
		waitListening(t, s.conf+" "+s.mode, port)
	}

	imapLogin := func(src string, s svc, user, pass string, starttls bool) bool {
		t.Helper()
		m := dvDial(t, src, ports[s], strings.HasSuffix(s.mode, "tls"))
		if starttls {
			m.startTLS()
		}
		if r := m.imap("a", "LOGIN "+user+" "+pass); !strings.HasPrefix(r, "a OK") {
			return false
		}
		if r := m.imap("b", "SELECT INBOX"); !strings.HasPrefix(r, "b OK") {
			t.Errorf("IMAP from %s: SELECT INBOX after the login: %q\n%s", src, r, m.tx.String())
		}
		m.imap("c", "LOGOUT")
		return true
	}
	popLogin := func(src string, s svc, user, pass string) bool {
		t.Helper()
		m := dvDial(t, src, ports[s], strings.HasSuffix(s.mode, "tls"))
		if r := m.pop3("USER " + user); !strings.HasPrefix(r, "+OK") {
			t.Fatalf("USER: %q\n%s", r, m.tx.String())
		}
		if r := m.pop3("PASS " + pass); !strings.HasPrefix(r, "+OK") {
			return false
		}
		if r := m.pop3("STAT"); !strings.HasPrefix(r, "+OK ") {
			t.Errorf("POP3 from %s: STAT after the login: %q\n%s", src, r, m.tx.String())
		}
		m.pop3("QUIT")
		return true
	}
	imap, imaps := svc{"imapd", "plain"}, svc{"imapd", "tls"}
	pop3, pop3s := svc{"pop3d", "plain"}, svc{"pop3d", "tls"}
	const spool = "/var/spool/poprelay-courier"

	aliceUID := strings.TrimSpace(runSh(t, "id -u alice"))
	vmailUID := strings.TrimSpace(runSh(t, "id -u vmail"))
	poprelayGID := strings.TrimSpace(runSh(t, "getent group poprelay | cut -d: -f3"))
	// wantGrant checks the audit line (with uid, the stage's) and the
	// grant of a login from ip.
	wantGrant := func(s svc, ip, user, service, uid string) {
		t.Helper()
		want := fmt.Sprintf("checkpassword-wrap: ip=%s user=%s service=%s", ip, user, service)
		if uid != "" {
			want += " uid=" + uid
		}
		if l, ok := logs[s].wait("ip=" + ip + " "); !ok || l != want {
			t.Errorf("%s %s: audit line %q, want %q", s.conf, s.mode, l, want)
		}
		g := dvGrant(t, spool, ip)
		if g == nil || g["user"] != user || g["service"] != service {
			t.Errorf("grant for %s: %v, want user=%s service=%s (spool: %v)", ip, g, user, service, dvSpoolNames(t, spool))
		}
	}

	// With the stage before the login (imaplogin and courierpop3login
	// diverted): every login of the system user is recorded, with the
	// full address, for the address couriertcpd gave the stage: plain
	// POP3 and IMAP, imaps and pop3s through couriertls, and STARTTLS.
	if !popLogin("127.0.0.2", pop3, "alice@example.com", "secret") {
		t.Fatal("POP3 login refused")
	}
	wantGrant(pop3, "127.0.0.2", "alice@example.com", "pop3", aliceUID)
	if !imapLogin("127.0.0.3", imap, "alice@example.com", "secret", false) {
		t.Fatal("IMAP login refused")
	}
	wantGrant(imap, "127.0.0.3", "alice@example.com", "imap", aliceUID)
	// A wrong password: no login, nothing recorded, nothing said.
	if imapLogin("127.0.0.8", imap, "alice@example.com", "wrong", false) || popLogin("127.0.0.8", pop3, "alice@example.com", "wrong") {
		t.Error("a wrong password logged in")
	}
	if !imapLogin("127.0.0.4", imaps, "alice@example.com", "secret", false) {
		t.Fatal("imaps login refused")
	}
	wantGrant(imaps, "127.0.0.4", "alice@example.com", "imap", aliceUID)
	if !popLogin("127.0.0.5", pop3s, "alice@example.com", "secret") {
		t.Fatal("pop3s login refused")
	}
	wantGrant(pop3s, "127.0.0.5", "alice@example.com", "pop3", aliceUID)
	// STARTTLS on the IMAP port: imaplogin starts couriertls on a
	// socketpair of its own.
	if !imapLogin("127.0.0.7", imap, "alice@example.com", "secret", true) {
		t.Fatal("IMAP STARTTLS login refused")
	}
	wantGrant(imap, "127.0.0.7", "alice@example.com", "imap", aliceUID)
	if !popLogin("127.0.0.9", pop3s, "bob@example.com", "hidden") {
		t.Fatal("pop3s login of the virtual user refused")
	}
	wantGrant(pop3s, "127.0.0.9", "bob@example.com", "pop3", vmailUID)

	// Without the stage (imaplogin itself): plain IMAP is recorded by
	// the wrapper alone (standard input is the connection couriertcpd
	// accepted); over couriertls standard input is a socketpair, and the
	// system user's login is not recorded, in one line that says why.
	plain0, tls0 := svc{"imapd", "nostage-plain"}, svc{"imapd", "nostage-tls"}
	if !imapLogin("127.0.0.11", plain0, "alice@example.com", "secret", false) {
		t.Fatal("IMAP login without the stage refused")
	}
	wantGrant(plain0, "127.0.0.11", "alice@example.com", "imap", "")
	if !imapLogin("127.0.0.12", tls0, "alice@example.com", "secret", false) {
		t.Fatal("imaps login without the stage refused")
	}
	if l, ok := logs[tls0].wait("not recording ip=127.0.0.12 "); !ok || l != fmt.Sprintf("checkpassword-wrap: warning: not recording ip=127.0.0.12 user=alice@example.com service=imap: standard input is not a TCP socket but a UNIX socket (a TLS front end such as couriertls or sslserver in between?) and uid %s is neither root nor in group %s, so nothing proves the login came from 127.0.0.12: put a stage before the login or run the chain in the group (TLS FRONT ENDS in checkpassword-wrap(8))", aliceUID, poprelayGID) {
		t.Errorf("imaps without the stage: stderr line %q", l)
	}
	// The trusted route: the virtual user's chain runs in the group
	// poprelay, so couriertcpd's TCPREMOTEIP stands.
	if !imapLogin("127.0.0.6", tls0, "bob@example.com", "hidden", false) {
		t.Fatal("imaps login of the virtual user refused")
	}
	wantGrant(tls0, "127.0.0.6", "bob@example.com", "imap", "")

	// Under Debian's ulimit -v for imapd the Go wrapper could not start:
	// the shim says so in one line, and the login goes on unrecorded.
	low := svc{"imapd", "lowlimit"}
	if !imapLogin("127.0.0.10", low, "alice@example.com", "secret", false) {
		t.Fatal("IMAP login under Debian's IMAP_ULIMITD refused")
	}
	if l, ok := logs[low].wait("courier-login:"); !ok || l != "courier-login: warning: not recording the login: the address space limit (ulimit -v 131072 KB; IMAP_ULIMITD in /etc/courier/imapd) is below the 1048576 KB checkpassword-wrap needs" {
		t.Errorf("under ulimit -v 131072: %q", l)
	}

	// A shell user cannot be a stage: run by alice, --before-login
	// says so and runs the program, which records nothing.
	out := runSh(t, `su -s /bin/sh alice -c 'TCPREMOTEIP=192.0.2.50 POPRELAY_SPOOL=`+spool+` /usr/local/bin/checkpassword-wrap --before-login /usr/local/bin/checkpassword-wrap /bin/true' 2>&1 </dev/null`)
	if !strings.Contains(out, "checkpassword-wrap: warning: --before-login: uid "+aliceUID+" is neither root nor in group "+poprelayGID+", so its word on the client counts for nothing: running /usr/local/bin/checkpassword-wrap without a stage\n") ||
		!strings.Contains(out, "not recording ip=192.0.2.50 user=alice service=pop3: standard input is not a TCP socket") {
		t.Errorf("--before-login run by alice:\n%s", out)
	}

	dvWantSpool(t, spool, "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6", "127.0.0.7", "127.0.0.9", "127.0.0.11")
	for s, l := range logs {
		if n := l.count("checkpassword-wrap:"); n != map[svc]int{imap: 2, imaps: 1, pop3: 1, pop3s: 2, low: 0, plain0: 1, tls0: 2}[s] {
			t.Errorf("%s %s: %d lines of checkpassword-wrap", s.conf, s.mode, n)
		}
	}

	// The grants relay through a real tcpserver -x; the refused do not.
	wantRelays(t, spool, map[string]bool{"127.0.0.2": true, "127.0.0.3": true, "127.0.0.4": true, "127.0.0.5": true,
		"127.0.0.6": true, "127.0.0.7": true, "127.0.0.9": true, "127.0.0.11": true,
		"127.0.0.8": false, "127.0.0.10": false, "127.0.0.12": false})
}
