package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"

	"github.com/poprelay/poprelay/internal/cdb"
	"github.com/poprelay/poprelay/internal/rules"
)

// prog is the name messages start with: "tcprules" when run under that
// name, so that scripts matching tcprules' messages keep working.
var prog = progName(os.Args[0])

func progName(argv0 string) string {
	if filepath.Base(argv0) == "tcprules" {
		return "tcprules"
	}
	return "cdbbuild"
}

const help = `usage: cdbbuild rules.cdb rules.tmp < rules
       cdbbuild -c [rules]
       cdbbuild -d rules.cdb

Compile tcpserver rules (tcprules syntax, with IPv6 addresses) read on
standard input into rules.cdb, through rules.tmp and an atomic rename.
  -c [rules]   check the syntax only (standard input if no file or "-")
  -d rules.cdb print a compiled database back as rules lines
  -h, --help   print this help
Exit status: 0 ok, 100 permanent error (usage, syntax), 111 temporary error.
`

const (
	exitOK        = 0
	exitPermanent = 100
	exitTemporary = 111
)

// cmd carries the output streams of one run.
type cmd struct {
	stdout, stderr io.Writer
}

// fail prints "prog: fatal: msg" and returns code.
func (c *cmd) fail(code int, format string, a ...any) int {
	fmt.Fprintf(c.stderr, "%s: fatal: %s\n", prog, fmt.Sprintf(format, a...))
	return code
}

func (c *cmd) usage() int {
	fmt.Fprintf(c.stderr, "%s: usage: %s rules.cdb rules.tmp\n", prog, prog)
	return exitPermanent
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	c := &cmd{stdout: stdout, stderr: stderr}
	if len(args) > 0 {
		switch args[0] {
		case "-h", "--help", "-help":
			io.WriteString(stdout, help)
			return exitOK
		case "-c":
			if len(args) > 2 {
				return c.usage()
			}
			file := "-"
			if len(args) == 2 {
				file = args[1]
			}
			return c.check(file, stdin)
		case "-d":
			if len(args) != 2 {
				return c.usage()
			}
			return c.dump(args[1])
		case "--":
			args = args[1:]
		default:
			if len(args[0]) > 1 && args[0][0] == '-' {
				return c.usage()
			}
		}
	}
	if len(args) < 2 {
		return c.usage()
	}
	return c.compile(args[0], args[1], stdin)
}

// recorder remembers the first read error of its reader, so a failure can
// be told apart from a write error.
type recorder struct {
	r   io.Reader
	err error
}

func (r *recorder) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF && r.err == nil {
		r.err = err
	}
	return n, err
}

// compile is tcprules: stdin → tmp → fsync → rename over target.
func (c *cmd) compile(target, tmp string, stdin io.Reader) int {
	// The heap is 8 bytes per record, without pointers: collecting at 50%
	// growth costs little and keeps the peak below tcprules' (17 MB for a
	// million lines).
	defer debug.SetGCPercent(debug.SetGCPercent(50))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return c.fail(exitTemporary, "unable to create %s: %s", tmp, errstr(err))
	}
	// On failure, remove tmp, but only if it is still the regular file
	// opened here: never a device or a FIFO named as TMP (tcprules would
	// leave it; removing /dev/full as root would be a disaster), nor a file
	// that replaced it meanwhile.
	st, _ := f.Stat()
	cleanup := func() {
		if cur, err := os.Lstat(tmp); err == nil && st != nil && st.Mode().IsRegular() && os.SameFile(st, cur) {
			os.Remove(tmp)
		}
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			cleanup()
		}
	}()
	w := cdb.NewWriter(f)
	in := &recorder{r: stdin}
	_, err = rules.Build(w, in, "-")
	var pe *rules.ParseError
	switch {
	case errors.As(err, &pe):
		return c.fail(exitPermanent, "unable to parse this line: %s", cText(pe.Text))
	case errors.Is(err, rules.ErrLineTooLong):
		return c.fail(exitPermanent, "unable to read input: line too long")
	case in.err != nil:
		return c.fail(exitTemporary, "unable to read input: %s", errstr(in.err))
	case err != nil:
		return c.fail(exitTemporary, "unable to write to %s: %s", tmp, errstr(err))
	}
	if err := w.Finish(); err != nil {
		return c.fail(exitTemporary, "unable to write to %s: %s", tmp, errstr(err))
	}
	if err := f.Sync(); err != nil {
		return c.fail(exitTemporary, "unable to write to %s: %s", tmp, errstr(err))
	}
	err = f.Close()
	ok = true
	if err != nil {
		cleanup()
		return c.fail(exitTemporary, "unable to write to %s: %s", tmp, errstr(err))
	}
	// syscall.Rename, not os.Rename: os.Rename refuses a directory target
	// with its own EEXIST, while tcprules reports rename(2)'s EISDIR.
	if err := syscall.Rename(tmp, target); err != nil {
		cleanup()
		return c.fail(exitTemporary, "unable to move %s to %s: %s", tmp, target, errstr(err))
	}
	return exitOK
}

