package regular

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/poprelay/poprelay/internal/wait"
)

// TestOpen: a FIFO (with no writer: a plain open would block forever), a
// directory and a device are refused at once; a regular file opens.
func TestOpen(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{fifo, dir, os.DevNull} {
		done := make(chan error, 1)
		go func() {
			f, _, err := Open(p)
			if f != nil {
				f.Close()
			}
			done <- err
		}()
		select {
		case err := <-done:
			var pe *fs.PathError
			if !errors.Is(err, ErrNotRegular) || !errors.As(err, &pe) || pe.Path != p {
				t.Errorf("Open(%s) = %v, want ErrNotRegular in a PathError", p, err)
			}
		case <-time.After(wait.Patience):
			t.Fatalf("Open(%s) blocks", p)
		}
	}
	if _, _, err := Open(filepath.Join(dir, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Open(missing) = %v, want ErrNotExist", err)
	}
	file := filepath.Join(dir, "file")
	os.WriteFile(file, []byte("hello\n"), 0o644)
	f, st, err := Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if b, err := io.ReadAll(f); err != nil || string(b) != "hello\n" || st.Size() != 6 {
		t.Errorf("Open(file): read %q, %v, size %d", b, err, st.Size())
	}
}
