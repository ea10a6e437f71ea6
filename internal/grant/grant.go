// Package grant is poprelay's grant store: which client IP may relay,
// because who logged in from it, with which service, and when.
//
// The embedded store is a spool directory (default /var/spool/poprelay).
// A login writes one small file for its address:
//
//	/var/spool/poprelay/198.51.100.7
//	/var/spool/poprelay/2001:db8::7
//
// relayctl folds these files into one, /var/spool/poprelay/.grants, and
// removes them (see Fold): the files are the logins since the last fold,
// the folded file holds the rest, and a file's grant replaces the folded
// one for its address.
//
// The file name is the address in canonical form (see CanonicalIP); its
// content is a few key=value lines, its modification time the login time,
// so "ls -lt" shows the newest logins first:
//
//	user=alice
//	service=pop3
//	time=1764150000
//	expires=1764157200
//
// time is the login time in Unix seconds; expires (optional, Unix seconds)
// overrides time + max age, as set by "relayctl allow --for"; keep
// (optional) is a floor on the end, left by a login that refreshed a
// longer grant, so the user's own login never cuts an admin's long
// allowance short. Unknown keys
// are ignored, so later versions may add some; user, service and time are
// required. A file is written as a dot-named temp file in the spool, then
// fsync'ed and renamed over the canonical name, so a reader never sees half
// a grant and a new login from the same address replaces the old grant.
//
// Reading never trusts the spool: symlinks are never followed (O_NOFOLLOW,
// and symlinks, directories, FIFOs and devices are skipped by type), names
// that are not canonical addresses are foreign and ignored, a file larger
// than 4 KiB or without the required keys is damaged and ignored, and a
// login time in the future beyond a few minutes of clock skew is capped to
// the present, never kept as an immortal grant. Each skipped entry is one
// Logf line; nothing aborts a listing.
package grant

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// DefaultDir is the spool used when none is configured.
const DefaultDir = "/var/spool/poprelay"

const (
	// tempPrefix starts the name of every temp file in the spool.
	tempPrefix = ".tmp-"
	// staleAge is how old a temp file must be to count as crash debris.
	staleAge = time.Minute
	// Skew is how far in the future a login time may be before it is
	// capped to the present.
	Skew = 5 * time.Minute
	// maxFile bounds the size of a grant file.
	maxFile = 4096
	// maxField bounds the user and service names.
	maxField = 255
	// fileMode is the mode of grant files: the poprelay group reads them.
	fileMode = 0o640
)

var (
	// ErrDamaged reports a grant file that cannot be read as a grant.
	ErrDamaged = errors.New("damaged grant")
	// ErrBadField reports a user or service name that cannot be stored.
	ErrBadField = errors.New("bad user or service name")
	// ErrNoDir reports a Store without a directory, which would otherwise
	// mean the current one.
	ErrNoDir = errors.New("grant: no spool directory")
)

// Grant is one address allowed to relay.
type Grant struct {
	IP      string    // canonical form
	User    string    // who logged in
	Service string    // "pop3", "imap", "manual", ...
	Time    time.Time // login time
	Expires time.Time // zero: Time + max age; set by "relayctl allow --for"
	// Keep is a floor: relaying lasts at least until then. A login that
	// refreshes a longer grant (an admin's "allow --for 30d") keeps its
	// end here, so the user's own login does not cut it short.
	Keep time.Time
}

// Expiry is when g stops granting relay: Expires if set, else Time+maxAge,
// but never before Keep.
func (g Grant) Expiry(maxAge time.Duration) time.Time {
	e := g.Time.Add(maxAge)
	if !g.Expires.IsZero() {
		e = g.Expires
	}
	if g.Keep.After(e) {
		return g.Keep
	}
	return e
}

// Store is a spool directory of grants. Its methods are safe to call from
// many goroutines and processes at once: writes are temp file + rename,
// and there is no lock.
type Store struct {
	Dir  string
	Logf func(format string, args ...any) // skipped entries; nil: silent
}

