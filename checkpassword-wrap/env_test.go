package main

import (
	"encoding/json"
	"errors"
	"io"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
)

func TestEnvBounds(t *testing.T) {
	// 52 fields as Linux 6 prints them; env_start and env_end are 50, 51.
	fields := func(comm string, start, end string) []byte {
		f := []string{"4242", comm, "R"}
		for i := 4; i <= 52; i++ {
			switch i {
			case 50:
				f = append(f, start)
			case 51:
				f = append(f, end)
			default:
				f = append(f, "7")
			}
		}
		return []byte(strings.Join(f, " ") + "\n")
	}
	for _, c := range []struct {
		name       string
		stat       []byte
		start, end uintptr
		err        string
	}{
		{"plain", fields("(checkpassword-w)", "140733970862039", "140733970862059"), 140733970862039, 140733970862059, ""},
		{"empty environment", fields("(w)", "1000", "1000"), 1000, 1000, ""},
		{"a command name with spaces and parentheses", fields("(a) 1 2 (b ))", "5000", "5100"), 5000, 5100, ""},
		{"fields hidden", fields("(w)", "0", "0"), 0, 0, `env_start "0" and env_end "0" are no environment`},
		{"end before start", fields("(w)", "5000", "4999"), 0, 0, "are no environment"},
		{"too big", fields("(w)", "1000", "9000000"), 0, 0, "are no environment"},
		{"not a number", fields("(w)", "x", "1"), 0, 0, "are no environment"},
		{"too few fields (Linux before 3.5)", []byte("4242 (w) R 1 2 3\n"), 0, 0, "/proc/self/stat: 6 fields, no env_start and env_end"},
		{"no command name", []byte("4242 w R\n"), 0, 0, "no command name"},
	} {
		s, e, err := envBounds(c.stat)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: %d %d %v, want error %q", c.name, s, e, err, c.err)
			}
			continue
		}
		if err != nil || s != c.start || e != c.end {
			t.Errorf("%s: %d %d %v, want %d %d", c.name, s, e, err, c.start, c.end)
		}
	}
}

func TestSplitEnvBlock(t *testing.T) {
	for _, c := range []struct {
		block string
		want  []string
		err   bool
	}{
		{"", []string{}, false},
		{"A=1\x00", []string{"A=1"}, false},
		{"A=1\x00\x00B\x00A=2\x00", []string{"A=1", "", "B", "A=2"}, false},
		{"\x00", []string{""}, false},
		{"A=1", nil, true},
	} {
		got, err := splitEnvBlock([]byte(c.block))
		if (err != nil) != c.err || !slices.Equal(got, c.want) {
			t.Errorf("%q: %q %v, want %q", c.block, got, err, c.want)
		}
	}
}

// TestSecureEnv: secureEnv and goView are what the runtime and syscall
// make of an environment (checked against the real runtime by
// t/TestSecuritySetgidEnv).
func TestSecureEnv(t *testing.T) {
	for _, c := range []struct {
		env, secure, view []string
	}{
		{[]string{"A=1"}, []string{"A=1", "GOTRACEBACK=none"}, []string{"A=1"}},
		{[]string{}, []string{"GOTRACEBACK=none"}, []string{}},
		{[]string{"GOTRACEBACK=all", "A=1"}, []string{"GOTRACEBACK=none", "A=1"}, []string{"GOTRACEBACK=all", "A=1"}},
		{[]string{"GOTRACEBACK=", "GOTRACEBACK=crash"}, []string{"GOTRACEBACK=none", "GOTRACEBACK=none"}, []string{"GOTRACEBACK="}},
		{[]string{"GOTRACEBACKX=1", "A=1", "", "A=2", "B", "B", "=x", "=y"}, []string{"GOTRACEBACKX=1", "A=1", "", "A=2", "B", "B", "=x", "=y", "GOTRACEBACK=none"}, []string{"GOTRACEBACKX=1", "A=1", "B", "B", "=x"}},
	} {
		if got := secureEnv(c.env); !slices.Equal(got, c.secure) {
			t.Errorf("secureEnv(%q) = %q, want %q", c.env, got, c.secure)
		}
		if got := goView(c.env); !slices.Equal(got, c.view) {
			t.Errorf("goView(%q) = %q, want %q", c.env, got, c.view)
		}
	}
}

// TestCallerEnviron runs this test binary with an environment of
// duplicates, an empty entry, one without "=" and a GOTRACEBACK, given
// to execve as is: callerEnviron reads it back entry for entry.
func TestCallerEnviron(t *testing.T) {
	if os.Getenv("POPRELAY_ENV_HELPER") == "1" {
		env, err := callerEnviron(os.Environ())
		if err != nil {
			t.Fatal(err)
		}
		json.NewEncoder(os.Stdout).Encode(env)
		return
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	env := []string{"POPRELAY_ENV_HELPER=1", "A=1", "GOTRACEBACK=all", "", "A=2", "JUNK", "TCPREMOTEIP=192.0.2.1", "GOTRACEBACK=single", "Z=" + strings.Repeat("z", 100000)}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	pid, err := syscall.ForkExec(self, []string{self, "-test.run=^TestCallerEnviron$", "-test.v=false"}, &syscall.ProcAttr{
		Env:   env,
		Files: []uintptr{0, w.Fd(), 2},
	})
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(r)
	r.Close()
	var ws syscall.WaitStatus
	syscall.Wait4(pid, &ws, 0, nil)
	var got []string
	line, _, _ := strings.Cut(string(out), "\n")
	if err := json.Unmarshal([]byte(line), &got); err != nil || !ws.Exited() || ws.ExitStatus() != 0 {
		t.Fatalf("helper: %v, exit %v, output %.200q", err, ws, out)
	}
	if !slices.Equal(got, env) {
		t.Errorf("read back %.300q\nwant      %.300q", got, env)
	}

	// A copy that is not what the runtime makes of the block is refused.
	if _, err := callerEnviron(append(os.Environ(), "EXTRA=1")); err == nil {
		t.Error("a runtime copy with an entry more was taken as this block's")
	}
}

func TestNextEnviron(t *testing.T) {
	runtimeEnv := []string{"A=1", "GOTRACEBACK=none"}
	back := []string{"A=1"}
	ok := func([]string) ([]string, error) { return back, nil }
	broken := func([]string) ([]string, error) { return nil, errors.New("process_vm_readv: operation not permitted") }
	if env, warn := nextEnviron(ok, runtimeEnv, true); !slices.Equal(env, back) || warn != "" {
		t.Errorf("read back: %q %q", env, warn)
	}
	if env, warn := nextEnviron(broken, runtimeEnv, true); !slices.Equal(env, runtimeEnv) || warn != "warning: unable to read back the caller's environment (process_vm_readv: operation not permitted): the next program gets the Go runtime's copy, with GOTRACEBACK=none" {
		t.Errorf("setgid, not read back: %q %q", env, warn)
	}
	if env, warn := nextEnviron(broken, runtimeEnv, false); !slices.Equal(env, runtimeEnv) || warn != "" {
		t.Errorf("not setgid, not read back: %q %q", env, warn)
	}
}
