package rules

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
)

// Var is one environment setting of a rule, NAME=VALUE.
type Var struct {
	Name, Value string
}

// EncodeValue renders a rule's decision and settings as the CDB value
// tcprules writes: "D\0" for deny, then "+NAME=VALUE\0" per setting.
func EncodeValue(deny bool, env []Var) []byte {
	n := 0
	if deny {
		n = 2
	}
	for _, v := range env {
		n += len(v.Name) + len(v.Value) + 3
	}
	return appendValue(make([]byte, 0, n), deny, env)
}

// appendValue appends EncodeValue(deny, env) to b.
func appendValue(b []byte, deny bool, env []Var) []byte {
	if deny {
		b = append(b, 'D', 0)
	}
	for _, v := range env {
		b = append(b, '+')
		b = append(b, v.Name...)
		b = append(b, '=')
		b = append(b, v.Value...)
		b = append(b, 0)
	}
	return b
}

// DecodeValue reads a CDB value as tcpserver applies it: NUL-terminated
// entries, "D" denies, "+NAME=VALUE" sets a variable (in order, so a later
// setting of the same name wins). Other entries are ignored, as tcpserver
// ignores them; a value whose last entry lacks its NUL is ignored from
// there on, as tcpserver's loop does.
func DecodeValue(b []byte) (deny bool, env []Var) {
	for {
		i := bytes.IndexByte(b, 0)
		if i < 0 {
			return deny, env
		}
		e := b[:i]
		b = b[i+1:]
		switch {
		case len(e) > 0 && e[0] == 'D':
			deny = true
		case len(e) > 0 && e[0] == '+':
			name, value, _ := strings.Cut(string(e[1:]), "=")
			env = append(env, Var{name, value})
		}
	}
}

// Query is a client as tcpserver sees it.
type Query struct {
	IP      string // TCPREMOTEIP as tcpserver prints it
	Host    string // TCPREMOTEHOST, if HasHost
	HasHost bool
	Info    string // TCPREMOTEINFO, if HasInfo (may be empty and still set)
	HasInfo bool
}

// Keys returns the CDB keys tcpserver -x tries for q, most specific first:
// info@ip, info@=host, ip, =host, the prefixes of ip ending in "." or ":"
// (longest first), then "=" + each suffix of host starting at a ".", "=",
// and finally the empty key.
func Keys(q Query) []string {
	var keys []string
	if q.HasInfo {
		keys = append(keys, q.Info+"@"+q.IP)
		if q.HasHost {
			keys = append(keys, q.Info+"@="+q.Host)
		}
	}
	keys = append(keys, q.IP)
	if q.HasHost {
		keys = append(keys, "="+q.Host)
	}
	for i := len(q.IP) - 1; i >= 0; i-- {
		if q.IP[i] == '.' || q.IP[i] == ':' {
			keys = append(keys, q.IP[:i+1])
		}
	}
	if q.HasHost {
		for i := 0; i < len(q.Host); i++ {
			if q.Host[i] == '.' {
				keys = append(keys, "="+q.Host[i:])
			}
		}
		keys = append(keys, "=")
	}
	return append(keys, "")
}

// Finder finds the first record for a key: *cdb.Reader and *Index are
// Finders.
type Finder interface {
	Find(key []byte) (value []byte, ok bool, err error)
}

// Decision is what tcpserver -x decides for a client.
type Decision struct {
	Deny    bool
	Env     []Var  // the matched record's settings, in order
	Key     string // the key that matched
	Matched bool   // false: no key matched, and the client is allowed
}

// Lookup decides q against db as tcpserver -x does: the first key of Keys
// present in db decides, by its first record.
func Lookup(db Finder, q Query) (Decision, error) {
	for _, k := range Keys(q) {
		v, ok, err := db.Find([]byte(k))
		if err != nil {
			return Decision{}, fmt.Errorf("rules: looking up %q: %w", k, err)
		}
		if ok {
			deny, env := DecodeValue(v)
			return Decision{Deny: deny, Env: env, Key: k, Matched: true}, nil
		}
	}
	return Decision{}, nil
}

// Environ returns the environment a matched record leaves: each name once,
// with its last value, sorted by name.
func (d Decision) Environ() []Var {
	last := map[string]string{}
	for _, v := range d.Env {
		last[v.Name] = v.Value
	}
	out := make([]Var, 0, len(last))
	for n, v := range last {
		out = append(out, Var{n, v})
	}
	slices.SortFunc(out, func(a, b Var) int { return strings.Compare(a.Name, b.Name) })
	return out
}
