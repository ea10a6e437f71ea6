package t

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/poprelay/poprelay/internal/wait"
)

// noCrash fails if a command hung or died like a Go program that panicked.
func noCrash(t *testing.T, what string, r result) {
	t.Helper()
	if r.timedOut {
		t.Errorf("%s: hangs (killed after the time limit)", what)
	}
	if strings.Contains(r.stderr, "panic:") || strings.Contains(r.stderr, "goroutine ") || r.code == 2 {
		t.Errorf("%s: crashed: exit %d\n%s", what, r.code, r.stderr)
	}
}

// badRuleLines are lines tcprules rejects; TestRobustBadRules checks that
// the real tcprules does.
var badRuleLines = []string{
	`192.0.2.4:permit`,
	`192.0.2.4:allowed`,
	`192.0.2.4:Allow`,
	`192.0.2.4: allow`,
	`192.0.2.4:allow X="a"`,
	`192.0.2.4:allow,X`,
	`192.0.2.4:allow,X=`,
	`192.0.2.4:allow,X=a`,
	`192.0.2.4:allow,X="unterminated`,
	`192.0.2.4:deny,X="a"junk`,
	`192.0.2.4:allow,X="a"Y="b"`,
	`192.0.2.4:allow,X="a",`,
	`:allow,=`,
	`=host.example:allow,=`,
	`allow:`,
	`2001:db8::1:permit`,
	`192.0.2.1-5:permit`,
	"192.0.2.4:allow,X=\"a\x00b",
}

// TestRobustBadRules: every kind of line tcprules rejects makes relayctl
// rebuild (and allow, which rebuilds) exit 100 with FILE:LINE, and keeps
// the old CDB; the real tcprules rejects each too.
func TestRobustBadRules(t *testing.T) {
	tcprules := need(t, "tcprules")
	s := newRelayctlSite(t, tornTail)
	recordAt(t, s.spool, "127.0.9.1", "alice")
	if r := s.run(t, "rebuild"); r.code != 0 {
		t.Fatalf("rebuild: %d %s", r.code, r.stderr)
	}
	old := s.mustCDB(t)
	for _, line := range badRuleLines {
		text := "# the admin's rules\n127.0.0.1:allow,RELAYCLIENT=\"\"\n" + line + "\n:allow\n"
		os.WriteFile(s.rules, []byte(text), 0o644)
		tr := runCmd(t, baseEnv(), text, wait.Patience, tcprules, filepath.Join(s.dir, "x.cdb"), filepath.Join(s.dir, "x.tmp"))
		if tr.code != 100 {
			t.Errorf("%q: tcprules exits %d: not a line tcprules rejects", line, tr.code)
		}
		shown, _, _ := strings.Cut(line, "\x00")
		for _, args := range [][]string{{"rebuild"}, {"allow", "127.0.9.2"}} {
			r := s.run(t, args...)
			noCrash(t, line, r)
			want := "relayctl: fatal: " + s.rules + ":3: unable to parse this line: " + shown
			if r.code != 100 || !strings.Contains(r.stderr, want) {
				t.Errorf("%q: relayctl %s: exit %d, stderr %q; want 100 and %q", line, args[0], r.code, r.stderr, want)
			}
			if !bytes.Equal(old, s.mustCDB(t)) {
				t.Fatalf("%q: relayctl %s changed the CDB", line, args[0])
			}
		}
	}
	if d := s.debris(t); len(d) != 0 {
		t.Errorf("temp files left: %q", d)
	}
}

