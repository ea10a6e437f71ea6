package t

import (
	"io"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// TestSecuritySetgidEnv: the setgid wrapper, run as nobody, gives the
// next program (env -0) the caller's environment exactly as the caller
// passed it to execve, though the Go runtime of a setgid program sets
// GOTRACEBACK=none in its own copy: a caller's GOTRACEBACK=all stays all,
// none stays none, a caller without one gets none, and duplicates, an
// empty entry and one without "=" pass in place.
func TestSecuritySetgidEnv(t *testing.T) {
	needRoot(t, "the test installs a setgid wrapper and runs it as nobody")
	envProg := need(t, "env")
	w := installSetgidWrap(t)
	for _, c := range []struct {
		name string
		env  []string
	}{
		{"GOTRACEBACK=all", []string{"A=1", "GOTRACEBACK=all", "AUTHORIZED=1", "PATH=/usr/bin:/bin"}},
		{"no GOTRACEBACK", []string{"A=1", "AUTHORIZED=1", "PATH=/usr/bin:/bin"}},
		{"GOTRACEBACK=none", []string{"GOTRACEBACK=none", "AUTHORIZED=1"}},
		{"odd entries", []string{"AUTHORIZED=1", "GOTRACEBACK=crash", "A=1", "", "A=2", "JUNK", "GOTRACEBACK=single", "=x", "B=" + strings.Repeat("b", 50000)}},
		{"empty but for AUTHORIZED", []string{"AUTHORIZED=1"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			outR, outW, _ := os.Pipe()
			errR, errW, _ := os.Pipe()
			pid, err := syscall.ForkExec(w.wrap, []string{w.wrap, "--spool", w.spool, envProg, "-0"}, &syscall.ProcAttr{
				Env:   c.env,
				Files: []uintptr{0, outW.Fd(), errW.Fd()},
				Sys:   &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}},
			})
			outW.Close()
			errW.Close()
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan []byte)
			go func() { b, _ := io.ReadAll(errR); done <- b }()
			out, _ := io.ReadAll(outR)
			stderr := <-done
			outR.Close()
			errR.Close()
			var ws syscall.WaitStatus
			if _, err := syscall.Wait4(pid, &ws, 0, nil); err != nil || !ws.Exited() || ws.ExitStatus() != 0 {
				t.Fatalf("wrapper: %v %v, stderr %q", err, ws, stderr)
			}
			if len(stderr) != 0 {
				t.Errorf("stderr %q", stderr)
			}
			got := []string{}
			if len(out) > 0 {
				got = strings.Split(strings.TrimSuffix(string(out), "\x00"), "\x00")
			}
			if !slices.Equal(got, c.env) {
				t.Errorf("the next program got %.300q\nthe caller gave     %.300q", got, c.env)
			}
		})
	}
}
