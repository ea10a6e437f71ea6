package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/poprelay/poprelay/internal/wait"
)

// TestWarnVpopmail: rebuild, check and watch say, in one line, that
// vpopmail's roaming users are on while its open-smtp file is written
// within the grant lifetime; an old one, none, or a directory say
// nothing.
func TestWarnVpopmail(t *testing.T) {
	f := newFixture(t)
	f.ok("rebuild")
	open := filepath.Join(f.dir, "vpopmail", "etc", "open-smtp")
	f.openSMTP = open
	f.ok("rebuild") // no such file
	os.MkdirAll(filepath.Dir(open), 0o755)
	f.write(open, "198.51.100.7:allow,RELAYCLIENT=\"\",RBLSMTPD=\"\"\t1700000000\n")
	now := time.Now()
	for _, tc := range []struct {
		name  string
		mtime time.Time
		warn  bool
	}{
		{"just written", now.Add(-3 * time.Minute), true},
		{"within the max age", now.Add(-59 * time.Minute), true},
		{"in the future", now.Add(time.Minute), true},
		{"older than the max age", now.Add(-61 * time.Minute), false},
	} {
		if err := os.Chtimes(open, tc.mtime, tc.mtime); err != nil {
			t.Fatal(err)
		}
		f.now = now
		for _, args := range [][]string{{"rebuild"}, {"check", "192.0.2.5"}} {
			code, _, errs := f.run(args...)
			if code != 0 {
				t.Fatalf("%s: relayctl %q: exit %d: %s", tc.name, args, code, errs)
			}
			want := "relayctl: warning: vpopmail's roaming users are on: " + open + " was written "
			if got := strings.Contains(errs, want); got != tc.warn || strings.Count(errs, "\n") > 1 {
				t.Errorf("%s: relayctl %q: stderr %q; want the warning %v", tc.name, args, errs, tc.warn)
			}
			if tc.warn && !strings.HasSuffix(errs, "ago, and vchkpw rebuilds the CDB from it with tcprules at every login, replacing poprelay's grants; rebuild vpopmail with --disable-roaming-users (relayctl import --vpopmail "+open+" takes its grants over)\n") {
				t.Errorf("%s: %q", tc.name, errs)
			}
		}
	}
	if err := os.Remove(open); err != nil {
		t.Fatal(err)
	}
	os.Mkdir(open, 0o755)
	f.ok("rebuild")
}

// TestWarnVpopmailWatch: the watcher says it once, when it starts.
func TestWarnVpopmailWatch(t *testing.T) {
	f := newFixture(t)
	open := filepath.Join(f.dir, "open-smtp")
	f.write(open, "198.51.100.7:allow\t1700000000\n")
	var errb bytes.Buffer
	w := &syncWriter{w: &errb}
	e := &env{stdin: strings.NewReader(""), stdout: io.Discard, stderr: w,
		lookup:   func(k string) (string, bool) { v, ok := f.env[k]; return v, ok },
		now:      time.Now,
		openSMTP: func() string { return open },
	}
	stop := runWatchEnv(t, e)
	said := func() string {
		w.mu.Lock()
		defer w.mu.Unlock()
		return errb.String()
	}
	want := "relayctl: warning: vpopmail's roaming users are on: " + open + " was written "
	wait.For(t, "the watcher's warning about vpopmail's roaming users", func() bool { return strings.Contains(said(), want) })
	stop()
	if n := strings.Count(said(), want); n != 1 {
		t.Errorf("the watcher said it %d times:\n%s", n, said())
	}
}
