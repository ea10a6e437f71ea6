package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// The environment the next program gets.
//
// Installed setgid, the wrapper runs in the Go runtime's secure mode
// (AT_SECURE), and then the runtime sets GOTRACEBACK=none in its copy of
// the environment, the one os.Environ returns: every entry that starts
// with GOTRACEBACK= becomes GOTRACEBACK=none, and if there was none,
// GOTRACEBACK=none is appended (Go 1.26, runtime/security_unix.go). The
// syscall package then hides the later of two entries with the same name
// and empty entries. The next program must get the caller's environment
// as the caller gave it, so the wrapper reads back the strings the kernel
// copied onto its stack at execve, which the runtime copied and never
// writes: the block from env_start to env_end of /proc/self/stat.
// /proc/self/environ reads the same bytes, but a setgid process cannot
// open it (its /proc files are root's, mode 0400), so the wrapper reads
// the block with process_vm_readv(2) on itself, which a process may
// always do.

// maxEnvBlock bounds the block read back: execve takes at most 3/4 of
// the 8 MiB stack limit for arguments and environment together.
const maxEnvBlock = 8 << 20

// callerEnviron returns the environment the caller passed to execve, entry
// for entry, after checking that the runtime's copy (runtimeEnv) is what
// the runtime makes of it.
func callerEnviron(runtimeEnv []string) ([]string, error) {
	stat, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return nil, err
	}
	start, end, err := envBounds(stat)
	if err != nil {
		return nil, err
	}
	block, err := readSelf(start, end)
	if err != nil {
		return nil, err
	}
	env, err := splitEnvBlock(block)
	if err != nil {
		return nil, err
	}
	if !slices.Equal(goView(env), runtimeEnv) && !slices.Equal(goView(secureEnv(env)), runtimeEnv) {
		return nil, errors.New("the environment block read back is not the one the Go runtime started from")
	}
	return env, nil
}

// envBounds returns env_start and env_end, fields 50 and 51 of
// /proc/PID/stat: counted after the command name in parentheses, which
// may itself hold spaces and parentheses, so after its last ')'.
func envBounds(stat []byte) (start, end uintptr, err error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, 0, errors.New("/proc/self/stat: no command name")
	}
	f := strings.Fields(string(stat[i+1:])) // f[0] is field 3
	if len(f) < 51-2 {
		return 0, 0, fmt.Errorf("/proc/self/stat: %d fields, no env_start and env_end", len(f)+2)
	}
	s, err1 := strconv.ParseUint(f[50-3], 10, 64)
	e, err2 := strconv.ParseUint(f[51-3], 10, 64)
	if err1 != nil || err2 != nil || s == 0 || e < s || e-s > maxEnvBlock {
		return 0, 0, fmt.Errorf("/proc/self/stat: env_start %q and env_end %q are no environment", f[50-3], f[51-3])
	}
	return uintptr(s), uintptr(e), nil
}

// readSelf reads this process's memory from start to end.
func readSelf(start, end uintptr) ([]byte, error) {
	buf := make([]byte, end-start)
	for done := 0; done < len(buf); {
		local := []unix.Iovec{{Base: &buf[done]}}
		local[0].SetLen(len(buf) - done)
		remote := []unix.RemoteIovec{{Base: start + uintptr(done), Len: len(buf) - done}}
		n, err := unix.ProcessVMReadv(os.Getpid(), local, remote, 0)
		if err != nil {
			return nil, fmt.Errorf("process_vm_readv: %w", err)
		}
		if n == 0 {
			return nil, errors.New("process_vm_readv: nothing read")
		}
		done += n
	}
	return buf, nil
}

// splitEnvBlock splits the NUL-terminated strings of an environment
// block, empty ones included.
func splitEnvBlock(b []byte) ([]string, error) {
	if len(b) == 0 {
		return []string{}, nil
	}
	if b[len(b)-1] != 0 {
		return nil, errors.New("the environment block does not end in NUL")
	}
	return strings.Split(string(b[:len(b)-1]), "\x00"), nil
}

// secureEnv is what the Go runtime does to the environment in secure
// mode (runtime/security_unix.go).
func secureEnv(env []string) []string {
	out := slices.Clone(env)
	has := false
	for i, kv := range out {
		if strings.HasPrefix(kv, "GOTRACEBACK=") {
			has = true
			out[i] = "GOTRACEBACK=none"
		}
	}
	if !has {
		out = append(out, "GOTRACEBACK=none")
	}
	return out
}

// goView is what syscall.Environ shows of the runtime's environment: the
// later entries of a name already seen, and empty ones, are hidden.
func goView(env []string) []string {
	seen := map[string]bool{}
	out := []string{}
	for _, kv := range env {
		if kv == "" {
			continue
		}
		if k, _, ok := strings.Cut(kv, "="); ok {
			if seen[k] {
				continue
			}
			seen[k] = true
		}
		out = append(out, kv)
	}
	return out
}

// nextEnviron is the environment for the next program: the caller's as
// read back, else the runtime's copy, with a warning where that copy may
// carry the runtime's GOTRACEBACK=none (the wrapper is setgid).
func nextEnviron(read func([]string) ([]string, error), runtimeEnv []string, setgid bool) (env []string, warning string) {
	env, err := read(runtimeEnv)
	if err == nil {
		return env, ""
	}
	if setgid {
		warning = fmt.Sprintf("warning: unable to read back the caller's environment (%v): the next program gets the Go runtime's copy, with GOTRACEBACK=none", err)
	}
	return runtimeEnv, warning
}
