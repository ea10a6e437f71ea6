package grant

import (
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The folded file. A grant file costs the kernel an inode, a rename and a
// stat at every read of a changed spool; with 100k grants that is most of
// a rebuild. So relayctl folds the spool's grant files into one file in
// the spool, FoldedName, and removes them: the spool's files are an inbox
// of the logins since the last fold, the folded file holds the rest.
//
//	poprelay-grants 1
//	IP<TAB>TIME<TAB>EXPIRES<TAB>KEEP<TAB>USER<TAB>SERVICE
//	...
//	end<TAB>COUNT<TAB>CRC
//
// Times are Unix seconds (0: none), lines are in address order with each
// address once, and CRC is the CRC-32C (hex) of every byte before the end
// line, as in the state file. The file is written as a temp file, synced
// and renamed, only by a holder of relayctl's lock; the wrapper never
// touches it.
//
// A grant file is always newer than the folded grant for its address, so
// it replaces it (keeping a longer end, as a login over a file does; see
// Overlay). A fold therefore never loses a grant, at any moment of it and
// after a crash at any point:
//
//  1. the folded file is replaced by one holding every grant (the folded
//     ones with the files read over them), synced (Fold);
//  2. each grant file read is renamed to ".fold-IP" (a claim), and
//     removed if it still holds the grant read; if a login replaced it in
//     between, it is linked back under its name (Sweep, which may come
//     later, a part at a time: a file left holds what the folded file
//     has);
//  3. the spool directory is synced, at the latest by the next fold,
//     before it writes the folded file.
//
// Readers take a claimed file as the grant file it was (the grant for IP
// is IP's file, else .fold-IP's, else the folded one), so a reader that
// does not hold the lock never sees a grant missing, and a claimed file
// left by a crash is read, and folded, by the next fold.
const (
	// FoldedName is the folded file's name in the spool.
	FoldedName = ".grants"
	// claimPrefix starts the name of a claimed grant file.
	claimPrefix = ".fold-"
	foldedMagic = "poprelay-grants 1\n"
	// foldedTemp starts the name of the folded file's temp file.
	foldedTemp = tempPrefix + "grants-"
)

// ErrFolded reports a folded file that cannot be read.
var ErrFolded = errors.New("unusable folded grants file")

// ClaimedIP tells whether name is a claimed grant file's, and for which
// address.
func ClaimedIP(name string) (string, bool) {
	ip, ok := strings.CutPrefix(name, claimPrefix)
	if !ok {
		return "", false
	}
	if c, err := CanonicalIP(ip); err != nil || c != ip {
		return "", false
	}
	return ip, true
}

// Folded is the content of the folded file: its grants in address order.
type Folded struct {
	Grants []Grant
	id     foldedID // the file read; zero: none
}

// foldedID tells a replaced folded file from the same one.
type foldedID struct {
	ino   uint64
	ctime int64
	size  int64
}

// Same tells whether the folded file is still the one f was read from.
func (s *Store) Same(f *Folded) bool {
	if f == nil {
		return false
	}
	var st syscall.Stat_t
	err := syscall.Lstat(filepath.Join(s.Dir, FoldedName), &st)
	if errors.Is(err, syscall.ENOENT) {
		return f.id == foldedID{}
	}
	return err == nil && f.id == foldedID{st.Ino, st.Ctim.Nano(), st.Size}
}

// searchAddr finds where the address x is, or would be, in gs (address
// order), parsing the addresses it compares with.
func searchAddr(gs []Grant, x netip.Addr) (int, bool) {
	return slices.BinarySearchFunc(gs, x, func(g Grant, x netip.Addr) int {
		y, _ := netip.ParseAddr(g.IP)
		return y.Compare(x)
	})
}

// Find returns the folded grant for ip (canonical).
func (f *Folded) Find(ip string) (Grant, bool) {
	x, err := netip.ParseAddr(ip)
	if err != nil {
		return Grant{}, false
	}
	i, ok := searchAddr(f.Grants, x)
	if !ok {
		return Grant{}, false
	}
	return f.Grants[i], true
}

// ReadFolded reads the folded file; none is an empty Folded. Its Grants
// have room for spare more. The file must be a regular file owned by root
// or this process's user and writable by no one else, and every line a
// grant in canonical form, in address order: anything else is an error
// wrapping ErrFolded, naming the line.
func (s *Store) ReadFolded(spare int) (*Folded, error) {
	if s.Dir == "" {
		return nil, ErrNoDir
	}
	p := filepath.Join(s.Dir, FoldedName)
	fd, err := syscall.Open(p, syscall.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if errors.Is(err, syscall.ENOENT) {
		return &Folded{Grants: make([]Grant, 0, spare)}, nil
	}
	if err == syscall.ELOOP {
		return nil, fmt.Errorf("%w: %s is a symlink", ErrFolded, p)
	}
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: p, Err: err}
	}
	defer syscall.Close(fd)
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return nil, &fs.PathError{Op: "stat", Path: p, Err: err}
	}
	switch {
	case st.Mode&syscall.S_IFMT != syscall.S_IFREG:
		return nil, fmt.Errorf("%w: %s is not a regular file", ErrFolded, p)
	case st.Uid != 0 && int(st.Uid) != os.Geteuid():
		return nil, fmt.Errorf("%w: %s is owned by uid %d", ErrFolded, p, st.Uid)
	case st.Mode&0o022 != 0:
		return nil, fmt.Errorf("%w: %s is writable by group or others (%v)", ErrFolded, p, fs.FileMode(st.Mode&0o777))
	case st.Size > maxState:
		return nil, fmt.Errorf("%w: %s is %d bytes long", ErrFolded, p, st.Size)
	}
	buf := make([]byte, st.Size)
	for n := 0; n < len(buf); {
		m, err := syscall.Read(fd, buf[n:])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return nil, &fs.PathError{Op: "read", Path: p, Err: err}
		}
		if m == 0 {
			return nil, fmt.Errorf("%w: %s: shorter than it was", ErrFolded, p)
		}
		n += m
	}
	gs, err := parseFolded(buf, spare)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrFolded, p, err)
	}
	return &Folded{Grants: gs, id: foldedID{st.Ino, st.Ctim.Nano(), st.Size}}, nil
}

