package grant

import (
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/poprelay/poprelay/internal/wait"
)

// roundTrip writes snap as a state file and reads it back.
func roundTrip(t *testing.T, s *Store, snap *Snapshot, path string) *Snapshot {
	t.Helper()
	var b bytes.Buffer
	if err := s.WriteState(&b, snap); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b.Bytes(), 0o640); err != nil {
		t.Fatal(err)
	}
	got, err := s.ReadState(path)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// TestScanMatchesList: a chain of scans, each from the previous one saved
// and read back as a state file, sees exactly what a full read of the
// spool sees, through random logins, refreshes, revokes, damaged and
// foreign files, and reads only the files that changed.
func TestScanMatchesList(t *testing.T) {
	s, _ := logStore(t)
	state := filepath.Join(t.TempDir(), "state")
	rng := rand.New(rand.NewPCG(1, 2))
	now := time.Now()
	ips := make([]string, 300)
	for i := range ips {
		if i%3 == 0 {
			ips[i] = fmt.Sprintf("2001:db8::%x", i)
		} else {
			ips[i] = fmt.Sprintf("10.%d.%d.%d", i%7, i%11, i%256)
		}
	}
	var snap *Snapshot
	for round := range 40 {
		changed := 0
		for range rng.IntN(20) {
			ip := ips[rng.IntN(len(ips))]
			changed++
			switch rng.IntN(6) {
			case 0, 1, 2: // a login, or a refresh
				age := time.Duration(rng.IntN(7200)) * time.Second
				if err := s.Record(Grant{IP: ip, User: fmt.Sprintf("u%d", rng.IntN(9)), Service: "pop3", Time: now.Add(-age)}); err != nil {
					t.Fatal(err)
				}
			case 3: // a revoke
				s.Remove(ip)
			case 4: // a damaged file
				os.WriteFile(filepath.Join(s.Dir, ip+".tmp"), nil, 0o640)
				os.Rename(filepath.Join(s.Dir, ip+".tmp"), filepath.Join(s.Dir, ip))
			case 5: // an admin's grant
				if err := s.Record(Grant{IP: ip, User: "admin", Service: "manual", Time: now, Expires: now.Add(48 * time.Hour)}); err != nil {
					t.Fatal(err)
				}
			}
		}
		var st ScanStats
		var err error
		// A clock far ahead, so the scan records the directory's
		// change time and a round without changes takes the fast
		// path; nextTick keeps the race it guards against away.
		snap, st, err = s.scan(snap, now, time.Now().Add(time.Hour), time.Hour, true)
		if err != nil {
			t.Fatal(err)
		}
		if snap.Dir == 0 {
			t.Fatalf("round %d: no directory change time recorded", round)
		}
		nextTick(t, s.Dir)
		want, err := s.List()
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(snap.Grants, want) && !(len(want) == 0 && len(snap.Grants) == 0) {
			t.Fatalf("round %d: Scan found\n%v\nList found\n%v", round, snap.Grants, want)
		}
		expired := 0
		for _, g := range want {
			if !g.Expiry(time.Hour).After(now) {
				expired++
			}
		}
		if round > 0 && st.Read > changed+expired+st.Entries-len(want) {
			t.Errorf("round %d: %d files read for %d changes (%d expired, %d not grants)", round, st.Read, changed, expired, st.Entries-len(want))
		}
		snap = roundTrip(t, s, snap, state)
	}
}

