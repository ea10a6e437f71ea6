package rules

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
)

// TestParseLine covers every address form, the quoting of settings and
// every kind of bad line, one line each.
func TestParseLine(t *testing.T) {
	type want struct {
		addr string
		keys []string // nil: just addr
		deny bool
		env  []Var
	}
	tests := []struct {
		line string
		want *want // nil: skipped line
		bad  bool
	}{
		// Address forms.
		{line: "1.2.3.4:allow", want: &want{addr: "1.2.3.4"}},
		{line: "1.2.3.4:deny", want: &want{addr: "1.2.3.4", deny: true}},
		{line: "1.2.3.:allow", want: &want{addr: "1.2.3."}},
		{line: "1.:deny", want: &want{addr: "1.", deny: true}},
		{line: ":allow", want: &want{addr: ""}},
		{line: ":deny", want: &want{addr: "", deny: true}},
		{line: "=mail.example.com:allow", want: &want{addr: "=mail.example.com"}},
		{line: "=.example.com:allow", want: &want{addr: "=.example.com"}},
		{line: "=:deny", want: &want{addr: "=", deny: true}},
		{line: "=my-host:allow", want: &want{addr: "=my-host"}},
		{line: "joe@1.2.3.4:allow", want: &want{addr: "joe@1.2.3.4"}},
		{line: "@1.2.3.4:allow", want: &want{addr: "@1.2.3.4"}},
		{line: "joe@=host.example.com:allow", want: &want{addr: "joe@=host.example.com"}},
		{line: "joe@1.2.3.4-5:allow", want: &want{addr: "joe@1.2.3.4-5"}},
		{line: "localhost:allow", want: &want{addr: "localhost"}},
		{line: "  # x:allow", want: &want{addr: "  # x"}},
		{line: " 1.2.3.4:allow", want: &want{addr: " 1.2.3.4"}},
		// IPv6 (the IPv6 variant's colon search).
		{line: "::1:allow", want: &want{addr: "::1"}},
		{line: "2001:db8::1:allow,RELAYCLIENT=\"\"", want: &want{addr: "2001:db8::1", env: []Var{{"RELAYCLIENT", ""}}}},
		{line: "2001:db8:1::allow", want: &want{addr: "2001:db8:1:"}},
		{line: "::ffff:1.2.3.:allow", want: &want{addr: "::ffff:1.2.3."}},
		{line: "::allow", want: &want{addr: ":"}},
		{line: ":::deny", want: &want{addr: "::", deny: true}},
		{line: "a:b:allow", want: &want{addr: "a:b"}},
		{line: "2001:db8::/32:allow", want: &want{addr: "2001:db8::/32"}},
		{line: "2001:db8::7:allow,Q=\"/a:b\"", want: &want{addr: "2001:db8::7", env: []Var{{"Q", "/a:b"}}}},
		{line: "a:allow,A=\"x:deny\"", want: &want{addr: "a", env: []Var{{"A", "x:deny"}}}},
		{line: "a:b,X=\":allow\"", bad: true},
		{line: "a:allowX:deny", bad: true},
		{line: "a:deny:allow", bad: true},
		{line: "2001:db8::1:permit", bad: true},
		{line: "x:", bad: true},
		{line: "a:b", bad: true},
		// Ranges.
		{line: "1.2.3.37-39:allow", want: &want{addr: "1.2.3.37-39", keys: []string{"1.2.3.37", "1.2.3.38", "1.2.3.39"}}},
		{line: "10.2-3.:allow", want: &want{addr: "10.2-3.", keys: []string{"10.2.", "10.3."}}},
		{line: "1-3.:allow", want: &want{addr: "1-3.", keys: []string{"1.", "2.", "3."}}},
		{line: "1-3:allow", want: &want{addr: "1-3", keys: []string{"1", "2", "3"}}},
		{line: "1.2.3.253-300:allow", want: &want{addr: "1.2.3.253-300", keys: []string{"1.2.3.253", "1.2.3.254", "1.2.3.255"}}},
		{line: "1.2.3.300-400:allow", want: &want{addr: "1.2.3.300-400", keys: []string{}}},
		{line: "9.9.9.254-:allow", want: &want{addr: "9.9.9.254-", keys: []string{}}},
		{line: "1.2.3.-2:allow", want: &want{addr: "1.2.3.-2", keys: []string{"1.2.3.0", "1.2.3.1", "1.2.3.2"}}},
		{line: "1.2.3.007-009:allow", want: &want{addr: "1.2.3.007-009", keys: []string{"1.2.3.7", "1.2.3.8", "1.2.3.9"}}},
		{line: "1.2-3.4-5:allow", want: &want{addr: "1.2-3.4-5", keys: []string{"1.2.4-5", "1.3.4-5"}}},
		{line: "1.2.3.4-4:deny", want: &want{addr: "1.2.3.4-4", keys: []string{"1.2.3.4"}, deny: true}},
		{line: "::ffff:1.2.3.1-2:allow", want: &want{addr: "::ffff:1.2.3.1-2", keys: []string{"::ffff:1.2.3.1", "::ffff:1.2.3.2"}}},
		{line: "1:2.3-4.5:6:allow", want: &want{addr: "1:2.3-4.5:6", keys: []string{"1:2.3.5:6", "1:2.4.5:6"}}},
		// unsigned long arithmetic: 2^64 wraps to 0.
		{line: "1.2.3.18446744073709551616-1:allow", want: &want{addr: "1.2.3.18446744073709551616-1", keys: []string{"1.2.3.0", "1.2.3.1"}}},
		// A NUL ends a bound, as in tcprules' C strings.
		{line: "1.2.3.\x001-3:allow", want: &want{addr: "1.2.3.\x001-3", keys: []string{"1.2.3.0", "1.2.3.1", "1.2.3.2", "1.2.3.3"}}},
		{line: "1.2.3.1\x00x-3\x00y:allow", want: &want{addr: "1.2.3.1\x00x-3\x00y", keys: []string{"1.2.3.1", "1.2.3.2", "1.2.3.3"}}},
		{line: "1.2.3.1-\x003:allow", want: &want{addr: "1.2.3.1-\x003", keys: []string{}}},
		{line: "1.2.3.4-5x:allow", bad: true},
		{line: "my-host:allow", bad: true},
		{line: "2001:db8::1-3:allow", bad: true},
		{line: "1.2-3:4:allow", bad: true},
		// Settings and quoting.
		{line: `:allow,RELAYCLIENT=""`, want: &want{env: []Var{{"RELAYCLIENT", ""}}}},
		{line: `:allow,A="1",B='2',C=/3/,D=x4x`, want: &want{env: []Var{{"A", "1"}, {"B", "2"}, {"C", "3"}, {"D", "4"}}}},
		{line: `:allow,A='say "hi"'`, want: &want{env: []Var{{"A", `say "hi"`}}}},
		{line: `:allow,A="x=1,y:2 # z"`, want: &want{env: []Var{{"A", "x=1,y:2 # z"}}}},
		{line: `:deny,A="1"`, want: &want{deny: true, env: []Var{{"A", "1"}}}},
		{line: `:allow,A="1",A="2"`, want: &want{env: []Var{{"A", "1"}, {"A", "2"}}}},
		{line: `:allow,="v"`, want: &want{env: []Var{{"", "v"}}}},
		{line: `:allow,A B,C="v"`, want: &want{env: []Var{{"A B,C", "v"}}}},
		{line: `:allow,A= x `, bad: true}, // the closing space is trimmed
		{line: `:allow,A="x "  `, want: &want{env: []Var{{"A", "x "}}}},
		{line: "1.2.3.4:allow \t ", want: &want{addr: "1.2.3.4"}},
		{line: `:allow,A="café"`, want: &want{env: []Var{{"A", "café"}}}},
		{line: ":allow,A=\"a\x00b\"", want: &want{env: []Var{{"A", "a\x00b"}}}},
		// Bad lines.
		{line: "1.2.3.4:permit", bad: true},
		{line: "1.2.3.4:", bad: true},
		{line: "1.2.3.4:allowed", bad: true},
		{line: "1.2.3.4:allow,", bad: true},
		{line: `1.2.3.4:allow ,A="x"`, bad: true},
		{line: `:allow,RELAYCLIENT`, bad: true},
		{line: `:allow,A=`, bad: true},
		{line: `:allow,A="abc`, bad: true},
		{line: `:allow,A="1"x`, bad: true},
		{line: "1.2.3.4:allow\r", bad: true},
		{line: "1.2.3.4:Allow", bad: true},
		// Skipped lines.
		{line: "no colon here"},
		{line: "   "},
		{line: "\t"},
		{line: ""},
		{line: "# 1.2.3.4:allow"},
		{line: "#"},
	}
	for _, tc := range tests {
		rs, err := Parse(strings.NewReader(tc.line+"\n"), "f")
		if tc.bad {
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Errorf("%q: err = %v, want a parse error", tc.line, err)
				continue
			}
			text := strings.TrimRight(tc.line, " \t\n")
			if *pe != (ParseError{"f", 1, text}) {
				t.Errorf("%q: %+v", tc.line, *pe)
			}
			if got, want := pe.Error(), "f:1: unable to parse this line: "+text; got != want {
				t.Errorf("%q: Error() = %q, want %q", tc.line, got, want)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.line, err)
			continue
		}
		if tc.want == nil {
			if len(rs) != 0 {
				t.Errorf("%q: got %+v, want the line skipped", tc.line, rs)
			}
			continue
		}
		if len(rs) != 1 {
			t.Errorf("%q: got %d rules", tc.line, len(rs))
			continue
		}
		keys := tc.want.keys
		if keys == nil {
			keys = []string{tc.want.addr}
		}
		want := Rule{Line: 1, Addr: tc.want.addr, Keys: keys, Deny: tc.want.deny, Env: tc.want.env}
		if !reflect.DeepEqual(rs[0], want) {
			t.Errorf("%q:\n got %+v\nwant %+v", tc.line, rs[0], want)
		}
	}
}