// New returns the store in dir.
func New(dir string) *Store { return &Store{Dir: dir} }

func (s *Store) logf(format string, args ...any) {
	if s.Logf != nil {
		s.Logf(format, args...)
	}
}

// checkField accepts user and service names that fit on one line.
func checkField(what, v string) error {
	if len(v) > maxField {
		return fmt.Errorf("%w: %s is %d bytes long", ErrBadField, what, len(v))
	}
	for i := 0; i < len(v); i++ {
		if v[i] < 0x20 || v[i] == 0x7f {
			return fmt.Errorf("%w: %s %q has a control character", ErrBadField, what, v)
		}
	}
	return nil
}

// Record writes g to the spool under its canonical address, replacing any
// grant for the same address. A zero Time means now; a Time more than Skew
// in the future is capped to now (and Expires, if set, moved with it).
func (s *Store) Record(g Grant) error {
	if err := check(&g); err != nil {
		return err
	}
	old, err := s.read(g.IP)
	prepare(&g, old, err == nil, time.Now())
	return s.write(g)
}

// check puts g's address in canonical form and checks its user and
// service names.
func check(g *Grant) error {
	ip, err := CanonicalIP(g.IP)
	if err != nil {
		return err
	}
	g.IP = ip
	if err := checkField("user", g.User); err != nil {
		return err
	}
	return checkField("service", g.Service)
}

// Prepare checks g as Record does and fills it in as a new login with no
// grant to refresh: its address in canonical form, a zero Time now, a
// Time beyond Skew capped.
func Prepare(g *Grant, now time.Time) error {
	if err := check(g); err != nil {
		return err
	}
	prepare(g, Grant{}, false, now)
	// As a file holds it: whole seconds.
	for _, t := range []*time.Time{&g.Time, &g.Expires, &g.Keep} {
		if !t.IsZero() {
			*t = time.Unix(t.Unix(), 0)
		}
	}
	return nil
}

// prepare fills in a checked grant g before it is written over old (if
// there is one): a zero Time is now, a Time beyond Skew is capped, and a
// login refreshing a longer grant keeps that grant's end.
func prepare(g *Grant, old Grant, haveOld bool, now time.Time) {
	if g.Time.IsZero() {
		g.Time = now
	}
	capAt(g, now)
	if haveOld {
		keepLonger(g, old)
	}
}

// encode renders g as the content of its file.
func encode(g Grant) []byte {
	b := make([]byte, 0, 64+len(g.User)+len(g.Service))
	b = append(b, "user="...)
	b = append(b, g.User...)
	b = append(b, "\nservice="...)
	b = append(b, g.Service...)
	b = append(b, "\ntime="...)
	b = strconv.AppendInt(b, g.Time.Unix(), 10)
	b = append(b, '\n')
	if !g.Expires.IsZero() {
		b = append(b, "expires="...)
		b = strconv.AppendInt(b, g.Expires.Unix(), 10)
		b = append(b, '\n')
	}
	if !g.Keep.IsZero() {
		b = append(b, "keep="...)
		b = strconv.AppendInt(b, g.Keep.Unix(), 10)
		b = append(b, '\n')
	}
	return b
}

var tempSeq atomic.Uint64

// createTemp creates a new dot-named temp file in the spool and returns
// its descriptor. A raw descriptor, not an *os.File: an os.File would set
// up the runtime's poller (epoll, eventfd) in every login's wrapper, for
// one small write.
func (s *Store) createTemp() (int, string, error) {
	if s.Dir == "" {
		return -1, "", ErrNoDir
	}
	for try := 0; ; try++ {
		name := fmt.Sprintf("%s%d-%d-%x", tempPrefix, os.Getpid(), tempSeq.Add(1), rand.Uint32())
		p := filepath.Join(s.Dir, name)
		fd, err := syscall.Open(p, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, fileMode)
		if err == nil {
			return fd, p, nil
		}
		if err != syscall.EEXIST || try == 10 {
			return -1, "", &os.PathError{Op: "open", Path: p, Err: err}
		}
	}
}

