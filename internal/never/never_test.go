package never

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/poprelay/poprelay/internal/grant"
)

// fakeInterfaces makes Default see these interface addresses.
func fakeInterfaces(t testing.TB, cidrs ...string) {
	old := interfaceAddrs
	interfaceAddrs = func() ([]netip.Addr, error) {
		var as []netip.Addr
		for _, c := range cidrs {
			as = append(as, netip.MustParsePrefix(c).Addr())
		}
		return as, nil
	}
	t.Cleanup(func() { interfaceAddrs = old })
}

const file = `# never-grant test file
192.0.2.10          # the POP proxy
10.1.
2001:DB8:
198.51.100.0/24

::ffff:203.0.113.0/120
172.16.5.
3fff:2:0:      # zero groups, as tcprules text
fd00:0:
FD01:0000:00ab:
::ffff:10.7.
3FFF:0003:0000:0000:0000:0000:0000:0001
`

func TestRefuse(t *testing.T) {
	fakeInterfaces(t, "127.0.0.1/8", "192.168.1.5/24", "fd10::5/64", "::1/128")
	s := Default()
	if err := s.Parse(strings.NewReader(file), "/etc/poprelay/never"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ ip, reason string }{
		{"127.0.0.1", "loopback 127.0.0.1"},
		{"::1", "loopback ::1"},
		{"0.0.0.0", "unspecified address 0.0.0.0"},
		{"::", "unspecified address ::"},
		{"224.0.0.1", "multicast 224.0.0.1"},
		{"239.255.255.250", "multicast 239.255.255.250"},
		{"ff02::1", "multicast ff02::1"},
		{"255.255.255.255", "broadcast address 255.255.255.255"},
		// Issue 26.7: a link-local address is one host on every link.
		{"169.254.0.1", "link-local address 169.254.0.1"},
		{"169.254.255.255", "link-local address 169.254.255.255"},
		{"169.254.169.254", "link-local address 169.254.169.254"},
		{"fe80::1", "link-local address fe80::1"},
		{"fe80::1:2:3:4", "link-local address fe80::1:2:3:4"},
		{"febf:ffff::1", "link-local address febf:ffff::1"},
		{"192.168.1.5", "own interface address 192.168.1.5"},
		{"fd10::5", "own interface address fd10::5"},
		{"192.0.2.10", "never-grant entry 192.0.2.10 (/etc/poprelay/never:2)"},
		{"10.1.0.1", "never-grant entry 10.1. (/etc/poprelay/never:3)"},
		{"10.1.255.255", "never-grant entry 10.1. (/etc/poprelay/never:3)"},
		{"2001:db8::1", "never-grant entry 2001:DB8: (/etc/poprelay/never:4)"},
		{"198.51.100.77", "never-grant entry 198.51.100.0/24 (/etc/poprelay/never:5)"},
		{"203.0.113.9", "never-grant entry ::ffff:203.0.113.0/120 (/etc/poprelay/never:7)"},
		{"172.16.5.1", "never-grant entry 172.16.5. (/etc/poprelay/never:8)"},
		// Issue 16.4: a prefix with zero groups means its range, whatever
		// the compressed text of the addresses in it.
		{"3fff:2::10", "never-grant entry 3fff:2:0: (/etc/poprelay/never:9)"},
		{"3fff:2:0:ffff:ffff:ffff:ffff:ffff", "never-grant entry 3fff:2:0: (/etc/poprelay/never:9)"},
		{"fd00::25", "never-grant entry fd00:0: (/etc/poprelay/never:10)"},
		{"fd00:0:1::", "never-grant entry fd00:0: (/etc/poprelay/never:10)"},
		{"fd01:0:ab::1", "never-grant entry FD01:0000:00ab: (/etc/poprelay/never:11)"},
		{"10.7.0.1", "never-grant entry ::ffff:10.7. (/etc/poprelay/never:12)"},
		{"3fff:3::1", "never-grant entry 3FFF:0003:0000:0000:0000:0000:0000:0001 (/etc/poprelay/never:13)"},
		// Issue 16.2: an address whose key ends in ':' opens a range.
		{"2001:db9:aaaa::", `would open a range: its key "2001:db9:aaaa::" ends in ":", which tcpserver also matches as a prefix of other addresses`},
		{"2001:db9:1:2:3:4:5:0", `would open a range: its key "2001:db9:1:2:3:4:5::" ends in ":", which tcpserver also matches as a prefix of other addresses`},
		{"::ffff:1.2.3.4", "not a canonical IP address"},
		{"../x", "not a canonical IP address"},
		// Grantable.
		{"127.0.0.2", ""},
		{"127.255.255.254", ""},
		{"192.168.1.6", ""},
		{"192.168.1.0", ""},
		{"fd10::6", ""},
		{"10.10.0.1", ""},
		{"10.11.0.1", ""},
		{"172.16.50.1", ""},
		{"2001:db9::1", ""},
		{"198.51.101.1", ""},
		{"223.255.255.255", ""},
		{"240.0.0.1", ""},
		{"169.253.255.255", ""},
		{"169.255.0.1", ""},
		{"fec0::1", ""},
		{"fe7f::1", ""},
		{"192.0.2.11", ""},
		{"3fff:2:1::10", ""},
		{"3fff:3::2", ""},
		{"fd00:1::25", ""},
		{"fd01:0:ac::1", ""},
		{"2001:db9:0:2:3:4:5:0", ""}, // key "2001:db9::2:3:4:5:0"
	} {
		reason, refused := s.Refuse(tc.ip)
		if refused != (tc.reason != "") || reason != tc.reason {
			t.Errorf("Refuse(%s) = %q, %v; want %q", tc.ip, reason, refused, tc.reason)
		}
	}
	// The zero Set refuses nothing but non-canonical text and keys that
	// open a range.
	if _, refused := new(Set).Refuse("127.0.0.1"); refused {
		t.Error("zero Set refused 127.0.0.1")
	}
	if _, refused := new(Set).Refuse("2001:db8:aaaa::"); !refused {
		t.Error("zero Set granted 2001:db8:aaaa::")
	}
}

