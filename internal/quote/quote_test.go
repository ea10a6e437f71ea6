package quote

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

func TestName(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"alice", "alice"},
		{"alice@example.com", "alice@example.com"},
		{"jürgen", "jürgen"},
		{"Дмитрий", "Дмитрий"},
		{"", `""`},
		{"-", `"-"`},
		{"a b", `"a b"`},
		{`a\b`, `"a\\b"`},
		{`"alice"`, `"\"alice\""`},
		{"evil\u202egnp.exe", `"evil\u202egnp.exe"`},
		{"a\u2066b\u2069", `"a\u2066b\u2069"`},
		{"x\u0085y", `"x\u0085y"`},
		{"x\u009b31m", `"x\u009b31m"`},
		{"x\x9b31m", `"x\x9b31m"`},
		{"x\xffy", `"x\xffy"`},
		{"zero\u200bwidth", `"zero\u200bwidth"`},
		{"nb\u00a0sp", `"nb\u00a0sp"`},
		{"tab\there", `"tab\there"`},
		{"esc\x1b[2J", `"esc\x1b[2J"`},
		{"del\x7f", `"del\x7f"`},
		{"bom\ufeff", `"bom\ufeff"`},
		{"tag\U000e0041", `"tag\U000e0041"`},
		// Printable, and shows as nothing or a blank: alice\u3164 is not alice.
		{"alice\u3164", `"alice\u3164"`},
		{"\u115fbob", `"\u115fbob"`},
		{"half\uffa0width", `"half\uffa0width"`},
		{"cgj\u034f", `"cgj\u034f"`},
		{"vs\ufe0f", `"vs\ufe0f"`},
		{"vs\U000e0100", `"vs\U000e0100"`},
		{"zw\u200dj", `"zw\u200dj"`},
		{"braille\u2800", `"braille\u2800"`},
		{"a b\u3164", `"a b\u3164"`},
		// A name that reads like an escape is no escape: it is quoted.
		{`x\u202ey`, `"x\\u202ey"`},
	} {
		if got := Name(tc.in); got != tc.want {
			t.Errorf("Name(%q) = %s; want %s", tc.in, got, tc.want)
		}
	}
}

func TestValue(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{"-", "-"},
		{"/var/qmail/bin/qmail-queue", "/var/qmail/bin/qmail-queue"},
		{"-you are listed", "-you are listed"},
		{"alice\u202e", `"alice\u202e"`},
		{`say "hi"`, `"say \"hi\""`},
		{`a\b`, `"a\\b"`},
		{"x\x9b", `"x\x9b"`},
	} {
		if got := Value(tc.in); got != tc.want {
			t.Errorf("Value(%q) = %s; want %s", tc.in, got, tc.want)
		}
	}
}

func TestJSON(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"alice", `"alice"`},
		{"jürgen", `"jürgen"`},
		{"evil\u202egnp", `"evil\u202egnp"`},
		{"x\u0085y\u009b", `"x\u0085y\u009b"`},
		{"x\xffy", `"x\ufffdy"`},
		{"tag\U000e0041", `"tag\udb40\udc41"`},
		{"emoji \U0001f600", "\"emoji \U0001f600\""},
		{"line\u2028sep", `"line\u2028sep"`},
		{"del\x7f", `"del\u007f"`},
	} {
		b, err := json.Marshal(tc.in)
		if err != nil {
			t.Fatal(err)
		}
		if got := string(JSON(b)); got != tc.want {
			t.Errorf("JSON(%q) = %s; want %s", tc.in, got, tc.want)
		}
	}
}

// safe tells whether s holds only what a terminal shows as it is: valid
// UTF-8 of printable characters (ASCII ones from space to '~').
func safe(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < utf8.RuneSelf && (r < ' ' || r == 0x7f) || !unicode.IsPrint(r) || r == 0x2800 ||
			unicode.In(r, unicode.Other_Default_Ignorable_Code_Point, unicode.Variation_Selector, unicode.Join_Control) {
			return false
		}
	}
	return true
}

// FuzzName: whatever the name, what Name shows is safe, and gives back
// exactly the name: as it is (never starting with '"') or by
// strconv.Unquote. So two names never show alike.
func FuzzName(f *testing.F) {
	for _, s := range []string{"alice", "", "-", `a\b`, "evil\u202egnp", "x\x9by", "\"", "jürgen", `"alice"`, "\u0085", "alice\u3164", "a b\ufe0f"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out := Name(s)
		if !safe(out) {
			t.Fatalf("Name(%q) = %q, not safe to show", s, out)
		}
		if Plain(s) {
			if out != s || strings.HasPrefix(out, `"`) || strings.ContainsAny(out, " \\\"") {
				t.Fatalf("Name(%q) = %q as it is", s, out)
			}
			return
		}
		back, err := strconv.Unquote(out)
		if err != nil || back != s {
			t.Fatalf("Name(%q) = %s, which unquotes to %q, %v", s, out, back, err)
		}
	})
}

// FuzzValue: as FuzzName, for Value (spaces and "" allowed as they are).
func FuzzValue(f *testing.F) {
	for _, s := range []string{"", "-x y", `"q"`, "evil\u202e", "x\x9b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out := Value(s)
		if !safe(out) {
			t.Fatalf("Value(%q) = %q, not safe to show", s, out)
		}
		if out == s && !strings.HasPrefix(out, `"`) {
			return
		}
		back, err := strconv.Unquote(out)
		if err != nil || back != s {
			t.Fatalf("Value(%q) = %s, which unquotes to %q, %v", s, out, back, err)
		}
	})
}

// FuzzJSON: a string encoded by encoding/json and passed through JSON is
// valid JSON, holds only safe text and decodes to what encoding/json's
// own encoding decodes to.
func FuzzJSON(f *testing.F) {
	for _, s := range []string{"alice", "evil\u202egnp", "x\x9by", "\U000e0041", "\u2028", "\xf0\x9f"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b, err := json.Marshal(map[string]string{"user": s, s: "key"})
		if err != nil {
			t.Fatal(err)
		}
		out := JSON(b)
		if !json.Valid(out) || !safe(string(out)) {
			t.Fatalf("JSON(%s) = %s: not valid or not safe", b, out)
		}
		var want, got map[string]string
		if err := json.Unmarshal(b, &want); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) || got["user"] != want["user"] {
			t.Fatalf("JSON(%s) = %s decodes to %q, want %q", b, out, got, want)
		}
	})
}
