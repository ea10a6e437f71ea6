package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"strings"
	"syscall"

	"github.com/poprelay/poprelay/internal/grant"
	"github.com/poprelay/poprelay/internal/never"
	"github.com/poprelay/poprelay/internal/quote"
)

const prog = "checkpassword-wrap"

const usage = `usage: checkpassword-wrap [--spool DIR] [--service NAME] [--never FILE] [--log dovecot] [--before-login [--remote-var NAME]] program [arg ...]
  --spool DIR     grant spool (env POPRELAY_SPOOL; default /var/spool/poprelay)
  --service NAME  service recorded with the grant (env POPRELAY_SERVICE, else SERVICE, else pop3)
  --never FILE    never-grant file read in addition to /etc/poprelay/never (env POPRELAY_NEVER)
  --log dovecot   write stderr in Dovecot's log protocol: the audit line as info (env POPRELAY_LOG; default plain)
  --before-login  run by root in the place of a login program (Courier's imaplogin, stunnel's exec):
                  record the login the wrapper after it reports, for this process's client address
  --remote-var NAME
                  with --before-login, the front end's variable holding the client address:
                  TCPREMOTEIP (couriertcpd, tcpserver; default), REMOTE_HOST (stunnel), SSLREMOTEIP (sslserver)
`

// result is what run decided: exec argv (if not nil), else exit with code.
type result struct {
	argv    []string
	code    int
	trusted bool // the caller is root or in the spool's group
	stderr  io.Writer
	stage   bool // --before-login: run argv as the stage's child
	config  config
}

// system is what run needs from the process; tests fake it.
type system struct {
	// peer returns the address of the peer of standard input if it is a
	// connected TCP socket, and ok false if it is anything else.
	peer func() (ip string, ok bool)
	// trusted tells whether the caller holds the spool's group by itself
	// (root, not setgid, or a member of the effective group), and a word
	// about who the caller is for the log.
	trusted func() (bool, string)
	// accepted tells, for an untrusted caller whose standard input is a
	// TCP socket from the client, whether a service accepted it (its
	// local port privileged or the admin's), and if not why: nil means
	// never.
	accepted func() (bool, string)
	// neverFile is the never-grant file always read if it exists.
	neverFile string
	// openAsCaller opens a file the caller named with the caller's own
	// rights, not the setgid group's: nil means never.Open.
	openAsCaller func(string) (*os.File, error)
	// report sends the user to the stage before the login over the
	// descriptor fd names (POPRELAY_LOGIN_FD), and tells whether it
	// did: nil means never.
	report func(fd, user, service string) bool
	// detach hands standard input and output to the stage's child
	// alone: nil means leave them.
	detach func()
	// stdinKind names what standard input is when it is no TCP socket:
	// "a UNIX socket", "a pipe" (a TLS front end's end), else "" (nil:
	// never asked).
	stdinKind func() string
}

func realSystem() system {
	return system{
		peer:         stdinPeer,
		trusted:      callerTrusted,
		accepted:     func() (bool, string) { return stdinAccepted(PortsFile) },
		neverFile:    never.DefaultFile,
		openAsCaller: openAsCaller,
		stdinKind:    stdinKind,
		report:       reportLogin,
		detach:       detachStdio,
	}
}

// stdinKind names standard input when it is what a TLS front end gives
// the login: an AF_UNIX socket (couriertls, a socketpair) or a pipe
// (sslserver). Anything else ("/dev/null", a terminal, UDP) is "".
func stdinKind() string {
	var st syscall.Stat_t
	if err := syscall.Fstat(0, &st); err != nil {
		return ""
	}
	switch st.Mode & syscall.S_IFMT {
	case syscall.S_IFIFO:
		return "a pipe"
	case syscall.S_IFSOCK:
		if d, err := syscall.GetsockoptInt(0, syscall.SOL_SOCKET, syscall.SO_DOMAIN); err == nil && d == syscall.AF_UNIX {
			return "a UNIX socket"
		}
	}
	return ""
}

// openAsCaller opens path with the effective group set to the real one for
// the moment, so that a caller cannot have a file only the setgid group
// may read parsed (and quoted in an error) through --never.
func openAsCaller(path string) (*os.File, error) {
	gid, egid := syscall.Getgid(), syscall.Getegid()
	if gid == egid {
		return never.Open(path)
	}
	if err := syscall.Setresgid(-1, gid, -1); err != nil {
		return nil, err
	}
	f, err := never.Open(path)
	if err2 := syscall.Setresgid(-1, egid, -1); err2 != nil {
		if f != nil {
			f.Close()
		}
		return nil, fmt.Errorf("unable to restore the group: %w", err2)
	}
	return f, err
}