// parseFolded parses a folded file's content, checking every grant. The
// grants' strings are parts of buf, which must not change afterwards.
func parseFolded(buf []byte, spare int) ([]Grant, error) {
	text, count, err := checkTail(buf)
	if err != nil {
		return nil, err
	}
	text, ok := strings.CutPrefix(text, foldedMagic)
	if !ok {
		return nil, errors.New("not a poprelay-grants 1 file")
	}
	pieces, starts, err := countPieces(text, count)
	if err != nil {
		return nil, err
	}
	gs := make([]Grant, count, count+spare)
	errs := make([]error, len(pieces))
	parallel(len(pieces), func(k int) {
		errs[k] = parseLines(pieces[k], gs[starts[k]:starts[k+1]], nil)
	})
	if err := pieceError(errs, starts); err != nil {
		return nil, err
	}
	// Every address canonical, and in order: a file from anywhere but a
	// fold is refused, not half believed.
	addrs := make([]netip.Addr, len(pieces))
	parallel(len(pieces), func(k int) {
		var prev netip.Addr
		for i := starts[k]; i < starts[k+1]; i++ {
			g := &gs[i]
			a, err := netip.ParseAddr(g.IP)
			switch {
			case err != nil || a.Zone() != "" || a.Is4In6() || a.String() != g.IP:
				errs[k] = lineError{i - starts[k], "not a canonical address"}
			case i > starts[k] && a.Compare(prev) <= 0:
				errs[k] = lineError{i - starts[k], "out of order"}
			case checkField("user", g.User) != nil || checkField("service", g.Service) != nil:
				errs[k] = lineError{i - starts[k], "bad user or service name"}
			}
			if errs[k] != nil {
				return
			}
			prev = a
		}
		addrs[k] = prev
	})
	if err := pieceError(errs, starts); err != nil {
		return nil, err
	}
	for k := range pieces {
		if k > 0 && starts[k] < starts[k+1] && starts[k-1] < starts[k] {
			first, _ := netip.ParseAddr(gs[starts[k]].IP)
			if first.Compare(addrs[k-1]) <= 0 {
				return nil, fmt.Errorf("line %d: out of order", 2+starts[k])
			}
		}
	}
	return gs, nil
}

