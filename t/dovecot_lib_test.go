package t

import (
	"bufio"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/poprelay/poprelay/internal/wait"
)

// The Dovecot tests run a real Dovecot 2.3 (Debian's dovecot-core,
// dovecot-pop3d, dovecot-imapd) from a complete configuration in a temp
// dir, never the system service, with listeners on 127.0.0.1 and ports
// chosen at run time. The mail user is nobody (65534): Dovecot refuses to
// run a mail session as root.
const (
	dvMailUID = 65534
	dvUser    = "alice"
	dvPass    = "secret"
)

// dovecotCommon is the part of dovecot.conf every test shares. @POP3@,
// @IMAP@, @POP3S@ and @SPARE@ (ports) and the paths of dovecotDir.expand
// are replaced when Dovecot starts. imaps is switched off, so nothing
// binds a fixed port.
const dovecotCommon = `# poprelay end-to-end test: a private Dovecot, not the system service.
base_dir = @DIR@/run
state_dir = @DIR@/state
log_path = @DIR@/dovecot.log
protocols = pop3 imap
listen = 127.0.0.1
disable_plaintext_auth = no
auth_mechanisms = plain login
# A wrong password is answered after about 0.5 s (default: 2 s).
auth_failure_delay = 0
# Dovecot's own accounts (Debian creates both); the master runs as root.
default_internal_user = dovecot
default_login_user = dovenull
mail_location = maildir:~/Maildir
# TLS on the pop3s port and by STARTTLS: then the mail process (and the
# post-login script) gets a UNIX socket to the TLS-terminating login
# process, not the client's TCP socket.
ssl = yes
ssl_cert = <@DIR@/cert.pem
ssl_key = <@DIR@/key.pem

service pop3-login {
  inet_listener pop3 {
    address = 127.0.0.1
    port = @POP3@
  }
  inet_listener pop3s {
    address = 127.0.0.1
    port = @POP3S@
    ssl = yes
  }
}
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = @IMAP@
  }
  inet_listener imaps {
    port = 0
  }
}
`

// dovecotDir is one Dovecot test's directory, readable by Dovecot's own
// accounts: the wrapper, the test checkpassword and scripts are copied or
// written here because the test binaries' directory is private to root.
type dovecotDir struct {
	Dir   string // everything lives under here
	Spool string // the grant spool, root:Group 2770
	Wrap  string // the real checkpassword-wrap, copied here
	Users string // passwd-file with alice
	Home  string // alice's home (owned by the mail user)
	Group string // the spool's group, standing for poprelay
	gid   int

	internalUID, internalGID int // default_internal_user (dovecot)
}

// setupDovecot checks that Dovecot can run here (root, the binaries, its
// accounts, our wrapper) and prepares a directory for it. Missing Dovecot
// skips the test visibly, except in CI where it fails.
func setupDovecot(t *testing.T) *dovecotDir {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("the Dovecot tests must run as root in CI (Dovecot's master must run as root)")
		}
		t.Skip("SKIP: the Dovecot tests need root (Dovecot's master runs as root)")
	}
	need(t, "dovecot")
	need(t, "doveadm")
	need(t, "script-login")        // /usr/lib/dovecot, dovecot-core
	need(t, "checkpassword-reply") // /usr/lib/dovecot, dovecot-core
	need(t, "pop3")                // dovecot-pop3d
	need(t, "imap")                // dovecot-imapd
	internal := dvLookupUser(t, "dovecot")
	dvLookupUser(t, "dovenull")

	wrap := bin("checkpassword-wrap")
	if _, err := os.Stat(wrap); err != nil {
		t.Fatalf("checkpassword-wrap was not built (%v); the Dovecot tests run the real one", err)
	}

	dir := t.TempDir()
	// t.TempDir's directories are 0700; Dovecot's accounts and the mail
	// user must reach what is inside.
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0755); err != nil {
			t.Fatal(err)
		}
	}
	d := &dovecotDir{
		Dir:         dir,
		Spool:       filepath.Join(dir, "spool"),
		Wrap:        filepath.Join(dir, "bin", "checkpassword-wrap"),
		Users:       filepath.Join(dir, "users"),
		Home:        filepath.Join(dir, "home", dvUser),
		internalUID: internal[0],
		internalGID: internal[1],
	}
	dvMkdir(t, filepath.Dir(d.Wrap), 0755)
	dvCopyFile(t, wrap, d.Wrap, 0755)
	d.spoolGroup(t)
	for _, sub := range []string{"run", "state", "home"} {
		dvMkdir(t, filepath.Join(dir, sub), 0755)
	}
	dvMkdir(t, d.Home, 0700)
	if err := os.Chown(d.Home, dvMailUID, dvMailUID); err != nil {
		t.Fatal(err)
	}
	dvWriteFile(t, d.Users, 0644, fmt.Sprintf("%s:{PLAIN}%s:%d:%d::%s::\n",
		dvUser, dvPass, dvMailUID, dvMailUID, d.Home))
	dvTLSCert(t, dir)
	return d
}