// write publishes g (already checked) by temp file, fsync and rename.
func (s *Store) write(g Grant) error {
	_, err := s.writeFile(g, true)
	return err
}

// writeFile publishes g by temp file, fsync (if sync) and rename, and
// returns the inode number of the file.
func (s *Store) writeFile(g Grant, sync bool) (id FileID, err error) {
	fd, tmp, err := s.createTemp()
	if err != nil {
		return id, fmt.Errorf("unable to create a temp file: %w", err)
	}
	open := true
	defer func() {
		if open {
			syscall.Close(fd)
		}
		if err != nil {
			os.Remove(tmp)
		}
	}()
	b := encode(g)
	for len(b) > 0 {
		n, err := syscall.Write(fd, b)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return id, fmt.Errorf("unable to write %s: %w", tmp, err)
		}
		b = b[n:]
	}
	// The umask may have taken the group's read bit; relayctl needs it.
	if err := syscall.Fchmod(fd, fileMode); err != nil {
		return id, fmt.Errorf("unable to chmod %s: %w", tmp, err)
	}
	// The mtime shows the login time to ls; the content is authoritative,
	// so a failure here is not worth failing the grant.
	futimens(fd, g.Time)
	if sync {
		if err := syscall.Fsync(fd); err != nil {
			return id, fmt.Errorf("unable to fsync %s: %w", tmp, err)
		}
	}
	dst := filepath.Join(s.Dir, g.IP)
	// rename(2) itself: os.Rename stats dst first, a system call a login
	// does not need (a directory there fails the rename anyway).
	if err := syscall.Rename(tmp, dst); err != nil {
		return id, fmt.Errorf("unable to rename %s to %s: %w", tmp, g.IP, err)
	}
	// The file's identity as a later Scan sees it: a rename changes the
	// inode's change time.
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return id, fmt.Errorf("unable to stat %s: %w", dst, err)
	}
	open = false
	if err := syscall.Close(fd); err != nil {
		return id, fmt.Errorf("unable to write %s: %w", dst, err)
	}
	return fileID(&st), nil
}

// decode parses the content of the grant file for ip.
func decode(ip string, b []byte) (Grant, error) {
	g := Grant{IP: ip}
	var have [3]bool
	for len(b) > 0 {
		line := b
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		if len(line) == 0 {
			continue
		}
		k, v, ok := strings.Cut(string(line), "=")
		if !ok {
			return g, fmt.Errorf("%w: line %q is not key=value", ErrDamaged, line)
		}
		var slot int
		switch k {
		case "user":
			slot, g.User = 0, v
		case "service":
			slot, g.Service = 1, v
		case "time", "expires", "keep":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n <= 0 || n > 1<<40 {
				return g, fmt.Errorf("%w: bad %s %q", ErrDamaged, k, v)
			}
			if k == "expires" || k == "keep" {
				dst := &g.Expires
				if k == "keep" {
					dst = &g.Keep
				}
				if !dst.IsZero() {
					return g, fmt.Errorf("%w: %s given twice", ErrDamaged, k)
				}
				*dst = time.Unix(n, 0)
				continue
			}
			slot, g.Time = 2, time.Unix(n, 0)
		default:
			continue
		}
		if have[slot] {
			return g, fmt.Errorf("%w: %s given twice", ErrDamaged, k)
		}
		have[slot] = true
		if err := checkField(k, v); err != nil {
			return g, fmt.Errorf("%w: %v", ErrDamaged, err)
		}
	}
	for i, k := range []string{"user", "service", "time"} {
		if !have[i] {
			return g, fmt.Errorf("%w: no %s", ErrDamaged, k)
		}
	}
	return g, nil
}

