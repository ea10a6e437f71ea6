package t

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/poprelay/poprelay/internal/addr"
	"github.com/poprelay/poprelay/internal/etcdtest"
	"github.com/poprelay/poprelay/internal/wait"
)

// TestSecurityIPv6Keys: grant records are keyed by exactly the text the
// real IPv6 tcpserver (Debian's ucspi-tcp-ipv6) looks its clients up
// under. Clients log in through checkpassword-wrap under that tcpserver
// from IPv6 addresses with lone zero groups, runs of equal length and
// random ones, then connect to it as the SMTP service (-x CDB): each gets
// RELAYCLIENT, its TCPREMOTEIP is addr.Key of its address, and relayctl
// check of that text names the grant. An IPv4 client of its dual-stack
// socket is looked up as plain a.b.c.d (the CDB has no ::ffff: key); only
// tcpserver -6 looks up ::ffff:a.b.c.d, which relayctl --mapped adds.
func TestSecurityIPv6Keys(t *testing.T) {
	tools := ipv6Tools(t)
	if !inNetns(t, "POPRELAY_UCSPI_IPV6="+tools) {
		return
	}
	s := newRelayctlSite(t, ":allow,X=\"default\"\n")
	// Every login is alice's, from more addresses than the per-user
	// cap keeps: this test is about keys, not caps (t/caps_test.go).
	s.env = append(s.env, "POPRELAY_MAXPERUSER=0")
	s.relayctl(t, "rebuild")
	login := startTcpserver6(t, tools, "0", append(s.env, "USER=alice"), []string{"-R", "-H"}, bin("checkpassword-wrap"), "/usr/bin/env")
	smtp := startTcpserver6(t, tools, "0", s.env, []string{"-x", s.cdb, "-R", "-H"}, "/usr/bin/env")

	srcs := []string{
		"2001:db8:0:1:1:1:1:1", // tcpserver: 2001:db8::1:1:1:1:1
		"2001:0:0:1:0:0:0:1",   // 2001:0:0:1::1 (RFC 5952: 2001::1:0:0:0:1)
		"2001:db8:5:0:0:1:0:0", // 2001:db8:5::1:0:0, the first of two runs
		"2001:db8:0:0:1:0:0:1", // 2001:db8::1:0:0:1
		"2001:db8:1:2:3:4:5:6",
		"2001:db8::7",
		"2001:db8:ab:cd:ef::",     // its key ends in ':': refused
		"2001:db8:0:2:3:4:5:0",    // 2001:db8::2:3:4:5:0
		"2001:db8:0:2:0:4:5:0",    // 2001:db8::2:0:4:5:0
		"2001:db8:a:b:c:d:0:ffff", // 2001:db8:a:b:c:d::ffff
	}
	rng := rand.New(rand.NewPCG(16, 3))
	for range 30 {
		a := [16]byte{0x20, 0x01, 0x0d, 0xb8}
		for i := 4; i < 16; i += 2 {
			if rng.IntN(2) == 0 {
				a[i], a[i+1] = byte(rng.IntN(3)), byte(rng.IntN(256))
			}
		}
		srcs = append(srcs, netip.AddrFrom16(a).String())
	}
	srcs = append(srcs, "127.0.0.5")

	text := map[string]string{} // client → the TCPREMOTEIP tcpserver gave it
	for _, src := range srcs {
		env := envFrom(dialFrom(t, src, login.Port, ""))
		text[src] = env["TCPREMOTEIP"]
		if want := addr.Key(netip.MustParseAddr(src)); env["TCPREMOTEIP"] != want {
			t.Errorf("%s: tcpserver says TCPREMOTEIP=%q, addr.Key says %q", src, env["TCPREMOTEIP"], want)
		}
	}
	s.relayctl(t, "rebuild")
	ks, err := keys(s.cdb)
	if err != nil {
		t.Fatal(err)
	}
	for k := range ks {
		if strings.HasPrefix(k, "::ffff:") || k != "" && strings.ContainsAny(k[len(k)-1:], ":.") {
			t.Errorf("the CDB has a key %q", k)
		}
	}
	for _, src := range srcs {
		env := envFrom(dialFrom(t, src, smtp.Port, ""))
		_, relay := env["RELAYCLIENT"]
		refused := strings.HasSuffix(text[src], ":")
		if relay == refused || env["TCPREMOTEIP"] != text[src] {
			t.Errorf("%s (TCPREMOTEIP %q): RELAYCLIENT %v, want %v", src, env["TCPREMOTEIP"], relay, !refused)
		}
		// The wrapper refused to record an address whose key ends in
		// ':' (TestSecurityPrefixKey).
		out := s.relayctl(t, "check", text[src])
		spool := netip.MustParseAddr(src).String()
		switch {
		case refused && (!strings.Contains(out, `key: ""`) || strings.Contains(out, "grant")):
			t.Errorf("check %s:\n%s", text[src], out)
		case !refused && (!strings.Contains(out, fmt.Sprintf("key: %q\n", text[src])) || !strings.Contains(out, "from: grant for "+spool+": ")):
			t.Errorf("check %s:\n%s", text[src], out)
		}
	}

	// tcpserver -6 looks an IPv4 client up as ::ffff:a.b.c.d: only
	// --mapped gives it a record.
	smtp6 := startTcpserver6(t, tools, "0", s.env, []string{"-6", "-x", s.cdb, "-R", "-H"}, "/usr/bin/env")
	env := envFrom(dialFrom(t, "127.0.0.5", smtp6.Port, ""))
	if _, relay := env["RELAYCLIENT"]; relay || env["TCPREMOTEIP"] != "::ffff:127.0.0.5" {
		t.Errorf("tcpserver -6, no --mapped: %v", env)
	}
	s.relayctl(t, "rebuild", "--mapped")
	env = envFrom(dialFrom(t, "127.0.0.5", smtp6.Port, ""))
	if _, relay := env["RELAYCLIENT"]; !relay || env["TCPREMOTEIP"] != "::ffff:127.0.0.5" {
		t.Errorf("tcpserver -6, --mapped: %v", env)
	}
	if out := s.relayctl(t, "check", "::ffff:127.0.0.5"); !strings.Contains(out, `key: "::ffff:127.0.0.5"`) {
		t.Errorf("check ::ffff:127.0.0.5:\n%s", out)
	}
}