// expand replaces @DIR@, @WRAP@, @SPOOL@, @USERS@, @HOME@ and @GROUP@ in
// s by the paths and the group of d.
func (d *dovecotDir) expand(s string) string {
	return strings.NewReplacer("@DIR@", d.Dir, "@WRAP@", d.Wrap,
		"@SPOOL@", d.Spool, "@USERS@", d.Users, "@HOME@", d.Home,
		"@GROUP@", d.Group).Replace(s)
}

// script writes an executable helper (expanded) into d and returns its path.
func (d *dovecotDir) script(t *testing.T, name, text string) string {
	t.Helper()
	p := filepath.Join(d.Dir, name)
	dvWriteFile(t, p, 0755, d.expand(text))
	return p
}

// spoolGroup sets up the production privilege model (docs/dovecot.md):
// the wrapper setgid to the spool's group (poprelay), the spool
// root:poprelay 2770, and Dovecot's services that run the wrapper given
// that group with extra_groups, because there the wrapper's standard input
// is not always the client's TCP socket (TLS, the checkpassword chain) and
// it records only for a caller in the spool's group. Dovecot wants a group
// name, and the test must not create one: it uses poprelay if the package
// is installed, else an existing system group that default_internal_user
// is not in.
func (d *dovecotDir) spoolGroup(t *testing.T) {
	t.Helper()
	internal, err := user.Lookup("dovecot")
	if err != nil {
		t.Fatal(err)
	}
	in, _ := internal.GroupIds()
	for _, name := range []string{"poprelay", "news", "uucp", "mail"} {
		g, err := user.LookupGroup(name)
		if err != nil || slices.Contains(in, g.Gid) {
			continue
		}
		d.Group = name
		d.gid, _ = strconv.Atoi(g.Gid)
		break
	}
	if d.Group == "" {
		t.Fatal("no system group to stand for poprelay (tried poprelay, news, uucp, mail)")
	}
	if err := os.Chown(d.Wrap, 0, d.gid); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(d.Wrap, 0755|os.ModeSetgid); err != nil {
		t.Fatal(err)
	}
	// Only dovecot (and root) may reach the setgid copy: no other local
	// user gets a program setgid to a system group for the test's length.
	binDir := filepath.Dir(d.Wrap)
	if err := os.Chown(binDir, d.internalUID, d.internalGID); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(binDir, 0500); err != nil {
		t.Fatal(err)
	}
	dvMkdir(t, d.Spool, 0770)
	if err := os.Chown(d.Spool, 0, d.gid); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(d.Spool, 0770|os.ModeSetgid); err != nil {
		t.Fatal(err)
	}
}

// dvLookupUser returns the uid and gid of a system account Dovecot needs.
func dvLookupUser(t *testing.T, name string) [2]int {
	t.Helper()
	u, err := user.Lookup(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("user %s is missing; the dovecot-core package creates it", name)
		}
		t.Skipf("SKIP: user %s is missing (dovecot-core creates it)", name)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return [2]int{uid, gid}
}

// dovecotServer is a running private Dovecot.
type dovecotServer struct {
	Conf              string
	Log               string
	POP3, IMAP, POP3S int
	Spare             int // a fourth free port, @SPARE@ in the config
	Cmd               *exec.Cmd
}

