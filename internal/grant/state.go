package grant

import (
	"bufio"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/poprelay/poprelay/internal/regular"
)

// A state file is a Snapshot of one spool saved by relayctl, so that the
// next run reads only the grant files that changed since (see Scan). It is
// a cache: the spool stays the truth, and a state file that is missing,
// foreign, damaged or for another spool is ignored (the spool is then read
// in full). Its format, version 3, is text:
//
//	poprelay-state 3 DEV INO DIR-CTIME
//	IP<TAB>FILE-INODE<TAB>FILE-CTIME<TAB>TIME<TAB>EXPIRES<TAB>KEEP<TAB>USER<TAB>SERVICE
//	...
//	end<TAB>COUNT<TAB>CRC
//
// DEV and INO identify the spool directory, DIR-CTIME is its inode change
// time in Unix nanoseconds when it was read (0: not to be relied on; see
// Snapshot.Dir), FILE-CTIME is the grant file's (see FileID), times are
// Unix seconds (0: none), lines are in address order, and CRC is the
// CRC-32C (hex) of every byte before the end line. User and service
// names never hold a tab or a newline (Record refuses control
// characters). Version 2 (the same without DIR-CTIME) is read as a
// version 3 with DIR-CTIME 0. Version 1 (inode numbers alone, which a
// file system reuses) is not read: the spool is read in full once
// instead, and the state written again as version 3.

const (
	stateMagic  = "poprelay-state 3 "
	stateMagic2 = "poprelay-state 2 "
)

// maxState bounds the size of a state file read.
const maxState = 1 << 31

// ErrState reports a state file that cannot be used.
var ErrState = errors.New("unusable state file")

// castagnoli is made on first use, not at init: every login's wrapper
// links this package and would pay for the table (0.2 ms) for nothing.
var castagnoli = sync.OnceValue(func() *crc32.Table { return crc32.MakeTable(crc32.Castagnoli) })

// spoolID is the device and inode number of the spool directory.
func (s *Store) spoolID() (string, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(s.Dir, &st); err != nil {
		return "", err
	}
	return fmt.Sprintf("%d %d", st.Dev, st.Ino), nil
}

// WriteState writes snap as the state file of this spool to w.
func (s *Store) WriteState(w io.Writer, snap *Snapshot) error {
	id, err := s.spoolID()
	if err != nil {
		return err
	}
	return writeState(w, id, snap)
}

// writeState writes snap as the state file of the spool id to w.
func writeState(w io.Writer, id string, snap *Snapshot) error {
	h := crc32.New(castagnoli())
	bw := bufio.NewWriterSize(io.MultiWriter(w, h), 256<<10)
	bw.WriteString(stateMagic)
	bw.WriteString(id)
	bw.WriteByte(' ')
	bw.WriteString(strconv.FormatInt(snap.Dir, 10))
	bw.WriteByte('\n')
	var b []byte
	unix := func(t time.Time) int64 {
		if t.IsZero() {
			return 0
		}
		return t.Unix()
	}
	for i := range snap.Grants {
		g := &snap.Grants[i]
		b = append(b[:0], g.IP...)
		b = append(b, '\t')
		b = strconv.AppendUint(b, snap.Files[i].Ino, 10)
		b = append(b, '\t')
		b = strconv.AppendInt(b, snap.Files[i].Ctime, 10)
		for _, t := range [...]time.Time{g.Time, g.Expires, g.Keep} {
			b = append(b, '\t')
			b = strconv.AppendInt(b, unix(t), 10)
		}
		b = append(b, '\t')
		b = append(b, g.User...)
		b = append(b, '\t')
		b = append(b, g.Service...)
		b = append(b, '\n')
		if _, err := bw.Write(b); err != nil {
			return err
		}
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "end\t%d\t%08x\n", len(snap.Grants), h.Sum32())
	return err
}

// ReadState reads the state file at path, written by WriteState for this
// spool. The file must be a regular file owned by root or by this process's
// user and writable by no one else: anything else (a file the poprelay
// group could have written, say) is an error wrapping ErrState, as is a
// file that is damaged or belongs to another spool directory.
func (s *Store) ReadState(path string) (*Snapshot, error) {
	buf, _, err := regular.ReadOwned(path, maxState)
	if errors.Is(err, regular.ErrUntrusted) {
		return nil, fmt.Errorf("%w: %v", ErrState, err)
	}
	if err != nil {
		return nil, err
	}
	id, err := s.spoolID()
	if err != nil {
		return nil, err
	}
	snap, err := parseState(buf, id)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrState, path, err)
	}
	return snap, nil
}

