// Package quote shows names that come from logins (a grant's user and
// service, an etcd host's name) on a terminal or in JSON without letting
// them speak to the terminal or the reader: no C0 or C1 control
// character (U+0085, U+009B: a CSI for a VT220-style terminal), no bidi
// override or isolate (U+202E turns the rest of a line around), no other
// format or invisible character, no invalid UTF-8 goes out raw.
//
// Name is for text output: a name made only of printable characters,
// with no space, backslash or double quote, is shown as it is; any other
// is shown Go-quoted (strconv.Quote: "\u202e", "\x9b", "\\"). A quoted
// name always starts with a double quote, which no name shown as it is
// holds, so the two never look alike, and strconv.Unquote gives back the
// very bytes. JSON escapes such characters inside the strings of a JSON
// text as \u escapes, which a JSON decoder turns back into them.
package quote

import (
	"strconv"
	"unicode"
	"unicode/utf8"
)

// Plain tells whether Name shows s as it is: s is not empty and not "-"
// (the text tables' mark for an empty name), is valid UTF-8 and every
// character is printable (unicode.IsPrint: letters, marks, numbers,
// punctuation, symbols), none of them a space, '\\' or '"'.
func Plain(s string) bool {
	return s != "" && s != "-" && printable(s, false)
}

// printable tells whether s is valid UTF-8 of printable characters with
// no '\\' or '"', and no space unless space.
func printable(s string, space bool) bool {
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c < ' ' || c == ' ' && !space || c >= 0x7f || c == '\\' || c == '"' {
				return false
			}
			i++
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n == 1 || !unicode.IsPrint(r) {
			return false
		}
		i += n
	}
	return true
}

// Name returns s as text output shows it: as it is if Plain, else
// strconv.Quote(s).
func Name(s string) string {
	if Plain(s) {
		return s
	}
	return strconv.Quote(s)
}

// Value returns the value of an environment variable as text output shows
// it: as it is if it holds only printable characters (spaces among
// them), no '\\' and no '"', else strconv.Quote(v). Shown as it is, a
// value never starts with '"'; quoted, it always does.
func Value(v string) string {
	if printable(v, true) {
		return v
	}
	return strconv.Quote(v)
}

// JSON returns the JSON text b (as encoding/json writes it: valid UTF-8,
// control characters below U+0020 already escaped) with every character
// that is not printable (unicode.IsPrint; DEL, which encoding/json
// leaves as it is, among them), and any invalid UTF-8, written as \u
// escapes (a pair of them beyond U+FFFF; U+FFFD for
// a byte that is not UTF-8). Outside strings JSON has only ASCII, so only
// strings change, and they decode to the same text.
func JSON(b []byte) []byte {
	i := 0
	for i < len(b) && b[i] < 0x7f {
		i++
	}
	if i == len(b) {
		return b
	}
	out := make([]byte, 0, len(b)+32)
	out = append(out, b[:i]...)
	for i < len(b) {
		c := b[i]
		if c < 0x7f {
			out = append(out, c)
			i++
			continue
		}
		if c == 0x7f {
			out = appendU(out, 0x7f)
			i++
			continue
		}
		r, n := utf8.DecodeRune(b[i:])
		i += n
		if r == utf8.RuneError && n == 1 {
			out = appendU(out, utf8.RuneError)
			continue
		}
		if unicode.IsPrint(r) {
			out = utf8.AppendRune(out, r)
			continue
		}
		if r > 0xffff {
			r1, r2 := surrogates(r)
			out = appendU(appendU(out, r1), r2)
			continue
		}
		out = appendU(out, r)
	}
	return out
}

func appendU(out []byte, r rune) []byte {
	const hex = "0123456789abcdef"
	return append(out, '\\', 'u', hex[r>>12&0xf], hex[r>>8&0xf], hex[r>>4&0xf], hex[r&0xf])
}

// surrogates splits r (> U+FFFF) into its UTF-16 pair.
func surrogates(r rune) (rune, rune) {
	r -= 0x10000
	return 0xd800 + (r>>10)&0x3ff, 0xdc00 + r&0x3ff
}
