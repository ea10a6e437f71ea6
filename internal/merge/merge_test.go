package merge

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/poprelay/poprelay/internal/cdb"
	"github.com/poprelay/poprelay/internal/cdbtest"
	"github.com/poprelay/poprelay/internal/grant"
	"github.com/poprelay/poprelay/internal/never"
	"github.com/poprelay/poprelay/internal/rules"
)

var now = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

// refuser refuses listed addresses and prefixes, as never.Set does.
type refuser []string

func (r refuser) Refuse(ip string) (string, bool) {
	for _, e := range r {
		if ip == e || strings.HasSuffix(e, ".") && strings.HasPrefix(ip, e) {
			return "listed as " + e, true
		}
	}
	return "", false
}

func build(t testing.TB, static string, gs []grant.Grant, opt Options) ([]byte, Summary) {
	t.Helper()
	rs, err := rules.Parse(strings.NewReader(static), "tcp.smtp")
	if err != nil {
		t.Fatal(err)
	}
	var f cdbtest.File
	w := cdb.NewWriter(&f)
	sum, err := Write(w, rs, gs, opt)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Finish(); err != nil {
		t.Fatal(err)
	}
	return f.Bytes(), sum
}

func g(ip, user string) grant.Grant {
	return grant.Grant{IP: ip, User: user, Service: "pop3", Time: now.Add(-time.Minute)}
}

// decide renders tcpserver's decision for ip: "deny KEY", "allow KEY
// NAME=VALUE ...", or "allow (none)".
func decide(t testing.TB, db []byte, ip string) string {
	t.Helper()
	r, err := cdb.Bytes(db)
	if err != nil {
		t.Fatal(err)
	}
	d, err := rules.Lookup(r, rules.Query{IP: ip})
	if err != nil {
		t.Fatal(err)
	}
	if !d.Matched {
		return "allow (none)"
	}
	if d.Deny {
		return fmt.Sprintf("deny %q", d.Key)
	}
	s := fmt.Sprintf("allow %q", d.Key)
	for _, v := range d.Environ() {
		s += " " + v.Name + "=" + v.Value
	}
	return s
}

