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

// TestReadOwned: a file its owner alone could have written is read whole;
// a symlink, a FIFO, a directory, a file others may write, one of another
// owner and one over the size are each refused at once with ErrUntrusted;
// a missing file is fs.ErrNotExist, not ErrUntrusted.
func TestReadOwned(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	if err := os.WriteFile(good, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, st, err := ReadOwned(good, 5); err != nil || string(b) != "hello" || st == nil {
		t.Fatalf("good file: %q, %v", b, err)
	}
	link := filepath.Join(dir, "link")
	fifo := filepath.Join(dir, "fifo")
	wide := filepath.Join(dir, "wide")
	if err := os.Symlink(good, link); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(wide, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(wide, 0o620); err != nil {
		t.Fatal(err)
	}
	cases := map[string]int64{link: 100, fifo: 100, dir: 100, wide: 100, good: 4}
	if os.Geteuid() == 0 {
		foreign := filepath.Join(dir, "foreign")
		if err := os.WriteFile(foreign, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(foreign, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		cases[foreign] = 100
	}
	for p, max := range cases {
		done := make(chan error, 1)
		go func() {
			_, _, err := ReadOwned(p, max)
			done <- err
		}()
		select {
		case err := <-done:
			if !errors.Is(err, ErrUntrusted) {
				t.Errorf("%s: %v, want ErrUntrusted", p, err)
			}
		case <-time.After(wait.Patience):
			t.Fatalf("%s: ReadOwned still waiting after %v", p, wait.Patience)
		}
	}
	if _, _, err := ReadOwned(filepath.Join(dir, "missing"), 100); !errors.Is(err, fs.ErrNotExist) || errors.Is(err, ErrUntrusted) {
		t.Errorf("missing file: %v, want fs.ErrNotExist alone", err)
	}
}
