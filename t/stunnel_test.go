package t

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// stunnel is Debian 12's stunnel4 (5.68, scripts/deps installs it; no
// service of its runs: the package ships no configuration). Its exec
// mode, measured: the program gets a loopback TCP connection of
// stunnel's own on fds 0 and 1 (not the client's, not a socketpair),
// REMOTE_HOST and REMOTE_PORT (the client's) and stunnel's own
// environment, and runs with stunnel's user and group (root unless the
// configuration says setuid or setgid). Its stderr is stunnel's under
// foreground = yes; a daemon stunnel gives the program the client's
// connection as stderr.

// stunnelPop3d stands for qmail-pop3d: it prints the environment it got.
const stunnelPop3d = "#!/bin/sh\nexec /usr/bin/env\n"

// TestStunnel: a real stunnel in exec mode, as root, with README.md's
// configuration (its port the test's), runs checkpassword-wrap
// --before-login --remote-var REMOTE_HOST, then the qmail chain (the
// stand-ins of t/wrap_tcpserver_test.go for qmail-popup and checkpassword
// at qmail's paths; the checkpassword switches to the system user alice)
// with the setgid wrapper scripts/install put in. A POP3S login over TLS
// with the right password is recorded by the stage for REMOTE_HOST, with
// alice's uid; a wrong password records nothing. Without the stage the
// wrapper after the login (alice, outside the group) records nothing and
// says why in one line; with stunnel running as alice (setuid) the stage
// refuses in one line; alice running the stage herself with a forged
// REMOTE_HOST records nothing. The grant relays through a real
// tcpserver -x after relayctl rebuild; the rest do not. In an isolated
// root, for the user alice and scripts/install.
func TestStunnel(t *testing.T) {
	if !isolatedBody(t, nil) {
		return
	}
	stunnel := need(t, "stunnel4")
	const spool = "/var/spool/poprelay-stunnel"
	d, certDir, pool := frontEndSetup(t, spool, false)
	runSh(t, `cat "$1/key.pem" "$1/cert.pem" >/etc/stunnel/pop3s.pem
chmod 600 /etc/stunnel/pop3s.pem
`, certDir)
	runSh(t, readmeSnippet(t, "stunnel"))
	conf, err := os.ReadFile("/etc/poprelay/stunnel-pop3s.conf")
	if err != nil {
		t.Fatal(err)
	}
	aliceUID := strings.TrimSpace(runSh(t, "id -u alice"))
	aliceGID := strings.TrimSpace(runSh(t, "id -g alice"))
	poprelayGID := strings.TrimSpace(runSh(t, "getent group poprelay | cut -d: -f3"))

	// Three stunnels: README's; one that runs the chain without the
	// stage; one with setuid = alice (the stage then runs as alice).
	type inst struct {
		name string
		port int
		log  *courierLog
	}
	readme := &inst{name: "readme"}
	nostage := &inst{name: "nostage"}
	asAlice := &inst{name: "setuid"}
	const chain = "/var/qmail/bin/qmail-popup mail.example.com /bin/checkpassword /usr/local/bin/checkpassword-wrap /var/qmail/bin/qmail-pop3d Maildir"
	for _, in := range []*inst{readme, nostage, asAlice} {
		in.port = freePort(t)
		text := string(conf)
		switch in.name {
		case "nostage":
			text = "foreground = yes\npid =\n[pop3s]\naccept = 995\ncert = /etc/stunnel/pop3s.pem\nexec = /var/qmail/bin/qmail-popup\nexecArgs = " + strings.TrimPrefix(chain, "/var/qmail/bin/") + "\n"
		case "setuid":
			text = "setuid = alice\nsetgid = alice\n" + text
		}
		if strings.Count(text, "\naccept = 995\n") != 1 {
			t.Fatalf("no accept = 995 in the stunnel configuration:\n%s", text)
		}
		text = strings.Replace(text, "\naccept = 995\n", fmt.Sprintf("\naccept = 127.0.0.1:%d\n", in.port), 1)
		file := filepath.Join(d.Dir, in.name+".conf")
		dvWriteFile(t, file, 0o644, text)
		env := []string{"ERRLOG=" + d.ErrLog, "POPRELAY_SPOOL=" + spool}
		if in.name != "setuid" {
			// checkpassword switches to alice, as the real one does.
			env = append(env, "AS_USER="+aliceUID+":"+aliceGID)
		}
		in.log = &courierLog{t: t, name: "stunnel-" + in.name}
		_, stderr := start(t, baseEnv(env...), true, stunnel, file)
		go in.log.read(stderr)
	}
	for _, in := range []*inst{readme, nostage, asAlice} {
		if _, ok := in.log.wait("Configuration successful"); !ok {
			t.Fatalf("stunnel %s did not start", in.name)
		}
	}

	login := func(in *inst, src, pass string) map[string]string {
		t.Helper()
		return tlsLogin(t, in.port, src, pool, pass)
	}
	wantNoGrant := func(ip string) {
		t.Helper()
		if g := dvGrant(t, spool, ip); g != nil {
			t.Errorf("grant for %s: %v, want none", ip, g)
		}
	}

	// README's stunnel: the stage records for REMOTE_HOST.
	env := login(readme, "127.0.0.2", "secret")
	wantStaged(t, env, "REMOTE_HOST", "127.0.0.2", aliceUID, readme.log, spool, d)
	// A wrong password: no login, nothing recorded.
	if env := login(readme, "127.0.0.3", "wrong"); len(env) != 0 {
		t.Errorf("a wrong password logged in: %v", env)
	}
	if out := d.stderr(t); out != "popup: checkpassword exited 1\n" {
		t.Errorf("wrong password: the chain said %q", out)
	}
	wantNoGrant("127.0.0.3")

	// Without the stage: the wrapper after the login is alice's, its
	// standard input stunnel's loopback connection, and REMOTE_HOST
	// alice could have set: one line, nothing recorded.
	if env := login(nostage, "127.0.0.4", "secret"); env["USER"] != "alice" {
		t.Fatalf("POP3S login without the stage: %v", env)
	}
	if out := d.stderr(t); out != "checkpassword-wrap: warning: not recording user=alice service=pop3: no client address (TCPREMOTEIP and IP are unset; REMOTE_HOST=127.0.0.4 is stunnel's word, which counts only in a stage before the login: checkpassword-wrap --before-login --remote-var REMOTE_HOST, TLS FRONT ENDS in checkpassword-wrap(8))\n" {
		t.Errorf("without the stage: the chain said %q", out)
	}
	wantNoGrant("127.0.0.4")

	// stunnel running as alice: the stage is hers, so it is none.
	if env := login(asAlice, "127.0.0.5", "secret"); env["USER"] != "alice" {
		t.Fatalf("POP3S login through stunnel as alice: %v", env)
	}
	wantRefusal := fmt.Sprintf("checkpassword-wrap: warning: --before-login: uid %s is neither root nor in group %s, so its word on the client counts for nothing: running /var/qmail/bin/qmail-popup without a stage", aliceUID, poprelayGID)
	if l, ok := asAlice.log.wait("--before-login:"); !ok || l != wantRefusal {
		t.Errorf("stunnel as alice: %q, want %q", l, wantRefusal)
	}
	if out := d.stderr(t); !strings.Contains(out, "not recording user=alice service=pop3: no client address (TCPREMOTEIP and IP are unset; REMOTE_HOST=127.0.0.5 is stunnel's word") {
		t.Errorf("stunnel as alice: the chain said %q", out)
	}
	wantNoGrant("127.0.0.5")

	// alice as her own stage, with the address she likes.
	out := runSh(t, `su -s /bin/sh alice -c 'REMOTE_HOST=192.0.2.50 USER=alice POPRELAY_SPOOL=`+spool+` /usr/local/bin/checkpassword-wrap --before-login --remote-var REMOTE_HOST /usr/local/bin/checkpassword-wrap /bin/true' 2>&1 </dev/null`)
	if !strings.Contains(out, "checkpassword-wrap: warning: --before-login: uid "+aliceUID+" is neither root nor in group "+poprelayGID+", so its word on the client counts for nothing") ||
		!strings.Contains(out, "not recording user=alice service=pop3: no client address") {
		t.Errorf("--before-login run by alice:\n%s", out)
	}
	wantNoGrant("192.0.2.50")
	dvWantSpool(t, spool, "127.0.0.2")

	// The grant relays through a real tcpserver -x; the rest do not.
	wantRelays(t, spool, map[string]bool{"127.0.0.2": true, "127.0.0.3": false, "127.0.0.4": false, "127.0.0.5": false})
}

