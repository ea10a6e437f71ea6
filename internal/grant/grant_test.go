package grant

import (
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/poprelay/poprelay/internal/wait"
)

// A test binary run with GRANT_HELPER=dir records the addresses given as
// arguments and exits: the "processes" half of the concurrency test.
func TestMain(m *testing.M) {
	if dir := os.Getenv("GRANT_HELPER"); dir != "" {
		s := New(dir)
		code := 0
		for _, ip := range os.Args[1:] {
			if err := s.Record(Grant{IP: ip, User: "proc", Service: "pop3"}); err != nil {
				fmt.Fprintln(os.Stderr, err)
				code = 1
			}
		}
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// logStore returns a store in a new temp dir whose log lines are collected.
func logStore(t *testing.T) (*Store, *[]string) {
	t.Helper()
	var mu sync.Mutex
	var lines []string
	s := New(t.TempDir())
	s.Logf = func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		lines = append(lines, fmt.Sprintf(format, args...))
	}
	return s, &lines
}

// names lists the spool's entries.
func names(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var n []string
	for _, e := range ents {
		n = append(n, e.Name())
	}
	return n
}

func TestRecordGetListRemove(t *testing.T) {
	s, logs := logStore(t)
	t0 := time.Unix(1764150000, 0)
	for _, g := range []Grant{
		{IP: "2001:db8::7", User: "carol", Service: "imap", Time: t0},
		{IP: "10.0.0.10", User: "bob", Service: "pop3", Time: t0.Add(time.Second)},
		{IP: "::ffff:10.0.0.9", User: "alice", Service: "pop3", Time: t0.Add(2 * time.Second)},
		{IP: "10.0.0.9", User: "alice", Service: "imap", Time: t0.Add(3 * time.Second)}, // refresh
		{IP: "192.0.2.1", User: "", Service: "manual", Time: t0, Expires: t0.Add(48 * time.Hour)},
	} {
		if err := s.Record(g); err != nil {
			t.Fatal(err)
		}
	}
	gs, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, g := range gs {
		got = append(got, fmt.Sprintf("%s %s %s %d %d", g.IP, g.User, g.Service, g.Time.Unix(), g.Expiry(time.Hour).Unix()))
	}
	want := []string{
		"10.0.0.9 alice imap 1764150003 1764153603",
		"10.0.0.10 bob pop3 1764150001 1764153601",
		"192.0.2.1  manual 1764150000 1764322800",
		"2001:db8::7 carol imap 1764150000 1764153600",
	}
	if !slices.Equal(got, want) {
		t.Errorf("List:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if len(*logs) != 0 {
		t.Errorf("log: %q", *logs)
	}
	if n := names(t, s.Dir); !slices.Equal(n, []string{"10.0.0.10", "10.0.0.9", "192.0.2.1", "2001:db8::7"}) {
		t.Errorf("spool holds %q", n)
	}
	b, _ := os.ReadFile(filepath.Join(s.Dir, "10.0.0.9"))
	if string(b) != "user=alice\nservice=imap\ntime=1764150003\n" {
		t.Errorf("file content %q", b)
	}
	fi, _ := os.Stat(filepath.Join(s.Dir, "10.0.0.9"))
	if fi.ModTime().Unix() != 1764150003 || fi.Mode().Perm() != 0o640 {
		t.Errorf("file mtime %v mode %v", fi.ModTime(), fi.Mode())
	}

	g, ok, err := s.Get("::FFFF:10.0.0.10")
	if err != nil || !ok || g.User != "bob" {
		t.Errorf("Get = %+v, %v, %v", g, ok, err)
	}
	if _, ok, err := s.Get("10.9.9.9"); ok || err != nil {
		t.Errorf("Get(missing) = %v, %v", ok, err)
	}
	if _, _, err := s.Get("../x"); !errors.Is(err, ErrBadIP) {
		t.Errorf("Get(../x): %v", err)
	}
	if ok, err := s.Remove("2001:DB8::7"); !ok || err != nil {
		t.Errorf("Remove = %v, %v", ok, err)
	}
	if ok, err := s.Remove("2001:db8::7"); ok || err != nil {
		t.Errorf("Remove again = %v, %v", ok, err)
	}
	if _, err := s.Remove("/etc/passwd"); !errors.Is(err, ErrBadIP) {
		t.Errorf("Remove(/etc/passwd): %v", err)
	}
}

func TestRecordRejects(t *testing.T) {
	s, _ := logStore(t)
	for _, g := range []Grant{
		{IP: "../../etc/passwd", User: "a", Service: "pop3"},
		{IP: "1.2.3.4\nRELAYCLIENT", User: "a", Service: "pop3"},
		{IP: "", User: "a", Service: "pop3"},
		{IP: "1.2.3.4", User: "a\nexpires=99999999999", Service: "pop3"},
		{IP: "1.2.3.4", User: "a", Service: "pop3\x00"},
		{IP: "1.2.3.4", User: strings.Repeat("a", 300), Service: "pop3"},
	} {
		if err := s.Record(g); err == nil {
			t.Errorf("Record(%q) succeeded", g)
		}
	}
	if n := names(t, s.Dir); len(n) != 0 {
		t.Errorf("spool holds %q", n)
	}
}

func TestNoDir(t *testing.T) {
	s := New("")
	g := Grant{IP: "1.2.3.4", User: "a", Service: "pop3"}
	if err := s.Record(g); !errors.Is(err, ErrNoDir) {
		t.Errorf("Record: %v", err)
	}
	if _, err := s.List(); !errors.Is(err, ErrNoDir) {
		t.Errorf("List: %v", err)
	}
	if _, _, err := s.Get("1.2.3.4"); !errors.Is(err, ErrNoDir) {
		t.Errorf("Get: %v", err)
	}
	if _, err := s.Remove("1.2.3.4"); !errors.Is(err, ErrNoDir) {
		t.Errorf("Remove: %v", err)
	}
	if _, err := expire(s, time.Now(), time.Hour); !errors.Is(err, ErrNoDir) {
		t.Errorf("expire: %v", err)
	}
	if err := s.Clean(time.Now()); !errors.Is(err, ErrNoDir) {
		t.Errorf("Clean: %v", err)
	}
	if _, err := os.Stat("1.2.3.4"); err == nil {
		t.Error("a grant was written in the current directory")
	}
}

func TestRecordUmask(t *testing.T) {
	s, _ := logStore(t)
	old := syscall.Umask(0o077)
	err := s.Record(Grant{IP: "1.2.3.4", User: "a", Service: "pop3"})
	syscall.Umask(old)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(s.Dir, "1.2.3.4"))
	if err != nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, %v", fi.Mode(), err)
	}
}

