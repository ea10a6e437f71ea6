package wait

import (
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestFor(t *testing.T) {
	var n atomic.Int32
	For(t, "the third look", func() bool { return n.Add(1) == 3 })
	if n.Load() != 3 {
		t.Fatalf("cond called %d times, want 3", n.Load())
	}
	var m atomic.Int32
	Succeeds(t, "the second call", func() error {
		if m.Add(1) < 2 {
			return errors.New("not yet")
		}
		return nil
	})
	if m.Load() != 2 {
		t.Fatalf("f called %d times, want 2", m.Load())
	}
}

// soon is a test whose binary's deadline is now: every wait gives up at
// once, so the failure path runs without waiting Patience.
type soon struct {
	testing.TB
	failed string
}

func (s *soon) Helper()                           {}
func (s *soon) Deadline() (time.Time, bool)       { return time.Now(), true }
func (s *soon) Fatalf(format string, args ...any) { s.failed = fmt.Sprintf(format, args...) }

func TestGivesUp(t *testing.T) {
	s := &soon{TB: t}
	For(s, "a condition that never holds", func() bool { return false })
	if !strings.Contains(s.failed, "waiting for a condition that never holds") {
		t.Fatalf("For failed with %q", s.failed)
	}
	s.failed = ""
	Succeeds(s, "a server that never answers", func() error { return errors.New("connection refused") })
	if !strings.Contains(s.failed, "waiting for a server that never answers: connection refused") {
		t.Fatalf("Succeeds failed with %q", s.failed)
	}
}

// TestHolds: Holds says whether the condition came to hold, and fails
// nothing either way.
func TestHolds(t *testing.T) {
	var n atomic.Int32
	if !Holds(t, func() bool { return n.Add(1) == 3 }) || n.Load() != 3 {
		t.Fatalf("Holds: %d looks", n.Load())
	}
	s := &soon{TB: t}
	if Holds(s, func() bool { return false }) || s.failed != "" {
		t.Fatalf("Holds of a condition that never holds: true, or failed with %q", s.failed)
	}
}
