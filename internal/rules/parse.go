package rules

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/poprelay/poprelay/internal/cdb"
)

// Rule is one line of a rules file that produced records.
type Rule struct {
	Line int      // 1-based line number
	Addr string   // the address as written (bytes before the separating colon)
	Keys []string // CDB keys it produces, in order (range expansion; usually just Addr; may be empty: "1.2.3.300-400")
	Deny bool
	Env  []Var // settings in line order
}

// Value returns the CDB value of the rule's records.
func (r *Rule) Value() []byte { return EncodeValue(r.Deny, r.Env) }

// ParseError reports a line tcprules would reject.
type ParseError struct {
	File string
	Line int
	Text string // the line with its trailing "\n", spaces and tabs removed
}

func (e *ParseError) Error() string {
	return fmt.Sprintf("%s:%d: unable to parse this line: %s", e.File, e.Line, e.Text)
}

// ErrLineTooLong reports an input line longer than MaxLine.
var ErrLineTooLong = errors.New("rules: line too long")

// MaxLine bounds the length of one input line, so a runaway input (a binary
// file on standard input) fails cleanly instead of eating all memory.
const MaxLine = 64 << 20

// span is a [start, end) range of bytes in a line.
type span struct{ start, end int }

// setting is one NAME=VALUE of a line, as spans.
type setting struct{ name, value span }

// parsed is the result of parsing one line, pointing into it.
type parsed struct {
	addr []byte
	deny bool
	env  []setting
}

// lineStatus says what parseLine made of a line.
type lineStatus int

const (
	lineSkip lineStatus = iota
	lineRule
	lineBad
)

var (
	kwAllow = []byte("allow")
	kwDeny  = []byte("deny")
)

// trim removes the trailing "\n", space and tab bytes.
func trim(line []byte) []byte {
	n := len(line)
	for n > 0 {
		c := line[n-1]
		if c != '\n' && c != ' ' && c != '\t' {
			break
		}
		n--
	}
	return line[:n]
}

// parseLine parses one trimmed line (see trim); the line must not be a
// comment or empty before trimming (the caller checks). p.env is reused.
func parseLine(x []byte, p *parsed) lineStatus {
	colon := bytes.IndexByte(x, ':')
	if colon < 0 {
		return lineSkip
	}
	// The IPv6 variant's search: the first colon followed by a keyword.
	for {
		rest := x[colon+1:]
		if bytes.HasPrefix(rest, kwAllow) || bytes.HasPrefix(rest, kwDeny) {
			break
		}
		i := bytes.IndexByte(rest, ':')
		if i < 0 {
			return lineBad
		}
		colon += 1 + i
	}
	p.addr = x[:colon]
	p.env = p.env[:0]
	i := colon + 1
	if bytes.HasPrefix(x[i:], kwAllow) {
		p.deny = false
		i += len(kwAllow)
	} else {
		p.deny = true
		i += len(kwDeny)
	}
	for i < len(x) {
		if x[i] != ',' {
			return lineBad
		}
		i++
		eq := bytes.IndexByte(x[i:], '=')
		if eq < 0 {
			return lineBad
		}
		name := span{i, i + eq}
		i += eq + 1
		if i >= len(x) {
			return lineBad
		}
		q := x[i]
		i++
		end := bytes.IndexByte(x[i:], q)
		if end < 0 {
			return lineBad
		}
		p.env = append(p.env, setting{name, span{i, i + end}})
		i += end + 1
	}
	return lineRule
}

// keyRange is what range expansion makes of an address: keys
// addr[:left] + decimal(n) + addr[right:] for n = lo..hi, or the address
// itself when !ok.
type keyRange struct {
	ok          bool
	left, right int
	lo, hi      uint64
}

// getnum reads an all-decimal (possibly empty) number with tcprules'
// unsigned long arithmetic, wrapping on overflow. Like tcprules, which
// scans a C-string copy, it stops at a NUL byte: "1\x00x" is 1.
func getnum(b []byte) (uint64, bool) {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	var n uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + uint64(c-'0')
	}
	return n, true
}

