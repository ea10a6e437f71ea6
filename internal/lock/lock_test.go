package lock

import (
	"path/filepath"
	"sync"
	"sync/atomic"
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
				l, err := Lock(p)
				if err != nil {
					t.Error(err)
					return
				}
				if inside.Add(1) != 1 {
					t.Error("two holders")
				}
				time.Sleep(100 * time.Microsecond)
				inside.Add(-1)
				l.Unlock()
			}
		})
	}
	wg.Wait()
}

func TestNoDir(t *testing.T) {
	if _, err := Lock(filepath.Join(t.TempDir(), "no", "x.lock")); err == nil {
		t.Fatal("no error")
	}
}
