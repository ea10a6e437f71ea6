package rules

import (
	"bytes"
	"testing"

	"github.com/poprelay/poprelay/internal/cdb"
)

// FuzzLookup decides a client against any bytes taken as a CDB, as
// "relayctl check" and the torn-read prober do: an error or a decision,
// never a panic; and against a database compiled from rules, the same
// decision as the rules' own index.
func FuzzLookup(f *testing.F) {
	good := []byte("127.0.0.1:allow,RELAYCLIENT=\"\"\n192.0.2.:deny\n2001:db8::7:allow,X=\"y\"\n=.example.com:allow,A='b'\n:allow\n")
	rs, _ := Parse(bytes.NewReader(good), "seed")
	db := compileBytes(f, rs)
	f.Add(db, "192.0.2.7", "mail.example.com", true)
	f.Add(db, "2001:db8::7", "", false)
	f.Add(db[:len(db)/2], "127.0.0.1", "", false)
	f.Add([]byte("127.0.0.:allow\n"), "127.0.0.9", "x", true)
	f.Fuzz(func(t *testing.T, data []byte, ip, host string, hasHost bool) {
		q := Query{IP: ip, Host: host, HasHost: hasHost}
		if r, err := cdb.Bytes(data); err == nil {
			if d, err := Lookup(r, q); err == nil {
				d.Environ()
			}
		}
		// data as a rules file: the compiled CDB and the index agree.
		rs, err := Parse(bytes.NewReader(data), "f")
		if err != nil {
			return
		}
		r, err := cdb.Bytes(compileBytes(t, rs))
		if err != nil {
			t.Fatal(err)
		}
		want, err1 := Lookup(NewIndex(rs), q)
		got, err2 := Lookup(r, q)
		if err1 != nil || err2 != nil {
			t.Fatalf("Lookup: %v, %v", err1, err2)
		}
		if got.Deny != want.Deny || got.Key != want.Key || got.Matched != want.Matched || !bytes.Equal(EncodeValue(got.Deny, got.Env), EncodeValue(want.Deny, want.Env)) {
			t.Fatalf("the CDB decides %+v, the index %+v", got, want)
		}
	})
}
