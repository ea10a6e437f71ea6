package main

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/poprelay/poprelay/internal/grant"
)

// ownAddress returns an address of this host other than 127.0.0.1 and ::1,
// if it has one.
func ownAddress(t *testing.T) string {
	b, err := syscall.NetlinkRIB(syscall.RTM_GETADDR, syscall.AF_UNSPEC)
	if err != nil {
		return ""
	}
	msgs, _ := syscall.ParseNetlinkMessage(b)
	for i := range msgs {
		attrs, _ := syscall.ParseNetlinkRouteAttr(&msgs[i])
		for _, a := range attrs {
			if a.Attr.Type != syscall.IFA_LOCAL && a.Attr.Type != syscall.IFA_ADDRESS {
				continue
			}
			if ip, ok := netip.AddrFromSlice(a.Value); ok {
				if s := ip.Unmap().String(); s != "127.0.0.1" && s != "::1" && !ip.IsLinkLocalUnicast() {
					return s
				}
			}
		}
	}
	return ""
}

func TestRun(t *testing.T) {
	own := ownAddress(t)
	type tc struct {
		name      string
		args      []string // before the program
		env       []string
		peer      string // fd 0 is a TCP socket from this address
		untrusted bool
		opened    string // fd 0 is a socket no service accepted: why
		kind      string // fd 0 is no TCP socket but this (stdinKind)
		reported  bool   // a stage before the login takes the report
		code      int    // usage errors: exit code, no exec
		ip        string // the grant recorded, if any
		user      string
		service   string
		stderr    string // a substring of stderr; "" means stderr is empty
	}
	tcs := []tc{
		{name: "qmail chain", env: []string{"TCPREMOTEIP=198.51.100.7", "USER=alice"},
			ip: "198.51.100.7", user: "alice", service: "pop3",
			stderr: "checkpassword-wrap: ip=198.51.100.7 user=alice service=pop3\n"},
		{name: "IPv6 tcpserver, IPv4 client", env: []string{"TCPREMOTEIP=::ffff:198.51.100.8", "USER=alice"},
			ip: "198.51.100.8", user: "alice", service: "pop3", stderr: "ip=198.51.100.8 user=alice"},
		{name: "IPv6 client", env: []string{"TCPREMOTEIP=2001:DB8:0::7", "USER=alice"},
			ip: "2001:db8::7", user: "alice", service: "pop3", stderr: "ip=2001:db8::7 "},
		{name: "dovecot post-login", args: []string{"--service", "imap"}, env: []string{"IP=198.51.100.9", "USER=bob", "LOCAL_IP=127.0.0.1"},
			ip: "198.51.100.9", user: "bob", service: "imap", stderr: "ip=198.51.100.9 user=bob service=imap\n"},
		{name: "dovecot passdb", env: []string{"TCPREMOTEIP=198.51.100.10", "SERVICE=imap", "AUTH_USER=carol", "USER=carol", "REMOTE_IP=198.51.100.10"},
			ip: "198.51.100.10", user: "carol", service: "imap", stderr: "service=imap"},
		{name: "TCPREMOTEIP empty, IP set", env: []string{"TCPREMOTEIP=", "IP=198.51.100.15", "USER=bob"},
			ip: "198.51.100.15", user: "bob", service: "pop3", stderr: "ip=198.51.100.15 user=bob"},
		{name: "TCPREMOTEIP beats IP", env: []string{"TCPREMOTEIP=198.51.100.16", "IP=198.51.100.99", "USER=bob"},
			ip: "198.51.100.16", user: "bob", service: "pop3", stderr: "ip=198.51.100.16 user=bob"},
		{name: "POPRELAY_SERVICE beats SERVICE", env: []string{"TCPREMOTEIP=198.51.100.11", "SERVICE=imap", "POPRELAY_SERVICE=imaps", "USER=carol"},
			ip: "198.51.100.11", user: "carol", service: "imaps", stderr: "service=imaps"},
		{name: "--service beats env", args: []string{"--service=pop3s"}, env: []string{"TCPREMOTEIP=198.51.100.12", "POPRELAY_SERVICE=imaps", "USER=carol"},
			ip: "198.51.100.12", user: "carol", service: "pop3s", stderr: "service=pop3s"},
		{name: "AUTH_USER without USER", env: []string{"TCPREMOTEIP=198.51.100.13", "AUTH_USER=erin"},
			ip: "198.51.100.13", user: "erin", service: "pop3", stderr: "user=erin"},
		{name: "AUTHUSER without USER", env: []string{"TCPREMOTEIP=198.51.100.14", "AUTHUSER=frank"},
			ip: "198.51.100.14", user: "frank", service: "pop3", stderr: "user=frank"},

		// No password was checked: nothing, silently.
		{name: "dovecot userdb lookup AUTHORIZED=1", env: []string{"TCPREMOTEIP=198.51.100.20", "USER=alice", "AUTHORIZED=1", "SERVICE=lmtp"}},
		{name: "dovecot userdb lookup AUTHORIZED=2", env: []string{"TCPREMOTEIP=198.51.100.20", "USER=alice", "AUTHORIZED=2"}},
		{name: "AUTHORIZED set and empty", env: []string{"TCPREMOTEIP=198.51.100.20", "USER=alice", "AUTHORIZED="}},
		{name: "doveadm user", env: []string{"USER=alice", "AUTHORIZED=1", "SERVICE=doveadm"}},
		{name: "courier, not authenticated", env: []string{"TCPREMOTEIP=198.51.100.21", "AUTHUSER=/usr/lib/courier/authlib/authdaemon", "AUTHARGV0=imapd"}},
		{name: "courier, AUTHENTICATED empty", env: []string{"TCPREMOTEIP=198.51.100.21", "AUTHUSER=/x", "AUTHARGV0=imapd", "AUTHENTICATED=", "USER=x"}},
		{name: "courier, authenticated", args: []string{"--service", "imap"}, env: []string{"TCPREMOTEIP=198.51.100.22", "AUTHUSER=/usr/lib/courier/authlib/authdaemon", "AUTHARGV0=imapd", "AUTHENTICATED=dave"},
			ip: "198.51.100.22", user: "dave", service: "imap", stderr: "ip=198.51.100.22 user=dave service=imap"},
		// Courier-IMAP 5 (Debian 12): AUTHENTICATED alone, couriertcpd's
		// IPv4-mapped TCPREMOTEIP.
		{name: "courier 5 imaplogin", args: []string{"--service", "imap"}, env: []string{"TCPREMOTEIP=::ffff:198.51.100.23", "AUTHENTICATED=alice@example.com", "PROTOCOL=IMAP"},
			ip: "198.51.100.23", user: "alice@example.com", service: "imap", stderr: "checkpassword-wrap: ip=198.51.100.23 user=alice@example.com service=imap\n"},
		{name: "USER beats AUTHENTICATED", env: []string{"TCPREMOTEIP=198.51.100.24", "AUTHENTICATED=x", "USER=alice"},
			ip: "198.51.100.24", user: "alice", service: "pop3", stderr: "user=alice "},
		// vpopmail's vchkpw: USER is the local part, VPOPUSER the login.
		{name: "vchkpw", env: []string{"TCPREMOTEIP=198.51.100.25", "USER=alice", "VPOPUSER=alice@example.com", "HOME=/home/vpopmail/domains/example.com/alice", "SHELL=NOLOGIN"},
			ip: "198.51.100.25", user: "alice@example.com", service: "pop3", stderr: "user=alice@example.com "},
		{name: "vchkpw, user%domain", env: []string{"TCPREMOTEIP=198.51.100.26", "USER=alice", "VPOPUSER=Alice%Example.com"},
			ip: "198.51.100.26", user: "Alice%Example.com", service: "pop3", stderr: "user=Alice%Example.com "},
		{name: "vchkpw, default domain", env: []string{"TCPREMOTEIP=198.51.100.27", "USER=alice", "VPOPUSER=alice"},
			ip: "198.51.100.27", user: "alice", service: "pop3", stderr: "user=alice "},
		{name: "VPOPUSER of another user", env: []string{"TCPREMOTEIP=198.51.100.28", "USER=bob", "VPOPUSER=alice@example.com"},
			ip: "198.51.100.28", user: "bob", service: "pop3", stderr: "user=bob "},
		{name: "VPOPUSER alone", env: []string{"TCPREMOTEIP=198.51.100.29", "VPOPUSER=alice@example.com"},
			stderr: "not recording ip=198.51.100.29: no user"},

		// Loud refusals.
		{name: "no address", env: []string{"USER=alice"}, stderr: "not recording: no client address (TCPREMOTEIP and IP are unset)"},
		{name: "no user", env: []string{"TCPREMOTEIP=198.51.100.30"}, stderr: "not recording ip=198.51.100.30: no user"},
		{name: "user with a newline", env: []string{"TCPREMOTEIP=198.51.100.31", "USER=a\nexpires=9999999999"}, stderr: `unable to record ip=198.51.100.31 user="a\nexpires=9999999999"`},
		{name: "peer differs", env: []string{"TCPREMOTEIP=198.51.100.32", "USER=alice"}, peer: "203.0.113.5",
			stderr: "not recording ip=198.51.100.32 user=alice service=pop3: standard input is a TCP connection from 203.0.113.5, not from 198.51.100.32"},
		// Dovecot's post-login script behind a PROXY-protocol proxy, run
		// by a trusted caller: Dovecot's IP stands, the audit line names
		// the proxy.
		{name: "trusted post-login behind a proxy", env: []string{"IP=198.51.100.37", "USER=alice"}, service: "pop3", peer: "203.0.113.5",
			ip: "198.51.100.37", user: "alice", stderr: "ip=198.51.100.37 user=alice service=pop3 via=203.0.113.5"},
		{name: "untrusted post-login behind a proxy", env: []string{"IP=198.51.100.38", "USER=alice"}, untrusted: true, peer: "203.0.113.5",
			stderr: "standard input is a TCP connection from 203.0.113.5, not from 198.51.100.38"},
		{name: "peer matches", env: []string{"TCPREMOTEIP=::ffff:198.51.100.33", "USER=alice"}, peer: "198.51.100.33",
			ip: "198.51.100.33", user: "alice", service: "pop3", stderr: "ip=198.51.100.33 user=alice"},
		{name: "untrusted, not a socket", env: []string{"TCPREMOTEIP=198.51.100.34", "USER=mallory"}, untrusted: true,
			stderr: "not recording ip=198.51.100.34 user=mallory service=pop3: standard input is not a TCP socket and uid 1000 is neither root nor in group 999"},
		// Behind a stage before the login: the stage records, the wrapper
		// says nothing; with no stage listening, the usual rules.
		{name: "reported to the stage", env: []string{"TCPREMOTEIP=::ffff:198.51.100.44", "AUTHENTICATED=alice@example.com", "POPRELAY_LOGIN_FD=23"}, untrusted: true, kind: "a UNIX socket", reported: true},
		// stunnel's exec mode sets REMOTE_HOST, no TCPREMOTEIP: the
		// stage holds the address, the wrapper reports the user alone.
		{name: "reported to the stage without TCPREMOTEIP", env: []string{"REMOTE_HOST=198.51.100.46", "REMOTE_PORT=40000", "USER=alice", "POPRELAY_LOGIN_FD=23"}, untrusted: true, peer: "127.0.0.1", reported: true},
		{name: "no user, nothing reported", env: []string{"REMOTE_HOST=198.51.100.47", "POPRELAY_LOGIN_FD=23"}, untrusted: true, peer: "127.0.0.1", reported: true,
			stderr: "not recording: no client address (TCPREMOTEIP and IP are unset)"},
		// Behind stunnel or sslserver without a stage: one line that
		// says where the address is and what would make it count.
		{name: "stunnel without a stage", env: []string{"REMOTE_HOST=198.51.100.48", "REMOTE_PORT=40000", "USER=alice"}, untrusted: true, peer: "127.0.0.1",
			stderr: "checkpassword-wrap: warning: not recording user=alice service=pop3: no client address (TCPREMOTEIP and IP are unset; REMOTE_HOST=198.51.100.48 is stunnel's word, which counts only in a stage before the login: checkpassword-wrap --before-login --remote-var REMOTE_HOST, TLS FRONT ENDS in checkpassword-wrap(8))\n"},
		{name: "sslserver without -e or a stage", env: []string{"SSLREMOTEIP=198.51.100.49", "USER=alice\n"}, kind: "a pipe",
			stderr: `checkpassword-wrap: warning: not recording user="alice\n" service=pop3: no client address (TCPREMOTEIP and IP are unset; SSLREMOTEIP=198.51.100.49 is sslserver's word`},
		{name: "no stage takes the report", env: []string{"TCPREMOTEIP=198.51.100.45", "USER=alice", "POPRELAY_LOGIN_FD=23"}, untrusted: true, kind: "a UNIX socket",
			stderr: "standard input is not a TCP socket but a UNIX socket"},
		// A TLS front end's socketpair (couriertls) or pipe (sslserver).
		{name: "untrusted, UNIX socket", env: []string{"TCPREMOTEIP=::ffff:198.51.100.41", "AUTHENTICATED=mallory"}, untrusted: true, kind: "a UNIX socket",
			stderr: "checkpassword-wrap: warning: not recording ip=198.51.100.41 user=mallory service=pop3: standard input is not a TCP socket but a UNIX socket (a TLS front end such as couriertls or sslserver in between?) and uid 1000 is neither root nor in group 999, so nothing proves the login came from 198.51.100.41: put a stage before the login or run the chain in the group (TLS FRONT ENDS in checkpassword-wrap(8))\n"},
		{name: "untrusted, pipe", env: []string{"TCPREMOTEIP=198.51.100.42", "USER=mallory"}, untrusted: true, kind: "a pipe",
			stderr: "standard input is not a TCP socket but a pipe (a TLS front end"},
		{name: "trusted, UNIX socket", env: []string{"TCPREMOTEIP=::ffff:198.51.100.43", "AUTHENTICATED=bob@example.com"}, kind: "a UNIX socket",
			ip: "198.51.100.43", user: "bob@example.com", service: "pop3", stderr: "checkpassword-wrap: ip=198.51.100.43 user=bob@example.com service=pop3\n"},
		{name: "untrusted, socket from elsewhere", env: []string{"TCPREMOTEIP=198.51.100.35", "USER=mallory"}, untrusted: true, peer: "203.0.113.5",
			stderr: "standard input is a TCP connection from 203.0.113.5"},
		{name: "untrusted, socket from the client", env: []string{"TCPREMOTEIP=198.51.100.36", "USER=alice"}, untrusted: true, peer: "198.51.100.36",
			ip: "198.51.100.36", user: "alice", service: "pop3", stderr: "ip=198.51.100.36 user=alice"},
		{name: "untrusted, socket to the client", env: []string{"TCPREMOTEIP=198.51.100.37", "USER=mallory"}, untrusted: true, peer: "198.51.100.37",
			opened: "standard input is a connection to local port 40000, which is neither privileged nor listed",
			stderr: "checkpassword-wrap: warning: not recording ip=198.51.100.37 user=mallory service=pop3: standard input is a connection to local port 40000, which is neither privileged nor listed, and uid 1000 is neither root nor in group 999\n"},
		{name: "trusted, socket to the client", env: []string{"TCPREMOTEIP=198.51.100.39", "USER=alice"}, peer: "198.51.100.39", opened: "not accepted",
			ip: "198.51.100.39", user: "alice", service: "pop3", stderr: "ip=198.51.100.39 user=alice"},

		// Flags.
		{name: "-- ends flags", args: []string{"--"}, env: []string{"TCPREMOTEIP=198.51.100.40", "USER=a"}, ip: "198.51.100.40", user: "a", service: "pop3", stderr: "ip="},
		{name: "unknown flag", args: []string{"--bogus"}, code: 100, stderr: "fatal: unknown flag --bogus"},
		{name: "flag without value", args: []string{"--spool="}, code: 100, stderr: "fatal: flag --spool needs a value"},
		{name: "help", args: []string{"--help"}, code: 0, stderr: "usage: checkpassword-wrap"},
		{name: "--remote-var without --before-login", args: []string{"--remote-var", "REMOTE_HOST"}, code: 100, stderr: "fatal: --remote-var is for the stage: give --before-login too"},
		{name: "--remote-var of no front end", args: []string{"--before-login", "--remote-var=PATH"}, code: 100, stderr: "fatal: --remote-var PATH: want TCPREMOTEIP, REMOTE_HOST or SSLREMOTEIP"},
		{name: "--remote-var without value", args: []string{"--before-login", "--remote-var="}, code: 100, stderr: "fatal: flag --remote-var needs a value"},
	}
	for _, ip := range []string{"../../etc/passwd", "1.2.3.4/../x", "1.2.3.4\nRELAYCLIENT", "001.002.003.004", "", strings.Repeat("1", 10240),
		"fe80::1%eth0", "[::1]", "1.2.3.4:110", " 1.2.3.4", "localhost"} {
		want := "not recording: client address " + show(ip) + " is not an IP address\n"
		tcs = append(tcs, tc{name: "hostile " + show(ip), env: []string{"TCPREMOTEIP=" + ip, "USER=alice"}, stderr: want})
	}
	nev := map[string]string{
		"127.0.0.1":       "loopback 127.0.0.1",
		"::1":             "loopback ::1",
		"0.0.0.0":         "unspecified address 0.0.0.0",
		"::":              "unspecified address ::",
		"224.0.0.1":       "multicast 224.0.0.1",
		"ff02::1":         "multicast ff02::1",
		"255.255.255.255": "broadcast address 255.255.255.255",
		"192.0.2.10":      "never-grant entry 192.0.2.10 (NEVER:2)",
		"10.1.2.3":        "never-grant entry 10.1. (NEVER:3)",
		"192.0.2.99":      "never-grant entry 192.0.2.99 (DEFAULT:1)",
	}
	if own != "" {
		nev[own] = "own interface address " + own
	} else {
		t.Log("this host has no address but loopback: own-address case left out")
	}
	for ip, why := range nev {
		tcs = append(tcs, tc{name: "never " + ip, env: []string{"TCPREMOTEIP=" + ip, "USER=alice"},
			stderr: "checkpassword-wrap: not recording ip=" + ip + " user=alice service=pop3: never granted: " + why + "\n"})
	}

	for _, tc := range tcs {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			spool := filepath.Join(dir, "spool")
			os.Mkdir(spool, 0o770)
			neverFile := filepath.Join(dir, "never")
			defaultNever := filepath.Join(dir, "default-never")
			os.WriteFile(neverFile, []byte("# test\n192.0.2.10\n10.1.\n"), 0o644)
			os.WriteFile(defaultNever, []byte("192.0.2.99\n"), 0o644)
			sys := system{
				peer:      func() (string, bool) { return tc.peer, tc.peer != "" },
				trusted:   func() (bool, string) { return !tc.untrusted, "uid 1000 is neither root nor in group 999" },
				accepted:  func() (bool, string) { return tc.opened == "", tc.opened },
				stdinKind: func() string { return tc.kind },
				report: func(fd, user, service string) bool {
					if fd != "23" || user == "" || service != "pop3" {
						t.Errorf("report(%q, %q, %q)", fd, user, service)
					}
					return tc.reported
				},
				neverFile: defaultNever,
			}
			env := append([]string{"POPRELAY_SPOOL=" + spool, "POPRELAY_NEVER=" + neverFile}, tc.env...)
			args := append(slices.Clone(tc.args), "qmail-pop3d", "--spool", "Maildir")
			var stderr strings.Builder
			res := run(args, env, &stderr, sys)

			got := strings.ReplaceAll(strings.ReplaceAll(stderr.String(), neverFile, "NEVER"), defaultNever, "DEFAULT")
			if tc.stderr == "" && got != "" || !strings.Contains(got, tc.stderr) {
				t.Errorf("stderr %q; want %q", got, tc.stderr)
			}
			if strings.Count(got, "\n") > 1 && tc.code != 100 && !strings.Contains(tc.stderr, "usage") {
				t.Errorf("more than one line on stderr: %q", got)
			}
			if tc.code != 0 || strings.Contains(tc.stderr, "usage") {
				if res.argv != nil || res.code != tc.code {
					t.Errorf("run = %+v; want exit %d", res, tc.code)
				}
				return
			}
			if !slices.Equal(res.argv, []string{"qmail-pop3d", "--spool", "Maildir"}) {
				t.Errorf("argv = %q", res.argv)
			}
			gs, err := grant.New(spool).List()
			if err != nil {
				t.Fatal(err)
			}
			ents, _ := os.ReadDir(spool)
			if tc.ip == "" {
				if len(ents) != 0 {
					t.Errorf("recorded %v (spool: %v)", gs, ents)
				}
				return
			}
			if len(gs) != 1 || len(ents) != 1 || gs[0].IP != tc.ip || gs[0].User != tc.user || gs[0].Service != tc.service {
				t.Errorf("recorded %+v; want %s %s %s", gs, tc.ip, tc.user, tc.service)
			}
			if all, _ := os.ReadDir(dir); len(all) != 3 {
				t.Errorf("something created outside the spool: %v", all)
			}
		})
	}
}