// TestSecurityPrefixKey: a grant never opens more than its own address.
// The IPv6 tcpserver spells 2001:db8:aaaa:: with a final ':' and matches
// that text as a prefix of every address after it, so such an address is
// refused, with a line saying why, by the wrapper (under the real IPv6
// tcpserver too), allow, import, and a rebuild that finds it in the spool;
// list and check show it; no client near it relays.
func TestSecurityPrefixKey(t *testing.T) {
	tools := ipv6Tools(t)
	if !inNetns(t, "POPRELAY_UCSPI_IPV6="+tools) {
		return
	}
	const bad = "2001:db8:aaaa::"
	const why = `would open a range: its key "2001:db8:aaaa::" ends in ":", which tcpserver also matches as a prefix of other addresses`
	s := newRelayctlSite(t, ":allow\n")
	s.relayctl(t, "rebuild")
	exists := func() bool { _, err := os.Lstat(filepath.Join(s.spool, bad)); return err == nil }

	// A login, under the real IPv6 tcpserver and on its own.
	login := startTcpserver6(t, tools, "0", append(s.env, "USER=mallory"), []string{"-R", "-H"}, bin("checkpassword-wrap"), "/usr/bin/env")
	if env := envFrom(dialFrom(t, bad, login.Port, "")); env["TCPREMOTEIP"] != bad || env["USER"] != "mallory" {
		t.Errorf("the login did not go on: %v", env)
	}
	r := runCmd(t, append(s.env, "TCPREMOTEIP="+bad, "USER=mallory"), "", wait.Patience, bin("checkpassword-wrap"), "/bin/true")
	if r.code != 0 || !strings.Contains(r.stderr, "not recording ip="+bad+" user=mallory service=pop3: never granted: "+why) {
		t.Errorf("wrapper: exit %d, stderr %q", r.code, r.stderr)
	}
	if exists() {
		t.Fatal("the wrapper recorded " + bad)
	}
	// By hand.
	if r := s.run(t, "allow", bad); r.code != 100 || !strings.Contains(r.stderr, "unable to grant "+bad+": never granted: "+why) {
		t.Errorf("allow: exit %d, stderr %q", r.code, r.stderr)
	}
	// From vpopmail and relay-ctrl.
	open := filepath.Join(s.dir, "open-smtp")
	os.WriteFile(open, fmt.Appendf(nil, "%s:allow,RELAYCLIENT=\"\",RBLSMTPD=\"\"\t%d\n", bad, time.Now().Unix()), 0o644)
	rc := filepath.Join(s.dir, "relay-ctrl")
	os.Mkdir(rc, 0o755)
	os.WriteFile(filepath.Join(rc, bad), nil, 0o644)
	for _, args := range [][]string{{"import", "--vpopmail", open}, {"import", "--relay-ctrl", rc}} {
		if r := s.run(t, args...); r.code != 0 || !strings.Contains(r.stderr, "warning: skipped "+bad+": never granted: "+why) {
			t.Errorf("%s: exit %d, stderr %q", args, r.code, r.stderr)
		}
	}
	if exists() {
		t.Fatal("import recorded " + bad)
	}
	// Already in the spool (an older wrapper, a shared engine).
	recordAt(t, s.spool, bad, "mallory")
	if r := s.run(t, "rebuild"); r.code != 0 || !strings.Contains(r.stderr, `warning: refused grant for `+bad+` (user "mallory"): `+why) {
		t.Errorf("rebuild: exit %d, stderr %q", r.code, r.stderr)
	}
	if out := s.relayctl(t, "list"); !strings.Contains(out, "refused: "+why) {
		t.Errorf("list:\n%s", out)
	}
	if out := s.relayctl(t, "check", bad+"5"); !strings.Contains(out, `key: ""`) {
		t.Errorf("check %s5:\n%s", bad, out)
	}
	ks, err := keys(s.cdb)
	if err != nil {
		t.Fatal(err)
	}
	if len(ks) != 1 || !ks[""] {
		t.Errorf("the CDB has keys %v; want the static one alone", ks)
	}
	smtp := startTcpserver6(t, tools, "0", s.env, []string{"-x", s.cdb, "-R", "-H"}, "/usr/bin/env")
	for _, src := range []string{bad, bad + "5", "2001:db8:aaaa::1:0:5", "2001:db8:aaaa:ffff::"} {
		if env := envFrom(dialFrom(t, src, smtp.Port, "")); env["TCPREMOTEIP"] == "" || env["RELAYCLIENT"] != "" || strings.Contains(fmt.Sprint(env), "RELAYCLIENT") {
			t.Errorf("%s relays: %v", src, env)
		}
	}
}