// frontEndSetup makes, in an isolated root, the system user alice,
// poprelay installed by scripts/install, the spool, and the qmail chain's
// stand-ins at qmail's paths (t/wrap_tcpserver_test.go's popup and
// checkpw: qmail-popup, /bin/checkpassword; qmail-pop3d prints its
// environment). It returns the chain's directory, a directory with a
// throwaway certificate for localhost (cert.pem, key.pem; an RSA key if
// rsaKey: ucspi-ssl loads no other) and a pool that trusts it.
func frontEndSetup(t *testing.T, spool string, rsaKey bool) (*wrDir, string, *x509.CertPool) {
	t.Helper()
	need(t, "tcpserver")
	need(t, "setpriv")
	d := wrSetup(t)
	runSh(t, `useradd -m alice
/src/scripts/install >/dev/null
install -d -g poprelay -m 2770 `+spool+`
install -d /var/qmail/bin /etc/stunnel
# qmail-popup's first argument is the host name; the stand-in takes none.
printf '#!/bin/sh\nshift\nexec %s "$@"\n' "$1" >/var/qmail/bin/qmail-popup
chmod 0755 /var/qmail/bin/qmail-popup
install -m 0755 "$2" /bin/checkpassword
`, d.Popup, d.Checkpw)
	dvWriteFile(t, "/var/qmail/bin/qmail-pop3d", 0o755, stunnelPop3d)
	certDir := t.TempDir()
	if rsaKey {
		rsaTLSCert(t, certDir)
	} else {
		dvTLSCert(t, certDir)
	}
	pool := x509.NewCertPool()
	if b, err := os.ReadFile(filepath.Join(certDir, "cert.pem")); err != nil || !pool.AppendCertsFromPEM(b) {
		t.Fatalf("the test's certificate: %v", err)
	}
	return d, certDir, pool
}

