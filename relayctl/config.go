package main

import (
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/poprelay/poprelay/internal/grant"
	"github.com/poprelay/poprelay/internal/merge"
	"github.com/poprelay/poprelay/internal/never"
	"github.com/poprelay/poprelay/internal/share"
)

// setting is one configurable value: a flag, its environment variable and
// its default, and where the effective value came from.
type setting struct {
	name, env, def, help string
	isBool               bool

	fromFlag bool   // set on the command line
	flagVal  string // its value then
	value    string // effective value
	source   string // "flag --name", "env NAME", "default"
}

// flag.Value, so the flag set records whether the flag was given.
func (s *setting) String() string { return s.flagVal }
func (s *setting) Set(v string) error {
	s.fromFlag, s.flagVal = true, v
	return nil
}
func (s *setting) IsBoolFlag() bool { return s.isBool }

// config is the effective configuration of one run.
type config struct {
	spool, rules, cdb, maxAge, never, keepRBL, remoteInfo, mapped, verbose *setting
	lockTimeout, maxPerUser, maxGrants                                     *setting

	Spool      string
	Rules      string // "" means no static rules
	CDB        string
	MaxAge     time.Duration
	Never      string // a never-grant file read after the default one; "" for none
	KeepRBL    bool
	RemoteInfo bool
	Mapped     bool
	Verbose    bool
	// LockTimeout bounds the wait for the CDB's lock.
	LockTimeout time.Duration
	// MaxPerUser and MaxGrants are the caps on the grants published
	// (merge.Caps); 0 means no cap.
	MaxPerUser, MaxGrants int
}

func (c *config) all() []*setting {
	return []*setting{c.spool, c.rules, c.cdb, c.maxAge, c.never, c.keepRBL, c.remoteInfo, c.mapped, c.maxPerUser, c.maxGrants, c.verbose, c.lockTimeout}
}

// Lock is the lock file that serializes writers of the CDB.
func (c *config) Lock() string { return c.CDB + ".lock" }

// newConfig registers the common options on fset.
func newConfig(fset *flag.FlagSet) *config {
	c := &config{
		spool:      &setting{name: "spool", env: "POPRELAY_SPOOL", def: grant.DefaultDir, help: "the grant spool directory"},
		rules:      &setting{name: "rules", env: "POPRELAY_RULES", def: "/etc/tcp.smtp", help: `the static rules file (tcprules syntax); "" for none`},
		cdb:        &setting{name: "cdb", env: "POPRELAY_CDB", def: "/etc/tcp.smtp.cdb", help: "the CDB tcpserver -x reads"},
		maxAge:     &setting{name: "max-age", env: "POPRELAY_MAXAGE", def: "1h", help: "how long a login grants relaying (Go duration, or seconds)"},
		never:      &setting{name: "never", env: "POPRELAY_NEVER", def: "", help: "a never-grant `FILE` read in addition to the built-in set and " + never.DefaultFile + " (if it exists)"},
		keepRBL:    &setting{name: "keep-rbl", env: "POPRELAY_KEEPRBL", def: "false", isBool: true, help: `do not add RBLSMTPD="" to grant records`},
		remoteInfo: &setting{name: "remoteinfo", env: "POPRELAY_REMOTEINFO", def: "false", isBool: true, help: "set TCPREMOTEINFO to the user in grant records"},
		mapped:     &setting{name: "mapped", env: "POPRELAY_MAPPED", def: "false", isBool: true, help: "also key IPv4 grants as ::ffff:a.b.c.d, for Debian's IPv6 tcpserver run with -6"},
		maxPerUser: &setting{name: "max-per-user", env: "POPRELAY_MAXPERUSER", def: strconv.Itoa(merge.DefaultMaxPerUser),
			help: "publish at most `N` grants of one user, the newest; 0 for no cap"},
		maxGrants: &setting{name: "max-grants", env: "POPRELAY_MAXGRANTS", def: strconv.Itoa(merge.DefaultMaxGrants),
			help: "publish at most `N` grants in all (without a user first, then the newest), with a warning at each rebuild over it; 0 for no cap"},
		verbose:     &setting{name: "v", env: "POPRELAY_VERBOSE", def: "false", isBool: true, help: "say what was done"},
		lockTimeout: &setting{name: "lock-timeout", env: "POPRELAY_LOCK_TIMEOUT", def: "30s", help: "give up (exit 111) when the CDB's lock is held longer than `DUR`"},
	}
	for _, s := range c.all() {
		fset.Var(s, s.name, s.help)
	}
	return c
}