// TestSecurityNeverRanges: a never-grant entry means the range it denotes
// however it is written: "2001:db8:0:0:" covers 2001:db8::10 and "fd00:0:"
// covers fd00::25, though their text starts "2001:db8::" and "fd00::".
// allow, a login and a rebuild all refuse them; an entry that denotes no
// range is an error naming the file and line.
func TestSecurityNeverRanges(t *testing.T) {
	s := newRelayctlSite(t, ":allow\n")
	never := filepath.Join(s.dir, "never")
	os.WriteFile(never, []byte("# zero groups, as tcprules text\n2001:db8:0:0:\nfd00:0:\n"), 0o644)
	for i, kv := range s.env {
		if kv == "POPRELAY_NEVER=" {
			s.env[i] = "POPRELAY_NEVER=" + never
		}
	}
	for ip, line := range map[string]int{"2001:db8::10": 2, "fd00::25": 3, "2001:db8:0:0:ffff::1": 2, "FD00:0:0::1": 3} {
		r := s.run(t, "allow", ip)
		if want := fmt.Sprintf("never granted: never-grant entry %s (%s:%d)", []string{"", "", "2001:db8:0:0:", "fd00:0:"}[line], never, line); r.code != 100 || !strings.Contains(r.stderr, want) {
			t.Errorf("allow %s: exit %d, stderr %q; want %q", ip, r.code, r.stderr, want)
		}
		w := runCmd(t, append(s.env, "TCPREMOTEIP="+ip, "USER=alice"), "", wait.Patience, bin("checkpassword-wrap"), "--never", never, "/bin/true")
		if w.code != 0 || !strings.Contains(w.stderr, "never granted: never-grant entry") {
			t.Errorf("login from %s: exit %d, stderr %q", ip, w.code, w.stderr)
		}
	}
	if ents, _ := os.ReadDir(s.spool); len(ents) != 0 {
		t.Fatalf("the spool has %d entries", len(ents))
	}
	recordAt(t, s.spool, "2001:db8::10", "x")
	recordAt(t, s.spool, "2001:db8:0:1::10", "y")
	if r := s.run(t, "rebuild"); r.code != 0 || !strings.Contains(r.stderr, "refused grant for 2001:db8::10") {
		t.Errorf("rebuild: exit %d, stderr %q", r.code, r.stderr)
	}
	if !relays(t, s.cdb, "2001:db8:0:1::10") || relays(t, s.cdb, "2001:db8::10") {
		t.Error("the never-grant range is not what was refused")
	}
	if out := s.relayctl(t, "list"); !strings.Contains(out, "refused: never-grant entry 2001:db8:0:0:") {
		t.Errorf("list:\n%s", out)
	}
	for _, bad := range []string{"2001:db8::1:", "2001:db8::", "10.1", "1:2:3:4:5:6:7:8:"} {
		os.WriteFile(never, []byte("# a comment\n"+bad+"\n"), 0o644)
		if r := s.run(t, "rebuild"); r.code != 100 || !strings.Contains(r.stderr, never+":2: not an IP address or prefix") {
			t.Errorf("never entry %q: exit %d, stderr %q", bad, r.code, r.stderr)
		}
	}
}