// startDovecot writes dovecot.conf (dovecotCommon plus conf, the route
// under test; @WRAP@, @SPOOL@, @USERS@, @HOME@ and @DIR@ are replaced by
// the paths of d) and runs "dovecot -F -c dovecot.conf" in its own process
// group, killed by PID when the test ends. It returns once the POP3 and
// IMAP ports greet. The log is shown if the test fails.
func startDovecot(t *testing.T, d *dovecotDir, env []string, conf string) *dovecotServer {
	t.Helper()
	dovecot := need(t, "dovecot")
	dv := &dovecotServer{
		Conf: filepath.Join(d.Dir, "dovecot.conf"),
		Log:  filepath.Join(d.Dir, "dovecot.log"),
	}
	dv.launch(t, func(ports *strings.Replacer) string {
		return d.expand(ports.Replace(dovecotCommon + conf))
	}, env, dovecot, "-F", "-c", dv.Conf)
	return dv
}

// launch picks ports, writes dv.Conf (config, given a replacer of @POP3@,
// @IMAP@, @POP3S@ and @SPARE@), runs argv in its own process group
// (killed by PID when the test ends) and returns once the POP3 and IMAP
// ports greet; up to three tries, in case a port was taken meanwhile. The
// log (dv.Log) is shown if the test fails.
func (dv *dovecotServer) launch(t *testing.T, config func(ports *strings.Replacer) string, env []string, argv ...string) {
	t.Helper()
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(dv.Log)
			t.Logf("%s:\n%s", dv.Log, b)
		}
	})
	for try := 0; try < 3; try++ {
		// POP3 and IMAP on privileged ports, as 110 and 143 are: an
		// untrusted wrapper records only a connection accepted there.
		priv := freePrivPorts(t, 2)
		dv.POP3, dv.IMAP, dv.POP3S, dv.Spare = priv[0], priv[1], freePort(t), freePort(t)
		r := strings.NewReplacer("@POP3@", fmt.Sprint(dv.POP3),
			"@IMAP@", fmt.Sprint(dv.IMAP), "@POP3S@", fmt.Sprint(dv.POP3S),
			"@SPARE@", fmt.Sprint(dv.Spare))
		dvWriteFile(t, dv.Conf, 0644, config(r))
		os.Remove(dv.Log)
		cmd, _ := start(t, env, false, argv[0], argv[1:]...)
		dv.Cmd = cmd
		err := dv.waitReady(t)
		if err == nil {
			return
		}
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		b, _ := os.ReadFile(dv.Log)
		t.Logf("dovecot did not start (%v); log:\n%s", err, b)
	}
	t.Fatal("dovecot would not start")
}

// waitReady waits until the POP3 and IMAP listeners greet, or Dovecot
// logs a fatal error (returned: the caller tries other ports).
func (dv *dovecotServer) waitReady(t testing.TB) error {
	var err error
	wait.For(t, "Dovecot to greet on POP3 and IMAP", func() bool {
		if b, _ := os.ReadFile(dv.Log); strings.Contains(string(b), "Fatal:") {
			err = fmt.Errorf("fatal error in log")
			return true
		}
		return dvGreets(dv.POP3, "+OK") && dvGreets(dv.IMAP, "* OK")
	})
	return err
}

// dvGreets reports whether 127.0.0.1:port answers with a line starting
// with prefix.
func dvGreets(port int, prefix string) bool {
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	line, _ := bufio.NewReader(c).ReadString('\n')
	return strings.HasPrefix(line, prefix)
}

// logText returns Dovecot's log so far.
func (dv *dovecotServer) logText() string {
	b, _ := os.ReadFile(dv.Log)
	return string(b)
}

// dvConn is a client connection from a bound 127.0.0.x source address.
type dvConn struct {
	t  *testing.T
	c  net.Conn
	r  *bufio.Reader
	tx strings.Builder // transcript, for failure messages
}

// dvDial connects to 127.0.0.1:port from src, optionally over TLS
// (implicit, as on the pop3s port), and returns after the greeting.
func dvDial(t *testing.T, src string, port int, useTLS bool) *dvConn {
	t.Helper()
	c, err := connectFrom(src, port)
	if err != nil {
		t.Fatalf("dial from %s: %v", src, err)
	}
	if useTLS {
		c = tls.Client(c, &tls.Config{InsecureSkipVerify: true})
	}
	m := &dvConn{t: t, c: c, r: bufio.NewReader(c)}
	t.Cleanup(func() { c.Close() })
	m.line()
	return m
}

