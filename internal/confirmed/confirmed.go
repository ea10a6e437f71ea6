// Package confirmed keeps the static rules every automatic writer of the
// CDB publishes from honest about a rules file caught mid-write or
// emptied by accident.
//
// A rules file that suddenly became empty, or lost more than half its
// rules, against the rules last confirmed, is held back: the writer
// publishes the grants with the last confirmed rules instead, and says
// so. Only a confirmation (relayctl rebuild, or SIGHUP to relayctl watch)
// takes such a file as it is. A file that did not shrink that much is
// confirmed by being read, as before.
//
// Since the writers are separate processes (the watcher, cron's relayctl
// expire every minute, allow, revoke, import), the last confirmed rules
// are kept on disk beside the CDB, in root's directory, as CDB.rules: a
// copy of the rules file's text when it was last confirmed. Its format,
// version 1:
//
//	poprelay-rules 1 RULES BYTES "RULES-FILE"
//	TEXT (BYTES bytes, the rules file as it was read)
//	end CRC
//
// RULES is how many rules TEXT holds, RULES-FILE the rules file it is a
// copy of (a Go-quoted string), and CRC the CRC-32C (8 hex digits) of
// every byte before the end line; a newline always separates TEXT from
// the end line. A copy is believed only if it is a regular file (never
// through a symlink) owned by root or this process's user, writable by no
// one else, whole, parses, and is a copy of this very rules file;
// anything else is ignored with a warning (and replaced): the rules file
// is then taken as it is, as it was before this copy existed.
package confirmed

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/poprelay/poprelay/internal/atomic"
	"github.com/poprelay/poprelay/internal/regular"
	"github.com/poprelay/poprelay/internal/rules"
)

const magic = "poprelay-rules 1 "

// maxCopy bounds the size of a copy read.
const maxCopy = 1 << 31

// ErrUnusable reports a copy that cannot be believed.
var ErrUnusable = errors.New("unusable copy of the confirmed rules")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Shrunk tells whether a rules file going from old to new rules looks
// like one caught mid-write or truncated by accident: empty now (where it
// had rules), or fewer than half the rules.
func Shrunk(old, new int) bool { return 2*new < old }

// Copy is the last confirmed rules.
type Copy struct {
	Source string // the rules file it is a copy of
	Text   []byte // that file's text, as it was confirmed
	N      int    // the rules it holds, as its header says
	ID     FileID // the file it was read from (Read)
}

// FileID tells a copy replaced or changed from the same one: its device,
// inode and inode change time.
type FileID struct {
	Dev, Ino uint64
	Ctime    int64
}

func fileID(st *syscall.Stat_t) FileID {
	return FileID{uint64(st.Dev), uint64(st.Ino), st.Ctim.Nano()}
}

// StatID is the FileID of path (not followed if a symlink), or the zero
// FileID if there is none.
func StatID(path string) FileID {
	var st syscall.Stat_t
	if err := syscall.Lstat(path, &st); err != nil {
		return FileID{}
	}
	return fileID(&st)
}

// Rules parses the copy's text, its lines named as Source's; a text that
// does not parse, or holds another number of rules than N, is an error.
func (c *Copy) Rules() ([]rules.Rule, error) {
	rs, err := rules.Parse(bytes.NewReader(c.Text), c.Source)
	if err != nil {
		return nil, err
	}
	if len(rs) != c.N {
		return nil, fmt.Errorf("%d rules where the header says %d", len(rs), c.N)
	}
	return rs, nil
}

// Encode writes text, the content of the rules file source holding n
// rules, as a copy to w.
func Encode(w io.Writer, source string, text []byte, n int) error {
	var b bytes.Buffer
	b.Grow(len(text) + len(source) + 64)
	fmt.Fprintf(&b, "%s%d %d %s\n", magic, n, len(text), strconv.Quote(source))
	b.Write(text)
	b.WriteByte('\n')
	fmt.Fprintf(&b, "end %08x\n", crc32.Checksum(b.Bytes(), castagnoli))
	_, err := w.Write(b.Bytes())
	return err
}