// TestRobustJunkRules: binary junk, 1 MB lines and rules files that are
// no files (a directory, a FIFO with no writer, /dev/zero's kind): relayctl
// rebuild never hangs or crashes, accepts exactly what tcprules accepts,
// exits 100 for the rest with the old CDB kept; relayctl watch given a
// FIFO reports it and publishes once the file is good.
func TestRobustJunkRules(t *testing.T) {
	tcprules := need(t, "tcprules")
	s := newRelayctlSite(t, tornTail)
	recordAt(t, s.spool, "127.0.9.1", "alice")
	if r := s.run(t, "rebuild"); r.code != 0 {
		t.Fatalf("rebuild: %d %s", r.code, r.stderr)
	}
	old := s.mustCDB(t)
	rng := rand.New(rand.NewPCG(7, 7))
	type input struct {
		name string
		text []byte
	}
	var inputs []input
	for i := range 20 {
		b := make([]byte, 1+rng.IntN(64<<10))
		for j := range b {
			b[j] = byte(rng.Uint32())
			if i%2 == 1 && rng.IntN(8) == 0 { // more of the syntax's bytes
				b[j] = ":.,=\"\n-a"[rng.IntN(8)]
			}
		}
		inputs = append(inputs, input{fmt.Sprintf("junk %d", i), b})
	}
	mb := strings.Repeat("x", 1<<20)
	inputs = append(inputs,
		input{"1 MB value", []byte("127.0.9.:allow,BIG=\"" + mb + "\"\n:allow\n")},
		input{"1 MB line without a colon", []byte(mb + "\n:allow\n")},
		input{"1 MB bad line", []byte(":allow\n127.0.9.:allow,X=" + mb + "\n")},
		input{"1 MB without a newline", []byte("127.0.9.:allow,X=\"" + mb + "\"")},
	)
	accepted := 0
	for _, in := range inputs {
		os.WriteFile(s.rules, in.text, 0o644)
		tr := runCmd(t, baseEnv(), string(in.text), wait.Patience, tcprules, filepath.Join(s.dir, "x.cdb"), filepath.Join(s.dir, "x.tmp"))
		r := s.run(t, "rebuild")
		noCrash(t, in.name, r)
		if r.code != tr.code {
			t.Errorf("%s: relayctl rebuild exits %d (%.200s), tcprules %d (%.200s)", in.name, r.code, r.stderr, tr.code, tr.stderr)
		}
		switch r.code {
		case 0:
			accepted++
			if !relays(t, s.cdb, "127.0.9.1") {
				t.Errorf("%s: the grant was lost", in.name)
			}
		case 100:
			if !strings.Contains(r.stderr, "relayctl: fatal: "+s.rules+":") {
				t.Errorf("%s: the message does not name the file and line: %.300q", in.name, r.stderr)
			}
			if !bytes.Equal(old, s.mustCDB(t)) {
				t.Fatalf("%s: a rejected rules file changed the CDB", in.name)
			}
		default:
			t.Errorf("%s: exit %d: %.300s", in.name, r.code, r.stderr)
		}
		// Back to the good CDB for the next input.
		os.WriteFile(s.rules, []byte(tornTail), 0o644)
		if r := s.run(t, "rebuild"); r.code != 0 {
			t.Fatal(r.stderr)
		}
		old = s.mustCDB(t)
	}
	t.Logf("%d of %d junk inputs are valid rules for tcprules and relayctl alike", accepted, len(inputs))

	// Not files.
	os.Remove(s.rules)
	os.Mkdir(s.rules, 0o755)
	// list still lists the grants, warning that their status is unknown;
	// everything that would write the CDB refuses.
	listWarns := func(what string) {
		t.Helper()
		r := s.run(t, "list")
		noCrash(t, what, r)
		if r.code != 0 || !strings.Contains(r.stderr, "relayctl: warning: unable to read "+s.rules+": not a regular file") {
			t.Errorf("%s: relayctl list: exit %d, %q", what, r.code, r.stderr)
		}
	}
	for _, args := range [][]string{{"rebuild"}, {"allow", "127.0.9.3"}} {
		r := s.run(t, args...)
		noCrash(t, "rules a directory", r)
		if r.code != 100 || !strings.Contains(r.stderr, s.rules+": not a regular file") {
			t.Errorf("rules a directory: relayctl %s: exit %d, %q", args[0], r.code, r.stderr)
		}
	}
	listWarns("rules a directory")
	os.Remove(s.rules)
	if err := syscall.Mkfifo(s.rules, 0o644); err != nil {
		t.Fatal(err)
	}
	listWarns("rules a FIFO")
	for _, args := range [][]string{{"rebuild"}, {"check", "127.0.9.1"}, {"expire"}} {
		r := s.run(t, args...)
		noCrash(t, "rules a FIFO", r)
		if args[0] == "rebuild" {
			if r.code != 100 || !strings.Contains(r.stderr, "not a regular file") {
				t.Errorf("rules a FIFO: relayctl %s: exit %d, %q", args[0], r.code, r.stderr)
			}
		}
	}
	if !bytes.Equal(old, s.mustCDB(t)) {
		t.Error("the CDB changed")
	}
	// The watcher: a FIFO at start is reported, the CDB is left alone,
	// and a good file is picked up.
	os.Remove(s.cdb)
	w := &watcher{done: make(chan struct{})}
	cmd, stderr := start(t, s.env, true, bin("relayctl"), "watch", "--debounce", "2ms")
	w.cmd = cmd
	go func() {
		defer close(w.done)
		for {
			line, err := stderr.ReadString('\n')
			if line != "" {
				w.mu.Lock()
				w.lines = append(w.lines, line)
				w.mu.Unlock()
			}
			if err != nil {
				return
			}
		}
	}()
	w.waitLine(t, "not a regular file")
	if _, err := os.Stat(s.cdb); err == nil {
		t.Error("watch wrote a CDB without usable rules")
	}
	os.Remove(s.rules)
	os.WriteFile(s.rules, []byte(tornTail), 0o644)
	w.waitLine(t, "rebuilt: change")
	if !relays(t, s.cdb, "127.0.9.1") {
		t.Error("watch: no relay for the grant once the rules file is good")
	}
}