func TestFutureTime(t *testing.T) {
	s, logs := logStore(t)
	now := time.Now()
	if err := s.Record(Grant{IP: "1.2.3.4", User: "a", Service: "pop3", Time: now.Add(24 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
	g, _, _ := s.Get("1.2.3.4")
	if d := g.Time.Sub(now.Truncate(time.Second)); d < 0 || d > time.Minute {
		t.Errorf("Record kept a future time: %v", g.Time)
	}
	// Within the skew: kept.
	s.Record(Grant{IP: "1.2.3.5", User: "a", Service: "pop3", Time: now.Add(time.Minute)})
	if g, _, _ := s.Get("1.2.3.5"); g.Time.Unix() != now.Add(time.Minute).Unix() {
		t.Errorf("Record capped a time within the skew: %v", g.Time)
	}
	// A file written by a clock that was ahead.
	future := now.Add(1000 * time.Hour).Unix()
	os.WriteFile(filepath.Join(s.Dir, "1.2.3.6"), fmt.Appendf(nil, "user=a\nservice=pop3\ntime=%d\n", future), 0o640)
	gs, _ := s.List()
	for _, g := range gs {
		if g.Time.After(time.Now().Add(Skew)) {
			t.Errorf("List: %s at %v", g.IP, g.Time)
		}
	}
	if len(*logs) != 1 || !strings.Contains((*logs)[0], "1.2.3.6: login time") {
		t.Errorf("log: %q", *logs)
	}
	// Expire rewrites it as now, so it ages from now on.
	gone, err := expire(s, now, time.Hour)
	if err != nil || len(gone) != 0 {
		t.Fatalf("Expire = %v, %v", gone, err)
	}
	if g, _, _ := s.Get("1.2.3.6"); g.Time.Unix() != now.Unix() {
		t.Errorf("after Expire: %v", g.Time)
	}
	gone, _ = expire(s, now.Add(2*time.Hour), time.Hour)
	if len(gone) != 3 {
		t.Errorf("later Expire removed %v", gone)
	}
}

func TestListSkipsWhatIsNotAGrant(t *testing.T) {
	s, logs := logStore(t)
	outside := t.TempDir()
	secret := filepath.Join(outside, "secret")
	good := "user=mallory\nservice=pop3\ntime=1764150000\n"
	os.WriteFile(secret, []byte(good), 0o600)
	w := func(name, content string) {
		if err := os.WriteFile(filepath.Join(s.Dir, name), []byte(content), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	s.Record(Grant{IP: "10.0.0.1", User: "alice", Service: "pop3"})
	// Damaged.
	w("10.0.0.2", "garbage")
	w("10.0.0.3", "user=a\nservice=pop3\n")
	w("10.0.0.4", "user=a\nuser=b\nservice=pop3\ntime=1\n")
	w("10.0.0.5", "user=a\nservice=pop3\ntime=soon\n")
	w("10.0.0.6", good+strings.Repeat("x=y\n", 2000))
	w("10.0.0.7", "")
	w("10.0.0.8", "user=a\x01\nservice=pop3\ntime=1764150000\n")
	// Foreign names.
	w("README", good)
	w("001.002.003.004", good)
	w("::FFFF:1.2.3.4", good)
	w("1.2.3.4.bak", good)
	w(".hidden", good)
	// Not regular files.
	os.Symlink(secret, filepath.Join(s.Dir, "10.0.0.20"))
	os.Symlink("/etc", filepath.Join(s.Dir, "10.0.0.21"))
	os.Mkdir(filepath.Join(s.Dir, "10.0.0.22"), 0o755)
	if err := syscall.Mkfifo(filepath.Join(s.Dir, "10.0.0.23"), 0o640); err != nil {
		t.Fatal(err)
	}
	// A fresh temp file (a Record in progress) is skipped silently.
	w(tempPrefix+"1-1-1", good)

	done := make(chan struct{})
	var gs []Grant
	var err error
	go func() { gs, err = s.List(); close(done) }()
	select {
	case <-done:
	case <-time.After(wait.Patience):
		t.Fatal("List blocked (on the FIFO?)")
	}
	if err != nil {
		t.Fatal(err)
	}
	if len(gs) != 1 || gs[0].IP != "10.0.0.1" {
		t.Errorf("List = %+v", gs)
	}
	if len(*logs) != 16 {
		t.Errorf("%d log lines, want one per skipped entry (16):\n%s", len(*logs), strings.Join(*logs, "\n"))
	}
	for _, l := range *logs {
		if strings.Contains(l, tempPrefix) {
			t.Errorf("fresh temp file logged: %s", l)
		}
	}
	// Get reports a symlink or a damaged file as an error, never follows.
	for _, ip := range []string{"10.0.0.2", "10.0.0.20", "10.0.0.22", "10.0.0.23"} {
		if g, ok, err := s.Get(ip); ok || err == nil {
			t.Errorf("Get(%s) = %+v, %v, %v", ip, g, ok, err)
		}
	}
	// Expire neither follows nor deletes through the symlinks.
	if _, err := expire(s, time.Now().Add(100*time.Hour), time.Hour); err != nil {
		t.Errorf("expire: %v", err)
	}
	if b, err := os.ReadFile(secret); err != nil || string(b) != good {
		t.Errorf("symlink target changed: %q, %v", b, err)
	}
	// Stale temp files are logged once each and removed by Clean.
	*logs = nil
	s.list(time.Now().Add(2*time.Minute), true)
	if n := len(slices.DeleteFunc(*logs, func(l string) bool { return !strings.Contains(l, "stale temp") })); n != 1 {
		t.Errorf("%d stale temp lines", n)
	}
}

func TestSymlinkPlanted(t *testing.T) {
	s, _ := logStore(t)
	outside := t.TempDir()
	target := filepath.Join(outside, "target")
	os.WriteFile(target, []byte("precious"), 0o600)
	link := filepath.Join(s.Dir, "10.0.0.1")
	os.Symlink(target, link)
	dirlink := filepath.Join(s.Dir, "10.0.0.2")
	os.Symlink(outside, dirlink)

	// Record replaces the link itself; the target is untouched.
	if err := s.Record(Grant{IP: "10.0.0.1", User: "a", Service: "pop3"}); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(link); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("after Record: %v, %v", fi.Mode(), err)
	}
	// Remove removes the link, not the directory it points to.
	if ok, err := s.Remove("10.0.0.2"); !ok || err != nil {
		t.Errorf("Remove = %v, %v", ok, err)
	}
	if b, err := os.ReadFile(target); err != nil || string(b) != "precious" {
		t.Errorf("target: %q, %v", b, err)
	}
	if n := names(t, outside); !slices.Equal(n, []string{"target"}) {
		t.Errorf("outside the spool: %q", n)
	}
	// A directory named by the address: Record fails and leaves no temp.
	os.Mkdir(filepath.Join(s.Dir, "10.0.0.3"), 0o755)
	if err := s.Record(Grant{IP: "10.0.0.3", User: "a", Service: "pop3"}); err == nil {
		t.Error("Record over a directory succeeded")
	}
	if ok, err := s.Remove("10.0.0.3"); ok || err == nil {
		t.Errorf("Remove(directory) = %v, %v", ok, err)
	}
	for _, n := range names(t, s.Dir) {
		if isTemp(n) {
			t.Errorf("temp file left: %s", n)
		}
	}
}

func TestExpire(t *testing.T) {
	s, _ := logStore(t)
	now := time.Unix(1764150000, 0)
	for _, g := range []Grant{
		{IP: "10.0.0.1", User: "old", Service: "pop3", Time: now.Add(-2 * time.Hour)},
		{IP: "10.0.0.2", User: "edge", Service: "pop3", Time: now.Add(-time.Hour)},
		{IP: "10.0.0.3", User: "fresh", Service: "pop3", Time: now.Add(-59 * time.Minute)},
		{IP: "10.0.0.4", User: "allowed", Service: "manual", Time: now.Add(-5 * time.Hour), Expires: now.Add(time.Hour)},
		{IP: "10.0.0.5", User: "short", Service: "manual", Time: now, Expires: now.Add(-time.Second)},
	} {
		if err := s.Record(g); err != nil {
			t.Fatal(err)
		}
	}
	gone, err := expire(s, now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var ips []string
	for _, g := range gone {
		ips = append(ips, g.IP+" "+g.User)
	}
	if !slices.Equal(ips, []string{"10.0.0.1 old", "10.0.0.2 edge", "10.0.0.5 short"}) {
		t.Errorf("Expire removed %q", ips)
	}
	// The live ones are folded, and their files gone.
	if n := names(t, s.Dir); !slices.Equal(n, []string{FoldedName}) {
		t.Errorf("left %q", n)
	}
	gs, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	ips = nil
	for _, g := range gs {
		ips = append(ips, g.IP+" "+g.User)
	}
	if !slices.Equal(ips, []string{"10.0.0.3 fresh", "10.0.0.4 allowed"}) {
		t.Errorf("after Expire: %q", ips)
	}
	// Folded grants expire too.
	if gone, err := expire(s, now.Add(2*time.Hour), time.Hour); err != nil || len(gone) != 2 {
		t.Errorf("Expire of the folded grants: %v, %v", gone, err)
	}
	if gs, err := s.List(); err != nil || len(gs) != 0 {
		t.Errorf("left %v, %v", gs, err)
	}
}

func TestClean(t *testing.T) {
	s, _ := logStore(t)
	os.WriteFile(filepath.Join(s.Dir, tempPrefix+"123-1-ab"), []byte("user=a"), 0o640)
	os.WriteFile(filepath.Join(s.Dir, ".other"), nil, 0o640)
	s.Record(Grant{IP: "10.0.0.1", User: "a", Service: "pop3", Time: time.Unix(1, 0)})
	if err := s.Clean(time.Now()); err != nil {
		t.Fatal(err)
	}
	if n := names(t, s.Dir); len(n) != 3 {
		t.Errorf("fresh debris removed: %q", n)
	}
	if err := s.Clean(time.Now().Add(2 * time.Minute)); err != nil {
		t.Fatal(err)
	}
	if n := names(t, s.Dir); !slices.Equal(n, []string{".other", "10.0.0.1"}) {
		t.Errorf("after Clean: %q", n)
	}
}

// readOnly returns a spool directory that cannot be written even by root.
func readOnly(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if os.Geteuid() != 0 {
		os.Chmod(dir, 0o555)
		t.Cleanup(func() { os.Chmod(dir, 0o755) })
		return dir
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "ro,size=64k", "poprelay-test", dir).CombinedOutput(); err != nil {
		t.Skipf("SKIP: as root, a read-only spool needs a read-only mount: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
	return dir
}

func TestReadOnlySpool(t *testing.T) {
	s := New(readOnly(t))
	err := s.Record(Grant{IP: "10.0.0.1", User: "a", Service: "pop3"})
	if err == nil || !errors.Is(err, syscall.EROFS) && !errors.Is(err, fs.ErrPermission) {
		t.Errorf("Record in a read-only spool: %v", err)
	}
	if gs, err := s.List(); err != nil || len(gs) != 0 {
		t.Errorf("List = %v, %v", gs, err)
	}
	if _, err := New(filepath.Join(s.Dir, "missing")).List(); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("List of a missing spool: %v", err)
	}
	if err := New(filepath.Join(s.Dir, "missing")).Record(Grant{IP: "10.0.0.1", User: "a", Service: "pop3"}); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Record in a missing spool: %v", err)
	}
}

func TestConcurrentRecords(t *testing.T) {
	s, logs := logStore(t)
	want := map[string]bool{}
	var ips []string
	for i := range 500 {
		ip := fmt.Sprintf("10.1.%d.%d", i/250, i%250+1)
		ips = append(ips, ip)
		want[ip] = true
	}
	same := "10.9.9.9"
	want[same] = true
	// 1000 goroutines: 500 different addresses, 500 times the same one.
	var wg sync.WaitGroup
	errs := make(chan error, 1000)
	for i := range 1000 {
		ip := same
		if i%2 == 0 {
			ip = ips[i/2]
		}
		wg.Go(func() {
			if err := s.Record(Grant{IP: ip, User: "g", Service: "pop3"}); err != nil {
				errs <- err
			}
		})
	}
	// And 20 processes of 50 records each, half of them the same address.
	var procs []*exec.Cmd
	for p := range 20 {
		args := []string{}
		for i := range 50 {
			if i%2 == 0 {
				args = append(args, same)
			} else {
				ip := fmt.Sprintf("10.2.%d.%d", p, i)
				args = append(args, ip)
				want[ip] = true
			}
		}
		c := exec.Command(os.Args[0], args...)
		c.Env = append(os.Environ(), "GRANT_HELPER="+s.Dir)
		c.Stderr = os.Stderr
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		procs = append(procs, c)
	}
	wg.Wait()
	for _, c := range procs {
		if err := c.Wait(); err != nil {
			t.Errorf("helper process: %v", err)
		}
	}
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	gs, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, g := range gs {
		got[g.IP] = true
	}
	if len(got) != len(want) {
		t.Errorf("%d grants, want %d", len(got), len(want))
	}
	for ip := range want {
		if !got[ip] {
			t.Errorf("%s not recorded", ip)
		}
	}
	if len(names(t, s.Dir)) != len(want) {
		t.Errorf("%d entries in the spool, want %d (temp files left?)", len(names(t, s.Dir)), len(want))
	}
	if len(*logs) != 0 {
		t.Errorf("log: %q", *logs)
	}
}

// BenchmarkRecord: one login's grant write (temp file, fsync, rename), in
// the test's temp dir and, where there is one, on tmpfs (no fsync cost).
func BenchmarkRecord(b *testing.B) {
	dirs := map[string]string{"tempdir": b.TempDir()}
	if d, err := os.MkdirTemp("/dev/shm", "grant-bench-"); err == nil {
		b.Cleanup(func() { os.RemoveAll(d) })
		dirs["tmpfs"] = d
	}
	for name, dir := range dirs {
		b.Run(name, func(b *testing.B) {
			s := New(dir)
			i := 0
			for b.Loop() {
				if err := s.Record(Grant{IP: fmt.Sprintf("10.0.%d.%d", i/250%250, i%250+1), User: "alice", Service: "pop3"}); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}

// TestLoginKeepsLongerGrant: a login refreshing an admin's longer grant
// keeps its end; a login over a shorter one gets the full max age; an
// admin's explicit new expiry wins.
func TestLoginKeepsLongerGrant(t *testing.T) {
	s := New(t.TempDir())
	now := time.Now().Truncate(time.Second)
	month := now.Add(30 * 24 * time.Hour)
	if err := s.Record(Grant{IP: "198.51.100.60", User: "alice", Service: "manual", Time: now, Expires: month}); err != nil {
		t.Fatal(err)
	}
	if err := s.Record(Grant{IP: "198.51.100.60", User: "alice", Service: "pop3", Time: now.Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	g, ok, err := s.Get("198.51.100.60")
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	if got := g.Expiry(time.Hour); !got.Equal(month) {
		t.Errorf("after a login over a 30-day grant, expiry %v, want %v", got, month)
	}
	if g.Service != "pop3" || !g.Time.Equal(now.Add(time.Minute)) {
		t.Errorf("the login itself was not recorded: %+v", g)
	}
	// Another login: the floor stays.
	s.Record(Grant{IP: "198.51.100.60", User: "alice", Service: "imap", Time: now.Add(2 * time.Minute)})
	if g, _, _ := s.Get("198.51.100.60"); !g.Expiry(time.Hour).Equal(month) {
		t.Errorf("second login: expiry %v, want %v", g.Expiry(time.Hour), month)
	}
	// A short manual grant is simply extended by a login.
	s.Record(Grant{IP: "198.51.100.61", User: "bob", Service: "manual", Time: now, Expires: now.Add(10 * time.Minute)})
	s.Record(Grant{IP: "198.51.100.61", User: "bob", Service: "pop3", Time: now.Add(time.Minute)})
	if g, _, _ := s.Get("198.51.100.61"); !g.Expiry(time.Hour).Equal(now.Add(time.Minute + time.Hour)) {
		t.Errorf("login over a 10-minute grant: expiry %v, want login + 1h", g.Expiry(time.Hour))
	}
	// An admin's explicit new expiry replaces the floor.
	s.Record(Grant{IP: "198.51.100.60", User: "alice", Service: "manual", Time: now.Add(3 * time.Minute), Expires: now.Add(5 * time.Minute)})
	if g, _, _ := s.Get("198.51.100.60"); !g.Expiry(time.Hour).Equal(now.Add(5 * time.Minute)) {
		t.Errorf("explicit expiry did not win: %v", g.Expiry(time.Hour))
	}
}

// TestSortByAddr: SortByAddr's in-place permutation sorts like a plain sort by
// address, on random input with IPv4 and IPv6 mixed.
func TestSortByAddr(t *testing.T) {
	rnd := rand.New(rand.NewPCG(11, 13))
	for _, n := range []int{0, 1, 2, 3, 10, 1000} {
		var gs []Grant
		for i := range n {
			ip := fmt.Sprintf("10.%d.%d.%d", rnd.IntN(4), rnd.IntN(256), rnd.IntN(256))
			if rnd.IntN(3) == 0 {
				ip = fmt.Sprintf("2001:db8::%x", rnd.IntN(1<<16))
			}
			gs = append(gs, Grant{IP: ip, User: fmt.Sprint("u", i)})
		}
		want := slices.Clone(gs)
		slices.SortStableFunc(want, func(a, b Grant) int {
			return netip.MustParseAddr(a.IP).Compare(netip.MustParseAddr(b.IP))
		})
		SortByAddr(gs)
		for i := range gs {
			if gs[i].IP != want[i].IP {
				t.Fatalf("n=%d: position %d is %s, want %s", n, i, gs[i].IP, want[i].IP)
			}
		}
		// Nothing lost or duplicated.
		seen := map[string]int{}
		for _, g := range gs {
			seen[g.User]++
		}
		if len(seen) != n {
			t.Fatalf("n=%d: %d distinct grants after the sort", n, len(seen))
		}
	}
}
