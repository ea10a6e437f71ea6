package cdb

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"
)

// slot is what the hash tables hold for one record: its hash and position.
type slot struct {
	h, pos uint32
}

// chunks is one table's slots in insertion order, in chunks that are never
// copied or reallocated (as cdb_make's hplist), so memory stays close to 8
// bytes per record with no garbage to collect.
type chunks struct {
	full [][]slot
	last []slot
	n    int
}

func (c *chunks) add(s slot) {
	if len(c.last) == cap(c.last) {
		if c.last != nil {
			c.full = append(c.full, c.last)
		}
		c.last = make([]slot, 0, min(max(16, 2*cap(c.last)), 1024))
	}
	c.last = append(c.last, s)
	c.n++
}

// Writer streams records to an io.WriteSeeker and writes the hash tables and
// the header on Finish. It keeps 8 bytes per record in memory, already
// grouped by hash table, so Finish needs no second copy; keys and values go
// straight to the output.
type Writer struct {
	w      io.WriteSeeker
	buf    *bufio.Writer
	pos    uint64 // offset of the next record
	tables [256]chunks
	n      int   // records added
	err    error // sticky: once set, every later call returns it
	done   bool
	hdr    [8]byte // Add's record header, here so it is not allocated per call
}

// NewWriter returns a Writer that writes a database to w, starting at its
// current offset, which must be 0 (the header is written there on Finish).
func NewWriter(w io.WriteSeeker) *Writer {
	cw := &Writer{w: w, buf: bufio.NewWriterSize(w, 64<<10), pos: headerSize}
	var zero [headerSize]byte
	_, cw.err = cw.buf.Write(zero[:])
	return cw
}

// Add appends one record. Keys may repeat; readers find the first.
func (cw *Writer) Add(key, value []byte) error {
	return cw.AddHashed(key, value, Hash(key))
}

// AddHashed is Add for a key whose Hash is h, computed beforehand.
func (cw *Writer) AddHashed(key, value []byte, h uint32) error {
	if cw.err != nil {
		return cw.err
	}
	if cw.done {
		return errors.New("cdb: Add after Finish")
	}
	n := 8 + uint64(len(key)) + uint64(len(value))
	// The record, and one more hash-table pair for it in the worst case,
	// must stay addressable.
	if cw.pos+n+16*uint64(cw.n+1) > limit {
		cw.err = ErrTooBig
		return cw.err
	}
	// One write per record: header, key and value appended straight
	// into bufio's free space when they fit.
	b := cw.buf.AvailableBuffer()
	if int(n) > cap(b) {
		b = cw.hdr[:0]
	}
	b = binary.LittleEndian.AppendUint32(b, uint32(len(key)))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(value)))
	if len(b) == 8 && &b[0] == &cw.hdr[0] {
		// Too big for the buffer's free space: three writes.
		for _, p := range [][]byte{b, key, value} {
			if _, err := cw.buf.Write(p); err != nil {
				cw.err = err
				return err
			}
		}
	} else {
		b = append(append(b, key...), value...)
		if _, err := cw.buf.Write(b); err != nil {
			cw.err = err
			return err
		}
	}
	cw.tables[h&255].add(slot{h, uint32(cw.pos)})
	cw.n++
	cw.pos += n
	return nil
}

// Finish writes the hash tables and the header and flushes everything to
// the underlying writer. It does not sync or close it.
func (cw *Writer) Finish() error {
	if cw.err != nil {
		return cw.err
	}
	if cw.done {
		return errors.New("cdb: Finish called twice")
	}
	cw.done = true

	// Each table holds its records in insertion order, as cdb_make's
	// split does.
	var header [headerSize]byte
	var table []slot
	var out []byte
	for i := range 256 {
		n := uint32(cw.tables[i].n)
		slots := 2 * n
		binary.LittleEndian.PutUint32(header[8*i:], uint32(cw.pos))
		binary.LittleEndian.PutUint32(header[8*i+4:], slots)
		if cw.pos+8*uint64(slots) > limit {
			cw.err = ErrTooBig
			return cw.err
		}
		if uint32(cap(table)) < slots {
			table = make([]slot, slots)
			out = make([]byte, 8*slots)
		}
		table = table[:slots]
		clear(table)
		c := &cw.tables[i]
		for _, chunk := range append(c.full, c.last) {
			for _, s := range chunk {
				place(table, s)
			}
		}
		*c = chunks{}
		b := encode(out[:0], table)
		if _, err := cw.buf.Write(b); err != nil {
			cw.err = err
			return err
		}
		cw.pos += 8 * uint64(slots)
	}
	if err := cw.buf.Flush(); err != nil {
		cw.err = err
		return err
	}
	if _, err := cw.w.Seek(0, io.SeekStart); err != nil {
		cw.err = err
		return err
	}
	if _, err := cw.w.Write(header[:]); err != nil {
		cw.err = err
		return err
	}
	return nil
}

// place puts s in table (of twice as many slots as it will hold, pos 0
// meaning free) at its hash's slot or the next free one after, as
// cdb_make does.
func place(table []slot, s slot) {
	n := uint32(len(table))
	where := (s.h >> 8) % n
	for table[where].pos != 0 {
		where++
		if where == n {
			where = 0
		}
	}
	table[where] = s
}

// encode appends table's slots to b as the file holds them.
func encode(b []byte, table []slot) []byte {
	for _, s := range table {
		b = binary.LittleEndian.AppendUint32(b, s.h)
		b = binary.LittleEndian.AppendUint32(b, s.pos)
	}
	return b
}

// Slot is one record for AppendTables: the Hash of its key and its offset
// in the database.
type Slot struct{ Hash, Pos uint32 }

// Tables makes a database's hash tables in memory for a writer that keeps
// the whole database there and lays its records out itself (merge.Set,
// which copies the runs of records that did not change from its last
// database). The zero value is ready; it keeps its buffers for the next
// use.
type Tables struct {
	grouped []slot
	table   []slot
}

// Append completes db, which holds headerSize bytes for the header, then
// the records, as a database: it appends the hash tables of the records
// slots describes, in the order they were written, and fills in the
// header. The result is byte for byte what a Writer makes of the same
// records added in the same order.
func (t *Tables) Append(db []byte, slots []Slot) ([]byte, error) {
	if len(db) < headerSize {
		return db, errors.New("cdb: no room for the header")
	}
	if uint64(len(db))+16*uint64(len(slots)) > limit {
		return db, ErrTooBig
	}
	// The slots grouped by table, each group in the order written (a
	// counting sort).
	var start [257]uint32
	for _, s := range slots {
		start[s.Hash&255+1]++
	}
	for i := range 256 {
		start[i+1] += start[i]
	}
	if cap(t.grouped) < len(slots) {
		t.grouped = make([]slot, len(slots))
	}
	g := t.grouped[:len(slots)]
	next := start
	for _, s := range slots {
		k := s.Hash & 255
		g[next[k]] = slot{s.Hash, s.Pos}
		next[k]++
	}
	pos := uint32(len(db))
	for i := range 256 {
		n := 2 * (start[i+1] - start[i])
		binary.LittleEndian.PutUint32(db[8*i:], pos)
		binary.LittleEndian.PutUint32(db[8*i+4:], n)
		if uint32(cap(t.table)) < n {
			t.table = make([]slot, n)
		}
		table := t.table[:n]
		clear(table)
		for _, s := range g[start[i]:start[i+1]] {
			place(table, s)
		}
		db = encode(db, table)
		pos += 8 * n
	}
	return db, nil
}
