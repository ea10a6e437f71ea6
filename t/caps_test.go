package t

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/poprelay/poprelay/internal/etcdtest"
	"github.com/poprelay/poprelay/internal/grant"
	"github.com/poprelay/poprelay/internal/wait"
)

// Issue 26 item 2: the caps on the grants published (docs/SECURITY.md,
// guarantee 22).

// capLogins logs alice in through the real POP chain (tcpserver, popup,
// checkpw, checkpassword-wrap) from each of ips, in order.
func capLogins(t *testing.T, ts *Tcpserver, ips []string) {
	t.Helper()
	for _, ip := range ips {
		if env := wrLogin(t, ts, ip, "secret"); env["USER"] != "alice" {
			t.Fatalf("login from %s: the next program did not run: %v", ip, env)
		}
	}
}

// nextSecond waits until the clock has passed every login time in the
// spool (whole seconds): the logins after it are strictly newer.
func nextSecond(t *testing.T, spool string) {
	t.Helper()
	gs, err := grant.New(spool).List()
	if err != nil {
		t.Fatal(err)
	}
	var last int64
	for _, g := range gs {
		last = max(last, g.Time.Unix())
	}
	wait.For(t, "the clock to pass the last login's second", func() bool { return time.Now().Unix() > last })
}

// listJSON runs relayctl list --json in s with env.
func listJSON(t *testing.T, s *relayctlSite) map[string][2]string {
	t.Helper()
	var rows []struct{ IP, Status, Reason string }
	if err := json.Unmarshal([]byte(s.relayctl(t, "list", "--json")), &rows); err != nil {
		t.Fatal(err)
	}
	out := map[string][2]string{}
	for _, r := range rows {
		out[r.IP] = [2]string{r.Status, r.Reason}
	}
	return out
}

// relaying lists those of ips the real tcpserver gives RELAYCLIENT now.
func relaying(t *testing.T, ts *Tcpserver, ips []string) []string {
	t.Helper()
	var on []string
	for _, ip := range ips {
		if _, ok := envFrom(dialFrom(t, ip, ts.Port, ""))["RELAYCLIENT"]; ok {
			on = append(on, ip)
		}
	}
	return on
}

// TestCapPerUser: 50 logins of one user from 50 addresses through the
// real wrapper (which records each: it scans nothing at login) with a
// per-user cap of 5: only the 5 newest relay through a real tcpserver -x
// after relayctl rebuild; list and check show the others refused, over
// the cap; expire removes them from the spool. Then relayctl watch: each
// new login of the user, now at the cap, publishes it and takes the
// user's oldest out of the CDB.
func TestCapPerUser(t *testing.T) {
	s := newRelayctlSite(t, ":allow\n")
	s.env = append(s.env, "POPRELAY_MAXPERUSER=5")
	d := wrSetup(t)
	pop := d.serve(t, nil, bin("checkpassword-wrap"), "--spool", s.spool)
	var ips []string
	for i := range 50 {
		ips = append(ips, ip4(61, i))
	}
	capLogins(t, pop, ips[:45])
	nextSecond(t, s.spool)
	capLogins(t, pop, ips[45:])
	if gs, _ := spoolEntries(t, s.spool); len(gs) != 50 {
		t.Fatalf("the wrapper recorded %d grants of 50 logins", len(gs))
	}

	s.relayctl(t, "rebuild")
	smtp := startTcpserver(t, baseEnv(), []string{"-x", s.cdb, "-R", "-H"}, "/usr/bin/env")
	if on := relaying(t, smtp, ips); !slices.Equal(on, ips[45:]) {
		t.Fatalf("after rebuild with a cap of 5, %d addresses relay: %q; want the 5 newest %q", len(on), on, ips[45:])
	}
	list := listJSON(t, s)
	for i, ip := range ips {
		st := list[ip]
		if i < 45 && (st[0] != "refused" || !strings.Contains(st[1], "over the cap of 5 grants per user")) {
			t.Errorf("list: %s is %q, want refused over the per-user cap", ip, st)
		}
		if i >= 45 && st[0] != "relay" {
			t.Errorf("list: %s is %q, want relay", ip, st)
		}
	}
	if out := s.relayctl(t, "check", ips[0]); !strings.Contains(out, "refused: over the cap of 5 grants per user") {
		t.Errorf("check %s does not say it is over the cap:\n%s", ips[0], out)
	}
	if out := s.relayctl(t, "list"); !strings.Contains(out, "refused: over the cap of 5 grants per user") {
		t.Errorf("list does not say so:\n%s", out)
	}

	s.relayctl(t, "expire")
	gs, _ := spoolEntries(t, s.spool)
	var left []string
	for ip := range gs {
		left = append(left, ip)
	}
	slices.Sort(left)
	if want := slices.Sorted(slices.Values(ips[45:])); !slices.Equal(left, want) {
		t.Fatalf("after expire the spool holds %q; want the 5 newest %q", left, want)
	}
	if on := relaying(t, smtp, ips); !slices.Equal(on, ips[45:]) {
		t.Fatalf("after expire %q relay; want %q", on, ips[45:])
	}

	// The watcher's incremental merge: the user is at the cap; each new
	// login evicts the oldest.
	s.startWatch(t)
	live := slices.Clone(ips[45:])
	for k := range 3 {
		ip := ip4(61, 50+k)
		nextSecond(t, s.spool)
		capLogins(t, pop, []string{ip})
		relayClient(t, smtp, ip, true)
		// The newest 5: the new one, and the 4 newest before it (by
		// login time, then address).
		gs, err := grant.New(s.spool).List()
		if err != nil {
			t.Fatal(err)
		}
		slices.SortFunc(gs, func(a, b grant.Grant) int {
			if c := b.Time.Compare(a.Time); c != 0 {
				return c
			}
			return netip.MustParseAddr(a.IP).Compare(netip.MustParseAddr(b.IP))
		})
		var want []string
		for _, g := range gs[:5] {
			want = append(want, g.IP)
		}
		slices.Sort(want)
		live = append(live, ip)
		if on := relaying(t, smtp, live); !slices.Equal(slices.Sorted(slices.Values(on)), want) {
			t.Fatalf("the watcher after login %d from %s: %q relay; want the 5 newest %q", k, ip, on, want)
		}
	}
}

