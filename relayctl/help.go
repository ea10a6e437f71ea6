package main

import (
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
}

// flagLines describes the flags of c: its own first, then the common ones
// with their variables and defaults.
func (c *command) flagLines() (own, common []string) {
	fset := flag.NewFlagSet(c.name, flag.ContinueOnError)
	cfg := newConfig(fset)
	c.flags(fset)
	isCommon := map[string]*setting{}
	for _, s := range cfg.all() {
		isCommon[s.name] = s
	}
	fset.VisitAll(func(f *flag.Flag) {
		dash := "--"
		if len(f.Name) == 1 {
			dash = "-"
		}
		arg, usage := flag.UnquoteUsage(f)
		if s, ok := isCommon[f.Name]; ok {
			if s.isBool {
				arg = ""
			} else {
				arg = argName(f.Name)
			}
			def := s.def
			if def == "" {
				def = "none"
			}
			common = append(common, fmt.Sprintf("%s%s %s\t%s (%s; default %s)", dash, f.Name, arg, usage, s.env, def))
			return
		}
		if _, ok := f.Value.(interface{ IsBoolFlag() bool }); ok {
			arg = ""
		}
		own = append(own, fmt.Sprintf("%s%s %s\t%s", dash, f.Name, arg, usage))
	})
	return own, common
}

func argName(name string) string {
	switch name {
	case "spool":
		return "DIR"
	case "max-age", "lock-timeout":
		return "DUR"
	case "max-per-user", "max-grants":
		return "N"
	}
	return "FILE"
}

// helpText is what "relayctl COMMAND --help" prints, and the man page's
// section for the command.
func (c *command) helpText() string {
	var b strings.Builder
	fmt.Fprintf(&b, "usage: relayctl %s %s\n\n%s\n", c.name, c.usage, c.help)
	own, common := c.flagLines()
	w := newTable(&b)
	if len(own) > 0 {
		fmt.Fprintln(w, "\nOptions:")
		for _, l := range own {
			fmt.Fprintln(w, "  "+l)
		}
	}
	fmt.Fprintln(w, "\nCommon options (flag, else environment, else default):")
	for _, l := range common {
		fmt.Fprintln(w, "  "+l)
	}
	w.Flush()
	return b.String()
}

func mainHelp() string {
	var b strings.Builder
	b.WriteString(`usage: relayctl [-v] COMMAND [options] [arguments]

relayctl merges the grants recorded at POP/IMAP login into the CDB that
tcpserver -x reads for qmail-smtpd, expires them, and lets an admin list,
add, revoke and check them.

Commands:
`)
	w := newTable(&b)
	for _, c := range commands {
		fmt.Fprintf(w, "  %s\t%s\n", c.name, c.short)
	}
	w.Flush()
	b.WriteString(`
"relayctl COMMAND --help" describes a command and its options.
Exit status: 0 ok, 100 permanent error (usage, syntax), 111 temporary error.
`)
	return b.String()
}
