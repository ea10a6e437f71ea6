package migrate

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/poprelay/poprelay/internal/grant"
)

func TestVpopmailLine(t *testing.T) {
	for _, tc := range []struct {
		line string
		ip   string // "" for skip, "ERR" for an error
		time int64
	}{
		{"1.2.3.4:allow,RELAYCLIENT=\"\",RBLSMTPD=\"\"\t1700000000", "1.2.3.4", 1700000000},
		{"1.2.3.4:allow,RELAYCLIENT=\"\",RBLSMTPD=\"\"\t1700000000\r", "1.2.3.4", 1700000000},
		{"2001:db8::7:allow,RELAYCLIENT=\"\"\t1700000001", "2001:db8::7", 1700000001},
		{"::ffff:1.2.3.4:allow\t5", "1.2.3.4", 5},
		{"", "", 0},
		{"# comment", "", 0},
		{"1.2.3.4:allow,RELAYCLIENT=\"\"", "ERR", 0},
		{"1.2.3.4:deny\t1700000000", "ERR", 0},
		{"1.2.3.:allow\t1700000000", "ERR", 0},
		{"001.2.3.4:allow\t1700000000", "ERR", 0},
		{"1.2.3.4:allow\tsoon", "ERR", 0},
		{"1.2.3.4:allow\t-5", "ERR", 0},
		{"1.2.3.4:allow\t0", "ERR", 0},
		{"=host:allow\t1", "ERR", 0},
	} {
		g, ok, err := ParseVpopmailLine(tc.line)
		switch {
		case tc.ip == "ERR":
			if !errors.Is(err, ErrSyntax) {
				t.Errorf("%q: got %v %v, want a syntax error", tc.line, g, err)
			}
		case tc.ip == "":
			if ok || err != nil {
				t.Errorf("%q: got %v %v %v, want a skip", tc.line, g, ok, err)
			}
		default:
			if err != nil || !ok || g.IP != tc.ip || g.Time.Unix() != tc.time || g.Service != "vpopmail" {
				t.Errorf("%q: got %+v %v %v", tc.line, g, ok, err)
			}
		}
	}
}

func TestVpopmailFile(t *testing.T) {
	in := "1.2.3.4:allow,RELAYCLIENT=\"\",RBLSMTPD=\"\"\t1700000000\n" +
		"5.6.7.8:allow,RELAYCLIENT=\"\",RBLSMTPD=\"\"\t1700000100\n" +
		"1.2.3.4:allow,RELAYCLIENT=\"\",RBLSMTPD=\"\"\t1700000200\n"
	gs, err := Vpopmail(strings.NewReader(in), "open-smtp")
	if err != nil {
		t.Fatal(err)
	}
	if len(gs) != 2 || gs[0].IP != "1.2.3.4" || gs[0].Time.Unix() != 1700000200 || gs[1].IP != "5.6.7.8" {
		t.Errorf("got %+v", gs)
	}
	_, err = Vpopmail(strings.NewReader(in+"junk\n"), "open-smtp")
	var le *LineError
	if !errors.As(err, &le) || le.Line != 4 || !strings.HasPrefix(err.Error(), "open-smtp:4: ") {
		t.Errorf("err %v", err)
	}
	// Address order (IPv4 first), the latest of each; of equal times
	// the later line; a mapped and a plain form are one address; no
	// newline at the end is a line all the same.
	in = "2001:db8::1:allow\t5\n" +
		"10.0.0.2:allow\t7\n" +
		"::ffff:10.0.0.2:allow\t9\n" +
		"10.0.0.1:allow\t3\n" +
		"10.0.0.1:allow\t1\n" +
		"2001:db8::1:allow\t5\r\n" +
		"# a comment\n" +
		"9.9.9.9:allow\t2"
	gs, err = Vpopmail(strings.NewReader(in), "open-smtp")
	var got []string
	for _, g := range gs {
		got = append(got, fmt.Sprintf("%s %d", g.IP, g.Time.Unix()))
	}
	if want := []string{"9.9.9.9 2", "10.0.0.1 3", "10.0.0.2 9", "2001:db8::1 5"}; err != nil || !slices.Equal(got, want) {
		t.Errorf("got %q, %v; want %q", got, err, want)
	}
	_, err = Vpopmail(strings.NewReader(in+"\n1.2.3.4:allow,X=\""+strings.Repeat("x", 70000)+"\"\t1\n"), "open-smtp")
	if !errors.As(err, &le) || le.Line != 9 {
		t.Errorf("a 70 kB line: %v", err)
	}
}

func TestRelayCtrl(t *testing.T) {
	dir := t.TempDir()
	mtime := time.Unix(1700000000, 0)
	files := map[string]string{
		"192.0.2.7":   "USER=alice\x00DOMAIN=example.com\x00",
		"192.0.2.8":   "USER=bob@example.org\x00",
		"192.0.2.9":   "",
		"2001:db8::9": "USER=carol\nx\x00",
		"not-an-ip":   "",
		".tmp":        "",
	}
	for name, c := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(filepath.Join(dir, name), mtime, mtime)
	}
	os.Mkdir(filepath.Join(dir, "10.0.0.1"), 0o755)
	var skipped []string
	gs, err := RelayCtrl(dir, func(name, why string) { skipped = append(skipped, name) })
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"192.0.2.7": "alice@example.com", "192.0.2.8": "bob@example.org", "192.0.2.9": "", "2001:db8::9": "carolx"}
	if len(gs) != len(want) {
		t.Fatalf("got %+v", gs)
	}
	for _, g := range gs {
		if u, ok := want[g.IP]; !ok || u != g.User || !g.Time.Equal(mtime) || g.Service != "relay-ctrl" {
			t.Errorf("got %+v", g)
		}
	}
	if len(skipped) != 3 {
		t.Errorf("skipped %q", skipped)
	}
	if _, err := RelayCtrl(filepath.Join(dir, "none"), nil); err == nil {
		t.Error("no error for a missing directory")
	}
}

// FuzzVpopmail checks that any line either fails cleanly or parses to a
// grant that writes back and parses again to the same grant.
func FuzzVpopmail(f *testing.F) {
	for _, s := range []string{
		"1.2.3.4:allow,RELAYCLIENT=\"\",RBLSMTPD=\"\"\t1700000000",
		"2001:db8::7:allow\t1",
		"::ffff:1.2.3.4:allow\t5",
		"# x", "", "1.2.3.4:deny\t1", "a:allow\t1\t2",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		g, ok, err := ParseVpopmailLine(line)
		if err != nil || !ok {
			return
		}
		if c, err := grant.CanonicalIP(g.IP); err != nil || c != g.IP {
			t.Fatalf("%q: non-canonical IP %q", line, g.IP)
		}
		g2, ok2, err := ParseVpopmailLine(FormatVpopmailLine(g))
		if err != nil || !ok2 || g2 != g {
			t.Fatalf("%q: round trip %+v -> %+v %v", line, g, g2, err)
		}
	})
}
