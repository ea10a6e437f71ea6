package merge

import (
	"encoding/binary"
	"math"
	"slices"
	"time"

	"github.com/poprelay/poprelay/internal/cdb"
)

// image is the database a Set last wrote, with where each grant record
// lies in it. The records are the static ones, then the grants' own
// records in address order, then their ::ffff: twins in address order (as
// Write lays them out). Under a login storm a publish changes a few
// records of 100k: the next database is this one with the unchanged runs
// of records copied over in a few large copies, the changed grants'
// records written in between, and the hash tables made again from 8 bytes
// a record, in memory, then written to the file in one write. No grant
// entry is visited but the changed ones.
type image struct {
	ok     bool   // db is the database for the Set's records at time at
	at     int64  // nanos of the time it was made for
	db     []byte // the database
	end    uint32 // where the static records end in db
	recEnd uint32 // where the records end in db (the tables begin)
	// The static records' slots, and the grants' records and twins in
	// file order.
	statics     []cdb.Slot
	prims, twin []irec

	spare             []byte // the last database's memory, for the next
	sprims, stwin     []irec
	newPrims, newTwin []nrec
	slots             []cdb.Slot
	tables            cdb.Tables
}

// irec is a grant's record in the image: the grant's address (the
// records' order), its expiry, its offset in db and its key's hash.
type irec struct {
	hi, lo uint64
	exp    int64
	off    uint32
	h      uint32
}

// nrec is a record to put in the next image.
type nrec struct {
	hi, lo     uint64
	exp        int64
	key, value []byte
	h          uint32
}

var minTime, maxTime = time.Unix(0, math.MinInt64), time.Unix(0, math.MaxInt64)

// nanos is t in nanoseconds since the epoch, clamped to int64: times
// that compare before or after now compare alike.
func nanos(t time.Time) int64 {
	switch {
	case t.Before(minTime):
		return math.MinInt64
	case t.After(maxTime):
		return math.MaxInt64
	}
	return t.UnixNano()
}

// appendRec appends one record as the file holds it.
func appendRec(b, key, value []byte) []byte {
	b = binary.LittleEndian.AppendUint32(b, uint32(len(key)))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(value)))
	return append(append(b, key...), value...)
}

// build makes the image the database for the Set at time now: afresh
// after a change of the rules or options, or for a clock set back (a
// grant expired in the image may be live again); else from the last
// image, taking out the records of expired grants and of the addresses
// touched since, and putting in the touched addresses' records.
func (s *Set) build(now time.Time) error {
	img := &s.img
	t := nanos(now)
	fresh := !img.ok || t < img.at
	db := img.spare[:0]
	img.newPrims, img.newTwin = img.newPrims[:0], img.newTwin[:0]
	var oldPrims, oldTwin []irec
	if fresh {
		db = append(db, make([]byte, cdb.HeaderSize)...)
		img.statics = img.statics[:0]
		for _, r := range s.static {
			img.statics = append(img.statics, cdb.Slot{Hash: r.h, Pos: uint32(len(db))})
			db = appendRec(db, r.key, r.value)
		}
		img.end = uint32(len(db))
		for _, i := range s.order {
			s.newRecs(i, t)
		}
	} else {
		db = append(db, img.db[:img.end]...)
		oldPrims, oldTwin = img.prims, img.twin
		slices.SortFunc(s.touched, func(a, b addr128) int { return a.cmp(b.hi, b.lo) })
		s.touched = slices.Compact(s.touched)
		for _, a := range s.touched {
			p, _ := slices.BinarySearchFunc(s.order, a, func(i int32, a addr128) int {
				return -a.cmp(s.ents[i].hi, s.ents[i].lo)
			})
			for ; p < len(s.order) && a.cmp(s.ents[s.order[p]].hi, s.ents[s.order[p]].lo) == 0; p++ {
				s.newRecs(s.order[p], t)
			}
		}
	}
	// Where the old runs end: the grants' records end where the twins
	// begin.
	primEnd := img.recEnd
	if len(img.twin) > 0 {
		primEnd = img.twin[0].off
	}
	prims, twin := img.sprims[:0], img.stwin[:0]
	db, prims = img.merge(db, oldPrims, primEnd, img.newPrims, s.touched, t, prims)
	db, twin = img.merge(db, oldTwin, img.recEnd, img.newTwin, s.touched, t, twin)
	recEnd := uint32(len(db))

	slots := append(img.slots[:0], img.statics...)
	for _, r := range prims {
		slots = append(slots, cdb.Slot{Hash: r.h, Pos: r.off})
	}
	for _, r := range twin {
		slots = append(slots, cdb.Slot{Hash: r.h, Pos: r.off})
	}
	img.slots = slots
	db, err := img.tables.Append(db, slots)
	if err != nil {
		img.ok = false
		img.spare = db[:0]
		return err
	}
	img.db, img.spare = db, img.db[:0]
	img.prims, img.sprims = prims, img.prims[:0]
	img.twin, img.stwin = twin, img.twin[:0]
	img.recEnd, img.at, img.ok = recEnd, t, true
	s.touched = s.touched[:0]
	return nil
}

// newRecs adds the records of ents[i], unless it expired by t or a cap
// refused it, to those to put in the image.
func (s *Set) newRecs(i int32, t int64) {
	e := &s.ents[i]
	exp := nanos(e.exp)
	if exp <= t || s.meta[i].capped != capNone {
		return
	}
	img := &s.img
	if r := &e.prim; r.key != nil {
		img.newPrims = append(img.newPrims, nrec{e.hi, e.lo, exp, r.key, r.value, r.h})
	}
	if r := &e.twin; r.key != nil {
		img.newTwin = append(img.newTwin, nrec{e.hi, e.lo, exp, r.key, r.value, r.h})
	}
}

// merge appends to db one run of records in address order: those of old
// (a run of the last image, which ends at end in it) that neither
// expired by t nor lie at a touched address, copied in runs, with the
// records of news put in their places. It returns db and the run's new
// records in out.
func (img *image) merge(db []byte, old []irec, end uint32, news []nrec, touched []addr128, t int64, out []irec) ([]byte, []irec) {
	src := img.db
	var from, to uint32 // the run of src still to copy to db
	pos := uint64(len(db))
	j, p := 0, 0
	for k := range old {
		r := &old[k]
		for j < len(news) && (news[j].hi < r.hi || news[j].hi == r.hi && news[j].lo < r.lo) {
			db = append(db, src[from:to]...)
			from, to = 0, 0
			db, out = news[j].put(db, out)
			pos = uint64(len(db))
			j++
		}
		for p < len(touched) && (touched[p].hi < r.hi || touched[p].hi == r.hi && touched[p].lo < r.lo) {
			p++
		}
		if r.exp <= t || p < len(touched) && touched[p].hi == r.hi && touched[p].lo == r.lo {
			continue
		}
		n := end - r.off
		if k+1 < len(old) {
			n = old[k+1].off - r.off
		}
		if r.off != to {
			db = append(db, src[from:to]...)
			from = r.off
		}
		to = r.off + n
		out = append(out, irec{r.hi, r.lo, r.exp, uint32(pos), r.h})
		pos += uint64(n)
	}
	db = append(db, src[from:to]...)
	for ; j < len(news); j++ {
		db, out = news[j].put(db, out)
	}
	return db, out
}

// put appends r to db and its place to out.
func (r *nrec) put(db []byte, out []irec) ([]byte, []irec) {
	out = append(out, irec{r.hi, r.lo, r.exp, uint32(len(db)), r.h})
	return appendRec(db, r.key, r.value), out
}