func TestMerge(t *testing.T) {
	opt := Options{Now: now, MaxAge: time.Hour}
	mapped := func(o *Options) { o.Mapped = true }
	for _, tc := range []struct {
		name   string
		static string
		grants []grant.Grant
		opt    func(*Options)
		want   map[string]string // text tcpserver looks up → decision
	}{{
		name:   "prefix rule with env, grant inside it",
		static: "10.1.:allow,QMAILQUEUE=\"/var/qmail/bin/qq\",DATABYTES=\"100\"\n:allow\n",
		grants: []grant.Grant{g("10.1.2.3", "alice")},
		want: map[string]string{
			"10.1.2.3":        `allow "10.1.2.3" DATABYTES=100 QMAILQUEUE=/var/qmail/bin/qq RBLSMTPD= RELAYCLIENT=`,
			"10.1.2.4":        `allow "10.1." DATABYTES=100 QMAILQUEUE=/var/qmail/bin/qq`,
			"::ffff:10.1.2.3": `allow ""`, // no twin by default
		},
	}, {
		name:   "with Mapped, the ::ffff: key from its own rule",
		static: "10.1.:allow,QMAILQUEUE=\"/var/qmail/bin/qq\"\n:allow\n",
		grants: []grant.Grant{g("10.1.2.3", "alice")},
		opt:    mapped,
		want: map[string]string{
			"10.1.2.3":        `allow "10.1.2.3" QMAILQUEUE=/var/qmail/bin/qq RBLSMTPD= RELAYCLIENT=`,
			"::ffff:10.1.2.3": `allow "::ffff:10.1.2.3" RBLSMTPD= RELAYCLIENT=`,
			"::ffff:10.1.2.4": `allow ""`,
		},
	}, {
		name:   "v4 rules written for the ::ffff: form too",
		static: "::ffff:10.1.:allow,QMAILQUEUE=\"/q6\"\n10.1.:allow,QMAILQUEUE=\"/q4\"\n",
		grants: []grant.Grant{g("10.1.2.3", "alice")},
		opt:    mapped,
		want: map[string]string{
			"10.1.2.3":        `allow "10.1.2.3" QMAILQUEUE=/q4 RBLSMTPD= RELAYCLIENT=`,
			"::ffff:10.1.2.3": `allow "::ffff:10.1.2.3" QMAILQUEUE=/q6 RBLSMTPD= RELAYCLIENT=`,
		},
	}, {
		name:   "exact static deny and a grant: the deny stays, on both keys",
		static: "10.1.2.3:deny\n10.1.:allow,X=\"1\"\n",
		grants: []grant.Grant{g("10.1.2.3", "mallory"), g("10.1.2.4", "bob")},
		opt:    mapped,
		want: map[string]string{
			"10.1.2.3":        `deny "10.1.2.3"`,
			"::ffff:10.1.2.3": `allow (none)`,
			"10.1.2.4":        `allow "10.1.2.4" RBLSMTPD= RELAYCLIENT= X=1`,
			"::ffff:10.1.2.4": `allow "::ffff:10.1.2.4" RBLSMTPD= RELAYCLIENT=`,
		},
	}, {
		name:   "exact static allow wins as it is",
		static: "10.1.2.3:allow,RELAYCLIENT=\"@static\"\n",
		grants: []grant.Grant{g("10.1.2.3", "alice")},
		opt:    mapped,
		want: map[string]string{
			"10.1.2.3":        `allow "10.1.2.3" RELAYCLIENT=@static`,
			"::ffff:10.1.2.3": `allow (none)`,
		},
	}, {
		name:   "prefix deny: no relay on either key",
		static: "10.1.:deny\n:allow\n",
		grants: []grant.Grant{g("10.1.2.3", "mallory")},
		opt:    mapped,
		want: map[string]string{
			"10.1.2.3":        `deny "10.1."`,
			"::ffff:10.1.2.3": `allow ""`,
		},
	}, {
		name:   "range deny stays a deny",
		static: "10.1.2.1-9:deny\n:deny\n",
		grants: []grant.Grant{g("10.1.2.3", "mallory"), g("10.1.2.10", "bob")},
		want: map[string]string{
			"10.1.2.3":  `deny "10.1.2.3"`,
			"10.1.2.10": `allow "10.1.2.10" RBLSMTPD= RELAYCLIENT=`,
		},
	}, {
		// Issue 17.3: a submission host lists its networks and denies
		// the rest; a roaming user who logged in relays.
		name:   "catch-all deny: the grant overrides it",
		static: "127.0.0.1:allow,RELAYCLIENT=\"\"\n10.:allow,RELAYCLIENT=\"\"\n:deny\n",
		grants: []grant.Grant{g("192.0.2.7", "alice"), g("2001:db8::7", "bob")},
		want: map[string]string{
			"192.0.2.7":   `allow "192.0.2.7" RBLSMTPD= RELAYCLIENT=`,
			"2001:db8::7": `allow "2001:db8::7" RBLSMTPD= RELAYCLIENT=`,
			"192.0.2.8":   `deny ""`,
			"2001:db8::8": `deny ""`,
			"127.0.0.1":   `allow "127.0.0.1" RELAYCLIENT=`,
		},
	}, {
		name:   "catch-all deny's settings are not copied; --keep-rbl",
		static: ":deny,QMAILQUEUE=\"/bin/false\"\n",
		grants: []grant.Grant{g("192.0.2.7", "alice")},
		opt:    func(o *Options) { o.KeepRBL = true },
		want: map[string]string{
			"192.0.2.7": `allow "192.0.2.7" RELAYCLIENT=`,
		},
	}, {
		name:   "catch-all deny with Mapped: both keys relay",
		static: ":deny\n",
		grants: []grant.Grant{g("192.0.2.7", "alice")},
		opt:    mapped,
		want: map[string]string{
			"192.0.2.7":        `allow "192.0.2.7" RBLSMTPD= RELAYCLIENT=`,
			"::ffff:192.0.2.7": `allow "::ffff:192.0.2.7" RBLSMTPD= RELAYCLIENT=`,
		},
	}, {
		name:   "catch-all deny, v4 prefix allow: its settings on the own key",
		static: "10.1.:allow,QMAILQUEUE=\"/q\"\n:deny\n",
		grants: []grant.Grant{g("10.1.2.3", "alice")},
		opt:    mapped,
		want: map[string]string{
			"10.1.2.3":        `allow "10.1.2.3" QMAILQUEUE=/q RBLSMTPD= RELAYCLIENT=`,
			"::ffff:10.1.2.3": `allow "::ffff:10.1.2.3" RBLSMTPD= RELAYCLIENT=`,
		},
	}, {
		name:   "catch-all deny, explicit prefix deny: the prefix deny stays",
		static: "10.9.:deny\n:deny\n",
		grants: []grant.Grant{g("10.9.2.3", "mallory"), g("10.8.2.3", "alice")},
		want: map[string]string{
			"10.9.2.3": `deny "10.9."`,
			"10.8.2.3": `allow "10.8.2.3" RBLSMTPD= RELAYCLIENT=`,
		},
	}, {
		name:   "a deny written for the ::ffff: form denies both keys",
		static: "::ffff:10.1.:deny\n10.1.:allow\n",
		grants: []grant.Grant{g("10.1.2.3", "alice")},
		opt:    mapped,
		want: map[string]string{
			"10.1.2.3":        `allow "10.1."`,
			"::ffff:10.1.2.3": `deny "::ffff:10.1."`,
		},
	}, {
		name:   "a deny written for the ::ffff: form alone does nothing without Mapped",
		static: "::ffff:10.1.:deny\n10.1.:allow\n",
		grants: []grant.Grant{g("10.1.2.3", "alice")},
		want: map[string]string{
			"10.1.2.3":        `allow "10.1.2.3" RBLSMTPD= RELAYCLIENT=`,
			"::ffff:10.1.2.3": `deny "::ffff:10.1."`,
		},
	}, {
		name:   "grant outside all rules, no default",
		static: "10.9.:allow,X=\"1\"\n",
		grants: []grant.Grant{g("192.0.2.7", "alice")},
		want: map[string]string{
			"192.0.2.7": `allow "192.0.2.7" RBLSMTPD= RELAYCLIENT=`,
			"192.0.2.8": `allow (none)`,
		},
	}, {
		name:   "no static rules at all",
		static: "",
		grants: []grant.Grant{g("192.0.2.7", "alice")},
		want: map[string]string{
			"192.0.2.7": `allow "192.0.2.7" RBLSMTPD= RELAYCLIENT=`,
		},
	}, {
		name:   "IPv6 grant under an IPv6 prefix",
		static: "2001:db8:1:allow,Q=\"nomatch\"\n2001:db8:1::allow,QMAILQUEUE=\"/q\"\n:allow,DATABYTES=\"5\"\n",
		grants: []grant.Grant{g("2001:db8:1::5", "carol")},
		want: map[string]string{
			"2001:db8:1::5": `allow "2001:db8:1::5" QMAILQUEUE=/q RBLSMTPD= RELAYCLIENT=`,
			"2001:db8:1::6": `allow "2001:db8:1:" QMAILQUEUE=/q`,
		},
	}, {
		// Issue 16.3: keyed as tcpserver spells the client, which
		// compresses a lone zero group.
		name:   "IPv6 keys are tcpserver's text",
		static: ":allow\n",
		grants: []grant.Grant{g("2001:db8:0:1:1:1:1:1", "dave"), g("2001:0:0:1::1", "erin"), g("2001:db8:5::1:0:0", "fred")},
		want: map[string]string{
			"2001:db8::1:1:1:1:1":  `allow "2001:db8::1:1:1:1:1" RBLSMTPD= RELAYCLIENT=`,
			"2001:db8:0:1:1:1:1:1": `allow ""`,
			"2001:0:0:1::1":        `allow "2001:0:0:1::1" RBLSMTPD= RELAYCLIENT=`,
			"2001::1:0:0:0:1":      `allow ""`,
			"2001:db8:5::1:0:0":    `allow "2001:db8:5::1:0:0" RBLSMTPD= RELAYCLIENT=`,
		},
	}, {
		name:   "IPv6: a static record or prefix in tcpserver's text decides",
		static: "2001:db8::1:1:1:1:1:deny\n2001:db8::2::allow,Q=\"p\"\n",
		grants: []grant.Grant{g("2001:db8:0:1:1:1:1:1", "dave"), g("2001:db8:0:2:1:1:1:1", "erin")},
		want: map[string]string{
			"2001:db8::1:1:1:1:1": `deny "2001:db8::1:1:1:1:1"`,
			"2001:db8::2:1:1:1:1": `allow "2001:db8::2:1:1:1:1" Q=p RBLSMTPD= RELAYCLIENT=`,
		},
	}, {
		// Issue 16.2: the key of 2001:db8:aaaa:: ends in ':', and
		// tcpserver would match it as a prefix of its neighbours.
		name:   "a grant whose key ends in ':' is refused",
		static: ":allow\n",
		grants: []grant.Grant{g("2001:db8:aaaa::", "mallory"), g("1:2:3:4:5:6:7:0", "x"), g("1:0:3:4:5:6:7:0", "ok")},
		want: map[string]string{
			"2001:db8:aaaa::":  `allow ""`,
			"2001:db8:aaaa::5": `allow ""`,
			"1:2:3:4:5:6:7::":  `allow ""`,
			"1::3:4:5:6:7:0":   `allow "1::3:4:5:6:7:0" RBLSMTPD= RELAYCLIENT=`,
		},
	}, {
		name:   "existing RELAYCLIENT value kept",
		static: "10.:allow,RELAYCLIENT=\"@example.com\"\n",
		grants: []grant.Grant{g("10.1.2.3", "alice")},
		want: map[string]string{
			"10.1.2.3": `allow "10.1.2.3" RBLSMTPD= RELAYCLIENT=@example.com`,
		},
	}, {
		name:   "RBLSMTPD set by the static rule is kept",
		static: "10.:allow,RBLSMTPD=\"-go away\"\n",
		grants: []grant.Grant{g("10.1.2.3", "alice")},
		want: map[string]string{
			"10.1.2.3": `allow "10.1.2.3" RBLSMTPD=-go away RELAYCLIENT=`,
		},
	}, {
		name:   "--keep-rbl: no RBLSMTPD added",
		static: "10.:allow,X=\"1\"\n",
		grants: []grant.Grant{g("10.1.2.3", "alice")},
		opt:    func(o *Options) { o.KeepRBL = true },
		want: map[string]string{
			"10.1.2.3": `allow "10.1.2.3" RELAYCLIENT= X=1`,
		},
	}, {
		name:   "--remoteinfo: TCPREMOTEINFO is the user",
		static: "10.:allow,TCPREMOTEINFO=\"static\"\n",
		grants: []grant.Grant{g("10.1.2.3", "alice@example.com"), g("10.1.2.4", "a\x00+RELAYCLIENT=x")},
		opt:    func(o *Options) { o.RemoteInfo = true },
		want: map[string]string{
			"10.1.2.3": `allow "10.1.2.3" RBLSMTPD= RELAYCLIENT= TCPREMOTEINFO=alice@example.com`,
			"10.1.2.4": `allow "10.1.2.4" RBLSMTPD= RELAYCLIENT= TCPREMOTEINFO=a+RELAYCLIENT=x`,
		},
	}, {
		name:   "never list and loopback grants left out",
		static: ":allow\n",
		grants: []grant.Grant{g("127.0.0.1", "root"), g("10.0.0.1", "proxy"), g("10.0.1.9", "bob"), g("192.0.2.1", "alice")},
		opt:    func(o *Options) { o.Never = refuser{"127.0.0.1", "10.0.0.", "::1"} },
		want: map[string]string{
			"127.0.0.1": `allow ""`,
			"10.0.0.1":  `allow ""`,
			"10.0.1.9":  `allow "10.0.1.9" RBLSMTPD= RELAYCLIENT=`,
			"192.0.2.1": `allow "192.0.2.1" RBLSMTPD= RELAYCLIENT=`,
		},
	}, {
		name:   "expired grants left out, own expiry honoured",
		static: "",
		grants: []grant.Grant{
			{IP: "192.0.2.1", Time: now.Add(-time.Hour)},
			{IP: "192.0.2.2", Time: now.Add(-time.Hour + time.Second)},
			{IP: "192.0.2.3", Time: now.Add(-time.Minute), Expires: now},
			{IP: "192.0.2.4", Time: now.Add(-3 * time.Hour), Expires: now.Add(time.Second)},
		},
		want: map[string]string{
			"192.0.2.1": `allow (none)`,
			"192.0.2.2": `allow "192.0.2.2" RBLSMTPD= RELAYCLIENT=`,
			"192.0.2.3": `allow (none)`,
			"192.0.2.4": `allow "192.0.2.4" RBLSMTPD= RELAYCLIENT=`,
		},
	}, {
		name:   "non-canonical grant addresses are refused",
		static: ":allow\n",
		grants: []grant.Grant{g("010.1.2.3", "x"), g("::FFFF:1.2.3.4", "x"), g("2001:DB8::1", "x"), g("", "x"), g("fe80::1%eth0", "x"), g("2001:db8::1:1:1:1:1", "x")},
		want: map[string]string{
			"010.1.2.3":           `allow ""`,
			"::FFFF:1.2.3.4":      `allow ""`,
			"2001:DB8::1":         `allow ""`,
			"fe80::1%eth0":        `allow ""`,
			"2001:db8::1:1:1:1:1": `allow ""`,
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			o := opt
			var logs []string
			o.Logf = func(f string, a ...any) { logs = append(logs, fmt.Sprintf(f, a...)) }
			if tc.opt != nil {
				tc.opt(&o)
			}
			db, _ := build(t, tc.static, tc.grants, o)
			for ip, want := range tc.want {
				if got := decide(t, db, ip); got != want {
					t.Errorf("%s: got  %s\nwant %s", ip, got, want)
				}
			}
			for _, l := range logs {
				t.Log("log: " + l)
			}
		})
	}
}