// expandRange applies tcprules' range rule to addr; false means a parse
// error.
func expandRange(addr []byte) (keyRange, bool) {
	dash := -1
	for i, c := range addr {
		switch c {
		case '=', '@':
			return keyRange{}, true
		case '-':
			if dash < 0 {
				dash = i
			}
		}
	}
	if dash < 0 {
		return keyRange{}, true
	}
	left := bytes.LastIndexByte(addr[:dash], '.') + 1
	right := dash + 1
	if i := bytes.IndexByte(addr[right:], '.'); i >= 0 {
		right += i
	} else {
		right = len(addr)
	}
	lo, ok1 := getnum(addr[left:dash])
	hi, ok2 := getnum(addr[dash+1 : right])
	if !ok1 || !ok2 {
		return keyRange{}, false
	}
	hi = min(hi, 255)
	return keyRange{ok: true, left: left, right: right, lo: lo, hi: hi}, true
}

// each calls fn with every key of the range (or addr itself), reusing buf.
func (kr keyRange) each(addr []byte, buf []byte, fn func(key []byte) error) ([]byte, error) {
	if !kr.ok {
		return buf, fn(addr)
	}
	for n := kr.lo; n <= kr.hi; n++ {
		buf = append(buf[:0], addr[:kr.left]...)
		buf = strconv.AppendUint(buf, n, 10)
		buf = append(buf, addr[kr.right:]...)
		if err := fn(buf); err != nil {
			return buf, err
		}
	}
	return buf, nil
}

// lineReader splits input into lines as djb's getln does.
type lineReader struct {
	br   *bufio.Reader
	long []byte
	n    int // number of the line last returned
}

func newLineReader(r io.Reader) *lineReader {
	return &lineReader{br: bufio.NewReaderSize(r, 64<<10)}
}

// next returns the next line including its "\n" (absent on a last
// unterminated line), valid until the next call, or io.EOF.
func (lr *lineReader) next() ([]byte, error) {
	line, err := lr.br.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		lr.long = append(lr.long[:0], line...)
		for err == bufio.ErrBufferFull {
			if len(lr.long) > MaxLine {
				return nil, ErrLineTooLong
			}
			line, err = lr.br.ReadSlice('\n')
			lr.long = append(lr.long, line...)
		}
		line = lr.long
	}
	if err != nil && err != io.EOF {
		return nil, err
	}
	if len(line) == 0 {
		return nil, io.EOF
	}
	lr.n++
	return line, nil
}

// scanner is the streaming core of Scan and Build: next parses lines
// until one makes records.
type scanner struct {
	lr   *lineReader
	file string
	x    []byte // the current line, trimmed
	p    parsed
	kr   keyRange
}

// next advances to the next rule line; false at the end or on error.
// Read errors are wrapped.
func (s *scanner) next() (bool, error) {
	for {
		line, err := s.lr.next()
		if err == io.EOF {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("rules: reading %s: %w", s.file, err)
		}
		if line[0] == '#' || line[0] == '\n' {
			continue
		}
		s.x = trim(line)
		switch parseLine(s.x, &s.p) {
		case lineSkip:
			continue
		case lineBad:
			return false, &ParseError{File: s.file, Line: s.lr.n, Text: string(s.x)}
		}
		var ok bool
		if s.kr, ok = expandRange(s.p.addr); !ok {
			return false, &ParseError{File: s.file, Line: s.lr.n, Text: string(s.x)}
		}
		return true, nil
	}
}

// Scan reads a rules file and calls fn with each line that makes records,
// in order; each *Rule is fresh and may be kept. A line tcprules would
// reject stops the scan with a *ParseError; read errors are wrapped; an
// error from fn is returned as it is.
func Scan(r io.Reader, file string, fn func(*Rule) error) error {
	s := &scanner{lr: newLineReader(r), file: file}
	for {
		ok, err := s.next()
		if !ok {
			return err
		}
		rule := s.rule()
		if err := fn(&rule); err != nil {
			return err
		}
	}
}

