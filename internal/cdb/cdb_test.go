package cdb

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/poprelay/poprelay/internal/cdbtest"
)

type rec struct{ k, v string }

// build writes recs to a fresh database file and returns its bytes.
func build(t testing.TB, recs []rec) []byte {
	t.Helper()
	path := filepath.Join(t.TempDir(), "x.cdb")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w := NewWriter(f)
	for _, r := range recs {
		if err := w.Add([]byte(r.k), []byte(r.v)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Finish(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// parseDump reads the "cdb -d" format: +klen,dlen:key->data\n ... \n
func parseDump(b []byte) ([]rec, error) {
	var recs []rec
	for {
		if len(b) == 1 && b[0] == '\n' {
			return recs, nil
		}
		if len(b) == 0 || b[0] != '+' {
			return nil, fmt.Errorf("bad dump at %q", b)
		}
		comma := bytes.IndexByte(b, ',')
		colon := bytes.IndexByte(b, ':')
		if comma < 0 || colon < comma {
			return nil, fmt.Errorf("bad dump header")
		}
		kl, err1 := strconv.Atoi(string(b[1:comma]))
		dl, err2 := strconv.Atoi(string(b[comma+1 : colon]))
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("bad dump lengths")
		}
		b = b[colon+1:]
		if len(b) < kl+2+dl+1 {
			return nil, fmt.Errorf("short dump")
		}
		recs = append(recs, rec{string(b[:kl]), string(b[kl+2 : kl+2+dl])})
		b = b[kl+2+dl+1:]
	}
}

// TestVectors rebuilds every expect.cdb of the shared tcprules vectors from
// its dump and requires identical bytes, then reads it back.
func TestVectors(t *testing.T) {
	var cdbs []string
	for _, dir := range cdbtest.Vectors(t) {
		m, _ := filepath.Glob(filepath.Join(dir, "expect*.cdb"))
		cdbs = append(cdbs, m...)
	}
	for _, path := range cdbs {
		want := cdbtest.Read(t, path)
		dumpPath := path[:len(path)-len(".cdb")] + ".dump"
		d := cdbtest.Read(t, dumpPath)
		recs, err := parseDump(d)
		if err != nil {
			t.Fatalf("%s: %v", dumpPath, err)
		}
		got := build(t, recs)
		if !bytes.Equal(got, want) {
			t.Errorf("%s: bytes differ from the reference", path)
		}
		r, err := Bytes(want)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if g := cdbtest.Dump(t, r); !bytes.Equal(g, d) {
			t.Errorf("%s: dump\n%q\nwant\n%q", path, g, d)
		}
		for _, rc := range recs {
			v, ok, err := r.Find([]byte(rc.k))
			if err != nil || !ok {
				t.Errorf("%s: Find(%q) = %v, %v", path, rc.k, ok, err)
				continue
			}
			// The first record with that key.
			for _, first := range recs {
				if first.k == rc.k {
					if string(v) != first.v {
						t.Errorf("%s: Find(%q) = %q, want %q", path, rc.k, v, first.v)
					}
					break
				}
			}
		}
	}
}

func TestFind(t *testing.T) {
	recs := []rec{
		{"a", "1"}, {"b", "2"}, {"a", "3"}, {"", "empty"}, {"long-key", ""},
	}
	r, err := Bytes(build(t, recs))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		key  string
		want []string
	}{
		{"a", []string{"1", "3"}},
		{"b", []string{"2"}},
		{"", []string{"empty"}},
		{"long-key", []string{""}},
		{"c", nil},
		{"long-ke", nil},
	}
	for _, tc := range tests {
		all, err := r.FindAll([]byte(tc.key))
		if err != nil {
			t.Fatal(err)
		}
		if len(all) != len(tc.want) {
			t.Errorf("FindAll(%q) = %q, want %q", tc.key, all, tc.want)
			continue
		}
		for i := range all {
			if string(all[i]) != tc.want[i] {
				t.Errorf("FindAll(%q)[%d] = %q, want %q", tc.key, i, all[i], tc.want[i])
			}
		}
		v, ok, err := r.Find([]byte(tc.key))
		if err != nil || ok != (tc.want != nil) || (ok && string(v) != tc.want[0]) {
			t.Errorf("Find(%q) = %q, %v, %v", tc.key, v, ok, err)
		}
	}
}

func TestEmpty(t *testing.T) {
	b := build(t, nil)
	if len(b) != headerSize {
		t.Fatalf("empty database is %d bytes, want %d", len(b), headerSize)
	}
	r, err := Bytes(b)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok, err := r.Find([]byte("x")); ok || err != nil {
		t.Errorf("Find in empty db = %v, %v", ok, err)
	}
}

func TestOpenFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f.cdb")
	if err := os.WriteFile(path, build(t, []rec{{"k", "v"}}), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if v, ok, err := r.Find([]byte("k")); !ok || err != nil || string(v) != "v" {
		t.Errorf("Find = %q %v %v", v, ok, err)
	}
	if _, err := Open(t.TempDir()); err == nil {
		t.Error("Open of a directory succeeded")
	}
}

// TestCorrupt truncates and garbles a database at every position: the
// reader must report an error or a result, never panic.
func TestCorrupt(t *testing.T) {
	good := build(t, []rec{{"1.2.3.4", "D\x00"}, {"1.2.3.", "+A=b\x00"}, {"", ""}})
	for n := 0; n < len(good); n++ {
		r, err := Bytes(good[:n])
		if n < headerSize {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("truncated to %d: err = %v, want ErrCorrupt", n, err)
			}
			continue
		}
		if err == nil {
			r.Find([]byte("1.2.3.4"))
			r.ForEach(func(k, v []byte) error { return nil })
		}
	}
	rnd := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		b := bytes.Clone(good)
		for range 1 + rnd.IntN(4) {
			b[rnd.IntN(len(b))] = byte(rnd.Uint32())
		}
		if r, err := Bytes(b); err == nil {
			r.Find([]byte("1.2.3.4"))
			r.FindAll([]byte(""))
			r.ForEach(func(k, v []byte) error { return nil })
		}
	}
}