// TestSecurityHostRules: tcpserver tries a client's exact address before
// =host and =.domain rules, so a grant record overrides a static
// "=.dialup.example.net:deny" (the real tcprulescheck agrees); rebuild and
// check warn that it does.
func TestSecurityHostRules(t *testing.T) {
	check := need(t, "tcprulescheck")
	s := newRelayctlSite(t, "=.dialup.example.net:deny\n:allow\n")
	s.relayctl(t, "allow", "127.0.0.23", "--user", "alice")
	warn := "relayctl: warning: grants override host-name rules (tcpserver tries a client's address before its host name): " + s.rules + ":1 =.dialup.example.net:deny\n"
	if r := s.run(t, "rebuild"); r.code != 0 || r.stderr != warn {
		t.Errorf("rebuild: exit %d, stderr %q", r.code, r.stderr)
	}
	r := s.run(t, "check", "127.0.0.23", "--host", "pool-7.dialup.example.net")
	if !strings.Contains(r.stdout, "decision: allow\n") || r.stderr != strings.Replace(warn, "grants override", "this grant overrides", 1) {
		t.Errorf("check: %s\nstderr %q", r.stdout, r.stderr)
	}
	for ip, want := range map[string]string{"127.0.0.23": "allow", "127.0.0.24": "deny"} {
		r := runCmd(t, baseEnv("TCPREMOTEIP="+ip, "TCPREMOTEHOST=pool-7.dialup.example.net"), "", wait.Patience, check, s.cdb)
		if !strings.Contains(r.stdout, want+" connection") {
			t.Errorf("tcprulescheck %s: %q; want %s", ip, r.stdout, want)
		}
	}
}

// TestSecurityCatchAllDeny: a host whose rules list its networks and end
// in ":deny" (a submission host) gives a user who logged in relaying, as
// vpopmail's roaming records did, while an explicit prefix deny stays a
// deny and unlisted neighbours stay denied (a real tcpserver drops them);
// list and check name the catch-all the grant overrides.
func TestSecurityCatchAllDeny(t *testing.T) {
	s := newRelayctlSite(t, "127.0.0.1:allow,RELAYCLIENT=\"\"\n127.0.9.:deny\n:deny\n")
	for _, ip := range []string{"127.0.0.23", "127.0.9.5"} {
		c := exec.Command(bin("checkpassword-wrap"), "/bin/true")
		c.Env = append(s.env, "TCPREMOTEIP="+ip, "USER=alice")
		if out, err := c.CombinedOutput(); err != nil {
			t.Fatalf("checkpassword-wrap: %v: %s", err, out)
		}
	}
	s.relayctl(t, "rebuild")
	ts := startTcpserver(t, baseEnv(), []string{"-x", s.cdb, "-R", "-H"}, "/usr/bin/env")
	env := s.agree(t, ts, "127.0.0.23")
	if v, ok := env["RELAYCLIENT"]; !ok || v != "" || env["RBLSMTPD"] != "" {
		t.Errorf("127.0.0.23 logged in: %v", env)
	}
	for _, ip := range []string{"127.0.0.24", "127.0.9.5"} {
		if env := s.agree(t, ts, ip); env != nil {
			t.Errorf("%s: tcpserver ran the program: %v", ip, env)
		}
	}
	out := s.relayctl(t, "list")
	if !strings.Contains(out, "relay: over the catch-all deny "+s.rules+":3") || !strings.Contains(out, "denied: "+s.rules+":2") {
		t.Errorf("list:\n%s", out)
	}
	if out := s.relayctl(t, "check", "127.0.0.23"); !strings.Contains(out, "it overrides the catch-all deny "+s.rules+":3") {
		t.Errorf("check:\n%s", out)
	}
}

