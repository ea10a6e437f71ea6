package t

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// ucspi-ssl's sslserver is not in Debian, and CI fetches only Debian
// packages and Go modules, never source: TestSslserver runs the
// sslserver POPRELAY_SSLSERVER names (or one in PATH) and otherwise
// skips, saying what is missing, even under CI=true. That is the one
// documented exception to "a test that would skip fails in CI"
// (README, Testing). Measured with sslserver 0.95b (fehcom.de's
// ucspi-ssl-0.95b, built against Debian 12's OpenSSL 3 with the
// OpenSSL 1.1 accessors in ssl_env.c and without the obsolete temporary
// RSA key): the program gets pipes to sslserver on fds 0 and 1,
// SSLREMOTEIP always, TCPREMOTEIP only with -e, runs as root without -U,
// and its stderr is sslserver's. It loads RSA keys only.

// TestSslserver: a real sslserver, as root, with README.md's run script
// (its port the test's) running checkpassword-wrap --before-login
// --remote-var SSLREMOTEIP ahead of the qmail chain (the stand-ins of
// frontEndSetup; checkpassword switches to alice): a POP3S login over
// TLS is recorded by the stage for SSLREMOTEIP with alice's uid, a wrong
// password is not. Without the stage the wrapper after the login, as
// alice, records nothing and says why in one line: without -e it names
// SSLREMOTEIP, with -e (TCPREMOTEIP set) standard input is sslserver's
// pipe. The grant relays through a real tcpserver -x after relayctl
// rebuild; the rest do not.
func TestSslserver(t *testing.T) {
	if !isolatedBody(t, func(r *isoRoot) []string {
		ssl := os.Getenv("POPRELAY_SSLSERVER")
		if ssl == "" {
			ssl, _ = exec.LookPath("sslserver")
		}
		if ssl == "" {
			// Not t.Fatal under CI=true: see above.
			t.Skip("SKIP: no sslserver (ucspi-ssl is not in Debian, and CI fetches no source): build sslserver from ucspi-ssl's public source (fehcom.de, 0.95b or later) and set POPRELAY_SSLSERVER=/path/to/sslserver")
		}
		r.Copy(ssl, "/usr/local/bin/sslserver")
		return nil
	}) {
		return
	}
	const spool = "/var/spool/poprelay-sslserver"
	d, certDir, pool := frontEndSetup(t, spool, true)
	runSh(t, `install -d /var/qmail/control
cat "$1/key.pem" "$1/cert.pem" >/var/qmail/control/servercert.pem
chmod 600 /var/qmail/control/servercert.pem
`, certDir)
	runSh(t, readmeSnippet(t, "sslserver"))
	b, err := os.ReadFile("/var/qmail/supervise/pop3s/run")
	if err != nil {
		t.Fatal(err)
	}
	aliceUID := strings.TrimSpace(runSh(t, "id -u alice"))
	aliceGID := strings.TrimSpace(runSh(t, "id -g alice"))
	env := baseEnv("ERRLOG="+d.ErrLog, "POPRELAY_SPOOL="+spool, "AS_USER="+aliceUID+":"+aliceGID)

	// README's run script; sslserver without the stage, without and
	// with -e.
	type inst struct {
		name string
		port int
		log  *courierLog
	}
	readme, plain, withE := &inst{name: "readme"}, &inst{name: "nostage"}, &inst{name: "nostage-e"}
	const chain = "/var/qmail/bin/qmail-popup mail.example.com /bin/checkpassword /usr/local/bin/checkpassword-wrap /var/qmail/bin/qmail-pop3d Maildir"
	for _, in := range []*inst{readme, plain, withE} {
		in.port = freePort(t)
		run := string(b)
		switch in.name {
		case "nostage":
			run = "#!/bin/sh\nexec 2>&1\nexec env CERTFILE=/var/qmail/control/servercert.pem KEYFILE= DHFILE= sslserver -R -H 0 995 " + chain + "\n"
		case "nostage-e":
			run = "#!/bin/sh\nexec 2>&1\nexec env CERTFILE=/var/qmail/control/servercert.pem KEYFILE= DHFILE= sslserver -e -R -H 0 995 " + chain + "\n"
		}
		if strings.Count(run, " -R -H 0 995 ") != 1 {
			t.Fatalf("no sslserver -R -H 0 995 in the run script:\n%s", run)
		}
		run = strings.Replace(run, " -R -H 0 995 ", fmt.Sprintf(" -R -H 127.0.0.1 %d ", in.port), 1)
		file := d.Dir + "/" + in.name + ".run"
		dvWriteFile(t, file, 0o755, run)
		in.log = &courierLog{t: t, name: "sslserver-" + in.name}
		// daemontools gives the run script's output to multilog; here
		// both go to the test.
		_, stderr := start(t, env, true, "/bin/sh", "-c", `exec "$0" >&2`, file)
		go in.log.read(stderr)
	}
	for _, in := range []*inst{readme, plain, withE} {
		waitListening(t, "sslserver "+in.name, in.port)
	}
	wantNoGrant := func(ip string) {
		t.Helper()
		if g := dvGrant(t, spool, ip); g != nil {
			t.Errorf("grant for %s: %v, want none", ip, g)
		}
	}

	// README's: the stage records for SSLREMOTEIP.
	got := tlsLogin(t, readme.port, "127.0.0.2", pool, "secret")
	wantStaged(t, got, "SSLREMOTEIP", "127.0.0.2", aliceUID, readme.log, spool, d)
	if got := tlsLogin(t, readme.port, "127.0.0.3", pool, "wrong"); len(got) != 0 {
		t.Errorf("a wrong password logged in: %v", got)
	}
	if out := d.stderr(t); out != "popup: checkpassword exited 1\n" {
		t.Errorf("wrong password: the chain said %q", out)
	}
	wantNoGrant("127.0.0.3")

	// Without the stage: one line each, nothing recorded.
	if got := tlsLogin(t, plain.port, "127.0.0.4", pool, "secret"); got["USER"] != "alice" {
		t.Fatalf("POP3S login without the stage: %v", got)
	}
	if out := d.stderr(t); out != "checkpassword-wrap: warning: not recording user=alice service=pop3: no client address (TCPREMOTEIP and IP are unset; SSLREMOTEIP=127.0.0.4 is sslserver's word, which counts only in a stage before the login: checkpassword-wrap --before-login --remote-var SSLREMOTEIP, TLS FRONT ENDS in checkpassword-wrap(8))\n" {
		t.Errorf("without the stage: the chain said %q", out)
	}
	wantNoGrant("127.0.0.4")
	if got := tlsLogin(t, withE.port, "127.0.0.5", pool, "secret"); got["TCPREMOTEIP"] != "127.0.0.5" {
		t.Fatalf("POP3S login through sslserver -e: %v", got)
	}
	if out := d.stderr(t); !strings.Contains(out, "checkpassword-wrap: warning: not recording ip=127.0.0.5 user=alice service=pop3: standard input is not a TCP socket but a pipe (a TLS front end such as couriertls or sslserver in between?) and uid "+aliceUID+" is neither root nor in group") || strings.Count(out, "\n") != 1 {
		t.Errorf("sslserver -e without the stage: the chain said %q", out)
	}
	wantNoGrant("127.0.0.5")
	dvWantSpool(t, spool, "127.0.0.2")

	wantRelays(t, spool, map[string]bool{"127.0.0.2": true, "127.0.0.3": false, "127.0.0.4": false, "127.0.0.5": false})
}
