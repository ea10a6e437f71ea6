package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// The stage before the login (--before-login), for TLS front ends whose
// login runs as the user: couriertls's socketpair, or the one imaplogin
// makes for STARTTLS, proves nothing about the client, and after the
// login the user could set any variable. Run by root (or the group) in
// the place of the login program (Courier's imaplogin), the stage takes
// the client address from its own, trusted, environment (couriertcpd's
// TCPREMOTEIP, or the variable --remote-var names: stunnel's REMOTE_HOST,
// sslserver's SSLREMOTEIP), starts the login program as its child with one end of a
// fresh socketpair on fd loginFD (named in POPRELAY_LOGIN_FD), and stays
// its parent until it exits. The wrapper after the login sends the user
// over that descriptor instead of recording; the stage records the grant
// for its address, naming the sender's uid (SCM_CREDENTIALS). Only the
// session's own post-login processes hold the descriptor: whoever takes
// it, or rewrites that session's variables, opens only the address the
// session came from. See SECURITY.md, guarantee 4.

// loginFDEnv names the descriptor the post-login wrapper reports on.
const loginFDEnv = "POPRELAY_LOGIN_FD"

// loginFD is that descriptor in the login program: high, out of the way
// of the descriptors Courier's programs use (3 to 8).
const loginFD = 23

// maxReport bounds a report: user and service.
const maxReport = 1024

// runStage runs res.argv as the child of a stage that records the login
// the child reports. It returns the child's exit code; a stage that
// cannot start runs the program itself (execNext), saying why.
func runStage(c config, res result, environ []string, stderr io.Writer, sys system) int {
	say := func(format string, args ...any) {
		fmt.Fprintf(stderr, prog+": "+format+"\n", args...)
	}
	if !res.trusted {
		_, who := sys.trusted()
		say("warning: --before-login: %s, so its word on the client counts for nothing: running %s without a stage", who, show(res.argv[0]))
		return execNext(res, environ, stderr)
	}
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_SEQPACKET|syscall.SOCK_CLOEXEC, 0)
	if err == nil {
		err = syscall.SetsockoptInt(fds[0], syscall.SOL_SOCKET, syscall.SO_PASSCRED, 1)
	}
	path, lerr := exec.LookPath(res.argv[0])
	if err != nil || lerr != nil {
		if lerr != nil {
			err = lerr
		}
		say("warning: --before-login: unable to start the stage: %v: running %s without one", innermost(err), show(res.argv[0]))
		return execNext(res, environ, stderr)
	}
	// The program's descriptors, by number: standard input, output and
	// error, the report socket at loginFD, and whatever else the caller
	// left open below loginFD, as it would have had them without the
	// stage (the runtime's own descriptors are close-on-exec); the rest
	// are closed in the child. By number, not as *os.File: an os.File's
	// finalizer would close an inherited descriptor, later, under
	// whatever has its number by then.
	files := make([]uintptr, loginFD+1)
	for i := range files {
		files[i] = ^uintptr(0) // -1: closed in the child
	}
	files[0], files[1], files[2], files[loginFD] = 0, 1, 2, uintptr(fds[1])
	for i := 3; i < loginFD; i++ {
		if flags, err := unix.FcntlInt(uintptr(i), unix.F_GETFD, 0); err == nil && flags&unix.FD_CLOEXEC == 0 {
			files[i] = uintptr(i)
		}
	}
	// One POPRELAY_LOGIN_FD, this stage's: getenv takes the first.
	var childEnv []string
	for _, kv := range environ {
		if !strings.HasPrefix(kv, loginFDEnv+"=") {
			childEnv = append(childEnv, kv)
		}
	}
	childEnv = append(childEnv, fmt.Sprintf("%s=%d", loginFDEnv, loginFD))
	// The child gets the group this process runs with only if the
	// caller had it: drop the setgid privilege first.
	if err := dropPrivilege(); err != nil {
		say("fatal: unable to drop the setgid privilege: %v", err)
		return 111
	}
	// Signals the front end sends reach the login program.
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGALRM)
	pid, _, err := syscall.StartProcess(path, res.argv, &syscall.ProcAttr{Env: childEnv, Files: files})
	syscall.Close(fds[1])
	var p *os.Process
	if err == nil {
		p, err = os.FindProcess(pid)
	}
	if err != nil {
		signal.Reset()
		syscall.Close(fds[0])
		say("fatal: unable to run %s: %v", show(res.argv[0]), innermost(err))
		return 111
	}
	// The client's connection is the child's alone now.
	peer, isTCP := sys.peer()
	if sys.detach != nil {
		sys.detach()
	}
	go func() {
		for s := range sigs {
			p.Signal(s)
		}
	}()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		user, service, uid, ok := readReport(fds[0])
		if !ok {
			return // no login, or the session ended
		}
		if service == "" {
			service = c.service
		}
		c := c
		c.service = service
		env := map[string]string{"USER": user}
		remoteVar := c.remoteVar
		if remoteVar == "" {
			remoteVar = "TCPREMOTEIP"
		}
		v, ok := environ0(environ, remoteVar)
		if !ok {
			say("warning: not recording user=%s service=%s: no client address (%s is unset: which variable does the front end set? --remote-var)", show(user), show(service), remoteVar)
			return
		}
		env["TCPREMOTEIP"] = v
		st := sys
		st.peer = func() (string, bool) { return peer, isTCP }
		if remoteVar != "TCPREMOTEIP" {
			// stunnel's exec mode hands the login a loopback TCP
			// connection of its own, sslserver pipes: the address is
			// the front end's word, which stands in this trusted
			// process, not that connection's peer.
			st.peer = func() (string, bool) { return "", false }
		}
		st.stdinKind = nil
		record(c, env, &suffixWriter{w: stderr, suffix: fmt.Sprintf(" uid=%d", uid)}, st, true, "")
	}()
	state, err := p.Wait()
	// A report sent just before the child ended is still read: shutdown
	// wakes the reader only once the queue is empty.
	syscall.Shutdown(fds[0], syscall.SHUT_RD)
	wg.Wait()
	syscall.Close(fds[0])
	if err != nil {
		say("fatal: waiting for %s: %v", show(res.argv[0]), err)
		return 111
	}
	if ws, ok := state.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return state.ExitCode()
}

