// Package cdb reads and writes D. J. Bernstein's constant database format,
// the format of tcprules' and tcpserver's rules.cdb.
//
// The Writer produces files byte for byte identical to djb's cdb_make (and so
// to tcprules and tinycdb's "cdb -c") for the same records in the same order:
// a 2048-byte header of 256 (position, slot count) pairs, the records in
// insertion order, then 256 open-addressing hash tables of twice as many slots
// as they have entries. Duplicate keys are kept; lookups return the first.
//
// The Reader never trusts the file: every offset is checked against the file
// size, so a truncated or corrupt database yields ErrCorrupt, never a panic
// or a read out of bounds.
package cdb

import (
	"errors"
)

// HeaderSize is the size of the fixed table of 256 (pos, len) pairs at
// the start of a database.
const HeaderSize = 2048

const headerSize = HeaderSize

// maxSize is the largest file the format can address (32-bit offsets).
const maxSize = 1<<32 - 1

// limit is maxSize; tests lower it to exercise ErrTooBig cheaply.
var limit uint64 = maxSize

var (
	// ErrCorrupt reports a database whose offsets or lengths do not fit in
	// the file.
	ErrCorrupt = errors.New("cdb: corrupt file")
	// ErrTooBig reports a database that would exceed the 4 GiB limit of
	// the format's 32-bit offsets.
	ErrTooBig = errors.New("cdb: database would exceed 4 GiB")
)

// Hash is djb's cdb hash: h = 5381; h = ((h << 5) + h) ^ c.
func Hash(key []byte) uint32 {
	h := uint32(5381)
	for _, c := range key {
		h = ((h << 5) + h) ^ uint32(c)
	}
	return h
}