// dvDialProxied connects from src (the proxy) to a listener with
// "haproxy = yes", announces client as the real client in a PROXY v1
// header, and returns after the greeting.
func dvDialProxied(t *testing.T, src string, port int, client string) *dvConn {
	t.Helper()
	c, err := connectFrom(src, port)
	if err != nil {
		t.Fatalf("dial from %s: %v", src, err)
	}
	fmt.Fprintf(c, "PROXY TCP4 %s 127.0.0.1 40000 %d\r\n", client, port)
	m := &dvConn{t: t, c: c, r: bufio.NewReader(c)}
	t.Cleanup(func() { c.Close() })
	m.line()
	return m
}

// startTLS switches an IMAP connection to TLS with STARTTLS.
func (m *dvConn) startTLS() {
	m.t.Helper()
	if r := m.imap("s", "STARTTLS"); !strings.HasPrefix(r, "s OK") {
		m.t.Fatalf("STARTTLS: %q\n%s", r, m.tx.String())
	}
	m.c = tls.Client(m.c, &tls.Config{InsecureSkipVerify: true})
	m.r = bufio.NewReader(m.c)
}

// line reads one response line.
func (m *dvConn) line() string {
	m.t.Helper()
	s, err := m.r.ReadString('\n')
	m.tx.WriteString("S: " + s)
	if err != nil {
		m.t.Fatalf("reading from server: %v\n%s", err, m.tx.String())
	}
	return strings.TrimRight(s, "\r\n")
}

// send writes one command line.
func (m *dvConn) send(cmd string) {
	m.t.Helper()
	m.tx.WriteString("C: " + cmd + "\n")
	if _, err := io.WriteString(m.c, cmd+"\r\n"); err != nil {
		m.t.Fatalf("writing %q: %v\n%s", cmd, err, m.tx.String())
	}
}

// pop3 sends a POP3 command and returns its one-line answer.
func (m *dvConn) pop3(cmd string) string {
	m.t.Helper()
	m.send(cmd)
	return m.line()
}

// imap sends a tagged IMAP command and returns the tagged answer.
func (m *dvConn) imap(tag, cmd string) string {
	m.t.Helper()
	m.send(tag + " " + cmd)
	for {
		if l := m.line(); strings.HasPrefix(l, tag+" ") {
			return l
		}
	}
}

// dvPOP3 logs in over POP3 from src. With the right password it also
// checks that the session works (STAT answers +OK): the login chain
// really exec'd what follows the wrapper. It reports whether PASS was
// accepted.
func dvPOP3(t *testing.T, src string, port int, useTLS bool, pass string) bool {
	t.Helper()
	m := dvDial(t, src, port, useTLS)
	if r := m.pop3("USER " + dvUser); !strings.HasPrefix(r, "+OK") {
		t.Fatalf("USER: %q\n%s", r, m.tx.String())
	}
	if r := m.pop3("PASS " + pass); !strings.HasPrefix(r, "+OK") {
		m.pop3("QUIT")
		return false
	}
	if r := m.pop3("STAT"); !strings.HasPrefix(r, "+OK ") {
		t.Errorf("POP3 from %s: STAT after login: %q\n%s", src, r, m.tx.String())
	}
	m.pop3("QUIT")
	return true
}

// dvIMAP logs in over IMAP from src; with the right password it
// also selects INBOX. It reports whether LOGIN was accepted.
func dvIMAP(t *testing.T, src string, port int, pass string) bool {
	t.Helper()
	return dvIMAPConn(t, dvDial(t, src, port, false), src, pass)
}

// dvIMAPConn is dvIMAP on a connection already made.
func dvIMAPConn(t *testing.T, m *dvConn, src, pass string) bool {
	t.Helper()
	if r := m.imap("a", fmt.Sprintf("LOGIN %s %s", dvUser, pass)); !strings.HasPrefix(r, "a OK") {
		m.imap("z", "LOGOUT")
		return false
	}
	if r := m.imap("b", "SELECT INBOX"); !strings.HasPrefix(r, "b OK") {
		t.Errorf("IMAP from %s: SELECT INBOX after login: %q\n%s", src, r, m.tx.String())
	}
	m.imap("c", "LOGOUT")
	return true
}