// TestSecurityPrefixKeyEtcd: a grant for an address whose key would end in
// ':' that reaches etcd anyway (planted in a POP host's spool, as an older
// wrapper would have left it) is refused by the SMTP host's mirror, with a
// log line, while the grant published beside it is written.
func TestSecurityPrefixKeyEtcd(t *testing.T) {
	a, b, wb := etcdPair(t)
	recordAt(t, a.spool, "2001:db8:aaaa::", "mallory")
	recordAt(t, a.spool, "2001:db8:bbbb::1", "alice")
	wb.waitLine(t, `refused grant for 2001:db8:aaaa:: (user "mallory"): would open a range`)
	wait.For(t, "the grant published beside it to reach B's CDB", func() bool { return relays(t, b.cdb, "2001:db8:bbbb::1") })
	ks, err := keys(b.cdb)
	if err != nil {
		t.Fatal(err)
	}
	if ks["2001:db8:aaaa::"] || relays(t, b.cdb, "2001:db8:aaaa::5") {
		t.Errorf("B's CDB opens 2001:db8:aaaa::/48: %v", ks)
	}
}

// TestAddrDifferential: addr.Key against the real IPv6 tcpserver's
// TCPREMOTEIP for random addresses in 2001::/16 whose groups are zero
// half of the time (every pattern of zero runs, ties included), and
// fd00::/8 ones.
func TestAddrDifferential(t *testing.T) {
	tools := ipv6Tools(t)
	if !inNetns(t, "POPRELAY_UCSPI_IPV6="+tools) {
		return
	}
	ts := startTcpserver6(t, tools, "0", baseEnv(), []string{"-R", "-H"}, "/usr/bin/env")
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 5))
	n := sized(300, 5000)
	for i := range n {
		a := [16]byte{0x20, 0x01}
		if i%5 == 4 {
			a[0], a[1] = 0xfd, byte(rng.IntN(256))
		}
		for j := 2; j < 16; j += 2 {
			switch rng.IntN(4) {
			case 0, 1:
			case 2:
				a[j+1] = byte(1 + rng.IntN(255))
			default:
				a[j], a[j+1] = byte(rng.IntN(256)), byte(rng.IntN(256))
			}
		}
		src := netip.AddrFrom16(a)
		got := envFrom(dialFrom(t, src.String(), ts.Port, ""))["TCPREMOTEIP"]
		if want := addr.Key(src); got != want {
			t.Errorf("%s: tcpserver says %q, addr.Key %q", src, got, want)
		}
	}
	t.Logf("%d addresses: addr.Key agrees with tcpserver", n)
}

// etcdPair starts a real etcd and two sites on it: a, a POP host whose
// watcher publishes its logins (--publish etcd), and b, an SMTP host
// whose watcher wb mirrors them into its CDB (--source etcd); both with
// the rules ":allow".
func etcdPair(t *testing.T) (a, b *relayctlSite, wb *watcher) {
	t.Helper()
	e := etcdtest.Start(t)
	a = newRelayctlSite(t, ":allow\n")
	b = newRelayctlSite(t, ":allow\n")
	a.etcdEnv(e.Client)
	b.etcdEnv(e.Client)
	a.startWatch(t, "--publish", "etcd")
	return a, b, b.startWatch(t, "--source", "etcd")
}
