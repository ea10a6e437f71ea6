package t

import (
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/poprelay/poprelay/internal/cdb"
	"github.com/poprelay/poprelay/internal/etcdtest"
	"github.com/poprelay/poprelay/internal/wait"
)

// setupBlock returns the shell block of docs/etcd.md that follows the
// line "<!-- setup: NAME -->": the tests run the very commands the guide
// gives, so the two cannot drift apart.
func setupBlock(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "docs", "etcd.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "<!-- setup: "+name+" -->\n")
	if !ok {
		t.Fatalf("docs/etcd.md has no block %q", name)
	}
	rest, ok = strings.CutPrefix(rest, "```sh\n")
	if !ok {
		t.Fatalf("docs/etcd.md: block %q does not start with ```sh", name)
	}
	block, _, ok := strings.Cut(rest, "```\n")
	if !ok {
		t.Fatalf("docs/etcd.md: block %q does not end", name)
	}
	return block
}

// etcdSetup runs blocks of docs/etcd.md with the real etcdctl in dir,
// where the password files NAME.pw are.
func etcdSetup(t *testing.T, dir string, env []string, blocks ...string) {
	t.Helper()
	need(t, "etcdctl")
	script := "set -eu\n"
	for _, name := range blocks {
		script += setupBlock(t, name)
	}
	cmd := exec.Command("sh", "-c", script)
	cmd.Dir, cmd.Env = dir, env
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("docs/etcd.md blocks %q: %v\n%s", blocks, err, out)
	}
	t.Logf("docs/etcd.md blocks %q:\n%s", blocks, out)
}

