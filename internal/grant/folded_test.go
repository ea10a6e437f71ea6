package grant

import (
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// record writes gs to s's spool, failing the test on an error.
func record(t *testing.T, s *Store, gs ...Grant) {
	t.Helper()
	for _, g := range gs {
		if err := s.Record(g); err != nil {
			t.Fatal(err)
		}
	}
}

// fold folds s's whole spool as relayctl does: scan, load, Fold.
func fold(t *testing.T, s *Store) []Grant {
	t.Helper()
	snap, _, err := s.Scan(nil, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	gs, _, err := s.Load(snap, nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := foldAll(s, slices.Clone(gs), snap); err != nil {
		t.Fatal(err)
	}
	return gs
}

// foldAll folds gs, then sweeps every grant file snap read.
func foldAll(s *Store, gs []Grant, snap *Snapshot) error {
	if _, err := s.Fold(gs, snap); err != nil {
		return err
	}
	return s.Sweep(snap, All(len(snap.Grants)))
}

// ips lists the grants as "IP user".
func ips(gs []Grant) []string {
	var out []string
	for _, g := range gs {
		out = append(out, g.IP+" "+g.User)
	}
	return out
}

// TestFoldThenLoad: a fold leaves the folded file alone in the spool,
// holding every grant; logins after it are read over it; the golden file
// pins the format (a new release must read it).
func TestFoldThenLoad(t *testing.T) {
	s, logs := logStore(t)
	now := time.Unix(time.Now().Unix(), 0)
	record(t, s,
		Grant{IP: "2001:db8::7", User: "carol", Service: "imap", Time: now.Add(-time.Minute)},
		Grant{IP: "192.0.2.10", User: "alice", Service: "pop3", Time: now.Add(-2 * time.Minute)},
		Grant{IP: "192.0.2.9", User: "admin", Service: "manual", Time: now.Add(-3 * time.Minute), Expires: now.Add(30 * 24 * time.Hour)},
	)
	before, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	fold(t, s)
	if n := names(t, s.Dir); !slices.Equal(n, []string{FoldedName}) {
		t.Fatalf("spool after a fold: %q", n)
	}
	after, err := s.List()
	if err != nil || !reflect.DeepEqual(after, before) {
		t.Fatalf("after the fold:\n%v, %v\nbefore:\n%v", after, err, before)
	}
	fi, _ := os.Stat(filepath.Join(s.Dir, FoldedName))
	if fi.Mode().Perm() != fileMode {
		t.Errorf("folded file mode %v, want %v", fi.Mode().Perm(), os.FileMode(fileMode))
	}
	// A login over the admin's long grant keeps its end; a new one is added.
	record(t, s, Grant{IP: "192.0.2.9", User: "bob", Service: "pop3", Time: now},
		Grant{IP: "10.1.1.1", User: "dave", Service: "pop3", Time: now})
	gs, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	if got := ips(gs); !slices.Equal(got, []string{"10.1.1.1 dave", "192.0.2.9 bob", "192.0.2.10 alice", "2001:db8::7 carol"}) {
		t.Errorf("after two logins: %q", got)
	}
	if !gs[1].Expiry(time.Hour).Equal(now.Add(30 * 24 * time.Hour)) {
		t.Errorf("the login cut the admin's grant short: %+v", gs[1])
	}
	for ip, want := range map[string]string{"192.0.2.9": "bob", "192.0.2.10": "alice", "2001:db8::7": "carol"} {
		if g, ok, err := s.Get(ip); !ok || err != nil || g.User != want {
			t.Errorf("Get(%s) = %+v, %v, %v", ip, g, ok, err)
		}
	}
	// Get gives the grant as List does: the login's file over the
	// admin's folded allowance keeps its end.
	if g, _, _ := s.Get("192.0.2.9"); g != gs[1] {
		t.Errorf("Get(192.0.2.9) = %+v; List has %+v", g, gs[1])
	}
	if len(*logs) != 0 {
		t.Errorf("log lines: %q", *logs)
	}

	// The format, as this release writes it.
	var b bytes.Buffer
	if err := encodeFolded(&b, []Grant{
		{IP: "192.0.2.9", User: "admin", Service: "manual", Time: time.Unix(1764150000, 0), Expires: time.Unix(1766742000, 0)},
		{IP: "192.0.2.10", User: "alice@example.com", Service: "pop3", Time: time.Unix(1764150060, 0), Keep: time.Unix(1764160000, 0)},
		{IP: "2001:db8::7", User: "", Service: "vpopmail", Time: time.Unix(1764150120, 0)},
	}); err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "folded-v1")
	if os.Getenv("UPDATE_GOLDEN") != "" {
		os.WriteFile(golden, b.Bytes(), 0o644)
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b.Bytes(), want) {
		t.Errorf("the folded file's format changed:\n%s\nwant (%s):\n%s", b.Bytes(), golden, want)
	}
	if gs, err := parseFolded(want, 0); err != nil || len(gs) != 3 || gs[1].User != "alice@example.com" || !gs[1].Keep.Equal(time.Unix(1764160000, 0)) {
		t.Errorf("%s read as %+v, %v", golden, gs, err)
	}
}

// TestFoldKeepsLaterLogin: a login that replaced a grant file after the
// fold read it is not removed with it: the fold links it back.
func TestFoldKeepsLaterLogin(t *testing.T) {
	s, _ := logStore(t)
	now := time.Now()
	record(t, s, Grant{IP: "192.0.2.1", User: "old", Service: "pop3", Time: now.Add(-time.Minute)},
		Grant{IP: "192.0.2.2", User: "other", Service: "pop3", Time: now.Add(-time.Minute)})
	snap, _, err := s.Scan(nil, now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	gs, _, err := s.Load(snap, nil, now)
	if err != nil {
		t.Fatal(err)
	}
	// The login lands after the read, before the fold's claim.
	record(t, s, Grant{IP: "192.0.2.1", User: "new", Service: "imap", Time: now})
	if err := foldAll(s, gs, snap); err != nil {
		t.Fatal(err)
	}
	if n := names(t, s.Dir); !slices.Equal(n, []string{FoldedName, "192.0.2.1"}) {
		t.Errorf("spool after the fold: %q", n)
	}
	all, err := s.List()
	if err != nil || !slices.Equal(ips(all), []string{"192.0.2.1 new", "192.0.2.2 other"}) {
		t.Errorf("after the fold: %q, %v", ips(all), err)
	}
	// The same file as read (a capped future time) goes.
	record(t, s, Grant{IP: "192.0.2.3", User: "future", Service: "pop3", Time: now})
	b := []byte(fmt.Sprintf("user=future\nservice=pop3\ntime=%d\n", now.Add(time.Hour).Unix()))
	os.WriteFile(filepath.Join(s.Dir, "192.0.2.3"), b, 0o640)
	snap, _, _ = s.Scan(nil, now, time.Hour)
	gs, _, _ = s.Load(snap, nil, time.Now())
	if len(snap.Capped) != 1 {
		t.Fatalf("capped: %v", snap.Capped)
	}
	if err := foldAll(s, gs, snap); err != nil {
		t.Fatal(err)
	}
	if n := names(t, s.Dir); !slices.Equal(n, []string{FoldedName}) {
		t.Errorf("spool after folding a capped grant: %q", n)
	}
}

// TestFoldCrash: whatever step of a fold a crash stops it at, every grant
// is there, as it was; the next fold finishes the job. The steps are
// replayed by hand on copies of one spool.
func TestFoldCrash(t *testing.T) {
	now := time.Now()
	base := []Grant{
		{IP: "192.0.2.1", User: "a", Service: "pop3", Time: now.Add(-3 * time.Minute)},
		{IP: "192.0.2.2", User: "b", Service: "pop3", Time: now.Add(-2 * time.Minute)},
		{IP: "192.0.2.3", User: "c", Service: "pop3", Time: now.Add(-time.Minute)},
	}
	// start: 192.0.2.1 folded, .2 and .3 files; .3 also folded, older.
	setup := func(t *testing.T) (*Store, []Grant) {
		s, _ := logStore(t)
		old := base[2]
		old.User, old.Time = "c-old", now.Add(-50*time.Minute)
		if _, err := s.writeFolded([]Grant{trunc(base[0]), trunc(old)}); err != nil {
			t.Fatal(err)
		}
		record(t, s, base[1], base[2])
		want, err := s.List()
		if err != nil || !slices.Equal(ips(want), []string{"192.0.2.1 a", "192.0.2.2 b", "192.0.2.3 c"}) {
			t.Fatalf("setup: %q, %v", ips(want), err)
		}
		return s, want
	}
	rename := func(t *testing.T, s *Store, from, to string) {
		if err := os.Rename(filepath.Join(s.Dir, from), filepath.Join(s.Dir, to)); err != nil {
			t.Fatal(err)
		}
	}
	steps := map[string]func(t *testing.T, s *Store, all []Grant){
		"folded file written": func(t *testing.T, s *Store, all []Grant) {
			s.writeFolded(all)
		},
		"one file claimed": func(t *testing.T, s *Store, all []Grant) {
			s.writeFolded(all)
			rename(t, s, "192.0.2.2", ".fold-192.0.2.2")
		},
		"claimed, a later login linked back": func(t *testing.T, s *Store, all []Grant) {
			s.writeFolded(all)
			rename(t, s, "192.0.2.3", ".fold-192.0.2.3")
			later := base[2]
			later.User, later.Time = "c-new", now
			b := encode(later)
			os.WriteFile(filepath.Join(s.Dir, ".fold-192.0.2.3"), b, 0o640)
		},
		"claimed before the folded file": func(t *testing.T, s *Store, all []Grant) {
			rename(t, s, "192.0.2.2", ".fold-192.0.2.2")
			rename(t, s, "192.0.2.3", ".fold-192.0.2.3")
		},
	}
	for name, step := range steps {
		t.Run(strings.ReplaceAll(name, " ", "_"), func(t *testing.T) {
			s, want := setup(t)
			step(t, s, slices.Clone(want))
			if name == "claimed, a later login linked back" {
				want[2].User, want[2].Time = "c-new", time.Unix(now.Unix(), 0)
			}
			got, err := s.List()
			if err != nil || !reflect.DeepEqual(got, want) {
				t.Fatalf("after the crash:\n%v, %v\nwant\n%v", got, err, want)
			}
			for _, g := range want {
				if h, ok, err := s.Get(g.IP); !ok || err != nil || h != g {
					t.Errorf("Get(%s) = %+v, %v, %v", g.IP, h, ok, err)
				}
			}
			// The next fold reads the claimed files and removes them.
			snap, _, _ := s.Scan(nil, now, time.Hour)
			gs, capped, err := s.Load(snap, nil, time.Now())
			if err != nil || capped != 0 {
				t.Fatalf("Load: %v, %d capped", err, capped)
			}
			if err := foldAll(s, gs, snap); err != nil {
				t.Fatal(err)
			}
			if n := names(t, s.Dir); !slices.Equal(n, []string{FoldedName}) {
				t.Errorf("spool after the next fold: %q", n)
			}
			if got, _ := s.List(); !reflect.DeepEqual(got, want) {
				t.Errorf("after the next fold:\n%v\nwant\n%v", got, want)
			}
		})
	}
}

// trunc is g as a file holds it: whole seconds.
func trunc(g Grant) Grant {
	g.Time = time.Unix(g.Time.Unix(), 0)
	return g
}

// TestReadFoldedRefused: a folded file that is not what a fold wrote is
// refused, naming the line, never half believed.
func TestReadFoldedRefused(t *testing.T) {
	now := time.Unix(1764150000, 0)
	good := []Grant{
		{IP: "192.0.2.1", User: "a", Service: "pop3", Time: now},
		{IP: "192.0.2.2", User: "b", Service: "pop3", Time: now},
		{IP: "2001:db8::1", User: "c", Service: "imap", Time: now},
	}
	enc := func(gs []Grant) []byte {
		var b bytes.Buffer
		if err := encodeFolded(&b, gs); err != nil {
			t.Fatal(err)
		}
		return b.Bytes()
	}
	swap := slices.Clone(good)
	swap[0], swap[1] = swap[1], swap[0]
	mapped := slices.Clone(good)
	mapped[2].IP = "::ffff:192.0.2.9"
	long := slices.Clone(good)
	long[2].IP = "2001:0db8::1"
	dup := slices.Clone(good)
	dup[1].IP = "192.0.2.1"
	ctl := slices.Clone(good)
	ctl[1].User = "b\x01"
	flipped := enc(good)
	flipped[len(foldedMagic)+3] ^= 1
	for what, c := range map[string]struct {
		b    []byte
		want string
	}{
		"out of order":  {enc(swap), "line 3: out of order"},
		"twice":         {enc(dup), "line 3: out of order"},
		"mapped":        {enc(mapped), "line 4: not a canonical address"},
		"not canonical": {enc(long), "line 4: not a canonical address"},
		"control":       {enc(ctl), "line 3: bad user or service name"},
		"flipped bit":   {flipped, "bad checksum"},
		"truncated":     {enc(good)[:40], "truncated"},
		"state file":    {[]byte("poprelay-state 3 1 2 0\nend\t0\t" + fmt.Sprintf("%08x", crc("poprelay-state 3 1 2 0\n")) + "\n"), "not a poprelay-grants 1 file"},
	} {
		_, err := parseFolded(c.b, 0)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", what, err, c.want)
		}
	}

	s, _ := logStore(t)
	p := filepath.Join(s.Dir, FoldedName)
	write := func(b []byte, mode os.FileMode) {
		os.Remove(p)
		if err := os.WriteFile(p, b, mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode)
	}
	write(enc(good), 0o640)
	if f, err := s.ReadFolded(0); err != nil || len(f.Grants) != 3 {
		t.Fatalf("a good folded file: %v", err)
	}
	for what, mode := range map[string]os.FileMode{"group-writable": 0o660, "world-writable": 0o646} {
		write(enc(good), mode)
		if _, err := s.ReadFolded(0); !errors.Is(err, ErrFolded) {
			t.Errorf("%s: %v", what, err)
		}
		if _, _, err := s.Get("192.0.2.1"); !errors.Is(err, ErrFolded) {
			t.Errorf("%s: Get: %v", what, err)
		}
	}
	os.Remove(p)
	other := filepath.Join(t.TempDir(), "elsewhere")
	os.WriteFile(other, enc(good), 0o640)
	os.Symlink(other, p)
	if _, err := s.List(); !errors.Is(err, ErrFolded) {
		t.Errorf("symlink: %v", err)
	}
	if os.Geteuid() == 0 {
		write(enc(good), 0o640)
		os.Chown(p, 4242, 4242)
		if _, err := s.ReadFolded(0); !errors.Is(err, ErrFolded) {
			t.Errorf("foreign owner: %v", err)
		}
	}
}

// crc is the CRC-32C of s.
func crc(s string) uint32 { return crc32.Checksum([]byte(s), castagnoli()) }

// TestOverlay: a grant over a folded one replaces it, keeping a longer end
// unless it sets its own; others are added in order. Both ways of
// finding places (a few, many) give the same.
func TestOverlay(t *testing.T) {
	now := time.Unix(1764150000, 0)
	var base []Grant
	for i := range 200 {
		base = append(base, Grant{IP: fmt.Sprintf("10.0.%d.%d", i/100, i%100*2), User: "u", Service: "pop3", Time: now})
	}
	base[3].Expires = now.Add(48 * time.Hour)
	base[5].Keep = now.Add(24 * time.Hour)
	for _, k := range []int{3, 150} {
		var top []Grant
		for i := range k {
			// Odd last bytes are new, even ones replace.
			top = append(top, Grant{IP: fmt.Sprintf("10.0.%d.%d", i/100, i%100), User: "t", Service: "imap", Time: now.Add(time.Minute)})
		}
		top = append(top, Grant{IP: "10.9.9.9", User: "t", Service: "imap", Time: now})
		if k == 3 {
			top[2] = Grant{IP: "10.0.0.6", User: "admin", Service: "manual", Time: now, Expires: now.Add(time.Minute)}
		}
		got := Overlay(slices.Clone(base), top)
		want := slices.Clone(base)
		for _, g := range top {
			i := slices.IndexFunc(want, func(h Grant) bool { return h.IP == g.IP })
			if i < 0 {
				want = append(want, g)
				continue
			}
			keepLonger(&g, want[i])
			want[i] = g
		}
		SortByAddr(want)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%d over %d: wrong result", len(top), len(base))
		}
		if i := slices.IndexFunc(got, func(g Grant) bool { return g.IP == "10.0.0.6" }); !got[i].Keep.Equal(now.Add(48*time.Hour)) && k != 3 {
			t.Errorf("a login over a 48h grant: %+v", got[i])
		}
		if k == 3 {
			if i := slices.IndexFunc(got, func(g Grant) bool { return g.IP == "10.0.0.6" }); !got[i].Keep.IsZero() {
				t.Errorf("an admin's new allowance kept the old end: %+v", got[i])
			}
		}
	}
}

// TestRemoveFolded: Remove takes a grant out of the folded file too, and
// Getter sees the folded file replaced.
func TestRemoveFolded(t *testing.T) {
	s, _ := logStore(t)
	now := time.Now()
	record(t, s, Grant{IP: "192.0.2.1", User: "a", Service: "pop3", Time: now},
		Grant{IP: "192.0.2.2", User: "b", Service: "pop3", Time: now})
	fold(t, s)
	r := &Getter{Store: s}
	if _, ok, err := r.Get("192.0.2.1"); !ok || err != nil {
		t.Fatalf("Get before: %v, %v", ok, err)
	}
	if ok, err := s.Remove("192.0.2.1"); !ok || err != nil {
		t.Fatalf("Remove = %v, %v", ok, err)
	}
	if _, ok, err := r.Get("192.0.2.1"); ok || err != nil {
		t.Errorf("Get after Remove: %v, %v", ok, err)
	}
	if ok, err := s.Remove("192.0.2.1"); ok || err != nil {
		t.Errorf("Remove again = %v, %v", ok, err)
	}
	if gs, _ := s.List(); !slices.Equal(ips(gs), []string{"192.0.2.2 b"}) {
		t.Errorf("left: %q", ips(gs))
	}
}

// FuzzParseFolded: any bytes are refused or parsed, never a panic; what
// parses, written back, is the same bytes.
func FuzzParseFolded(f *testing.F) {
	var b bytes.Buffer
	now := time.Unix(1764150000, 0)
	encodeFolded(&b, []Grant{
		{IP: "192.0.2.1", User: "alice", Service: "pop3", Time: now},
		{IP: "2001:db8::1", User: "bob", Service: "imap", Time: now, Expires: now.Add(time.Hour), Keep: now.Add(2 * time.Hour)},
	})
	f.Add(b.Bytes())
	f.Add([]byte(foldedMagic + "end\t0\t00000000\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		gs, err := parseFolded(in, 0)
		if err != nil {
			return
		}
		var out bytes.Buffer
		if err := encodeFolded(&out, gs); err != nil {
			t.Fatal(err)
		}
		again, err := parseFolded(out.Bytes(), 0)
		if err != nil {
			t.Fatalf("written back, refused: %v", err)
		}
		if !reflect.DeepEqual(again, gs) {
			t.Fatalf("round trip changed the grants")
		}
	})
}

// BenchmarkReadFolded: a folded file of 100k grants read and checked, as
// a rebuild at a large site starts.
func BenchmarkReadFolded(b *testing.B) {
	s := New(b.TempDir())
	now := time.Unix(1764150000, 0)
	var gs []Grant
	for i := range 100_000 {
		gs = append(gs, Grant{IP: fmt.Sprintf("11.%d.%d.%d", i>>16, i>>8&255, i&255),
			User: fmt.Sprintf("user%d@example.com", i), Service: "pop3", Time: now})
	}
	if _, err := s.writeFolded(gs); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.ReadFolded(0); err != nil {
			b.Fatal(err)
		}
	}
}

