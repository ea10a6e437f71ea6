package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/poprelay/poprelay/internal/cdb"
	"github.com/poprelay/poprelay/internal/grant"
	"github.com/poprelay/poprelay/internal/rules"
	"github.com/poprelay/poprelay/internal/wait"
)

// TestMain lets a test run the binary itself, as another user.
func TestMain(m *testing.M) {
	if os.Getenv("RELAYCTL_TEST_MAIN") == "1" {
		os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

const staticRules = `# the admin's rules
127.0.0.1:allow,RELAYCLIENT=""
192.0.2.66:deny
192.0.2.:allow,QMAILQUEUE="/var/qmail/bin/qq"
198.51.100.:deny
:allow
`

type fixture struct {
	t                     *testing.T
	dir, spool, rules, db string
	env                   map[string]string
	now                   time.Time
	openSMTP              string // vpopmail's open-smtp file; "" none
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	dir := t.TempDir()
	f := &fixture{t: t, dir: dir,
		spool: filepath.Join(dir, "spool"),
		rules: filepath.Join(dir, "tcp.smtp"),
		db:    filepath.Join(dir, "tcp.smtp.cdb"),
	}
	if err := os.Mkdir(f.spool, 0o755); err != nil {
		t.Fatal(err)
	}
	f.write(f.rules, staticRules)
	f.env = map[string]string{
		"POPRELAY_SPOOL": f.spool,
		"POPRELAY_RULES": f.rules,
		"POPRELAY_CDB":   f.db,
		"POPRELAY_NEVER": "",
	}
	return f
}

func (f *fixture) write(path, content string) {
	f.t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		f.t.Fatal(err)
	}
}

// run runs relayctl in-process.
func (f *fixture) run(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	e := &env{stdin: strings.NewReader(""), stdout: &out, stderr: &errb,
		lookup: func(k string) (string, bool) { v, ok := f.env[k]; return v, ok },
		now: func() time.Time {
			if f.now.IsZero() {
				return time.Now()
			}
			return f.now
		},
		openSMTP: func() string { return f.openSMTP },
	}
	code = e.run(args)
	return code, out.String(), errb.String()
}

// ok runs relayctl and fails unless it exits 0 silently.
func (f *fixture) ok(args ...string) string {
	f.t.Helper()
	code, out, errs := f.run(args...)
	if code != 0 || errs != "" {
		f.t.Fatalf("relayctl %q: exit %d, stderr %q", args, code, errs)
	}
	return out
}

// fails runs relayctl and checks the exit code and a part of stderr.
func (f *fixture) fails(code int, want string, args ...string) {
	f.t.Helper()
	c, _, errs := f.run(args...)
	if c != code || !strings.Contains(errs, want) {
		f.t.Errorf("relayctl %q: exit %d, stderr %q; want exit %d and %q", args, c, errs, code, want)
	}
}

func (f *fixture) cdbBytes() []byte {
	f.t.Helper()
	b, err := os.ReadFile(f.db)
	if err != nil {
		f.t.Fatal(err)
	}
	return b
}

// decide is tcpserver's view of ip in the current CDB.
func (f *fixture) decide(ip string) string {
	f.t.Helper()
	r, err := cdb.Bytes(f.cdbBytes())
	if err != nil {
		f.t.Fatal(err)
	}
	d, err := rules.Lookup(r, rules.Query{IP: ip})
	if err != nil {
		f.t.Fatal(err)
	}
	if d.Deny {
		return "deny " + d.Key
	}
	s := "allow " + d.Key
	for _, v := range d.Environ() {
		s += " " + v.Name + "=" + v.Value
	}
	return s
}

func (f *fixture) leftovers() []string {
	f.t.Helper()
	ents, _ := os.ReadDir(filepath.Dir(f.db))
	var odd []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			odd = append(odd, e.Name())
		}
	}
	return odd
}

func TestRebuildAllowRevoke(t *testing.T) {
	f := newFixture(t)
	f.ok("rebuild")
	if got := f.decide("192.0.2.7"); got != "allow 192.0.2. QMAILQUEUE=/var/qmail/bin/qq" {
		t.Errorf("before: %s", got)
	}
	f.ok("allow", "192.0.2.7", "--user", "alice")
	f.run("allow", "--user", "bob", "192.0.2.66")
	if c, _, errs := f.run("allow", "198.51.100.9"); c != 0 || !strings.Contains(errs, "warning: 198.51.100.9 gets no relay: denied: "+f.rules+":5") {
		t.Errorf("allow of a denied address: exit %d, stderr %q", c, errs)
	}
	f.ok("allow", "2001:DB8::0:7")
	for ip, want := range map[string]string{
		"192.0.2.7":        "allow 192.0.2.7 QMAILQUEUE=/var/qmail/bin/qq RBLSMTPD= RELAYCLIENT=",
		"::ffff:192.0.2.7": "allow ",
		"192.0.2.66":       "deny 192.0.2.66",
		"198.51.100.9":     "deny 198.51.100.",
		"2001:db8::7":      "allow 2001:db8::7 RBLSMTPD= RELAYCLIENT=",
		"192.0.2.8":        "allow 192.0.2. QMAILQUEUE=/var/qmail/bin/qq",
	} {
		if got := f.decide(ip); got != want {
			t.Errorf("%s: got %q, want %q", ip, got, want)
		}
	}
	f.ok("revoke", "192.0.2.7")
	if got := f.decide("192.0.2.7"); got != "allow 192.0.2. QMAILQUEUE=/var/qmail/bin/qq" {
		t.Errorf("after revoke: %s", got)
	}
	f.ok("revoke", "--user", "bob")
	if _, ok, _ := grant.New(f.spool).Get("192.0.2.66"); ok {
		t.Error("bob's grant still there")
	}
	f.fails(100, "no grant for it", "revoke", "192.0.2.7")
	f.fails(100, `no grant for user "nobody"`, "revoke", "--user", "nobody")
	f.fails(100, "usage:", "revoke")
	f.fails(100, "usage:", "revoke", "1.2.3.4", "--user", "x")
	f.fails(100, "unable to grant", "allow", "192.0.2.300")
	f.fails(100, "unable to grant", "allow", "192.0.2.")
	f.fails(100, "never granted: loopback 127.0.0.1", "allow", "127.0.0.1")
	// Issue 16.2: its key would be a prefix of its neighbours'.
	f.fails(100, `unable to grant 2001:db8:aaaa::: never granted: would open a range: its key "2001:db8:aaaa::" ends in ":"`, "allow", "2001:db8:aaaa::")
	f.fails(100, "usage:", "allow")
	f.fails(100, "bad --for", "allow", "192.0.2.9", "--for", "soon")
	f.fails(100, "unable to grant", "allow", "192.0.2.9", "--user", "a\nb")
	if got := f.leftovers(); len(got) != 0 {
		t.Errorf("left in the CDB's directory: %q", got)
	}
}