// Decode reads a copy's content: whole (its checksum) and of version 1.
// Its text is a part of buf, not parsed yet (Rules does): a writer that
// finds the rules file equal to it parses the file alone.
func Decode(buf []byte) (*Copy, error) {
	const tail = len("\nend 01234567\n")
	if len(buf) < tail || !bytes.HasPrefix(buf[len(buf)-tail:], []byte("\nend ")) || buf[len(buf)-1] != '\n' {
		return nil, errors.New("no end line")
	}
	body := buf[:len(buf)-tail+1]
	if fmt.Sprintf("%08x", crc32.Checksum(body, castagnoli)) != string(buf[len(buf)-9:len(buf)-1]) {
		return nil, errors.New("checksum mismatch")
	}
	head, text, ok := bytes.Cut(body, []byte("\n"))
	if !ok || !bytes.HasPrefix(head, []byte(magic)) {
		return nil, errors.New("not a version 1 copy of the rules")
	}
	f := strings.SplitN(string(head[len(magic):]), " ", 3)
	if len(f) != 3 {
		return nil, errors.New("bad header")
	}
	n, err1 := strconv.Atoi(f[0])
	size, err2 := strconv.Atoi(f[1])
	source, err3 := strconv.Unquote(f[2])
	if err1 != nil || err2 != nil || err3 != nil || n < 0 || size < 0 {
		return nil, errors.New("bad header")
	}
	if size != len(text)-1 {
		return nil, fmt.Errorf("%d bytes of text where the header says %d", len(text)-1, size)
	}
	return &Copy{Source: source, Text: text[:size], N: n}, nil
}

// Read reads the copy at path. The file must be a regular file owned by
// root or by this process's user and writable by no one else; anything
// else, and a damaged file, is an error wrapping ErrUnusable. A missing
// file is an error wrapping fs.ErrNotExist.
func Read(path string) (*Copy, error) {
	buf, st, err := regular.ReadOwned(path, maxCopy)
	if errors.Is(err, regular.ErrUntrusted) {
		return nil, fmt.Errorf("%w: %v", ErrUnusable, err)
	}
	if err != nil {
		return nil, err
	}
	c, err := Decode(buf)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrUnusable, path, err)
	}
	c.ID = fileID(st)
	return c, nil
}

// Write publishes text, the rules file source holding n rules, as the
// copy at path: temp file, fsync, rename, mode 0640. A file there that is
// not to be believed is removed first (its mode would carry over).
func Write(path, source string, text []byte, n int) error {
	if _, err := atomic.Clean(path); err != nil {
		return err
	}
	if _, err := Read(path); errors.Is(err, ErrUnusable) {
		if err := os.Remove(path); err != nil {
			return err
		}
	}
	return atomic.WriteFile(path, 0o640, func(f *os.File) error {
		return Encode(f, source, text, n)
	})
}

// Result is the static rules a writer publishes.
type Result struct {
	Rules []rules.Rule // the rules to publish
	// Held: the rules file (File rules) is held back; Rules are the
	// last confirmed ones (Last rules).
	Held       bool
	File, Last int
	// Matched: the file is what the copy on disk says was confirmed,
	// where this Guard last took other rules (relayctl rebuild
	// confirmed it in another process).
	Matched bool
	// Warnings are lines to log: a copy that is not believed, or one
	// that could not be saved.
	Warnings []string
	// First: there was no copy to compare with (the first run after an
	// upgrade from a release that kept none); the file was taken as it
	// is.
	First bool
	// CopyID is the copy as this read found or saved it (zero: none): a
	// copy with another FileID since is another writer's.
	CopyID FileID
}

// Guard applies the hold-back to each read of one rules file. It keeps
// the last confirmed rules in memory (for a long-running writer whose
// copy cannot be read or saved) and, with a Path, on disk, shared with
// every other writer. A Guard is not safe for concurrent use; writers in
// several processes serialize on the CDB's lock.
type Guard struct {
	Path   string // the copy (CDB.rules); "" keeps it in memory alone
	Source string // the rules file
	// ReadOnly: never save the copy (a reader such as relayctl list).
	ReadOnly bool

	last *memo // the last rules this Guard took or held, nil before the first
}