// TestClassify checks that list's view of a grant agrees with what Write
// does.
func TestClassify(t *testing.T) {
	rs, err := rules.Parse(strings.NewReader("10.1.2.3:deny\n10.2.:deny\n10.3.:allow,A=\"1\"\n:deny\n"), "f")
	if err != nil {
		t.Fatal(err)
	}
	ix := rules.NewIndex(rs)
	opt := Options{Now: now, MaxAge: time.Hour, Never: refuser{"127.0.0.1"}}
	for _, tc := range []struct {
		g      grant.Grant
		mapped bool
		want   string
	}{
		{g("10.1.2.3", "a"), true, "live=false static:10.1.2.3@1 static:::ffff:10.1.2.3@1"},
		{g("10.2.0.1", "a"), true, "live=false denied:10.2.0.1@2 denied:::ffff:10.2.0.1@2"},
		{g("10.3.0.1", "a"), true, "live=true relay:10.3.0.1@3 relay(override):::ffff:10.3.0.1@4"},
		{g("10.3.0.1", "a"), false, "live=true relay:10.3.0.1@3"},
		{g("192.0.2.1", "a"), false, "live=true relay(override):192.0.2.1@4"},
		{g("2001:db8:0:1:1:1:1:1", "a"), false, "live=true relay(override):2001:db8::1:1:1:1:1@4"},
		{g("2001:db8:aaaa::", "a"), false, `refused would open a range: its key "2001:db8:aaaa::" ends in ":", which tcpserver also matches as a prefix of other addresses`},
		{g("127.0.0.1", "a"), false, "refused listed as 127.0.0.1"},
		{grant.Grant{IP: "10.3.0.1", Time: now.Add(-2 * time.Hour)}, false, "expired"},
	} {
		opt.Mapped = tc.mapped
		e, err := Classify(ix, tc.g, opt)
		if err != nil {
			t.Fatal(err)
		}
		var got string
		switch {
		case e.Expired:
			got = "expired"
		case e.Refused != "":
			got = "refused " + e.Refused
		default:
			got = fmt.Sprintf("live=%v", e.Live())
			for _, k := range e.Keys {
				line := 0
				if k.Rule != nil {
					line = k.Rule.Line
				}
				st := k.Status.String()
				if k.Override {
					st += "(override)"
				}
				got += fmt.Sprintf(" %s:%s@%d", st, k.Key, line)
			}
		}
		if got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.g.IP, got, tc.want)
		}
	}
}

