package t

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/poprelay/poprelay/internal/wait"
)

// TestSecurityLinkLocal: a link-local address (169.254.0.0/16,
// fe80::/10) is one host on each link, and a grant key has no zone: a
// grant for it would relay that address from every link of the SMTP
// host. None is ever granted: a login through the wrapper (root, a
// trusted caller) is not recorded, allow exits 100, import skips it, a
// grant already in the spool is refused at every rebuild, list shows it
// refused and check finds no record of it and says why; the CDB holds
// the static key and the one good grant alone.
func TestSecurityLinkLocal(t *testing.T) {
	s := newRelayctlSite(t, ":allow\n")
	s.relayctl(t, "rebuild")
	bad := []string{"169.254.7.9", "169.254.169.254", "fe80::1", "febf:ffff::5"}
	why := func(ip string) string { return "never granted: link-local address " + ip }
	exists := func(ip string) bool { _, err := os.Lstat(filepath.Join(s.spool, ip)); return err == nil }
	for _, ip := range bad {
		r := runCmd(t, append(s.env, "TCPREMOTEIP="+ip, "USER=mallory"), "", wait.Patience, bin("checkpassword-wrap"), "/bin/true")
		if r.code != 0 || !strings.Contains(r.stderr, "not recording ip="+ip+" user=mallory service=pop3: "+why(ip)) {
			t.Errorf("wrapper, TCPREMOTEIP=%s: exit %d, stderr %q", ip, r.code, r.stderr)
		}
		if r := s.run(t, "allow", ip, "--user", "mallory"); r.code != 100 || !strings.Contains(r.stderr, "unable to grant "+ip+": "+why(ip)) {
			t.Errorf("allow %s: exit %d, stderr %q", ip, r.code, r.stderr)
		}
		if exists(ip) {
			t.Errorf("%s was recorded", ip)
		}
	}
	// From vpopmail and relay-ctrl.
	open := filepath.Join(s.dir, "open-smtp")
	os.WriteFile(open, fmt.Appendf(nil, "169.254.7.9:allow,RELAYCLIENT=\"\",RBLSMTPD=\"\"\t%d\n", time.Now().Unix()), 0o644)
	rc := filepath.Join(s.dir, "relay-ctrl")
	os.Mkdir(rc, 0o755)
	os.WriteFile(filepath.Join(rc, "fe80::1"), nil, 0o644)
	for args, ip := range map[string]string{"--vpopmail " + open: "169.254.7.9", "--relay-ctrl " + rc: "fe80::1"} {
		a := append([]string{"import"}, strings.Fields(args)...)
		if r := s.run(t, a...); r.code != 0 || !strings.Contains(r.stderr, "warning: skipped "+ip+": "+why(ip)) {
			t.Errorf("import %s: exit %d, stderr %q", args, r.code, r.stderr)
		}
		if exists(ip) {
			t.Errorf("import recorded %s", ip)
		}
	}
	// Already in the spool (an older wrapper, a hand-made file).
	for _, ip := range bad {
		recordAt(t, s.spool, ip, "mallory")
	}
	recordAt(t, s.spool, "192.0.2.8", "alice")
	r := s.run(t, "rebuild")
	for _, ip := range bad {
		if want := `warning: refused grant for ` + ip + ` (user "mallory"): link-local address ` + ip; r.code != 0 || !strings.Contains(r.stderr, want) {
			t.Errorf("rebuild: exit %d, stderr %q; want %q", r.code, r.stderr, want)
		}
	}
	list := s.relayctl(t, "list")
	var js []struct{ IP, Status, Reason string }
	if err := json.Unmarshal([]byte(s.relayctl(t, "list", "--json")), &js); err != nil {
		t.Fatal(err)
	}
	status := map[string]string{}
	for _, g := range js {
		status[g.IP] = g.Status + ": " + g.Reason
	}
	for _, ip := range bad {
		if !strings.Contains(list, "refused: link-local address "+ip) {
			t.Errorf("list does not show %s refused:\n%s", ip, list)
		}
		if want := "refused: link-local address " + ip; status[ip] != want {
			t.Errorf("list --json: %s is %q; want %q", ip, status[ip], want)
		}
		if out := s.relayctl(t, "check", ip); !strings.Contains(out, `key: ""`) || strings.Contains(out, "RELAYCLIENT") ||
			!strings.Contains(out, `grant: for `+ip+` (user "mallory"): refused: link-local address `+ip+"\n") {
			t.Errorf("check %s:\n%s", ip, out)
		}
	}
	ks, err := keys(s.cdb)
	if err != nil {
		t.Fatal(err)
	}
	if len(ks) != 2 || !ks[""] || !ks["192.0.2.8"] {
		t.Errorf("the CDB has keys %v; want the static one and 192.0.2.8", ks)
	}
	// And so does the watcher.
	w := s.startWatch(t)
	recordAt(t, s.spool, "169.254.1.2", "eve")
	w.waitLine(t, `refused grant for 169.254.1.2 (user "eve"): link-local address 169.254.1.2`)
	if relays(t, s.cdb, "169.254.1.2") {
		t.Error("the watcher granted 169.254.1.2")
	}
}

// TestSecurityLinkLocalEtcd: link-local grants planted on a POP host
// reach etcd, and the SMTP host's mirror refuses them with a log line
// while it publishes the good grant beside them.
func TestSecurityLinkLocalEtcd(t *testing.T) {
	a, b, wb := etcdPair(t)
	recordAt(t, a.spool, "169.254.7.9", "mallory")
	recordAt(t, a.spool, "fe80::1", "mallory")
	recordAt(t, a.spool, "192.0.2.77", "alice")
	wb.waitLine(t, `refused grant for 169.254.7.9 (user "mallory"): link-local address 169.254.7.9`)
	wb.waitLine(t, `refused grant for fe80::1 (user "mallory"): link-local address fe80::1`)
	wait.For(t, "the grant published beside them to reach B's CDB", func() bool { return relays(t, b.cdb, "192.0.2.77") })
	ks, err := keys(b.cdb)
	if err != nil {
		t.Fatal(err)
	}
	if ks["169.254.7.9"] || ks["fe80::1"] || len(ks) != 2 {
		t.Errorf("B's CDB has keys %v; want the static one and 192.0.2.77", ks)
	}
}
