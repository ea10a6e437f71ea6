// Relayctl administers poprelay's POP/IMAP-before-SMTP relaying: it merges
// the grants recorded at login into the CDB that tcpserver -x reads, expires
// them, and lets an admin list, add, revoke and check them.
//
// Usage:
//
//	relayctl [-v] COMMAND [options] [arguments]
//	relayctl COMMAND --help
//
// Commands:
//
//	rebuild                  write the CDB from the rules file and the grants
//	watch                    daemon: rebuild within milliseconds of a change
//	expire                   remove expired grants; rebuild if any went or a
//	                         login is not published yet (for cron)
//	list [--json]            show the grants in the spool
//	allow IP [--for DUR] [--user NAME]
//	                         grant IP by hand, then rebuild
//	revoke IP | --user NAME  remove grants, then rebuild
//	check IP [--host H] [--info I]
//	                         what tcpserver decides for that client now
//	import --vpopmail FILE | --relay-ctrl DIR
//	                         take over grants from vpopmail or relay-ctrl
//	config                   every effective setting and where it came from
//
// Every command takes the common options below, each also read from an
// environment variable (so daemontools' envdir works); a flag beats the
// variable, which beats the default:
//
//	--spool DIR       POPRELAY_SPOOL       /var/spool/poprelay
//	--rules FILE      POPRELAY_RULES       /etc/tcp.smtp
//	--cdb FILE        POPRELAY_CDB         /etc/tcp.smtp.cdb
//	--max-age DUR     POPRELAY_MAXAGE      1h
//	--never FILE      POPRELAY_NEVER       none (read after /etc/poprelay/never)
//	--keep-rbl        POPRELAY_KEEPRBL     false
//	--remoteinfo      POPRELAY_REMOTEINFO  false
//	-v                POPRELAY_VERBOSE     false
//
// The CDB is written the way tcprules writes it, by a dot-named temp file
// in its directory, fsync and rename (then an fsync of the directory), so
// tcpserver always sees the old database or the new one; on any failure
// the temp file is removed and the old CDB stays. Writers serialize on an
// flock(2) of FILE.lock beside the CDB (mode 0600, no other user may open
// it), waiting at most --lock-timeout. The same rules and grants always
// give the same bytes.
//
// A missing rules file is an error (exit 111): a CDB without the admin's
// rules would silently drop them. Give --rules "" to build from grants
// alone.
//
// relayctl is silent on success unless -v. Errors go to standard error as
// "relayctl: fatal: unable to WHAT: WHY", rule errors as
// "relayctl: fatal: FILE:LINE: unable to parse this line: LINE".
// Exit status: 0 ok, 100 permanent error (usage, syntax, bad address), 111
// temporary error (I/O, lock).
package main

import "os"

func main() { os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)) }