func TestRunSpoolTrouble(t *testing.T) {
	sys := system{peer: func() (string, bool) { return "", false }, trusted: func() (bool, string) { return true, "" }}
	dir := t.TempDir()
	link := filepath.Join(dir, "link")
	os.Symlink("/etc", link)
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o644)
	for _, tc := range []struct{ spool, want string }{
		{filepath.Join(dir, "missing"), "no such file or directory"},
		{file, "not a directory"},
	} {
		var stderr strings.Builder
		res := run([]string{"--spool", tc.spool, "/bin/true"}, []string{"TCPREMOTEIP=198.51.100.7", "USER=alice"}, &stderr, sys)
		if !slices.Equal(res.argv, []string{"/bin/true"}) {
			t.Errorf("%s: argv %q", tc.spool, res.argv)
		}
		if !strings.HasPrefix(stderr.String(), "checkpassword-wrap: warning: unable to record ip=198.51.100.7 user=alice service=pop3: ") ||
			!strings.Contains(stderr.String(), tc.want) || strings.Count(stderr.String(), "\n") != 1 {
			t.Errorf("%s: stderr %q", tc.spool, stderr.String())
		}
	}
	// A planted symlink of the client's name is replaced, not written through.
	spool := filepath.Join(dir, "spool")
	os.Mkdir(spool, 0o755)
	target := filepath.Join(dir, "target")
	os.WriteFile(target, []byte("keep"), 0o644)
	os.Symlink(target, filepath.Join(spool, "198.51.100.7"))
	var stderr strings.Builder
	run([]string{"--spool", spool, "/bin/true"}, []string{"TCPREMOTEIP=198.51.100.7", "USER=alice"}, &stderr, sys)
	if b, _ := os.ReadFile(target); string(b) != "keep" {
		t.Errorf("written through a symlink: %q", b)
	}
	if g, ok, err := grant.New(spool).Get("198.51.100.7"); !ok || err != nil || g.User != "alice" {
		t.Errorf("grant %+v %v %v", g, ok, err)
	}
}

