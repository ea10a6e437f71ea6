package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/poprelay/poprelay/internal/cdbtest"
	"github.com/poprelay/poprelay/internal/wait"
)

// gen writes random rules files in the whole tcprules syntax.
type gen struct {
	r *rand.Rand
	// v6 allows addresses with colons (the IPv6 variant) and avoids the
	// lines on which that variant never returns.
	v6 bool
}

func (g *gen) pick(s ...string) string { return s[g.r.IntN(len(s))] }

func (g *gen) octet() string {
	switch g.r.IntN(10) {
	case 0:
		return g.pick("0", "255", "256", "007", "")
	default:
		return fmt.Sprint(g.r.IntN(256))
	}
}

func (g *gen) ip() string {
	return g.octet() + "." + g.octet() + "." + g.octet() + "." + g.octet()
}

func (g *gen) v6addr() string {
	return g.pick("::1", "::", "2001:db8::", "2001:db8:1:", "fe80::1", "::ffff:1.2.3.",
		"::ffff:127.0.0.1", "2001:db8::1-3", "::ffff:10.0.0.1-2", "1:2.3-4.5:6", "a:b")
}

func (g *gen) num() string {
	switch g.r.IntN(40) {
	case 0:
		return ""
	case 1:
		return "300"
	case 2:
		return "0" + fmt.Sprint(g.r.IntN(30))
	case 3:
		return "18446744073709551617"
	case 4:
		return g.pick("x", "5x", " 3", "-", "\x001", "2\x00x", "\x00")
	default:
		return fmt.Sprint(g.r.IntN(260))
	}
}

func (g *gen) addr() string {
	switch g.r.IntN(16) {
	case 0, 1, 2, 3:
		return g.ip()
	case 4:
		return g.pick(g.octet()+".", g.octet()+"."+g.octet()+".", g.octet()+"."+g.octet()+"."+g.octet()+".")
	case 5, 6:
		// Ranges, including reversed, clamped, empty and bad bounds.
		pre := g.pick("", "1.", "1.2.", "10.2.3.")
		post := g.pick("", "", ".", ".4", ".4-5", ".5.6")
		return pre + g.num() + "-" + g.num() + post
	case 7:
		return g.pick("=", "=mail.example.com", "=.example.com", "=my-host", "=a-b.c")
	case 8:
		return g.pick("joe", "", "j-o") + "@" + g.pick(g.ip(), "=h.example", "1.2.3.4-5")
	case 9:
		return ""
	case 10:
		return g.pick(" 1.2.3.4", "\t1.2.3.", "localhost", "foo bar", "  # x", "café")
	case 11:
		if g.v6 {
			return g.v6addr()
		}
		return g.ip()
	default:
		return g.ip()
	}
}

func (g *gen) value() string {
	const chars = `abc xyz=,#:"'/.-é` + "\t\x00\r"
	var b strings.Builder
	for range g.r.IntN(8) {
		s := string([]rune(chars)[g.r.IntN(len([]rune(chars)))])
		if !g.v6 && s == ":" {
			s = ";" // a colon after a bad instruction could find a keyword
		}
		b.WriteString(s)
	}
	return b.String()
}

func (g *gen) setting() string {
	name := g.pick("RELAYCLIENT", "RBLSMTPD", "QMAILQUEUE", "A", "DATABYTES", "", "A B")
	v := g.value()
	for _, q := range []string{`"`, `'`, `/`, `x`, `|`, `.`} {
		if !strings.Contains(v, q) {
			return "," + name + "=" + q + v + q
		}
	}
	return "," + name + `=""`
}

// bad returns an invalid line: one colon only, so both variants agree,
// and for the IPv6 variant one on which it does not loop forever.
func (g *gen) bad() string {
	a := g.ip()
	if !g.v6 && g.r.IntN(3) == 0 {
		return g.pick(a+":permit", a+":", a+":Allow")
	}
	return g.pick(a+":allowed", a+":allow,", a+":allow ,A=\"x\"",
		":allow,RELAYCLIENT", ":allow,A=", ":allow,A=\"abc", ":allow,A=\"1\"x", a+":allow\r",
		"my-host:allow", "1.2.3.4-5x:allow", a+":deny,x")
}

func (g *gen) line() string {
	switch g.r.IntN(30) {
	case 0:
		return "# " + g.addr() + ":allow"
	case 1:
		return ""
	case 2:
		if g.v6 {
			return ""
		}
		return g.pick("   ", "\t", "no colon at all", "1.2.3.4")
	}
	var b strings.Builder
	b.WriteString(g.addr())
	if g.r.IntN(4) == 0 {
		b.WriteString(":deny")
	} else {
		b.WriteString(":allow")
	}
	for range g.r.IntN(4) {
		b.WriteString(g.setting())
	}
	if g.r.IntN(8) == 0 {
		b.WriteString(g.pick(" ", "\t", " \t "))
	}
	return b.String()
}

func (g *gen) file() []byte {
	var b bytes.Buffer
	n := g.r.IntN(40)
	badAt := -1
	if g.r.IntN(4) == 0 {
		badAt = g.r.IntN(n + 1)
	}
	for i := 0; i <= n; i++ {
		if i == badAt {
			b.WriteString(g.bad())
		} else {
			b.WriteString(g.line())
		}
		if i < n || g.r.IntN(5) != 0 {
			b.WriteByte('\n')
		}
	}
	return b.Bytes()
}