// TestCapTotal: with a total cap of 3, every rebuild over it (relayctl
// rebuild, allow, the watcher at each publish) warns, on stderr, in the
// watch log and in the metrics; the newest 3 relay through a real
// tcpserver -x, list shows the older refused. An admin's grant without
// a user comes first: a flood of newer logins leaves it relaying, and
// pushes out the users' older grants; expire removes none of those,
// and they relay again once the flood is gone.
func TestCapTotal(t *testing.T) {
	s := newRelayctlSite(t, ":allow\n")
	s.env = append(s.env, "POPRELAY_MAXGRANTS=3")
	now := time.Now()
	var ips []string
	for i := range 6 {
		ip := ip4(62, i)
		ips = append(ips, ip)
		// u0 the oldest, u5 the newest; each user one grant.
		if err := grant.New(s.spool).Record(grant.Grant{IP: ip, User: fmt.Sprintf("u%d", i), Service: "pop3", Time: now.Add(-time.Duration(10-i) * time.Minute)}); err != nil {
			t.Fatal(err)
		}
	}
	const warning = "OVER THE CAP of 3 grants in total"
	r := s.run(t, "rebuild")
	if r.code != 0 || !strings.Contains(r.stderr, "relayctl: warning: "+warning) || !strings.Contains(r.stderr, "3 grants refused") {
		t.Fatalf("rebuild over the total cap: exit %d, stderr %q; want a warning", r.code, r.stderr)
	}
	smtp := startTcpserver(t, baseEnv(), []string{"-x", s.cdb, "-R", "-H"}, "/usr/bin/env")
	if on := relaying(t, smtp, ips); !slices.Equal(on, ips[3:]) {
		t.Fatalf("over the total cap of 3, %q relay; want the newest %q", on, ips[3:])
	}
	list := listJSON(t, s)
	for _, ip := range ips[:3] {
		if st := list[ip]; st[0] != "refused" || !strings.Contains(st[1], "over the cap of 3 grants in total") {
			t.Errorf("list: %s is %q, want refused over the total cap", ip, st)
		}
	}

	// allow's rebuild warns too, and its grant, the newest, relays.
	r = s.run(t, "allow", ip4(62, 6), "--user", "admin")
	if r.code != 0 || !strings.Contains(r.stderr, warning) {
		t.Errorf("allow over the total cap: exit %d, stderr %q; want the warning", r.code, r.stderr)
	}
	ips = append(ips, ip4(62, 6))
	if on := relaying(t, smtp, ips); !slices.Equal(on, ips[4:]) {
		t.Fatalf("after allow, %q relay; want %q", on, ips[4:])
	}

	// The watcher warns at every publish while over, and says so in
	// its metrics.
	s.env = append(s.env, "POPRELAY_METRICS=127.0.0.1:0")
	w := s.startWatch(t)
	w.waitLine(t, warning)
	addr := strings.TrimSpace(strings.TrimPrefix(strings.TrimSuffix(w.waitLine(t, "metrics on http://"), "/metrics\n"), "relayctl: metrics on http://"))
	mark := w.mark()
	recordAt(t, s.spool, ip4(62, 7), "u7")
	ips = append(ips, ip4(62, 7))
	w.waitLineAfter(t, mark, "warning: "+warning+" (--max-grants, POPRELAY_MAXGRANTS): 5 grants refused")
	if on := relaying(t, smtp, ips); !slices.Equal(on, ips[5:]) {
		t.Fatalf("the watcher over the total cap: %q relay; want %q", on, ips[5:])
	}
	wait.Succeeds(t, "the metrics to show the grants over the total cap", func() error {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if !strings.Contains(string(b), `poprelay_grants_capped{cap="total"} 5`) {
			return fmt.Errorf("no poprelay_grants_capped{cap=\"total\"} 5 in the metrics")
		}
		return nil
	})

	// An admin's grant without a user (allow --for 720h) comes before
	// the users' for the total cap: a flood of newer logins does not
	// push it out.
	admin := ip4(62, 20)
	if r := s.run(t, "allow", admin, "--for", "720h"); r.code != 0 || !strings.Contains(r.stderr, warning) {
		t.Fatalf("allow %s over the total cap: exit %d, stderr %q; want the warning", admin, r.code, r.stderr)
	}
	nextSecond(t, s.spool)
	mark = w.mark()
	flood := []string{ip4(62, 8), ip4(62, 9), ip4(62, 10)}
	for i, ip := range flood {
		recordAt(t, s.spool, ip, fmt.Sprintf("u%d", 8+i))
	}
	all := append(slices.Clone(ips), admin)
	all = append(all, flood...)
	want := []string{admin, flood[0], flood[1]}
	w.waitLineAfter(t, mark, "warning: "+warning+" (--max-grants, POPRELAY_MAXGRANTS): 9 grants refused")
	wait.Succeeds(t, "the flood and the admin's grant to relay", func() error {
		if on := relaying(t, smtp, all); !slices.Equal(on, want) {
			return fmt.Errorf("during the flood %q relay; want the admin's %s and the two newest logins %q", on, admin, want)
		}
		return nil
	})

	// cron's expire with the cap removes none of the refused: they are
	// refused while the total is over it, not for good.
	if r := s.run(t, "-v", "expire"); r.code != 0 || strings.Contains(r.stderr, "removed") {
		t.Errorf("expire over the total cap: exit %d, stderr %q; want nothing removed", r.code, r.stderr)
	}
	if gs, _ := spoolEntries(t, s.spool); len(gs) != len(all) {
		t.Errorf("after expire the spool holds %d grants, want all %d", len(gs), len(all))
	}

	// The surge gone (the flood revoked), the grants it pushed out
	// relay again, with the admin's.
	for _, ip := range flood {
		if r := s.run(t, "revoke", ip); r.code != 0 {
			t.Fatalf("revoke %s: exit %d, stderr %q", ip, r.code, r.stderr)
		}
	}
	want = []string{ips[6], ips[7], admin}
	wait.Succeeds(t, "the grants the flood pushed out to relay again", func() error {
		if on := relaying(t, smtp, all); !slices.Equal(on, want) {
			return fmt.Errorf("after the flood %q relay; want %q", on, want)
		}
		return nil
	})
	s.relayctl(t, "expire")
	if on := relaying(t, smtp, all); !slices.Equal(on, want) {
		t.Fatalf("after the flood and expire, %q relay; want %q", on, want)
	}
}