// tlsLogin logs in as alice over TLS from src (the certificate verified
// against pool) and returns what qmail-pop3d's stand-in printed: its
// environment.
func tlsLogin(t *testing.T, port int, src string, pool *x509.CertPool, pass string) map[string]string {
	t.Helper()
	c, err := connectFrom(src, port)
	if err != nil {
		t.Fatalf("dial %d from %s: %v", port, src, err)
	}
	defer c.Close()
	tc := tls.Client(c, &tls.Config{RootCAs: pool, ServerName: "localhost"})
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS with port %d from %s: %v", port, src, err)
	}
	io.WriteString(tc, "alice "+pass+"\n")
	out, _ := io.ReadAll(tc) // the server may close without close_notify
	return envFrom(string(out))
}

// rsaTLSCert writes a self-signed certificate for localhost with an RSA
// key in PKCS #1 form (cert.pem, key.pem).
func rsaTLSCert(t *testing.T, dir string) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	selfSigned(t, dir, key)
}

// wantRelays runs relayctl rebuild on spool and checks, through a real
// tcpserver -x on the CDB, which client addresses get RELAYCLIENT.
func wantRelays(t *testing.T, spool string, want map[string]bool) {
	t.Helper()
	dir := t.TempDir()
	rulesFile, cdb := filepath.Join(dir, "tcp.smtp"), filepath.Join(dir, "tcp.smtp.cdb")
	dvWriteFile(t, rulesFile, 0o644, ":allow\n")
	rb := exec.Command(bin("relayctl"), "rebuild")
	rb.Env = baseEnv("POPRELAY_SPOOL="+spool, "POPRELAY_RULES="+rulesFile, "POPRELAY_CDB="+cdb)
	if out, err := rb.CombinedOutput(); err != nil {
		t.Fatalf("relayctl rebuild: %v\n%s", err, out)
	}
	ts := startTcpserver(t, baseEnv(), []string{"-x", cdb, "-R", "-H"}, "/usr/bin/env")
	for src, relays := range want {
		env := envFrom(dialFrom(t, src, ts.Port, ""))
		if _, ok := env["RELAYCLIENT"]; ok != relays {
			t.Errorf("SMTP from %s: RELAYCLIENT set %v, want %v (%v)", src, ok, relays, env)
		}
	}
}

// wantStaged checks a POP3S login from ip through a stage before the
// login: qmail-pop3d ran as alice with the address in addrVar alone (no
// TCPREMOTEIP) and the stage's POPRELAY_LOGIN_FD, the stage's audit line
// names ip, alice and her uid, the spool holds alice's grant for ip, and
// the chain after the stage said nothing.
func wantStaged(t *testing.T, env map[string]string, addrVar, ip, uid string, log *courierLog, spool string, d *wrDir) {
	t.Helper()
	if env[addrVar] != ip || env["USER"] != "alice" || env["TCPREMOTEIP"] != "" || env["POPRELAY_LOGIN_FD"] != "23" {
		t.Fatalf("POP3S login: qmail-pop3d's environment %v; the chain said %q", env, d.stderr(t))
	}
	want := "checkpassword-wrap: ip=" + ip + " user=alice service=pop3 uid=" + uid
	if l, ok := log.wait("ip=" + ip + " "); !ok || l != want {
		t.Errorf("the stage's audit line %q, want %q", l, want)
	}
	if g := dvGrant(t, spool, ip); g == nil || g["user"] != "alice" || g["service"] != "pop3" {
		t.Errorf("grant for %s: %v", ip, g)
	}
	if out := d.stderr(t); out != "" {
		t.Errorf("the chain after the stage said %q", out)
	}
}