// read reads the grant file name (a canonical address) without following
// a symlink and without blocking on a FIFO.
func (s *Store) read(name string) (Grant, error) { return s.readFile(name, nil) }

// readFile is read, setting *id (if id is not nil) to the identity of the
// file read.
func (s *Store) readFile(name string, id *FileID) (Grant, error) {
	if s.Dir == "" {
		return Grant{}, ErrNoDir
	}
	// Raw system calls, as in createTemp: no poller for a small read.
	p := filepath.Join(s.Dir, name)
	fd, err := syscall.Open(p, syscall.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		if err == syscall.ELOOP {
			return Grant{}, fmt.Errorf("%w: a symlink", ErrDamaged)
		}
		return Grant{}, &os.PathError{Op: "open", Path: p, Err: err}
	}
	defer syscall.Close(fd)
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return Grant{}, &os.PathError{Op: "stat", Path: p, Err: err}
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFREG {
		return Grant{}, fmt.Errorf("%w: not a regular file (%v)", ErrDamaged, typeOf(st.Mode))
	}
	if id != nil {
		*id = fileID(&st)
	}
	if st.Size > maxFile {
		return Grant{}, fmt.Errorf("%w: %d bytes long", ErrDamaged, st.Size)
	}
	// One byte more than the file holds: a full buffer means it grew
	// (grant files are replaced by rename, never written in place).
	buf := make([]byte, st.Size+1)
	n := 0
	for n < len(buf) {
		m, err := syscall.Read(fd, buf[n:])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return Grant{}, &os.PathError{Op: "read", Path: p, Err: err}
		}
		if m == 0 {
			break
		}
		n += m
	}
	if n == len(buf) {
		return Grant{}, fmt.Errorf("%w: written while read", ErrDamaged)
	}
	b := buf[:n]
	return decode(name, b)
}

// typeOf is the type bits of a stat mode as an fs.FileMode, as os.Stat
// would give them.
func typeOf(mode uint32) fs.FileMode {
	switch mode & syscall.S_IFMT {
	case syscall.S_IFDIR:
		return fs.ModeDir
	case syscall.S_IFLNK:
		return fs.ModeSymlink
	case syscall.S_IFIFO:
		return fs.ModeNamedPipe
	case syscall.S_IFSOCK:
		return fs.ModeSocket
	case syscall.S_IFCHR:
		return fs.ModeDevice | fs.ModeCharDevice
	case syscall.S_IFBLK:
		return fs.ModeDevice
	}
	return fs.ModeIrregular
}

// capAt caps a login time in the future beyond Skew to now. An expiry of
// its own moves with it, keeping the grant's length: a clock set back
// must not leave a grant that lasts as long as the jump.
func capAt(g *Grant, now time.Time) bool {
	if !g.Time.After(now.Add(Skew)) {
		return false
	}
	if !g.Expires.IsZero() {
		g.Expires = now.Add(g.Expires.Sub(g.Time))
	}
	if !g.Keep.IsZero() {
		g.Keep = now.Add(g.Keep.Sub(g.Time))
	}
	g.Time = now
	return true
}

// capTime is capAt with a log line.
func (s *Store) capTime(g *Grant, now time.Time) bool {
	t := g.Time
	if !capAt(g, now) {
		return false
	}
	s.logf("%s: login time %s is in the future; taken as now", filepath.Join(s.Dir, g.IP), t.UTC().Format(time.RFC3339))
	return true
}

// isTemp tells whether a spool entry is one of our temp files.
func isTemp(name string) bool { return strings.HasPrefix(name, tempPrefix) }

// ctime is the inode change time of fi, which no one can set back: a temp
// file's mtime is the login time, which may be old.
func ctime(fi fs.FileInfo) time.Time {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return time.Unix(st.Ctim.Unix())
	}
	return fi.ModTime()
}

