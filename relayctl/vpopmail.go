package main

import (
	"os"
	"os/user"
	"path/filepath"
	"time"
)

// vpopmail's own POP-before-SMTP (configure --enable-roaming-users, the
// default): at every login vchkpw (open_smtp_relay) rewrites
// ~vpopmail/etc/open-smtp with the client's address and runs tcprules to
// rebuild the tcpserver CDB from its tcp.smtp and open-smtp, and
// clearopensmtp, from cron, rewrites it again when records expire. Where
// that CDB is also poprelay's, each vpopmail rebuild replaces poprelay's
// grants (and the admin's rules with vpopmail's copy). An open-smtp file
// written within the grant lifetime says that machinery is live; one
// left behind from before the switch ages out of the warning.

// defaultOpenSMTP is vpopmail's open-smtp file: etc/open-smtp in the
// home of the user vpopmail, or "" without that user.
func defaultOpenSMTP() string {
	u, err := user.Lookup("vpopmail")
	if err != nil || u.HomeDir == "" {
		return ""
	}
	return filepath.Join(u.HomeDir, "etc", "open-smtp")
}

// warnVpopmail says, in one line, that vpopmail's roaming users are on.
func (e *env) warnVpopmail() {
	find := e.openSMTP
	if find == nil {
		find = defaultOpenSMTP
	}
	path := find()
	if path == "" {
		return
	}
	fi, err := os.Stat(path)
	if err != nil || !fi.Mode().IsRegular() {
		return
	}
	age := e.now().Sub(fi.ModTime())
	if age > e.cfg.MaxAge {
		return
	}
	if age < 0 {
		age = 0
	}
	e.logf("warning: vpopmail's roaming users are on: %s was written %s ago, and vchkpw rebuilds the CDB from it with tcprules at every login, replacing poprelay's grants; rebuild vpopmail with --disable-roaming-users (relayctl import --vpopmail %s takes its grants over)", path, age.Round(time.Second), path)
}
