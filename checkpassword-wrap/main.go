// Checkpassword-wrap records the client address of every successful POP3
// or IMAP login as a relay grant, then runs the rest of its command line.
//
// Usage:
//
//	checkpassword-wrap [--spool DIR] [--service NAME] [--never FILE] [--log dovecot] [--before-login [--remote-var NAME]] program [arg ...]
//
// It sits in a checkpassword chain after the password check, for example
//
//	tcpserver -R -H 0 110 qmail-popup mail.example.com \
//	    checkpassword checkpassword-wrap qmail-pop3d Maildir
//
// or as a Dovecot post-login script, or between a checkpassword program
// and Dovecot 2.3's checkpassword-reply. See checkpassword-wrap(8).
//
// The client address comes from TCPREMOTEIP (tcpserver, couriertcpd,
// Dovecot's checkpassword passdb) or IP (Dovecot post-login), the user
// from USER (vchkpw's VPOPUSER instead when it is USER with a domain;
// else AUTHENTICATED, which Courier-IMAP 5 sets alone, AUTH_USER,
// AUTHUSER). Nothing is recorded when AUTHORIZED is set (a Dovecot userdb
// lookup, no password was checked), under an old Courier (AUTHUSER and
// AUTHARGV0 set) unless AUTHENTICATED is set, for an address of the
// never-grant set, or when standard input is a TCP socket whose peer is
// not the client address.
// Each grant is one line on standard error:
//
//	checkpassword-wrap: ip=198.51.100.7 user=alice service=pop3
//
// and each refusal one line saying why. With --log dovecot (under Dovecot
// only) the lines are in Dovecot's log protocol for its children, so
// Dovecot logs the audit line as info, not as an error. Nothing is ever
// written on standard output: it is the client's session. A failure to
// record never stops the login: the program runs with the environment
// unchanged, exactly as the caller gave it (not the Go runtime's copy,
// which a setgid program gets with GOTRACEBACK=none). If it cannot be run, checkpassword-wrap exits 111; a usage
// error exits 100.
//
// Flags stop at the first argument that is not one, or after "--".
// Environment: POPRELAY_SPOOL (default /var/spool/poprelay),
// POPRELAY_SERVICE (default $SERVICE, else pop3), POPRELAY_NEVER (read in
// addition to /etc/poprelay/never, which is always read if it exists),
// POPRELAY_LOG (plain or dovecot; default plain).
//
// --rebuild, which once started "relayctl rebuild" after each login, is
// still accepted so that existing run scripts keep working, but does
// nothing: as the mail user the wrapper cannot write the CDB. Each login
// given it writes one warning line; relayctl watch or cron's relayctl
// expire publishes the grant.
//
// Installed setgid to the group that owns the spool, it drops that
// privilege before running the program. Unless the caller is root or a
// member of that group, it records only when standard input is a TCP
// connection from the client address that a service accepted (its local
// port privileged, or listed in /etc/poprelay/ports) in the wrapper's own
// network namespace: a local user cannot forge a grant, not even by
// connecting out to the address, nor by accepting a connection from it
// on port 110 in a network namespace of the user's own (unshare -Urn).
// Behind a TLS front end (couriertls's socketpair, sslserver's pipes)
// nothing proves where the client is: an untrusted caller records
// nothing there, and says so in one line. With --before-login, run by
// root in the place of a login program (Courier's imaplogin), it is the
// stage before the login instead: it starts the program as its child
// with a report socket on fd 23 (POPRELAY_LOGIN_FD), and records, for
// its own TCPREMOTEIP (or the front end's variable --remote-var names:
// stunnel's REMOTE_HOST, sslserver's SSLREMOTEIP), the login the wrapper
// after the login reports there (stage.go). The wrapper reports before it
// looks for an address of its own: behind stunnel it has none.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"
)

func main() {
	// The caller's environment as given, not the Go runtime's copy,
	// which has GOTRACEBACK=none when the wrapper is setgid (env.go).
	setgid := os.Getegid() != os.Getgid() || os.Geteuid() != os.Getuid()
	env, warning := nextEnviron(callerEnviron, os.Environ(), setgid)
	res := run(os.Args[1:], env, os.Stderr, realSystem())
	if res.argv == nil {
		os.Exit(res.code)
	}
	if warning != "" {
		fmt.Fprintf(res.stderr, "%s: %s\n", prog, warning)
	}
	if res.stage {
		os.Exit(runStage(res.config, res, env, res.stderr, realSystem()))
	}
	os.Exit(execNext(res, env, res.stderr))
}

// execNext drops the setgid privilege and execs the next program. It
// returns only on failure, with exit code 111.
func execNext(res result, env []string, stderr io.Writer) int {
	if err := dropPrivilege(); err != nil {
		fmt.Fprintf(stderr, "%s: fatal: unable to drop the setgid privilege: %v\n", prog, err)
		return 111
	}
	path, err := exec.LookPath(res.argv[0])
	if err == nil {
		err = syscall.Exec(path, res.argv, env)
	}
	fmt.Fprintf(stderr, "%s: fatal: unable to run %s: %v\n", prog, res.argv[0], innermost(err))
	return 111
}

// innermost is the root cause of err: "no such file or directory", not
// exec's and os's wrappings that repeat the program's name.
func innermost(err error) error {
	for {
		u := errors.Unwrap(err)
		if u == nil {
			return err
		}
		err = u
	}
}

// dropPrivilege sets the real, effective and saved group IDs to the real
// group ID, in every thread, undoing a setgid installation.
func dropPrivilege() error {
	gid := syscall.Getgid()
	if syscall.Getegid() == gid {
		return nil
	}
	if err := syscall.Setresgid(gid, gid, gid); err != nil {
		return err
	}
	if syscall.Getegid() != gid {
		return fmt.Errorf("effective gid is still %d", syscall.Getegid())
	}
	return nil
}
