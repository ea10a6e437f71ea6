package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/poprelay/poprelay/internal/grant"
	"golang.org/x/sys/unix"
)

// TestRunStage: the stage starts the login program with its end of the
// report socket on fd 23, named in POPRELAY_LOGIN_FD, records what the
// program reports for the stage's own TCPREMOTEIP (never the
// program's), names the reporter's uid, and exits as the program did.
func TestRunStage(t *testing.T) {
	for _, tc := range []struct {
		name, script string
		code         int
		ip, user     string
		stderr       string
		remoteVar    string // --remote-var
		peer         string // standard input's TCP peer, if any
		env          []string
	}{
		{"report", `printf 'alice@example.com\000imap' >&$POPRELAY_LOGIN_FD; exit 7`, 7, "198.51.100.50", "alice@example.com",
			fmt.Sprintf("checkpassword-wrap: ip=198.51.100.50 user=alice@example.com service=imap uid=%d\n", os.Getuid()), "", "", nil},
		{"no login", `exit 1`, 1, "", "", "", "", "", nil},
		{"report, then the program lives on", `printf 'bob\000pop3' >&23; exec 23>&-; read x </dev/null; exit 0`, 0, "198.51.100.50", "bob", "user=bob service=pop3 uid=", "", "", nil},
		{"a second report is not read", `printf 'carol\000imap' >&23; printf 'mallory\000imap' >&23; exit 0`, 0, "198.51.100.50", "carol", "user=carol ", "", "", nil},
		{"the program's own TCPREMOTEIP counts for nothing", `TCPREMOTEIP=203.0.113.9; printf 'dave\000imap' >&23`, 0, "198.51.100.50", "dave", "ip=198.51.100.50 user=dave", "", "", nil},
		{"empty user", `printf '\000imap' >&23`, 0, "", "", "", "", "", nil},
		{"one POPRELAY_LOGIN_FD, the stage's", `[ "$(env | grep -c ^POPRELAY_LOGIN_FD=)" = 1 ] || exit 98; printf 'erin\000imap' >&23`, 0, "198.51.100.50", "erin", "user=erin ", "", "", nil},
		{"the caller's descriptors pass through", `read -r line <&$INHERITED && [ "$line" = inherited ] || exit 97; printf 'frank\000imap' >&23`, 0, "198.51.100.50", "frank", "user=frank ", "", "", nil},
		// stunnel's exec mode: REMOTE_HOST, standard input a loopback
		// TCP connection of stunnel's own.
		{"stunnel's REMOTE_HOST", `printf 'gina\000pop3' >&23`, 0, "203.0.113.60", "gina", "checkpassword-wrap: ip=203.0.113.60 user=gina service=pop3 uid=",
			"REMOTE_HOST", "127.0.0.1", []string{"REMOTE_HOST=203.0.113.60", "REMOTE_PORT=40000"}},
		{"sslserver's SSLREMOTEIP", `printf 'hank\000pop3' >&23`, 0, "2001:db8::61", "hank", "checkpassword-wrap: ip=2001:db8::61 user=hank service=pop3 uid=",
			"SSLREMOTEIP", "", []string{"SSLREMOTEIP=2001:0db8:0000:0000:0000:0000:0000:0061"}},
		{"the front end's variable unset", `printf 'ivan\000pop3' >&23`, 0, "", "", "checkpassword-wrap: warning: not recording user=ivan service=pop3: no client address (REMOTE_HOST is unset: which variable does the front end set? --remote-var)\n",
			"REMOTE_HOST", "127.0.0.1", nil},
		{"REMOTE_HOST is no address", `printf 'judy\000pop3' >&23`, 0, "", "", "checkpassword-wrap: warning: not recording: client address 203.0.113.60:40000 is not an IP address\n",
			"REMOTE_HOST", "127.0.0.1", []string{"REMOTE_HOST=203.0.113.60:40000"}},
		{"the stage's TCPREMOTEIP must be its socket's peer", `printf 'kate\000pop3' >&23`, 0, "", "", "checkpassword-wrap: warning: not recording ip=198.51.100.50 user=kate service=pop3: standard input is a TCP connection from 127.0.0.1, not from 198.51.100.50\n",
			"", "127.0.0.1", nil},
		{"the program's own REMOTE_HOST counts for nothing", `REMOTE_HOST=192.0.2.99 TCPREMOTEIP=192.0.2.99; printf 'leo\000pop3' >&23`, 0, "203.0.113.60", "leo", "ip=203.0.113.60 user=leo ",
			"REMOTE_HOST", "127.0.0.1", []string{"REMOTE_HOST=203.0.113.60"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spool := filepath.Join(t.TempDir(), "spool")
			os.Mkdir(spool, 0o770)
			c := config{spool: spool, service: "pop3", log: "plain", remoteVar: tc.remoteVar}
			res := result{argv: []string{"/bin/bash", "-c", `[ "$POPRELAY_LOGIN_FD" = 23 ] || exit 99; ` + tc.script}, trusted: true}
			sys := system{
				peer:    func() (string, bool) { return tc.peer, tc.peer != "" },
				trusted: func() (bool, string) { return true, "" },
			}
			// A descriptor as a caller leaves it: open, not close-on-exec.
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			w.WriteString("inherited\n")
			w.Close()
			if r.Fd() >= loginFD {
				t.Fatalf("the test's pipe is fd %d, not below %d", r.Fd(), loginFD)
			}
			if _, err := unix.FcntlInt(r.Fd(), unix.F_SETFD, 0); err != nil {
				t.Fatal(err)
			}
			var stderr strings.Builder
			env := append([]string{"POPRELAY_LOGIN_FD=5", "INHERITED=" + fmt.Sprint(r.Fd()), "TCPREMOTEIP=::ffff:198.51.100.50", "PATH=/usr/bin:/bin"}, tc.env...)
			code := runStage(c, res, env, &stderr, sys)
			if code != tc.code {
				t.Errorf("exit %d, want %d (stderr %q)", code, tc.code, stderr.String())
			}
			if got := stderr.String(); tc.stderr == "" && got != "" || !strings.Contains(got, tc.stderr) || strings.Count(got, "\n") > 1 {
				t.Errorf("stderr %q, want %q", got, tc.stderr)
			}
			gs, err := grant.New(spool).List()
			if err != nil {
				t.Fatal(err)
			}
			if tc.ip == "" {
				if len(gs) != 0 {
					t.Errorf("recorded %v", gs)
				}
				return
			}
			if len(gs) != 1 || gs[0].IP != tc.ip || gs[0].User != tc.user {
				t.Errorf("recorded %+v, want %s %s", gs, tc.ip, tc.user)
			}
		})
	}
}