// list reads every grant, skipping (with a log line) what is not one.
// Login times in the future are capped to now if capFuture.
func (s *Store) list(now time.Time, capFuture bool) ([]Grant, *Snapshot, error) {
	snap, _, err := s.scan(nil, now, now, 0, capFuture)
	if err != nil {
		return nil, nil, err
	}
	gs, _, err := s.load(snap, nil, now, capFuture)
	return gs, snap, err
}

// Load returns every grant, given inbox, a Scan of the spool's files
// just made: the folded grants with those of the claimed files and of
// inbox over them (see Overlay), in address order. Login times in the
// future (beyond Skew) of folded and claimed grants are capped to the
// present, as Scan caps those of files; capped counts them, so that the
// caller can fold them as capped (as it must inbox.Claimed, the files a
// killed fold left claimed). The folded file is read after the spool's files: a
// fold that ran meanwhile removed only files whose grants the folded
// file read has. If the folded file is still prev (what Fold returned),
// it is not read again: Load takes prev's grants over.
func (s *Store) Load(inbox *Snapshot, prev *Folded, now time.Time) (gs []Grant, capped int, err error) {
	return s.load(inbox, prev, now, true)
}

func (s *Store) load(inbox *Snapshot, prev *Folded, now time.Time, capFuture bool) ([]Grant, int, error) {
	claimed := s.ReadClaimed(inbox.Claimed, now)
	f := prev
	if !s.Same(prev) {
		var err error
		if f, err = s.ReadFolded(len(claimed) + len(inbox.Grants)); err != nil {
			return nil, 0, err
		}
	}
	capped := 0
	if capFuture {
		for i := range f.Grants {
			if s.capTime(&f.Grants[i], now) {
				capped++
			}
		}
	}
	gs := Overlay(Overlay(f.Grants, claimed), inbox.Grants)
	return gs, capped, nil
}

// readers is how many goroutines read grant files at once in List.
const readers = 8

// List returns every grant, sorted by address (numerically, IPv4 before
// IPv6): the folded ones with the spool's files over them. Entries that
// are not grants are skipped, each with one Logf line; only an unreadable
// spool directory or folded file is an error.
func (s *Store) List() ([]Grant, error) {
	gs, _, err := s.list(time.Now(), true)
	return gs, err
}

// Getter reads single grants, keeping the folded file in memory while it
// is unchanged.
type Getter struct {
	Store  *Store
	folded *Folded
}

// Get returns the grant for ip, if there is one: its file's, else its
// claimed file's, over the folded one (see Overlay), else the folded one.
func (r *Getter) Get(ip string) (Grant, bool, error) {
	s := r.Store
	c, err := CanonicalIP(ip)
	if err != nil {
		return Grant{}, false, err
	}
	var top *Grant
	for _, name := range []string{c, claimPrefix + c} {
		g, err := s.read(name)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return Grant{}, false, fmt.Errorf("%s: %w", filepath.Join(s.Dir, name), err)
		}
		g.IP = c
		s.capTime(&g, time.Now())
		top = &g
		break
	}
	if !s.Same(r.folded) {
		if r.folded, err = s.ReadFolded(0); err != nil {
			return Grant{}, false, err
		}
	}
	g, ok := r.folded.Find(c)
	if top != nil {
		if ok {
			keepLonger(top, g)
		}
		return *top, true, nil
	}
	if ok {
		capAt(&g, time.Now())
	}
	return g, ok, nil
}

// Get returns the grant for ip, if there is one.
func (s *Store) Get(ip string) (Grant, bool, error) { return (&Getter{Store: s}).Get(ip) }