func TestSummaryAndLogs(t *testing.T) {
	var logs []string
	logf := func(f string, a ...any) { logs = append(logs, fmt.Sprintf(f, a...)) }
	opt := Options{Now: now, MaxAge: time.Hour, Never: refuser{"127.0.0.1"}, Logf: logf, Verbosef: logf, Mapped: true}
	_, sum := build(t, "10.1.2.3:deny\n10.2.:deny\n:deny\n", []grant.Grant{
		g("10.1.2.3", "a"), g("10.2.0.1", "b"), g("127.0.0.1", "c"), g("192.0.2.1", "d"),
		g("2001:db8::1", "e"), {IP: "192.0.2.9", Time: now.Add(-2 * time.Hour)},
		g("2001:db8::", "f"),
	}, opt)
	want := Summary{Static: 3, Grants: 7, Relayed: 2, Records: 3, Expired: 1, Refused: 2, Denied: 2, Shadow: 2, Override: 3}
	if sum != want {
		t.Errorf("summary %+v, want %+v", sum, want)
	}
	wantLogs := []string{
		`no relay for 10.2.0.1 (user "b"): rule "10.2." (line 2) denies it`,
		`no relay for ::ffff:10.2.0.1 (user "b"): rule "10.2." (line 2) denies it`,
		`refused grant for 127.0.0.1 (user "c"): listed as 127.0.0.1`,
		`refused grant for 2001:db8:: (user "f"): would open a range: its key "2001:db8::" ends in ":", which tcpserver also matches as a prefix of other addresses`,
	}
	if !slices.Equal(logs, wantLogs) {
		t.Errorf("logs:\n%s\nwant:\n%s", strings.Join(logs, "\n"), strings.Join(wantLogs, "\n"))
	}
}