func TestVerbose(t *testing.T) {
	f := newFixture(t)
	code, _, errs := f.run("-v", "allow", "192.0.2.7")
	if code != 0 || !strings.Contains(errs, "relayctl: granted 192.0.2.7") || !strings.Contains(errs, "relayctl: wrote "+f.db) {
		t.Errorf("exit %d, stderr %q", code, errs)
	}
	code, _, errs = f.run("rebuild", "-v")
	if code != 0 || !strings.Contains(errs, "1 relayed (1 records)") {
		t.Errorf("exit %d, stderr %q", code, errs)
	}
	code, _, errs = f.run("rebuild", "-v", "--mapped")
	if code != 0 || !strings.Contains(errs, "1 relayed (2 records)") {
		t.Errorf("exit %d, stderr %q", code, errs)
	}
}

func TestDeterministic(t *testing.T) {
	f := newFixture(t)
	for i := range 50 {
		f.ok("allow", fmt.Sprintf("203.0.113.%d", i), "--user", fmt.Sprint("u", i))
	}
	a := f.cdbBytes()
	f.ok("rebuild")
	if !bytes.Equal(a, f.cdbBytes()) {
		t.Error("a second rebuild gave other bytes")
	}
}

func TestBadRules(t *testing.T) {
	f := newFixture(t)
	f.ok("allow", "192.0.2.7")
	old := f.cdbBytes()
	f.write(f.rules, "127.0.0.1:allow\n\n192.0.2.:permit\n")
	for _, args := range [][]string{{"rebuild"}, {"allow", "192.0.2.8"}, {"revoke", "192.0.2.7"}} {
		f.fails(100, "relayctl: fatal: "+f.rules+":3: unable to parse this line: 192.0.2.:permit", args...)
		if !bytes.Equal(old, f.cdbBytes()) {
			t.Fatalf("%q changed the CDB", args)
		}
	}
	// A change of the spool made before the rebuild failed is said so.
	f.fails(100, f.rules+":3: unable to parse this line: 192.0.2.:permit (granted 192.0.2.8 in the spool; the CDB is unchanged)", "allow", "192.0.2.8")
	if got := f.leftovers(); len(got) != 0 {
		t.Errorf("left in the CDB's directory: %q", got)
	}
}

func TestRulesFileKinds(t *testing.T) {
	f := newFixture(t)
	f.ok("rebuild")
	old := f.cdbBytes()
	os.Remove(f.rules)
	f.fails(111, "unable to read "+f.rules+": no such file or directory", "rebuild")
	os.Mkdir(f.rules, 0o755)
	f.fails(100, "not a regular file", "rebuild")
	os.Remove(f.rules)
	if err := syscall.Mkfifo(f.rules, 0o644); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.fails(100, "not a regular file", "rebuild")
	}()
	select {
	case <-done:
	case <-time.After(wait.Patience):
		t.Fatal("rebuild hangs on a FIFO")
	}
	if !bytes.Equal(old, f.cdbBytes()) {
		t.Error("the CDB changed")
	}
	// --rules "" builds from grants alone.
	f.ok("allow", "--rules", "", "192.0.2.7")
	if got := f.decide("192.0.2.7"); got != "allow 192.0.2.7 RBLSMTPD= RELAYCLIENT=" {
		t.Errorf("no rules: %s", got)
	}
}

