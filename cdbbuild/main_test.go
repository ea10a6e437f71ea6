package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/poprelay/poprelay/internal/cdbtest"
)

type result struct {
	code           int
	stdout, stderr string
}

func runIn(args []string, stdin io.Reader) result {
	var out, errb bytes.Buffer
	code := run(args, stdin, &out, &errb)
	return result{code, out.String(), errb.String()}
}

// TestVectors runs cdbbuild CDB TMP < rules on every vector: same exit
// status, same stderr (as "cdbbuild:", and byte for byte when named
// tcprules), empty stdout, same CDB bytes; on failure CDB untouched and
// TMP removed. Then -c agrees, and -d prints rules that compile back to
// the same bytes.
func TestVectors(t *testing.T) {
	defer func(p string) { prog = p }(prog)
	for _, dir := range cdbtest.Vectors(t) {
		name := cdbtest.Name(dir)
		for _, as := range []string{"cdbbuild", "tcprules"} {
			t.Run(name+"/"+as, func(t *testing.T) {
				prog = as
				input := cdbtest.Read(t, filepath.Join(dir, "rules"))
				wantExit := strings.TrimSpace(string(cdbtest.Read(t, cdbtest.Expect(dir, "exit"))))
				wantErr := string(cdbtest.Read(t, cdbtest.Expect(dir, "stderr")))
				wantErr = strings.ReplaceAll(wantErr, "tcprules: ", as+": ")
				tmp := t.TempDir()
				target, tmpf := filepath.Join(tmp, "rules.cdb"), filepath.Join(tmp, "rules.tmp")
				// A previous database must survive a failure.
				old := []byte("old database")
				os.WriteFile(target, old, 0o644)
				r := runIn([]string{target, tmpf}, bytes.NewReader(input))
				if fmt.Sprint(r.code) != wantExit || r.stderr != wantErr || r.stdout != "" {
					t.Fatalf("got exit %d stderr %q stdout %q; want %s %q", r.code, r.stderr, r.stdout, wantExit, wantErr)
				}
				if _, err := os.Stat(tmpf); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("TMP left behind: %v", err)
				}
				got := cdbtest.Read(t, target)
				if r.code != 0 {
					if !bytes.Equal(got, old) {
						t.Error("CDB modified on failure")
					}
					return
				}
				if want := cdbtest.Read(t, cdbtest.Expect(dir, "cdb")); !bytes.Equal(got, want) {
					t.Fatal("CDB differs from the reference")
				}
				st, _ := os.Stat(target)
				if st.Mode().Perm()&^0o644 != 0 {
					t.Errorf("mode %v", st.Mode())
				}
			})
		}
		t.Run(name+"/check", func(t *testing.T) {
			prog = "cdbbuild"
			wantExit := strings.TrimSpace(string(cdbtest.Read(t, cdbtest.Expect(dir, "exit"))))
			r := runIn([]string{"-c", filepath.Join(dir, "rules")}, nil)
			if fmt.Sprint(r.code) != wantExit || r.stdout != "" {
				t.Errorf("-c: %+v, want exit %s", r, wantExit)
			}
			if r.code != 0 && !strings.HasPrefix(r.stderr, "cdbbuild: "+filepath.Join(dir, "rules")+":") {
				t.Errorf("-c message %q", r.stderr)
			}
		})
		cdbFile := cdbtest.Expect(dir, "cdb")
		if _, err := os.Stat(cdbFile); err != nil {
			continue
		}
		t.Run(name+"/dump", func(t *testing.T) {
			prog = "cdbbuild"
			r := runIn([]string{"-d", cdbFile}, nil)
			if r.code != 0 {
				// Only 024's "1.2.4-5" has no rules line.
				if r.code != 100 || !strings.Contains(r.stdout, "# not a rules line") || !strings.Contains(name, "024") {
					t.Fatalf("-d: %+v", r)
				}
				return
			}
			tmp := t.TempDir()
			back := runIn([]string{filepath.Join(tmp, "b.cdb"), filepath.Join(tmp, "b.tmp")}, strings.NewReader(r.stdout))
			if back.code != 0 {
				t.Fatalf("-d output does not compile: %+v\n%s", back, r.stdout)
			}
			if !bytes.Equal(cdbtest.Read(t, filepath.Join(tmp, "b.cdb")), cdbtest.Read(t, cdbFile)) {
				t.Errorf("-d output compiles to other bytes:\n%s", r.stdout)
			}
		})
	}
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

