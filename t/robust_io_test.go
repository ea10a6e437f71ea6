package t

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/poprelay/poprelay/internal/wait"
)

// mountTmpfs mounts a tmpfs of size bytes on dir (root only) and unmounts
// it at the end; false, with a visible log line, where it cannot.
func mountTmpfs(t *testing.T, dir string, size int) bool {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Logf("SKIP part: mounting a tmpfs needs root")
		return false
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d,mode=0755", size), "poprelay-test", dir).CombinedOutput(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("mount -t tmpfs: %v %s", err, out)
		}
		t.Logf("SKIP part: mount -t tmpfs is not permitted here: %v %s", err, out)
		return false
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	return true
}

// failedWrite checks a rebuild that could not write: exit 111, a message
// naming the CDB and why, the old CDB byte for byte, no temp file left.
func failedWrite(t *testing.T, s *relayctlSite, what string, r result, old []byte, why string) {
	t.Helper()
	noCrash(t, what, r)
	want := "relayctl: fatal: unable to write " + s.cdb + ": "
	if r.code != 111 || !strings.Contains(r.stderr, want) || !strings.Contains(r.stderr, why) {
		t.Errorf("%s: exit %d, stderr %q; want 111 and %q ... %q", what, r.code, r.stderr, want, why)
	}
	if b, err := os.ReadFile(s.cdb); err != nil || !bytes.Equal(b, old) {
		t.Errorf("%s: the old CDB was not kept (%v)", what, err)
	}
	if d := s.debris(t); len(d) != 0 {
		t.Errorf("%s: temp files left: %q", what, d)
	}
}

// TestRobustDiskFull: the CDB cannot be written (a file size limit, a
// full file system, a read-only directory) or the spool is full: relayctl
// exits 111 naming the file, the old CDB stays byte for byte with no temp
// file left, the grants are kept for the next rebuild; the wrapper still
// runs the next program and says why on stderr.
func TestRobustDiskFull(t *testing.T) {
	prlimit := need(t, "prlimit")
	s := newRelayctlSite(t, bigRules(3000, tornTail))
	// The CDB in a directory of its own, so a tmpfs can go there.
	cdbDir := filepath.Join(s.dir, "cdb")
	os.Mkdir(cdbDir, 0o755)
	s.cdb = filepath.Join(cdbDir, "tcp.smtp.cdb")
	for i, kv := range s.env {
		if strings.HasPrefix(kv, "POPRELAY_CDB=") {
			s.env[i] = "POPRELAY_CDB=" + s.cdb
		}
	}
	recordAt(t, s.spool, "127.0.10.1", "alice")
	if r := s.run(t, "rebuild"); r.code != 0 {
		t.Fatal(r.stderr)
	}
	old := s.mustCDB(t)
	t.Logf("CDB of %d bytes", len(old))

	// A file size limit below the CDB's size.
	r := runCmd(t, s.env, "", wait.Patience, prlimit, "--fsize=65536", "--", bin("relayctl"), "rebuild")
	failedWrite(t, s, "prlimit --fsize rebuild", r, old, "file too large")
	r = runCmd(t, s.env, "", wait.Patience, prlimit, "--fsize=65536", "--", bin("relayctl"), "allow", "127.0.10.2")
	failedWrite(t, s, "prlimit --fsize allow", r, old, "(granted 127.0.10.2 in the spool; the CDB is unchanged)")
	if r := s.run(t, "rebuild"); r.code != 0 || !relays(t, s.cdb, "127.0.10.2") {
		t.Errorf("the grant recorded while the CDB could not be written does not relay after a rebuild: %d %s", r.code, r.stderr)
	}
	old = s.mustCDB(t)

	// A full file system: room for the CDB (and the copy of the rules
	// rebuild saves beside it, CDB.rules), not for its replacement.
	room := len(old) * 3 / 2
	if fi, err := os.Stat(s.cdb + ".rules"); err == nil {
		room += int(fi.Size())
	}
	if mountTmpfs(t, cdbDir, room) {
		if r := s.run(t, "rebuild"); r.code != 0 {
			t.Fatalf("rebuild on the tmpfs: %s", r.stderr)
		}
		recordAt(t, s.spool, "127.0.10.3", "carol")
		failedWrite(t, s, "full file system", s.run(t, "rebuild"), old, "no space left on device")

		// The same file system read-only.
		if out, err := exec.Command("mount", "-o", "remount,ro", cdbDir).CombinedOutput(); err != nil {
			t.Errorf("remount ro: %v %s", err, out)
		} else {
			r := s.run(t, "rebuild")
			noCrash(t, "read-only", r)
			if r.code != 111 || !strings.Contains(r.stderr, s.cdb) || !strings.Contains(r.stderr, "read-only file system") {
				t.Errorf("read-only CDB directory: exit %d, stderr %q", r.code, r.stderr)
			}
			if !bytes.Equal(s.mustCDB(t), old) {
				t.Error("read-only CDB directory: the CDB changed")
			}
		}
	} else if os.Geteuid() != 0 {
		// Without root a read-only directory is a chmod away.
		os.Chmod(cdbDir, 0o555)
		defer os.Chmod(cdbDir, 0o755)
		r := s.run(t, "rebuild")
		if r.code != 111 || !strings.Contains(r.stderr, s.cdb) {
			t.Errorf("read-only CDB directory: exit %d, stderr %q", r.code, r.stderr)
		}
	}

	// A full spool.
	full := filepath.Join(s.dir, "full")
	os.Mkdir(full, 0o755)
	if !wrFull(t, full) {
		t.Log("SKIP part: the full-spool case needs root and a tmpfs (TestWrapTcpserverSpoolTrouble has the file size limit)")
		return
	}
	env := append(append([]string{}, s.env...), "POPRELAY_SPOOL="+full, "TCPREMOTEIP=127.0.10.4", "USER=dave")
	r = runCmd(t, env, "", wait.Patience, bin("checkpassword-wrap"), "/bin/echo", "ran")
	if r.code != 0 || r.stdout != "ran\n" {
		t.Errorf("full spool: the next program did not run: exit %d, stdout %q", r.code, r.stdout)
	}
	if want := "checkpassword-wrap: warning: unable to record ip=127.0.10.4 user=dave service=pop3: "; !strings.HasPrefix(r.stderr, want) || !strings.Contains(r.stderr, "no space left on device") {
		t.Errorf("full spool: wrapper stderr %q", r.stderr)
	}
	r = runCmd(t, env, "", wait.Patience, bin("relayctl"), "allow", "127.0.10.4")
	if r.code != 111 || !strings.Contains(r.stderr, "relayctl: fatal: unable to record grant for 127.0.10.4 in "+full+": ") || !strings.Contains(r.stderr, "no space left on device") {
		t.Errorf("full spool: relayctl allow: exit %d, stderr %q", r.code, r.stderr)
	}
	if ents, _ := os.ReadDir(full); len(ents) != 1 {
		t.Errorf("full spool holds %v: a temp file was left", ents)
	}
}