// TestRunStageUntrusted: a caller outside the group is no stage: one
// line, and the program runs without the descriptor.
func TestRunStageUntrusted(t *testing.T) {
	// execNext replaces the process on success: make it fail.
	res := result{argv: []string{"/no/such/login"}, trusted: false}
	sys := system{trusted: func() (bool, string) { return false, "uid 1000 is neither root nor in group 999" }}
	var stderr strings.Builder
	code := runStage(config{}, res, nil, &stderr, sys)
	want := "checkpassword-wrap: warning: --before-login: uid 1000 is neither root nor in group 999, so its word on the client counts for nothing: running /no/such/login without a stage\ncheckpassword-wrap: fatal: unable to run /no/such/login: no such file or directory\n"
	if code != 111 || stderr.String() != want {
		t.Errorf("exit %d, stderr %q; want 111, %q", code, stderr.String(), want)
	}
}

// TestReportLogin: the post-login side sends only on a SEQPACKET socket
// named by a plain descriptor number, and the stage's end reads the user,
// the service and the sender's uid.
func TestReportLogin(t *testing.T) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_SEQPACKET, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fds[0])
	defer syscall.Close(fds[1])
	if err := syscall.SetsockoptInt(fds[0], syscall.SOL_SOCKET, syscall.SO_PASSCRED, 1); err != nil {
		t.Fatal(err)
	}
	stream, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(stream[0])
	defer syscall.Close(stream[1])
	for _, fd := range []string{"", "x", "0", "2", "-1", "0" + fmt.Sprint(fds[1]), fmt.Sprint(stream[1]), "999"} {
		if reportLogin(fd, "alice", "imap") {
			t.Errorf("reportLogin(%q) sent", fd)
		}
	}
	if !reportLogin(fmt.Sprint(fds[1]), "alice@example.com", "imap") {
		t.Fatal("reportLogin on the report socket failed")
	}
	if flags, _ := fcntl(fds[1]); flags&syscall.FD_CLOEXEC == 0 {
		t.Error("the report descriptor stays open across exec")
	}
	user, service, uid, ok := readReport(fds[0])
	if !ok || user != "alice@example.com" || service != "imap" || uid != uint32(os.Getuid()) {
		t.Errorf("readReport = %q %q %d %v", user, service, uid, ok)
	}
	if reportLogin(fmt.Sprint(fds[1]), strings.Repeat("x", maxReport), "imap") {
		t.Error("an oversized report was sent")
	}
}

func fcntl(fd int) (int, error) {
	r, _, e := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_GETFD, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}