func TestRun(t *testing.T) {
	dir := t.TempDir()
	os.Mkdir(filepath.Join(dir, "sub"), 0o755)
	p := func(s string) string { return filepath.Join(dir, s) }
	good := "1.2.3.4:allow,RELAYCLIENT=\"\"\n::1:deny\n"
	tests := []struct {
		name   string
		args   []string
		stdin  io.Reader
		code   int
		stderr string // exact, with DIR for the temp dir
		stdout string // prefix
	}{
		{"ok", []string{p("a.cdb"), p("a.tmp")}, strings.NewReader(good), 0, "", ""},
		{"extra args ignored", []string{p("a.cdb"), p("a.tmp"), "extra", "-x"}, strings.NewReader(good), 0, "", ""},
		{"empty input", []string{p("e.cdb"), p("e.tmp")}, strings.NewReader(""), 0, "", ""},
		{"no args", nil, nil, 100, "cdbbuild: usage: cdbbuild rules.cdb rules.tmp\n", ""},
		{"one arg", []string{"x.cdb"}, nil, 100, "cdbbuild: usage: cdbbuild rules.cdb rules.tmp\n", ""},
		{"bad option", []string{"-x", "a", "b"}, nil, 100, "cdbbuild: usage: cdbbuild rules.cdb rules.tmp\n", ""},
		{"-d without file", []string{"-d"}, nil, 100, "cdbbuild: usage: cdbbuild rules.cdb rules.tmp\n", ""},
		{"-c two files", []string{"-c", "a", "b"}, nil, 100, "cdbbuild: usage: cdbbuild rules.cdb rules.tmp\n", ""},
		{"-h", []string{"-h"}, nil, 0, "", "usage: cdbbuild rules.cdb rules.tmp"},
		{"--help", []string{"--help"}, nil, 0, "", "usage: cdbbuild rules.cdb rules.tmp"},
		{"-- then names", []string{"--", p("-n.cdb"), p("-n.tmp")}, strings.NewReader(good), 0, "", ""},
		{"parse error", []string{p("b.cdb"), p("b.tmp")}, strings.NewReader("1.2.3.4:allow\nbad:x \t\n"), 100,
			"cdbbuild: fatal: unable to parse this line: bad:x\n", ""},
		{"NUL cuts the message as in C", []string{p("b.cdb"), p("b.tmp")}, strings.NewReader(":allow,A=\"x\x00y\"z\n"), 100,
			"cdbbuild: fatal: unable to parse this line: :allow,A=\"x\n", ""},
		{"missing dir", []string{p("nodir/a.cdb"), p("nodir/a.tmp")}, strings.NewReader(good), 111,
			"cdbbuild: fatal: unable to create DIR/nodir/a.tmp: file does not exist\n", ""},
		{"TMP is a directory", []string{p("a.cdb"), p("sub")}, strings.NewReader(good), 111,
			"cdbbuild: fatal: unable to create DIR/sub: is a directory\n", ""},
		{"CDB is a directory", []string{p("sub"), p("c.tmp")}, strings.NewReader(good), 111,
			"cdbbuild: fatal: unable to move DIR/c.tmp to DIR/sub: is a directory\n", ""},
		{"TMP and CDB in different dirs missing", []string{p("nodir/a.cdb"), p("d.tmp")}, strings.NewReader(good), 111,
			"cdbbuild: fatal: unable to move DIR/d.tmp to DIR/nodir/a.cdb: file does not exist\n", ""},
		{"read error", []string{p("r.cdb"), p("r.tmp")}, errReader{syscall.EIO}, 111,
			"cdbbuild: fatal: unable to read input: input/output error\n", ""},
		{"-c ok", []string{"-c"}, strings.NewReader(good), 0, "", ""},
		{"-c bad stdin", []string{"-c"}, strings.NewReader("\n\nx:y\n"), 100,
			"cdbbuild: -:3: unable to parse this line: x:y\n", ""},
		{"-c - bad", []string{"-c", "-"}, strings.NewReader("2001:db8::1:permit\n"), 100,
			"cdbbuild: -:1: unable to parse this line: 2001:db8::1:permit\n", ""},
		{"-c missing file", []string{"-c", p("none")}, nil, 111,
			"cdbbuild: fatal: unable to open DIR/none: file does not exist\n", ""},
		{"-c read error", []string{"-c"}, errReader{syscall.EIO}, 111,
			"cdbbuild: fatal: unable to read -: input/output error\n", ""},
		{"-d missing", []string{"-d", p("none.cdb")}, nil, 111,
			"cdbbuild: fatal: unable to read DIR/none.cdb: file does not exist\n", ""},
		{"-d directory", []string{"-d", p("sub")}, nil, 111,
			"cdbbuild: fatal: unable to read DIR/sub: is a directory\n", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := runIn(tc.args, tc.stdin)
			want := strings.ReplaceAll(tc.stderr, "DIR", dir)
			if r.code != tc.code || r.stderr != want || !strings.HasPrefix(r.stdout, tc.stdout) || (tc.stdout == "" && r.stdout != "") {
				t.Errorf("got %d %q %q; want %d %q %q", r.code, r.stderr, r.stdout, tc.code, want, tc.stdout)
			}
		})
	}
	// The good database dumps back.
	r := runIn([]string{"-d", p("a.cdb")}, nil)
	if r.code != 0 || r.stdout != "1.2.3.4:allow,RELAYCLIENT=\"\"\n::1:deny\n" || r.stderr != "" {
		t.Errorf("-d: %+v", r)
	}
	r = runIn([]string{"-d", p("e.cdb")}, nil)
	if r.code != 0 || r.stdout != "" || r.stderr != "" {
		t.Errorf("-d empty: %+v", r)
	}
}