// TestRobustCorruptCDB: a truncated, garbled, empty or not-a-file CDB given
// to "relayctl check" and "cdbbuild -d": a clean error (exit 111 or 100
// with a message naming the file), never a panic or a hang.
func TestRobustCorruptCDB(t *testing.T) {
	s := newRelayctlSite(t, bigRules(50, tornTail))
	for i := range 20 {
		recordAt(t, s.spool, ip4(9, i), "u")
	}
	if r := s.run(t, "rebuild"); r.code != 0 {
		t.Fatal(r.stderr)
	}
	good := s.mustCDB(t)
	rng := rand.New(rand.NewPCG(1, 2))
	type tc struct {
		name  string
		bytes []byte
		must  bool // must be an error
	}
	var cases []tc
	for _, n := range []int{0, 1, 8, 2047, 2048, 2049, len(good) / 2, len(good) - 8, len(good) - 1} {
		cases = append(cases, tc{fmt.Sprintf("truncated to %d bytes", n), good[:n], true})
	}
	for i := range 30 {
		b := slices.Clone(good)
		for range 1 + rng.IntN(8) {
			b[rng.IntN(len(b))] = byte(rng.Uint32())
		}
		cases = append(cases, tc{fmt.Sprintf("garbled %d", i), b, false})
	}
	hdr := slices.Clone(good)
	for i := 0; i < 2048; i += 8 {
		copy(hdr[i:], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f})
	}
	cases = append(cases, tc{"header pointing past the end", hdr, true})
	junk := make([]byte, 64<<10)
	for i := range junk {
		junk[i] = byte(rng.Uint32())
	}
	cases = append(cases, tc{"random bytes", junk, false})
	x := filepath.Join(s.dir, "x.cdb")
	try := func(name string, must bool) {
		t.Helper()
		r := s.run(t, "check", "127.0.9.1", "--cdb", x)
		noCrash(t, name+": relayctl check", r)
		if r.code != 0 && (r.code != 111 || !strings.HasPrefix(r.stderr, "relayctl: fatal: unable to read "+x+": ")) {
			t.Errorf("%s: relayctl check: exit %d, %q", name, r.code, r.stderr)
		}
		if must && r.code == 0 {
			t.Errorf("%s: relayctl check accepted it:\n%s", name, r.stdout)
		}
		r = runCmd(t, baseEnv(), "", wait.Patience, bin("cdbbuild"), "-d", x)
		noCrash(t, name+": cdbbuild -d", r)
		if r.code != 0 && (r.code != 100 && r.code != 111 || !strings.HasPrefix(r.stderr, "cdbbuild: fatal: ") || !strings.Contains(r.stderr, x)) {
			t.Errorf("%s: cdbbuild -d: exit %d, %q", name, r.code, r.stderr)
		}
		if must && r.code == 0 {
			t.Errorf("%s: cdbbuild -d accepted it", name)
		}
	}
	for _, c := range cases {
		os.Remove(x)
		os.WriteFile(x, c.bytes, 0o644)
		try(c.name, c.must)
	}
	os.Remove(x)
	try("missing", true)
	os.Mkdir(x, 0o755)
	try("a directory", true)
	os.Remove(x)
	if err := syscall.Mkfifo(x, 0o644); err != nil {
		t.Fatal(err)
	}
	try("a FIFO with no writer", true)
	os.Remove(x)
	os.Symlink("/dev/zero", x)
	try("a symlink to /dev/zero", true)
}

