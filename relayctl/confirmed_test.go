package main

import (
	"bytes"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/poprelay/poprelay/internal/confirmed"
)

// TestRulesHeldBack: every command that writes the CDB but rebuild
// (allow, revoke, expire) holds back a rules file that became empty or
// lost more than half its rules against CDB.rules, publishing the grants
// with the last confirmed rules and saying so; rebuild confirms it. A
// file that did not shrink that much is taken and saved; one that does
// not parse stops the command as before, the copy unchanged; a copy no
// one should believe is ignored with a warning and replaced.
func TestRulesHeldBack(t *testing.T) {
	f := newFixture(t)
	copyPath := f.db + ".rules"
	f.ok("rebuild")
	if c, err := confirmed.Read(copyPath); err != nil || string(c.Text) != staticRules {
		t.Fatalf("rebuild saved no copy of the rules: %v", err)
	}
	heldBack := func(n, m int, args ...string) {
		t.Helper()
		code, _, errs := f.run(args...)
		want := f.rules + " has " + strconv.Itoa(n) + " rules where the CDB was built from " + strconv.Itoa(m) + ": held back"
		if code != 0 || !strings.Contains(errs, want) || !strings.Contains(errs, "run relayctl rebuild") || strings.Count(errs, "\n") != 1 {
			t.Errorf("relayctl %s: exit %d, %q; want one line: %q", strings.Join(args, " "), code, errs, want)
		}
	}
	f.write(f.rules, "")
	heldBack(0, 5, "allow", "192.0.2.7")
	if got := f.decide("192.0.2.7"); got != "allow 192.0.2.7 QMAILQUEUE=/var/qmail/bin/qq RBLSMTPD= RELAYCLIENT=" {
		t.Errorf("granted while held back: %s", got)
	}
	if got := f.decide("198.51.100.1"); got != "deny 198.51.100." {
		t.Errorf("static deny while held back: %s", got)
	}
	f.ok("expire") // nothing to do: silent, though held back
	// list and check show the rules published, and say so.
	code, out, errs := f.run("check", "198.51.100.1")
	if code != 0 || !strings.Contains(out, "from: static rule "+f.rules+":5") || !strings.Contains(errs, "held back, shown as the last confirmed rules") {
		t.Errorf("check while held back: exit %d, %q, %q", code, out, errs)
	}
	code, out, errs = f.run("list")
	if code != 0 || !strings.Contains(out, "as "+f.rules+":4") || !strings.Contains(errs, "held back, shown as the last confirmed rules") {
		t.Errorf("list while held back: exit %d, %q, %q", code, out, errs)
	}
	heldBack(0, 5, "revoke", "192.0.2.7")
	if got := f.decide("198.51.100.1"); got != "deny 198.51.100." {
		t.Errorf("static deny after revoke: %s", got)
	}

	// 3 of 5 rules: taken, and the new base; 1 of 3: held back.
	three := "127.0.0.1:allow,RELAYCLIENT=\"\"\n198.51.100.:deny\n:allow\n"
	f.write(f.rules, three)
	f.ok("allow", "192.0.2.8")
	if got := f.decide("192.0.2.9"); got != "allow " {
		t.Errorf("3 of 5 rules not taken: %s", got)
	}
	f.write(f.rules, ":allow\n")
	heldBack(1, 3, "allow", "192.0.2.9")

	// A rules file that does not parse: exit 100 at FILE:LINE, as ever.
	f.write(f.rules, "10.0.0.1:bogus\n")
	before := f.cdbBytes()
	f.fails(100, f.rules+":1: unable to parse", "allow", "192.0.2.10")
	f.fails(100, f.rules+":1: unable to parse", "rebuild")
	if !bytes.Equal(before, f.cdbBytes()) {
		t.Error("bad rules changed the CDB")
	}
	if c, err := confirmed.Read(copyPath); err != nil || string(c.Text) != three {
		t.Errorf("bad rules changed the copy: %v", err)
	}

	// rebuild confirms.
	f.write(f.rules, ":allow\n")
	f.ok("rebuild")
	f.ok("allow", "192.0.2.11")
	if got := f.decide("198.51.100.1"); got != "allow " {
		t.Errorf("after rebuild: %s", got)
	}

	// A copy anyone may write is not believed, and is replaced.
	f.write(f.rules, staticRules)
	f.ok("rebuild")
	os.Chmod(copyPath, 0o666)
	f.write(f.rules, "")
	code, _, errs = f.run("allow", "192.0.2.12")
	if code != 0 || !strings.Contains(errs, "writable by group or others") || strings.Contains(errs, "held back") {
		t.Errorf("world-writable copy: exit %d, %q", code, errs)
	}
	if fi, err := os.Lstat(copyPath); err != nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("the copy was not replaced: %v %v", fi, err)
	}

	// No rules file: nothing compared, nothing saved.
	os.Remove(copyPath)
	f.env["POPRELAY_RULES"] = ""
	f.ok("allow", "192.0.2.13")
	if _, err := os.Lstat(copyPath); err == nil {
		t.Error("a copy saved without a rules file")
	}
}