// checkTail checks the end line and checksum of a state or folded file
// and returns the lines before the end line and the count it gives.
func checkTail(buf []byte) (string, int, error) {
	if len(buf) == 0 || buf[len(buf)-1] != '\n' {
		return "", 0, errors.New("truncated")
	}
	whole := unsafe.String(unsafe.SliceData(buf), len(buf))
	endAt := strings.LastIndexByte(whole[:len(buf)-1], '\n') + 1
	end := strings.Split(whole[endAt:len(buf)-1], "\t")
	if len(end) != 3 || end[0] != "end" {
		return "", 0, errors.New("no end line")
	}
	count, err := strconv.Atoi(end[1])
	if err != nil || count < 0 || count > len(buf)/8 {
		return "", 0, errors.New("bad count")
	}
	if fmt.Sprintf("%08x", crc32.Checksum(buf[:endAt], castagnoli())) != end[2] {
		return "", 0, errors.New("bad checksum")
	}
	return whole[:endAt], count, nil
}

// countPieces cuts text into pieces (cutPieces) and counts their lines:
// piece k holds lines starts[k] to starts[k+1], and count in all, or the
// file is refused.
func countPieces(text string, count int) ([]string, []int, error) {
	pieces := cutPieces(text)
	starts := make([]int, len(pieces)+1)
	for k, p := range pieces {
		starts[k+1] = starts[k] + strings.Count(p, "\n")
	}
	if starts[len(pieces)] != count {
		return nil, nil, errors.New("count does not match")
	}
	return pieces, starts, nil
}

// pieceError is the first line error of errs, one per piece, as the
// line number in the file (the first line is the header).
func pieceError(errs []error, starts []int) error {
	for k, err := range errs {
		var le lineError
		if errors.As(err, &le) {
			return fmt.Errorf("line %d: %s", 2+starts[k]+le.n, le.msg)
		}
	}
	return nil
}

// cutPieces cuts text into a few pieces of whole lines, to be parsed at
// once on every core.
func cutPieces(text string) []string {
	var cuts []int
	for k := 1; k < parseWorkers && len(text) > 1<<20; k++ {
		at := k * len(text) / parseWorkers
		if nl := strings.IndexByte(text[at:], '\n'); nl >= 0 && (len(cuts) == 0 || at+nl+1 > cuts[len(cuts)-1]) {
			cuts = append(cuts, at+nl+1)
		}
	}
	pieces := make([]string, 0, len(cuts)+1)
	from := 0
	for _, c := range cuts {
		pieces = append(pieces, text[from:c])
		from = c
	}
	return append(pieces, text[from:])
}

// appendFolded appends g's line of the folded file to b.
func appendFolded(b []byte, g *Grant) []byte {
	b = append(b, g.IP...)
	for _, t := range [...]time.Time{g.Time, g.Expires, g.Keep} {
		b = append(b, '\t')
		if t.IsZero() {
			b = append(b, '0')
		} else {
			b = strconv.AppendInt(b, t.Unix(), 10)
		}
	}
	b = append(b, '\t')
	b = append(b, g.User...)
	b = append(b, '\t')
	b = append(b, g.Service...)
	return append(b, '\n')
}

