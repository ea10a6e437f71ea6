// Package never is the set of addresses poprelay never grants relaying to,
// whoever logs in from them: the checkpassword-wrap refuses to record them
// and relayctl refuses to put them in the CDB.
//
// Built in (Default): 127.0.0.1 and ::1 (where a local proxy, forwarder or
// webmail connects from; the rest of 127.0.0.0/8 stays grantable), the
// unspecified addresses 0.0.0.0 and ::, multicast (224.0.0.0/4, ff00::/8),
// link-local (169.254.0.0/16, fe80::/10: such an address means one host on
// each link, and a grant key has no zone, so it would relay that address
// from every link of the SMTP host), the limited broadcast
// 255.255.255.255, and this host's own interface addresses (the exact
// addresses, not their networks).
//
// A never-grant file (Load) adds entries, one per line:
//
//	# the POP proxy: its "clients" are everyone behind it
//	192.0.2.10
//	10.1.            a tcprules-style prefix: 10.1.0.0/16
//	2001:db8:0:0:    an IPv6 one, whole groups: 2001:db8::/64
//	198.51.100.0/24  a CIDR prefix
//	2001:db8::/32
//
// An entry means the range of addresses it denotes, however it is spelled:
// "fd00:0:" and "FD00:0000:" are fd00::/32, "2001:DB8::0:1" is the address
// 2001:db8::1, and "::ffff:10.1." is 10.1.0.0/16 (grants hold IPv4 as
// IPv4). '#' starts a comment, blank lines are ignored, and any other line
// is an error naming the file and line: text that is no address or range,
// a tcprules-style prefix with "::" in it ("2001:db8::1:" is a set of
// texts, not a range), and an address that ends in "::" ("2001:db8::" is
// one address as IPv6, but a prefix to tcprules: write 2001:db8::/32 or
// 2001:db8::0).
//
// Whatever the set, Refuse also refuses an address whose tcpserver key
// would open a range (see addr.Check): "2001:db8:aaaa::" is written so by
// tcpserver, which matches that text as a prefix of every address after it.
package never

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"reflect"
	"strconv"
	"strings"
	"syscall"

	"github.com/poprelay/poprelay/internal/addr"
	"github.com/poprelay/poprelay/internal/grant"
	"github.com/poprelay/poprelay/internal/regular"
)

// DefaultFile is the never-grant file read when it exists.
const DefaultFile = "/etc/poprelay/never"

// ErrSyntax reports a line of a never-grant file that is not an entry.
var ErrSyntax = errors.New("not an IP address or prefix")

// Set is a never-grant set. The zero Set refuses only what no set grants:
// text that is not a canonical address, and an address whose tcpserver key
// would open a range.
type Set struct {
	exact map[string]string // canonical IP -> reason
	nets  []netEntry        // prefixes, CIDR or tcprules-style
}

type netEntry struct {
	p      netip.Prefix
	reason string // or, if kind is set, kind + " " + the address
	kind   string
}

// interfaceAddrs lists this host's addresses; tests replace it.
var interfaceAddrs = hostAddrs

// hostAddrs lists the addresses of this host's interfaces with one netlink
// request, as the net package does, without importing net (which would
// link the C resolver into checkpassword-wrap and slow every login).
func hostAddrs() ([]netip.Addr, error) {
	b, err := syscall.NetlinkRIB(syscall.RTM_GETADDR, syscall.AF_UNSPEC)
	if err != nil {
		return nil, err
	}
	msgs, err := syscall.ParseNetlinkMessage(b)
	if err != nil {
		return nil, err
	}
	var as []netip.Addr
	for i := range msgs {
		m := &msgs[i]
		if m.Header.Type != syscall.RTM_NEWADDR || len(m.Data) < syscall.SizeofIfAddrmsg {
			continue
		}
		attrs, err := syscall.ParseNetlinkRouteAttr(m)
		if err != nil {
			continue
		}
		// IPv4 point-to-point links: IFA_LOCAL is ours, IFA_ADDRESS the
		// peer's. Otherwise IFA_ADDRESS is ours.
		var local, addr []byte
		for _, a := range attrs {
			switch a.Attr.Type {
			case syscall.IFA_LOCAL:
				local = a.Value
			case syscall.IFA_ADDRESS:
				addr = a.Value
			}
		}
		if m.Data[0] == syscall.AF_INET && local != nil {
			addr = local
		}
		if a, ok := netip.AddrFromSlice(addr); ok {
			as = append(as, a.Unmap())
		}
	}
	return as, nil
}