func TestRunNeverFileTrouble(t *testing.T) {
	sys := system{peer: func() (string, bool) { return "", false }, trusted: func() (bool, string) { return true, "" }}
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad")
	os.WriteFile(bad, []byte("10.0.0.1\nnonsense\n"), 0o644)
	for _, tc := range []struct{ never, want string }{
		{filepath.Join(dir, "missing"), "unable to read never-grant file"},
		{bad, "never-grant file: " + bad + ":2: not an IP address or prefix"},
	} {
		var stderr strings.Builder
		res := run([]string{"--spool", dir, "--never", tc.never, "/bin/true"}, []string{"TCPREMOTEIP=198.51.100.7", "USER=alice"}, &stderr, sys)
		if res.argv == nil || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("%s: %+v, stderr %q", tc.never, res, stderr.String())
		}
		if _, ok, _ := grant.New(dir).Get("198.51.100.7"); ok {
			t.Errorf("%s: recorded", tc.never)
		}
	}
	// A missing default file is fine.
	sys.neverFile = filepath.Join(dir, "no-default")
	var stderr strings.Builder
	res := run([]string{"--spool", dir, "/bin/true"}, []string{"TCPREMOTEIP=198.51.100.7", "USER=alice"}, &stderr, sys)
	if res.argv == nil || !strings.HasPrefix(stderr.String(), "checkpassword-wrap: ip=198.51.100.7 ") {
		t.Errorf("%+v, stderr %q", res, stderr.String())
	}
}