// RemoveFile deletes the spool's entries for ip (its grant file, or
// whatever has its name, and its claimed file), reporting whether there
// was one; a folded grant stays. A symlink is removed itself, never what
// it points to.
func (s *Store) RemoveFile(ip string) (bool, error) {
	c, err := CanonicalIP(ip)
	if err != nil {
		return false, err
	}
	if s.Dir == "" {
		return false, ErrNoDir
	}
	gone := false
	for _, name := range []string{c, claimPrefix + c} {
		err = syscall.Unlink(filepath.Join(s.Dir, name))
		if errors.Is(err, syscall.ENOENT) {
			continue
		}
		if err != nil {
			return gone, &fs.PathError{Op: "remove", Path: filepath.Join(s.Dir, name), Err: err}
		}
		gone = true
	}
	return gone, nil
}

// Remove deletes the grant for ip, reporting whether there was one. A
// symlink of that name is removed itself, never what it points to. The
// caller holds relayctl's lock: a folded grant is removed by rewriting
// the folded file.
func (s *Store) Remove(ip string) (bool, error) {
	gone, err := s.RemoveFile(ip)
	if err != nil {
		return gone, err
	}
	c, _ := CanonicalIP(ip)
	folded, err := s.removeFolded(c, func(Grant) bool { return true })
	return gone || folded, err
}

// Split splits gs into the grants still live at now and those expired,
// in gs's memory (live is gs's, gone a new slice).
func Split(gs []Grant, now time.Time, maxAge time.Duration) (live, gone []Grant) {
	n := 0
	for _, g := range gs {
		if g.Expiry(maxAge).After(now) {
			gs[n] = g
			n++
		} else {
			gone = append(gone, g)
		}
	}
	clear(gs[n:])
	return gs[:n], gone
}

// Clean removes temp files left in the spool by a crash: those whose inode
// changed more than a minute before now. Other entries are left alone.
func (s *Store) Clean(now time.Time) error {
	if s.Dir == "" {
		return ErrNoDir
	}
	// Only temp names matter: no stat, no sort, no allocation for the
	// grants' entries.
	var errs []error
	err := readDir(s.Dir, func(e dirent) {
		if !isTemp(e.name) {
			return
		}
		p := filepath.Join(s.Dir, e.name)
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil || now.Sub(time.Unix(st.Ctim.Unix())) <= staleAge {
			return
		}
		if err := syscall.Unlink(p); err != nil && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, &fs.PathError{Op: "remove", Path: p, Err: err})
		}
	})
	if err != nil {
		return err
	}
	return errors.Join(errs...)
}

// SortByAddr sorts grants by address (numerically, IPv4 first), parsing
// each address once: a million grants sort in a fraction of a second. An
// address that does not parse sorts first.
func SortByAddr(gs []Grant) {
	// Sort positions by address, then move the grants into place by
	// following the permutation's cycles: no copy of the grants.
	addrs := make([]netip.Addr, len(gs))
	for i, g := range gs {
		addrs[i], _ = netip.ParseAddr(g.IP)
	}
	idx := make([]int32, len(gs))
	for i := range idx {
		idx[i] = int32(i)
	}
	slices.SortFunc(idx, func(x, y int32) int { return addrs[x].Compare(addrs[y]) })
	// Position i must receive gs[idx[i]].
	for start := range idx {
		if idx[start] < 0 || int(idx[start]) == start {
			continue
		}
		tmp := gs[start]
		i := start
		for {
			from := int(idx[i])
			idx[i] = -1
			if from == start {
				gs[i] = tmp
				break
			}
			gs[i] = gs[from]
			i = from
		}
	}
}

// futimens sets the access and modification times of the file open as fd
// to t: utimensat(fd, NULL, ...), as the C library's futimens. (Go's
// syscall.Futimes walks /proc/self/fd/N instead, a path lookup per login.)
func futimens(fd int, t time.Time) error {
	ts := [2]syscall.Timespec{syscall.NsecToTimespec(t.UnixNano()), syscall.NsecToTimespec(t.UnixNano())}
	_, _, e := syscall.Syscall6(syscall.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(&ts[0])), 0, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}