// stdinPeer returns the peer address of fd 0 if it is a connected TCP
// socket. A UDP socket is not accepted: "connecting" one proves nothing.
func stdinPeer() (string, bool) {
	typ, err := syscall.GetsockoptInt(0, syscall.SOL_SOCKET, syscall.SO_TYPE)
	if err != nil || typ != syscall.SOCK_STREAM {
		return "", false
	}
	proto, err := syscall.GetsockoptInt(0, syscall.SOL_SOCKET, syscall.SO_PROTOCOL)
	if err != nil || proto != syscall.IPPROTO_TCP {
		return "", false
	}
	sa, err := syscall.Getpeername(0)
	if err != nil {
		return "", false
	}
	switch sa := sa.(type) {
	case *syscall.SockaddrInet4:
		return netip.AddrFrom4(sa.Addr).String(), true
	case *syscall.SockaddrInet6:
		return netip.AddrFrom16(sa.Addr).Unmap().String(), true
	}
	return "", false
}

// callerTrusted: root, a process whose effective group is its real group
// (no setgid privilege in play), or a member of the effective group.
func callerTrusted() (bool, string) {
	uid, gid, egid := os.Getuid(), os.Getgid(), os.Getegid()
	who := fmt.Sprintf("uid %d is neither root nor in group %d", uid, egid)
	if uid == 0 || gid == egid {
		return true, who
	}
	gs, _ := os.Getgroups()
	for _, g := range gs {
		if g == egid {
			return true, who
		}
	}
	return false, who
}

// config is the command line and environment, parsed.
type config struct {
	spool, service, never string
	log                   string // "plain" or "dovecot"
	rebuild               bool   // --rebuild: accepted, does nothing
	beforeLogin           bool   // --before-login: the stage
	remoteVar             string // --remote-var: the stage's client address variable
	argv                  []string
}

// parseArgs reads the flags before the program name.
func parseArgs(args []string, env map[string]string) (config, error) {
	c := config{spool: grant.DefaultDir, service: "pop3", never: env["POPRELAY_NEVER"], log: "plain"}
	if v := env["POPRELAY_LOG"]; v != "" {
		c.log = v
	}
	if v := env["POPRELAY_SPOOL"]; v != "" {
		c.spool = v
	}
	if v := env["POPRELAY_SERVICE"]; v != "" {
		c.service = v
	} else if v := env["SERVICE"]; v != "" {
		c.service = v
	}
	for len(args) > 0 {
		a := args[0]
		if a == "--" {
			args = args[1:]
			break
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			break
		}
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		args = args[1:]
		var dst *string
		switch name {
		case "spool":
			dst = &c.spool
		case "service":
			dst = &c.service
		case "never":
			dst = &c.never
		case "log":
			dst = &c.log
		case "remote-var":
			dst = &c.remoteVar
		case "rebuild":
			if hasValue {
				return c, fmt.Errorf("--rebuild takes no value")
			}
			c.rebuild = true
			continue
		case "before-login":
			if hasValue {
				return c, fmt.Errorf("--before-login takes no value")
			}
			c.beforeLogin = true
			continue
		case "h", "help":
			return c, errHelp
		default:
			return c, fmt.Errorf("unknown flag %s", a)
		}
		if !hasValue {
			if len(args) == 0 {
				return c, fmt.Errorf("flag --%s needs a value", name)
			}
			value, args = args[0], args[1:]
		}
		if value == "" {
			return c, fmt.Errorf("flag --%s needs a value", name)
		}
		*dst = value
	}
	if c.log != "plain" && c.log != "dovecot" {
		return c, fmt.Errorf("--log %s: want plain or dovecot", show(c.log))
	}
	switch {
	case c.remoteVar == "":
		c.remoteVar = "TCPREMOTEIP"
	case !c.beforeLogin:
		return c, fmt.Errorf("--remote-var is for the stage: give --before-login too")
	case !remoteVars[c.remoteVar]:
		return c, fmt.Errorf("--remote-var %s: want TCPREMOTEIP, REMOTE_HOST or SSLREMOTEIP", show(c.remoteVar))
	}
	if len(args) == 0 {
		return c, fmt.Errorf("no program to run")
	}
	c.argv = args
	return c, nil
}

var errHelp = errors.New("help")

// remoteVars are the variables a stage may take the client address from:
// those the front ends that run login programs as root set, each only to
// the address of the client they accepted (couriertcpd and tcpserver,
// stunnel's exec mode, ucspi-ssl's sslserver).
var remoteVars = map[string]bool{"TCPREMOTEIP": true, "REMOTE_HOST": true, "SSLREMOTEIP": true}