// TestRobustHostileWrapEnv: the wrapper under hostile or broken
// environments: each time the next program runs with the client's stdout
// untouched (the wrapper writes nothing there), stderr says in one line
// why nothing was recorded, and nothing is recorded, hung or created
// outside the spool.
func TestRobustHostileWrapEnv(t *testing.T) {
	s := newRelayctlSite(t, tornTail)
	fifo := filepath.Join(s.dir, "fifo")
	syscall.Mkfifo(fifo, 0o644)
	own := ""
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if p, ok := a.(*net.IPNet); ok && !p.IP.IsLoopback() && p.IP.To4() != nil {
				own = p.IP.String()
				break
			}
		}
	}
	base := []string{"PATH=" + os.Getenv("PATH"), "POPRELAY_SPOOL=" + s.spool, "POPRELAY_NEVER="}
	long := strings.Repeat("u", 100<<10)
	cases := []struct {
		name   string
		env    []string
		stderr string
	}{
		{"user with a newline", []string{"TCPREMOTEIP=127.0.9.50", "USER=alice\nuser=root"}, "bad user or service name"},
		{"user of 100 KB", []string{"TCPREMOTEIP=127.0.9.50", "USER=" + long}, "bad user or service name"},
		{"service with a control byte", []string{"TCPREMOTEIP=127.0.9.50", "USER=alice", "POPRELAY_SERVICE=pop3\x1b[2J"}, "bad user or service name"},
		{"no user", []string{"TCPREMOTEIP=127.0.9.50"}, "no user"},
		{"no address", []string{"USER=alice"}, "no client address"},
		{"address of 100 KB", []string{"TCPREMOTEIP=" + long, "USER=alice"}, "is not an IP address"},
		{"address with a path", []string{"TCPREMOTEIP=../../../tmp/x", "USER=alice"}, "is not an IP address"},
		{"prefix", []string{"TCPREMOTEIP=127.0.9.", "USER=alice"}, "is not an IP address"},
		{"CIDR", []string{"TCPREMOTEIP=127.0.9.0/24", "USER=alice"}, "is not an IP address"},
		{"IPv6 zone", []string{"TCPREMOTEIP=fe80::1%lo", "USER=alice"}, "is not an IP address"},
		{"unspecified", []string{"TCPREMOTEIP=0.0.0.0", "USER=alice"}, "never granted"},
		{"IPv6 unspecified", []string{"TCPREMOTEIP=::", "USER=alice"}, "never granted"},
		{"broadcast", []string{"TCPREMOTEIP=255.255.255.255", "USER=alice"}, "never granted"},
		{"multicast", []string{"TCPREMOTEIP=224.0.0.1", "USER=alice"}, "never granted"},
		{"loopback", []string{"TCPREMOTEIP=127.0.0.1", "USER=alice"}, "never granted"},
		{"mapped loopback", []string{"TCPREMOTEIP=::ffff:127.0.0.1", "USER=alice"}, "never granted"},
		{"IPv6 loopback", []string{"TCPREMOTEIP=::1", "USER=alice"}, "never granted"},
		{"Dovecot userdb lookup", []string{"TCPREMOTEIP=127.0.9.50", "USER=alice", "AUTHORIZED=1"}, ""},
		{"never file a FIFO", []string{"TCPREMOTEIP=127.0.9.50", "USER=alice", "POPRELAY_NEVER=" + fifo}, "not a regular file"},
		{"never file a directory", []string{"TCPREMOTEIP=127.0.9.50", "USER=alice", "POPRELAY_NEVER=" + s.dir}, "not a regular file"},
		{"never file a device", []string{"TCPREMOTEIP=127.0.9.50", "USER=alice", "POPRELAY_NEVER=/dev/zero"}, "not a regular file"},
		{"spool missing", []string{"TCPREMOTEIP=127.0.9.50", "USER=alice", "POPRELAY_SPOOL=" + filepath.Join(s.dir, "none")}, "no such file or directory"},
		{"spool a file", []string{"TCPREMOTEIP=127.0.9.50", "USER=alice", "POPRELAY_SPOOL=" + s.rules}, "not a directory"},
	}
	if own != "" {
		cases = append(cases, struct {
			name   string
			env    []string
			stderr string
		}{"this host's own address", []string{"TCPREMOTEIP=" + own, "USER=alice"}, "never granted"})
	}
	before := tree(t, s.dir)
	for _, c := range cases {
		// exec.Cmd keeps the last of duplicate names: the case's win.
		env := append(slices.Clone(base), c.env...)
		r := runCmd(t, env, "", wait.Patience, bin("checkpassword-wrap"), "/bin/echo", "ran")
		noCrash(t, c.name, r)
		if r.code != 0 || r.stdout != "ran\n" {
			t.Errorf("%s: exit %d, stdout %q: the next program did not run cleanly", c.name, r.code, r.stdout)
		}
		if c.stderr == "" && r.stderr != "" || !strings.Contains(r.stderr, c.stderr) || strings.Count(r.stderr, "\n") > 1 || len(r.stderr) > 400 {
			t.Errorf("%s: stderr %.400q; want one line with %q", c.name, r.stderr, c.stderr)
		}
		if gs, other := spoolEntries(t, s.spool); len(gs)+len(other) != 0 {
			t.Errorf("%s: the spool holds %v %q", c.name, gs, other)
		}
	}
	if after := tree(t, s.dir); after != before {
		t.Errorf("files changed outside the spool:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// TestRobustHostileSpool: symlinks, FIFOs, directories, oversized and
// damaged files and foreign names in the spool. relayctl list and rebuild
// skip them all (one warning each, no hang), nothing is read through a
// symlink (a link to a forged grant elsewhere grants nothing), expire and
// revoke delete nothing through a symlink, and the CDB equals the one made
// from the valid grants alone: no key but theirs.
func TestRobustHostileSpool(t *testing.T) {
	s := newRelayctlSite(t, tornTail)
	outside := filepath.Join(s.dir, "outside")
	os.Mkdir(outside, 0o755)
	forged := filepath.Join(outside, "forged")
	grantText := fmt.Sprintf("user=mallory\nservice=pop3\ntime=%d\n", time.Now().Unix())
	os.WriteFile(forged, []byte(grantText), 0o644)
	recordAt(t, s.spool, "127.0.9.60", "alice")
	recordAt(t, s.spool, "2001:db8::60", "bob")
	clean := filepath.Join(s.dir, "clean")
	os.Mkdir(clean, 0o755)
	for _, n := range []string{"127.0.9.60", "2001:db8::60"} {
		b, _ := os.ReadFile(filepath.Join(s.spool, n))
		os.WriteFile(filepath.Join(clean, n), b, 0o640)
	}
	sp := func(n string) string { return filepath.Join(s.spool, n) }
	os.Symlink(forged, sp("127.0.9.61"))
	os.Symlink(outside, sp("127.0.9.62"))
	os.Symlink("/dev/zero", sp("127.0.9.63"))
	syscall.Mkfifo(sp("127.0.9.64"), 0o644)
	os.Mkdir(sp("127.0.9.65"), 0o755)
	os.WriteFile(sp("127.0.9.66"), []byte(grantText+strings.Repeat("x=y\n", 2000)), 0o640)
	os.WriteFile(sp("127.0.9.67"), []byte("\x00\x01garbage"), 0o640)
	os.WriteFile(sp("127.0.9.68"), []byte("user=a\nuser=b\nservice=pop3\ntime=1\n"), 0o640)
	for _, n := range []string{"127.0.9.", "127.0.9", "127.0.9.069", "::ffff:127.0.9.70", "2001:DB8::71", "=", "=.example.com",
		"0.0.0.0", "255.255.255.255", "127.0.0.1", "::1", "README", ".hidden", "127.0.9.72 ", "127.0.9.73\n", "127.0.9.74.cdb", "-rf"} {
		os.WriteFile(sp(n), []byte(grantText), 0o640)
	}
	before := tree(t, outside)

	r := s.run(t, "list", "--json")
	noCrash(t, "list", r)
	var rows []struct{ IP, Status string }
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil || r.code != 0 {
		t.Fatalf("list --json: exit %d, %v\n%s", r.code, err, r.stderr)
	}
	var ips []string
	for _, row := range rows {
		ips = append(ips, row.IP+" "+row.Status)
	}
	// 0.0.0.0, ::1 etc. are canonical names and grants, refused by the
	// never-grant set; the rest are skipped.
	if !slices.Equal(ips, []string{"0.0.0.0 refused", "127.0.0.1 refused", "127.0.9.60 relay", "255.255.255.255 refused", "::1 refused", "2001:db8::60 relay"}) {
		t.Errorf("list shows %q", ips)
	}
	for _, n := range []string{"127.0.9.61", "127.0.9.62", "127.0.9.63", "127.0.9.64", "127.0.9.65", "127.0.9.66", "127.0.9.67", "127.0.9.68", "README", "=.example.com"} {
		if !strings.Contains(r.stderr, sp(n)+": skipping") {
			t.Errorf("list does not say it skips %s:\n%s", n, r.stderr)
		}
	}

	if r := s.run(t, "rebuild"); r.code != 0 {
		t.Fatalf("rebuild: %d %s", r.code, r.stderr)
	}
	got := s.mustCDB(t)
	env := slices.Clone(s.env)
	for i, kv := range env {
		if strings.HasPrefix(kv, "POPRELAY_CDB=") {
			env[i] = "POPRELAY_CDB=" + filepath.Join(s.dir, "clean.cdb")
		}
	}
	if r := runCmd(t, env, "", wait.Patience, bin("relayctl"), "rebuild", "--spool", clean); r.code != 0 {
		t.Fatal(r.stderr)
	}
	want, _ := os.ReadFile(filepath.Join(s.dir, "clean.cdb"))
	if !bytes.Equal(got, want) {
		ks, _ := keys(s.cdb)
		t.Errorf("the CDB differs from the one made of the valid grants alone; its keys: %v", ks)
	}

	// revoke of a symlink removes the link, never its target; expire
	// removes the expired grants and nothing else.
	if r := s.run(t, "revoke", "127.0.9.61"); r.code != 0 {
		t.Errorf("revoke of a symlink: %d %s", r.code, r.stderr)
	}
	if _, err := os.Lstat(sp("127.0.9.61")); err == nil {
		t.Error("revoke left the symlink")
	}
	// Each expire runs among the foreign entries until the two grants
	// are a second old and gone.
	wait.For(t, "expire --max-age 1s to remove the grants", func() bool {
		if r := s.run(t, "expire", "--max-age", "1s"); r.code != 0 {
			t.Errorf("expire: %d %s", r.code, r.stderr)
		}
		for _, n := range []string{"127.0.9.62", "127.0.9.63", "127.0.9.64", "127.0.9.65", "README"} {
			if _, err := os.Lstat(sp(n)); err != nil {
				t.Fatalf("expire removed the foreign %s", n)
			}
		}
		for _, n := range []string{"127.0.9.60", "2001:db8::60"} {
			if _, err := os.Lstat(sp(n)); err == nil {
				return false
			}
		}
		return true
	})
	if after := tree(t, outside); after != before {
		t.Errorf("changed through a symlink:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// TestRobustClockJump: a grant dated in the future (written before the
// clock was set back a year) is taken as made now and lasts the max age
// (or its own length) from now, not the year: list shows it so, and
// expire removes it on time.
func TestRobustClockJump(t *testing.T) {
	s := newRelayctlSite(t, tornTail)
	now := time.Now()
	ahead := now.Add(365 * 24 * time.Hour)
	os.WriteFile(filepath.Join(s.spool, "127.0.9.80"), fmt.Appendf(nil, "user=a\nservice=pop3\ntime=%d\n", ahead.Unix()), 0o640)
	os.WriteFile(filepath.Join(s.spool, "127.0.9.81"), fmt.Appendf(nil, "user=b\nservice=manual\ntime=%d\nexpires=%d\n", ahead.Unix(), ahead.Add(5*time.Second).Unix()), 0o640)
	r := s.run(t, "list", "--json", "--max-age", "4s")
	var rows []struct {
		IP        string `json:"ip"`
		Age       int64  `json:"age"`
		ExpiresIn int64  `json:"expires_in"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil || len(rows) != 2 {
		t.Fatalf("list: %v %s %s", err, r.stdout, r.stderr)
	}
	for i, want := range []int64{4, 5} {
		if rows[i].Age < 0 || rows[i].Age > 5 || rows[i].ExpiresIn > want || rows[i].ExpiresIn < want-5 {
			t.Errorf("%s: age %ds, expires in %ds; want taken as now, expiring in %ds", rows[i].IP, rows[i].Age, rows[i].ExpiresIn, want)
		}
	}
	if !strings.Contains(r.stderr, "is in the future; taken as now") {
		t.Errorf("list does not say so: %q", r.stderr)
	}
	// rebuild takes them as made at its own now: they relay, whatever
	// time the command took to start.
	if r := s.run(t, "rebuild", "--max-age", "4s"); r.code != 0 {
		t.Fatal(r.stderr)
	}
	if !relays(t, s.cdb, "127.0.9.80") || !relays(t, s.cdb, "127.0.9.81") {
		t.Error("the capped grants do not relay")
	}
	// expire rewrites them as made now; from then on they last their 4
	// and 5 seconds, not a year: expire removes them some seconds later
	// (the test waits for it, whenever it comes).
	if r := s.run(t, "expire", "--max-age", "4s"); r.code != 0 {
		t.Fatal(r.stderr)
	}
	wait.For(t, "the grants dated a year ahead to expire after their length", func() bool {
		if r := s.run(t, "expire", "--max-age", "4s"); r.code != 0 {
			t.Fatal(r.stderr)
		}
		gs, _ := spoolEntries(t, s.spool)
		return len(gs) == 0
	})
	if relays(t, s.cdb, "127.0.9.80") || relays(t, s.cdb, "127.0.9.81") {
		t.Error("the CDB still relays for them")
	}
}
