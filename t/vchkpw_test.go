package t

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// vpopmail is not in Debian (no vpopmail package in bookworm or trixie),
// so its vchkpw is a stand-in here that does what vchkpw.c (vpopmail
// 5.4) does around a login, read from its source: the login name and
// password from fd 3 (qmail-popup's "name\0pass\0"), parse_email splitting
// the name at the first of vpopmail's ATCHARS (@ % /) into a lower-cased
// user and domain (the default domain when none is given), on a correct
// password setgid/setuid to the domain's uid (vpopmail), USER=the user
// (the bare local part), HOME, SHELL=NOLOGIN and VPOPUSER=the name as the
// client gave it, then execvp of the rest. With --enable-roaming-users
// (ROAMING=1 here) open_smtp_relay also writes the client's address into
// ~vpopmail/etc/open-smtp and rebuilds the CDB with tcprules from
// tcp.smtp and open-smtp, as update_rules does.
const vchkpwStandIn = `#!/bin/bash
IFS= read -r -d '' name <&3 || exit 2
IFS= read -r -d '' pass <&3 || exit 2
exec 3<&-
user=${name%%[@%/]*}
domain=${name:${#user}+1}
user=${user,,} domain=${domain,,}
[ -n "$domain" ] || domain=example.com
[ "$user@$domain" = alice@example.com ] && [ "$pass" = secret ] || exit 3
if [ -n "${ROAMING:-}" ]; then
	now=$(date +%s)
	printf '%s:allow,RELAYCLIENT="",RBLSMTPD=""\t%s\n' "$TCPREMOTEIP" "$now" >>"$VPOPHOME/etc/open-smtp"
	{ cat "$VPOPRULES"; cut -f1 "$VPOPHOME/etc/open-smtp"; } | tcprules "$VPOPCDB" "$VPOPCDB.tmp"
fi
export USER="$user" HOME="$VPOPHOME/domains/$domain/$user" SHELL=NOLOGIN VPOPUSER="$name"
exec setpriv --reuid=vpopmail --regid=vchkpw --clear-groups -- "$@"
`

