// Package migrate reads the grants of the tools poprelay replaces, so a
// site can switch without locking its roaming users out:
//
//   - vpopmail's roaming-users file ~vpopmail/etc/open-smtp, one line per
//     address, written by vpopmail's open_smtp_relay as
//     "1.2.3.4:allow,RELAYCLIENT="",RBLSMTPD=""<TAB>1700000000": a tcprules
//     line, a tab, and the login time in Unix seconds. The user is not
//     recorded there.
//   - relay-ctrl's spool directory (RELAY_CTRL_DIR, e.g.
//     /var/spool/relay-ctrl/allow): one file per address, named by the
//     address; its modification time is the login time, and relay-ctrl-allow
//     3.x writes "USER=name\0DOMAIN=domain\0" into it (older versions leave
//     it empty).
package migrate

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"github.com/poprelay/poprelay/internal/grant"
)

// ErrSyntax reports an open-smtp line that is not one.
var ErrSyntax = errors.New("not an open-smtp line")

// LineError names the file and line of a bad open-smtp line.
type LineError struct {
	File string
	Line int
	Err  error
}

func (e *LineError) Error() string { return fmt.Sprintf("%s:%d: %v", e.File, e.Line, e.Err) }
func (e *LineError) Unwrap() error { return e.Err }

// ParseVpopmailLine reads one open-smtp line (without its newline). An
// empty line or a "#" comment gives ok false and no error.
func ParseVpopmailLine(line string) (g grant.Grant, ok bool, err error) {
	line = strings.TrimRight(line, "\r")
	if line == "" || line[0] == '#' {
		return g, false, nil
	}
	rule, stamp, found := strings.Cut(line, "\t")
	if !found {
		return g, false, fmt.Errorf("%w: no tab before the time", ErrSyntax)
	}
	// The address ends at the colon before allow or deny; IPv6 addresses
	// hold colons themselves.
	i := strings.LastIndex(rule, ":allow")
	if i < 0 {
		if strings.Contains(rule, ":deny") {
			return g, false, fmt.Errorf("%w: a deny line", ErrSyntax)
		}
		return g, false, fmt.Errorf("%w: no :allow", ErrSyntax)
	}
	ip, err := grant.CanonicalIP(rule[:i])
	if err != nil {
		return g, false, fmt.Errorf("%w: %v", ErrSyntax, err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(stamp), 10, 64)
	if err != nil || n <= 0 || n > 1<<40 {
		return g, false, fmt.Errorf("%w: bad time %q", ErrSyntax, stamp)
	}
	return grant.Grant{IP: ip, Service: "vpopmail", Time: time.Unix(n, 0)}, true, nil
}

// FormatVpopmailLine writes g as vpopmail writes it.
func FormatVpopmailLine(g grant.Grant) string {
	return fmt.Sprintf("%s:allow,RELAYCLIENT=\"\",RBLSMTPD=\"\"\t%d", g.IP, g.Time.Unix())
}

// maxLine bounds an open-smtp line.
const maxLine = 64 << 10

// Vpopmail reads an open-smtp file. It returns one grant per address,
// the latest (of equal times, the later line's), in address order. A bad
// line is a *LineError.
func Vpopmail(r io.Reader, file string) ([]grant.Grant, error) {
	// The whole file at once: every line, and every address already in
	// canonical form, is a part of one string, not a string each.
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	text := unsafe.String(unsafe.SliceData(b), len(b))
	gs := make([]grant.Grant, 0, strings.Count(text, "\n")+1)
	for n := 1; text != ""; n++ {
		line := text
		if i := strings.IndexByte(text, '\n'); i >= 0 {
			line, text = text[:i], text[i+1:]
		} else {
			text = ""
		}
		if len(line) > maxLine {
			return nil, &LineError{file, n, fmt.Errorf("%w: longer than %d bytes", ErrSyntax, maxLine)}
		}
		g, ok, err := ParseVpopmailLine(line)
		if err != nil {
			return nil, &LineError{file, n, err}
		}
		if ok {
			gs = append(gs, g)
		}
	}
	return latest(gs), nil
}

// latest sorts gs by address and keeps, of each address, the grant with
// the latest time (of equal times, the later one in gs).
func latest(gs []grant.Grant) []grant.Grant {
	addrs := make([]netip.Addr, len(gs))
	idx := make([]int32, len(gs))
	for i := range gs {
		addrs[i], _ = netip.ParseAddr(gs[i].IP)
		idx[i] = int32(i)
	}
	slices.SortFunc(idx, func(x, y int32) int {
		if c := addrs[x].Compare(addrs[y]); c != 0 {
			return c
		}
		return int(x - y)
	})
	out := make([]grant.Grant, 0, len(gs))
	for k, i := range idx {
		if k > 0 && addrs[i] == addrs[idx[k-1]] {
			if last := &out[len(out)-1]; !gs[i].Time.Before(last.Time) {
				*last = gs[i]
			}
			continue
		}
		out = append(out, gs[i])
	}
	return out
}

// RelayCtrl reads a relay-ctrl spool directory. Entries whose names are
// not canonical addresses, and anything but regular files, are skipped,
// each reported to skip.
func RelayCtrl(dir string, skip func(name, why string)) ([]grant.Grant, error) {
	if skip == nil {
		skip = func(string, string) {}
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var gs []grant.Grant
	for _, e := range ents {
		name := e.Name()
		ip, err := grant.CanonicalIP(name)
		if err != nil || ip != name {
			skip(name, "not an IP address")
			continue
		}
		if !e.Type().IsRegular() {
			skip(name, "not a regular file")
			continue
		}
		fi, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue // aged out meanwhile
		}
		if err != nil {
			return nil, err
		}
		user := ""
		b, err := readSmall(filepath.Join(dir, name))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		user = relayCtrlUser(b)
		gs = append(gs, grant.Grant{IP: ip, User: user, Service: "relay-ctrl", Time: fi.ModTime()})
	}
	return gs, nil
}

// readSmall reads at most 4 KiB of a file.
func readSmall(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, 4096))
}

// relayCtrlUser makes USER@DOMAIN (or USER) of relay-ctrl-allow's
// NUL-separated settings.
func relayCtrlUser(b []byte) string {
	var user, domain string
	for _, kv := range bytes.Split(b, []byte{0}) {
		k, v, _ := bytes.Cut(kv, []byte("="))
		switch string(k) {
		case "USER":
			user = string(v)
		case "DOMAIN":
			domain = string(v)
		}
	}
	if user != "" && domain != "" && !strings.Contains(user, "@") {
		user += "@" + domain
	}
	// Keep what the grant store accepts: one printable line.
	user = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, user)
	if len(user) > 255 {
		user = user[:255]
	}
	return user
}
