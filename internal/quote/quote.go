// Package quote shows names that come from logins (a grant's user and
// service, an etcd host's name) on a terminal or in JSON without letting
// them speak to the terminal or the reader: no C0 or C1 control
// character (U+0085, U+009B: a CSI for a VT220-style terminal), no bidi
// override or isolate (U+202E turns the rest of a line around), no other
// format or invisible character, no invalid UTF-8 goes out raw.
//
// Name is for text output: a name made only of printable characters,
// with no space, backslash or double quote, is shown as it is; any other
// is shown Go-quoted (Quote: "\u202e", "\x9b", "\\", "alice\u3164"). A quoted
// name always starts with a double quote, which no name shown as it is
// holds, so the two never look alike, and strconv.Unquote gives back the
// very bytes. JSON escapes such characters inside the strings of a JSON
// text as \u escapes, which a JSON decoder turns back into them.
package quote

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Plain tells whether Name shows s as it is: s is not empty and not "-"
// (the text tables' mark for an empty name), is valid UTF-8 and every
// character is printable and visible (unicode.IsPrint: letters, marks,
// numbers, punctuation, symbols; less those that show as nothing, see
// visible), none of them a space, '\\' or '"'.
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
		if r == utf8.RuneError && n == 1 || !visible(r) {
			return false
		}
		i += n
	}
	return true
}

// visible tells whether r is printable (unicode.IsPrint) and shows as
// something: not one of the printable characters that show as nothing or
// as a blank, which would let "alice\u3164" pass for "alice": the
// default-ignorable ones outside the format category (U+034F, the Hangul
// fillers U+115F, U+1160, U+3164, U+FFA0, U+17B4 and U+17B5, ...),
// variation selectors, the joiners, and the blank Braille pattern U+2800.
func visible(r rune) bool {
	if r < utf8.RuneSelf {
		return r >= ' ' && r < 0x7f
	}
	return unicode.IsPrint(r) && r != 0x2800 &&
		!unicode.In(r, unicode.Other_Default_Ignorable_Code_Point, unicode.Variation_Selector, unicode.Join_Control)
}

// Quote is strconv.Quote(s) with every character that is printable but
// not visible written as a \u or \U escape too (strconv.Quote leaves
// those as they are): the result is a Go string literal of s, which
// strconv.Unquote turns back into s, with nothing invisible in it.
func Quote(s string) string {
	q := strconv.Quote(s)
	if strings.IndexFunc(q, func(r rune) bool { return !visible(r) }) < 0 {
		return q
	}
	out := make([]byte, 0, len(q)+16)
	for _, r := range q {
		switch {
		case visible(r):
			out = utf8.AppendRune(out, r)
		case r > 0xffff:
			out = fmt.Appendf(out, `\U%08x`, r)
		default:
			out = fmt.Appendf(out, `\u%04x`, r)
		}
	}
	return string(out)
}

// Name returns s as text output shows it: as it is if Plain, else
// Quote(s).
func Name(s string) string {
	if Plain(s) {
		return s
	}
	return Quote(s)
}

// Value returns the value of an environment variable as text output shows
// it: as it is if it holds only printable characters (spaces among
// them), no '\\' and no '"', else Quote(v). Shown as it is, a
// value never starts with '"'; quoted, it always does.
func Value(v string) string {
	if printable(v, true) {
		return v
	}
	return Quote(v)
}

// JSON returns the JSON text b (as encoding/json writes it: valid UTF-8,
// control characters below U+0020 already escaped) with every character
// that is not printable or not visible (see visible; DEL, which encoding/json
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
		if visible(r) {
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
