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

// Writer streams records to an io.WriteSeeker and writes the hash tables and
// the header on Finish. It keeps 8 bytes per record in memory; keys and
// values go straight to the output.
type Writer struct {
	w     io.WriteSeeker
	buf   *bufio.Writer
	pos   uint64 // offset of the next record
	slots []slot
	count [256]uint32
	err   error // sticky: once set, every later call returns it
	done  bool
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
	if cw.err != nil {
		return cw.err
	}
	if cw.done {
		return errors.New("cdb: Add after Finish")
	}
	n := 8 + uint64(len(key)) + uint64(len(value))
	// The record, and one more hash-table pair for it in the worst case,
	// must stay addressable.
	if cw.pos+n+16*uint64(len(cw.slots)+1) > limit {
		cw.err = ErrTooBig
		return cw.err
	}
	var hdr [8]byte
	binary.LittleEndian.PutUint32(hdr[0:], uint32(len(key)))
	binary.LittleEndian.PutUint32(hdr[4:], uint32(len(value)))
	if _, err := cw.buf.Write(hdr[:]); err != nil {
		cw.err = err
		return err
	}
	if _, err := cw.buf.Write(key); err != nil {
		cw.err = err
		return err
	}
	if _, err := cw.buf.Write(value); err != nil {
		cw.err = err
		return err
	}
	h := Hash(key)
	cw.slots = append(cw.slots, slot{h, uint32(cw.pos)})
	cw.count[h&255]++
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

	// Group the records by table, keeping insertion order inside a table,
	// as cdb_make's split does.
	var start [256]uint32
	var sum uint32
	for i := range 256 {
		start[i] = sum
		sum += cw.count[i]
	}
	split := make([]slot, len(cw.slots))
	next := start
	for _, s := range cw.slots {
		t := s.h & 255
		split[next[t]] = s
		next[t]++
	}
	cw.slots = nil

	var header [headerSize]byte
	var table []slot
	var pair [8]byte
	for i := range 256 {
		n := cw.count[i]
		slots := 2 * n
		binary.LittleEndian.PutUint32(header[8*i:], uint32(cw.pos))
		binary.LittleEndian.PutUint32(header[8*i+4:], slots)
		if cw.pos+8*uint64(slots) > limit {
			cw.err = ErrTooBig
			return cw.err
		}
		if uint32(cap(table)) < slots {
			table = make([]slot, slots)
		}
		table = table[:slots]
		clear(table)
		for _, s := range split[start[i] : start[i]+n] {
			where := (s.h >> 8) % slots
			for table[where].pos != 0 {
				where++
				if where == slots {
					where = 0
				}
			}
			table[where] = s
		}
		for _, s := range table {
			binary.LittleEndian.PutUint32(pair[0:], s.h)
			binary.LittleEndian.PutUint32(pair[4:], s.pos)
			if _, err := cw.buf.Write(pair[:]); err != nil {
				cw.err = err
				return err
			}
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
