package atomic

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func leftovers(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "x.cdb")
	if err := WriteFile(p, 0o644, func(f *os.File) error {
		_, err := f.WriteString("new")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	if string(b) != "new" {
		t.Fatalf("got %q", b)
	}
	st, _ := os.Stat(p)
	if st.Mode().Perm()&^0o644 != 0 || st.Mode().Perm()&0o600 != 0o600 {
		t.Errorf("mode %v", st.Mode())
	}
	if n := leftovers(t, dir); len(n) != 1 {
		t.Errorf("files left: %v", n)
	}
}

func TestKeepsMode(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "x.cdb")
	os.WriteFile(p, []byte("old"), 0o640)
	os.Chmod(p, 0o640)
	if err := WriteFile(p, 0o644, func(f *os.File) error { return nil }); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(p)
	if st.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want 0640", st.Mode())
	}
}

func TestFailureKeepsOld(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "x.cdb")
	os.WriteFile(p, []byte("old"), 0o644)
	err := WriteFile(p, 0o644, func(f *os.File) error {
		f.WriteString("partial")
		return syscall.ENOSPC
	})
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("err %v", err)
	}
	b, _ := os.ReadFile(p)
	if string(b) != "old" {
		t.Fatalf("old file changed: %q", b)
	}
	if n := leftovers(t, dir); len(n) != 1 {
		t.Errorf("temp file left: %v", n)
	}
}

func TestNoDir(t *testing.T) {
	p := filepath.Join(t.TempDir(), "missing", "x.cdb")
	if err := WriteFile(p, 0o644, func(f *os.File) error { return nil }); err == nil {
		t.Fatal("no error")
	}
}

func TestTargetNotRegular(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "x.cdb")
	os.Mkdir(p, 0o755)
	if err := WriteFile(p, 0o644, func(f *os.File) error { return nil }); err == nil {
		t.Fatal("no error")
	}
	if n := leftovers(t, dir); len(n) != 1 {
		t.Errorf("temp file left: %v", n)
	}
}
