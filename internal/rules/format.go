package rules

import (
	"bytes"
	"errors"
)

// ErrNotRule reports a CDB record that no rules line can produce: a key
// that would re-parse differently (it holds "\n", starts with "#", has a
// ":allow" or ":deny" inside, or a "-" that would expand as a range), or a
// value that is not "D\0" and "+NAME=VALUE\0" entries.
var ErrNotRule = errors.New("rules: record cannot be written as a rules line")

// quotes are the quote characters FormatLine tries, in order.
const quotes = `"'/|%!~^+.:;_@#*?&$` +
	"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

// splitValue decodes a value strictly: an optional leading "D\0", then
// "+NAME=VALUE\0" entries where NAME has no "=".
func splitValue(v []byte) (deny bool, env []Var, ok bool) {
	if bytes.HasPrefix(v, []byte("D\x00")) {
		deny, v = true, v[2:]
	}
	for len(v) > 0 {
		end := bytes.IndexByte(v, 0)
		if end < 0 || v[0] != '+' {
			return false, nil, false
		}
		name, value, found := bytes.Cut(v[1:end], []byte("="))
		if !found {
			return false, nil, false
		}
		env = append(env, Var{string(name), string(value)})
		v = v[end+1:]
	}
	return deny, env, true
}

// FormatLine renders one CDB record as a rules line (without "\n") that
// compiles back to exactly that record: KEY:allow or KEY:deny, then
// ,NAME=QVALUEQ per setting, Q being the first of " ' / | % ... not in the
// value. It returns ErrNotRule if there is no such line.
func FormatLine(key, value []byte) ([]byte, error) {
	deny, env, ok := splitValue(value)
	if !ok {
		return nil, ErrNotRule
	}
	line := make([]byte, 0, len(key)+len(value)+8)
	line = append(line, key...)
	if deny {
		line = append(line, ":deny"...)
	} else {
		line = append(line, ":allow"...)
	}
	for _, v := range env {
		q := -1
		for i := 0; i < len(quotes); i++ {
			if bytes.IndexByte([]byte(v.Value), quotes[i]) < 0 {
				q = i
				break
			}
		}
		if q < 0 {
			return nil, ErrNotRule
		}
		line = append(line, ',')
		line = append(line, v.Name...)
		line = append(line, '=', quotes[q])
		line = append(line, v.Value...)
		line = append(line, quotes[q])
	}
	// The line must parse back to the very same record.
	if len(line) == 0 || line[0] == '#' || bytes.IndexByte(line, '\n') >= 0 {
		return nil, ErrNotRule
	}
	var p parsed
	x := trim(line)
	if len(x) != len(line) || parseLine(x, &p) != lineRule || !bytes.Equal(p.addr, key) {
		return nil, ErrNotRule
	}
	if kr, ok := expandRange(p.addr); !ok || kr.ok {
		return nil, ErrNotRule
	}
	if p.deny != deny || len(p.env) != len(env) {
		return nil, ErrNotRule
	}
	for i, s := range p.env {
		if string(x[s.name.start:s.name.end]) != env[i].Name || string(x[s.value.start:s.value.end]) != env[i].Value {
			return nil, ErrNotRule
		}
	}
	return line, nil
}