// readReport reads one report from the stage's end: "user\0service",
// and the sender's uid. ok is false at EOF or on a report that is not one.
func readReport(fd int) (user, service string, uid uint32, ok bool) {
	buf := make([]byte, maxReport)
	oob := make([]byte, syscall.CmsgSpace(syscall.SizeofUcred))
	for {
		n, oobn, flags, _, err := syscall.Recvmsg(fd, buf, oob, 0)
		if err == syscall.EINTR {
			continue
		}
		if err != nil || n == 0 || flags&(syscall.MSG_TRUNC|syscall.MSG_CTRUNC) != 0 {
			return "", "", 0, false
		}
		msgs, err := syscall.ParseSocketControlMessage(oob[:oobn])
		if err != nil || len(msgs) != 1 {
			return "", "", 0, false
		}
		cred, err := syscall.ParseUnixCredentials(&msgs[0])
		if err != nil {
			return "", "", 0, false
		}
		user, service, _ = strings.Cut(string(buf[:n]), "\x00")
		return user, service, cred.Uid, user != ""
	}
}

// reportLogin sends the user to the stage before the login, if the
// environment names its descriptor and it is a socket of that kind, and
// tells whether it did. The descriptor is closed before the next program
// runs.
func reportLogin(fdText, user, service string) bool {
	fd, err := strconv.Atoi(fdText)
	if err != nil || fd < 3 || strconv.Itoa(fd) != fdText {
		return false
	}
	typ, err := syscall.GetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_TYPE)
	if err != nil || typ != syscall.SOCK_SEQPACKET {
		return false
	}
	syscall.CloseOnExec(fd)
	msg := []byte(user + "\x00" + service)
	if len(msg) > maxReport {
		return false
	}
	return syscall.Sendmsg(fd, msg, nil, nil, 0) == nil
}

// detachStdio puts /dev/null on standard input and output, so that the
// client's connection closes when the login program ends.
func detachStdio() {
	if null, err := os.Open(os.DevNull); err == nil {
		syscall.Dup2(int(null.Fd()), 0)
		syscall.Dup2(int(null.Fd()), 1)
		null.Close()
	}
}

// environ0 is getenv on an environment list: the first entry wins.
func environ0(environ []string, name string) (string, bool) {
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok && k == name {
			return v, true
		}
	}
	return "", false
}

// suffixWriter adds suffix to the audit line (the one line that is not
// a warning) before its newline.
type suffixWriter struct {
	w      io.Writer
	suffix string
}

func (s *suffixWriter) Write(p []byte) (int, error) {
	line := string(p)
	if strings.HasPrefix(line, prog+": ip=") && strings.HasSuffix(line, "\n") {
		if _, err := io.WriteString(s.w, strings.TrimSuffix(line, "\n")+s.suffix+"\n"); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	return s.w.Write(p)
}