// TestAgainstTinycdb compares the writer with tinycdb's "cdb -c" on random
// records, including duplicate keys and binary data.
func TestAgainstTinycdb(t *testing.T) {
	tool, err := exec.LookPath("cdb")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("tinycdb's cdb is not installed (apt-get install tinycdb)")
		}
		t.Skip("SKIP: tinycdb's cdb not installed; differential test not run")
	}
	rnd := rand.New(rand.NewPCG(7, 11))
	for round := range 20 {
		var recs []rec
		var in bytes.Buffer
		n := rnd.IntN(3000)
		for range n {
			k := make([]byte, rnd.IntN(20))
			for i := range k {
				k[i] = byte(rnd.IntN(256))
			}
			if rnd.IntN(10) == 0 && len(recs) > 0 {
				k = []byte(recs[rnd.IntN(len(recs))].k)
			}
			v := make([]byte, rnd.IntN(40))
			for i := range v {
				v[i] = byte(rnd.IntN(256))
			}
			recs = append(recs, rec{string(k), string(v)})
			fmt.Fprintf(&in, "+%d,%d:%s->%s\n", len(k), len(v), k, v)
		}
		in.WriteByte('\n')
		dir := t.TempDir()
		out := filepath.Join(dir, "ref.cdb")
		cmd := exec.Command(tool, "-c", "-t", out+".tmp", out)
		cmd.Stdin = &in
		if msg, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("cdb -c: %v: %s", err, msg)
		}
		want, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		if got := build(t, recs); !bytes.Equal(got, want) {
			t.Fatalf("round %d (%d records): differs from tinycdb", round, n)
		}
	}
}

func FuzzReader(f *testing.F) {
	f.Add(build(f, []rec{{"1.2.3.4", "D\x00"}, {"", "+RELAYCLIENT=\x00"}}), []byte("1.2.3.4"))
	f.Add(build(f, nil), []byte(""))
	f.Fuzz(func(t *testing.T, db, key []byte) {
		r, err := Bytes(db)
		if err != nil {
			return
		}
		r.Find(key)
		r.FindAll(key)
		r.ForEach(func(k, v []byte) error { return nil })
	})
}