// show renders untrusted text for a log line: bounded and quoted when it
// holds anything but plain printable bytes.
func show(s string) string {
	const max = 64
	long := len(s) > max
	if long {
		s = s[:max]
	}
	plain := s != ""
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f || s[i] == '"' || s[i] == '\\' {
			plain = false
		}
	}
	if !plain {
		s = quote.Quote(s)
	}
	if long {
		s += "..."
	}
	return s
}

// run decides what checkpassword-wrap does: record a grant or say why
// not, then exec the rest of the command line (or exit on a usage error).
// It never writes to standard output.
func run(args, environ []string, stderr io.Writer, sys system) result {
	env := map[string]string{}
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok {
			if _, dup := env[k]; !dup { // getenv takes the first
				env[k] = v
			}
		}
	}
	c, err := parseArgs(args, env)
	if err == errHelp {
		io.WriteString(stderr, usage)
		return result{code: 0}
	}
	if err != nil {
		fmt.Fprintf(stderr, "%s: fatal: %v\n%s", prog, err, usage)
		return result{code: 100}
	}
	if c.log == "dovecot" {
		stderr = &dovecotLog{w: stderr, pid: os.Getpid()}
	}
	trusted, who := sys.trusted()
	res := result{argv: c.argv, trusted: trusted, stderr: stderr, stage: c.beforeLogin, config: c}
	if c.beforeLogin {
		return res
	}
	if c.rebuild {
		fmt.Fprintf(stderr, "%s: warning: --rebuild does nothing now (the mail user cannot write the CDB): relayctl watch, or cron's relayctl expire, publishes the grant; drop the flag\n", prog)
	}
	record(c, env, stderr, sys, trusted, who)
	return res
}

// record records the grant the environment describes, if it describes
// one, and tells whether it did. Every refusal but "this was no login"
// is one line on stderr.
func record(c config, env map[string]string, stderr io.Writer, sys system, trusted bool, who string) bool {
	say := func(format string, args ...any) {
		fmt.Fprintf(stderr, prog+": "+format+"\n", args...)
	}
	// A Dovecot userdb lookup (LMTP delivery, doveadm): no password.
	if _, ok := env["AUTHORIZED"]; ok {
		return false
	}
	_, authuser := env["AUTHUSER"]
	_, argv0 := env["AUTHARGV0"]
	courier := authuser && argv0
	if courier && env["AUTHENTICATED"] == "" {
		return false
	}

	user := loginUser(env, courier)
	// Behind a stage before the login (--before-login): it records, for
	// the address it holds, whatever this process's variables say (stunnel
	// sets REMOTE_HOST, not TCPREMOTEIP).
	if fd := env[loginFDEnv]; fd != "" && user != "" && sys.report != nil && sys.report(fd, user, c.service) {
		return false
	}

	raw, ok := env["TCPREMOTEIP"]
	fromIP := false // the address is Dovecot's post-login IP
	if ip, isSet := env["IP"]; raw == "" && isSet {
		raw, ok, fromIP = ip, true, true
	}
	if !ok {
		// A TLS front end's own variable, in a process that is the
		// mail user's: nothing proves it (TLS FRONT ENDS).
		for _, fe := range []struct{ name, who string }{{"REMOTE_HOST", "stunnel"}, {"SSLREMOTEIP", "sslserver"}} {
			if v, set := env[fe.name]; set && user != "" {
				say("warning: not recording user=%s service=%s: no client address (TCPREMOTEIP and IP are unset; %s=%s is %s's word, which counts only in a stage before the login: checkpassword-wrap --before-login --remote-var %s, TLS FRONT ENDS in checkpassword-wrap(8))", show(user), show(c.service), fe.name, show(v), fe.who, fe.name)
				return false
			}
		}
		say("warning: not recording: no client address (TCPREMOTEIP and IP are unset)")
		return false
	}
	ip, err := grant.CanonicalIP(raw)
	if err != nil {
		say("warning: not recording: client address %s is not an IP address", show(raw))
		return false
	}

	if user == "" {
		say("warning: not recording ip=%s: no user (USER is unset: does checkpassword-wrap come after the password check?)", ip)
		return false
	}
	what := fmt.Sprintf("ip=%s user=%s service=%s", ip, show(user), show(c.service))

	via := ""
	if peer, isTCP := sys.peer(); isTCP {
		switch {
		case peer == ip:
		case trusted && fromIP:
			// Dovecot's post-login script behind a PROXY-protocol
			// proxy (haproxy = yes): Dovecot reports the real client
			// while the socket comes from the proxy. A trusted caller
			// could write the spool itself, so its word stands; the
			// proxy's own address belongs in the never-grant file.
			// The audit line names it. A tcpserver chain
			// (TCPREMOTEIP) never differs from its socket, so there a
			// difference is always refused.
			via = " via=" + show(peer)
		default:
			say("warning: not recording %s: standard input is a TCP connection from %s, not from %s", what, show(peer), ip)
			return false
		}
	} else if !trusted {
		// A TLS front end (couriertls, sslserver, stunnel) hands the
		// login a socketpair or a pipe: nothing about it tells where
		// the client is, and the caller sets the variables it likes.
		// Only a trusted caller's word stands (SECURITY.md, guarantee
		// 4: TLS front ends).
		kind := ""
		if sys.stdinKind != nil {
			kind = sys.stdinKind()
		}
		if kind != "" {
			say("warning: not recording %s: standard input is not a TCP socket but %s (a TLS front end such as couriertls or sslserver in between?) and %s, so nothing proves the login came from %s: put a stage before the login or run the chain in the group (TLS FRONT ENDS in checkpassword-wrap(8))", what, kind, who, ip)
			return false
		}
		say("warning: not recording %s: standard input is not a TCP socket and %s", what, who)
		return false
	}
	// Any user can connect to any host: the socket must be one a service
	// accepted from the client, not one the caller opened to it.
	if !trusted {
		ok, why := false, "no way to tell whether a service accepted standard input"
		if sys.accepted != nil {
			ok, why = sys.accepted()
		}
		if !ok {
			say("warning: not recording %s: %s, and %s", what, why, who)
			return false
		}
	}

	open := never.Open
	if !trusted && sys.openAsCaller != nil {
		open = sys.openAsCaller
	}
	set, err := loadNever(sys.neverFile, c.never, open)
	if err != nil {
		say("warning: not recording %s: %v", what, err)
		return false
	}
	if reason, refused := set.Refuse(ip); refused {
		say("not recording %s: never granted: %s", what, reason)
		return false
	}

	g := grant.Grant{IP: ip, User: user, Service: c.service}
	if err := grant.New(c.spool).Record(g); err != nil {
		say("warning: unable to record %s: %v", what, err)
		return false
	}
	say("%s%s", what, via)
	return true
}

