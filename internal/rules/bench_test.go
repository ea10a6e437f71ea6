package rules

import (
	"bytes"
	"fmt"
	"io"
	"testing"

	"github.com/poprelay/poprelay/internal/cdb"
)

// benchRules makes n lines as SPEC.md section 6 does: 99% exact IPs with
// RELAYCLIENT, 1% prefixes, 0.1% deny, and a final ":deny".
func benchRules(n int) []byte {
	var b bytes.Buffer
	for i := range n - 1 {
		a, c, d := (i>>16)&255, (i>>8)&255, i&255
		switch {
		case i%1000 == 999:
			fmt.Fprintf(&b, "10.%d.%d.%d:deny\n", a, c, d)
		case i%100 == 99:
			fmt.Fprintf(&b, "172.%d.%d.:allow,RELAYCLIENT=\"\"\n", a, c)
		default:
			fmt.Fprintf(&b, "192.%d.%d.%d:allow,RELAYCLIENT=\"\"\n", a, c, d)
		}
	}
	b.WriteString(":deny\n")
	return b.Bytes()
}

// sink is a WriteSeeker that keeps nothing.
type sink struct{ n, pos int64 }

func (s *sink) Write(p []byte) (int, error) {
	s.pos += int64(len(p))
	s.n = max(s.n, s.pos)
	return len(p), nil
}

func (s *sink) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
		s.pos = off
	case io.SeekCurrent:
		s.pos += off
	case io.SeekEnd:
		s.pos = s.n + off
	}
	return s.pos, nil
}

// BenchmarkScanCompile: Parse (Scan) then Compile, 100k lines.
func BenchmarkScanCompile(b *testing.B) {
	in := benchRules(100000)
	b.SetBytes(int64(len(in)))
	b.ReportAllocs()
	for b.Loop() {
		rs, err := Parse(bytes.NewReader(in), "bench")
		if err != nil {
			b.Fatal(err)
		}
		w := cdb.NewWriter(&sink{})
		if err := Compile(w, rs); err != nil {
			b.Fatal(err)
		}
		if err := w.Finish(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBuild: the streaming path cdbbuild uses, 100k lines.
func BenchmarkBuild(b *testing.B) {
	in := benchRules(100000)
	b.SetBytes(int64(len(in)))
	b.ReportAllocs()
	for b.Loop() {
		w := cdb.NewWriter(&sink{})
		if _, err := Build(w, bytes.NewReader(in), "bench"); err != nil {
			b.Fatal(err)
		}
		if err := w.Finish(); err != nil {
			b.Fatal(err)
		}
	}
}