// dvGrant reads the spool file for ip as key=value lines; nil if absent.
func dvGrant(t *testing.T, spool, ip string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(spool, ip))
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			m[k] = v
		}
	}
	return m
}

// dvWantGrant checks that ip was recorded for alice and service.
func dvWantGrant(t *testing.T, spool, ip, service string) {
	t.Helper()
	g := dvGrant(t, spool, ip)
	switch {
	case g == nil:
		t.Errorf("no grant for %s in the spool (%v)", ip, dvSpoolNames(t, spool))
	case g["user"] != dvUser || g["service"] != service:
		t.Errorf("grant for %s: user=%q service=%q, want user=%q service=%q (%v)",
			ip, g["user"], g["service"], dvUser, service, g)
	default:
		if sec, err := strconv.ParseInt(g["time"], 10, 64); err != nil || time.Since(time.Unix(sec, 0)).Abs() > time.Minute {
			t.Errorf("grant for %s: time=%q, want the login time (now)", ip, g["time"])
		}
	}
}

// dvSpoolNames lists the spool, sorted (temp files included).
func dvSpoolNames(t *testing.T, spool string) []string {
	t.Helper()
	ents, err := os.ReadDir(spool)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names
}

// dvWantSpool checks that the spool holds exactly these names: every grant
// expected, nothing else (no failed login, no lookup, no temp file).
func dvWantSpool(t *testing.T, spool string, want ...string) {
	t.Helper()
	sort.Strings(want)
	if got := dvSpoolNames(t, spool); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("spool holds %q, want %q", got, want)
	}
}

// dvTLSCert writes a throwaway self-signed cert.pem and key.pem.
func dvTLSCert(t *testing.T, dir string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	selfSigned(t, dir, key)
}

// selfSigned writes dir/cert.pem, a certificate for localhost and
// 127.0.0.1 that key signs itself, and dir/key.pem, key in PKCS #8.
func selfSigned(t *testing.T, dir string, key crypto.Signer) {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dvWriteFile(t, filepath.Join(dir, "cert.pem"), 0644,
		string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	dvWriteFile(t, filepath.Join(dir, "key.pem"), 0600,
		string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})))
}

func dvMkdir(t *testing.T, dir string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(dir, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, mode); err != nil {
		t.Fatal(err)
	}
}

func dvWriteFile(t *testing.T, name string, mode os.FileMode, text string) {
	t.Helper()
	if err := os.WriteFile(name, []byte(text), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(name, mode); err != nil {
		t.Fatal(err)
	}
}

func dvCopyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	dvWriteFile(t, to, mode, string(b))
}

// dvDoveadmUser runs "doveadm -c dovecot.conf user ARGS..." (a userdb
// lookup through the running Dovecot's auth service) and returns its
// output; it must succeed.
func dvDoveadmUser(t *testing.T, dv *dovecotServer, args ...string) string {
	t.Helper()
	doveadm := need(t, "doveadm")
	ctx, cancel := context.WithTimeout(context.Background(), wait.Patience) // a hang detector
	defer cancel()
	cmd := exec.CommandContext(ctx, doveadm, append([]string{"-c", dv.Conf, "user"}, args...)...)
	cmd.Env = baseEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("doveadm user %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// dvWantAudit checks that the wrapper's audit line (on its stderr, which
// Dovecot sends to its log; --log dovecot) names each recorded address at
// info level, and that Dovecot's log holds no error: a successful login
// is no error.
func dvWantAudit(t *testing.T, dv *dovecotServer, ips ...string) {
	t.Helper()
	log := dv.logText()
	for _, ip := range ips {
		if !strings.Contains(log, "Info: checkpassword-wrap: ip="+ip+" ") {
			t.Errorf("no audit line with ip=%s at info level in Dovecot's log", ip)
		}
	}
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "Error:") {
			t.Errorf("an error in Dovecot's log: %s", line)
		}
	}
}