func TestParseLines(t *testing.T) {
	in := "# c\n\n1.2.3.4:allow\nno colon\n  \n5.6.7.8:deny\n=x:allow"
	rs, err := Parse(strings.NewReader(in), "f")
	if err != nil {
		t.Fatal(err)
	}
	var lines []int
	for _, r := range rs {
		lines = append(lines, r.Line)
	}
	if !reflect.DeepEqual(lines, []int{3, 6, 7}) {
		t.Errorf("lines %v", lines)
	}
	// Only the first bad line is reported.
	_, err = Parse(strings.NewReader("1.2.3.4:allow\nbad:x\nworse:y\n"), "rules")
	if err == nil || err.Error() != "rules:2: unable to parse this line: bad:x" {
		t.Errorf("err = %v", err)
	}
	// A line longer than the read buffer.
	long := strings.Repeat("x", 200<<10)
	rs, err = Parse(strings.NewReader("1:allow,A=\""+long+"\"\n2:deny"), "f")
	if err != nil || len(rs) != 2 || rs[0].Env[0].Value != long || rs[1].Addr != "2" {
		t.Errorf("long line: %v", err)
	}
}

func TestScanErrors(t *testing.T) {
	boom := errors.New("boom")
	// Read errors are wrapped.
	err := Scan(iotest.TimeoutReader(strings.NewReader(strings.Repeat("1.2.3.4:allow\n", 10000))), "f",
		func(*Rule) error { return nil })
	if !errors.Is(err, iotest.ErrTimeout) {
		t.Errorf("read error: %v", err)
	}
	// fn's error stops the scan and comes back as it is.
	n := 0
	err = Scan(strings.NewReader("1:allow\n2:allow\n"), "f", func(*Rule) error { n++; return boom })
	if err != boom || n != 1 {
		t.Errorf("fn error: %v after %d", err, n)
	}
}

func TestIndex(t *testing.T) {
	rs, err := Parse(strings.NewReader("1.2.3.4:allow,A=\"first\"\n1.2.3.3-5:deny\n1.2.3.:allow\n"), "f")
	if err != nil {
		t.Fatal(err)
	}
	ix := NewIndex(rs)
	for _, tc := range []struct {
		key  string
		line int
	}{{"1.2.3.4", 1}, {"1.2.3.3", 2}, {"1.2.3.5", 2}, {"1.2.3.", 3}, {"1.2.3.6", 0}} {
		r, ok := ix.Rule(tc.key)
		v, fok, err := ix.Find([]byte(tc.key))
		if err != nil || ok != fok || ok != (tc.line != 0) {
			t.Errorf("%q: Rule ok %v, Find ok %v, err %v", tc.key, ok, fok, err)
			continue
		}
		if ok && (r.Line != tc.line || string(v) != string(r.Value())) {
			t.Errorf("%q: line %d value %q", tc.key, r.Line, v)
		}
	}
	d, _ := Lookup(ix, Query{IP: "1.2.3.4"})
	if d.Deny || d.Key != "1.2.3.4" {
		t.Errorf("Lookup: %+v", d)
	}
}
