package rules

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/poprelay/poprelay/internal/cdb"
	"github.com/poprelay/poprelay/internal/cdbtest"
)

func TestFormatLine(t *testing.T) {
	tests := []struct {
		key, value, want string // want "": ErrNotRule
	}{
		{"1.2.3.4", "", "1.2.3.4:allow"},
		{"1.2.3.4", "D\x00", "1.2.3.4:deny"},
		{"", "+RELAYCLIENT=\x00", `:allow,RELAYCLIENT=""`},
		{"::1", "D\x00+A=1\x00+B=\x00", `::1:deny,A="1",B=""`},
		{"a", `+A=say "hi"` + "\x00", `a:allow,A='say "hi"'`},
		{"a", `+A="'` + "\x00", `a:allow,A=/"'/`},
		{"a", "+A=x:deny,B=1\x00", `a:allow,A="x:deny,B=1"`},
		{"=host", "+=v\x00", `=host:allow,="v"`},
		{":", "", "::allow"},
		{"a:b", "", "a:b:allow"},
		{"  # x", "", "  # x:allow"},
		// Not representable.
		{"1.2.4-5", "", ""},                    // would expand
		{"#x", "", ""},                         // a comment
		{"a\nb", "", ""},                       // two lines
		{"a:allowx", "", ""},                   // splits earlier
		{"a ", "+A=1\x00", "a :allow,A=\"1\""}, // trailing space of the key is fine
		{"a", "D", ""},                         // no NUL
		{"a", "X\x00", ""},                     // unknown entry
		{"a", "+A\x00", ""},                    // no "="
		{"a", "+A=x\x00y\x00", ""},
		{"a", "+A=" + quotes + "\x00", ""}, // no quote left
		{"a", "+A=1\x00D\x00", ""},         // D after settings
	}
	for _, tc := range tests {
		got, err := FormatLine([]byte(tc.key), []byte(tc.value))
		if tc.want == "" {
			if !errors.Is(err, ErrNotRule) {
				t.Errorf("FormatLine(%q, %q) = %q, %v; want ErrNotRule", tc.key, tc.value, got, err)
			}
			continue
		}
		if err != nil || string(got) != tc.want {
			t.Errorf("FormatLine(%q, %q) = %q, %v; want %q", tc.key, tc.value, got, err, tc.want)
		}
	}
}

// FuzzParse: parsing never panics and agrees with Build; every key of the
// compiled database is found with its first rule's value; every record
// that FormatLine renders parses back to the same record.
func FuzzParse(f *testing.F) {
	seeds, _ := filepath.Glob(filepath.Join(cdbtest.Path(), "vectors*", "*", "rules"))
	for _, s := range seeds {
		if b, err := os.ReadFile(s); err == nil {
			f.Add(b)
		}
	}
	for _, s := range []string{
		"1.2.3.4:allow\n::1:deny,A=\"1\"\n1.2.3.1-3:allow,B='x'\n",
		":allow,A=/x/,B=xyx\n# c\n\nno colon\n=.example.com:deny",
		"a:b:allow\n1.2-3.4-5:allow\n2001:db8::1-3:allow\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, input []byte) {
		rs, err := Parse(bytes.NewReader(input), "f")
		built, n, berr := buildBytes(t, input)
		if (err == nil) != (berr == nil) {
			t.Fatalf("Parse: %v; Build: %v", err, berr)
		}
		if err != nil {
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("not a ParseError: %v", err)
			}
			return
		}
		got := compileBytes(t, rs)
		if !bytes.Equal(got, built) {
			t.Fatal("Compile and Build differ")
		}
		db, err := cdb.Bytes(got)
		if err != nil {
			t.Fatal(err)
		}
		ix := NewIndex(rs)
		records := 0
		for _, r := range rs {
			for _, k := range r.Keys {
				records++
				v, ok, err := db.Find([]byte(k))
				if err != nil || !ok {
					t.Fatalf("key %q not found: %v", k, err)
				}
				first, _ := ix.Rule(k)
				if !bytes.Equal(v, first.Value()) {
					t.Fatalf("key %q: %q, want the first rule's %q", k, v, first.Value())
				}
				line, err := FormatLine([]byte(k), r.Value())
				if err != nil {
					// Only keys that would expand, and settings with
					// NULs or with every quote char, have no line.
					if !strings.Contains(k, "-") && !hasNUL(r) {
						t.Fatalf("FormatLine(%q, %q): %v", k, r.Value(), err)
					}
					continue
				}
				back, err := Parse(bytes.NewReader(line), "back")
				if err != nil || len(back) != 1 || len(back[0].Keys) != 1 || back[0].Keys[0] != k ||
					!bytes.Equal(back[0].Value(), r.Value()) {
					t.Fatalf("%q re-parses to %+v, %v; want key %q value %q", line, back, err, k, r.Value())
				}
			}
		}
		if records != n {
			t.Fatalf("Build made %d records, rules %d", n, records)
		}
	})
}

func hasNUL(r Rule) bool {
	for _, v := range r.Env {
		if strings.IndexByte(v.Value, 0) >= 0 || strings.IndexByte(v.Name, 0) >= 0 {
			return true
		}
	}
	return false
}

// FuzzFormatLine: for any record, FormatLine either refuses it or gives a
// line that compiles to exactly that record.
func FuzzFormatLine(f *testing.F) {
	f.Add([]byte("1.2.3.4"), []byte("D\x00+A=1\x00"))
	f.Add([]byte("::1"), []byte("+RELAYCLIENT=\x00"))
	f.Add([]byte("1.2.4-5"), []byte(""))
	f.Add([]byte("a:allowb"), []byte("+A=\"'/\x00"))
	f.Fuzz(func(t *testing.T, key, value []byte) {
		line, err := FormatLine(key, value)
		if err != nil {
			if !errors.Is(err, ErrNotRule) {
				t.Fatal(err)
			}
			return
		}
		db, n, err := buildBytes(t, append(line, '\n'))
		if err != nil || n != 1 {
			t.Fatalf("%q: %d records, %v", line, n, err)
		}
		r, err := cdb.Bytes(db)
		if err != nil {
			t.Fatal(err)
		}
		r.ForEach(func(k, v []byte) error {
			if !bytes.Equal(k, key) || !bytes.Equal(v, value) {
				t.Fatalf("%q compiles to %q -> %q, want %q -> %q", line, k, v, key, value)
			}
			return nil
		})
	})
}
