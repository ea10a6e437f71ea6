package never

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestOpenNotRegular: a FIFO (with no writer: a plain open would block
// forever), a directory and a device are refused at once.
func TestOpenNotRegular(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{fifo, dir, os.DevNull} {
		done := make(chan error, 1)
		go func() {
			_, err := Load(p)
			done <- err
		}()
		select {
		case err := <-done:
			if !errors.Is(err, ErrNotRegular) {
				t.Errorf("Load(%s) = %v, want ErrNotRegular", p, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("Load(%s) blocks", p)
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
