package grant

import (
	"errors"
	"fmt"
	"net/netip"
)

// maxIPText bounds the text CanonicalIP looks at. The longest IPv6 text
// form ("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255") has 45 bytes.
const maxIPText = 45

// ErrBadIP reports text that is not an IP address in an accepted form.
var ErrBadIP = errors.New("not an IP address")

// CanonicalIP checks s strictly and returns the one text form poprelay uses
// for the address, as a file name in the spool and as a CDB key:
//   - IPv4: dotted quad without leading zeros ("1.2.3.4");
//   - IPv6: RFC 5952 form (lower case, longest zero run as "::");
//   - an IPv4-mapped IPv6 address ("::ffff:1.2.3.4") becomes IPv4.
//
// Anything else is an error wrapping ErrBadIP: zones ("fe80::1%eth0"),
// brackets, prefixes, ports, leading zeros ("001.002.003.004"), spaces,
// control characters, slashes and text longer than any address. The
// result never contains '/', NUL or a newline, and CanonicalIP of a
// result returns it unchanged.
func CanonicalIP(s string) (string, error) {
	if s == "" {
		return "", fmt.Errorf("%w: empty", ErrBadIP)
	}
	if len(s) > maxIPText {
		return "", fmt.Errorf("%w: %d bytes long", ErrBadIP, len(s))
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case '0' <= c && c <= '9', 'a' <= c && c <= 'f', 'A' <= c && c <= 'F', c == '.', c == ':':
		default:
			return "", fmt.Errorf("%w: %q has a byte %q", ErrBadIP, s, c)
		}
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return "", fmt.Errorf("%w: %q", ErrBadIP, s)
	}
	// s itself when it is canonical already: no new string (an import
	// canonicalizes a million).
	var buf [64]byte
	if b := a.Unmap().AppendTo(buf[:0]); string(b) != s {
		return string(b), nil
	}
	return s, nil
}
