package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"time"

	"github.com/poprelay/poprelay/internal/confirmed"
	"github.com/poprelay/poprelay/internal/grant"
)

// env is what a command runs with: its streams, its environment and the
// clock.
type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	lookup         func(string) (string, bool)
	now            func() time.Time
	ctx            context.Context // nil: background; watch stops when it is done
	cfg            *config
	built          *built          // set by rebuild
	snap           *grant.Snapshot // the spool as last scanned in this run
	snapDirty      bool            // snap has changes the state file lacks
	folded         *grant.Folded   // the folded grants as this run's fold wrote them
	sweep          *grant.Snapshot // grant files folded by this run, to remove after the lock
	noFold         bool            // reads never fold the spool (the watcher)
	confirmRules   bool            // rebuild: the rules file is taken as it is
	guard          *confirmed.Guard
	said           map[string]bool // warnings already logged by this run
	openSMTP       func() string   // vpopmail's open-smtp file; nil: defaultOpenSMTP
}

// command is one subcommand.
type command struct {
	name  string
	short string // what it does, in a few words
	usage string // one line: the arguments
	help  string // what it does, for --help and the man page
	flags func(fs *flag.FlagSet) func(e *env, args []string) error
}

// commands is the subcommand table, in the order help shows them.
var commands = []*command{
	rebuildCmd, watchCmd, expireCmd, listCmd, allowCmd, revokeCmd, checkCmd, importCmd, configCmd,
}

func lookupCommand(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

// exitError carries an exit code and a message for "relayctl: fatal: ".
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

// usageError is a usage mistake: exit 100 with a usage line.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func perm(format string, args ...any) error {
	return &exitError{100, fmt.Sprintf(format, args...)}
}

func temp(format string, args ...any) error {
	return &exitError{111, fmt.Sprintf(format, args...)}
}

func usagef(format string, args ...any) error {
	return &usageError{fmt.Sprintf(format, args...)}
}

// why renders an error for the end of a message: the system error alone
// for a path error (the message names the path already).
func why(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) && err == error(pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

// unable is the usual temporary failure: "unable to WHAT: WHY".
func unable(what string, err error) error {
	return temp("unable to %s: %s", what, why(err))
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	e := &env{stdin: stdin, stdout: stdout, stderr: stderr, lookup: os.LookupEnv, now: time.Now}
	return e.run(args)
}

const mainUsage = "usage: relayctl [-v] COMMAND [options] [arguments]; relayctl COMMAND --help"

func (e *env) run(args []string) int {
	verbose := false
	for len(args) > 0 && (args[0] == "-v" || args[0] == "--verbose") {
		verbose = true
		args = args[1:]
	}
	if len(args) == 0 {
		fmt.Fprintln(e.stderr, "relayctl: "+mainUsage)
		return 100
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		if len(args) > 1 && args[0] == "help" {
			if c := lookupCommand(args[1]); c != nil {
				io.WriteString(e.stdout, c.helpText())
				return 0
			}
		}
		io.WriteString(e.stdout, mainHelp())
		return 0
	}
	c := lookupCommand(args[0])
	if c == nil {
		fmt.Fprintf(e.stderr, "relayctl: usage: unknown command %q; %s\n", args[0], mainUsage)
		return 100
	}
	fset := flag.NewFlagSet("relayctl "+c.name, flag.ContinueOnError)
	fset.SetOutput(io.Discard)
	cfg := newConfig(fset)
	e.cfg = cfg
	fn := c.flags(fset)
	pos, err := parseInterleaved(fset, args[1:])
	if errors.Is(err, flag.ErrHelp) {
		io.WriteString(e.stdout, c.helpText())
		return 0
	}
	if err == nil {
		if verbose && !cfg.verbose.fromFlag {
			cfg.verbose.Set("true")
		}
		err = cfg.resolve(e.lookup)
	}
	if err == nil {
		err = fn(e, pos)
	}
	return e.exit(c, err)
}

// exit prints err as djb's tools do and returns the exit code.
func (e *env) exit(c *command, err error) int {
	if err == nil {
		return 0
	}
	var ee *exitError
	var ue *usageError
	switch {
	case errors.As(err, &ue):
		fmt.Fprintf(e.stderr, "relayctl: usage: %s: relayctl %s %s\n", ue.msg, c.name, c.usage)
		return 100
	case errors.As(err, &ee):
		fmt.Fprintf(e.stderr, "relayctl: fatal: %s\n", ee.msg)
		return ee.code
	default:
		fmt.Fprintf(e.stderr, "relayctl: fatal: %s\n", why(err))
		return 111
	}
}

// parseInterleaved parses flags that may come before or after the
// positional arguments, as "allow 1.2.3.4 --for 2h" needs. "--" ends the
// flags.
func parseInterleaved(fset *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		// A "--" among args is consumed by Parse; note where it was.
		dashdash := -1
		for i, a := range args {
			if a == "--" {
				dashdash = i
				break
			}
			if !strings.HasPrefix(a, "-") || a == "-" {
				break
			}
		}
		if err := fset.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, usagef("%s", err)
		}
		rest := fset.Args()
		if dashdash >= 0 || len(rest) == 0 {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// logf writes one line to stderr, for -v and warnings.
func (e *env) logf(format string, args ...any) {
	fmt.Fprintf(e.stderr, "relayctl: "+format+"\n", args...)
}

// vlogf writes one line to stderr only with -v.
func (e *env) vlogf(format string, args ...any) {
	if e.cfg.Verbose {
		e.logf(format, args...)
	}
}
