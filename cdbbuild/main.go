// Cdbbuild compiles tcpserver rules into a CDB: a drop-in replacement for
// ucspi-tcp's tcprules that also accepts IPv6 addresses, and that can check
// a rules file or print a compiled database back as rules.
//
// Usage:
//
//	cdbbuild rules.cdb rules.tmp < rules
//	cdbbuild -c [rules]
//	cdbbuild -d rules.cdb
//	cdbbuild -h
//
// The first form is tcprules: it creates rules.tmp (mode 0644), reads rules
// on standard input, writes the CDB to rules.tmp as it reads, syncs it and
// renames it over rules.cdb, so tcpserver -x always sees the old or the new
// file. The syntax, the records and the CDB bytes are exactly those of
// tcprules 0.88, except that an address may contain colons: it ends at the
// first ":" followed by "allow" or "deny", as in Debian's ucspi-tcp-ipv6
// (::1:allow, 2001:db8::1:allow, 2001:db8:1::allow for the prefix
// "2001:db8:1:"). Arguments after the second are ignored, as tcprules does.
//
// Messages and exit codes are those of tcprules, with the program name
// "cdbbuild" (invoked under the name tcprules, through a link, it says
// "tcprules:" and so prints byte for byte what tcprules prints):
//
//	cdbbuild: fatal: unable to parse this line: LINE     (exit 100)
//	cdbbuild: fatal: unable to create TMP: ERROR         (exit 111)
//	cdbbuild: fatal: unable to read input: ERROR         (exit 111)
//	cdbbuild: fatal: unable to write to TMP: ERROR       (exit 111)
//	cdbbuild: fatal: unable to move TMP to CDB: ERROR    (exit 111)
//
// ERROR is djb's text for the system error ("file does not exist", "access
// denied", "out of disk space"...). Unlike tcprules, cdbbuild removes
// rules.tmp when it fails; rules.cdb is never touched then.
//
// With -c, cdbbuild only checks the syntax of the file (standard input if
// none or "-") and writes nothing. A bad line is reported as
// "cdbbuild: FILE:LINE: unable to parse this line: LINE", exit 100.
//
// With -d, cdbbuild prints every record of rules.cdb in file order as a
// rules line (KEY:allow,NAME="VALUE" or KEY:deny), choosing for each value a
// quote character it does not contain, so that the output compiles back to
// the same database. A record no rules line can produce (a key that would
// be expanded as a range, like the "1.2.4-5" that "1.2-3.4-5" makes, or a
// value not made of settings) is printed as a "#" comment and makes the
// exit status 100. A corrupt or truncated database is reported with exit
// 100 (the file is bad, trying again will not help), and so is a FIFO or a
// device, which is never read (no blocking); a database that cannot be read
// exits 111.
//
// Exit status: 0 on success, 100 for a permanent error (usage, syntax,
// corrupt data), 111 for a temporary one (system errors).
package main

import "os"

func main() { os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)) }