// encodeFolded writes gs (address order, each address once) to w as a
// folded file.
func encodeFolded(w io.Writer, gs []Grant) error {
	h := crc32.New(castagnoli())
	b := make([]byte, 0, 256<<10)
	b = append(b, foldedMagic...)
	flush := func() error {
		h.Write(b)
		_, err := w.Write(b)
		b = b[:0]
		return err
	}
	for i := range gs {
		b = appendFolded(b, &gs[i])
		if len(b) > 240<<10 {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := flush(); err != nil {
		return err
	}
	b = fmt.Appendf(b, "end\t%d\t%08x\n", len(gs), h.Sum32())
	_, err := w.Write(b)
	return err
}

// writeFolded replaces the folded file by one holding gs (address order,
// each address once): temp file, fsync, rename, fsync of the spool.
func (s *Store) writeFolded(gs []Grant) (id foldedID, err error) {
	if s.Dir == "" {
		return id, ErrNoDir
	}
	tmp := filepath.Join(s.Dir, fmt.Sprintf("%s%d-%d-%x", foldedTemp, os.Getpid(), tempSeq.Add(1), rand.Uint32()))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, fileMode)
	if err != nil {
		return id, err
	}
	defer func() {
		if f != nil {
			f.Close()
		}
		if err != nil {
			os.Remove(tmp)
		}
	}()
	if err := encodeFolded(f, gs); err != nil {
		return id, err
	}
	// The umask may have taken the group's read bit: relayctl list by
	// a member of the group needs it.
	if err := f.Chmod(fileMode); err != nil {
		return id, err
	}
	if err := f.Sync(); err != nil {
		return id, err
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		return id, err
	}
	err = f.Close()
	f = nil
	if err != nil {
		return id, err
	}
	if err := syscall.Rename(tmp, filepath.Join(s.Dir, FoldedName)); err != nil {
		return id, &os.LinkError{Op: "rename", Old: tmp, New: FoldedName, Err: err}
	}
	if err := syncDir(s.Dir); err != nil {
		return id, err
	}
	// The rename changed the inode's change time: stat it as it is now.
	if err := syscall.Lstat(filepath.Join(s.Dir, FoldedName), &st); err != nil {
		return id, err
	}
	return foldedID{st.Ino, st.Ctim.Nano(), st.Size}, nil
}

// syncDir makes the names made and removed in dir durable.
func syncDir(dir string) error {
	fd, err := openDir(dir)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	if err := syscall.Fsync(fd); err != nil {
		return &fs.PathError{Op: "fsync", Path: dir, Err: err}
	}
	return nil
}

// Fold makes gs (address order, each address once: the grants of inbox
// and of its claimed files over the folded ones, minus any to drop) the
// folded grants, and removes the claimed files inbox saw (their grants
// are in gs). It returns the new folded grants (gs itself). The grant
// files inbox read are left: Sweep removes them, those of dropped grants
// at once (or a read brings them back), the others whenever is
// convenient, since the folded file has their grants. The caller holds
// relayctl's lock: Fold rewrites the folded file whole.
func (s *Store) Fold(gs []Grant, inbox *Snapshot) (*Folded, error) {
	// The removals of the sweeps before go to disk first: a grant file
	// swept before a later login was folded must not come back after a
	// crash, over the folded grant of that login.
	if err := syncDir(s.Dir); err != nil {
		return nil, err
	}
	id, err := s.writeFolded(gs)
	if err != nil {
		return nil, fmt.Errorf("unable to write %s: %w", filepath.Join(s.Dir, FoldedName), err)
	}
	out := &Folded{Grants: gs, id: id}
	var errs []error
	if inbox != nil {
		// The temp file of a fold killed mid-write: only a holder of
		// the lock writes one, so it belongs to no one.
		for _, tf := range inbox.Temps {
			if strings.HasPrefix(tf.Name, foldedTemp) {
				if err := syscall.Unlink(filepath.Join(s.Dir, tf.Name)); err != nil && err != syscall.ENOENT {
					errs = append(errs, &fs.PathError{Op: "remove", Path: filepath.Join(s.Dir, tf.Name), Err: err})
				}
			}
		}
		for _, name := range inbox.Claimed {
			if err := syscall.Unlink(filepath.Join(s.Dir, name)); err != nil && err != syscall.ENOENT {
				errs = append(errs, &fs.PathError{Op: "remove", Path: filepath.Join(s.Dir, name), Err: err})
			}
		}
	}
	return out, errors.Join(errs...)
}

// Sweep removes the grant files of inbox (a Scan) numbered in idx, each
// only if it still holds the grant read: a login that replaced it since
// stays. The caller holds relayctl's lock, and the folded file has the
// grants of those files, or they are meant to go.
func (s *Store) Sweep(inbox *Snapshot, idx []int) error {
	if len(idx) == 0 {
		return nil
	}
	dfd, err := openDir(s.Dir)
	if err != nil {
		return err
	}
	defer syscall.Close(dfd)
	capped := make(map[string]bool, len(inbox.Capped))
	for _, ip := range inbox.Capped {
		capped[ip] = true
	}
	now := time.Now()
	// A few at once: a removal waits on the disk (a file system
	// mounted with discard trims the freed blocks at once).
	errs := make([]error, len(idx))
	parallel(len(idx), func(k int) {
		i := idx[k]
		name := inbox.Grants[i].IP
		// Unless it is the grant read: a login replaced it in between.
		// (Its inode number cannot tell: a file system reuses a freed
		// one.)
		_, errs[k] = s.reclaim(dfd, name, func(g Grant, err error) bool {
			g.IP = name
			return err == nil && sameFile(g, inbox.Grants[i], capped[name], now)
		})
	})
	// No sync of the spool: a removal lost in a crash leaves a file
	// whose grant the folded file has; the next Fold syncs them first.
	return errors.Join(errs...)
}

// RemoveBefore removes the grant for ip if it was recorded at or before
// at (a revocation made at at), and reports whether it removed one: a
// login since stays, even one that lands while RemoveBefore runs (the
// file is claimed, then read again before it goes, as Sweep does). The
// caller holds relayctl's lock: a folded grant goes by rewriting the
// folded file.
func (s *Store) RemoveBefore(ip string, at time.Time) (bool, error) {
	c, err := CanonicalIP(ip)
	if err != nil {
		return false, err
	}
	if s.Dir == "" {
		return false, ErrNoDir
	}
	dfd, err := openDir(s.Dir)
	if err != nil {
		return false, err
	}
	defer syscall.Close(dfd)
	old := func(g Grant, err error) bool { return err == nil && !g.Time.After(at) }
	gone := false
	claim := claimPrefix + c
	// A file a killed fold left claimed: only folds, under the lock,
	// make those, so it stands still.
	if old(s.read(claim)) {
		if err := unix.Unlinkat(dfd, claim, 0); err != nil && err != unix.ENOENT {
			return gone, &fs.PathError{Op: "remove", Path: filepath.Join(s.Dir, claim), Err: err}
		}
		gone = true
	}
	if file, err := s.reclaim(dfd, c, old); err != nil {
		return gone, err
	} else if file {
		gone = true
	}
	folded, err := s.removeFolded(c, func(g Grant) bool { return !g.Time.After(at) })
	return gone || folded, err
}

// reclaim claims the grant file name (a rename to .fold-NAME), reads it
// again and removes it if drop says so of what it read; otherwise it goes
// back under its name, unless a later login is there already. A file
// left claimed when that fails is taken by readers and the next fold. It
// reports whether it removed the file; none there is no error.
func (s *Store) reclaim(dfd int, name string, drop func(Grant, error) bool) (bool, error) {
	claim := claimPrefix + name
	if err := unix.Renameat(dfd, name, dfd, claim); err != nil {
		if err == unix.ENOENT {
			return false, nil
		}
		return false, &fs.PathError{Op: "rename", Path: filepath.Join(s.Dir, name), Err: err}
	}
	gone := drop(s.read(claim))
	if !gone {
		if err := unix.Linkat(dfd, claim, dfd, name, 0); err != nil && err != unix.EEXIST {
			return false, &fs.PathError{Op: "link", Path: filepath.Join(s.Dir, name), Err: err}
		}
	}
	if err := unix.Unlinkat(dfd, claim, 0); err != nil && err != unix.ENOENT {
		return gone, &fs.PathError{Op: "remove", Path: filepath.Join(s.Dir, claim), Err: err}
	}
	return gone, nil
}

// removeFolded removes the folded grant for the canonical address c, if
// there is one and drop says so, by rewriting the folded file; it reports
// whether it did. The caller holds relayctl's lock.
func (s *Store) removeFolded(c string, drop func(Grant) bool) (bool, error) {
	f, err := s.ReadFolded(0)
	if err != nil {
		return false, err
	}
	x, _ := netip.ParseAddr(c)
	i, found := searchAddr(f.Grants, x)
	if !found || !drop(f.Grants[i]) {
		return false, nil
	}
	if _, err := s.writeFolded(slices.Delete(f.Grants, i, i+1)); err != nil {
		return false, fmt.Errorf("unable to write %s: %w", filepath.Join(s.Dir, FoldedName), err)
	}
	return true, nil
}

// All numbers the n grant files of a Snapshot, for Sweep.
func All(n int) []int {
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i
	}
	return idx
}