// TestScanRereadsExpired: a grant the snapshot has as expired is read
// again before it is dropped, even if its file kept its inode number (as a
// file rewritten twice may): the login it may hold is not lost.
func TestScanRereadsExpired(t *testing.T) {
	s, _ := logStore(t)
	now := time.Now()
	if err := s.Record(Grant{IP: "192.0.2.1", User: "alice", Service: "pop3", Time: now}); err != nil {
		t.Fatal(err)
	}
	snap, _, err := s.Scan(nil, now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// A snapshot that says the same file held a login two hours old.
	snap.Grants[0].Time = now.Add(-2 * time.Hour)
	snap, st, err := s.Scan(snap, now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if st.Read != 1 || len(snap.Grants) != 1 || !snap.Grants[0].Time.Equal(time.Unix(now.Unix(), 0)) {
		t.Errorf("read %d, grants %v", st.Read, snap.Grants)
	}
	// A live one with the same inode is taken as it is.
	snap, st, _ = s.Scan(snap, now, time.Hour)
	if st.Read != 0 || st.Kept != 1 || st.Changed() {
		t.Errorf("stats %+v", st)
	}
}

// TestScanInodeReused: a grant file removed and made again (or replaced
// twice) may get its old inode number back, as ext4 gives a freed number
// to the next new file at once; the scan must read the new content, not
// keep the old grant (here an admin's 48-hour allowance and its user) on
// the strength of the number. The reuse is staged: the snapshot holds the
// old grant with the new file's inode number.
func TestScanInodeReused(t *testing.T) {
	s, _ := logStore(t)
	now := time.Now()
	ip := "192.0.2.7"
	if err := s.Record(Grant{IP: ip, User: "admin", Service: "relayctl", Time: now, Expires: now.Add(48 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
	snap, _, err := s.Scan(nil, now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	snap = roundTrip(t, s, snap, filepath.Join(t.TempDir(), "state"))
	stageReuse(t, s, snap, ip, now)
	snap, stats, err := s.Scan(snap, now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Grants) != 1 || snap.Grants[0].User != "alice" || !snap.Grants[0].Expires.IsZero() || stats.Read != 1 {
		t.Errorf("read %d, grants %+v: want alice's login, read from the file", stats.Read, snap.Grants)
	}
	// Unchanged since, it is kept without a read.
	if _, stats, _ = s.Scan(snap, now, time.Hour); stats.Read != 0 || stats.Kept != 1 {
		t.Errorf("stats %+v", stats)
	}
}

// stageReuse removes the grant file for ip, makes it again with alice's
// login, and gives snap's entry for ip the new file's inode number: as
// if the file system had handed the old number back (ext4 does).
func stageReuse(t *testing.T, s *Store, snap *Snapshot, ip string, now time.Time) {
	t.Helper()
	if _, err := s.Remove(ip); err != nil {
		t.Fatal(err)
	}
	if err := s.Record(Grant{IP: ip, User: "alice", Service: "pop3", Time: now}); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(s.Dir, ip), &st); err != nil {
		t.Fatal(err)
	}
	for i := range snap.Grants {
		if snap.Grants[i].IP == ip {
			snap.Files[i].Ino = st.Ino // the number came back
			return
		}
	}
	t.Fatalf("%s is not in the snapshot", ip)
}

// TestStateRefused: a state file that is not trustworthy (writable by the
// poprelay group or anyone else, owned by another user, a symlink),
// damaged, or written for another spool is refused, so a rebuild reads the
// spool itself. Here the state claims a grant lasting a year for an
// address whose file (same inode) holds a grant long expired.
func TestStateRefused(t *testing.T) {
	s, _ := logStore(t)
	dir := t.TempDir()
	now := time.Now()
	if err := s.Record(Grant{IP: "192.0.2.1", User: "mallory", Service: "pop3", Time: now.Add(-3 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
	snap, _, err := s.Scan(nil, now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	snap.Grants[0].Expires = now.Add(365 * 24 * time.Hour)
	var good bytes.Buffer
	if err := s.WriteState(&good, snap); err != nil {
		t.Fatal(err)
	}
	write := func(name string, b []byte, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode)
		return p
	}
	if _, err := s.ReadState(write("ok", good.Bytes(), 0o640)); err != nil {
		t.Fatalf("a good state file: %v", err)
	}
	flipped := bytes.Clone(good.Bytes())
	flipped[len(stateMagic)+30] ^= 1
	other := New(t.TempDir())
	var others bytes.Buffer
	other.WriteState(&others, snap)
	bad := map[string]string{
		"group-writable": write("gw", good.Bytes(), 0o660),
		"world-writable": write("ww", good.Bytes(), 0o646),
		"truncated":      write("trunc", good.Bytes()[:good.Len()-5], 0o640),
		"flipped bit":    write("flip", flipped, 0o640),
		"other spool":    write("other", others.Bytes(), 0o600),
		"empty":          write("empty", nil, 0o600),
	}
	if os.Geteuid() == 0 {
		p := write("foreign", good.Bytes(), 0o640)
		if err := os.Chown(p, 4242, 4242); err != nil {
			t.Fatal(err)
		}
		bad["owned by another user"] = p
	} else {
		t.Log("not root: the foreign owner case is not tested")
	}
	link := filepath.Join(dir, "link")
	os.Symlink(filepath.Join(dir, "ok"), link)
	bad["symlink"] = link
	for what, p := range bad {
		got, err := s.ReadState(p)
		if !errors.Is(err, ErrState) {
			t.Errorf("%s: ReadState = %v, %v; want ErrState", what, got, err)
		}
	}
	// Believed, the good one keeps the grant; the spool says it is over.
	prev, _ := s.ReadState(filepath.Join(dir, "ok"))
	trusted, _, _ := s.Scan(prev, now, time.Hour)
	if len(trusted.Grants) != 1 || !trusted.Grants[0].Expiry(time.Hour).After(now) {
		t.Fatalf("the state's own grant should be taken as it is: %v", trusted.Grants)
	}
	fromSpool, _, _ := s.Scan(nil, now, time.Hour)
	if fromSpool.Grants[0].Expiry(time.Hour).After(now) {
		t.Fatalf("the spool's grant should be expired: %v", fromSpool.Grants)
	}
}

// dirCtime is the inode change time of dir, in nanoseconds.
func dirCtime(t *testing.T, dir string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ctim.Nano()
}

// nextTick waits until the file system's clock has moved past dir's
// change time, so the next change of dir gets a later one (what racyAge
// ensures for a real scan).
func nextTick(t *testing.T, dir string) {
	t.Helper()
	at := dirCtime(t, dir)
	probe := filepath.Join(t.TempDir(), "probe")
	wait.For(t, "the file system's clock to tick", func() bool {
		os.Remove(probe)
		if err := os.WriteFile(probe, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		return dirCtime(t, probe) > at
	})
}

// TestScanDirUnchanged: while the spool directory keeps the change time
// the snapshot recorded, a scan reads and stats no grant file; any login,
// refresh or revoke since changes it, and the scan then checks every
// file, the staged reuse of an inode number (TestScanInodeReused)
// included. A directory that changed within racyAge of the scan gets no
// recorded time, and a version 2 state file (none) is read as such.
func TestScanDirUnchanged(t *testing.T) {
	s, _ := logStore(t)
	now := time.Now()
	later := now.Add(time.Hour) // the directory looks long quiet
	ip := "192.0.2.7"
	for _, g := range []Grant{
		{IP: ip, User: "admin", Service: "relayctl", Time: now, Expires: now.Add(48 * time.Hour)},
		{IP: "192.0.2.8", User: "bob", Service: "imap", Time: now},
	} {
		if err := s.Record(g); err != nil {
			t.Fatal(err)
		}
	}
	if snap, _, err := s.Scan(nil, now, time.Hour); err != nil || snap.Dir != 0 {
		t.Fatalf("a directory changed just now: Dir %d, %v (want 0)", snap.Dir, err)
	}
	snap, _, err := s.scan(nil, now, later, time.Hour, true)
	if err != nil {
		t.Fatal(err)
	}
	if snap.Dir != dirCtime(t, s.Dir) {
		t.Fatalf("Dir %d, want the directory's change time %d", snap.Dir, dirCtime(t, s.Dir))
	}
	state := filepath.Join(t.TempDir(), "state")
	snap = roundTrip(t, s, snap, state)
	if snap.Dir != dirCtime(t, s.Dir) {
		t.Fatalf("the state file lost the directory's change time")
	}
	// Unchanged: nothing read, nothing stat'ed. A file edited in place
	// (which no writer of the spool does) shows that nothing was read.
	os.WriteFile(filepath.Join(s.Dir, "192.0.2.8"), []byte("user=mallory\nservice=pop3\ntime=1\n"), 0o640)
	snap, st, err := s.scan(snap, now, later, time.Hour, true)
	if err != nil {
		t.Fatal(err)
	}
	if st.Read != 0 || st.Changed() || len(snap.Grants) != 2 || snap.Grants[1].User != "bob" {
		t.Fatalf("unchanged directory: stats %+v, grants %+v", st, snap.Grants)
	}
	// The staged reuse: removed, made again with the old number.
	nextTick(t, s.Dir)
	stageReuse(t, s, snap, ip, now)
	snap, st, err = s.scan(snap, now, later, time.Hour, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Grants) != 2 || snap.Grants[0].User != "alice" || !snap.Grants[0].Expires.IsZero() || snap.Grants[1].User != "mallory" {
		t.Errorf("after the directory changed: stats %+v, grants %+v: want alice's login and the edited file, read", st, snap.Grants)
	}
	// Version 2: the same without the directory's change time.
	var b bytes.Buffer
	if err := s.WriteState(&b, snap); err != nil {
		t.Fatal(err)
	}
	head, body, _ := strings.Cut(b.String(), "\n")
	head = strings.Replace(head[:strings.LastIndexByte(head, ' ')], "poprelay-state 3 ", "poprelay-state 2 ", 1)
	body = body[:strings.LastIndex(body, "end\t")]
	v2 := head + "\n" + body
	v2 += fmt.Sprintf("end\t%d\t%08x\n", len(snap.Grants), crc32.Checksum([]byte(v2), castagnoli()))
	if err := os.WriteFile(state, []byte(v2), 0o640); err != nil {
		t.Fatal(err)
	}
	old, err := s.ReadState(state)
	if err != nil {
		t.Fatalf("version 2: %v", err)
	}
	if old.Dir != 0 || !reflect.DeepEqual(old.Grants, snap.Grants) {
		t.Errorf("version 2 read as Dir %d, grants %+v", old.Dir, old.Grants)
	}
}

// TestStateLines: a large state file is parsed in pieces; a bad line in
// any of them is reported by its line number in the file, and a good file
// gives back every grant in order.
func TestStateLines(t *testing.T) {
	const id = "1 2"
	snap := &Snapshot{Dir: 12345}
	now := time.Unix(1764150000, 0)
	for i := range 40000 {
		snap.Grants = append(snap.Grants, Grant{IP: fmt.Sprintf("10.%d.%d.%d", i>>16, i>>8&255, i&255),
			User: fmt.Sprintf("user%d@example.com", i), Service: "pop3", Time: now.Add(time.Duration(i) * time.Second)})
		snap.Files = append(snap.Files, FileID{Ino: uint64(i + 10), Ctime: int64(i) * 1e9})
	}
	var b bytes.Buffer
	if err := writeState(&b, id, snap); err != nil {
		t.Fatal(err)
	}
	if b.Len() < 2<<20 {
		t.Fatalf("only %d bytes: not parsed in pieces", b.Len())
	}
	got, err := parseState(b.Bytes(), id)
	if err != nil {
		t.Fatal(err)
	}
	if got.Dir != snap.Dir || !reflect.DeepEqual(got.Grants, snap.Grants) || !reflect.DeepEqual(got.Files, snap.Files) {
		t.Fatal("the grants read back differ")
	}
	for _, bad := range []int{0, 17, 19999, 30001, 39999} {
		lines := strings.Split(b.String(), "\n")
		f := strings.Split(lines[1+bad], "\t")
		f[1] = "x" // the inode number
		lines[1+bad] = strings.Join(f, "\t")
		body := strings.Join(lines[:len(lines)-2], "\n") + "\n"
		text := body + fmt.Sprintf("end\t%d\t%08x\n", len(snap.Grants), crc32.Checksum([]byte(body), castagnoli()))
		_, err := parseState([]byte(text), id)
		if want := fmt.Sprintf("line %d: bad inode", bad+2); err == nil || err.Error() != want {
			t.Errorf("grant %d made bad: %v, want %q", bad, err, want)
		}
	}
}

// FuzzParseState: any bytes are refused or parsed, never a panic; what
// parses, written back, parses to the same snapshot.
func FuzzParseState(f *testing.F) {
	const id = "1 2"
	now := time.Unix(1764150000, 0)
	var b bytes.Buffer
	writeState(&b, id, &Snapshot{Dir: 5, Grants: []Grant{
		{IP: "192.0.2.1", User: "alice", Service: "pop3", Time: now},
		{IP: "2001:db8::1", User: "bob", Service: "imap", Time: now, Expires: now.Add(time.Hour), Keep: now.Add(2 * time.Hour)},
	}, Files: []FileID{{1, 2}, {3, 4}}})
	f.Add(b.Bytes())
	f.Add([]byte("poprelay-state 2 1 2\nend\t0\t00000000\n"))
	f.Add([]byte("poprelay-state 3 1 2 0\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		snap, err := parseState(in, id)
		if err != nil {
			return
		}
		var out bytes.Buffer
		if err := writeState(&out, id, snap); err != nil {
			t.Fatal(err)
		}
		again, err := parseState(out.Bytes(), id)
		if err != nil {
			t.Fatalf("written back, refused: %v", err)
		}
		if !reflect.DeepEqual(again, snap) {
			t.Fatalf("round trip changed the snapshot")
		}
	})
}

// BenchmarkReadState: a state file of 100k grants read and parsed, as a
// rebuild at a large site starts.
func BenchmarkReadState(b *testing.B) {
	s := New(b.TempDir())
	snap := &Snapshot{}
	now := time.Unix(1764150000, 0)
	for i := range 100_000 {
		snap.Grants = append(snap.Grants, Grant{IP: fmt.Sprintf("11.%d.%d.%d", i>>16, i>>8&255, i&255),
			User: fmt.Sprintf("user%d@example.com", i), Service: "pop3", Time: now})
		snap.Files = append(snap.Files, FileID{Ino: uint64(i + 1000000), Ctime: 1764150000123456789})
	}
	var buf bytes.Buffer
	if err := s.WriteState(&buf, snap); err != nil {
		b.Fatal(err)
	}
	path := filepath.Join(b.TempDir(), "state")
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(buf.Len()))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.ReadState(path); err != nil {
			b.Fatal(err)
		}
	}
}
