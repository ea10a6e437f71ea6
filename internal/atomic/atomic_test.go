package atomic

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
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

// TestClean: the debris of a killed WriteFile goes, nothing else does, and
// a symlink of a debris name is removed without touching its target.
func TestClean(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "x.cdb")
	os.WriteFile(p, []byte("live"), 0o644)
	target := filepath.Join(dir, "precious")
	os.WriteFile(target, []byte("keep"), 0o644)
	for _, n := range []string{".x.cdb.tmp123", ".x.cdb.tmp4294967295"} {
		os.WriteFile(filepath.Join(dir, n), []byte("half"), 0o600)
	}
	os.Symlink(target, filepath.Join(dir, ".x.cdb.tmp77"))
	os.Mkdir(filepath.Join(dir, ".x.cdb.tmp9"), 0o755)
	for _, n := range []string{".x.cdb.tmp", ".x.cdb.tmp12a", ".x.cdb.lock", ".y.cdb.tmp1", "x.cdb.tmp1", ".x.cdb.tmp1.keep"} {
		os.WriteFile(filepath.Join(dir, n), nil, 0o600)
	}
	gone, err := Clean(p)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{".x.cdb.tmp123", ".x.cdb.tmp4294967295", ".x.cdb.tmp77"}; !slices.Equal(gone, want) {
		t.Errorf("Clean removed %q, want %q", gone, want)
	}
	want := []string{".x.cdb.lock", ".x.cdb.tmp", ".x.cdb.tmp1.keep", ".x.cdb.tmp12a", ".x.cdb.tmp9", ".y.cdb.tmp1", "precious", "x.cdb", "x.cdb.tmp1"}
	if got := leftovers(t, dir); !slices.Equal(got, want) {
		t.Errorf("left %q, want %q", got, want)
	}
	if b, _ := os.ReadFile(target); string(b) != "keep" {
		t.Errorf("symlink target changed: %q", b)
	}
	if _, err := Clean(filepath.Join(dir, "none", "x.cdb")); err == nil {
		t.Error("Clean in a missing directory: no error")
	}
}

// TestCleanAfterKill: a WriteFile interrupted after its temp file exists
// (as by kill -9) leaves debris that Clean finds by name.
func TestCleanAfterKill(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "x.cdb")
	var tmp string
	WriteFile(p, 0o644, func(f *os.File) error {
		tmp = f.Name()
		// What a killed process leaves: a hard link keeps the temp file
		// past WriteFile's removal on failure.
		if err := os.Link(tmp, tmp+".saved"); err != nil {
			t.Fatal(err)
		}
		return errors.New("killed")
	})
	if err := os.Rename(tmp+".saved", tmp); err != nil {
		t.Fatal(err)
	}
	gone, err := Clean(p)
	if err != nil || len(gone) != 1 || gone[0] != filepath.Base(tmp) {
		t.Errorf("Clean = %q, %v; want [%s]", gone, err, filepath.Base(tmp))
	}
}