// parseState parses a state file's content for the spool id. The
// snapshot's strings are parts of buf (no copy of a file that may be
// 80 MB long): buf must not be changed afterwards.
func parseState(buf []byte, id string) (*Snapshot, error) {
	text, count, err := checkTail(buf)
	if err != nil {
		return nil, err
	}
	// Every name is a substring of the file.
	line, text, _ := strings.Cut(text, "\n")
	var dir int64
	switch {
	case strings.HasPrefix(line, stateMagic+id+" "):
		d, err := strconv.ParseInt(line[len(stateMagic+id+" "):], 10, 64)
		if err != nil || d < 0 {
			return nil, errors.New("bad directory change time")
		}
		dir = d
	case line == stateMagic2+id:
		// Version 2: no directory change time.
	case strings.HasPrefix(line, stateMagic), strings.HasPrefix(line, stateMagic2):
		return nil, errors.New("written for another spool directory")
	default:
		return nil, errors.New("not a version 2 or 3 state file")
	}
	snap := &Snapshot{Dir: dir}
	// The lines in a few pieces, parsed at once on every core, each
	// into its own part of one slice: its lines counted first.
	pieces, starts, err := countPieces(text, count)
	if err != nil {
		return nil, err
	}
	snap.Grants, snap.Files = make([]Grant, count), make([]FileID, count)
	errs := make([]error, len(pieces))
	parallel(len(pieces), func(k int) {
		errs[k] = parseLines(pieces[k], snap.Grants[starts[k]:starts[k+1]], snap.Files[starts[k]:starts[k+1]])
	})
	if err := pieceError(errs, starts); err != nil {
		return nil, err
	}
	return snap, nil
}

// parseWorkers is how many pieces a large state file is parsed in.
const parseWorkers = 4

// lineError is a bad line of a piece of a state file, n lines into it.
type lineError struct {
	n   int
	msg string
}

func (e lineError) Error() string { return fmt.Sprintf("line %d of the piece: %s", e.n, e.msg) }

// parseLines parses the grant lines of text (whole lines, as many as gs
// is long) into gs and ids; without ids (nil), lines of the folded file,
// which have no inode or change time.
func parseLines(text string, gs []Grant, ids []FileID) error {
	nf := 8
	if ids == nil {
		nf = 6
	}
	for k := range gs {
		// Fields by hand: this loop runs once per grant, a million
		// times at the largest sites.
		line := text
		if nl := strings.IndexByte(text, '\n'); nl >= 0 {
			line, text = text[:nl], text[nl+1:]
		} else {
			text = ""
		}
		var f [8]string
		// Without the inode and change time, fields 3 on are where
		// they are in the state file.
		at := 0
		for range nf - 1 {
			tab := strings.IndexByte(line, '\t')
			if tab < 0 {
				return lineError{k, "too few fields"}
			}
			f[at], line = line[:tab], line[tab+1:]
			at++
			if at == 1 && ids == nil {
				at = 3
			}
		}
		f[7] = line
		g := Grant{IP: f[0], User: f[6], Service: f[7]}
		for i, dst := range [...]*time.Time{&g.Time, &g.Expires, &g.Keep} {
			n, ok := decimal(f[3+i])
			if !ok || n > 1<<40 || (i == 0 && n == 0) {
				return lineError{k, "bad time"}
			}
			if n != 0 {
				*dst = time.Unix(int64(n), 0)
			}
		}
		gs[k] = g
		if ids == nil {
			continue
		}
		ino, ok := decimal(f[1])
		if !ok {
			return lineError{k, "bad inode"}
		}
		ctime, ok := decimal(f[2])
		if !ok || ctime > math.MaxInt64 {
			return lineError{k, "bad change time"}
		}
		ids[k] = FileID{Ino: ino, Ctime: int64(ctime)}
	}
	return nil
}

// decimal parses s, 1 to 20 decimal digits, as a uint64.
func decimal(s string) (uint64, bool) {
	if len(s) == 0 || len(s) > 20 {
		return 0, false
	}
	var n uint64
	for i := 0; i < len(s); i++ {
		c := s[i] - '0'
		if c > 9 {
			return 0, false
		}
		m := n*10 + uint64(c)
		if n > math.MaxUint64/10 || m < n*10 {
			return 0, false
		}
		n = m
	}
	return n, true
}
