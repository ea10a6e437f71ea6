package t

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/poprelay/poprelay/internal/cdb"
	"github.com/poprelay/poprelay/internal/rules"
)

// TestCdbbuildTcpserver compiles rules with cdbbuild, serves them with the
// real tcpserver -x, and checks that each client source address gets the
// decision and environment rules.Lookup predicts from the same CDB.
func TestCdbbuildTcpserver(t *testing.T) {
	need(t, "tcpserver")
	dir := t.TempDir()
	src := `# cdbbuild end-to-end rules
127.0.0.5:allow,RELAYCLIENT="",WHO="exact5"
127.0.0.6:deny
127.0.0.20-25:allow,WHO='range'
127.0.0.23:deny
127.0.0.:allow,WHO="p3",QMAILQUEUE="/var/qmail/bin/x:y"
127.0.1.:deny
127.0.2.1-3:allow,TCPREMOTEHOST="overridden",A="1",A="2"
::1:allow,WHO="v6"
2001:db8::1:deny
127.:allow,WHO=/p1/,RBLSMTPD=""
:deny
`
	rulesFile := filepath.Join(dir, "rules")
	if err := os.WriteFile(rulesFile, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	db := filepath.Join(dir, "rules.cdb")
	cmd := exec.Command(bin("cdbbuild"), db, db+".tmp")
	cmd.Stdin = strings.NewReader(src)
	if out, err := cmd.CombinedOutput(); err != nil || len(out) != 0 {
		t.Fatalf("cdbbuild: %v %q", err, out)
	}
	r, err := cdb.Open(db)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()

	// Every name any rule sets: a client must see exactly its rule's.
	parsed, err := rules.Parse(strings.NewReader(src), "rules")
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, rule := range parsed {
		for _, v := range rule.Env {
			names[v.Name] = true
		}
	}

	ts := startTcpserver(t, baseEnv(), []string{"-x", db, "-R", "-H"}, "/usr/bin/env")
	denied, allowed := 0, 0
	for _, ip := range []string{
		"127.0.0.1", "127.0.0.5", "127.0.0.6", "127.0.0.9", "127.0.0.20", "127.0.0.23",
		"127.0.0.25", "127.0.0.26", "127.0.1.1", "127.0.1.200", "127.0.2.1", "127.0.2.3",
		"127.0.2.4", "127.1.2.3", "127.255.255.254",
	} {
		d, err := rules.Lookup(r, rules.Query{IP: ip})
		if err != nil {
			t.Fatal(err)
		}
		out := dialFrom(t, ip, ts.Port, "")
		if d.Deny {
			denied++
			if out != "" {
				t.Errorf("%s: predicted deny by key %q, got output %q", ip, d.Key, out)
			}
			continue
		}
		allowed++
		env := envFrom(out)
		if env["TCPREMOTEIP"] != ip {
			t.Errorf("%s: predicted allow by key %q, got %q", ip, d.Key, out)
			continue
		}
		want := map[string]string{}
		for _, v := range d.Environ() {
			want[v.Name] = v.Value
		}
		for name := range names {
			got, ok := env[name]
			w, wok := want[name]
			if ok != wok || got != w {
				t.Errorf("%s (key %q): %s=%q (set %v), predicted %q (set %v)", ip, d.Key, name, got, ok, w, wok)
			}
		}
	}
	if denied == 0 || allowed == 0 {
		t.Errorf("denied %d, allowed %d: the test should see both", denied, allowed)
	}
}
