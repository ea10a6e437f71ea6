package rules

import (
	"bufio"
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/poprelay/poprelay/internal/cdb"
	"github.com/poprelay/poprelay/internal/cdbtest"
)

// compileBytes compiles rs to a CDB and returns its bytes.
func compileBytes(t testing.TB, rs []Rule) []byte {
	t.Helper()
	var f cdbtest.File
	w := cdb.NewWriter(&f)
	if err := Compile(w, rs); err != nil {
		t.Fatal(err)
	}
	if err := w.Finish(); err != nil {
		t.Fatal(err)
	}
	return f.Bytes()
}

// buildBytes streams input through Build and returns the CDB bytes.
func buildBytes(t testing.TB, input []byte) ([]byte, int, error) {
	t.Helper()
	var f cdbtest.File
	w := cdb.NewWriter(&f)
	n, err := Build(w, bytes.NewReader(input), "rules")
	if err != nil {
		return nil, n, err
	}
	if err := w.Finish(); err != nil {
		t.Fatal(err)
	}
	return f.Bytes(), n, nil
}

// cdbDump renders a database as tinycdb's "cdb -d" does.
func cdbDump(t testing.TB, db []byte) []byte {
	t.Helper()
	r, err := cdb.Bytes(db)
	if err != nil {
		t.Fatal(err)
	}
	return cdbtest.Dump(t, r)
}

// TestVectors runs every reference vector through Parse+Compile and Build:
// same outcome, same error line, byte-identical CDB and dump.
func TestVectors(t *testing.T) {
	for _, dir := range cdbtest.Vectors(t) {
		t.Run(cdbtest.Name(dir), func(t *testing.T) {
			input := cdbtest.Read(t, filepath.Join(dir, "rules"))
			exit := strings.TrimSpace(string(cdbtest.Read(t, cdbtest.Expect(dir, "exit"))))
			stderr := string(cdbtest.Read(t, cdbtest.Expect(dir, "stderr")))
			rs, err := Parse(bytes.NewReader(input), "rules")
			built, n, berr := buildBytes(t, input)
			switch exit {
			case "100":
				var pe *ParseError
				if !errors.As(err, &pe) {
					t.Fatalf("Parse err = %v, want a *ParseError", err)
				}
				if got := "tcprules: fatal: unable to parse this line: " + pe.Text + "\n"; got != stderr {
					t.Errorf("message %q, want %q", got, stderr)
				}
				var be *ParseError
				if !errors.As(berr, &be) || *be != *pe {
					t.Errorf("Build err = %v, Parse err = %v", berr, err)
				}
			case "0":
				if err != nil || berr != nil {
					t.Fatalf("Parse: %v; Build: %v", err, berr)
				}
				want := cdbtest.Read(t, cdbtest.Expect(dir, "cdb"))
				got := compileBytes(t, rs)
				if !bytes.Equal(got, want) {
					t.Errorf("Compile: CDB differs from %s\n got %q\nwant %q", cdbtest.Expect(dir, "cdb"), cdbDump(t, got), cdbDump(t, want))
				}
				if !bytes.Equal(built, want) {
					t.Errorf("Build: CDB differs from the reference")
				}
				if d, wd := cdbDump(t, got), cdbtest.Read(t, cdbtest.Expect(dir, "dump")); !bytes.Equal(d, wd) {
					t.Errorf("dump\n%q\nwant\n%q", d, wd)
				}
				keys := 0
				for _, r := range rs {
					keys += len(r.Keys)
				}
				if n != keys {
					t.Errorf("Build added %d records, rules have %d keys", n, keys)
				}
			default:
				t.Fatalf("unknown expected exit %q", exit)
			}
		})
	}
}

// TestLookupTSV decides every row of lookup.tsv and lookup-ipv6.tsv
// against the reference expect.cdb, through the cdb reader and through an
// Index of the parsed rules.
func TestLookupTSV(t *testing.T) {
	shared := cdbtest.Dir(t)
	for _, tc := range []struct{ tsv, dir string }{
		{"lookup.tsv", "vectors"},
		{"lookup-ipv6.tsv", "vectors-ipv6"},
	} {
		f, err := os.Open(filepath.Join(shared, tc.tsv))
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		sc.Scan() // header
		rows := 0
		for sc.Scan() {
			c := strings.Split(sc.Text(), "\t")
			if len(c) != 8 {
				t.Fatalf("%s: bad row %q", tc.tsv, sc.Text())
			}
			rows++
			dir := filepath.Join(shared, tc.dir, c[0])
			db, err := cdb.Bytes(cdbtest.Read(t, cdbtest.Expect(dir, "cdb")))
			if err != nil {
				t.Fatal(err)
			}
			rs, err := Parse(bytes.NewReader(cdbtest.Read(t, filepath.Join(dir, "rules"))), "rules")
			if err != nil {
				t.Fatal(err)
			}
			q := Query{IP: c[1]}
			if c[2] != "" {
				q.HasHost, q.Host = true, strings.Trim(c[2], `"`)
			}
			if c[3] != "" {
				q.HasInfo, q.Info = true, strings.Trim(c[3], `"`)
			}
			for name, finder := range map[string]Finder{"cdb": db, "index": NewIndex(rs)} {
				d, err := Lookup(finder, q)
				if err != nil {
					t.Fatal(err)
				}
				decision := "allow"
				if d.Deny {
					decision = "deny"
				}
				key := "(none)"
				if d.Matched {
					key = d.Key
					if key == "" {
						key = `""`
					}
				}
				var env []string
				for _, v := range d.Environ() {
					env = append(env, v.Name+"="+v.Value)
				}
				if decision != c[4] || key != c[6] || (!d.Deny && strings.Join(env, " ") != c[5]) {
					t.Errorf("%s %s via %s: got %s %q %s, want %s %q %s", tc.tsv, sc.Text(), name,
						decision, strings.Join(env, " "), key, c[4], c[5], c[6])
				}
			}
		}
		f.Close()
		if rows == 0 {
			t.Errorf("%s: no rows", tc.tsv)
		}
	}
}
