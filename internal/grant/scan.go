package grant

import (
	"errors"
	"io/fs"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Snapshot is what a read of the spool found: its grants in address order
// (as SortByAddr sorts them) and, for each, the identity of the file it
// was read from. A rewrite of a grant file is a new file renamed over the
// name, so a name still naming the same file still holds the same grant:
// Scan reads only the names whose file changed.
type Snapshot struct {
	Grants []Grant
	Files  []FileID
	// Capped names the grants of this scan whose login time was in the
	// future and was taken as now (Expire writes them back so).
	Capped []string
	// Temps are the temp files the scan saw, for CleanTemps.
	Temps []Temp
	// Claimed names the claimed grant files (".fold-IP") the scan saw:
	// a fold under way, or one a crash interrupted (see Fold).
	Claimed []string
	// Dir is the spool directory's inode change time (Unix
	// nanoseconds) as the scan found it before reading it, or 0 if the
	// directory had changed too recently to rely on it (see racyAge).
	// Every name made, renamed or removed in the directory sets its
	// change time, and every writer of grant files replaces them by
	// rename, so while it stays Dir the spool holds exactly these files:
	// the next Scan then reads and stats none of them.
	Dir int64
}

// racyAge is how long before a scan the spool directory must have last
// changed for the scan to record its change time (Snapshot.Dir). A change
// made during the scan in the same tick of the file system's clock (or
// the same second, on one that keeps seconds only) as the last one would
// leave the directory's change time as it was: the scan might have missed
// it. A change made after the directory has been quiet this long gets a
// later time. (The spool's clock is taken to be this machine's: a local
// file system.)
const racyAge = 2 * time.Second

// FileID tells one grant file from another: its inode number and the
// time its inode last changed, in nanoseconds. The number alone is not
// enough: a file system gives a freed inode number to the next file it
// makes (ext4 does at once), so a grant file replaced twice, or removed
// and made again, may have its old number back with other content. Its
// change time is then new: every write, rename and chmod sets it.
type FileID struct {
	Ino   uint64
	Ctime int64
}

// fileID is the identity of the file st describes.
func fileID(st *syscall.Stat_t) FileID {
	return FileID{Ino: st.Ino, Ctime: st.Ctim.Nano()}
}

// Temp is a temp file in the spool and its inode change time.
type Temp struct {
	Name  string
	Ctime time.Time
}

// ScanStats counts what a Scan did.
type ScanStats struct {
	Entries int // directory entries seen
	Kept    int // grants taken from the previous snapshot
	Read    int // grant files read
	New     int // grants read that prev did not have as they are now
	Gone    int // grants of prev no longer in the spool
}

// Changed tells whether the scan found the spool different from prev.
func (st ScanStats) Changed() bool { return st.New > 0 || st.Gone > 0 }

// Scan reads the spool again. If the spool directory has not changed
// since prev was read (Snapshot.Dir), prev is the spool as it is, and
// Scan returns it without reading the directory. Otherwise every grant
// of prev (nil: none) whose name still names the same file (same inode
// number and change time: one stat, no read) is taken from prev without
// reading it, unless it has expired by now (with maxAge). Every other
// grant file is read. Login times in the future (beyond Skew) are capped
// to the present (the clock's, as in List), and listed in Capped. Scan
// takes prev over: do not use it afterwards. Entries that are not grants
// are skipped, each with one Logf line; only an unreadable spool
// directory is an error.
func (s *Store) Scan(prev *Snapshot, now time.Time, maxAge time.Duration) (*Snapshot, ScanStats, error) {
	return s.scan(prev, now, time.Now(), maxAge, true)
}

// dirent is one directory entry from getdents.
type dirent struct {
	name string
	ino  uint64
	typ  uint8
}

// Linux d_type values.
const (
	dtUnknown = 0
	dtReg     = 8
)

// readDir lists dir with each entry's inode number and type, without a
// stat per entry. Names come from one string per buffer, not one
// allocation each.
func readDir(dir string, each func(dirent)) error {
	fd, err := openDir(dir)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	return readDirFd(fd, dir, nil, each)
}

// openDir opens the directory dir for reading.
func openDir(dir string) (int, error) {
	fd, err := syscall.Open(dir, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return -1, &fs.PathError{Op: "open", Path: dir, Err: err}
	}
	return fd, nil
}

// errUnchanged stops readDirFd before it reads the directory.
var errUnchanged = errors.New("directory unchanged")

// readDirFd is readDir for the directory dir open as fd; with first set,
// it first stats that directory and calls first, which may stop the read
// (errUnchanged) by returning false.
func readDirFd(fd int, dir string, first func(*syscall.Stat_t) bool, each func(dirent)) error {
	if first != nil {
		var st syscall.Stat_t
		if err := syscall.Fstat(fd, &st); err != nil {
			return &fs.PathError{Op: "stat", Path: dir, Err: err}
		}
		if !first(&st) {
			return errUnchanged
		}
	}
	buf := make([]byte, 256<<10)
	for {
		n, err := syscall.ReadDirent(fd, buf)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return &fs.PathError{Op: "readdirent", Path: dir, Err: err}
		}
		if n <= 0 {
			return nil
		}
		// One string for the whole buffer: names are substrings of it.
		chunk := string(buf[:n])
		for off := 0; off+19 <= len(chunk); {
			reclen := int(chunk[off+16]) | int(chunk[off+17])<<8
			if reclen < 19 || off+reclen > len(chunk) {
				return &fs.PathError{Op: "readdirent", Path: dir, Err: errors.New("bad record length")}
			}
			ino := *(*uint64)(unsafe.Pointer(unsafe.StringData(chunk[off:])))
			name := chunk[off+19 : off+reclen]
			for i := 0; i < len(name); i++ {
				if name[i] == 0 {
					name = name[:i]
					break
				}
			}
			typ := chunk[off+18]
			off += reclen
			if name == "." || name == ".." || ino == 0 {
				continue
			}
			each(dirent{name: name, ino: ino, typ: typ})
		}
	}
}