func TestParseArgsStopsAtProgram(t *testing.T) {
	c, err := parseArgs([]string{"--rebuild", "-spool=/s", "prog", "--spool", "x", "--"}, map[string]string{})
	if err != nil || !c.rebuild || c.spool != "/s" || !slices.Equal(c.argv, []string{"prog", "--spool", "x", "--"}) {
		t.Errorf("%+v, %v", c, err)
	}
	c, err = parseArgs([]string{"--", "--spool"}, map[string]string{})
	if err != nil || !slices.Equal(c.argv, []string{"--spool"}) || c.spool != grant.DefaultDir {
		t.Errorf("%+v, %v", c, err)
	}
	for _, args := range [][]string{{}, {"--"}, {"--rebuild"}, {"--rebuild=yes", "p"}, {"--service=", "p"}} {
		if _, err := parseArgs(args, map[string]string{}); err == nil {
			t.Errorf("parseArgs(%q) accepted", args)
		}
	}
}

// TestRebuildFlagIgnored: --rebuild, which older run scripts pass, is
// accepted and does nothing but say so in one line; the grant is recorded
// and the next program runs.
func TestRebuildFlagIgnored(t *testing.T) {
	sys := system{peer: func() (string, bool) { return "", false }, trusted: func() (bool, string) { return true, "" }}
	dir := t.TempDir()
	sys.neverFile = filepath.Join(dir, "no-default")
	var stderr strings.Builder
	res := run([]string{"--rebuild", "--spool", dir, "/bin/true"}, []string{"TCPREMOTEIP=198.51.100.7", "USER=alice"}, &stderr, sys)
	want := "checkpassword-wrap: warning: --rebuild does nothing now (the mail user cannot write the CDB): relayctl watch, or cron's relayctl expire, publishes the grant; drop the flag\n" +
		"checkpassword-wrap: ip=198.51.100.7 user=alice service=pop3\n"
	if !slices.Equal(res.argv, []string{"/bin/true"}) || stderr.String() != want {
		t.Errorf("%+v, stderr %q", res, stderr.String())
	}
	if _, ok, _ := grant.New(dir).Get("198.51.100.7"); !ok {
		t.Error("not recorded")
	}
}