// resolve computes the effective values: flag, else environment, else
// default.
func (c *config) resolve(lookup func(string) (string, bool)) error {
	for _, s := range c.all() {
		switch v, ok := lookup(s.env); {
		case s.fromFlag:
			s.value, s.source = s.flagVal, "flag -"+s.name
			if len(s.name) > 1 {
				s.source = "flag --" + s.name
			}
		case ok:
			s.value, s.source = v, "env "+s.env
		default:
			s.value, s.source = s.def, "default"
		}
	}
	c.Spool, c.Rules, c.CDB, c.Never = c.spool.value, c.rules.value, c.cdb.value, c.never.value
	if c.Spool == "" {
		return usagef("the spool (%s) must not be empty", c.spool.source)
	}
	if c.CDB == "" {
		return usagef("the CDB (%s) must not be empty", c.cdb.source)
	}
	d, err := parseDuration(c.maxAge.value)
	if err != nil {
		return usagef("bad max age %q (%s): %v", c.maxAge.value, c.maxAge.source, err)
	}
	c.MaxAge = d
	if c.LockTimeout, err = parseDuration(c.lockTimeout.value); err != nil {
		return usagef("bad lock timeout %q (%s): %v", c.lockTimeout.value, c.lockTimeout.source, err)
	}
	for _, n := range []struct {
		s   *setting
		dst *int
	}{{c.maxPerUser, &c.MaxPerUser}, {c.maxGrants, &c.MaxGrants}} {
		if *n.dst, err = parseCount(n.s.value); err != nil {
			return usagef("bad %s %q (%s): %v", n.s.name, n.s.value, n.s.source, err)
		}
	}
	for _, b := range []struct {
		s   *setting
		dst *bool
	}{{c.keepRBL, &c.KeepRBL}, {c.remoteInfo, &c.RemoteInfo}, {c.mapped, &c.Mapped}, {c.verbose, &c.Verbose}} {
		v, err := parseBool(b.s.value)
		if err != nil {
			return usagef("bad %s %q (%s): want true or false", b.s.name, b.s.value, b.s.source)
		}
		*b.dst = v
	}
	return nil
}

// parseDuration reads a positive Go duration ("90m", "2h") or a number of
// seconds ("3600", as envdir files often hold).
func parseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	var d time.Duration
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n > int64(1<<62/time.Second) {
			return 0, errors.New("too long")
		}
		d = time.Duration(n) * time.Second
	} else if d, err = time.ParseDuration(s); err != nil {
		return 0, errors.New("not a duration like 1h or 90m, nor seconds")
	}
	if d <= 0 {
		return 0, errors.New("must be positive")
	}
	return d, nil
}

// parseCount reads a cap: a number from 0 (no cap) up.
func parseCount(s string) (int, error) {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 31)
	if err != nil {
		return 0, errors.New("want a number, 0 for no cap")
	}
	return int(n), nil
}

// caps is the caps setting, for merge.
func (c *config) caps() merge.Caps {
	return merge.Caps{PerUser: c.MaxPerUser, Total: c.MaxGrants}
}

// parseBool reads a flag or variable value; empty is false (envdir sets
// an empty variable from an empty file).
func parseBool(s string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "0", "false", "no", "off":
		return false, nil
	case "1", "true", "yes", "on":
		return true, nil
	}
	return false, errors.New("not a boolean")
}

// loadNever returns the never-grant set as checkpassword-wrap builds it:
// the built-ins, plus /etc/poprelay/never if it exists, plus the file of
// --never (which must exist). A setting can add entries, never remove the
// default file's.
func (c *config) loadNever() (*never.Set, error) {
	set := never.Default()
	for _, p := range c.neverFiles() {
		f, err := never.Open(p)
		if err != nil {
			if p == never.DefaultFile && c.Never != never.DefaultFile && errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return nil, unable("read never-grant file "+p, err)
		}
		err = set.Parse(f, p)
		f.Close()
		if errors.Is(err, never.ErrSyntax) {
			return nil, perm("%v", err)
		}
		if err != nil {
			return nil, unable("read never-grant file "+p, err)
		}
	}
	return set, nil
}

// neverFiles are the never-grant files read, in order.
func (c *config) neverFiles() []string {
	files := []string{never.DefaultFile}
	if c.Never != "" && c.Never != never.DefaultFile {
		files = append(files, c.Never)
	}
	return files
}

// neverNote describes the never-grant files for config.
func (c *config) neverNote() string {
	var parts []string
	for _, p := range c.neverFiles() {
		if _, err := os.Stat(p); err != nil {
			p += " (absent)"
		}
		parts = append(parts, p)
	}
	return "built-ins + " + strings.Join(parts, " + ")
}

