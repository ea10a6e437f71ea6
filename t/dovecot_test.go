package t

import (
	"os"
	"strings"
	"testing"
)

// The two ways Dovecot calls checkpassword-wrap after a successful login,
// exactly as docs/dovecot.md shows them (@...@ are this test's paths).

// postLoginConf is the post-login script route (every Dovecot version;
// the only one in 2.4). script-login runs the wrapper as
// default_internal_user with a cleaned environment, so the spool is given
// by flag, not by POPRELAY_SPOOL. vsz_limit: Dovecot limits a service's
// address space (RLIMIT_AS) to default_vsz_limit, 256 MB, and a Go
// program needs about 750 MB of address space just to start.
const postLoginConf = `
passdb {
  driver = passwd-file
  args = @USERS@
}
userdb {
  driver = passwd-file
  args = @USERS@
}

service pop3 {
  executable = pop3 pop3-postlogin
}
service pop3-postlogin {
  executable = script-login @WRAP@ --spool @SPOOL@ --log dovecot --service pop3
  user = $default_internal_user
  extra_groups = @GROUP@
  vsz_limit = 1G
  unix_listener pop3-postlogin {
  }
}
service imap {
  executable = imap imap-postlogin
}
service imap-postlogin {
  executable = script-login @WRAP@ --spool @SPOOL@ --log dovecot --service imap
  user = $default_internal_user
  extra_groups = @GROUP@
  vsz_limit = 1G
  unix_listener imap-postlogin {
  }
}
`

// checkpasswordConf is the checkpassword passdb route (Dovecot 2.3). Dovecot
// appends /usr/lib/dovecot/checkpassword-reply to args and expands %s to
// the service (pop3, imap; doveadm or lmtp for userdb lookups). The same
// chain answers userdb lookups (prefetch serves the logins), with
// AUTHORIZED set: the wrapper must record nothing then. The chain runs
// in the auth process and inherits its vsz_limit (see postLoginConf).
const checkpasswordConf = `
service auth {
  extra_groups = @GROUP@
  vsz_limit = 1G
}
passdb {
  driver = checkpassword
  args = @DIR@/checkpassword @WRAP@ --spool @SPOOL@ --log dovecot --service %s
}
userdb {
  driver = prefetch
}
userdb {
  driver = checkpassword
  args = @DIR@/checkpassword @WRAP@ --spool @SPOOL@ --log dovecot --service %s
}
`

// testCheckpassword is a djb checkpassword with Dovecot's userdb extension:
// fd 3 carries "user\0password\0"; a wrong password exits 1; a userdb
// lookup (AUTHORIZED=1, empty password) checks only the user (unknown: 3)
// and sets AUTHORIZED=2 so that checkpassword-reply exits 2 as Dovecot
// expects. It answers uid/gid through EXTRA instead of setuid: it runs as
// Dovecot's auth process, not as root.
const testCheckpassword = `#!/bin/sh
input=$(tr '\0' '\n' <&3)
user=$(printf '%s\n' "$input" | sed -n 1p)
pass=$(printf '%s\n' "$input" | sed -n 2p)
if [ -n "$AUTHORIZED" ]; then
	[ "$user" = alice ] || exit 3
	AUTHORIZED=2
	export AUTHORIZED
else
	[ "$user" = alice ] && [ "$pass" = secret ] || exit 1
fi
USER=alice
HOME=@HOME@
userdb_uid=65534
userdb_gid=65534
EXTRA="userdb_uid userdb_gid"
export USER HOME userdb_uid userdb_gid EXTRA
exec "$@"
`

