package t

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/poprelay/poprelay/internal/grant"
)

// TestUpgradeSpool: a spool written by the last release (1b96eee: one
// file per grant, by its checkpassword-wrap and relayctl allow: a login
// over an admin's long grant with keep=, an allowance with expires=, an
// IPv6 address, a mapped IPv4 one) is read by this release as it listed
// it, then folded into one file without losing or changing a grant, and
// its CDB relays every address. testdata/spool-1b96eee.list.json is the
// old release's relayctl list --json of it. The grants' times are 2026,
// so the site's max age is a million hours.
func TestUpgradeSpool(t *testing.T) {
	s := newRelayctlSite(t, "127.:allow,RELAYCLIENT=\"\"\n:allow\n")
	s.env = append(s.env, "POPRELAY_MAXAGE=1000000h")
	src := filepath.Join("testdata", "spool-1b96eee")
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(s.spool, e.Name()), b, 0o640); err != nil {
			t.Fatal(err)
		}
	}
	type row struct {
		IP, User, Service, Login, Expires, Status string
	}
	rows := func(js string) []row {
		t.Helper()
		var rs []row
		if err := json.Unmarshal([]byte(js), &rs); err != nil {
			t.Fatalf("%v: %s", err, js)
		}
		return rs
	}
	old, err := os.ReadFile(filepath.Join("testdata", "spool-1b96eee.list.json"))
	if err != nil {
		t.Fatal(err)
	}
	want := rows(string(old))
	if len(want) != len(ents) {
		t.Fatalf("testdata: %d grants listed, %d files", len(want), len(ents))
	}
	if got := rows(s.relayctl(t, "list", "--json")); !reflect.DeepEqual(got, want) {
		t.Fatalf("the last release's spool lists as\n%v\nit listed\n%v", got, want)
	}
	s.relayctl(t, "rebuild")
	// Revoking one of them removes its file; importing vpopmail's
	// open-smtp folds the spool, with the imported grant.
	s.relayctl(t, "revoke", "203.0.113.9")
	want = slices.DeleteFunc(want, func(r row) bool { return r.IP == "203.0.113.9" })
	open := filepath.Join(s.dir, "open-smtp")
	os.WriteFile(open, []byte(fmt.Sprintf("192.0.2.77:allow,RELAYCLIENT=\"\",RBLSMTPD=\"\"\t%d\n", time.Now().Unix())), 0o644)
	s.relayctl(t, "import", "--vpopmail", open)
	if ents, _ := os.ReadDir(s.spool); len(ents) != 1 || ents[0].Name() != grant.FoldedName {
		t.Fatalf("the spool after the fold: %v", ents)
	}
	got := rows(s.relayctl(t, "list", "--json"))
	got = slices.DeleteFunc(got, func(r row) bool { return r.IP == "192.0.2.77" && r.Service == "vpopmail" })
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("folded, the spool lists as\n%v\nthe last release listed\n%v", got, want)
	}
	for _, r := range want {
		if !relays(t, s.cdb, r.IP) {
			t.Errorf("%s does not relay after the upgrade", r.IP)
		}
	}
	if relays(t, s.cdb, "203.0.113.9") {
		t.Error("the revoked 203.0.113.9 relays")
	}
	if !relays(t, s.cdb, "192.0.2.77") {
		t.Error("the imported 192.0.2.77 does not relay")
	}
	// A login after the upgrade, over the admin's long grant, keeps its end.
	s.relayctl(t, "allow", "192.0.2.60", "--user", "again")
	for _, r := range rows(s.relayctl(t, "list", "--json")) {
		if r.IP == "192.0.2.60" && (r.User != "again" || !strings.HasPrefix(r.Expires, "2255-")) {
			t.Errorf("a new grant over the folded allowance: %+v", r)
		}
	}
}