// TestRecordOrder checks the layout: static records in file order, then
// grant records sorted by key, one per key.
func TestRecordOrder(t *testing.T) {
	db, _ := build(t, "b:allow\na:allow\n", []grant.Grant{
		g("192.0.2.10", "x"), g("10.0.0.2", "y"), g("2001:db8::1", "z"), g("2001:db8:0:1:1:1:1:1", "w"),
		{IP: "10.0.0.2", User: "newer", Time: now.Add(-time.Second)},
	}, Options{Now: now, MaxAge: time.Hour, RemoteInfo: true, Mapped: true})
	r, _ := cdb.Bytes(db)
	var got []string
	r.ForEach(func(k, v []byte) error {
		_, env := rules.DecodeValue(v)
		s := string(k)
		for _, e := range env {
			if e.Name == "TCPREMOTEINFO" {
				s += "=" + e.Value
			}
		}
		got = append(got, s)
		return nil
	})
	want := []string{"b", "a", "10.0.0.2=newer", "192.0.2.10=x", "2001:db8::1=z", "2001:db8::1:1:1:1:1=w", "::ffff:10.0.0.2=newer", "::ffff:192.0.2.10=x"}
	if !slices.Equal(got, want) {
		t.Errorf("records %q\nwant    %q", got, want)
	}
}