// TestDovecotPostLogin: a real Dovecot runs checkpassword-wrap as its
// pop3/imap post-login script. POP3, POP3 over TLS and IMAP logins each
// record their client IP, user and service; the sessions work (the
// wrapper exec'd script-login); wrong passwords record nothing.
func TestDovecotPostLogin(t *testing.T) {
	d := setupDovecot(t)
	doc := strings.NewReplacer("/usr/local/bin/checkpassword-wrap", "@WRAP@", "/var/spool/poprelay", "@SPOOL@",
		"extra_groups = poprelay", "extra_groups = @GROUP@").Replace(docSnippet(t, "dovecot-2.3-postlogin"))
	if !strings.HasSuffix(postLoginConf, "\n"+doc) {
		t.Errorf("docs/dovecot.md's 2.3 snippet is not the one this test runs:\n%s", doc)
	}
	dv := startDovecot(t, d, baseEnv(), postLoginConf)

	// Wrong passwords first: by the time the right ones have been
	// recorded, a stray grant from these would be there too.
	if dvPOP3(t, "127.0.0.5", dv.POP3, false, "wrong") {
		t.Fatal("POP3 accepted a wrong password")
	}
	if dvIMAP(t, "127.0.0.6", dv.IMAP, "wrong") {
		t.Fatal("IMAP accepted a wrong password")
	}
	dvWantSpool(t, d.Spool)

	if !dvPOP3(t, "127.0.0.2", dv.POP3, false, dvPass) {
		t.Fatal("POP3 login from 127.0.0.2 failed")
	}
	dvWantGrant(t, d.Spool, "127.0.0.2", "pop3")

	if !dvIMAP(t, "127.0.0.3", dv.IMAP, dvPass) {
		t.Fatal("IMAP login from 127.0.0.3 failed")
	}
	dvWantGrant(t, d.Spool, "127.0.0.3", "imap")

	// pop3s: the wrapper's stdin is a UNIX socket to the login process
	// that terminates TLS, not the client's TCP socket; IP still names
	// the client and the login must still record.
	if !dvPOP3(t, "127.0.0.4", dv.POP3S, true, dvPass) {
		t.Fatal("POP3S login from 127.0.0.4 failed")
	}
	dvWantGrant(t, d.Spool, "127.0.0.4", "pop3")

	dvWantSpool(t, d.Spool, "127.0.0.2", "127.0.0.3", "127.0.0.4")
	dvWantAudit(t, dv, "127.0.0.2", "127.0.0.3", "127.0.0.4")
}

// TestDovecotCheckpassword: a real Dovecot 2.3 with a checkpassword passdb
// whose chain is test checkpassword → checkpassword-wrap →
// checkpassword-reply. POP3 and IMAP logins record; wrong passwords and
// userdb lookups (doveadm user, also with an LMTP-like remote address)
// record nothing.
func TestDovecotCheckpassword(t *testing.T) {
	d := setupDovecot(t)
	d.script(t, "checkpassword", testCheckpassword)
	dv := startDovecot(t, d, baseEnv(), checkpasswordConf)

	if dvPOP3(t, "127.0.0.15", dv.POP3, false, "wrong") {
		t.Fatal("POP3 accepted a wrong password")
	}
	if dvIMAP(t, "127.0.0.16", dv.IMAP, "wrong") {
		t.Fatal("IMAP accepted a wrong password")
	}
	dvWantSpool(t, d.Spool)

	if !dvPOP3(t, "127.0.0.12", dv.POP3, false, dvPass) {
		t.Fatal("POP3 login from 127.0.0.12 failed")
	}
	dvWantGrant(t, d.Spool, "127.0.0.12", "pop3")

	if !dvIMAP(t, "127.0.0.13", dv.IMAP, dvPass) {
		t.Fatal("IMAP login from 127.0.0.13 failed")
	}
	dvWantGrant(t, d.Spool, "127.0.0.13", "imap")

	if !dvPOP3(t, "127.0.0.14", dv.POP3S, true, dvPass) {
		t.Fatal("POP3S login from 127.0.0.14 failed")
	}
	dvWantGrant(t, d.Spool, "127.0.0.14", "pop3")

	// userdb lookups run the same chain with AUTHORIZED set. The second
	// one carries a remote address, as an LMTP delivery from an MTA at
	// 127.0.0.19 does (TCPREMOTEIP=127.0.0.19, SERVICE=lmtp).
	out := dvDoveadmUser(t, dv, "alice")
	if !strings.Contains(out, "uid\t65534") {
		t.Errorf("doveadm user alice: %q, want uid 65534 from the checkpassword userdb", out)
	}
	dvDoveadmUser(t, dv, "-x", "service=lmtp", "-x", "rip=127.0.0.19", "alice")

	dvWantSpool(t, d.Spool, "127.0.0.12", "127.0.0.13", "127.0.0.14")
	dvWantAudit(t, dv, "127.0.0.12", "127.0.0.13", "127.0.0.14")
}

