package grant

import (
	"bufio"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// A state file is a Snapshot of one spool saved by relayctl, so that the
// next run reads only the grant files that changed since (see Scan). It is
// a cache: the spool stays the truth, and a state file that is missing,
// foreign, damaged or for another spool is ignored (the spool is then read
// in full). Its format, version 2, is text:
//
//	poprelay-state 2 DEV INO
//	IP<TAB>FILE-INODE<TAB>FILE-CTIME<TAB>TIME<TAB>EXPIRES<TAB>KEEP<TAB>USER<TAB>SERVICE
//	...
//	end<TAB>COUNT<TAB>CRC
//
// DEV and INO identify the spool directory, FILE-CTIME is the grant
// file's inode change time in Unix nanoseconds (see FileID), times are
// Unix seconds (0: none), lines are in address order, and CRC is the CRC-32C (hex) of every
// byte before the end line. User and service names never hold a tab or a
// newline (Record refuses control characters). Version 1 (inode numbers
// alone, which a file system reuses) is not read: the spool is read in
// full once instead, and the state written again as version 2.

const stateMagic = "poprelay-state 2 "

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
	h := crc32.New(castagnoli())
	bw := bufio.NewWriterSize(io.MultiWriter(w, h), 256<<10)
	bw.WriteString(stateMagic)
	bw.WriteString(id)
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
	_, err = fmt.Fprintf(w, "end\t%d\t%08x\n", len(snap.Grants), h.Sum32())
	return err
}

// ReadState reads the state file at path, written by WriteState for this
// spool. The file must be a regular file owned by root or by this process's
// user and writable by no one else: anything else (a file the poprelay
// group could have written, say) is an error wrapping ErrState, as is a
// file that is damaged or belongs to another spool directory.
func (s *Store) ReadState(path string) (*Snapshot, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, fmt.Errorf("%w: %s is a symlink", ErrState, path)
		}
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.Mode().IsRegular():
		return nil, fmt.Errorf("%w: %s is not a regular file", ErrState, path)
	case !ok:
		return nil, fmt.Errorf("%w: %s: no owner", ErrState, path)
	case st.Uid != 0 && int(st.Uid) != os.Geteuid():
		return nil, fmt.Errorf("%w: %s is owned by uid %d", ErrState, path, st.Uid)
	case fi.Mode().Perm()&0o022 != 0:
		return nil, fmt.Errorf("%w: %s is writable by group or others (%v)", ErrState, path, fi.Mode().Perm())
	case fi.Size() > maxState:
		return nil, fmt.Errorf("%w: %s is %d bytes long", ErrState, path, fi.Size())
	}
	buf := make([]byte, fi.Size())
	if _, err := io.ReadFull(f, buf); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrState, path, err)
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

// parseState parses a state file's content for the spool id.
func parseState(buf []byte, id string) (*Snapshot, error) {
	// The end line, and the checksum of all before it.
	if len(buf) == 0 || buf[len(buf)-1] != '\n' {
		return nil, errors.New("truncated")
	}
	endAt := strings.LastIndexByte(string(buf[:len(buf)-1]), '\n') + 1
	end := strings.Split(string(buf[endAt:len(buf)-1]), "\t")
	if len(end) != 3 || end[0] != "end" {
		return nil, errors.New("no end line")
	}
	count, err := strconv.Atoi(end[1])
	if err != nil || count < 0 || count > len(buf)/8 {
		return nil, errors.New("bad count")
	}
	if fmt.Sprintf("%08x", crc32.Checksum(buf[:endAt], castagnoli())) != end[2] {
		return nil, errors.New("bad checksum")
	}
	// One string for the whole file: every name is a substring of it.
	text := string(buf[:endAt])
	line, text, _ := strings.Cut(text, "\n")
	if line != stateMagic+id {
		if strings.HasPrefix(line, stateMagic) {
			return nil, errors.New("written for another spool directory")
		}
		return nil, errors.New("not a version 2 state file")
	}
	snap := &Snapshot{Grants: make([]Grant, 0, count), Files: make([]FileID, 0, count)}
	for text != "" {
		line, text, _ = strings.Cut(text, "\n")
		var f [8]string
		rest := line
		for i := range 7 {
			var ok bool
			if f[i], rest, ok = strings.Cut(rest, "\t"); !ok {
				return nil, fmt.Errorf("line %d: too few fields", len(snap.Grants)+2)
			}
		}
		f[7] = rest
		ino, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("line %d: bad inode", len(snap.Grants)+2)
		}
		ctime, err := strconv.ParseInt(f[2], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("line %d: bad change time", len(snap.Grants)+2)
		}
		g := Grant{IP: f[0], User: f[6], Service: f[7]}
		for i, dst := range [...]*time.Time{&g.Time, &g.Expires, &g.Keep} {
			n, err := strconv.ParseInt(f[3+i], 10, 64)
			if err != nil || n < 0 || n > 1<<40 || (i == 0 && n == 0) {
				return nil, fmt.Errorf("line %d: bad time", len(snap.Grants)+2)
			}
			if n != 0 {
				*dst = time.Unix(n, 0)
			}
		}
		snap.Grants = append(snap.Grants, g)
		snap.Files = append(snap.Files, FileID{Ino: ino, Ctime: ctime})
	}
	if len(snap.Grants) != count {
		return nil, errors.New("count does not match")
	}
	return snap, nil
}
