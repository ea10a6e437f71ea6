package addr

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

// The texts Debian's ucspi-tcp-ipv6 0.88-7 tcpserver gives these clients
// (TCPREMOTEIP, and the key it looks up); t/TestAddrTcpserverText checks
// them, and random addresses, against the real binary.
var keyTests = []struct{ in, want string }{
	{"2001:db8:0:1:1:1:1:1", "2001:db8::1:1:1:1:1"}, // a single zero group is compressed
	{"2001:0:0:1:0:0:0:1", "2001:0:0:1::1"},         // the longest run
	{"2001:db8:5:0:0:1:0:0", "2001:db8:5::1:0:0"},   // the first of two equal runs
	{"2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"},
	{"1:0:3:4:5:6:7:0", "1::3:4:5:6:7:0"},
	{"2001:db8:aaaa::", "2001:db8:aaaa::"}, // ends in ':'
	{"1:2:3:4:5:6:7:0", "1:2:3:4:5:6:7::"},
	{"0:1:2:3:4:5:6:7", "::1:2:3:4:5:6:7"},
	{"::", "::"},
	{"::1", "::1"},
	{"1::", "1::"},
	{"fe80::1", "fe80::1"},
	{"2001:DB8:00AB:0CD::F", "2001:db8:ab:cd::f"},
	{"1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8"},
	{"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"},
	{"::ffff:1.2.3.4", "::ffff:1.2.3.4"}, // mapped: as tcpserver -6 writes it
	{"::ffff:0.0.0.0", "::ffff:0.0.0.0"},
	{"::ffff:0:0:1", "::ffff:0:0:1"}, // not mapped
	{"::1.2.3.4", "::102:304"},       // IPv4-compatible: plain hex
	{"0:0:0:0:0:fffe:1.2.3.4", "::fffe:102:304"},
	{"64:ff9b::192.0.2.1", "64:ff9b::c000:201"},
	{"1.2.3.4", "1.2.3.4"},
	{"0.0.0.0", "0.0.0.0"},
	{"255.255.255.255", "255.255.255.255"},
	{"fe80::1%eth0", "fe80::1"},
}

func TestKey(t *testing.T) {
	for _, tc := range keyTests {
		a := netip.MustParseAddr(tc.in)
		if got := Key(a); got != tc.want {
			t.Errorf("Key(%s) = %q, want %q", tc.in, got, tc.want)
		}
	}
	if got := Mapped(netip.MustParseAddr("127.0.0.5")); got != "::ffff:127.0.0.5" {
		t.Errorf("Mapped(127.0.0.5) = %q", got)
	}
	if got := Key(netip.Addr{}); got != "" {
		t.Errorf("Key(zero) = %q", got)
	}
}

func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		key string
		bad bool
	}{
		{"2001:db8:aaaa::", true}, {"1:2:3:4:5:6:7::", true}, {"::", true}, {"1.2.3.", true},
		{"2001:db8::1", false}, {"1.2.3.4", false}, {"::1", false}, {"::ffff:1.2.3.4", false},
	} {
		err := Check(tc.key)
		if (err != nil) != tc.bad || err != nil && !errors.Is(err, ErrPrefixKey) {
			t.Errorf("Check(%q) = %v", tc.key, err)
		}
	}
}

// ip6fmt is the patch's ip6_fmt, statement for statement, on the 16
// bytes (k counts bytes, lengths are in bytes, as there).
func ip6fmt(ip [16]byte) string {
	var s strings.Builder
	pos0, len0, pos1, compr := 0, 0, 0, false
	for k := 0; k < 16; k += 2 {
		last := false
		if ip[k] == 0 && ip[k+1] == 0 {
			if !compr {
				compr = true
				pos1 = k
			}
			if k == 14 {
				k = 16
				last = true
			}
		} else if compr {
			last = true
		}
		if last {
			if temp := k - pos1; temp > len0 {
				len0 = temp
				pos0 = pos1
			}
			compr = false
		}
	}
	v4mapped := [12]byte(ip[:12]) == [12]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff}
	for k := 0; k < 16; k += 2 {
		if k == 12 && v4mapped {
			fmt.Fprintf(&s, "%d.%d.%d.%d", ip[12], ip[13], ip[14], ip[15])
			break
		}
		if pos0 == k && len0 != 0 {
			if k == 0 {
				s.WriteByte(':')
			}
			s.WriteByte(':')
			k += len0 - 2
			continue
		}
		fmt.Fprintf(&s, "%x", int(ip[k])<<8|int(ip[k+1]))
		if k < 14 {
			s.WriteByte(':')
		}
	}
	return s.String()
}

func TestKeyIp6fmt(t *testing.T) {
	for _, tc := range keyTests {
		a := netip.MustParseAddr(tc.in)
		if a.Is4() {
			continue
		}
		if got := ip6fmt(a.As16()); got != tc.want {
			t.Errorf("ip6fmt(%s) = %q, want %q (the test's transliteration is wrong)", tc.in, got, tc.want)
		}
	}
	// Every address whose groups are 0 or 1: every pattern of zero runs.
	for m := range 256 {
		var ip [16]byte
		for i := range 8 {
			if m&(1<<i) != 0 {
				ip[2*i+1] = 1
			}
		}
		a := netip.AddrFrom16(ip)
		if got, want := Key(a), ip6fmt(ip); got != want {
			t.Errorf("Key(%s) = %q, ip6_fmt gives %q", a, got, want)
		}
	}
}

// FuzzKey checks Key against the patch's algorithm and that the text is
// the address.
func FuzzKey(f *testing.F) {
	for _, tc := range keyTests {
		a := netip.MustParseAddr(tc.in).As16()
		f.Add(a[:])
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var ip [16]byte
		copy(ip[:], b)
		a := netip.AddrFrom16(ip)
		got := Key(a)
		if want := ip6fmt(ip); got != want {
			t.Fatalf("Key(%s) = %q, ip6_fmt gives %q", a, got, want)
		}
		back, err := netip.ParseAddr(got)
		if err != nil || back.As16() != ip {
			t.Fatalf("Key(%s) = %q, which parses as %v, %v", a, got, back, err)
		}
		if strings.ToLower(got) != got || strings.Contains(got, ":::") || strings.Count(got, "::") > 1 {
			t.Fatalf("Key(%s) = %q", a, got)
		}
		if (Check(got) != nil) != strings.HasSuffix(got, ":") {
			t.Fatalf("Check(%q)", got)
		}
		if a.Unmap().Is4() {
			if want := "::ffff:" + a.Unmap().String(); got != want || Mapped(a.Unmap()) != want {
				t.Fatalf("mapped %s: %q", a, got)
			}
		}
	})
}

func BenchmarkAppendKey(b *testing.B) {
	a := netip.MustParseAddr("2001:db8:0:1:1:1:1:1")
	buf := make([]byte, 0, 64)
	for b.Loop() {
		buf = AppendKey(buf[:0], a)
	}
}
