// Package cdbtest helps tests of the code that writes and reads CDBs: the
// tcprules reference vectors kept beside the checkout in ../shared/tcprules,
// an in-memory file to write a CDB into, and "cdb -d" dumps. Only test code
// imports it.
package cdbtest

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// Path returns the tcprules reference directory, ../shared/tcprules
// beside the checkout (the directory of go.mod, looked for from the working
// directory up), or "" outside a checkout. It may not exist: see Dir.
func Path() string {
	d, err := os.Getwd()
	if err != nil {
		return ""
	}
	for {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return filepath.Join(filepath.Dir(d), "shared", "tcprules")
		}
		up := filepath.Dir(d)
		if up == d {
			return ""
		}
		d = up
	}
}

// Dir returns Path. Missing, it fails the test in CI and skips it visibly
// elsewhere.
func Dir(t testing.TB) string {
	t.Helper()
	shared := Path()
	if shared == "" {
		missing(t, "../shared/tcprules")
	}
	if _, err := os.Stat(shared); err != nil {
		missing(t, shared)
	}
	return shared
}

func missing(t testing.TB, shared string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatal("tcprules vectors not found in " + shared)
	}
	t.Skip("SKIP: tcprules vectors not found in " + shared)
}

// Vectors returns every vector directory (vectors/* and vectors-ipv6/*),
// each holding rules and its expect.* (or expect-ipv6.*) files.
func Vectors(t testing.TB) []string {
	t.Helper()
	shared := Dir(t)
	var dirs []string
	for _, g := range []string{"vectors/*", "vectors-ipv6/*"} {
		m, _ := filepath.Glob(filepath.Join(shared, g))
		dirs = append(dirs, m...)
	}
	if len(dirs) == 0 {
		missing(t, shared)
	}
	return dirs
}

// Name names a vector for a subtest: "vectors/001-exact-ipv4-allow".
func Name(dir string) string {
	return filepath.Base(filepath.Dir(dir)) + "/" + filepath.Base(dir)
}

// Expect returns dir/expect-ipv6.SUFFIX if it exists (cdbbuild accepts
// IPv6 addresses as the IPv6 tcprules does), else dir/expect.SUFFIX.
func Expect(dir, suffix string) string {
	p := filepath.Join(dir, "expect-ipv6."+suffix)
	if _, err := os.Stat(p); err == nil {
		return p
	}
	return filepath.Join(dir, "expect."+suffix)
}

// Read returns the contents of the file at path, failing the test if it
// cannot be read.
func Read(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// File is an in-memory io.WriteSeeker for cdb.Writer.
type File struct {
	b   []byte
	off int
}

func (f *File) Write(p []byte) (int, error) {
	if end := f.off + len(p); end > len(f.b) {
		f.b = append(f.b, make([]byte, end-len(f.b))...)
	}
	f.off += copy(f.b[f.off:], p)
	return len(p), nil
}

func (f *File) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
		f.off = int(off)
	case io.SeekCurrent:
		f.off += int(off)
	case io.SeekEnd:
		f.off = len(f.b) + int(off)
	}
	return int64(f.off), nil
}

// Bytes returns what was written.
func (f *File) Bytes() []byte { return f.b }

// Reset empties f, keeping its memory.
func (f *File) Reset() { f.b, f.off = f.b[:0], 0 }

// Dump renders the records of db (a *cdb.Reader) as tinycdb's "cdb -d"
// does: +KLEN,DLEN:KEY->DATA a line, then an empty line.
func Dump(t testing.TB, db interface {
	ForEach(func(k, v []byte) error) error
}) []byte {
	t.Helper()
	var out bytes.Buffer
	err := db.ForEach(func(k, v []byte) error {
		fmt.Fprintf(&out, "+%d,%d:%s->%s\n", len(k), len(v), k, v)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	out.WriteByte('\n')
	return out.Bytes()
}
