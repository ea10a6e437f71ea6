package confirmed

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/poprelay/poprelay/internal/atomic"
	"github.com/poprelay/poprelay/internal/rules"
)

const three = "10.:deny\n127.0.0.1:allow,RELAYCLIENT=\"\"\n:allow\n"

func parse(t *testing.T, text string) []rules.Rule {
	t.Helper()
	rs, err := rules.Parse(strings.NewReader(text), "/etc/tcp.smtp")
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

func TestShrunk(t *testing.T) {
	for _, c := range []struct {
		old, new int
		want     bool
	}{
		{3, 0, true}, {3, 1, true}, {3, 2, false}, {4, 2, false}, {5, 2, true},
		{0, 0, false}, {0, 5, false}, {1, 0, true}, {100, 49, true}, {100, 50, false},
	} {
		if got := Shrunk(c.old, c.new); got != c.want {
			t.Errorf("Shrunk(%d, %d) = %v, want %v", c.old, c.new, got, c.want)
		}
	}
}

func TestRoundTrip(t *testing.T) {
	for _, text := range []string{"", three, "no newline at the end:deny", ":allow\n\n\n# comment\n"} {
		rs := parse(t, text)
		var b bytes.Buffer
		src := "/etc/tcp smtp \"odd\"\nname"
		if err := Encode(&b, src, []byte(text), len(rs)); err != nil {
			t.Fatal(err)
		}
		c, err := Decode(b.Bytes())
		if err != nil {
			t.Fatalf("%q: %v", text, err)
		}
		got, err := c.Rules()
		if c.Source != src || string(c.Text) != text || c.N != len(rs) || err != nil || len(got) != len(rs) {
			t.Errorf("%q: got %q %q %d rules: %v", text, c.Source, c.Text, len(got), err)
		}
	}
}

// TestDecodeRejects: a copy that is damaged anywhere, truncated, of
// another version or whose text does not parse is refused.
func TestDecodeRejects(t *testing.T) {
	var b bytes.Buffer
	Encode(&b, "/etc/tcp.smtp", []byte(three), 3)
	good := b.Bytes()
	for i := range good {
		for _, bit := range []byte{1, 0x20, 0x80} {
			bad := bytes.Clone(good)
			bad[i] ^= bit
			if c, err := Decode(bad); err == nil {
				t.Fatalf("byte %d ^ %#x: believed: %q", i, bit, c.Text)
			}
		}
	}
	for n := range len(good) {
		if _, err := Decode(good[:n]); err == nil {
			t.Fatalf("truncated to %d bytes: believed", n)
		}
	}
	var w bytes.Buffer
	Encode(&w, "/etc/tcp.smtp", []byte(three), 2)
	if c, err := Decode(w.Bytes()); err != nil {
		t.Error(err)
	} else if _, err := c.Rules(); err == nil {
		t.Error("a rule count that does not match the text: believed")
	}
	var p bytes.Buffer
	Encode(&p, "/etc/tcp.smtp", []byte("10.0.0.1:bogus\n"), 1)
	if c, err := Decode(p.Bytes()); err != nil {
		t.Error(err)
	} else if _, err := c.Rules(); err == nil {
		t.Error("text that does not parse: believed")
	}
	v2 := bytes.Replace(good, []byte("poprelay-rules 1 "), []byte("poprelay-rules 2 "), 1)
	if _, err := Decode(v2); err == nil {
		t.Error("version 2: believed")
	}
}

// TestReadRefused: a copy that a group member or anyone could have
// written, a symlink, a FIFO or a directory is not believed; a missing
// one is fs.ErrNotExist.
func TestReadRefused(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "tcp.smtp.cdb.rules")
	if _, err := Read(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing: %v", err)
	}
	if err := Write(path, "/etc/tcp.smtp", []byte(three), 3); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want 0640", fi.Mode().Perm())
	}
	if c, err := Read(path); err != nil || c.N != 3 {
		t.Fatalf("Read: %v", err)
	}
	for _, mode := range []os.FileMode{0o660, 0o642, 0o666} {
		os.Chmod(path, mode)
		if _, err := Read(path); !errors.Is(err, ErrUnusable) {
			t.Errorf("mode %v: %v, want ErrUnusable", mode, err)
		}
	}
	os.Chmod(path, 0o640)
	if os.Geteuid() == 0 {
		os.Chown(path, 65534, 0)
		if _, err := Read(path); !errors.Is(err, ErrUnusable) {
			t.Errorf("owned by nobody: %v, want ErrUnusable", err)
		}
		os.Chown(path, 0, 0)
	}
	link := filepath.Join(dir, "link")
	os.Symlink(path, link)
	if _, err := Read(link); !errors.Is(err, ErrUnusable) {
		t.Errorf("symlink: %v, want ErrUnusable", err)
	}
	sub := filepath.Join(dir, "sub")
	os.Mkdir(sub, 0o700)
	if _, err := Read(sub); !errors.Is(err, ErrUnusable) {
		t.Errorf("directory: %v, want ErrUnusable", err)
	}
	// A refused copy is replaced by Write, not rewritten in its mode.
	os.Chmod(path, 0o666)
	if err := Write(path, "/etc/tcp.smtp", []byte(":allow\n"), 1); err != nil {
		t.Fatal(err)
	}
	if c, err := Read(path); err != nil || c.N != 1 {
		t.Errorf("rewritten: %v", err)
	}
}

