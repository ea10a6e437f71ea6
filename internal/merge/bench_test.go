package merge

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/poprelay/poprelay/internal/cdb"
	"github.com/poprelay/poprelay/internal/grant"
	"github.com/poprelay/poprelay/internal/never"
	"github.com/poprelay/poprelay/internal/rules"
)

type discard struct{}

func (discard) Write(p []byte) (int, error)               { return len(p), nil }
func (discard) Seek(off int64, whence int) (int64, error) { return 0, nil }

// StaticRules returns an n-line static file like a big site's: exact
// addresses with RELAYCLIENT, 1% prefixes with settings, some denies, and
// a final default.
func staticRules(n int) string {
	var b strings.Builder
	for i := range n - 1 {
		switch {
		case i%100 == 0:
			fmt.Fprintf(&b, "172.%d.%d.:allow,QMAILQUEUE=\"/var/qmail/bin/qq\",DATABYTES=\"%d\"\n", 16+i/65536%16, i/256%256, i)
		case i%1000 == 1:
			fmt.Fprintf(&b, "10.%d.%d.:deny\n", i/65536%256, i/256%256)
		default:
			fmt.Fprintf(&b, "172.%d.%d.%d:allow,RELAYCLIENT=\"\"\n", 16+i/65536%16, i/256%256, i%256)
		}
	}
	b.WriteString(":allow\n")
	return b.String()
}

// manyGrants returns n grants spread over 10/8 and 172.16/12 (about 1% in
// the static prefixes), one in 16 of them IPv6.
func manyGrants(n int, now time.Time) []grant.Grant {
	gs := make([]grant.Grant, n)
	for i := range gs {
		var ip string
		switch {
		case i%16 == 15:
			ip = fmt.Sprintf("2001:db8:%x::%x", i>>16, i&0xffff)
		case i%2 == 0:
			ip = fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255)
		default:
			ip = fmt.Sprintf("172.%d.%d.%d", 16+i>>16&15, i>>8&255, i&255)
		}
		gs[i] = grant.Grant{IP: ip, User: fmt.Sprintf("user%d@example.com", i), Service: "pop3", Time: now.Add(-time.Duration(i%3000) * time.Second)}
	}
	return gs
}

// BenchmarkWrite1M merges 1M in-memory grants into a 10k-line static file
// (the grant store is not read; see scripts/bench-rebuild for the whole
// command).
func BenchmarkWrite1M(b *testing.B) { benchWrite(b, nil, Caps{}) }

// BenchmarkWrite1MCaps is BenchmarkWrite1M with the per-user cap
// screening a million users of one grant each (the total cap set high
// enough not to bite).
func BenchmarkWrite1MCaps(b *testing.B) {
	benchWrite(b, nil, Caps{PerUser: DefaultMaxPerUser, Total: 2000000})
}

// BenchmarkWrite1MOverCap is BenchmarkWrite1M with the default caps: a
// million grants are over the total cap, the 100k newest published.
func BenchmarkWrite1MOverCap(b *testing.B) {
	benchWrite(b, nil, Caps{PerUser: DefaultMaxPerUser, Total: DefaultMaxGrants})
}

// BenchmarkWrite1MNever is BenchmarkWrite1M with the real never-grant set
// screening every grant, as relayctl runs it.
func BenchmarkWrite1MNever(b *testing.B) { benchWrite(b, never.Default(), Caps{}) }

func benchWrite(b *testing.B, set Refuser, caps Caps) {
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	rs, err := rules.Parse(strings.NewReader(staticRules(10000)), "tcp.smtp")
	if err != nil {
		b.Fatal(err)
	}
	gs := manyGrants(1000000, now)
	runtime.GC()
	b.ResetTimer()
	var sum Summary
	for b.Loop() {
		w := cdb.NewWriter(discard{})
		sum, err = Write(w, rs, gs, Options{Now: now, MaxAge: time.Hour, Never: set, Caps: caps})
		if err != nil {
			b.Fatal(err)
		}
		if err := w.Finish(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(sum.Records), "records")
}