// TestFoldPartial: a fold whose sweep removes only some grant files
// leaves the others holding grants the folded file has: the grants read
// the same, and a later sweep, with logins in between, removes the rest
// but the login's.
func TestFoldPartial(t *testing.T) {
	s, _ := logStore(t)
	now := time.Now()
	for i := range 5 {
		record(t, s, Grant{IP: fmt.Sprintf("192.0.2.%d", i+1), User: "u", Service: "pop3", Time: now.Add(-time.Minute)})
	}
	want, _ := s.List()
	snap, _, _ := s.Scan(nil, now, time.Hour)
	gs, _, _ := s.Load(snap, nil, now)
	if _, err := s.Fold(gs, snap); err != nil {
		t.Fatal(err)
	}
	if err := s.Sweep(snap, []int{0, 1}); err != nil {
		t.Fatal(err)
	}
	if n := names(t, s.Dir); len(n) != 4 {
		t.Fatalf("after sweeping 2 of 5: spool %q", n)
	}
	if got, _ := s.List(); !reflect.DeepEqual(got, want) {
		t.Errorf("after a partial sweep:\n%v\nwant\n%v", got, want)
	}
	record(t, s, Grant{IP: "192.0.2.4", User: "later", Service: "imap", Time: now})
	if err := s.Sweep(snap, []int{2, 3, 4}); err != nil {
		t.Fatal(err)
	}
	if n := names(t, s.Dir); !slices.Equal(n, []string{FoldedName, "192.0.2.4"}) {
		t.Errorf("after the rest: %q", n)
	}
	want[3].User, want[3].Service, want[3].Time = "later", "imap", time.Unix(now.Unix(), 0)
	if got, _ := s.List(); !reflect.DeepEqual(got, want) {
		t.Errorf("after the rest:\n%v\nwant\n%v", got, want)
	}
}