var configCmd = &command{
	name:  "config",
	short: "every effective setting and where it came from",
	usage: "[options]",
	help: `Print every effective setting, its value and where it came from: a flag,
the environment, or the default. The lock file is derived from --cdb.
The watcher's own settings (metrics, debounce, max-delay, rescan,
settle) are shown as relayctl watch reads them from the environment. The
etcd rows end with the effective security of the connection to etcd: TLS,
client certificate, etcd user, and a warning for each way the
configuration lets others open the relay. A password is never shown.`,
	flags: func(fs *flag.FlagSet) func(*env, []string) error {
		etcdFlags := share.RegisterFlags(fs)
		return func(e *env, args []string) error {
			if len(args) > 0 {
				return usagef("no arguments expected")
			}
			ecfg, err := etcdFlags.Resolve(e.getenv)
			if err != nil {
				return perm("%v", err)
			}
			c := e.cfg
			rows := [][3]string{}
			for _, s := range c.all() {
				v := s.value
				switch s {
				case c.maxAge:
					v = c.MaxAge.String()
				case c.lockTimeout:
					v = c.LockTimeout.String()
				case c.maxPerUser, c.maxGrants:
					n := c.MaxPerUser
					if s == c.maxGrants {
						n = c.MaxGrants
					}
					v = strconv.Itoa(n)
					if n == 0 {
						v = "0 (no cap)"
					}
				case c.never:
					v = c.neverNote()
				case c.rules:
					if v == "" {
						v = `"" (no static rules)`
					}
				case c.keepRBL, c.remoteInfo, c.mapped, c.verbose:
					b, _ := parseBool(v)
					v = strconv.FormatBool(b)
				}
				rows = append(rows, [3]string{s.name, v, s.source})
			}
			rows = append(rows, [3]string{"lock", c.Lock(), "derived from cdb"})
			rows = append(rows, [3]string{"state", c.statePath(), "derived from cdb"})
			rows = append(rows, [3]string{"confirmed-rules", c.confirmedPath(), "derived from cdb"})
			rows = append(rows, e.watchRows()...)
			for _, st := range etcdFlags.Settings() {
				rows = append(rows, [3]string{st.Name, st.Value, st.Source})
			}
			rows = append(rows, etcdSecurity(ecfg)...)
			w := newTable(e.stdout)
			fmt.Fprintln(w, "SETTING\tVALUE\tSOURCE")
			for _, r := range rows {
				fmt.Fprintf(w, "%s\t%s\t%s\n", r[0], r[1], r[2])
			}
			return w.Flush()
		}
	},
}

// etcdSecurity is config's rows on the security of the connection to etcd.
func etcdSecurity(cfg share.Config) [][3]string {
	if !cfg.Enabled() {
		return nil
	}
	sec := cfg.Security()
	cert, user := "no", "none"
	if sec.ClientCert != "" {
		cert = "yes: " + sec.ClientCert
	}
	switch {
	case sec.User != "":
		user = sec.User
		if cfg.PassFile != "" {
			user += ", password from " + cfg.PassFile
		}
	case sec.ClientCert != "":
		user = "the client certificate (etcd takes its CN as the user)"
	}
	rows := [][3]string{
		{"etcd-tls", sec.TLS, "derived from etcd-endpoints, etcd-ca, etcd-cert"},
		{"etcd-client-cert", cert, "derived from etcd-cert"},
		{"etcd-auth", user, "derived from etcd-user"},
	}
	for _, w := range sec.Warnings {
		rows = append(rows, [3]string{"etcd-warning", w, "derived"})
	}
	return rows
}

// watchRows are config's rows for the watcher's own settings, as relayctl
// watch would resolve them from the environment (its flags apply to it
// alone).
func (e *env) watchRows() [][3]string {
	m, ok := e.lookup("POPRELAY_METRICS")
	src := "env POPRELAY_METRICS (watch)"
	if !ok || m == "" {
		m, src = "off", "default (watch)"
	}
	rows := [][3]string{{"metrics", m, src}}
	for _, d := range watchTimes {
		v, src := d.def.String(), "default (watch)"
		if s, ok := e.lookup(d.env); ok && s != "" {
			src = "env " + d.env + " (watch)"
			if t, err := parseDuration(s); err == nil {
				v = t.String()
			} else {
				v = fmt.Sprintf("%q: %v", s, err)
			}
		}
		rows = append(rows, [3]string{d.name, v, src})
	}
	return rows
}