// TestVchkpw: the real wrapper after a vchkpw (the stand-in above) in a
// qmail-popup chain under a real tcpserver, run as vpopmail's uid as the
// real vchkpw runs it. The grant's user is the full address the client
// logged in with (VPOPUSER), not vchkpw's bare USER, and it relays
// through a real tcpserver -x after relayctl rebuild. Then with vpopmail's
// roaming users on (its open-smtp written and the CDB rebuilt by vchkpw
// itself at the login), relayctl rebuild and check warn in one line, and
// once open-smtp is older than the grant lifetime they no longer do. In
// an isolated root, for the users vpopmail and the group vchkpw.
func TestVchkpw(t *testing.T) {
	if !isolatedBody(t, nil) {
		return
	}
	need(t, "tcpserver")
	need(t, "tcprules")
	need(t, "setpriv")
	runSh(t, `groupadd vchkpw
useradd -g vchkpw -d /home/vpopmail -m vpopmail
install -d -o vpopmail -g vchkpw /home/vpopmail/etc /home/vpopmail/domains/example.com/alice
/src/scripts/install >/dev/null
`)
	d := wrSetup(t)
	vchkpw := filepath.Join(d.Dir, "vchkpw")
	dvWriteFile(t, vchkpw, 0o755, vchkpwStandIn)
	// The test's own spool, rules and CDB (the root may hold a live
	// install's); vpopmail's tcp.smtp is the same rules file.
	rules, cdb := filepath.Join(d.Dir, "tcp.smtp"), filepath.Join(d.Dir, "tcp.smtp.cdb")
	dvWriteFile(t, rules, 0o644, ":allow\n")
	const spool = "/var/spool/poprelay-vchkpw"
	runSh(t, "install -d -g poprelay -m 2770 "+spool)
	// Installed: setgid poprelay, run as vpopmail (untrusted); the port is
	// the admin's, in /etc/poprelay/ports.
	ts := launchTcpserver(t, need(t, "tcpserver"), "127.0.0.1", func() int {
		p := freePort(t)
		dvWriteFile(t, "/etc/poprelay/ports", 0o644, fmt.Sprintln(p))
		return p
	}, baseEnv("ERRLOG="+d.ErrLog, "POPRELAY_SPOOL="+spool, "VPOPHOME=/home/vpopmail", "VPOPRULES="+rules, "VPOPCDB="+cdb),
		[]string{"-R", "-H"}, d.Popup, vchkpw, "/usr/local/bin/checkpassword-wrap", "/usr/bin/env")
	login := func(src, name string) map[string]string {
		t.Helper()
		return envFrom(dialFrom(t, src, ts.Port, name+" secret\n"))
	}
	for _, tc := range []struct{ src, name, user string }{
		{"127.0.0.2", "alice@example.com", "alice@example.com"},
		{"127.0.0.3", "Alice%Example.COM", "Alice%Example.COM"},
		{"127.0.0.4", "alice", "alice"}, // the default domain: vchkpw knows no more
	} {
		env := login(tc.src, tc.name)
		if env["USER"] != "alice" || env["VPOPUSER"] != tc.name || env["SHELL"] != "NOLOGIN" {
			t.Fatalf("login as %s: the next program's environment %v", tc.name, env)
		}
		want := fmt.Sprintf("checkpassword-wrap: ip=%s user=%s service=pop3\n", tc.src, tc.user)
		if got := d.stderr(t); got != want {
			t.Errorf("login as %s: stderr %q, want %q", tc.name, got, want)
		}
		if g := dvGrant(t, spool, tc.src); g == nil || g["user"] != tc.user {
			t.Errorf("login as %s: grant %v, want user=%s", tc.name, g, tc.user)
		}
	}
	relayctl := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(bin("relayctl"), args...)
		cmd.Env = baseEnv("POPRELAY_RULES="+rules, "POPRELAY_CDB="+cdb, "POPRELAY_SPOOL="+spool)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("relayctl %q: %v\n%s", args, err, out)
		}
		return string(out)
	}
	if out := relayctl("rebuild"); out != "" {
		t.Errorf("relayctl rebuild without vpopmail's roaming users: %q", out)
	}
	smtp := startTcpserver(t, baseEnv(), []string{"-x", cdb, "-R", "-H"}, "/usr/bin/env")
	relays := func(src string) bool {
		_, ok := envFrom(dialFrom(t, src, smtp.Port, ""))["RELAYCLIENT"]
		return ok
	}
	if !relays("127.0.0.2") || relays("127.0.0.9") {
		t.Errorf("after relayctl rebuild: 127.0.0.2 relays %v, 127.0.0.9 %v", relays("127.0.0.2"), relays("127.0.0.9"))
	}

	// vpopmail's roaming users: its login rebuilds the CDB by itself,
	// and poprelay's grants are gone from it.
	ts.Cmd.Process.Kill()
	ts.Cmd.Wait()
	ts = launchTcpserver(t, need(t, "tcpserver"), "127.0.0.1", func() int {
		p := freePort(t)
		dvWriteFile(t, "/etc/poprelay/ports", 0o644, fmt.Sprintln(p))
		return p
	}, baseEnv("ERRLOG="+d.ErrLog, "POPRELAY_SPOOL="+spool, "VPOPHOME=/home/vpopmail", "VPOPRULES="+rules, "VPOPCDB="+cdb, "ROAMING=1"),
		[]string{"-R", "-H"}, d.Popup, vchkpw, "/usr/local/bin/checkpassword-wrap", "/usr/bin/env")
	login("127.0.0.5", "alice@example.com")
	d.stderr(t)
	if !relays("127.0.0.5") || relays("127.0.0.2") {
		t.Fatalf("vchkpw's own rebuild: 127.0.0.5 relays %v, 127.0.0.2 %v (want true, false)", relays("127.0.0.5"), relays("127.0.0.2"))
	}
	const open = "/home/vpopmail/etc/open-smtp"
	want := "relayctl: warning: vpopmail's roaming users are on: " + open + " was written "
	for _, args := range [][]string{{"rebuild"}, {"check", "127.0.0.2"}} {
		out := relayctl(args...)
		line := lastLine(out)
		if !strings.HasPrefix(line, want) || !strings.Contains(line, "rebuild vpopmail with --disable-roaming-users") {
			t.Errorf("relayctl %q with vpopmail's roaming users on: %q", args, out)
		}
	}
	old := time.Now().Add(-2 * time.Hour)
	if err := os.Chtimes(open, old, old); err != nil {
		t.Fatal(err)
	}
	if out := relayctl("rebuild"); strings.Contains(out, "vpopmail") {
		t.Errorf("relayctl rebuild with an open-smtp of two hours ago: %q", out)
	}
}
