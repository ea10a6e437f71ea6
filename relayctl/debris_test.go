package main

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// TestDebrisCleaned: temp files a killed writer left beside the CDB go at
// the next write of any command that writes it, those in the spool once
// they are a minute old; a grant, a fresh temp file in the spool (a login
// in flight) and a symlink's target stay.
func TestDebrisCleaned(t *testing.T) {
	f := newFixture(t)
	f.ok("allow", "192.0.2.7")
	target := filepath.Join(f.dir, "precious")
	f.write(target, "keep")
	for _, args := range [][]string{{"rebuild"}, {"allow", "192.0.2.8"}, {"revoke", "192.0.2.8"}} {
		f.write(filepath.Join(f.dir, ".tcp.smtp.cdb.tmp12345"), "half a CDB")
		os.Symlink(target, filepath.Join(f.dir, ".tcp.smtp.cdb.tmp666"))
		f.ok(args...)
		if got := f.leftovers(); len(got) != 0 {
			t.Errorf("%q left in the CDB's directory: %q", args, got)
		}
	}
	if b, _ := os.ReadFile(target); string(b) != "keep" {
		t.Errorf("symlink target changed: %q", b)
	}

	debris := filepath.Join(f.spool, ".tmp-4242-1-abc")
	f.write(debris, "user=half")
	f.ok("rebuild")
	if _, err := os.Stat(debris); err != nil {
		t.Fatalf("a fresh temp file in the spool (a login in flight) was removed: %v", err)
	}
	f.now = time.Now().Add(2 * time.Minute)
	f.ok("rebuild")
	ents, _ := os.ReadDir(f.spool)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"192.0.2.7"}) {
		t.Errorf("spool after a rebuild a minute later: %q", names)
	}
	// An expire that folds the spool removes them too.
	f.write(debris, "user=half")
	f.ok("allow", "192.0.2.9", "--for", "1s")
	f.now = time.Now().Add(5 * time.Minute)
	f.ok("expire")
	if _, err := os.Lstat(debris); err == nil {
		t.Error("an expire that folded left a stale temp file")
	}
}
