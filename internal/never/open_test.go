package never

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestLoadNotRegular: a never-grant file that is not a regular file is
// refused with ErrNotRegular (regular.Open, whose tests show that a FIFO
// is refused at once, never read); a regular one loads.
func TestLoadNotRegular(t *testing.T) {
	dir := t.TempDir()
	for _, p := range []string{dir, os.DevNull} {
		if _, err := Load(p); !errors.Is(err, ErrNotRegular) {
			t.Errorf("Load(%s) = %v, want ErrNotRegular", p, err)
		}
	}
	f := filepath.Join(dir, "never")
	os.WriteFile(f, []byte("192.0.2.1\n"), 0o644)
	if s, err := Load(f); err != nil {
		t.Fatal(err)
	} else if _, refused := s.Refuse("192.0.2.1"); !refused {
		t.Error("entry of a regular file not loaded")
	}
}