// TestGuard: the hold-back across writers that share only the copy on
// disk: each is a fresh Guard, as each cron run of relayctl expire is.
func TestGuard(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "tcp.smtp.cdb.rules")
	fresh := func() *Guard { return &Guard{Path: path, Source: "/etc/tcp.smtp"} }
	apply := func(g *Guard, text string, confirm bool) Result {
		t.Helper()
		res, err := g.Apply([]byte(text), parse(t, text), confirm)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	// No copy yet (an upgrade): the file is taken, and saved.
	if res := apply(fresh(), three, false); res.Held || !res.First || len(res.Rules) != 3 {
		t.Fatalf("first run: %+v", res)
	}
	// Emptied: every new writer holds it back, publishing the three.
	for range 3 {
		res := apply(fresh(), "", false)
		if !res.Held || len(res.Rules) != 3 || res.File != 0 || res.Last != 3 {
			t.Fatalf("emptied: %+v", res)
		}
	}
	// One rule of three: held; two of three: taken, and the new base.
	if res := apply(fresh(), ":allow\n", false); !res.Held {
		t.Errorf("1 of 3 rules: %+v", res)
	}
	two := "10.:deny\n:allow\n"
	if res := apply(fresh(), two, false); res.Held || len(res.Rules) != 2 {
		t.Errorf("2 of 3 rules: %+v", res)
	}
	if res := apply(fresh(), ":allow\n", false); res.Held {
		t.Errorf("1 of 2 rules: %+v", res)
	}
	apply(fresh(), three, false)
	// A long-running writer holds it back, then sees another process
	// confirm it (relayctl rebuild): Matched.
	w := fresh()
	if res := apply(w, "", false); !res.Held {
		t.Fatalf("watcher: %+v", res)
	}
	if res := apply(fresh(), "", true); res.Held || len(res.Rules) != 0 {
		t.Fatalf("confirm: %+v", res)
	}
	if res := apply(w, "", false); res.Held || !res.Matched {
		t.Errorf("watcher after the confirmation: %+v", res)
	}
	if res := apply(fresh(), "", false); res.Held {
		t.Errorf("confirmed empty file held back again: %+v", res)
	}
	// A copy no one should believe is ignored with a warning: the file
	// is taken as it is, and the copy replaced.
	apply(fresh(), three, false)
	os.Chmod(path, 0o664)
	res := apply(fresh(), "", false)
	if res.Held || len(res.Warnings) == 0 || !strings.Contains(res.Warnings[0], "writable by group") {
		t.Errorf("group-writable copy: %+v", res)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o640 {
		t.Errorf("the refused copy was not replaced: %v", fi.Mode())
	}
	// A copy that is whole but does not parse (a stricter parser since):
	// not believed, replaced.
	atomic.WriteFile(path, 0o640, func(f *os.File) error {
		return Encode(f, "/etc/tcp.smtp", []byte("10.0.0.1:bogus\n"), 1)
	})
	if res := apply(fresh(), "", false); res.Held || len(res.Warnings) == 0 || !strings.Contains(res.Warnings[0], "unable to parse") {
		t.Errorf("copy that does not parse: %+v", res)
	}
	if c, err := Read(path); err != nil || c.N != 0 {
		t.Errorf("the copy that does not parse was not replaced: %v", err)
	}
	// A long-running writer whose copy went keeps its memory.
	apply(w, three, true)
	os.Remove(path)
	if res := apply(w, "", false); !res.Held {
		t.Errorf("copy removed under a watcher: %+v", res)
	}
	// A copy of another rules file is not compared with.
	apply(fresh(), three, true)
	other := &Guard{Path: path, Source: "/etc/other"}
	if res := apply(other, "", false); res.Held || len(res.Warnings) == 0 {
		t.Errorf("copy of another file: %+v", res)
	}
	// ReadOnly never writes.
	os.Remove(path)
	ro := &Guard{Path: path, Source: "/etc/tcp.smtp", ReadOnly: true}
	apply(ro, three, false)
	if _, err := os.Stat(path); err == nil {
		t.Error("ReadOnly saved the copy")
	}
	// A confirmation that cannot be saved is an error.
	bad := &Guard{Path: filepath.Join(dir, "no", "such", "dir"), Source: "/etc/tcp.smtp"}
	if _, err := bad.Apply([]byte(three), parse(t, three), true); err == nil {
		t.Error("confirmation not saved: no error")
	}
	if res, err := bad.Apply([]byte(three), parse(t, three), false); err != nil || len(res.Warnings) == 0 {
		t.Errorf("automatic read not saved: %v %+v", err, res)
	}
}

func FuzzDecode(f *testing.F) {
	var b bytes.Buffer
	Encode(&b, "/etc/tcp.smtp", []byte(three), 3)
	f.Add(b.Bytes())
	f.Add([]byte("poprelay-rules 1 0 0 \"x\"\n\nend 00000000\n"))
	f.Fuzz(func(t *testing.T, buf []byte) {
		c, err := Decode(buf)
		if err != nil {
			return
		}
		var again bytes.Buffer
		Encode(&again, c.Source, c.Text, c.N)
		d, err := Decode(again.Bytes())
		if err != nil || d.Source != c.Source || !bytes.Equal(d.Text, c.Text) || d.N != c.N {
			t.Fatalf("re-encoded copy: %v", err)
		}
		c.Rules() // never panics
	})
}