// rule returns the current line as a Rule.
func (s *scanner) rule() Rule {
	x, p, kr := s.x, &s.p, s.kr
	// One string for the line; the fields are substrings of it.
	ls := string(x)
	rule := Rule{Line: s.lr.n, Addr: ls[:len(p.addr)], Deny: p.deny}
	if len(p.env) > 0 {
		rule.Env = make([]Var, len(p.env))
		for i, e := range p.env {
			rule.Env[i] = Var{ls[e.name.start:e.name.end], ls[e.value.start:e.value.end]}
		}
	}
	if !kr.ok {
		rule.Keys = []string{rule.Addr}
	} else {
		rule.Keys = []string{}
		kr.each(p.addr, nil, func(k []byte) error {
			rule.Keys = append(rule.Keys, string(k))
			return nil
		})
	}
	return rule
}

// Parse reads a whole rules file; see Scan.
func Parse(r io.Reader, file string) ([]Rule, error) {
	s := &scanner{lr: newLineReader(r), file: file}
	var rs []Rule
	for {
		ok, err := s.next()
		if err != nil {
			return nil, err
		}
		if !ok {
			return rs, nil
		}
		rs = append(rs, s.rule())
	}
}

// Compile adds every key of every rule to w, in order, with the rule's
// value: the records tcprules writes for the same file. It does not call
// w.Finish.
func Compile(w *cdb.Writer, rs []Rule) error {
	var v, kb []byte
	for i := range rs {
		v = appendValue(v[:0], rs[i].Deny, rs[i].Env)
		for _, k := range rs[i].Keys {
			kb = append(kb[:0], k...)
			if err := w.Add(kb, v); err != nil {
				return err
			}
		}
	}
	return nil
}

// Build streams a rules file straight into w, as tcprules does, without
// keeping the rules: Scan and Compile in one pass, with no allocation per
// line. It returns the number of records added. Errors are as Scan's, and
// w's errors as they are. It does not call w.Finish.
func Build(w *cdb.Writer, r io.Reader, file string) (int, error) {
	s := &scanner{lr: newLineReader(r), file: file}
	var value, key []byte
	n := 0
	for {
		ok, err := s.next()
		if !ok {
			return n, err
		}
		x, p, kr := s.x, &s.p, s.kr
		value = value[:0]
		if p.deny {
			value = append(value, 'D', 0)
		}
		for _, e := range p.env {
			value = append(value, '+')
			value = append(value, x[e.name.start:e.name.end]...)
			value = append(value, '=')
			value = append(value, x[e.value.start:e.value.end]...)
			value = append(value, 0)
		}
		if !kr.ok {
			n++
			if err := w.Add(p.addr, value); err != nil {
				return n, err
			}
			continue
		}
		for v := kr.lo; v <= kr.hi; v++ {
			key = append(key[:0], p.addr[:kr.left]...)
			key = strconv.AppendUint(key, v, 10)
			key = append(key, p.addr[kr.right:]...)
			n++
			if err := w.Add(key, value); err != nil {
				return n, err
			}
		}
	}
}

// Index is an in-memory view of compiled rules: for each key, the first
// rule that produced it, as a CDB lookup finds the first record.
type Index struct {
	rules []Rule
	first map[string]int
}

// NewIndex indexes rs. It keeps rs; do not modify it afterwards.
func NewIndex(rs []Rule) *Index {
	ix := &Index{rules: rs, first: make(map[string]int)}
	for i := range rs {
		for _, k := range rs[i].Keys {
			if _, ok := ix.first[k]; !ok {
				ix.first[k] = i
			}
		}
	}
	return ix
}

// Find returns the value of the first record for key, as the compiled
// database would: Index is a Finder.
func (ix *Index) Find(key []byte) ([]byte, bool, error) {
	i, ok := ix.first[string(key)]
	if !ok {
		return nil, false, nil
	}
	return ix.rules[i].Value(), true, nil
}

// Rule returns the first rule that produced key.
func (ix *Index) Rule(key string) (*Rule, bool) {
	i, ok := ix.first[key]
	if !ok {
		return nil, false
	}
	return &ix.rules[i], true
}