func TestCDBUnwritable(t *testing.T) {
	f := newFixture(t)
	f.ok("allow", "192.0.2.7")
	old := f.cdbBytes()

	// The CDB's directory is missing.
	f.env["POPRELAY_CDB"] = filepath.Join(f.dir, "none", "tcp.smtp.cdb")
	f.fails(111, "relayctl: fatal: unable to lock", "rebuild")
	f.env["POPRELAY_CDB"] = f.db

	// The disk fills while the CDB is written.
	cdbOutput = func(w *os.File) io.WriteSeeker { return &fullDisk{w, 3000} }
	f.fails(111, "unable to write "+f.db+": no space left on device", "allow", "192.0.2.8")
	cdbOutput = func(w *os.File) io.WriteSeeker { return w }
	if !bytes.Equal(old, f.cdbBytes()) {
		t.Error("a failed write changed the CDB")
	}
	if got := f.leftovers(); len(got) != 0 {
		t.Errorf("left in the CDB's directory: %q", got)
	}

	// The CDB's directory is not writable.
	ro := filepath.Join(f.dir, "ro")
	os.Mkdir(ro, 0o755)
	rodb := filepath.Join(ro, "tcp.smtp.cdb")
	os.WriteFile(rodb, old, 0o644)
	// A lock file the writer may use (its own, 0600): the failure must
	// come from the directory.
	os.WriteFile(rodb+".lock", nil, 0o600)
	if os.Getuid() != 0 {
		os.Chmod(ro, 0o555)
		defer os.Chmod(ro, 0o755)
		f.env["POPRELAY_CDB"] = rodb
		f.fails(111, "relayctl: fatal: unable to save "+rodb+".rules", "rebuild")
	} else {
		// root writes anywhere: run the test binary as nobody.
		os.Chown(rodb+".lock", 65534, 65534)
		// rebuild saves the confirmed rules beside the CDB first.
		code, errs := runAsNobody(t, f, "rebuild", "--cdb", rodb)
		if code != 111 || !strings.Contains(errs, "relayctl: fatal: unable to save "+rodb+".rules (the rules as confirmed; the CDB is unchanged): permission denied") {
			t.Errorf("as nobody: exit %d, stderr %q", code, errs)
		}
	}
	b, _ := os.ReadFile(rodb)
	if !bytes.Equal(old, b) {
		t.Error("the read-only CDB changed")
	}
}

// fullDisk fails writes past n bytes as a full disk does.
type fullDisk struct {
	*os.File
	n int
}

func (d *fullDisk) Write(p []byte) (int, error) {
	if len(p) > d.n {
		return 0, &os.PathError{Op: "write", Path: d.Name(), Err: syscall.ENOSPC}
	}
	d.n -= len(p)
	return d.File.Write(p)
}