// cText cuts s at its first NUL byte, as tcprules' C-string message does.
func cText(s string) string {
	s, _, _ = strings.Cut(s, "\x00")
	return s
}

// check parses file (stdin for "-") and reports the first bad line.
func (c *cmd) check(file string, stdin io.Reader) int {
	in := stdin
	if file != "-" {
		f, err := os.Open(file)
		if err != nil {
			return c.fail(exitTemporary, "unable to open %s: %s", file, errstr(err))
		}
		defer f.Close()
		in = f
	}
	rec := &recorder{r: in}
	err := rules.Scan(rec, file, func(*rules.Rule) error { return nil })
	var pe *rules.ParseError
	switch {
	case errors.As(err, &pe):
		fmt.Fprintf(c.stderr, "%s: %s:%d: unable to parse this line: %s\n", prog, pe.File, pe.Line, cText(pe.Text))
		return exitPermanent
	case errors.Is(err, rules.ErrLineTooLong):
		return c.fail(exitPermanent, "unable to read %s: line too long", file)
	case rec.err != nil:
		return c.fail(exitTemporary, "unable to read %s: %s", file, errstr(rec.err))
	case err != nil:
		return c.fail(exitTemporary, "unable to read %s: %s", file, errstr(err))
	}
	return exitOK
}

// dump prints a compiled database back as rules lines.
func (c *cmd) dump(file string) int {
	b, err := readRegular(file)
	if errors.Is(err, errNotRegular) {
		return c.fail(exitPermanent, "unable to read %s: %s", file, err)
	}
	if err != nil {
		return c.fail(exitTemporary, "unable to read %s: %s", file, errstr(err))
	}
	db, err := cdb.Bytes(b)
	if err != nil {
		return c.fail(exitPermanent, "unable to read %s: %s", file, errstr(err))
	}
	out := bufio.NewWriterSize(c.stdout, 64<<10)
	bad := 0
	err = db.ForEach(func(k, v []byte) error {
		line, err := rules.FormatLine(k, v)
		if err != nil {
			bad++
			out.WriteString("# not a rules line: key ")
			out.WriteString(strconv.Quote(string(k)))
			out.WriteString(" value ")
			out.WriteString(strconv.Quote(string(v)))
			return out.WriteByte('\n')
		}
		out.Write(line)
		return out.WriteByte('\n')
	})
	if err == nil {
		err = out.Flush()
	} else {
		out.Flush()
	}
	switch {
	case errors.Is(err, cdb.ErrCorrupt):
		return c.fail(exitPermanent, "unable to read %s: %s", file, errstr(err))
	case err != nil:
		return c.fail(exitTemporary, "unable to write output: %s", errstr(err))
	case bad > 0:
		return c.fail(exitPermanent, "%d records of %s cannot be written as rules lines", bad, file)
	}
	return exitOK
}

var errNotRegular = errors.New("not a regular file")

// readRegular reads the whole regular file at path; a FIFO (opened without
// blocking) or a device is errNotRegular, a directory EISDIR.
func readRegular(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.IsDir() {
		return nil, syscall.EISDIR
	}
	if !st.Mode().IsRegular() {
		return nil, errNotRegular
	}
	b := make([]byte, st.Size())
	if _, err := io.ReadFull(f, b); err != nil {
		return nil, err
	}
	return b, nil
}
