package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// With --log dovecot each line goes out in Dovecot's log protocol: the
// audit line of a grant as info, a refusal or a failure to record as a
// warning, a fatal error as an error; without it, plain lines.
func TestRunLogDovecot(t *testing.T) {
	sys := system{peer: func() (string, bool) { return "", false }, trusted: func() (bool, string) { return true, "" }}
	dir := t.TempDir()
	pfx := func(typ int) string { return fmt.Sprintf("\001%c%d checkpassword-wrap: ", typ, os.Getpid()) }
	for _, tc := range []struct {
		name string
		args []string
		env  []string
		want string
	}{
		{"grant", []string{"--log", "dovecot", "--spool", dir}, []string{"IP=198.51.100.7", "USER=alice"},
			pfx(dvInfo) + "ip=198.51.100.7 user=alice service=pop3\n"},
		{"grant, env", []string{"--spool", dir}, []string{"IP=198.51.100.8", "USER=alice", "POPRELAY_LOG=dovecot"},
			pfx(dvInfo) + "ip=198.51.100.8 user=alice service=pop3\n"},
		{"spool missing", []string{"--log=dovecot", "--spool", filepath.Join(dir, "no")}, []string{"IP=198.51.100.9", "USER=alice"},
			pfx(dvWarning) + "unable to record ip=198.51.100.9 user=alice service=pop3: "},
		{"never granted", []string{"--log", "dovecot", "--spool", dir}, []string{"IP=127.0.0.1", "USER=alice"},
			pfx(dvWarning) + "not recording ip=127.0.0.1 user=alice service=pop3: never granted: loopback 127.0.0.1\n"},
		{"plain", []string{"--log", "plain", "--spool", dir}, []string{"IP=198.51.100.10", "USER=alice", "POPRELAY_LOG=dovecot"},
			"checkpassword-wrap: ip=198.51.100.10 user=alice service=pop3\n"},
		{"default", []string{"--spool", dir}, []string{"IP=198.51.100.11", "USER=alice"},
			"checkpassword-wrap: ip=198.51.100.11 user=alice service=pop3\n"},
	} {
		var stderr strings.Builder
		res := run(append(tc.args, "/bin/true"), tc.env, &stderr, sys)
		if res.argv == nil || !strings.HasPrefix(stderr.String(), tc.want) || strings.Count(stderr.String(), "\n") != 1 {
			t.Errorf("%s: %+v, stderr %q; want %q", tc.name, res, stderr.String(), tc.want)
		}
	}

	// The exec failure after a dovecot-mode run is an error.
	var stderr strings.Builder
	res := run([]string{"--log", "dovecot", "--spool", dir, "/no/such/prog"}, []string{"IP=198.51.100.12", "USER=alice"}, &stderr, sys)
	stderr.Reset()
	if code := execNext(res, nil, res.stderr); code != 111 ||
		stderr.String() != pfx(dvError)+"unable to run /no/such/prog: no such file or directory\n" {
		t.Errorf("execNext = %d, %q", code, stderr.String())
	}

	for _, bad := range [][]string{{"--log", "syslog", "p"}, {"--log=", "p"}} {
		var stderr strings.Builder
		if res := run(bad, nil, &stderr, sys); res.argv != nil || res.code != 100 {
			t.Errorf("run(%q) = %+v", bad, res)
		}
	}
	if res := run([]string{"p"}, []string{"POPRELAY_LOG=bogus"}, &stderr, sys); res.argv != nil || res.code != 100 {
		t.Errorf("POPRELAY_LOG=bogus: %+v", res)
	}
}

// A line written in pieces goes out whole, in one write.
func TestDovecotLogWrites(t *testing.T) {
	var w writes
	l := &dovecotLog{w: &w, pid: 42}
	for _, p := range []string{"checkpassword-wrap: ip=", "1.2.3.4\ncheckpassword-wrap: fatal: x\ncheckpassword-wrap: warning: y\nrest"} {
		if n, err := l.Write([]byte(p)); n != len(p) || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
	}
	want := writes{"\001\00242 checkpassword-wrap: ip=1.2.3.4\n", "\001\00442 checkpassword-wrap: x\n", "\001\00342 checkpassword-wrap: y\n"}
	if strings.Join(w, "|") != strings.Join(want, "|") {
		t.Errorf("writes %q; want %q", w, want)
	}
}

type writes []string

func (w *writes) Write(p []byte) (int, error) { *w = append(*w, string(p)); return len(p), nil }