// memo is what a Guard remembers of the last confirmed rules.
type memo struct {
	sum   [sha256.Size]byte // of their text
	rules []rules.Rule
}

// base is the last confirmed rules to compare a read with: n of them,
// parsed only if the read is held back.
type base struct {
	sum   [sha256.Size]byte
	n     int
	rules func() ([]rules.Rule, error)
}

// Apply takes text, the rules file's content, and rs, its parse, and
// returns the rules to publish. With confirm (relayctl rebuild, SIGHUP)
// the file is taken as it is. Otherwise, when it shrank (Shrunk) against
// the copy on disk (or, failing a copy, the last rules this Guard took),
// the last confirmed rules are returned instead, Held. Rules taken are
// saved as the copy (unless ReadOnly); a failure to save is an error with
// confirm (a confirmation that is not saved would be undone by the next
// automatic writer), a warning otherwise.
func (g *Guard) Apply(text []byte, rs []rules.Rule, confirm bool) (Result, error) {
	var res Result
	sum := sha256.Sum256(text)
	var disk *Copy
	if g.Path != "" {
		c, err := Read(g.Path)
		if c != nil {
			res.CopyID = c.ID
		}
		switch {
		case err == nil && filepath.Clean(c.Source) != filepath.Clean(g.Source):
			res.Warnings = append(res.Warnings, fmt.Sprintf("%s is a copy of %s, not of %s: not compared with", g.Path, c.Source, g.Source))
		case err == nil:
			disk = c
		case errors.Is(err, os.ErrNotExist):
		case errors.Is(err, os.ErrPermission) && g.ReadOnly:
			// Not root (relayctl list by a poprelay member).
		default:
			res.Warnings = append(res.Warnings, fmt.Sprintf("%v; not compared with", err))
		}
	}
	// The rules remembered are handed back as the very same slice while
	// they are the same text: the watcher's merge then classifies no
	// grant again.
	remembered := func(m *memo) *base {
		return &base{m.sum, len(m.rules), func() ([]rules.Rule, error) { return m.rules, nil }}
	}
	var b *base
	switch {
	case disk != nil:
		b = &base{sha256.Sum256(disk.Text), disk.N, disk.Rules}
		if g.last != nil && g.last.sum == b.sum {
			b = remembered(g.last)
		}
	case g.last != nil:
		b = remembered(g.last)
	}
	res.File = len(rs)
	if b != nil {
		res.Last = b.n
	}
	if !confirm && b != nil && b.sum != sum && Shrunk(b.n, len(rs)) {
		held, err := b.rules()
		if err == nil {
			res.Held = true
			res.Rules = held
			g.last = &memo{b.sum, held}
			return res, nil
		}
		// A copy whose checksum holds but whose text no longer parses
		// (a later release's stricter parser): not to be believed.
		res.Warnings = append(res.Warnings, fmt.Sprintf("%v: %s: %v; not compared with", ErrUnusable, g.Path, err))
		disk, b = nil, nil
		if g.last != nil {
			b = remembered(g.last)
		}
		if b != nil && b.sum != sum && Shrunk(b.n, len(rs)) {
			res.Held, res.Rules, res.Last = true, g.last.rules, b.n
			return res, nil
		}
	}
	res.First = b == nil
	res.Matched = !confirm && disk != nil && g.last != nil && g.last.sum != sum && b.sum == sum
	if g.last == nil || g.last.sum != sum {
		g.last = &memo{sum, rs}
	}
	res.Rules = g.last.rules
	if g.Path == "" || g.ReadOnly || (disk != nil && bytes.Equal(disk.Text, text)) {
		return res, nil
	}
	err := Write(g.Path, g.Source, text, len(rs))
	res.CopyID = StatID(g.Path)
	if err != nil {
		if confirm {
			return res, err
		}
		res.Warnings = append(res.Warnings, fmt.Sprintf("unable to save %s (the rules as confirmed): %v", g.Path, err))
	}
	return res, nil
}