func TestDeterministic(t *testing.T) {
	static := "10.1.:allow,Q=\"1\"\n10.2.0.5:deny\n:allow\n"
	var gs []grant.Grant
	for i := range 500 {
		gs = append(gs, grant.Grant{IP: fmt.Sprintf("10.%d.%d.%d", i%3, i/256, i%256), User: fmt.Sprint("u", i), Time: now.Add(-time.Duration(i) * time.Second)})
	}
	a, _ := build(t, static, gs, Options{Now: now, MaxAge: time.Hour})
	slices.Reverse(gs)
	b, _ := build(t, static, gs, Options{Now: now, MaxAge: time.Hour})
	if !bytes.Equal(a, b) {
		t.Fatal("same grants in another order gave other bytes")
	}
	c, _ := build(t, static, gs, Options{Now: now, MaxAge: time.Hour})
	if !bytes.Equal(b, c) {
		t.Fatal("same input gave other bytes")
	}
}

type failWriter struct{ cdbtest.File }

func (f *failWriter) Write(p []byte) (int, error) { return 0, errors.New("disk full") }

func TestWriteError(t *testing.T) {
	var gs []grant.Grant
	for i := range 20000 {
		gs = append(gs, g(fmt.Sprintf("10.0.%d.%d", i/256, i%256), "u"))
	}
	w := cdb.NewWriter(&failWriter{})
	_, err := Write(w, nil, gs, Options{Now: now, MaxAge: time.Hour})
	if err == nil {
		err = w.Finish()
	}
	if err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("err %v", err)
	}
}