func (s *Set) addExact(ip, reason string) {
	if s.exact == nil {
		s.exact = map[string]string{}
	}
	if _, ok := s.exact[ip]; !ok {
		s.exact[ip] = reason
	}
}

// Default returns the built-in set: loopback 127.0.0.1 and ::1, the
// unspecified addresses, multicast, link-local, broadcast and this host's
// interface addresses. An error listing the interfaces leaves them out.
func Default() *Set {
	s := &Set{}
	s.addExact("127.0.0.1", "loopback 127.0.0.1")
	s.addExact("::1", "loopback ::1")
	s.addExact("0.0.0.0", "unspecified address 0.0.0.0")
	s.addExact("::", "unspecified address ::")
	s.addExact("255.255.255.255", "broadcast address 255.255.255.255")
	s.nets = append(s.nets,
		netEntry{p: netip.MustParsePrefix("224.0.0.0/4"), kind: "multicast"},
		netEntry{p: netip.MustParsePrefix("ff00::/8"), kind: "multicast"},
		netEntry{p: netip.MustParsePrefix("169.254.0.0/16"), kind: "link-local address"},
		netEntry{p: netip.MustParsePrefix("fe80::/10"), kind: "link-local address"})
	if addrs, err := interfaceAddrs(); err == nil {
		for _, a := range addrs {
			if a.IsValid() && a.Zone() == "" {
				c := a.Unmap().String()
				s.addExact(c, "own interface address "+c)
			}
		}
	}
	return s
}

// ErrNotRegular reports a never-grant file that is a FIFO, a directory or
// a device: reading one could block a login forever.
var ErrNotRegular = regular.ErrNotRegular

// Open opens the never-grant file at path for reading without blocking on
// a FIFO, and refuses anything but a regular file (ErrNotRegular in a
// *fs.PathError).
func Open(path string) (*os.File, error) {
	f, _, err := regular.Open(path)
	return f, err
}

// Load returns Default plus the entries of the never-grant file at path.
func Load(path string) (*Set, error) {
	f, err := Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	s := Default()
	if err := s.Parse(f, path); err != nil {
		return nil, err
	}
	return s, nil
}

// Parse adds the entries of a never-grant file read from r to s; name
// names the file in reasons and errors.
func (s *Set) Parse(r io.Reader, name string) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), 64*1024)
	n := 0
	for sc.Scan() {
		n++
		line := sc.Text()
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		where := name + ":" + strconv.Itoa(n)
		if err := s.add(line, where); err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%s:%d: %w", name, n+1, err)
	}
	return nil
}

