package t

import (
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestDovecotFacts pins what docs/dovecot.md states about the programs
// Dovecot runs after a login, by putting a recorder in front of the
// wrapper in both routes at once: who they run as, what fd 0 and fd 1 are,
// and which environment reaches them. checkpassword-wrap relies on these
// (for example: "if fd 0 is a TCP socket, its peer must be the recorded
// address").
func TestDovecotFacts(t *testing.T) {
	d := setupDovecot(t)
	d.script(t, "checkpassword", testCheckpassword)
	d.script(t, "facts.sh", factsScript)
	facts := filepath.Join(d.Dir, "facts")
	dvMkdir(t, facts, 0755)
	if err := os.Chown(facts, d.internalUID, d.internalGID); err != nil {
		t.Fatal(err)
	}
	// POPRELAY_SPOOL in Dovecot's own environment must not be relied on:
	// the facts below show it reaches neither route.
	dv := startDovecot(t, d, baseEnv("POPRELAY_SPOOL=/nonexistent"), factsConf)

	if !dvPOP3(t, "127.0.0.22", dv.POP3, false, dvPass) {
		t.Fatal("POP3 login failed")
	}
	if !dvIMAP(t, "127.0.0.23", dv.IMAP, dvPass) {
		t.Fatal("IMAP login failed")
	}
	if !dvPOP3(t, "127.0.0.24", dv.POP3S, true, dvPass) {
		t.Fatal("POP3S login failed")
	}
	m := dvDial(t, "127.0.0.26", dv.IMAP, false)
	m.startTLS()
	if !dvIMAPConn(t, m, "127.0.0.26", dvPass) {
		t.Fatal("IMAP login after STARTTLS failed")
	}
	// Behind a proxy speaking the PROXY protocol (haproxy = yes): the
	// proxy at 127.0.0.25 reports its client 198.51.100.7.
	m = dvDialProxied(t, "127.0.0.25", dv.Spare, "198.51.100.7")
	if r := m.pop3("USER " + dvUser); !strings.HasPrefix(r, "+OK") {
		t.Fatalf("USER via PROXY: %q", r)
	}
	if r := m.pop3("PASS " + dvPass); !strings.HasPrefix(r, "+OK") {
		t.Fatalf("PASS via PROXY: %q", r)
	}
	m.pop3("QUIT")
	dvDoveadmUser(t, dv, "-x", "service=lmtp", "-x", "rip=127.0.0.29", "alice")

	read := func(name string) *dvFacts {
		t.Helper()
		f, err := readFacts(filepath.Join(facts, name))
		if err != nil {
			t.Fatalf("%s: %v (recorded: %v)", name, err, dvSpoolNames(t, facts))
		}
		t.Logf("%s: uid=%s groups=%s fd0=%s fd1=%s fd2=%s fd3=%s fd4=%s (fd0 %s) RLIMIT_AS=%s", name,
			f.kv["uid"], f.kv["groups"], f.kv["fd0"], f.kv["fd1"], f.kv["fd2"], f.kv["fd3"], f.kv["fd4"], f.fd0Kind(), f.kv["as"])
		if !slices.Contains(strings.Fields(f.kv["groups"]), fmt.Sprint(d.gid)) {
			t.Errorf("%s: groups %s, want extra_groups' %d among them", name, f.kv["groups"], d.gid)
		}
		if f.kv["as"] != "1073741824" {
			t.Errorf("%s: address space limit %s, want vsz_limit's 1G", name, f.kv["as"])
		}
		if f.kv["uid"] != fmt.Sprint(d.internalUID) {
			t.Errorf("%s: runs as uid %s, want default_internal_user's %d", name, f.kv["uid"], d.internalUID)
		}
		if v, ok := f.env["POPRELAY_SPOOL"]; ok {
			t.Errorf("%s: POPRELAY_SPOOL=%q reached it from Dovecot's environment", name, v)
		}
		return f
	}

	// Post-login script, plain POP3 and IMAP: fd 0 and fd 1 are the
	// client's TCP socket itself; its peer is the address in IP.
	for _, c := range []struct{ ip, service string }{{"127.0.0.22", "pop3"}, {"127.0.0.23", "imap"}} {
		f := read("postlogin-" + c.ip)
		if f.kv["fd0"] != f.kv["fd1"] || f.fd0Kind() != "tcp "+c.ip {
			t.Errorf("post-login %s: fd0=%s fd1=%s (%s), want both the TCP socket from %s",
				c.service, f.kv["fd0"], f.kv["fd1"], f.fd0Kind(), c.ip)
		}
		if f.env["IP"] != c.ip || f.env["USER"] != dvUser {
			t.Errorf("post-login %s: IP=%q USER=%q", c.service, f.env["IP"], f.env["USER"])
		}
		if v, ok := f.env["TCPREMOTEIP"]; ok {
			t.Errorf("post-login %s: TCPREMOTEIP=%q is set", c.service, v)
		}
	}
	// Post-login script behind TLS (pop3s): a UNIX socket to the login
	// process, which terminates TLS; IP still names the client.
	for _, ip := range []string{"127.0.0.24", "127.0.0.26"} { // pop3s, IMAP STARTTLS
		if f := read("postlogin-" + ip); f.fd0Kind() != "unix" || f.env["IP"] != ip {
			t.Errorf("post-login with TLS from %s: fd0 %s IP=%q, want a UNIX socket", ip, f.fd0Kind(), f.env["IP"])
		}
	}

	// Post-login script behind a PROXY-protocol proxy: IP is the client
	// the proxy reported, while fd 0 is the TCP socket from the proxy. A
	// wrapper that demands "IP == fd 0's peer" refuses these logins.
	if f := read("postlogin-198.51.100.7"); f.fd0Kind() != "tcp 127.0.0.25" {
		t.Errorf("post-login via PROXY: fd0 %s, want the TCP socket from the proxy 127.0.0.25", f.fd0Kind())
	}
	if f := read("checkpassword-198.51.100.7"); f.kv["fd0"] != "/dev/null" {
		t.Errorf("checkpassword via PROXY: fd0=%s", f.kv["fd0"])
	}

	// checkpassword chain: fd 0 is /dev/null, fd 3 and fd 4 pipes; the
	// client address is TCPREMOTEIP; no AUTHORIZED on a login.
	for _, ip := range []string{"127.0.0.22", "127.0.0.23", "127.0.0.24", "127.0.0.26"} {
		f := read("checkpassword-" + ip)
		if f.kv["fd0"] != "/dev/null" || !strings.HasPrefix(f.kv["fd3"], "pipe:") || !strings.HasPrefix(f.kv["fd4"], "pipe:") {
			t.Errorf("checkpassword %s: fd0=%s fd3=%s fd4=%s, want /dev/null and two pipes", ip, f.kv["fd0"], f.kv["fd3"], f.kv["fd4"])
		}
		if f.env["TCPREMOTEIP"] != ip {
			t.Errorf("checkpassword %s: TCPREMOTEIP=%q", ip, f.env["TCPREMOTEIP"])
		}
		if v, ok := f.env["AUTHORIZED"]; ok {
			t.Errorf("checkpassword %s: AUTHORIZED=%q on a login", ip, v)
		}
	}
	// A userdb lookup with a remote address (as LMTP makes): same chain,
	// TCPREMOTEIP is the MTA, AUTHORIZED is set (2 here: the checkpassword
	// sets it before exec'ing the wrapper, as Dovecot asks).
	if f := read("checkpassword-127.0.0.29"); f.env["AUTHORIZED"] == "" || f.env["SERVICE"] != "lmtp" {
		t.Errorf("userdb lookup: AUTHORIZED=%q SERVICE=%q", f.env["AUTHORIZED"], f.env["SERVICE"])
	}
	// The proxied login: the checkpassword chain records the client the
	// proxy reported; so does the post-login wrapper, whose caller is
	// trusted (extra_groups = poprelay), and its audit line names the
	// proxy the socket came from.
	dvWantGrant(t, d.Spool, "198.51.100.7", "pop3")
	via := false
	for _, line := range strings.Split(dv.logText(), "\n") {
		via = via || strings.Contains(line, "pop3-postlogin") &&
			strings.Contains(line, "ip=198.51.100.7 ") && strings.Contains(line, "via=127.0.0.25")
	}
	if !via {
		t.Error("no post-login audit line for 198.51.100.7 via the proxy 127.0.0.25 in Dovecot's log")
	}
	for _, ip := range []string{"127.0.0.22", "127.0.0.24"} {
		dvWantGrant(t, d.Spool, ip, "pop3")
	}
	dvWantGrant(t, d.Spool, "127.0.0.23", "imap")
	dvWantGrant(t, d.Spool, "127.0.0.26", "imap")
	if g := dvGrant(t, d.Spool, "127.0.0.29"); g != nil {
		t.Errorf("userdb lookup from 127.0.0.29 recorded %v", g)
	}
}

// factsConf runs the facts recorder in front of checkpassword-wrap in
// both routes at once.
const factsConf = `
service auth {
  extra_groups = @GROUP@
  vsz_limit = 1G
}
haproxy_trusted_networks = 127.0.0.0/8
service pop3-login {
  inet_listener pop3-haproxy {
    address = 127.0.0.1
    port = @SPARE@
    haproxy = yes
  }
}
passdb {
  driver = checkpassword
  args = @DIR@/checkpassword @DIR@/facts.sh checkpassword @WRAP@ --spool @SPOOL@ --service %s
}
userdb {
  driver = prefetch
}
userdb {
  driver = checkpassword
  args = @DIR@/checkpassword @DIR@/facts.sh checkpassword @WRAP@ --spool @SPOOL@ --service %s
}
service pop3 {
  executable = pop3 pop3-postlogin
}
service pop3-postlogin {
  executable = script-login @DIR@/facts.sh postlogin @WRAP@ --spool @SPOOL@ --service pop3
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
  executable = script-login @DIR@/facts.sh postlogin @WRAP@ --spool @SPOOL@ --service imap
  user = $default_internal_user
  extra_groups = @GROUP@
  vsz_limit = 1G
  unix_listener imap-postlogin {
  }
}
`

// factsScript records its uid, fds 0-4 (read before any redirection of
// its own), the sockets the kernel knows and its environment into
// facts/ROUTE-IP, then execs the rest of argv.
const factsScript = `#!/bin/sh
route=$1
shift
uid=$(id -u)
groups=$(id -G)
fd0=$(readlink /proc/$$/fd/0)
fd1=$(readlink /proc/$$/fd/1)
fd2=$(readlink /proc/$$/fd/2)
fd3=$(readlink /proc/$$/fd/3)
fd4=$(readlink /proc/$$/fd/4)
as=$(sed -n 's/^Max address space *\([^ ]*\) .*/\1/p' /proc/$$/limits)
f=@DIR@/facts/$route-${TCPREMOTEIP:-${IP:-none}}
{
	echo "uid=$uid"
	echo "groups=$groups"
	echo "fd0=$fd0"
	echo "fd1=$fd1"
	echo "fd2=$fd2"
	echo "fd3=$fd3"
	echo "fd4=$fd4"
	echo "as=$as"
	echo "--- tcp"
	cat /proc/net/tcp
	echo "--- unix"
	cat /proc/net/unix
	echo "--- env"
	env
} >"$f.tmp" 2>&1 && mv "$f.tmp" "$f"
exec "$@"
`

// dvFacts is one record of factsScript.
type dvFacts struct {
	kv   map[string]string // uid, fd0..fd4
	env  map[string]string
	tcp  map[string]string // socket inode → remote IPv4 address
	unix map[string]bool   // socket inodes of UNIX sockets
}

func readFacts(name string) (*dvFacts, error) {
	b, err := os.ReadFile(name)
	if err != nil {
		return nil, err
	}
	f := &dvFacts{kv: map[string]string{}, env: map[string]string{},
		tcp: map[string]string{}, unix: map[string]bool{}}
	section := ""
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "--- ") {
			section = line[4:]
			continue
		}
		fields := strings.Fields(line)
		switch section {
		case "":
			if k, v, ok := strings.Cut(line, "="); ok {
				f.kv[k] = v
			}
		case "env":
			if k, v, ok := strings.Cut(line, "="); ok {
				f.env[k] = v
			}
		case "tcp":
			// sl local rem st queues tr retrnsmt uid timeout inode
			if len(fields) >= 10 && fields[0] != "sl" {
				f.tcp[fields[9]] = hexIPv4(fields[2])
			}
		case "unix":
			// Num RefCount Protocol Flags Type St Inode [Path]
			if len(fields) >= 7 && fields[0] != "Num" {
				f.unix[fields[6]] = true
			}
		}
	}
	return f, nil
}

// fd0Kind says what fd 0 is: "tcp PEER", "unix", or its link text.
func (f *dvFacts) fd0Kind() string {
	link := f.kv["fd0"]
	inode, ok := strings.CutPrefix(link, "socket:[")
	if !ok {
		return link
	}
	inode = strings.TrimSuffix(inode, "]")
	if peer, ok := f.tcp[inode]; ok {
		return "tcp " + peer
	}
	if f.unix[inode] {
		return "unix"
	}
	return "socket of another kind"
}

// hexIPv4 turns /proc/net/tcp's "0200007F:8E35" into "127.0.0.2".
func hexIPv4(s string) string {
	h, _, _ := strings.Cut(s, ":")
	b, err := hex.DecodeString(h)
	if err != nil || len(b) != 4 {
		return s
	}
	return net.IPv4(b[3], b[2], b[1], b[0]).String()
}
