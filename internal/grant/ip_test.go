package grant

import (
	"errors"
	"strings"
	"testing"
)

func TestCanonicalIP(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		// Accepted, and how they come out.
		{"1.2.3.4", "1.2.3.4"},
		{"127.0.0.2", "127.0.0.2"},
		{"0.0.0.0", "0.0.0.0"},
		{"255.255.255.255", "255.255.255.255"},
		{"::ffff:1.2.3.4", "1.2.3.4"},
		{"::FFFF:1.2.3.4", "1.2.3.4"},
		{"0:0:0:0:0:ffff:102:304", "1.2.3.4"},
		{"2001:DB8::1", "2001:db8::1"},
		{"2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"},
		{"2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"},
		{"2001:db8::0:1", "2001:db8::1"},
		{"::1", "::1"},
		{"::", "::"},
		{"::1.2.3.4", "::102:304"},
		{"ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"},
		// Rejected.
		{"", ""},
		{"../../etc/passwd", ""},
		{"1.2.3.4/../x", ""},
		{"1.2.3.4\nRELAYCLIENT", ""},
		{"1.2.3.4\n", ""},
		{"1.2.3.4\r", ""},
		{"1.2.3.4\x00", ""},
		{"001.002.003.004", ""},
		{"01.2.3.4", ""},
		{"::ffff:001.2.3.4", ""},
		{strings.Repeat("1", 10240), ""},
		{strings.Repeat("1.2.3.4", 1500), ""},
		{"fe80::1%eth0", ""},
		{"fe80::1%25eth0", ""},
		{"[::1]", ""},
		{"[1.2.3.4]", ""},
		{"1.2.3.4:110", ""},
		{" 1.2.3.4", ""},
		{"1.2.3.4 ", ""},
		{"1.2.3", ""},
		{"1.2.3.4.5", ""},
		{"256.1.1.1", ""},
		{"1.2.3.4/32", ""},
		{"2001:db8::/32", ""},
		{".", ""},
		{"..", ""},
		{"0x1.2.3.4", ""},
		{"1.2.3.", ""},
		{"2001:db8:", ""},
		{":::", ""},
		{"1:2:3:4:5:6:7:8:9", ""},
		{"localhost", ""},
		{"-1.2.3.4", ""},
		{"1.2.3.4\t", ""},
		{"１.2.3.4", ""},
	} {
		got, err := CanonicalIP(tc.in)
		in := tc.in
		if len(in) > 40 {
			in = in[:40] + "..."
		}
		if tc.want == "" {
			if err == nil || !errors.Is(err, ErrBadIP) {
				t.Errorf("CanonicalIP(%q) = %q, %v; want ErrBadIP", in, got, err)
			}
			if got != "" {
				t.Errorf("CanonicalIP(%q) returned %q with an error", in, got)
			}
			if len(err.Error()) > 200 {
				t.Errorf("CanonicalIP(%q): error is %d bytes long", in, len(err.Error()))
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("CanonicalIP(%q) = %q, %v; want %q", in, got, err, tc.want)
		}
	}
}

func FuzzCanonicalIP(f *testing.F) {
	for _, s := range []string{"1.2.3.4", "::ffff:1.2.3.4", "2001:db8::1", "001.2.3.4",
		"../../etc/passwd", "1.2.3.4\nX", "fe80::1%eth0", "::", "0.0.0.0", "1::2:3:4:5:6:7"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := CanonicalIP(s)
		if err != nil {
			if c != "" {
				t.Fatalf("%q: %q with error %v", s, c, err)
			}
			return
		}
		if strings.ContainsAny(c, "/\x00\n") || c == "." || c == ".." || c == "" || len(c) > maxIPText {
			t.Fatalf("%q: canonical %q is not a safe file name", s, c)
		}
		c2, err := CanonicalIP(c)
		if err != nil || c2 != c {
			t.Fatalf("%q: canonical %q is not idempotent: %q, %v", s, c, c2, err)
		}
	})
}