// TestCapEtcdMirror: the SMTP host's watcher fed from etcd (--source
// etcd) applies its own per-user cap to the grants of every POP host:
// six logins of one user on a POP host without a cap, three of them
// newer, and only the three newest relay on the SMTP host.
func TestCapEtcdMirror(t *testing.T) {
	e := etcdtest.Start(t)
	a := newRelayctlSite(t, ":allow\n")
	b := newRelayctlSite(t, ":allow\n")
	a.env = append(a.env, "POPRELAY_ETCD_ENDPOINTS="+e.Client, "POPRELAY_MAXPERUSER=0")
	b.env = append(b.env, "POPRELAY_ETCD_ENDPOINTS="+e.Client, "POPRELAY_MAXPERUSER=3")
	a.startWatch(t, "--publish", "etcd")
	b.startWatch(t, "--source", "etcd")
	smtp := startTcpserver(t, baseEnv(), []string{"-x", b.cdb, "-R", "-H"}, "/usr/bin/env")
	var ips []string
	for i := range 6 {
		ips = append(ips, ip4(63, i))
	}
	for _, ip := range ips[:3] {
		wrapLogin(t, a, ip, "mallory")
	}
	for _, ip := range ips[:3] {
		relayClient(t, smtp, ip, true)
	}
	nextSecond(t, a.spool)
	for _, ip := range ips[3:] {
		wrapLogin(t, a, ip, "mallory")
	}
	for _, ip := range ips[3:] {
		relayClient(t, smtp, ip, true)
	}
	// The CDB that has the last of the newest has every one of the six.
	if on := relaying(t, smtp, ips); !slices.Equal(on, ips[3:]) {
		t.Fatalf("on the SMTP host %q relay; want the 3 newest %q", on, ips[3:])
	}
	// The POP host, without a cap, publishes all six itself.
	wait.For(t, "the POP host without a cap to publish all six", func() bool {
		for _, ip := range ips {
			if !relays(t, a.cdb, ip) {
				return false
			}
		}
		return true
	})
}