func TestKeyForms(t *testing.T) {
	for _, tc := range []struct {
		ip     string
		mapped bool
		want   []string
	}{
		{"1.2.3.4", false, []string{"1.2.3.4"}},
		{"1.2.3.4", true, []string{"1.2.3.4", "::ffff:1.2.3.4"}},
		{"2001:db8::1", true, []string{"2001:db8::1"}},
		{"2001:db8:0:1:1:1:1:1", false, []string{"2001:db8::1:1:1:1:1"}},
		{"2001:db8::1:1:1:1:1", false, nil}, // not the spool's canonical form
		{"::ffff:1.2.3.4", true, nil},
	} {
		got := KeyForms(tc.ip, tc.mapped)
		if !slices.Equal(got, tc.want) {
			t.Errorf("KeyForms(%s, %v) = %q, want %q", tc.ip, tc.mapped, got, tc.want)
		}
		for _, k := range got {
			if ip, ok := GrantIP(k); !ok || ip != tc.ip {
				t.Errorf("GrantIP(%q) = %q, %v; want %q", k, ip, ok, tc.ip)
			}
		}
	}
	for _, k := range []string{"2001:db8:0:1:1:1:1:1", "2001:DB8::1", "1.2.3.", "::ffff:1:2", "10.0.0.01", "fe80::1%lo", ""} {
		if ip, ok := GrantIP(k); ok {
			t.Errorf("GrantIP(%q) = %q, a grant's key", k, ip)
		}
	}
}

// TestNeverSet uses the real never-grant set: built-in loopback, and a
// never-grant file with a proxy's address and a prefix.
func TestNeverSet(t *testing.T) {
	set := never.Default()
	if err := set.Parse(strings.NewReader("192.0.2.10\n10.9.\n"), "never"); err != nil {
		t.Fatal(err)
	}
	var logs []string
	opt := Options{Now: now, MaxAge: time.Hour, Never: set,
		Logf: func(f string, a ...any) { logs = append(logs, fmt.Sprintf(f, a...)) }}
	db, sum := build(t, ":allow\n", []grant.Grant{
		g("127.0.0.1", "root"), g("::1", "root"), g("192.0.2.10", "proxy"), g("10.9.8.7", "x"), g("127.0.0.2", "ok"),
	}, opt)
	if sum.Refused != 4 || sum.Relayed != 1 {
		t.Errorf("summary %+v", sum)
	}
	for _, ip := range []string{"127.0.0.1", "::ffff:127.0.0.1", "::1", "192.0.2.10", "10.9.8.7"} {
		if got := decide(t, db, ip); got != `allow ""` {
			t.Errorf("%s: %s", ip, got)
		}
	}
	if got := decide(t, db, "127.0.0.2"); got != `allow "127.0.0.2" RBLSMTPD= RELAYCLIENT=` {
		t.Errorf("127.0.0.2: %s", got)
	}
	if len(logs) != 4 {
		t.Errorf("logs: %q", logs)
	}
}

// TestHostRules: tcpserver tries the exact address before =host and
// =.domain, so a grant record overrides a host-name deny (issue 16.6);
// HostRules lists the rules so overridden, not info@=host ones.
func TestHostRules(t *testing.T) {
	static := "=.dialup.example.net:deny\n=mx.example.net:allow,QMAILQUEUE=\"/q\"\njoe@=x.example.net:deny\n:allow\n"
	db, _ := build(t, static, []grant.Grant{g("192.0.2.7", "alice")}, Options{Now: now, MaxAge: time.Hour})
	r, _ := cdb.Bytes(db)
	for _, tc := range []struct {
		q    rules.Query
		want string
	}{
		{rules.Query{IP: "192.0.2.7", Host: "a.dialup.example.net", HasHost: true}, "192.0.2.7"},
		{rules.Query{IP: "192.0.2.8", Host: "a.dialup.example.net", HasHost: true}, "=.dialup.example.net"},
		{rules.Query{IP: "192.0.2.7", Host: "mx.example.net", HasHost: true}, "192.0.2.7"},
		{rules.Query{IP: "192.0.2.7", Host: "x.example.net", HasHost: true, Info: "joe", HasInfo: true}, "joe@=x.example.net"},
	} {
		d, err := rules.Lookup(r, tc.q)
		if err != nil || d.Key != tc.want {
			t.Errorf("%+v: key %q, %v; want %q", tc.q, d.Key, err, tc.want)
		}
	}
	rs, _ := rules.Parse(strings.NewReader(static), "f")
	var got []string
	for _, r := range HostRules(rs) {
		got = append(got, r.Addr)
	}
	if want := []string{"=.dialup.example.net", "=mx.example.net"}; !slices.Equal(got, want) {
		t.Errorf("HostRules = %q, want %q", got, want)
	}
}
