package t

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestCdbbuildAsTcprules runs the cdbbuild binary and the real tcprules
// side by side on good and bad input, with cdbbuild also linked under the
// name tcprules: same exit status, same CDB bytes, and the same stderr
// (byte for byte under that name, with "cdbbuild:" otherwise).
func TestCdbbuildAsTcprules(t *testing.T) {
	tcprules := need(t, "tcprules")
	dir := t.TempDir()
	link := filepath.Join(dir, "tcprules")
	if err := os.Symlink(bin("cdbbuild"), link); err != nil {
		t.Fatal(err)
	}
	exec1 := func(prog, out, input string) (int, string, []byte) {
		cmd := exec.Command(prog, out, out+".tmp", "ignored")
		cmd.Stdin = strings.NewReader(input)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if stdout.Len() != 0 {
			t.Errorf("%s: stdout %q", prog, stdout.String())
		}
		db, _ := os.ReadFile(out)
		return code, stderr.String(), db
	}
	for i, input := range []string{
		"127.0.0.1:allow,RELAYCLIENT=\"\"\n10.1.1.10-20:allow\n=.example.com:deny\n:allow\n",
		"1.2.3.4:allow\nbad:rule  \n",
		"1.2.3.4:allow\r\n",
		"",
	} {
		out := func(name string) string { return filepath.Join(dir, name+string(rune('0'+i))+".cdb") }
		wcode, wstderr, wdb := exec1(tcprules, out("ref"), input)
		for _, prog := range []string{bin("cdbbuild"), link} {
			code, stderr, db := exec1(prog, out(filepath.Base(prog)), input)
			want := wstderr
			if filepath.Base(prog) == "cdbbuild" {
				want = strings.ReplaceAll(want, "tcprules: ", "cdbbuild: ")
			}
			if code != wcode || stderr != want || !bytes.Equal(db, wdb) {
				t.Errorf("%s on %q: exit %d stderr %q (%d bytes); tcprules: %d %q (%d bytes)",
					prog, input, code, stderr, len(db), wcode, wstderr, len(wdb))
			}
		}
	}
	// Usage, as tcprules under its name.
	cmd := exec.Command(link)
	var e bytes.Buffer
	cmd.Stderr = &e
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 100 || e.String() != "tcprules: usage: tcprules rules.cdb rules.tmp\n" {
		t.Errorf("usage: %v %q", err, e.String())
	}
}