// scan is Scan with the present as clock says (for temp files and login
// times) and as now says (for expiry).
func (s *Store) scan(prev *Snapshot, now, clock time.Time, maxAge time.Duration, capFuture bool) (*Snapshot, ScanStats, error) {
	var st ScanStats
	if s.Dir == "" {
		return nil, st, ErrNoDir
	}
	if prev == nil {
		prev = &Snapshot{}
	}
	// The directory's change time, before its names are read.
	var dirTime int64
	var known map[string]int32 // prev's grants by address
	var keep []bool
	first := func(dst *syscall.Stat_t) bool {
		ct := dst.Ctim.Nano()
		if prev.Dir != 0 && ct == prev.Dir {
			return false
		}
		if clock.Sub(time.Unix(0, ct)) >= racyAge {
			dirTime = ct
		}
		known = make(map[string]int32, len(prev.Grants))
		for i := range prev.Grants {
			known[prev.Grants[i].IP] = int32(i)
		}
		keep = make([]bool, len(prev.Grants))
		return true
	}
	var names []string
	var same []int32
	var temps []Temp
	var claimed []string
	// One descriptor for the directory: read, then each name stat'ed in
	// it (fstatat: one lookup, not a walk from /), never another
	// directory put in its place meanwhile.
	dfd, err := openDir(s.Dir)
	if err != nil {
		return nil, st, err
	}
	defer syscall.Close(dfd)
	err = readDirFd(dfd, s.Dir, first, func(e dirent) {
		st.Entries++
		p := func() string { return filepath.Join(s.Dir, e.name) }
		if e.name == FoldedName {
			return
		}
		if _, ok := ClaimedIP(e.name); ok {
			claimed = append(claimed, e.name)
			return
		}
		if isTemp(e.name) {
			var sst syscall.Stat_t
			if err := syscall.Lstat(p(), &sst); err == nil {
				ct := time.Unix(sst.Ctim.Unix())
				temps = append(temps, Temp{e.name, ct})
				if clock.Sub(ct) > staleAge {
					s.logf("%s: skipping stale temp file", p())
				}
			}
			return
		}
		if i, ok := known[e.name]; ok && prev.Files[i].Ino == e.ino && (e.typ == dtReg || e.typ == dtUnknown) &&
			prev.Grants[i].Expiry(maxAge).After(now) {
			same = append(same, i) // if its change time is too
			return
		}
		if c, err := CanonicalIP(e.name); err != nil || c != e.name {
			s.logf("%s: skipping: not a canonical IP address", p())
			return
		}
		if e.typ != dtReg && e.typ != dtUnknown {
			s.logf("%s: skipping: not a regular file (%v)", p(), typeMode(e.typ))
			return
		}
		names = append(names, e.name)
	})
	if err == errUnchanged {
		// Nothing was made, replaced or removed since prev: prev is
		// the spool. (Its temp files were cleaned then, or are left
		// for a scan that sees the directory change.)
		st.Entries, st.Kept = len(prev.Grants), len(prev.Grants)
		return &Snapshot{Grants: prev.Grants, Files: prev.Files, Dir: prev.Dir}, st, nil
	}
	if err != nil {
		return nil, st, err
	}

	// A name that still has its inode number is kept if the inode has
	// not changed either; else it is read. Stating and reading are a few
	// system calls per file: a few workers at once keep the kernel busy
	// on every core.
	unchanged := make([]bool, len(same))
	parallel(len(same), func(k int) {
		i := same[k]
		var sst unix.Stat_t
		unchanged[k] = unix.Fstatat(dfd, prev.Grants[i].IP, &sst, unix.AT_SYMLINK_NOFOLLOW) == nil &&
			sst.Mode&syscall.S_IFMT == syscall.S_IFREG &&
			(FileID{Ino: sst.Ino, Ctime: sst.Ctim.Nano()}) == prev.Files[i]
	})
	for k, i := range same {
		if unchanged[k] {
			keep[i] = true
		} else {
			names = append(names, prev.Grants[i].IP)
		}
	}
	// Results keep the order of names, so the log lines do too.
	gs := make([]Grant, len(names))
	ids := make([]FileID, len(names))
	errs := make([]error, len(names))
	parallel(len(names), func(i int) { gs[i], errs[i] = s.readFile(names[i], &ids[i]) })
	st.Read = len(names)
	var capped []string
	n := 0
	for i, err := range errs {
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) { // removed meanwhile
				s.logf("%s: skipping: %v", filepath.Join(s.Dir, names[i]), err)
			}
			continue
		}
		g := gs[i]
		if capFuture && s.capTime(&g, clock) {
			capped = append(capped, g.IP)
		}
		if j, ok := known[g.IP]; ok && prev.Grants[j] == g {
			keep[j] = true // read again, found as it was: not news
			prev.Files[j] = ids[i]
			continue
		}
		gs[n], ids[n] = g, ids[i]
		n++
	}
	clear(gs[n:])
	gs, ids = gs[:n], ids[:n]
	st.New = n
	sortWith(gs, ids)

	// The kept grants of prev, in place and still in address order. A
	// grant read again and changed is in gs, not gone.
	k := 0
	for i := range prev.Grants {
		if !keep[i] {
			if _, again := slices.BinarySearchFunc(gs, prev.Grants[i].IP, byIP); !again {
				st.Gone++
			}
			continue
		}
		prev.Grants[k], prev.Files[k] = prev.Grants[i], prev.Files[i]
		k++
	}
	clear(prev.Grants[k:])
	st.Kept = k
	if len(claimed) > 0 {
		// Read again next time: they are folded, or still there.
		dirTime = 0
	}
	out := &Snapshot{Capped: capped, Temps: temps, Claimed: claimed, Dir: dirTime}
	out.Grants, out.Files = mergeSorted(prev.Grants[:k], prev.Files[:k], gs, ids)
	prev.Grants, prev.Files = nil, nil
	return out, st, nil
}

