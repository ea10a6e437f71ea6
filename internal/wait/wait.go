// Package wait is how poprelay's tests wait for something to happen: a
// key in a CDB, a line in a log, a grant in a mirror. They poll the
// condition until it holds, with a deadline so generous that reaching it
// means the thing never happens, not that the machine is slow. No test
// sleeps a fixed time to wait for something, and none asserts how long
// something took: measurements belong in benchmarks. Only test code
// imports this package.
package wait

import (
	"testing"
	"time"
)

// Patience is how long For and Succeeds wait: minutes, not seconds, so
// that a machine with every CPU busy (make soak, a shared CI runner) is
// never mistaken for a bug. Each wait still ends in time for the test
// binary's -timeout to report which condition never held.
const Patience = 2 * time.Minute

// For polls cond until it holds, failing the test (t.Fatalf, naming
// what) if it has not after Patience.
func For(t testing.TB, what string, cond func() bool) {
	t.Helper()
	if !poll(t, cond) {
		t.Fatalf("gave up after %v waiting for %s", Patience, what)
	}
}

// Succeeds calls f until it returns nil, failing the test with f's last
// error if it has not after Patience: for an operation that fails until
// something comes up (a server restarting, a file appearing).
func Succeeds(t testing.TB, what string, f func() error) {
	t.Helper()
	var err error
	if !poll(t, func() bool { err = f(); return err == nil }) {
		t.Fatalf("gave up after %v waiting for %s: %v", Patience, what, err)
	}
}

// Holds polls cond until it holds and reports whether it did before
// Patience ran out, without failing the test: for a caller that says
// itself what did not happen.
func Holds(t testing.TB, cond func() bool) bool {
	t.Helper()
	return poll(t, cond)
}

// Deadline is when a wait starting now gives up: after Patience, or a
// little before the test binary's own deadline (go test -timeout), so
// that a wait that fails names its condition instead of ending in a
// panic with every goroutine's stack.
func Deadline(t testing.TB) time.Time {
	end := time.Now().Add(Patience)
	if dt, ok := t.(interface{ Deadline() (time.Time, bool) }); ok {
		if d, ok := dt.Deadline(); ok {
			if d = d.Add(-10 * time.Second); d.Before(end) {
				end = d
			}
		}
	}
	return end
}

// poll reports whether cond held before Deadline(t).
func poll(t testing.TB, cond func() bool) bool {
	end := Deadline(t)
	pause := time.Millisecond
	for !cond() {
		if time.Now().After(end) {
			return cond()
		}
		time.Sleep(pause) // pacing: the pause between two looks at cond
		pause = min(2*pause, 50*time.Millisecond)
	}
	return true
}