// passwords writes one password file per etcd user of docs/etcd.md.
func passwords(t *testing.T, dir string) map[string]string {
	t.Helper()
	pw := map[string]string{}
	for _, u := range []string{"root", "pop1", "smtp1", "admin"} {
		pw[u] = u + "-Pw-" + strconv.FormatInt(time.Now().UnixNano()%1e9, 36)
		if err := os.WriteFile(filepath.Join(dir, u+".pw"), []byte(pw[u]+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return pw
}

// etcdEnv adds the etcd settings of one host to a site's environment.
func (s *relayctlSite) etcdEnv(endpoint string, extra ...string) {
	// 30s: on a busy machine a request that should succeed must not
	// time out (a refusal comes at once).
	s.env = append(s.env, "POPRELAY_ETCD_ENDPOINTS="+endpoint, "POPRELAY_ETCD_TIMEOUT=30s")
	s.env = append(s.env, extra...)
}

// fileGone waits until path no longer exists.
func fileGone(t *testing.T, path string) {
	t.Helper()
	wait.For(t, path+" removed", func() bool {
		_, err := os.Stat(path)
		return os.IsNotExist(err)
	})
}

// denied checks a relayctl run refused by etcd: exit 100 and a message
// naming the user, no panic.
func denied(t *testing.T, what string, r result, user string) {
	t.Helper()
	if r.code != 100 || !strings.Contains(r.stderr, "relayctl: fatal: unable to") ||
		!strings.Contains(r.stderr, "etcd denied access") || !strings.Contains(r.stderr, `etcd user "`+user+`"`) ||
		strings.Contains(r.stderr, "panic") || strings.Count(strings.TrimSpace(r.stderr), "\n") > 0 {
		t.Errorf("%s: exit %d, stderr %q; want exit 100 and one line saying etcd denied user %q", what, r.code, r.stderr, user)
	}
	t.Logf("%s: %s", what, strings.TrimSpace(r.stderr))
}

// TestEtcdAuthRoles: etcd with authentication on and the roles of
// docs/etcd.md, set up by its own etcdctl commands. The POP host (role
// poprelay-pop) publishes and sees revocations, the SMTP host (role
// poprelay-smtp) mirrors into its CDB, and the SMTP host's credentials
// cannot write a grant or a revocation: relayctl says so and exits 100.
// Only the admin role revokes cluster-wide.
func TestEtcdAuthRoles(t *testing.T) {
	e := etcdtest.Start(t)
	dir := t.TempDir()
	passwords(t, dir)
	etcdSetup(t, dir, baseEnv("ETCDCTL_ENDPOINTS="+e.Client), "roles", "password users", "enable")

	a := newRelayctlSite(t, ":allow\n")
	b := newRelayctlSite(t, "127.0.0.:allow,QMAILQUEUE=\"/var/qmail/bin/simscan\"\n:allow\n")
	admin := newRelayctlSite(t, ":allow\n")
	for name, s := range map[string]*relayctlSite{"pop1": a, "smtp1": b, "admin": admin} {
		s.etcdEnv(e.Client, "POPRELAY_ETCD_USER="+name, "POPRELAY_ETCD_PASSWORD_FILE="+filepath.Join(dir, name+".pw"))
	}
	a.startWatch(t, "--publish", "etcd")
	b.startWatch(t, "--source", "etcd")
	ts := startTcpserver(t, baseEnv(), []string{"-x", b.cdb, "-R", "-H"}, "/usr/bin/env")

	// The POP host publishes; the SMTP host mirrors.
	wrapLogin(t, a, "127.0.0.71", "alice")
	_, env := relayClient(t, ts, "127.0.0.71", true)
	if env["QMAILQUEUE"] != "/var/qmail/bin/simscan" {
		t.Errorf("B's static rules lost in the grant: %v", env)
	}

	// The SMTP host's credentials write nothing.
	denied(t, "allow with smtp1", b.run(t, "allow", "127.0.0.72"), "smtp1")
	if _, err := os.Stat(filepath.Join(b.spool, "127.0.0.72")); !os.IsNotExist(err) {
		t.Errorf("a denied allow left a grant in the spool: %v", err)
	}
	denied(t, "revoke with smtp1", b.run(t, "revoke", "127.0.0.71"), "smtp1")
	r := admin.run(t, "list", "--source", "etcd")
	if r.code != 0 || !strings.Contains(r.stdout, "127.0.0.71") || strings.Contains(r.stdout, "127.0.0.72") {
		t.Errorf("list as admin: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	relayClient(t, ts, "127.0.0.71", true)
	relayClient(t, ts, "127.0.0.72", false)
	// Nor can the POP host leave a revocation marker (it may write grants).
	wrapLogin(t, a, "127.0.0.74", "bob")
	relayClient(t, ts, "127.0.0.74", true)
	denied(t, "revoke with pop1", a.run(t, "revoke", "127.0.0.74"), "pop1")

	// The admin role revokes cluster-wide: B closes, and A drops the
	// grant from its own spool (it reads revoked/).
	admin.relayctl(t, "revoke", "127.0.0.71")
	relayClient(t, ts, "127.0.0.71", false)
	fileGone(t, filepath.Join(a.spool, "127.0.0.71"))
	admin.relayctl(t, "allow", "127.0.0.73", "--for", "1h")
	relayClient(t, ts, "127.0.0.73", true)

	// A wrong password, and no credentials at all: exit 100, said so.
	os.WriteFile(filepath.Join(dir, "wrong.pw"), []byte("not-the-password\n"), 0o600)
	b.env = append(b.env, "POPRELAY_ETCD_PASSWORD_FILE="+filepath.Join(dir, "wrong.pw"))
	r = b.run(t, "list", "--source", "etcd")
	if r.code != 100 || !strings.Contains(r.stderr, "authentication failed") || strings.Contains(r.stderr, "not-the-password") {
		t.Errorf("wrong password: exit %d, %q", r.code, r.stderr)
	}
	anon := newRelayctlSite(t, ":allow\n")
	anon.etcdEnv(e.Client)
	r = anon.run(t, "allow", "127.0.0.75")
	if r.code != 100 || !strings.Contains(r.stderr, "etcd denied access") {
		t.Errorf("no credentials: exit %d, %q", r.code, r.stderr)
	}
}

// TestEtcdMutualTLS: the same roles with client certificates (made here
// with crypto/x509) instead of passwords, etcd started with
// --client-cert-auth: etcd takes each certificate's name as the user. A
// CA that does not match fails with what is wrong, not a timeout.
func TestEtcdMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca := etcdtest.NewCA(t, dir, "ca")
	other := etcdtest.NewCA(t, dir, "other")
	e := etcdtest.New(t, "mtls", filepath.Join(dir, "data"))
	e.UseTLS(ca, true)
	e.Start()
	e.WaitReady()
	passwords(t, dir) // root's, for the roles block
	root := ca.Client("root")
	etcdSetup(t, dir, baseEnv("ETCDCTL_ENDPOINTS="+e.Client, "ETCDCTL_CACERT="+ca.Cert, "ETCDCTL_CERT="+root.Cert, "ETCDCTL_KEY="+root.Key),
		"roles", "certificate users", "enable")

	a := newRelayctlSite(t, ":allow\n")
	b := newRelayctlSite(t, ":allow\n")
	admin := newRelayctlSite(t, ":allow\n")
	for name, s := range map[string]*relayctlSite{"pop1": a, "smtp1": b, "admin": admin} {
		p := ca.Client(name)
		s.etcdEnv(e.Client, "POPRELAY_ETCD_CA="+ca.Cert, "POPRELAY_ETCD_CERT="+p.Cert, "POPRELAY_ETCD_KEY="+p.Key)
	}
	out := regexp.MustCompile(` {2,}`).ReplaceAllString(b.relayctl(t, "config"), "  ")
	if !strings.Contains(out, "etcd-tls  yes  ") || !strings.Contains(out, "etcd-client-cert  yes: "+filepath.Join(dir, "ca-smtp1.pem")) ||
		!strings.Contains(out, "etcd-auth  the client certificate (etcd takes its CN as the user)") || strings.Contains(out, "etcd-warning") {
		t.Errorf("config:\n%s", out)
	}
	a.startWatch(t, "--publish", "etcd")
	b.startWatch(t, "--source", "etcd")
	ts := startTcpserver(t, baseEnv(), []string{"-x", b.cdb, "-R", "-H"}, "/usr/bin/env")

	wrapLogin(t, a, "127.0.0.81", "alice")
	relayClient(t, ts, "127.0.0.81", true)
	denied(t, "allow with smtp1's certificate", b.run(t, "allow", "127.0.0.82"), "smtp1")
	admin.relayctl(t, "revoke", "127.0.0.81")
	relayClient(t, ts, "127.0.0.81", false)

	// Wrong CAs: the server's certificate not trusted, and a client
	// certificate of another CA. Exit 111 (etcd cannot be used now),
	// with the TLS error and the endpoint.
	for _, tc := range []struct {
		what string
		env  []string
		want string
	}{
		{"server not trusted", []string{"POPRELAY_ETCD_CA=" + other.Cert}, "certificate signed by unknown authority"},
		{"client certificate of another CA", []string{"POPRELAY_ETCD_CERT=" + other.Client("smtp1").Cert, "POPRELAY_ETCD_KEY=" + other.Client("smtp1").Key}, "bad certificate"},
	} {
		s := &relayctlSite{dir: b.dir, spool: b.spool, rules: b.rules, cdb: b.cdb, env: append(append([]string{}, b.env...), tc.env...)}
		r := s.run(t, "list", "--source", "etcd")
		if r.code != 111 || !strings.Contains(r.stderr, "etcd at "+e.Client+": TLS") || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%s: exit %d, %q; want 111 and %q", tc.what, r.code, r.stderr, tc.want)
		}
		t.Logf("%s: %s", tc.what, strings.TrimSpace(r.stderr))
	}
}

// TestEtcdCredentialsHidden: the etcd password never shows in the
// watchers' logs, relayctl config, the metrics, or the processes'
// command lines and environments when it comes from a file.
func TestEtcdCredentialsHidden(t *testing.T) {
	e := etcdtest.Start(t)
	dir := t.TempDir()
	pw := passwords(t, dir)
	etcdSetup(t, dir, baseEnv("ETCDCTL_ENDPOINTS="+e.Client), "roles", "password users", "enable")
	a := newRelayctlSite(t, ":allow\n")
	b := newRelayctlSite(t, ":allow\n")
	a.etcdEnv(e.Client, "POPRELAY_ETCD_USER=pop1", "POPRELAY_ETCD_PASSWORD_FILE="+filepath.Join(dir, "pop1.pw"))
	b.etcdEnv(e.Client, "POPRELAY_ETCD_USER=smtp1", "POPRELAY_ETCD_PASSWORD_FILE="+filepath.Join(dir, "smtp1.pw"))
	wa := a.startWatch(t, "--publish", "etcd", "--metrics", "127.0.0.1:0", "-v")
	wb := b.startWatch(t, "--source", "etcd", "--metrics", "127.0.0.1:0", "-v")
	wrapLogin(t, a, "127.0.0.91", "alice")
	wb.waitLine(t, "rebuilt: change: 1 grants")
	b.run(t, "allow", "127.0.0.92") // denied: an error in the logs

	secrets := []string{pw["pop1"], pw["smtp1"]}
	check := func(what, text string) {
		t.Helper()
		for _, s := range secrets {
			if strings.Contains(text, s) {
				t.Errorf("%s shows the password %q:\n%s", what, s, text)
			}
		}
	}
	for name, w := range map[string]*watcher{"A": wa, "B": wb} {
		addr := strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(w.waitLine(t, "metrics on http://")), "relayctl: metrics on http://"), "/metrics")
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		check("watcher "+name+"'s metrics", string(body))
		for _, f := range []string{"cmdline", "environ"} {
			b, err := os.ReadFile("/proc/" + strconv.Itoa(w.cmd.Process.Pid) + "/" + f)
			if err != nil {
				t.Fatal(err)
			}
			check("watcher "+name+"'s /proc/PID/"+f, strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	// The wrong password of a failed login is not echoed either.
	os.WriteFile(filepath.Join(dir, "wrong.pw"), []byte("Wrong-Pw-123\n"), 0o600)
	secrets = append(secrets, "Wrong-Pw-123")
	r := runCmd(t, append(append([]string{}, a.env...), "POPRELAY_ETCD_PASSWORD_FILE="+filepath.Join(dir, "wrong.pw")), "", wait.Patience, bin("relayctl"), "list", "--source", "etcd")
	check("a failed login's message", r.stderr+r.stdout)
	// config, with the password from the file, the variable and the flag.
	for _, env := range [][]string{
		a.env,
		baseEnv("POPRELAY_ETCD_ENDPOINTS="+e.Client, "POPRELAY_ETCD_USER=pop1", "POPRELAY_ETCD_PASSWORD="+pw["pop1"]),
	} {
		r := runCmd(t, env, "", wait.Patience, bin("relayctl"), "config")
		check("relayctl config", r.stdout+r.stderr)
	}
	r = runCmd(t, baseEnv("POPRELAY_ETCD_ENDPOINTS="+e.Client), "", wait.Patience, bin("relayctl"), "config", "--etcd-user", "pop1", "--etcd-password", pw["pop1"])
	check("relayctl config --etcd-password", r.stdout+r.stderr)
	if !strings.Contains(r.stdout, "visible to every local user") {
		t.Errorf("config with --etcd-password does not warn:\n%s", r.stdout)
	}
	wa.mu.Lock()
	check("watcher A's log", strings.Join(wa.lines, ""))
	wa.mu.Unlock()
	wb.mu.Lock()
	check("watcher B's log", strings.Join(wb.lines, ""))
	wb.mu.Unlock()
}

// TestEtcdHostileValues: whoever writes into etcd directly (a buggy or
// hostile client with write access) gets no more than a valid grant
// would: every SMTP host checks each key and value it reads (canonical
// address, field limits, an expiry), and applies its own never-grant set
// and static rules again. B's CDB ends up as its static rules plus the
// records of the one good grant.
func TestEtcdHostileValues(t *testing.T) {
	e := etcdtest.Start(t)
	b := newRelayctlSite(t, "127.0.0.61:deny\n127.0.0.:allow,QMAILQUEUE=\"/var/qmail/bin/simscan\"\n:allow\n")
	never := filepath.Join(b.dir, "never")
	os.WriteFile(never, []byte("127.0.0.60\n"), 0o644)
	b.etcdEnv(e.Client)
	b.env = append(b.env, "POPRELAY_NEVER="+never)
	wb := b.startWatch(t, "--source", "etcd")
	ts := startTcpserver(t, baseEnv(), []string{"-x", b.cdb, "-R", "-H"}, "/usr/bin/env")

	now := time.Now().UTC()
	ok := func(user string) string {
		return `{"user":"` + user + `","service":"pop3","host":"evil","time":"` + now.Format(time.RFC3339Nano) + `","exp":"` + now.Add(time.Hour).Format(time.RFC3339Nano) + `"}`
	}
	cli := etcdtest.Client(t, e.Client)
	const g = "/poprelay/v1/grants/"
	for _, kv := range [][2]string{
		{g + "127.0.0.1", ok("loopback")},                 // built-in never-grant
		{g + "127.0.0.60", ok("proxy")},                   // B's never-grant file
		{g + "127.0.0.61", ok("denied")},                  // B's static deny
		{g + "127.0.0.", ok("prefix")},                    // a prefix key
		{g + "127.0.0.062", ok("leading zero")},           // not canonical
		{g + "::ffff:127.0.0.63", ok("mapped")},           // not canonical
		{g + "127.0.0.64/8", ok("cidr")},                  // not an address
		{g + "=", ok("hostname rule")},                    // tcprules' host-name key
		{g + "", ok("empty")},                             // the prefix itself
		{g + "127.0.0.65", ok(`a\u0000+RELAYCLIENT=`)},    // a control character, escaped in JSON
		{g + "127.0.0.66", ok(strings.Repeat("u", 300))},  // a field too long
		{g + "127.0.0.68", ok(strings.Repeat("v", 5000))}, // a value too long
		{g + "127.0.0.69", `{"user":"noexp","time":"` + now.Format(time.RFC3339) + `"}`},
		{g + "127.0.0.70", `{"user":"expired","time":"2020-01-01T00:00:00Z","exp":"2020-01-01T01:00:00Z"}`},
		{g + "127.0.0.76", "junk"},
		{g + "127.0.0.67", ok("good")}, // last: when it is in, the rest was read
	} {
		ctx, cancel := context.WithTimeout(context.Background(), wait.Patience)
		if _, err := cli.Put(ctx, kv[0], kv[1]); err != nil {
			t.Fatal(err)
		}
		cancel()
	}
	_, env := relayClient(t, ts, "127.0.0.67", true)
	if env["QMAILQUEUE"] != "/var/qmail/bin/simscan" {
		t.Errorf("B's static rules lost in the grant: %v", env)
	}
	// The first five junk keys of a minute are logged by name, the rest
	// counted (TestSecurityEtcdJunkKeys).
	wb.waitLine(t, `skipping share: key "/poprelay/v1/grants/127.0.0."`)
	for _, ip := range []string{"127.0.0.1", "127.0.0.60", "127.0.0.61", "127.0.0.62", "127.0.0.63", "127.0.0.64", "127.0.0.65", "127.0.0.66", "127.0.0.68", "127.0.0.69", "127.0.0.70", "127.0.0.76"} {
		if ip == "127.0.0.1" {
			continue // tcpserver's own address here; the CDB check below covers it
		}
		out := dialFrom(t, ip, ts.Port, "")
		if _, has := envFrom(out)["RELAYCLIENT"]; has {
			t.Errorf("%s relays on B", ip)
		}
		if ip == "127.0.0.61" && out != "" {
			t.Errorf("127.0.0.61: the static deny is not kept: %q", out)
		}
	}
	// The CDB: the static keys and the good grant's, nothing else.
	db, err := cdb.Open(b.cdb)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	keys := map[string]bool{}
	db.ForEach(func(k, v []byte) error { keys[string(k)] = true; return nil })
	want := map[string]bool{"127.0.0.61": true, "127.0.0.": true, "": true, "127.0.0.67": true}
	if len(keys) != len(want) {
		t.Errorf("B's CDB keys: %v; want %v", keys, want)
	}
	for k := range want {
		if !keys[k] {
			t.Errorf("B's CDB lacks %q (has %v)", k, keys)
		}
	}
}