// runAsNobody runs this test binary as relayctl with uid and gid 65534.
func runAsNobody(t *testing.T, f *fixture, args ...string) (int, string) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// The test binary and the fixture must be reachable by nobody.
	bindir, err := os.MkdirTemp("", "relayctl-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(bindir)
	os.Chmod(bindir, 0o755)
	b, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(bindir, "relayctl.test")
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	for d := f.dir; d != "/" && d != "."; d = filepath.Dir(d) {
		if st, err := os.Stat(d); err == nil && st.Mode().Perm()&0o001 == 0 {
			os.Chmod(d, st.Mode().Perm()|0o001)
			defer os.Chmod(d, st.Mode().Perm())
		}
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = []string{"RELAYCTL_TEST_MAIN=1", "POPRELAY_SPOOL=" + f.spool, "POPRELAY_RULES=" + f.rules, "POPRELAY_NEVER="}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	var errb bytes.Buffer
	cmd.Stderr = &errb
	err = cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, errb.String()
}

func TestExpire(t *testing.T) {
	f := newFixture(t)
	// relayctl's clock stands still unless the test moves it: the short
	// grant must not expire because the machine is slow.
	start := time.Now()
	f.now = start
	f.ok("allow", "192.0.2.7", "--for", "1m")
	f.ok("allow", "192.0.2.8")
	if got := f.decide("192.0.2.7"); !strings.Contains(got, "RELAYCLIENT=") {
		t.Fatalf("before: %s", got)
	}
	// Nothing to do: silent, and the CDB is not rewritten.
	st0, _ := os.Stat(f.db)
	if out := f.ok("expire"); out != "" {
		t.Errorf("expire printed %q", out)
	}
	st1, _ := os.Stat(f.db)
	if !os.SameFile(st0, st1) {
		t.Error("expire rewrote the CDB with nothing to do")
	}
	f.now = start.Add(2 * time.Minute)
	if out := f.ok("expire"); out != "" {
		t.Errorf("expire printed %q", out)
	}
	if got := f.decide("192.0.2.7"); got != "allow 192.0.2. QMAILQUEUE=/var/qmail/bin/qq" {
		t.Errorf("after expire: %s", got)
	}
	if got := f.decide("192.0.2.8"); !strings.Contains(got, "RELAYCLIENT=") {
		t.Errorf("the live grant went: %s", got)
	}
	// A grant past the max age is left out of a rebuild even before
	// expire removes it.
	f.now = start.Add(2 * time.Hour)
	f.ok("rebuild")
	if got := f.decide("192.0.2.8"); strings.Contains(got, "RELAYCLIENT=") {
		t.Errorf("an expired grant relays: %s", got)
	}
	f.ok("expire", "--max-age", "30m")
	if gs, _ := grant.New(f.spool).List(); len(gs) != 0 {
		t.Errorf("left %+v", gs)
	}
}

// TestExpirePublishes: a login (a grant written to the spool, as the
// wrapper does) is published by the next expire, though no grant expired;
// an expire with everything published does not rewrite the CDB; a CDB
// rewritten without the grants (tcprules by hand) is repaired.
func TestExpirePublishes(t *testing.T) {
	f := newFixture(t)
	f.ok("rebuild")
	if err := grant.New(f.spool).Record(grant.Grant{IP: "192.0.2.9", User: "alice", Service: "pop3"}); err != nil {
		t.Fatal(err)
	}
	if got := f.decide("192.0.2.9"); strings.Contains(got, "RELAYCLIENT=") {
		t.Fatalf("relays before any rebuild: %s", got)
	}
	f.ok("expire")
	if got := f.decide("192.0.2.9"); !strings.Contains(got, "RELAYCLIENT=") {
		t.Errorf("expire did not publish the login: %s", got)
	}
	st0, _ := os.Stat(f.db)
	f.ok("expire")
	st1, _ := os.Stat(f.db)
	if !os.SameFile(st0, st1) {
		t.Error("expire rewrote the CDB with every grant published")
	}
	// A record that differs from the grant's (here: the static rules'
	// CDB alone, as tcprules would write it) is rebuilt too.
	withGrants := f.cdbBytes()
	static := filepath.Join(t.TempDir(), "static.cdb")
	f.env["POPRELAY_SPOOL"], f.env["POPRELAY_CDB"] = t.TempDir(), static
	f.ok("rebuild")
	f.env["POPRELAY_SPOOL"], f.env["POPRELAY_CDB"] = f.spool, f.db
	b, _ := os.ReadFile(static)
	f.write(f.db, string(b))
	if got := f.decide("192.0.2.9"); strings.Contains(got, "RELAYCLIENT=") {
		t.Fatalf("the static CDB relays: %s", got)
	}
	f.ok("expire")
	if !bytes.Equal(f.cdbBytes(), withGrants) {
		t.Error("expire did not put the grant back into a CDB built without it")
	}
}

func TestList(t *testing.T) {
	f := newFixture(t)
	f.write(filepath.Join(f.dir, "never"), "203.0.113.5\n")
	f.env["POPRELAY_NEVER"] = filepath.Join(f.dir, "never")
	f.ok("allow", "192.0.2.7", "--user", "alice")
	f.run("allow", "192.0.2.66", "--user", "mallory")
	f.run("allow", "198.51.100.1")
	// A grant the never set refuses reaches the spool by other means.
	s := grant.New(f.spool)
	if err := s.Record(grant.Grant{IP: "203.0.113.5", User: "proxy", Service: "pop3", Time: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := s.Record(grant.Grant{IP: "192.0.2.9", User: "old", Service: "imap", Time: time.Now().Add(-2 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
	out := f.ok("list", "--json")
	var rows []map[string]any
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	var got []string
	for _, r := range rows {
		keys := []string{}
		for k := range r {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		if want := "age expires expires_in ip login reason service status user"; strings.Join(keys, " ") != want && strings.Join(keys, " ") != strings.Replace(want, " reason", "", 1) {
			t.Errorf("keys %q", keys)
		}
		if _, err := time.Parse(time.RFC3339, r["login"].(string)); err != nil {
			t.Error(err)
		}
		got = append(got, fmt.Sprintf("%v %v %v", r["ip"], r["status"], r["reason"]))
	}
	want := []string{
		"192.0.2.7 relay as " + f.rules + ":4",
		"192.0.2.9 expired <nil>",
		"192.0.2.66 static " + f.rules + ":3",
		"198.51.100.1 denied " + f.rules + ":5",
		"203.0.113.5 refused never-grant entry 203.0.113.5 (" + filepath.Join(f.dir, "never") + ":1)",
	}
	if !slices.Equal(got, want) {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	text := f.ok("list")
	for _, w := range []string{"IP ", "EXPIRES IN", "192.0.2.7 ", "alice", "refused: ", "expired"} {
		if !strings.Contains(text, w) {
			t.Errorf("list lacks %q:\n%s", w, text)
		}
	}
}

// TestListRulesUnreadable: without a readable rules file, list still lists
// the grants, warns once, and marks live grants' status unknown.
func TestListRulesUnreadable(t *testing.T) {
	f := newFixture(t)
	f.ok("allow", "192.0.2.7", "--user", "alice")
	for name, setup := range map[string]func(){
		"missing":    func() { os.Remove(f.rules) },
		"bad syntax": func() { f.write(f.rules, "10.0.0.1:bogus\n") },
	} {
		setup()
		code, out, errs := f.run("list")
		if code != 0 || !strings.Contains(out, "192.0.2.7") || !strings.Contains(out, "unknown: rules unreadable") {
			t.Errorf("%s: exit %d, stdout %q", name, code, out)
		}
		if !strings.HasPrefix(errs, "relayctl: warning: ") || !strings.Contains(errs, f.rules) || strings.Count(errs, "\n") != 1 {
			t.Errorf("%s: stderr %q", name, errs)
		}
	}
}

func TestCheck(t *testing.T) {
	f := newFixture(t)
	f.ok("allow", "192.0.2.7", "--user", "alice")
	out := f.ok("check", "192.0.2.7")
	for _, w := range []string{"decision: allow\n", "key: \"192.0.2.7\"\n", `from: grant for 192.0.2.7: user "alice"`, "env: QMAILQUEUE=/var/qmail/bin/qq\n", "env: RELAYCLIENT=\n", "env: RBLSMTPD=\n"} {
		if !strings.Contains(out, w) {
			t.Errorf("check 192.0.2.7 lacks %q:\n%s", w, out)
		}
	}
	// Without --mapped an IPv4 grant has no ::ffff: key, and check says so.
	out = f.ok("check", "::ffff:192.0.2.7")
	if !strings.Contains(out, `key: ""`) || !strings.Contains(out, `grant: for 192.0.2.7 (user "alice"): relay: as `+f.rules+`:4 under "192.0.2.7", not "::ffff:192.0.2.7" (--mapped adds`) {
		t.Errorf("::ffff: form:\n%s", out)
	}
	f.ok("rebuild", "--mapped")
	out = f.ok("check", "::ffff:192.0.2.7")
	if !strings.Contains(out, `key: "::ffff:192.0.2.7"`) || !strings.Contains(out, "grant for 192.0.2.7") {
		t.Errorf("::ffff: form with --mapped:\n%s", out)
	}
	// IPv6: looked up as tcpserver spells it; a grant whose key would be a
	// prefix is refused, and check says why.
	f.ok("allow", "2001:db8:0:1:1:1:1:1", "--user", "dave")
	out = f.ok("check", "2001:db8:0:1:1:1:1:1")
	if !strings.Contains(out, "address: 2001:db8:0:1:1:1:1:1 is looked up as \"2001:db8::1:1:1:1:1\"\n") || !strings.Contains(out, `key: "2001:db8::1:1:1:1:1"`) || !strings.Contains(out, `grant for 2001:db8:0:1:1:1:1:1: user "dave"`) {
		t.Errorf("IPv6:\n%s", out)
	}
	// As a login from it leaves it (the wrapper refuses it too).
	if err := grant.New(f.spool).Record(grant.Grant{IP: "2001:db8:aaaa::", User: "mallory", Service: "pop3", Time: f.now}); err != nil {
		t.Fatal(err)
	}
	if _, _, errs := f.run("rebuild"); !strings.Contains(errs, `warning: refused grant for 2001:db8:aaaa:: (user "mallory"): would open a range`) {
		t.Errorf("rebuild says %q", errs)
	}
	out = f.ok("check", "2001:db8:aaaa::")
	if !strings.Contains(out, `key: ""`) || !strings.Contains(out, `grant: for 2001:db8:aaaa:: (user "mallory"): refused: would open a range: its key "2001:db8:aaaa::" ends in ":"`) {
		t.Errorf("prefix-like grant:\n%s", out)
	}
	if out := f.ok("check", "2001:db8:aaaa::5"); !strings.Contains(out, `key: ""`) {
		t.Errorf("its neighbour:\n%s", out)
	}
	os.Remove(filepath.Join(f.spool, "2001:db8:aaaa::"))
	out = f.ok("check", "192.0.2.66")
	if !strings.Contains(out, "decision: deny\n") || !strings.Contains(out, "from: static rule "+f.rules+":3\n") {
		t.Errorf("deny:\n%s", out)
	}
	out = f.ok("check", "192.0.2.8", "--host", "mx.example.org", "--info", "joe")
	if !strings.Contains(out, `key: "192.0.2."`) || !strings.Contains(out, f.rules+":4") {
		t.Errorf("prefix:\n%s", out)
	}
	f.ok("rebuild", "--rules", "")
	out = f.ok("check", "--rules", "", "10.0.0.1")
	if !strings.Contains(out, "key: (none)") {
		t.Errorf("no match:\n%s", out)
	}
	// The grant went from the spool but not from the CDB.
	os.Remove(filepath.Join(f.spool, "192.0.2.7"))
	out = f.ok("check", "192.0.2.7")
	if !strings.Contains(out, "no grant for 192.0.2.7") {
		t.Errorf("stale grant:\n%s", out)
	}
	f.fails(100, "not an IP address", "check", "example.org")
	f.fails(100, "usage:", "check")
	os.Remove(f.db)
	f.fails(111, "unable to read "+f.db, "check", "192.0.2.7")
}

// TestCatchAllAndHostRules: a grant overrides the catch-all deny (issue
// 17.3) and host-name rules (16.6), and list, check and rebuild say so.
func TestCatchAllAndHostRules(t *testing.T) {
	f := newFixture(t)
	f.write(f.rules, "127.0.0.1:allow,RELAYCLIENT=\"\"\n10.:allow,RELAYCLIENT=\"\"\n=.dialup.example.net:deny\n192.0.2.:deny\n:deny\n")
	f.ok("allow", "203.0.113.7", "--user", "alice")
	if got := f.decide("203.0.113.7"); got != "allow 203.0.113.7 RBLSMTPD= RELAYCLIENT=" {
		t.Errorf("grant under the catch-all deny: %s", got)
	}
	if got := f.decide("203.0.113.8"); got != "deny " {
		t.Errorf("neighbour: %s", got)
	}
	if c, _, errs := f.run("allow", "192.0.2.7"); c != 0 || !strings.Contains(errs, "gets no relay: denied: "+f.rules+":4") {
		t.Errorf("prefix deny: exit %d, stderr %q", c, errs)
	}
	out := f.ok("list")
	if !strings.Contains(out, "relay: over the catch-all deny "+f.rules+":5") || !strings.Contains(out, "denied: "+f.rules+":4") {
		t.Errorf("list:\n%s", out)
	}
	code, out, errs := f.run("check", "203.0.113.7", "--host", "a.dialup.example.net")
	if code != 0 || !strings.Contains(out, "decision: allow\n") || !strings.Contains(out, "it overrides the catch-all deny "+f.rules+":5") {
		t.Errorf("check: exit %d\n%s", code, out)
	}
	hostWarning := "host-name rules (tcpserver tries a client's address before its host name): " + f.rules + ":3 =.dialup.example.net:deny\n"
	if !strings.Contains(errs, "relayctl: warning: this grant overrides "+hostWarning) {
		t.Errorf("check: stderr %q", errs)
	}
	if _, _, errs := f.run("check", "203.0.113.8", "--host", "a.dialup.example.net"); errs != "" {
		t.Errorf("check of an address without a grant warns: %q", errs)
	}
	if _, _, errs := f.run("rebuild"); errs != "relayctl: warning: grants override "+hostWarning {
		t.Errorf("rebuild: stderr %q", errs)
	}
	f.write(f.rules, "=.dialup.example.net:deny\n=:allow,A=\"1\"\n=a:deny\n=b:deny\njoe@=c:deny\n=d:deny\n")
	if _, _, errs := f.run("rebuild"); !strings.Contains(errs, f.rules+":3 =a:deny, and 2 more\n") {
		t.Errorf("rebuild: stderr %q", errs)
	}
}

func TestImport(t *testing.T) {
	f := newFixture(t)
	now := time.Now().Unix()
	open := filepath.Join(f.dir, "open-smtp")
	f.write(open, fmt.Sprintf("192.0.2.7:allow,RELAYCLIENT=\"\",RBLSMTPD=\"\"\t%d\n"+
		"192.0.2.8:allow,RELAYCLIENT=\"\",RBLSMTPD=\"\"\t%d\n"+
		"127.0.0.1:allow,RELAYCLIENT=\"\",RBLSMTPD=\"\"\t%d\n", now-60, now-7200, now))
	code, _, errs := f.run("import", "--vpopmail", open)
	if code != 0 || !strings.Contains(errs, "skipped 127.0.0.1") {
		t.Errorf("exit %d, stderr %q", code, errs)
	}
	if got := f.decide("192.0.2.7"); !strings.Contains(got, "RELAYCLIENT=") {
		t.Errorf("vpopmail grant: %s", got)
	}
	if _, ok, _ := grant.New(f.spool).Get("192.0.2.8"); ok {
		t.Error("an expired open-smtp line was imported")
	}
	old := f.cdbBytes()
	f.write(open, "192.0.2.9:allow\t1\nbroken line\n")
	f.fails(100, "relayctl: fatal: "+open+":2: ", "import", "--vpopmail", open)
	if _, ok, _ := grant.New(f.spool).Get("192.0.2.9"); ok || !bytes.Equal(old, f.cdbBytes()) {
		t.Error("a bad open-smtp file changed something")
	}

	rc := filepath.Join(f.dir, "relay-ctrl")
	os.Mkdir(rc, 0o755)
	f.write(filepath.Join(rc, "198.51.100.20"), "USER=bob\x00DOMAIN=example.com\x00")
	f.write(filepath.Join(rc, "2001:db8::20"), "")
	if c, _, errs := f.run("import", "--relay-ctrl", rc); c != 0 {
		t.Errorf("import --relay-ctrl: exit %d, stderr %q", c, errs)
	}
	g, ok, _ := grant.New(f.spool).Get("198.51.100.20")
	if !ok || g.User != "bob@example.com" || g.Service != "relay-ctrl" {
		t.Errorf("relay-ctrl grant %+v %v", g, ok)
	}
	if got := f.decide("2001:db8::20"); !strings.Contains(got, "RELAYCLIENT=") {
		t.Errorf("relay-ctrl v6 grant: %s", got)
	}
	f.fails(100, "usage:", "import")
	f.fails(100, "usage:", "import", "--vpopmail", open, "--relay-ctrl", rc)
	f.fails(111, "unable to read", "import", "--relay-ctrl", filepath.Join(f.dir, "none"))
}

func TestConfig(t *testing.T) {
	f := newFixture(t)
	delete(f.env, "POPRELAY_NEVER")
	f.env["POPRELAY_MAXAGE"] = "7200"
	f.env["POPRELAY_KEEPRBL"] = "yes"
	f.env["POPRELAY_DEBOUNCE"] = "20ms"
	out := f.ok("config", "--cdb", "/x/y.cdb", "--remoteinfo")
	out = regexp.MustCompile(` {2,}`).ReplaceAllString(out, "  ") // columns
	for _, w := range []string{
		"spool  " + f.spool, "env POPRELAY_SPOOL",
		"cdb  /x/y.cdb", "flag --cdb",
		"max-age  2h0m0s", "env POPRELAY_MAXAGE",
		"keep-rbl  true", "env POPRELAY_KEEPRBL",
		"remoteinfo  true", "flag --remoteinfo",
		"never  built-ins + /etc/poprelay/never", "default",
		"lock  /x/y.cdb.lock",
		"etcd-prefix  /poprelay/v1/  default",
		// The watcher's settings.
		"metrics  off  default (watch)",
		"debounce  20ms  env POPRELAY_DEBOUNCE (watch)",
		"max-delay  50ms  default (watch)",
		"rescan  5m0s  default (watch)",
		"settle  250ms  default (watch)",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("config lacks %q:\n%s", w, out)
		}
	}
	// The caps: defaults, an envdir's value, 0 for none, bad values.
	for _, w := range []string{"max-per-user  16  default", "max-grants  100000  default"} {
		if !strings.Contains(out, w) {
			t.Errorf("config lacks %q:\n%s", w, out)
		}
	}
	f.env["POPRELAY_MAXPERUSER"] = "5\n"
	out = regexp.MustCompile(` {2,}`).ReplaceAllString(f.ok("config", "--max-grants", "0"), "  ")
	for _, w := range []string{"max-per-user  5  env POPRELAY_MAXPERUSER", "max-grants  0 (no cap)  flag --max-grants"} {
		if !strings.Contains(out, w) {
			t.Errorf("config lacks %q:\n%s", w, out)
		}
	}
	for _, bad := range []string{"-1", "x", "1e3", "3000000000"} {
		f.env["POPRELAY_MAXPERUSER"] = bad
		f.fails(100, fmt.Sprintf(`bad max-per-user %q (env POPRELAY_MAXPERUSER): want a number, 0 for no cap`, bad), "rebuild")
	}
	delete(f.env, "POPRELAY_MAXPERUSER")
	f.fails(100, `bad max-grants "-3" (flag --max-grants)`, "list", "--max-grants", "-3")
	f.env["POPRELAY_MAXAGE"] = "-5"
	f.fails(100, `bad max age "-5" (env POPRELAY_MAXAGE)`, "config")
	f.fails(100, `bad max age "x" (flag --max-age)`, "config", "--max-age", "x")
	delete(f.env, "POPRELAY_MAXAGE")
	f.env["POPRELAY_SPOOL"] = ""
	f.fails(100, "spool (env POPRELAY_SPOOL) must not be empty", "config")
	f.env["POPRELAY_SPOOL"] = f.spool
	// A never file named by flag or env must exist; a bad one is permanent.
	f.fails(111, "unable to read never-grant file", "allow", "--never", filepath.Join(f.dir, "none"), "192.0.2.7")
	f.write(filepath.Join(f.dir, "never"), "not an address\n")
	f.fails(100, filepath.Join(f.dir, "never")+":1", "rebuild", "--never", filepath.Join(f.dir, "never"))
	f.env["POPRELAY_NEVER"] = filepath.Join(f.dir, "never")
	out = f.ok("config")
	if !strings.Contains(out, "built-ins + /etc/poprelay/never") || !strings.Contains(out, " + "+filepath.Join(f.dir, "never")+"  ") {
		t.Errorf("config never:\n%s", out)
	}
}

func TestHelpAndUsage(t *testing.T) {
	f := newFixture(t)
	for _, c := range commands {
		for _, h := range []string{"--help", "-h"} {
			code, out, errs := f.run(c.name, h)
			if code != 0 || errs != "" || !strings.HasPrefix(out, "usage: relayctl "+c.name) || !strings.Contains(out, "POPRELAY_SPOOL") {
				t.Errorf("%s %s: exit %d, stderr %q, out %q", c.name, h, code, errs, out)
			}
		}
	}
	code, out, _ := f.run("--help")
	if code != 0 || !strings.Contains(out, "rebuild") || !strings.Contains(out, "import") {
		t.Errorf("--help: exit %d %q", code, out)
	}
	code, out, _ = f.run("help", "allow")
	if code != 0 || !strings.HasPrefix(out, "usage: relayctl allow") {
		t.Errorf("help allow: exit %d %q", code, out)
	}
	f.fails(100, "relayctl: usage:")
	f.fails(100, `unknown command "frobnicate"`, "frobnicate")
	f.fails(100, "relayctl: usage: flag provided but not defined: -bogus", "rebuild", "--bogus")
	f.fails(100, "usage: no arguments expected", "rebuild", "extra")
}

// TestConcurrent races rebuilds, allows and revokes; the lock must leave a
// CDB equal to a fresh rebuild of the final spool.
func TestConcurrent(t *testing.T) {
	f := newFixture(t)
	f.ok("rebuild")
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 10 {
				ip := fmt.Sprintf("203.0.113.%d", w*10+i)
				if c, _, errs := f.run("allow", ip, "--user", fmt.Sprint("u", w)); c != 0 {
					t.Errorf("allow: %d %s", c, errs)
				}
				if i%3 == 0 {
					if c, _, errs := f.run("revoke", ip); c != 0 {
						t.Errorf("revoke: %d %s", c, errs)
					}
				}
				if c, _, errs := f.run("rebuild"); c != 0 {
					t.Errorf("rebuild: %d %s", c, errs)
				}
			}
		})
	}
	wg.Wait()
	got := f.cdbBytes()
	f.ok("rebuild")
	if !bytes.Equal(got, f.cdbBytes()) {
		t.Error("the last concurrent write differs from a fresh rebuild")
	}
	gs, _ := grant.New(f.spool).List()
	if len(gs) != 4*6 {
		t.Errorf("%d grants, want 24", len(gs))
	}
	for _, g := range gs {
		if got := f.decide(g.IP); !strings.Contains(got, "RELAYCLIENT=") {
			t.Errorf("%s: %s", g.IP, got)
		}
	}
	if got := f.leftovers(); len(got) != 0 {
		t.Errorf("left in the CDB's directory: %q", got)
	}
}

// TestBadFolded: a folded file that is not what a fold wrote stops the
// commands that read the grants with exit 111, naming the file and the
// line; the CDB stays as it was. (check reads the CDB, and says so.)
func TestBadFolded(t *testing.T) {
	f := newFixture(t)
	f.ok("allow", "192.0.2.7", "--user", "bob")
	f.ok("allow", "192.0.2.8", "--for", "2h")
	f.ok("revoke", "--user", "bob") // folds: 192.0.2.8 is in the folded file
	old := f.cdbBytes()
	folded := filepath.Join(f.spool, ".grants")
	b, err := os.ReadFile(folded)
	if err != nil {
		t.Fatal(err)
	}
	// A second line out of order, the checksum made right.
	lines := strings.SplitAfter(string(b), "\n")
	body := lines[0] + lines[1] + strings.Replace(lines[1], "192.0.2.8", "192.0.2.1", 1)
	bad := fmt.Sprintf("%send\t2\t%08x\n", body, crc32.Checksum([]byte(body), crc32.MakeTable(crc32.Castagnoli)))
	os.Remove(folded)
	f.write(folded, bad)
	os.Chmod(folded, 0o640)
	for _, args := range [][]string{{"rebuild"}, {"list"}, {"expire"}, {"revoke", "192.0.2.8"}} {
		f.fails(111, folded+": line 3: out of order", args...)
	}
	// check answers from the CDB, and says the grant cannot be read.
	if out := f.ok("check", "192.0.2.8"); !strings.Contains(out, "unreadable") || !strings.Contains(out, folded+": line 3: out of order") {
		t.Errorf("check says:\n%s", out)
	}
	if !bytes.Equal(old, f.cdbBytes()) {
		t.Fatal("the CDB changed")
	}
}

// TestClaimedLeftFolded: a grant file a killed fold left claimed
// (renamed to .fold-IP) is listed and published, and the next rebuild
// folds it: the claimed name is gone, the grant is in the folded file.
func TestClaimedLeftFolded(t *testing.T) {
	f := newFixture(t)
	f.ok("allow", "192.0.2.7", "--user", "bob")
	f.ok("allow", "192.0.2.8", "--user", "carol")
	f.ok("revoke", "192.0.2.7") // folds: carol's grant is in the folded file
	f.ok("allow", "192.0.2.9", "--user", "dave")
	claimed := filepath.Join(f.spool, ".fold-192.0.2.9")
	if err := os.Rename(filepath.Join(f.spool, "192.0.2.9"), claimed); err != nil {
		t.Fatal(err)
	}
	if out := f.ok("list"); !strings.Contains(out, "192.0.2.9") || !strings.Contains(out, "192.0.2.8") {
		t.Fatalf("list with a claimed file:\n%s", out)
	}
	f.ok("rebuild")
	if _, err := os.Lstat(claimed); err == nil {
		t.Errorf("rebuild left %s", claimed)
	}
	b, _ := os.ReadFile(filepath.Join(f.spool, ".grants"))
	if !strings.Contains(string(b), "192.0.2.9\t") {
		t.Errorf("the claimed grant is not in the folded file:\n%s", b)
	}
	for _, ip := range []string{"192.0.2.8", "192.0.2.9"} {
		if got := f.decide(ip); !strings.Contains(got, "RELAYCLIENT") {
			t.Errorf("%s: %s", ip, got)
		}
	}
}

// TestCapsAllow: relayctl allow --user NAME counts toward NAME's cap like
// a login and displaces NAME's oldest; allow without --user is no one's
// and only the total cap counts it; list shows the refused; expire
// removes them; a rebuild over the total cap warns.
func TestCapsAllow(t *testing.T) {
	f := newFixture(t)
	f.env["POPRELAY_MAXPERUSER"] = "2"
	start := time.Now()
	for i, user := range []string{"alice", "alice", "alice", "", "", ""} {
		f.now = start.Add(time.Duration(i) * time.Second)
		args := []string{"allow", fmt.Sprintf("192.0.2.%d", 10+i)}
		if user != "" {
			args = append(args, "--user", user)
		}
		f.ok(args...)
	}
	relay := func(ip string) bool { return strings.Contains(f.decide(ip), "RELAYCLIENT=") }
	for i := range 6 {
		ip := fmt.Sprintf("192.0.2.%d", 10+i)
		if want := i != 0; relay(ip) != want {
			t.Errorf("%s relays %v, want %v", ip, !want, want)
		}
	}
	if out := f.ok("list"); !strings.Contains(out, "refused: over the cap of 2 grants per user") || strings.Count(out, "over the cap") != 1 {
		t.Errorf("list:\n%s", out)
	}
	f.ok("expire")
	if _, ok, _ := grant.New(f.spool).Get("192.0.2.10"); ok {
		t.Error("expire left the grant over the per-user cap")
	}
	if gs, _ := grant.New(f.spool).List(); len(gs) != 5 {
		t.Errorf("expire left %d grants, want 5", len(gs))
	}
	// The total cap: the three newest, a warning at every rebuild.
	f.env["POPRELAY_MAXGRANTS"] = "3"
	for range 2 {
		code, _, errs := f.run("rebuild")
		if code != 0 || !strings.Contains(errs, "relayctl: warning: OVER THE CAP of 3 grants in total (--max-grants, POPRELAY_MAXGRANTS): 2 grants refused, 3 published (those without a user first, then the newest)") {
			t.Errorf("rebuild over the total cap: exit %d, stderr %q", code, errs)
		}
	}
	for i := 1; i < 6; i++ {
		ip := fmt.Sprintf("192.0.2.%d", 10+i)
		if want := i >= 3; relay(ip) != want {
			t.Errorf("over the total cap, %s relays %v, want %v", ip, !want, want)
		}
	}
	// Grants without a user come first for the total cap: newer logins
	// of bob and carol do not push out the admin's three.
	for i, user := range []string{"bob", "carol"} {
		f.now = start.Add(time.Duration(10+i) * time.Second)
		if code, _, errs := f.run("allow", fmt.Sprintf("192.0.2.%d", 20+i), "--user", user); code != 0 || !strings.Contains(errs, "OVER THE CAP") {
			t.Errorf("allow over the total cap: exit %d, stderr %q", code, errs)
		}
	}
	for _, c := range []struct {
		ip    string
		relay bool
	}{{"192.0.2.11", false}, {"192.0.2.12", false}, {"192.0.2.13", true}, {"192.0.2.14", true}, {"192.0.2.15", true}, {"192.0.2.20", false}, {"192.0.2.21", false}} {
		if relay(c.ip) != c.relay {
			t.Errorf("logins over the total cap: %s relays %v, want %v", c.ip, !c.relay, c.relay)
		}
	}
	// expire removes nothing the total cap refuses: a surge refuses
	// them for now, not for good. Over the cap, an expire with nothing
	// to remove is silent (it does not rebuild for the refused).
	f.now = start.Add(time.Minute)
	if code, out, errs := f.run("-v", "expire"); code != 0 || strings.Contains(errs, "removed") {
		t.Errorf("expire over the total cap: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	if gs, _ := grant.New(f.spool).List(); len(gs) != 7 {
		t.Errorf("expire over the total cap left %d grants, want all 7", len(gs))
	}
	if code, out, errs := f.run("expire"); code != 0 || out != "" || errs != "" {
		t.Errorf("a second expire over the total cap: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	// The surge gone (here: the cap raised), cron's expire publishes
	// them again.
	delete(f.env, "POPRELAY_MAXGRANTS")
	f.ok("expire")
	for _, ip := range []string{"192.0.2.11", "192.0.2.12", "192.0.2.20", "192.0.2.21"} {
		if !relay(ip) {
			t.Errorf("below the total cap again, %s does not relay after expire", ip)
		}
	}
}