// sameFile tells whether g, read from a claimed file, is the grant read
// as was. A grant whose login time was in the future was read capped to
// the present: its file is the same if its time is still in the future.
// (A login writes the present.)
func sameFile(g, was Grant, capped bool, now time.Time) bool {
	if !capped {
		return g == was
	}
	return g.User == was.User && g.Service == was.Service && g.Time.After(now.Add(Skew))
}

// ReadClaimed reads the claimed files names (".fold-IP") and returns
// their grants in address order, skipping (with a log line) what is not
// one.
func (s *Store) ReadClaimed(names []string, now time.Time) []Grant {
	var gs []Grant
	for _, name := range names {
		ip, ok := ClaimedIP(name)
		if !ok {
			continue
		}
		g, err := s.read(name)
		if errors.Is(err, fs.ErrNotExist) {
			continue // folded meanwhile
		}
		if err != nil {
			s.logf("%s: skipping: %v", filepath.Join(s.Dir, name), err)
			continue
		}
		g.IP = ip
		s.capTime(&g, now)
		gs = append(gs, g)
	}
	SortByAddr(gs)
	return gs
}

// keepLonger makes g, which replaces old, keep old's end if that is
// later, as a login over a longer grant does. An explicit Expires is an
// admin's new decision: it wins.
func keepLonger(g *Grant, old Grant) {
	if !g.Expires.IsZero() {
		return
	}
	keep := old.Keep
	if old.Expires.After(keep) {
		keep = old.Expires
	}
	if keep.After(g.Time) && keep.After(g.Keep) {
		g.Keep = keep
	}
}