// TestDovecotPostLoginWithoutGroup: the same post-login route without
// extra_groups, so the wrapper runs as dovecot outside the spool's group
// and has only its setgid privilege. It then records a login only when its
// standard input is the client's TCP socket: plain POP3 records, POP3 over
// TLS (a UNIX socket to the login process) does not, says why in the log,
// and the session still works. The refusal is a warning in Dovecot's log
// (--log dovecot), not an info line.
func TestDovecotPostLoginWithoutGroup(t *testing.T) {
	d := setupDovecot(t)
	conf := strings.ReplaceAll(postLoginConf, "  extra_groups = @GROUP@\n", "")
	dv := startDovecot(t, d, baseEnv(), conf)

	if !dvPOP3(t, "127.0.0.32", dv.POP3, false, dvPass) {
		t.Fatal("POP3 login from 127.0.0.32 failed")
	}
	dvWantGrant(t, d.Spool, "127.0.0.32", "pop3")
	if !dvPOP3(t, "127.0.0.34", dv.POP3S, true, dvPass) {
		t.Fatal("POP3S login from 127.0.0.34 failed")
	}
	dvWantSpool(t, d.Spool, "127.0.0.32")
	said := false
	for _, line := range strings.Split(dv.logText(), "\n") {
		said = said || strings.Contains(line, "Warning: checkpassword-wrap: not recording") && strings.Contains(line, "=127.0.0.34 ")
	}
	if !said {
		t.Error("no warning in Dovecot's log saying why 127.0.0.34 was not recorded")
	}
}

// lmtpConf adds an LMTP listener to checkpasswordConf.
const lmtpConf = `
protocols = pop3 imap lmtp
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = @SPARE@
  }
}
`

// TestDovecotLMTP: a real LMTP delivery through the checkpassword route.
// The recipient's userdb lookup runs the chain with AUTHORIZED set and
// the MTA's address (127.0.0.39) as TCPREMOTEIP: nothing is recorded, and
// the mail arrives (the lookup answered through the wrapper). Needs
// dovecot-lmtpd, which scripts/deps does not install: skipped without it.
func TestDovecotLMTP(t *testing.T) {
	d := setupDovecot(t)
	if _, err := os.Stat("/usr/lib/dovecot/lmtp"); err != nil {
		t.Skip("SKIP: dovecot-lmtpd is not installed (/usr/lib/dovecot/lmtp)")
	}
	d.script(t, "checkpassword", testCheckpassword)
	dv := startDovecot(t, d, baseEnv(), checkpasswordConf+lmtpConf)

	m := dvDial(t, "127.0.0.39", dv.Spare, false)
	smtp := func(cmd, want string) {
		t.Helper()
		if cmd != "" {
			m.send(cmd)
		}
		for {
			l := m.line()
			if len(l) < 4 || l[3] != '-' {
				if !strings.HasPrefix(l, want) {
					t.Fatalf("LMTP %q: %q\n%s", cmd, l, m.tx.String())
				}
				return
			}
		}
	}
	smtp("LHLO mta.example.org", "250")
	smtp("MAIL FROM:<bob@example.org>", "250")
	smtp("RCPT TO:<alice>", "250")
	smtp("DATA", "354")
	smtp("Subject: poprelay LMTP test\r\n\r\nhello\r\n.", "250")
	smtp("QUIT", "221")

	// The mail is there: a POP3 login (which records) sees one message.
	c := dvDial(t, "127.0.0.38", dv.POP3, false)
	c.pop3("USER " + dvUser)
	if r := c.pop3("PASS " + dvPass); !strings.HasPrefix(r, "+OK") {
		t.Fatalf("PASS: %q", r)
	}
	if r := c.pop3("STAT"); !strings.HasPrefix(r, "+OK 1 ") {
		t.Errorf("STAT after the LMTP delivery: %q, want one message", r)
	}
	c.pop3("QUIT")
	dvWantGrant(t, d.Spool, "127.0.0.38", "pop3")
	dvWantSpool(t, d.Spool, "127.0.0.38")
}
