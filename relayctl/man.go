package main

import (
	"fmt"
	"strings"
)

// manPage renders relayctl(8) in roff from the command table, so the help
// strings stay the one source of the commands and options. TestManPage
// keeps docs/relayctl.8 equal to it ("go test ./relayctl -update").
func manPage() string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	// flags renders flagLines ("--name ARG\tusage") as tagged paragraphs.
	flags := func(lines []string) {
		for _, l := range lines {
			flag, usage, _ := strings.Cut(l, "\t")
			p(".TP")
			p(".B %s", roff(strings.TrimSpace(flag)))
			p("%s", roff(usage))
		}
	}
	p(`.\" Generated from relayctl's help strings by "go test ./relayctl -update"; do not edit.`)
	p(`.TH RELAYCTL 8 "" "poprelay" "System Manager's Manual"`)
	p(".SH NAME")
	p(`relayctl \- merge POP/IMAP\-before\-SMTP grants into tcpserver's rules CDB, and administer them`)
	p(".SH SYNOPSIS")
	for _, c := range commands {
		p(".B relayctl")
		p(".RB [ \\-v ]")
		p(".B %s", c.name)
		p("%s", roff(c.usage))
		p(".br")
	}
	p(".SH DESCRIPTION")
	p("%s", roffText(`relayctl merges the grants that checkpassword-wrap(8) records at each
correct POP3 or IMAP login into the CDB that tcpserver -x reads for
qmail-smtpd, so a roaming user may relay for a while (1 hour by default)
from the address they logged in from, with no lookup in qmail-smtpd. It
also expires the grants, and lets an admin list, add, revoke and check
them.`))
	p(".PP")
	p("%s", roffText(`The CDB is written as tcprules writes it: a dot-named temp file in the
CDB's directory, fsync, rename, then an fsync of the directory, so
tcpserver sees the old database or the new one, never a part of one. On
any failure the temp file is removed and the old CDB stays. Writers (rebuild,
expire, allow, revoke, import) serialize on an flock(2) of FILE.lock beside
the CDB, waiting for it at most --lock-timeout (then exit 111; the watcher
logs it and retries). The lock file is mode 0600, or 0660 with the
directory's group where that group may write the CDB's directory, so no
other user can open it (flock works on a read-only descriptor: a readable
lock file lets anyone freeze every writer); a wider one is repaired by root
or its owner and refused otherwise, and a symlink, FIFO or directory there
is refused. The same rules and grants always give the same bytes.`))
	p(".SH COMMANDS")
	for _, c := range commands {
		p(".SS %s", roff(c.name+" "+c.usage))
		p("%s", roffText(c.help))
		own, _ := c.flagLines()
		flags(own)
	}
	p(".SH OPTIONS")
	p("%s", roffText(`Every command takes these options. Each is also read from an environment
variable, so daemontools' envdir works; a flag beats the variable, which
beats the default. "relayctl config" shows the effective values and where
they came from. Booleans accept 1, true, yes, on and 0, false, no, off (or
empty); durations are Go durations (90m, 2h) or a number of seconds.`))
	_, common := rebuildCmd.flagLines()
	flags(common)
	p(".SH FILES")
	for _, f := range [][2]string{
		{"/etc/tcp.smtp", "the static rules (tcprules syntax): edit, then run relayctl rebuild"},
		{"/etc/tcp.smtp.cdb", "the CDB tcpserver -x reads"},
		{"/etc/tcp.smtp.cdb.lock", "the lock writers take"},
		{"/etc/tcp.smtp.cdb.state", "the spool's grant files as last read, so the next run reads only those that changed"},
		{"/etc/tcp.smtp.cdb.rules", "a copy of /etc/tcp.smtp as last confirmed (by rebuild, SIGHUP, or a read where it did not shrink by half): every other writer holds back a rules file that shrank against it"},
		{"/etc/tcp.smtp.cdb.etcd", "watch --source etcd: a cache of the mirrored grants, for a start while etcd is down"},
		{"/etc/.tcp.smtp.cdb.spare", "watch: the CDB it replaced last, written over for the next publish (removed when it stops)"},
		{"/var/spool/poprelay", "the grants: a file per address for the logins since the last fold, the rest in .grants"},
		{"/etc/poprelay/never", "addresses never granted, added to the built-in set"},
		{"/etc/cron.d/poprelay", "runs relayctl expire every minute: it expires grants and publishes logins when no watcher runs"},
	} {
		p(".TP")
		p(".I %s", roff(f[0]))
		p("%s", roff(f[1]))
	}
	p(".SH SECURITY")
	p("%s", roffText(`With etcd (the --etcd-* options of watch, list, allow and revoke),
whoever can write the grant keys opens the relay on every SMTP host.
Every SMTP host checks each key and value it reads (canonical address,
field limits) and applies its own never-grant set and static rules to it,
reads etcd in pages of at most 16 MiB (junk keys are skipped with a few
warnings and never block the good ones), and keeps at most
--etcd-max-per-host grants per origin host, the newest live ones
(default 50000, half the default --max-grants: one flooding host takes at
most that; a writer spreading its grants over made-up host names is
bounded only by --max-grants), warning with the host's name. A watch --source etcd started while etcd does not answer
writes no CDB without the grants it knew: it serves the cache beside the
CDB, or leaves the previous CDB as it is until etcd answers, for at most
the max age after it was written (then the static rules alone, as every
login in it has expired by then).
Only etcd's access control stops a forged grant: use https://
endpoints with client certificates and etcd's roles (docs/etcd.md).
These commands warn at start about a plain http:// endpoint on an
address other than loopback without authentication, and config shows
the effective security. A password given with --etcd-password is visible
to every local user in ps(1); give it with --etcd-password-file or
POPRELAY_ETCD_PASSWORD_FILE. No password is ever printed.

Every rebuild (rebuild, expire, allow, revoke, import and watch, from the
spool or from etcd) publishes of each user's grants only the
--max-per-user newest (default 16; by login time, then address: a new
login displaces the user's oldest) and of all grants only the
--max-grants (default 100000), those without a user first, then the
newest. 0 turns a cap off. A grant
without a user (allow without --user, an import) counts only toward
--max-grants; allow --user NAME counts as one of NAME's. The others get
no record: list and check show them as "refused: over the cap of ...",
expire removes from the spool those over the per-user cap (those over
--max-grants stay, and relay again once the total is below it), and
while over --max-grants every rebuild warns.`))
	p(".SH DIAGNOSTICS")
	p("%s", roffText(`relayctl is silent on success unless -v. Errors are one line on standard
error: "relayctl: fatal: unable to WHAT: WHY", a rule error as
"relayctl: fatal: FILE:LINE: unable to parse this line: LINE", a usage
error as "relayctl: usage: ...". Warnings ("relayctl: warning: ...") report
grants the never-grant set refuses, spool entries that are not grants, a
state file or lock file that was ignored or repaired, host-name rules a
grant overrides, a rules file held back ("FILE has N rules where the CDB
was built from M": run relayctl rebuild to publish it as it is), grants
over --max-grants ("OVER THE CAP", at every rebuild while it lasts), and an
etcd connection others could use to open the relay.`))
	p(".SH " + "EXIT STATUS")
	p("%s", roff("0 success; 100 permanent error (usage, syntax, bad address, no such grant, etcd refused the credentials); 111 temporary error (I/O, lock held past --lock-timeout, etcd unreachable)."))
	p(".SH SEE ALSO")
	p("checkpassword-wrap(8), cdbbuild(8), tcprules(1), tcpserver(1), qmail-smtpd(8), rblsmtpd(1)")
	return b.String()
}

// roff escapes one line of text.
func roff(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	s = strings.ReplaceAll(s, "-", `\-`)
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = `\&` + s
	}
	return s
}

// roffText escapes a paragraph, line by line.
func roffText(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = roff(l)
	}
	return strings.Join(lines, "\n")
}