// loginUser is the user who logged in: USER (vchkpw's VPOPUSER when it is
// USER with a domain), else AUTHENTICATED, AUTH_USER, AUTHUSER (not under
// an old Courier, where AUTHUSER is the login program's path).
func loginUser(env map[string]string, courier bool) string {
	user := env["USER"]
	if v := env["VPOPUSER"]; v != "" && user != "" && vpopName(v, user) {
		// vpopmail's vchkpw: USER is the bare local part, VPOPUSER the
		// name the client logged in with, domain and all.
		user = v
	}
	if user == "" {
		// Courier-IMAP 5's imaplogin and courierpop3login set
		// AUTHENTICATED alone (no USER, AUTHUSER or AUTHARGV0).
		user = env["AUTHENTICATED"]
	}
	if user == "" {
		user = env["AUTH_USER"]
	}
	if user == "" && !courier {
		user = env["AUTHUSER"]
	}
	return user
}

// vpopName tells whether name, vchkpw's VPOPUSER, is the login name of
// the bare user: user itself, or user followed by one of vpopmail's
// separators (ATCHARS: @, % or /) and a domain. vchkpw compares in lower case. A
// VPOPUSER left over from elsewhere, for another user, is not taken.
func vpopName(name, user string) bool {
	local := name
	if i := strings.IndexAny(name, "@%/"); i >= 0 {
		local = name[:i]
	}
	return strings.EqualFold(local, user)
}

// loadNever returns the built-in never-grant set plus the default file
// (if it exists) plus the configured one (which must exist, and is opened
// with open). A caller can add entries, never remove the default file's.
func loadNever(defaultFile, file string, open func(string) (*os.File, error)) (*never.Set, error) {
	set := never.Default()
	var paths []string
	if defaultFile != "" {
		paths = append(paths, defaultFile)
	}
	if file != "" && file != defaultFile {
		paths = append(paths, file)
	}
	for _, p := range paths {
		opener := open
		if p == defaultFile {
			opener = never.Open
		}
		f, err := opener(p)
		if err != nil {
			if p == defaultFile && file != defaultFile && errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return nil, fmt.Errorf("unable to read never-grant file: %w", err)
		}
		err = set.Parse(f, p)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("never-grant file: %w", err)
		}
	}
	return set, nil
}