// Overlay returns base with the grants of top over it (both in address
// order, each address once): a grant of top replaces base's for its
// address, keeping a longer end (keepLonger), or is added. It works in
// base's memory (growing it if it has no room) and leaves top as it is.
func Overlay(base, top []Grant) []Grant {
	if len(top) == 0 {
		return base
	}
	if len(base) == 0 {
		return append(base, top...)
	}
	var add []Grant
	var pos []int
	over := func(t Grant, i int, found bool) {
		if found {
			keepLonger(&t, base[i])
			base[i] = t
			return
		}
		add = append(add, t)
		pos = append(pos, i)
	}
	if len(top) < len(base)/32 {
		// A few: each finds its place by a binary search.
		for _, t := range top {
			x, _ := netip.ParseAddr(t.IP)
			i, found := searchAddr(base, x)
			over(t, i, found)
		}
	} else {
		// Many: one pass over both, each address parsed once.
		add, pos = make([]Grant, 0, len(top)), make([]int, 0, len(top))
		i := 0
		var y netip.Addr
		parsed := -1
		for _, t := range top {
			x, _ := netip.ParseAddr(t.IP)
			for ; i < len(base); i++ {
				if parsed != i {
					y, _ = netip.ParseAddr(base[i].IP)
					parsed = i
				}
				if y.Compare(x) >= 0 {
					break
				}
			}
			over(t, i, i < len(base) && y == x)
		}
	}
	return insertAt(base, add, pos)
}

// insertAt inserts b[j] before a[pos[j]] (pos ascending), in a's memory:
// each element of a moves once.
func insertAt[T any](a, b []T, pos []int) []T {
	if len(b) == 0 {
		return a
	}
	n := len(a)
	a = slices.Grow(a, len(b))[:n+len(b)]
	end := n // a[:end] not yet moved
	for j := len(b) - 1; j >= 0; j-- {
		p := pos[j]
		copy(a[p+j+1:end+j+1], a[p:end])
		a[p+j] = b[j]
		end = p
	}
	return a
}