// parallel calls f(0), ..., f(n-1) from a few goroutines at once.
func parallel(n int, f func(int)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(readers, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				f(i)
			}
		}()
	}
	wg.Wait()
}

// byIP compares a grant's address with ip's, for a binary search of a
// slice in address order.
func byIP(g Grant, ip string) int {
	x, _ := netip.ParseAddr(g.IP)
	y, _ := netip.ParseAddr(ip)
	return x.Compare(y)
}

// typeMode is a directory entry's type as an fs.FileMode, as typeOf gives it.
func typeMode(t uint8) fs.FileMode {
	// A d_type is the S_IFMT bits of the mode, shifted down by 12.
	return typeOf(uint32(t) << 12)
}

// sortWith sorts gs by address, moving ids along.
func sortWith(gs []Grant, ids []FileID) {
	if len(gs) < 2 {
		return
	}
	addrs := make([]netip.Addr, len(gs))
	idx := make([]int32, len(gs))
	for i := range gs {
		addrs[i], _ = netip.ParseAddr(gs[i].IP)
		idx[i] = int32(i)
	}
	slices.SortFunc(idx, func(x, y int32) int { return addrs[x].Compare(addrs[y]) })
	g2 := make([]Grant, len(gs))
	i2 := make([]FileID, len(gs))
	for i, j := range idx {
		g2[i], i2[i] = gs[j], ids[j]
	}
	copy(gs, g2)
	copy(ids, i2)
}

// mergeSorted merges b (with its files' identities) into a, both in address order,
// growing a in place: each element of b finds its place by a binary
// search, and a's elements move once. Addresses are parsed only for b and
// the O(len(b) log len(a)) probes.
func mergeSorted(a []Grant, ai []FileID, b []Grant, bi []FileID) ([]Grant, []FileID) {
	pos := make([]int, len(b))
	for j := range b {
		x, _ := netip.ParseAddr(b[j].IP)
		pos[j], _ = searchAddr(a, x)
	}
	return insertAt(a, b, pos), insertAt(ai, bi, pos)
}

// CleanTemps is Clean for the temp files snap saw: it removes those whose
// inode changed more than a minute before now, without reading the spool
// again.
func (s *Store) CleanTemps(snap *Snapshot, now time.Time) error {
	var errs []error
	for _, tf := range snap.Temps {
		if now.Sub(tf.Ctime) <= staleAge {
			continue
		}
		p := filepath.Join(s.Dir, tf.Name)
		if err := syscall.Unlink(p); err != nil && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, &fs.PathError{Op: "remove", Path: p, Err: err})
		}
	}
	return errors.Join(errs...)
}