// reference runs a real tcprules on input in dir and returns its exit
// status, stderr and CDB (nil unless 0).
func reference(t *testing.T, tool, dir string, input []byte) (int, string, []byte) {
	t.Helper()
	out := filepath.Join(dir, "ref.cdb")
	os.Remove(out)
	ctx, cancel := context.WithTimeout(context.Background(), wait.Patience) // a hang detector
	defer cancel()
	cmd := exec.CommandContext(ctx, tool, out, filepath.Join(dir, "ref.tmp"))
	cmd.Stdin = bytes.NewReader(input)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("%s did not return within %v on:\n%q", tool, wait.Patience, input)
	}
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	var db []byte
	if code == 0 {
		db, err = os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
	}
	return code, stderr.String(), db
}

// differential runs rounds files made by next (from a gen seeded by
// POPRELAY_SEED, or the time, on PCG stream stream) through cdbbuild and
// the real tcprules tool: same exit status, same stderr, empty stdout,
// same CDB bytes.
func differential(t *testing.T, tool string, v6 bool, stream uint64, rounds int, next func(*gen) []byte) {
	defer func(p string) { prog = p }(prog)
	prog = "tcprules"
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("POPRELAY_SEED"); s != "" {
		fmt.Sscan(s, &seed)
	}
	t.Logf("random rules files from POPRELAY_SEED=%d", seed)
	g := &gen{r: rand.New(rand.NewPCG(seed, stream)), v6: v6}
	dir := t.TempDir()
	ok, failed := 0, 0
	for range rounds {
		input := next(g)
		code, stderr, want := reference(t, tool, dir, input)
		target := filepath.Join(dir, "our.cdb")
		os.Remove(target)
		r := runIn([]string{target, filepath.Join(dir, "our.tmp")}, bytes.NewReader(input))
		if r.code != code || r.stderr != stderr || r.stdout != "" {
			t.Fatalf("input:\n%q\ncdbbuild: %d %q\n%s: %d %q", input, r.code, r.stderr, tool, code, stderr)
		}
		if code != 0 {
			failed++
			continue
		}
		ok++
		if got := cdbtest.Read(t, target); !bytes.Equal(got, want) {
			t.Fatalf("input:\n%q\nCDB bytes differ from %s", input, tool)
		}
	}
	t.Logf("%s: %d files compiled identically, %d rejected identically", tool, ok, failed)
}

// tcprules4 returns the real IPv4 tcprules: missing, it fails the test in
// CI and skips it elsewhere.
func tcprules4(t *testing.T) string {
	t.Helper()
	tool := "/usr/bin/tcprules"
	if _, err := os.Stat(tool); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("/usr/bin/tcprules is missing (apt-get install ucspi-tcp)")
		}
		t.Skip("SKIP: /usr/bin/tcprules is not installed (apt-get install ucspi-tcp); differential test not run")
	}
	return tool
}

// TestDifferential compares cdbbuild with the real IPv4 tcprules on
// random rules files without multi-colon addresses (where the IPv4 and
// IPv6 variants agree): same exit status, same stderr, same CDB bytes.
func TestDifferential(t *testing.T) {
	tool := tcprules4(t)
	rounds := 300
	if testing.Short() {
		rounds = 30
	}
	differential(t, tool, false, 1, rounds, (*gen).file)
}

// TestDifferentialIPv6 does the same against the IPv6 tcprules, with
// IPv6 addresses and without the lines on which it loops forever. Set
// POPRELAY_TCPRULES6 to its path, e.g. after
// "apt-get download ucspi-tcp-ipv6 && dpkg -x ucspi-tcp-ipv6_*.deb x":
// POPRELAY_TCPRULES6=$PWD/x/usr/bin/tcprules.
func TestDifferentialIPv6(t *testing.T) {
	tool := os.Getenv("POPRELAY_TCPRULES6")
	if tool == "" {
		t.Skip("SKIP: POPRELAY_TCPRULES6 not set; IPv6 differential test not run")
	}
	differential(t, tool, true, 1, 200, (*gen).file)
}

// soup returns a file of lines made of the syntax's significant pieces in
// random order, skipping the lines the IPv4 and IPv6 variants read
// differently (a later colon followed by a keyword) when !v6.
func (g *gen) soup() []byte {
	pieces := []string{":", ":", "allow", "deny", ",", "=", `"`, `'`, "-", ".", "@", "#",
		"1", "2", "25", "300", " ", "\t", "\r", "\x00", "A", "x", "é", "\n"}
	var b bytes.Buffer
	for range 1 + g.r.IntN(8) {
		var line strings.Builder
		if g.r.IntN(2) == 0 {
			line.WriteString(g.addr())
			line.WriteString(g.pick(":allow", ":deny"))
		}
		for range g.r.IntN(12) {
			line.WriteString(pieces[g.r.IntN(len(pieces)-1)])
		}
		b.WriteString(line.String())
		if g.r.IntN(6) != 0 {
			b.WriteByte('\n')
		}
	}
	if !g.v6 && differs(b.String()) {
		return g.soup()
	}
	return b.Bytes()
}

// differs reports whether the two tcprules variants read line differently:
// its first colon is not followed by a keyword, but a later one is.
func differs(line string) bool {
	for _, l := range strings.Split(line, "\n") {
		i := strings.IndexByte(l, ':')
		if i < 0 {
			continue
		}
		kw := func(s string) bool { return strings.HasPrefix(s, "allow") || strings.HasPrefix(s, "deny") }
		if !kw(l[i+1:]) && (strings.Contains(l[i+1:], ":allow") || strings.Contains(l[i+1:], ":deny")) {
			return true
		}
	}
	return false
}

// TestDifferentialSoup compares cdbbuild with the real IPv4 tcprules on
// byte soups of the syntax's pieces (NUL, CR, quotes, dashes, colons).
func TestDifferentialSoup(t *testing.T) {
	tool := tcprules4(t)
	rounds := 400
	if testing.Short() {
		rounds = 40
	}
	differential(t, tool, false, 2, rounds, (*gen).soup)
}
