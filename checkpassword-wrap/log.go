package main

import (
	"bytes"
	"fmt"
	"io"
	"strings"
)

// dovecotLog writes each line on stderr in the form Dovecot's log process
// reads from its children (src/lib/failures.c, the same in 2.3 and 2.4):
// "\001", the log type plus one as a byte, the pid, a space, the text. A
// plain line is logged at error level, so without this every successful
// login would be an "Error:" in Dovecot's log. The audit line of a grant
// goes out as info, a fatal error as error, every other line (a refusal,
// a failure to record) as a warning; the words "fatal:" and "warning:"
// are left out, since Dovecot writes the level. Each line is one write.
type dovecotLog struct {
	w   io.Writer
	pid int
	buf []byte
}

// Dovecot's enum log_type, plus one.
const (
	dvInfo    = 2
	dvWarning = 3
	dvError   = 4
)

func (l *dovecotLog) Write(p []byte) (int, error) {
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		line := string(l.buf[:i+1])
		l.buf = l.buf[i+1:]
		typ := dvWarning
		if text, ok := strings.CutPrefix(line, prog+": "); ok {
			// The level says it: no "Warning: ...: warning:".
			if t, ok := strings.CutPrefix(text, "fatal: "); ok {
				typ, text = dvError, t
			} else if strings.HasPrefix(text, "ip=") {
				typ = dvInfo
			} else {
				text = strings.TrimPrefix(text, "warning: ")
			}
			line = prog + ": " + text
		}
		if _, err := fmt.Fprintf(l.w, "\001%c%d %s", typ, l.pid, line); err != nil {
			return len(p), err
		}
	}
}
