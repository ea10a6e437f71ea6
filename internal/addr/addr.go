// Package addr spells a client address as tcpserver looks it up in its
// rules CDB: the text a grant record must be keyed under.
//
// djb's tcpserver (ucspi-tcp 0.88, IPv4 only) looks a client up under its
// dotted quad. Debian's ucspi-tcp-ipv6 (0.88 with Felix von Leitner's IPv6
// patch, package version 0.88-7) prints an IPv6 client with the patch's
// own ip6_fmt, which is not RFC 5952: it compresses the longest run of
// zero groups even when the run is a single group, takes the first of two
// runs of equal length, writes hex groups in lower case without leading
// zeros, and writes an IPv4-mapped address as "::ffff:" and a dotted quad
// (2001:db8:0:1:1:1:1:1 is "2001:db8::1:1:1:1:1", 2001:0:0:1:0:0:0:1 is
// "2001:0:0:1::1"). Its tcpserver looks an IPv4 client of its dual-stack
// socket up under the plain dotted quad, unless it runs with -6, which
// puts "::ffff:a.b.c.d" in TCPREMOTEIP and looks that up instead
// (tcpserver(1) of that package: "-6 Force IPv6 mode ... put IPv4-mapped
// IPv6 addresses in TCPLOCALIP and TCPREMOTEIP").
//
// Its rules lookup then tries every prefix of that text that ends in "."
// or ":", so an exact record whose key ends in ":" (an address whose last
// groups are zero: "2001:db8:aaaa::") also matches every address whose
// text starts with it. Such a key must never be written for a grant.
package addr

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
)

// ErrPrefixKey reports an address whose key tcpserver would also read as
// a prefix of other addresses' keys.
var ErrPrefixKey = errors.New("would open a range")

// Key returns the text tcpserver looks a client at a up under: the dotted
// quad for IPv4 (an IPv4-mapped a is written as tcpserver -6 writes it,
// "::ffff:a.b.c.d"), the IPv6 patch's ip6_fmt text for IPv6. A zone is
// ignored.
func Key(a netip.Addr) string {
	var buf [48]byte
	return string(AppendKey(buf[:0], a))
}

// Mapped returns the key of an IPv4 client of tcpserver -6:
// "::ffff:a.b.c.d".
func Mapped(a netip.Addr) string {
	return Key(netip.AddrFrom16(a.As16()))
}

// AppendKey appends Key(a) to b.
func AppendKey(b []byte, a netip.Addr) []byte {
	if !a.IsValid() {
		return b
	}
	if a.Is4() {
		return appendDotted(b, a.As4())
	}
	ip := a.As16()
	group := func(i int) uint64 { return uint64(ip[2*i])<<8 | uint64(ip[2*i+1]) }

	// The longest run of zero groups; of runs of equal length, the first.
	// A single zero group is a run.
	pos, n := 0, 0
	for i := 0; i < 8; {
		if group(i) != 0 {
			i++
			continue
		}
		j := i
		for j < 8 && group(j) == 0 {
			j++
		}
		if j-i > n {
			pos, n = i, j-i
		}
		i = j
	}

	mapped := [12]byte(ip[:12]) == [12]byte{10: 0xff, 11: 0xff}
	for i := 0; i < 8; i++ {
		if i == 6 && mapped {
			return appendDotted(b, [4]byte(ip[12:]))
		}
		if n > 0 && i == pos {
			if i == 0 {
				b = append(b, ':')
			}
			b = append(b, ':')
			i += n - 1
			continue
		}
		b = strconv.AppendUint(b, group(i), 16)
		if i < 7 {
			b = append(b, ':')
		}
	}
	return b
}

func appendDotted(b []byte, v [4]byte) []byte {
	for i, x := range v {
		if i > 0 {
			b = append(b, '.')
		}
		b = strconv.AppendUint(b, uint64(x), 10)
	}
	return b
}

// Check returns an error wrapping ErrPrefixKey if key, the Key of an
// address, ends in ":" or ".": tcpserver tries such text as a prefix of
// every client's address, so a record under it opens a range.
func Check(key string) error {
	if key != "" && (key[len(key)-1] == ':' || key[len(key)-1] == '.') {
		return fmt.Errorf("%w: its key %q ends in %q, which tcpserver also matches as a prefix of other addresses", ErrPrefixKey, key, key[len(key)-1:])
	}
	return nil
}