// TestTmpNotRegular: a failing run never removes a TMP that is not a
// regular file (a FIFO here; as root it could be /dev/full).
func TestTmpNotRegular(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Skip("SKIP: mkfifo:", err)
	}
	// Keep a reader open so opening the FIFO for writing does not block.
	rd, err := os.OpenFile(fifo, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	r := runIn([]string{filepath.Join(dir, "x.cdb"), fifo}, strings.NewReader("bad:x\n"))
	if r.code != 100 {
		t.Errorf("%+v", r)
	}
	if _, err := os.Lstat(fifo); err != nil {
		t.Errorf("the FIFO was removed: %v", err)
	}
	// -d on a FIFO with no writer answers at once instead of blocking.
	r = runIn([]string{"-d", fifo}, nil)
	if r.code != 100 || r.stderr != "cdbbuild: fatal: unable to read "+fifo+": not a regular file\n" {
		t.Errorf("-d FIFO: %+v", r)
	}
}

// TestUnwritableDir runs cdbbuild as an unprivileged user on a directory
// it may not write: 111, "access denied", as tcprules says.
func TestUnwritableDir(t *testing.T) {
	// Not t.TempDir: its parent is private, and nobody must reach dir.
	dir, err := os.MkdirTemp("", "cdbbuild-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ro := filepath.Join(dir, "ro")
	if err := os.Mkdir(ro, 0o555); err != nil {
		t.Fatal(err)
	}
	want := "cdbbuild: fatal: unable to create " + ro + "/a.tmp: access denied\n"
	if os.Geteuid() != 0 {
		r := runIn([]string{ro + "/a.cdb", ro + "/a.tmp"}, strings.NewReader(":allow\n"))
		if r.code != 111 || r.stderr != want {
			t.Errorf("%+v", r)
		}
		return
	}
	// As root, write access is never denied: build cdbbuild and run it
	// as nobody.
	os.Chmod(dir, 0o755)
	exe := filepath.Join(dir, "cdbbuild")
	if out, err := exec.Command("go", "build", "-o", exe, ".").CombinedOutput(); err != nil {
		t.Skipf("SKIP: go build: %v %s", err, out)
	}
	cmd := exec.Command(exe, ro+"/a.cdb", ro+"/a.tmp")
	cmd.Stdin = strings.NewReader(":allow\n")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	err = cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 111 || stderr.String() != want {
		t.Errorf("as nobody: %v %q", err, stderr.String())
	}
}

// TestDumpCorrupt: -d on truncated and garbled databases never panics
// and fails cleanly with 100.
func TestDumpCorrupt(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "g.cdb")
	r := runIn([]string{good, good + ".tmp"}, strings.NewReader("1.2.3.4:allow,A=\"x\"\n:deny\n=h:allow,B='y'\n"))
	if r.code != 0 {
		t.Fatal(r)
	}
	b := cdbtest.Read(t, good)
	bad := filepath.Join(dir, "bad.cdb")
	check := func(data []byte) {
		os.WriteFile(bad, data, 0o644)
		r := runIn([]string{"-d", bad}, nil)
		if r.code != 0 && r.code != 100 {
			t.Fatalf("exit %d: %+v", r.code, r)
		}
		if r.code == 100 && !strings.HasPrefix(r.stderr, "cdbbuild: fatal: ") {
			t.Fatalf("message %q", r.stderr)
		}
	}
	for n := 0; n < len(b); n++ {
		check(b[:n])
	}
	os.WriteFile(bad, b[:100], 0o644)
	if r := runIn([]string{"-d", bad}, nil); r.code != 100 || r.stderr != "cdbbuild: fatal: unable to read "+bad+": corrupt database\n" {
		t.Errorf("truncated: %+v", r)
	}
	rnd := rand.New(rand.NewPCG(3, 4))
	for range 500 {
		c := bytes.Clone(b)
		for range 1 + rnd.IntN(4) {
			c[rnd.IntN(len(c))] = byte(rnd.Uint32())
		}
		check(c)
	}
}