// TestFoldedFuture: a folded grant dated in the future (a clock set back
// since the fold) is taken as made now, and Load counts it, so that the
// caller folds it so.
func TestFoldedFuture(t *testing.T) {
	s, _ := logStore(t)
	now := time.Now()
	ahead := now.Add(365 * 24 * time.Hour)
	if _, err := s.writeFolded([]Grant{{IP: "192.0.2.1", User: "a", Service: "pop3", Time: time.Unix(ahead.Unix(), 0)}}); err != nil {
		t.Fatal(err)
	}
	snap, _, _ := s.Scan(nil, now, time.Hour)
	gs, capped, err := s.Load(snap, nil, now)
	if err != nil || capped != 1 || len(gs) != 1 || gs[0].Time.After(now.Add(Skew)) {
		t.Fatalf("Load = %+v, %d capped, %v", gs, capped, err)
	}
	if g, ok, _ := s.Get("192.0.2.1"); !ok || g.Time.After(now.Add(Skew)) {
		t.Errorf("Get = %+v, %v", g, ok)
	}
}

// TestRemoveBefore: a revocation made at a time removes the grants for
// the address recorded until then, in a file, a claimed file or the
// folded file, and leaves a login since.
func TestRemoveBefore(t *testing.T) {
	s, _ := logStore(t)
	at := time.Unix(1764150000, 0)
	rec := func(ip string, when time.Time) {
		t.Helper()
		if err := s.Record(Grant{IP: ip, User: "u", Service: "pop3", Time: when}); err != nil {
			t.Fatal(err)
		}
	}
	// Folded: .1 before, .2 after, .3 before (with a later login in a file).
	rec("192.0.2.1", at.Add(-time.Hour))
	rec("192.0.2.2", at.Add(time.Minute))
	rec("192.0.2.3", at.Add(-time.Hour))
	gs, snap, err := s.list(at, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Fold(gs, snap); err != nil {
		t.Fatal(err)
	}
	if err := s.Sweep(snap, All(len(snap.Grants))); err != nil {
		t.Fatal(err)
	}
	rec("192.0.2.3", at.Add(time.Second))
	rec("192.0.2.4", at)                   // a file, at the very time: goes
	rec("192.0.2.5", at.Add(time.Second))  // a file, after: stays
	rec("192.0.2.6", at.Add(-time.Second)) // claimed by a killed fold: goes
	if err := os.Rename(filepath.Join(s.Dir, "192.0.2.6"), filepath.Join(s.Dir, claimPrefix+"192.0.2.6")); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		ip   string
		gone bool
	}{{"192.0.2.1", true}, {"192.0.2.2", false}, {"192.0.2.3", true}, {"192.0.2.4", true}, {"192.0.2.5", false}, {"192.0.2.6", true}, {"192.0.2.7", false}} {
		gone, err := s.RemoveBefore(c.ip, at)
		if err != nil || gone != c.gone {
			t.Errorf("RemoveBefore(%s) = %v, %v; want %v", c.ip, gone, err, c.gone)
		}
	}
	var left []string
	gs, err = s.List()
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range gs {
		left = append(left, fmt.Sprintf("%s %d", g.IP, g.Time.Sub(at)/time.Second))
	}
	if want := []string{"192.0.2.2 60", "192.0.2.3 1", "192.0.2.5 1"}; !slices.Equal(left, want) {
		t.Errorf("left %q, want %q", left, want)
	}
	for _, n := range names(t, s.Dir) {
		if strings.HasPrefix(n, claimPrefix) {
			t.Errorf("claimed file left: %s", n)
		}
	}
}