// FuzzRoundTrip writes arbitrary records and requires them back.
func FuzzRoundTrip(f *testing.F) {
	f.Add([]byte("a\x00b\x00a\x00c"))
	f.Fuzz(func(t *testing.T, data []byte) {
		parts := bytes.Split(data, []byte{0})
		var recs []rec
		for i := 0; i+1 < len(parts); i += 2 {
			recs = append(recs, rec{string(parts[i]), string(parts[i+1])})
		}
		db := build(t, recs)
		if mem := buildTables(t, &Tables{}, recs); !bytes.Equal(mem, db) {
			t.Fatalf("Tables.Append made\n%q\nthe Writer\n%q", mem, db)
		}
		r, err := Bytes(db)
		if err != nil {
			t.Fatal(err)
		}
		i := 0
		r.ForEach(func(k, v []byte) error {
			if string(k) != recs[i].k || string(v) != recs[i].v {
				t.Fatalf("record %d = %q,%q want %q,%q", i, k, v, recs[i].k, recs[i].v)
			}
			i++
			return nil
		})
		if i != len(recs) {
			t.Fatalf("ForEach saw %d records, want %d", i, len(recs))
		}
		for _, rc := range recs {
			if _, ok, err := r.Find([]byte(rc.k)); !ok || err != nil {
				t.Fatalf("Find(%q) = %v %v", rc.k, ok, err)
			}
		}
	})
}

// buildTables lays recs out in memory and completes them with t.
func buildTables(tb testing.TB, t *Tables, recs []rec) []byte {
	tb.Helper()
	db := make([]byte, headerSize)
	var slots []Slot
	for _, r := range recs {
		slots = append(slots, Slot{Hash([]byte(r.k)), uint32(len(db))})
		db = binary.LittleEndian.AppendUint32(db, uint32(len(r.k)))
		db = binary.LittleEndian.AppendUint32(db, uint32(len(r.v)))
		db = append(append(db, r.k...), r.v...)
	}
	db, err := t.Append(db, slots)
	if err != nil {
		tb.Fatal(err)
	}
	return db
}

// TestTables: a database laid out in memory and completed by
// Tables.Append is byte for byte the Writer's, with many records per
// table (collisions, wrapping probes), duplicate keys, none at all, and a
// Tables reused from a bigger database.
func TestTables(t *testing.T) {
	var tab Tables
	for _, n := range []int{5000, 0, 1, 300, 17} {
		recs := benchRecs(n)
		for i := 0; i < n; i += 7 {
			recs[i].v = strings.Repeat("v", i%13)
		}
		if n > 2 {
			recs[n-1] = recs[1] // a duplicate key
		}
		if mem, db := buildTables(t, &tab, recs), build(t, recs); !bytes.Equal(mem, db) {
			t.Fatalf("%d records: Tables.Append differs from the Writer", n)
		}
	}
	defer func(l uint64) { limit = l }(limit)
	limit = 4096
	if _, err := tab.Append(make([]byte, headerSize+2040), make([]Slot, 1)); !errors.Is(err, ErrTooBig) {
		t.Errorf("over the limit: err %v, want ErrTooBig", err)
	}
}

func TestTooBig(t *testing.T) {
	// The limit is lowered to 1 MiB, so the check runs without 4 GiB of
	// disk; the real limit is the same code with limit = maxSize.
	defer func(l uint64) { limit = l }(limit)
	limit = 1 << 20
	w := NewWriter(&discard{})
	big := make([]byte, 1<<18)
	var err error
	for range 5 {
		if err = w.Add(nil, big); err != nil {
			break
		}
	}
	if !errors.Is(err, ErrTooBig) {
		t.Fatalf("err = %v, want ErrTooBig", err)
	}
	if err := w.Finish(); !errors.Is(err, ErrTooBig) {
		t.Fatalf("Finish err = %v, want ErrTooBig", err)
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error)               { return len(p), nil }
func (discard) Seek(off int64, whence int) (int64, error) { return 0, nil }

func benchRecs(n int) []rec {
	recs := make([]rec, n)
	for i := range recs {
		recs[i] = rec{fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255), "+RELAYCLIENT=\x00"}
	}
	return recs
}

func BenchmarkWrite100k(b *testing.B) {
	recs := benchRecs(100000)
	path := filepath.Join(b.TempDir(), "b.cdb")
	b.ReportAllocs()
	for b.Loop() {
		f, _ := os.Create(path)
		w := NewWriter(f)
		for _, r := range recs {
			w.Add([]byte(r.k), []byte(r.v))
		}
		if err := w.Finish(); err != nil {
			b.Fatal(err)
		}
		f.Close()
	}
}

func BenchmarkFind(b *testing.B) {
	recs := benchRecs(100000)
	path := filepath.Join(b.TempDir(), "b.cdb")
	os.WriteFile(path, build(b, recs), 0o644)
	r, err := Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	keys := make([][]byte, 1024)
	for i := range keys {
		keys[i] = []byte(recs[i*97%len(recs)].k)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, ok, _ := r.Find(keys[i&1023]); !ok {
			b.Fatal("not found")
		}
		i++
	}
}