func TestStdinKind(t *testing.T) {
	saved, err := syscall.Dup(0)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { syscall.Dup2(saved, 0); syscall.Close(saved) }()
	as := func(fd int) string {
		if err := syscall.Dup2(fd, 0); err != nil {
			t.Fatal(err)
		}
		return stdinKind()
	}
	pair, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(pair[0])
	defer syscall.Close(pair[1])
	var p [2]int
	if err := syscall.Pipe(p[:]); err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(p[0])
	defer syscall.Close(p[1])
	udp, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(udp)
	null, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	for _, tc := range []struct {
		name string
		fd   int
		want string
	}{
		{"socketpair (couriertls)", pair[0], "a UNIX socket"},
		{"pipe read end (sslserver)", p[0], "a pipe"},
		{"pipe write end", p[1], "a pipe"},
		{"UDP socket", udp, ""},
		{"/dev/null", int(null.Fd()), ""},
	} {
		if got := as(tc.fd); got != tc.want {
			t.Errorf("%s: stdinKind = %q; want %q", tc.name, got, tc.want)
		}
	}
}

func TestVpopName(t *testing.T) {
	for _, tc := range []struct {
		name, user string
		want       bool
	}{
		{"alice@example.com", "alice", true},
		{"Alice@Example.com", "alice", true},
		{"alice%example.com", "alice", true},
		{"alice/example.com", "alice", true},
		{"alice", "alice", true},
		{"alicex@example.com", "alice", false},
		{"bob@example.com", "alice", false},
		{"@example.com", "alice", false},
		{"", "alice", false},
	} {
		if got := vpopName(tc.name, tc.user); got != tc.want {
			t.Errorf("vpopName(%q, %q) = %v", tc.name, tc.user, got)
		}
	}
}

func TestStdinPeer(t *testing.T) {
	// The test's own stdin is not a TCP socket.
	if ip, ok := stdinPeer(); ok {
		t.Errorf("stdinPeer = %s", ip)
	}
}

func TestExecNextFailure(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "noexec"), []byte("#!/bin/sh\n"), 0o644)
	for _, tc := range []struct{ prog, want string }{
		{"/no/such/prog", "checkpassword-wrap: fatal: unable to run /no/such/prog: no such file or directory\n"},
		{"no-such-prog-in-path", "checkpassword-wrap: fatal: unable to run no-such-prog-in-path: executable file not found in $PATH\n"},
		{filepath.Join(dir, "noexec"), "checkpassword-wrap: fatal: unable to run " + filepath.Join(dir, "noexec") + ": permission denied\n"},
	} {
		var stderr strings.Builder
		if code := execNext(result{argv: []string{tc.prog}}, os.Environ(), &stderr); code != 111 || stderr.String() != tc.want {
			t.Errorf("execNext(%s) = %d, %q; want 111, %q", tc.prog, code, stderr.String(), tc.want)
		}
	}
}
