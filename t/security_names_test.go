package t

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/poprelay/poprelay/internal/wait"
)

// unsafeText lists what in out a terminal would not show as it is: invalid
// UTF-8, control characters (C0 but tab and newline, DEL, C1) and every
// other character that is not printable (bidi overrides and isolates,
// zero-width and other format characters), and the printable ones that
// show as nothing (Hangul fillers, variation selectors, joiners, U+2800).
func unsafeText(out string) []string {
	var bad []string
	for i, r := range out {
		switch {
		case r == utf8.RuneError && !strings.HasPrefix(out[i:], "\uFFFD"):
			bad = append(bad, fmt.Sprintf("byte %#x at %d", out[i], i))
		case r == '\n' || r == '\t':
		case r < ' ' || r == 0x7f || !unicode.IsPrint(r) || r == 0x2800 ||
			unicode.In(r, unicode.Other_Default_Ignorable_Code_Point, unicode.Variation_Selector, unicode.Join_Control):
			bad = append(bad, fmt.Sprintf("%U at %d", r, i))
		}
	}
	return bad
}

// TestSecurityNames: user names hold what a login gave (checkpassword
// refuses only C0 controls): C1 controls (U+0085, U+009B, a CSI for a
// VT220-style terminal), a bidi override (U+202E) and isolates, a
// zero-width space, invalid UTF-8, a backslash, and printable characters
// that show as nothing ("alice\u3164" would pass for alice). Recorded by the wrapper
// (root, a trusted caller) and by allow, they reach relayctl list (text
// and --json) and check, which show none of them raw: text output
// Go-quotes such a name ("evil\u202e..."), so it cannot look like another
// name (a name holding a real backslash is quoted too), and JSON escapes
// them as \u escapes (valid JSON that decodes to the names).
func TestSecurityNames(t *testing.T) {
	s := newRelayctlSite(t, ":allow\n")
	s.env = append(s.env, "POPRELAY_REMOTEINFO=1")
	names := []struct{ ip, user, shown string }{
		{"192.0.2.31", "evil\u202egnp.exe", `"evil\u202egnp.exe"`},
		{"192.0.2.32", "x\u009b31mred", `"x\u009b31mred"`},
		{"192.0.2.33", "next\u0085line", `"next\u0085line"`},
		{"192.0.2.34", "raw\x9b2Jbyte", `"raw\x9b2Jbyte"`},
		{"192.0.2.35", "iso\u2067late\u2069", `"iso\u2067late\u2069"`},
		{"192.0.2.36", "zero\u200bwidth", `"zero\u200bwidth"`},
		{"192.0.2.37", `evil\u202egnp.exe`, `"evil\\u202egnp.exe"`},
		{"192.0.2.38", "jürgen", "jürgen"},
		{"192.0.2.39", "alice\u3164", `"alice\u3164"`},
		{"192.0.2.40", "bob\ufe0f", `"bob\ufe0f"`},
	}
	for i, n := range names {
		if i%2 == 0 {
			r := runCmd(t, append(s.env, "TCPREMOTEIP="+n.ip, "USER="+n.user), "", wait.Patience, bin("checkpassword-wrap"), "--service", "imap\u202e", "/bin/true")
			if r.code != 0 || len(unsafeText(r.stderr)) > 0 {
				t.Errorf("wrapper for %q: exit %d, stderr %q", n.user, r.code, r.stderr)
			}
		} else {
			s.relayctl(t, "allow", n.ip, "--user", n.user)
		}
	}
	s.relayctl(t, "rebuild")

	list := s.relayctl(t, "list")
	t.Logf("list:\n%s", list)
	if bad := unsafeText(list); len(bad) > 0 {
		t.Errorf("list shows %s raw", strings.Join(bad, ", "))
	}
	for _, n := range names {
		if !strings.Contains(list, n.ip+"  ") || !strings.Contains(list, " "+n.shown+" ") {
			t.Errorf("list does not show %s's user %q as %s", n.ip, n.user, n.shown)
		}
	}
	if !strings.Contains(list, ` "imap\u202e" `) {
		t.Errorf("list does not show the service as \"imap\\u202e\"")
	}

	out := s.relayctl(t, "list", "--json")
	if bad := unsafeText(out); len(bad) > 0 {
		t.Errorf("list --json holds %s raw", strings.Join(bad, ", "))
	}
	if !json.Valid([]byte(out)) {
		t.Fatalf("list --json is not valid JSON:\n%s", out)
	}
	var rows []struct{ IP, User, Service string }
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatal(err)
	}
	users := map[string]string{}
	for _, r := range rows {
		users[r.IP] = r.User
	}
	for _, n := range names {
		if want := strings.ToValidUTF8(n.user, "\uFFFD"); users[n.ip] != want {
			t.Errorf("list --json: %s's user is %q; want %q", n.ip, users[n.ip], want)
		}
	}
	if !strings.Contains(out, `"evil\u202egnp.exe"`) {
		t.Errorf("list --json does not escape U+202E as \\u202e:\n%s", out)
	}

	for _, n := range names {
		out := s.relayctl(t, "check", n.ip)
		if bad := unsafeText(out); len(bad) > 0 {
			t.Errorf("check %s shows %s raw:\n%s", n.ip, strings.Join(bad, ", "), out)
		}
		if !strings.Contains(out, "decision: allow\n") || !strings.Contains(out, "env: TCPREMOTEINFO=") {
			t.Errorf("check %s:\n%s", n.ip, out)
		}
	}
}