// add adds one entry: an address, a CIDR prefix, or a tcprules-style
// prefix ending in '.' (IPv4) or ':' (IPv6).
func (s *Set) add(e, where string) error {
	reason := "never-grant entry " + e + " (" + where + ")"
	var p netip.Prefix
	switch {
	case strings.Contains(e, "/"):
		var err error
		p, err = netip.ParsePrefix(e)
		if err != nil || p.Addr().Zone() != "" {
			return fmt.Errorf("%w: %q", ErrSyntax, e)
		}
		p = p.Masked()
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
	case strings.HasSuffix(e, "::"):
		if a, err := netip.ParseAddr(e); err == nil && a.Zone() == "" {
			bits := 16 * strings.Count(e[:len(e)-2], ":")
			if e != "::" {
				bits += 16
			}
			return fmt.Errorf("%w: %q is one address as IPv6 but a prefix as tcprules text: write %s/%d for the range, or %s0 for the address", ErrSyntax, e, e, bits, e)
		}
		return fmt.Errorf("%w: %q", ErrSyntax, e)
	default:
		if c, err := grant.CanonicalIP(e); err == nil {
			s.addExact(c, reason)
			return nil
		}
		var ok bool
		if p, ok = textPrefix(e); !ok {
			return fmt.Errorf("%w: %q", ErrSyntax, e)
		}
	}
	s.nets = append(s.nets, netEntry{p: p, reason: reason})
	return nil
}

// textPrefix reads a tcprules-style prefix as the range it denotes:
// "10.1." (one to three decimal octets without leading zeros, each
// followed by '.'; "::ffff:10.1." means the same) is 10.1.0.0/16;
// "2001:db8:0:0:" (one to seven groups of one to four hex digits, each
// followed by ':') is 2001:db8::/64. "::" has no place in one: a text
// prefix with it is a set of spellings, not a range.
func textPrefix(e string) (netip.Prefix, bool) {
	switch e[len(e)-1] {
	case '.':
		if len(e) > 7 && strings.EqualFold(e[:7], "::ffff:") {
			e = e[7:]
		}
		parts := strings.Split(e[:len(e)-1], ".")
		if len(parts) > 3 {
			return netip.Prefix{}, false
		}
		var a [4]byte
		for i, p := range parts {
			v, err := strconv.Atoi(p)
			if err != nil || v < 0 || v > 255 || strconv.Itoa(v) != p {
				return netip.Prefix{}, false
			}
			a[i] = byte(v)
		}
		return netip.PrefixFrom(netip.AddrFrom4(a), 8*len(parts)), true
	case ':':
		parts := strings.Split(e[:len(e)-1], ":")
		if len(parts) > 7 {
			return netip.Prefix{}, false
		}
		var a [16]byte
		for i, p := range parts {
			if p == "" || len(p) > 4 {
				return netip.Prefix{}, false
			}
			v, err := strconv.ParseUint(p, 16, 16)
			if err != nil {
				return netip.Prefix{}, false
			}
			a[2*i], a[2*i+1] = byte(v>>8), byte(v)
		}
		return netip.PrefixFrom(netip.AddrFrom16(a), 16*len(parts)), true
	}
	return netip.Prefix{}, false
}

// Refuse tells whether ip (canonical, see grant.CanonicalIP) must never be
// granted, and why, in words for a log line. Text that is not a canonical
// address is refused too.
func (s *Set) Refuse(ip string) (reason string, refused bool) {
	// Canonical means what grant.CanonicalIP returns: no zone, IPv4 not
	// mapped into IPv6, and exactly netip's text. Checked here without
	// allocating: a rebuild asks this for every grant.
	a, err := netip.ParseAddr(ip)
	var buf [64]byte
	if err != nil || a.Zone() != "" || a.Is4In6() || string(a.AppendTo(buf[:0])) != ip {
		return "not a canonical IP address", true
	}
	if r, ok := s.exact[ip]; ok {
		return r, true
	}
	for _, n := range s.nets {
		if n.p.Contains(a) {
			if n.kind != "" {
				return n.kind + " " + ip, true
			}
			return n.reason, true
		}
	}
	if key := addr.AppendKey(buf[:0], a); key[len(key)-1] == ':' {
		return addr.Check(string(key)).Error(), true
	}
	return "", false
}

// Equal tells whether s and o refuse exactly the same addresses for the
// same reasons (they hold the same entries).
func (s *Set) Equal(o *Set) bool {
	if s == nil || o == nil {
		return s == o
	}
	return reflect.DeepEqual(s, o)
}
