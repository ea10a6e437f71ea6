package atomic

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func put(s string) func(f *os.File) error {
	return func(f *os.File) error { _, err := f.WriteString(s); return err }
}

// TestSpare: each Write publishes its content whole, shorter or longer
// than the last, keeps the file's mode, and takes the two inodes in turn.
func TestSpare(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "x.cdb")
	s := &Spare{Path: p, Perm: 0o644}
	var inos []uint64
	for _, c := range []string{"first, the longest", "second", "third, longer", "4"} {
		if err := s.Write(put(c)); err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(p); string(b) != c {
			t.Fatalf("published %q, want %q", b, c)
		}
		inos = append(inos, inode(t, p))
		os.Chmod(p, 0o640)
	}
	if inos[2] != inos[0] || inos[3] != inos[1] || inos[0] == inos[1] {
		t.Errorf("inodes %v: want two, in turn", inos)
	}
	if st, _ := os.Stat(p); st.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want the file's 0640 kept", st.Mode())
	}
	if err := s.Remove(); err != nil {
		t.Fatal(err)
	}
	if n := leftovers(t, dir); len(n) != 1 {
		t.Errorf("files left after Remove: %v", n)
	}
}

// TestSpareReaderKeepsItsFile: a reader that opened the file before two
// publishes reads, all along, the file it opened, whole: a spare that is
// open anywhere is never written over.
func TestSpareReaderKeepsItsFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "x.cdb")
	s := &Spare{Path: p, Perm: 0o644}
	s.Write(put("one"))
	s.Write(put("two"))
	r, err := os.Open(p) // "two", about to become the spare
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for _, c := range []string{"three", "four!", "five"} {
		if err := s.Write(put(c)); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 16)
		n, _ := r.ReadAt(b, 0)
		if string(b[:n]) != "two" {
			t.Fatalf("after publishing %q the reader's file reads %q", c, b[:n])
		}
		if got, _ := os.ReadFile(p); string(got) != c {
			t.Fatalf("published %q, want %q", got, c)
		}
	}
}

// TestSpareNeverFollowed: a symlink or a second hard link at the spare's
// name is never written through; a failed write publishes nothing.
func TestSpareNeverFollowed(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "x.cdb")
	s := &Spare{Path: p, Perm: 0o644}
	s.Write(put("one"))
	target := filepath.Join(dir, "passwd")
	os.WriteFile(target, []byte("root:x:0:0"), 0o644)
	os.Remove(SpareName(p))
	if err := os.Symlink(target, SpareName(p)); err != nil {
		t.Fatal(err)
	}
	if err := s.Write(put("two")); err != nil {
		t.Fatal(err)
	}
	os.Remove(SpareName(p))
	if err := os.Link(target, SpareName(p)); err != nil {
		t.Fatal(err)
	}
	if err := s.Write(put("three")); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(target); string(b) != "root:x:0:0" {
		t.Errorf("the file behind the spare's name became %q", b)
	}
	if b, _ := os.ReadFile(p); string(b) != "three" {
		t.Errorf("published %q", b)
	}
	// A directory at the spare's name: published all the same.
	os.Remove(SpareName(p))
	if err := os.Mkdir(SpareName(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := s.Write(put("four")); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p); string(b) != "four" {
		t.Errorf("published %q beside a directory named as the spare", b)
	}
	os.Remove(SpareName(p))
	s.Write(put("three"))
	boom := errors.New("boom")
	if err := s.Write(func(f *os.File) error { f.WriteString("half"); return boom }); !errors.Is(err, boom) {
		t.Fatalf("err %v", err)
	}
	if b, _ := os.ReadFile(p); string(b) != "three" {
		t.Errorf("after a failed write: %q", b)
	}
}
