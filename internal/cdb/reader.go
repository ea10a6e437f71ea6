package cdb

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/poprelay/poprelay/internal/regular"
)

// Reader looks records up in a database. It reads through an io.ReaderAt,
// so a lookup touches only the few bytes it needs, as tcpserver does.
type Reader struct {
	r      io.ReaderAt
	size   uint64
	header [headerSize]byte
	closer io.Closer
}

// New returns a Reader for the database of the given size read through r.
func New(r io.ReaderAt, size int64) (*Reader, error) {
	if size < headerSize || uint64(size) > maxSize {
		return nil, fmt.Errorf("%w: size %d", ErrCorrupt, size)
	}
	cr := &Reader{r: r, size: uint64(size)}
	if _, err := r.ReadAt(cr.header[:], 0); err != nil {
		return nil, fmt.Errorf("cdb: reading header: %w", err)
	}
	for i := range 256 {
		pos, slots := cr.table(uint32(i))
		if pos < headerSize || pos+8*slots > cr.size {
			return nil, fmt.Errorf("%w: hash table %d out of bounds", ErrCorrupt, i)
		}
	}
	return cr, nil
}

// Bytes returns a Reader over an in-memory database.
func Bytes(b []byte) (*Reader, error) {
	return New(bytes.NewReader(b), int64(len(b)))
}

// Open opens the database file at path. Close it when done. A FIFO, a
// directory or a device is ErrCorrupt, never a read that blocks.
func Open(path string) (*Reader, error) {
	f, st, err := regular.Open(path)
	if errors.Is(err, regular.ErrNotRegular) {
		return nil, fmt.Errorf("%w: %s is not a regular file", ErrCorrupt, path)
	}
	if err != nil {
		return nil, err
	}
	cr, err := New(f, st.Size())
	if err != nil {
		f.Close()
		return nil, err
	}
	cr.closer = f
	return cr, nil
}

// Close releases the file opened by Open. It is a no-op otherwise.
func (cr *Reader) Close() error {
	if cr.closer == nil {
		return nil
	}
	return cr.closer.Close()
}

// table returns the position and slot count of hash table i.
func (cr *Reader) table(i uint32) (pos, slots uint64) {
	return uint64(binary.LittleEndian.Uint32(cr.header[8*i:])),
		uint64(binary.LittleEndian.Uint32(cr.header[8*i+4:]))
}

func (cr *Reader) readAt(b []byte, off uint64) error {
	if off+uint64(len(b)) > cr.size {
		return fmt.Errorf("%w: read of %d bytes at %d beyond end", ErrCorrupt, len(b), off)
	}
	if _, err := cr.r.ReadAt(b, int64(off)); err != nil {
		if err == io.EOF {
			return fmt.Errorf("%w: unexpected end of file", ErrCorrupt)
		}
		return err
	}
	return nil
}

// record reads the key and value lengths of the record at pos.
func (cr *Reader) record(pos uint64) (klen, dlen uint64, err error) {
	var hdr [8]byte
	if err := cr.readAt(hdr[:], pos); err != nil {
		return 0, 0, err
	}
	klen = uint64(binary.LittleEndian.Uint32(hdr[0:]))
	dlen = uint64(binary.LittleEndian.Uint32(hdr[4:]))
	if pos+8+klen+dlen > cr.size {
		return 0, 0, fmt.Errorf("%w: record at %d runs past end", ErrCorrupt, pos)
	}
	return klen, dlen, nil
}

// Find returns the value of the first record with the given key. ok is
// false if there is none.
func (cr *Reader) Find(key []byte) (value []byte, ok bool, err error) {
	err = cr.each(key, func(v []byte) bool {
		value, ok = v, true
		return false
	})
	return value, ok, err
}

// FindAll returns the values of every record with the given key, in file
// order.
func (cr *Reader) FindAll(key []byte) ([][]byte, error) {
	var all [][]byte
	err := cr.each(key, func(v []byte) bool {
		all = append(all, v)
		return true
	})
	return all, err
}

// each calls fn with the value of each record for key, in file order,
// until fn returns false.
func (cr *Reader) each(key []byte, fn func([]byte) bool) error {
	h := Hash(key)
	tpos, slots := cr.table(h & 255)
	if slots == 0 {
		return nil
	}
	start := uint64(h>>8) % slots
	var pair [8]byte
	kbuf := make([]byte, len(key))
	for i := range slots {
		s := (start + i) % slots
		if err := cr.readAt(pair[:], tpos+8*s); err != nil {
			return err
		}
		sh := binary.LittleEndian.Uint32(pair[0:])
		pos := uint64(binary.LittleEndian.Uint32(pair[4:]))
		if pos == 0 {
			return nil
		}
		if sh != h {
			continue
		}
		klen, dlen, err := cr.record(pos)
		if err != nil {
			return err
		}
		if klen != uint64(len(key)) {
			continue
		}
		if err := cr.readAt(kbuf, pos+8); err != nil {
			return err
		}
		if !bytes.Equal(kbuf, key) {
			continue
		}
		v := make([]byte, dlen)
		if err := cr.readAt(v, pos+8+klen); err != nil {
			return err
		}
		if !fn(v) {
			return nil
		}
	}
	return nil
}

// ForEach calls fn for every record in file order (the order they were
// added), stopping at the first error fn returns. The slices are fresh for
// each call.
func (cr *Reader) ForEach(fn func(key, value []byte) error) error {
	end, _ := cr.table(0)
	pos := uint64(headerSize)
	for pos < end {
		klen, dlen, err := cr.record(pos)
		if err != nil {
			return err
		}
		if pos+8+klen+dlen > end {
			return fmt.Errorf("%w: record at %d runs into the hash tables", ErrCorrupt, pos)
		}
		kv := make([]byte, klen+dlen)
		if err := cr.readAt(kv, pos+8); err != nil {
			return err
		}
		if err := fn(kv[:klen:klen], kv[klen:]); err != nil {
			return err
		}
		pos += 8 + klen + dlen
	}
	return nil
}