// TestDefaultRealInterfaces checks the netlink listing against the net
// package's.
func TestDefaultRealInterfaces(t *testing.T) {
	s := Default()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Skip("SKIP: no interface list:", err)
	}
	for _, a := range addrs {
		ip := a.(*net.IPNet).IP.String()
		c, _ := grant.CanonicalIP(ip)
		if _, refused := s.Refuse(c); !refused {
			t.Errorf("own address %s is grantable", c)
		}
	}
	mine, err := hostAddrs()
	if err != nil || len(mine) != len(addrs) {
		t.Errorf("hostAddrs = %v, %v; net says %v", mine, err, addrs)
	}
	if _, refused := s.Refuse("127.0.0.2"); refused {
		t.Error("127.0.0.2 refused: the rest of 127/8 must stay grantable")
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ in, err string }{
		{"1.2.3.4\nlocalhost\n", "f:2: not an IP address or prefix: \"localhost\""},
		{"\n\n001.2.3.4\n", "f:3:"},
		{"10.1\n", "f:1:"},
		{"10.01.\n", "f:1:"},
		{"10.256.\n", "f:1:"},
		{"1.2.3.4.\n", "f:1:"},
		{".\n", "f:1:"},
		{":\n", "f:1:"},
		{"2001:db8:::\n", "f:1:"},
		{"2001:db8::\n", `f:1: not an IP address or prefix: "2001:db8::" is one address as IPv6 but a prefix as tcprules text: write 2001:db8::/32 for the range, or 2001:db8::0 for the address`},
		{"::\n", `f:1: not an IP address or prefix: "::" is one address as IPv6 but a prefix as tcprules text: write ::/0 for the range, or ::0 for the address`},
		{"2001:db8::1:\n", "f:1:"},
		{"1:2:3:4:5:6:7:8:\n", "f:1:"},
		{"2001:db8:0:00000:\n", "f:1:"},
		{"::ffff:10.1.2.3.\n", "f:1:"},
		{"2001:db8::/129\n", "f:1:"},
		{"12345:\n", "f:1:"},
		{"1.2.3.4/33\n", "f:1:"},
		{"fe80::1%eth0\n", "f:1:"},
		{"fe80::%eth0/64\n", "f:1:"},
		{"1.2.3.4 5.6.7.8\n", "f:1:"},
		{"=host.example\n", "f:1:"},
		{"1.2.3.4:allow\n", "f:1:"},
		{strings.Repeat("x", 100000), "f:1:"},
	} {
		err := new(Set).Parse(strings.NewReader(tc.in), "f")
		if err == nil || !strings.HasPrefix(err.Error(), tc.err) {
			t.Errorf("Parse(%.30q) = %v; want %s...", tc.in, err, tc.err)
		}
	}
}

func TestLoad(t *testing.T) {
	fakeInterfaces(t)
	p := filepath.Join(t.TempDir(), "never")
	os.WriteFile(p, []byte("192.0.2.10\n"), 0o644)
	s, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	for _, ip := range []string{"192.0.2.10", "127.0.0.1"} {
		if _, refused := s.Refuse(ip); !refused {
			t.Errorf("%s granted", ip)
		}
	}
	if _, err := Load(p + ".missing"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load(missing) = %v", err)
	}
	os.WriteFile(p, []byte("# ok\nbad\n"), 0o644)
	if _, err := Load(p); err == nil || !strings.Contains(err.Error(), p+":2:") {
		t.Errorf("Load(bad) = %v", err)
	}
}

// FuzzParse: a never-grant file either fails with file:line or yields a set
// in which every exact address line refuses itself, and Refuse never
// panics on the entries' text.
func FuzzParse(f *testing.F) {
	f.Add(file)
	f.Add("1.2.3.4\n10.\n2001:db8:\n::/0\n")
	f.Add("# c\n\n  ::ffff:1.2.3.4  # x\n")
	f.Fuzz(func(t *testing.T, in string) {
		s := new(Set)
		err := s.Parse(strings.NewReader(in), "f")
		if err != nil {
			if !strings.HasPrefix(err.Error(), "f:") {
				t.Fatalf("error without file:line: %v", err)
			}
			return
		}
		for _, line := range strings.Split(in, "\n") {
			line, _, _ = strings.Cut(line, "#")
			line = strings.TrimSpace(line)
			if c, err := grant.CanonicalIP(line); err == nil {
				if _, refused := s.Refuse(c); !refused {
					t.Fatalf("entry %q (%s) not refused", line, c)
				}
			}
			s.Refuse(line)
		}
	})
}

// BenchmarkDefault: the built-in set, with this host's interface list.
func BenchmarkDefault(b *testing.B) {
	for b.Loop() {
		Default()
	}
}
