package lock

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func TestExcludes(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.lock")
	var inside atomic.Int32
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 20 {
				l, err := Lock(p, time.Minute)
				if err != nil {
					t.Error(err)
					return
				}
				if inside.Add(1) != 1 {
					t.Error("two holders")
				}
				time.Sleep(100 * time.Microsecond) // pacing: hold the lock a while, so the others contend
				inside.Add(-1)
				l.Unlock()
			}
		})
	}
	wg.Wait()
}

func TestNoDir(t *testing.T) {
	if _, err := Lock(filepath.Join(t.TempDir(), "no", "x.lock"), time.Second); err == nil {
		t.Fatal("no error")
	}
}

func mode(t *testing.T, p string) (os.FileMode, uint32, uint32) {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return fi.Mode(), st.Uid, st.Gid
}

// A new lock file is 0600 (whatever the umask), or 0660 with the
// directory's group where that group may write the directory.
func TestCreatedPrivate(t *testing.T) {
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	p := filepath.Join(dir, "x.lock")
	old := syscall.Umask(0)
	l, err := Lock(p, time.Second)
	syscall.Umask(old)
	if err != nil {
		t.Fatal(err)
	}
	l.Unlock()
	if m, _, _ := mode(t, p); m != 0o600 {
		t.Errorf("mode %v, want 0600", m)
	}
	if os.Geteuid() != 0 {
		t.Skip("SKIP: the group case needs root (chown to a group of its own)")
	}
	gdir := filepath.Join(dir, "g")
	os.Mkdir(gdir, 0o770)
	os.Chown(gdir, 0, 65534)
	os.Chmod(gdir, 0o770)
	p = filepath.Join(gdir, "x.lock")
	l, err = Lock(p, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	l.Unlock()
	if m, uid, gid := mode(t, p); m != 0o660 || uid != 0 || gid != 65534 {
		t.Errorf("mode %v uid %d gid %d, want 0660 0 65534", m, uid, gid)
	}
}

// An existing lock file others can open is repaired by its owner (or
// root), and the repair is reported.
func TestRepaired(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.lock")
	os.WriteFile(p, nil, 0o644)
	os.Chmod(p, 0o644)
	if os.Geteuid() == 0 {
		os.Chown(p, 65534, 65534) // root takes it back too
	}
	l, err := Lock(p, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	l.Unlock()
	if !strings.Contains(l.Repaired, "mode 0644") {
		t.Errorf("Repaired %q", l.Repaired)
	}
	m, uid, _ := mode(t, p)
	if m != 0o600 || int(uid) != os.Geteuid() {
		t.Errorf("after repair: mode %v uid %d", m, uid)
	}
	l, err = Lock(p, time.Second)
	if err != nil || l.Repaired != "" {
		t.Errorf("second lock: %v, Repaired %q", err, l.Repaired)
	}
	l.Unlock()
}

// A symlink, FIFO or directory at the lock path is refused at once, never
// followed or opened (a FIFO would block).
func TestNotRegular(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "target")
	os.WriteFile(target, nil, 0o600)
	os.Symlink(target, filepath.Join(dir, "link.lock"))
	os.Symlink(filepath.Join(dir, "none"), filepath.Join(dir, "dangling.lock"))
	syscall.Mkfifo(filepath.Join(dir, "fifo.lock"), 0o600)
	os.Mkdir(filepath.Join(dir, "dir.lock"), 0o700)
	for _, name := range []string{"link.lock", "dangling.lock", "fifo.lock", "dir.lock"} {
		_, err := Lock(filepath.Join(dir, name), time.Second)
		if !errors.Is(err, ErrUnsafe) {
			t.Errorf("%s: %v, want ErrUnsafe", name, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "none")); err == nil {
		t.Error("a dangling symlink was followed")
	}
}

// A lock held elsewhere (another open file description, as another
// process has) makes Lock give up with ErrBusy.
func TestBusy(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.lock")
	l, err := Lock(p, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Lock(p, 50*time.Millisecond)
	if !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "held by another process for 50ms") {
		t.Errorf("held lock: %v", err)
	}
	l.Unlock()
	l, err = Lock(p, 0)
	if err != nil {
		t.Fatalf("released lock: %v", err)
	}
	l.Unlock()
}
