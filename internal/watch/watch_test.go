package watch

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/poprelay/poprelay/internal/atomic"
	"github.com/poprelay/poprelay/internal/cdb"
	"github.com/poprelay/poprelay/internal/confirmed"
	"github.com/poprelay/poprelay/internal/grant"
	"github.com/poprelay/poprelay/internal/merge"
	"github.com/poprelay/poprelay/internal/rules"
	"github.com/poprelay/poprelay/internal/wait"
)

// rig is a watcher on a temp spool and rules file, publishing a real CDB
// through the merge, as relayctl watch does.
type rig struct {
	dir, spool, rules, cdb string
	store                  *grant.Store
	w                      *Watcher
	mu                     sync.Mutex
	errs                   []string
	stats                  []Stats
	cancel                 context.CancelFunc
	done                   chan error
}

func newRig(t *testing.T, static string, maxAge time.Duration) *rig {
	t.Helper()
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "spool"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tcp.smtp"), []byte(static), 0o644); err != nil {
		t.Fatal(err)
	}
	return startRig(t, dir, maxAge, "")
}

// startRig starts a watcher on the spool and rules in dir, comparing the
// rules with the copy of the confirmed ones at confirmedPath ("" none).
func startRig(t *testing.T, dir string, maxAge time.Duration, confirmedPath string) *rig {
	t.Helper()
	r := &rig{
		dir:   dir,
		spool: filepath.Join(dir, "spool"),
		rules: filepath.Join(dir, "tcp.smtp"),
		cdb:   filepath.Join(dir, "tcp.smtp.cdb"),
	}
	r.store = grant.New(r.spool)
	w := New(Config{
		Spool:     r.spool,
		Rules:     r.rules,
		Confirmed: confirmedPath,
		MaxAge:    maxAge,
		Rescan:    time.Hour,
		Retry:     50 * time.Millisecond,
		Source:    r.store,
		Publish: func(static []rules.Rule, grants []grant.Grant, now time.Time) error {
			return atomic.WriteFile(r.cdb, 0o644, func(f *os.File) error {
				cw := cdb.NewWriter(f)
				if _, err := merge.Write(cw, static, grants, merge.Options{Now: now, MaxAge: maxAge}); err != nil {
					return err
				}
				return cw.Finish()
			})
		},
		Logf: t.Logf,
		Observe: func(s Stats) {
			r.mu.Lock()
			r.stats = append(r.stats, s)
			r.mu.Unlock()
		},
		OnError: func(kind string, err error) {
			r.mu.Lock()
			r.errs = append(r.errs, kind+": "+err.Error())
			r.mu.Unlock()
		},
	})
	r.w = w
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	r.done = make(chan error, 1)
	go func() { r.done <- w.Run(ctx) }()
	t.Cleanup(r.stop)
	return r
}

func (r *rig) stop() {
	if r.cancel != nil {
		r.cancel()
		<-r.done
		r.cancel = nil
	}
}

// lookup decides ip against the current CDB; "" if there is no CDB yet.
func (r *rig) lookup(t *testing.T, ip string) string {
	t.Helper()
	db, err := cdb.Open(r.cdb)
	if os.IsNotExist(err) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	d, err := rules.Lookup(db, rules.Query{IP: ip})
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if d.Deny {
		b.WriteString("deny")
	} else {
		b.WriteString("allow")
	}
	for _, v := range d.Environ() {
		b.WriteString(" " + v.Name + "=" + v.Value)
	}
	return b.String()
}

// waitFor polls until ip's decision satisfies ok.
func (r *rig) waitFor(t *testing.T, ip string, ok func(string) bool) string {
	t.Helper()
	var got string
	wait.Succeeds(t, ip+"'s decision", func() error {
		if got = r.lookup(t, ip); !ok(got) {
			return fmt.Errorf("decision is %q", got)
		}
		return nil
	})
	return got
}

func relays(s string) bool    { return strings.Contains(s, "RELAYCLIENT=") }
func notRelays(s string) bool { return s != "" && !relays(s) }

func TestLoginOpensAndExpiryCloses(t *testing.T) {
	r := newRig(t, "127.0.0.:allow,QMAILQUEUE=\"/q\"\n:allow\n", time.Hour)
	r.waitFor(t, "127.0.0.5", notRelays)

	// A login: the wrapper's write. Relaying opens within the debounce.
	// The store keeps whole seconds: expire at the start of a second,
	// far enough ahead for any machine to publish the grant first.
	now := time.Now()
	exp := now.Truncate(time.Second).Add(10 * time.Second)
	if err := r.store.Record(grant.Grant{IP: "127.0.0.5", User: "alice", Service: "pop3", Time: now, Expires: exp}); err != nil {
		t.Fatal(err)
	}
	got := r.waitFor(t, "127.0.0.5", relays)
	if !strings.Contains(got, "QMAILQUEUE=/q") {
		t.Errorf("static env lost: %q", got)
	}
	opened := time.Since(now)
	// No event at all: the expiry timer alone closes it, never before
	// its expiry. (How soon after is a measurement: logged only.)
	r.waitFor(t, "127.0.0.5", notRelays)
	late := time.Since(exp)
	if late < 0 {
		t.Errorf("grant closed %v before its expiry", -late)
	}
	t.Logf("opened %v after the login, closed %v after the expiry", opened, late)

	// A revoke (the file removed) closes at once.
	r.store.Record(grant.Grant{IP: "127.0.0.6", User: "bob", Service: "imap", Time: time.Now()})
	r.waitFor(t, "127.0.0.6", relays)
	if _, err := r.store.Remove("127.0.0.6"); err != nil {
		t.Fatal(err)
	}
	r.waitFor(t, "127.0.0.6", notRelays)
}

func TestBadRulesKeepLastGood(t *testing.T) {
	r := newRig(t, ":allow,WHO=\"good\"\n", time.Hour)
	r.waitFor(t, "127.0.0.9", func(s string) bool { return strings.Contains(s, "WHO=good") })

	// An editor saves a broken file by rename.
	tmp := r.rules + ".new"
	os.WriteFile(tmp, []byte(":allow,WHO=\"bad\n"), 0o644)
	if err := os.Rename(tmp, r.rules); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "the bad rules edit to be reported", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.errs) > 0
	})
	r.mu.Lock()
	if !strings.Contains(strings.Join(r.errs, "\n"), "tcp.smtp:1") {
		t.Errorf("error does not name file:line: %q", r.errs)
	}
	r.mu.Unlock()
	// Grants still publish, with the last good static rules.
	r.store.Record(grant.Grant{IP: "127.0.0.9", User: "carol", Service: "pop3", Time: time.Now()})
	got := r.waitFor(t, "127.0.0.9", relays)
	if !strings.Contains(got, "WHO=good") {
		t.Errorf("last good rules not kept: %q", got)
	}
	// A fixed file is picked up.
	os.WriteFile(r.rules, []byte(":allow,WHO=\"fixed\"\n"), 0o644)
	r.waitFor(t, "127.0.0.9", func(s string) bool { return strings.Contains(s, "WHO=fixed") && relays(s) })
}

func TestSpoolDeletedAndRecreated(t *testing.T) {
	r := newRig(t, ":allow\n", time.Hour)
	r.store.Record(grant.Grant{IP: "127.0.0.20", User: "dave", Service: "pop3", Time: time.Now()})
	r.waitFor(t, "127.0.0.20", relays)

	if err := os.RemoveAll(r.spool); err != nil {
		t.Fatal(err)
	}
	r.waitFor(t, "127.0.0.20", notRelays)
	if err := os.Mkdir(r.spool, 0o755); err != nil {
		t.Fatal(err)
	}
	// A login at once: the watcher adds the new spool's watch and scans
	// it when it learns of the spool, so a grant written before or after
	// that moment is seen.
	r.store.Record(grant.Grant{IP: "127.0.0.21", User: "erin", Service: "pop3", Time: time.Now()})
	r.waitFor(t, "127.0.0.21", relays)
}

func TestStormIsCoalesced(t *testing.T) {
	r := newRig(t, ":allow\n", time.Hour)
	r.waitFor(t, "127.0.1.1", notRelays)
	r.mu.Lock()
	before := len(r.stats)
	r.mu.Unlock()
	for i := 1; i <= 200; i++ {
		r.store.Record(grant.Grant{IP: "127.0.1." + strconv.Itoa(i), User: "u", Service: "pop3", Time: time.Now()})
	}
	r.waitFor(t, "127.0.1.200", relays)
	for i := 1; i <= 200; i++ {
		if got := r.lookup(t, "127.0.1."+strconv.Itoa(i)); !relays(got) {
			t.Fatalf("127.0.1.%d: %q", i, got)
		}
	}
	r.mu.Lock()
	n := len(r.stats) - before
	r.mu.Unlock()
	if n >= 200 {
		t.Errorf("%d rebuilds for 200 logins: not coalesced", n)
	}
	t.Logf("200 logins → %d rebuilds", n)
}

// A rules file truncated (an editor between truncating and rewriting it)
// is held back: grants still publish with the last good rules, until a
// Reload confirms it. A file rewritten within the settle time is never
// seen empty at all.
func TestShrunkRulesHeldBack(t *testing.T) {
	r := newRig(t, "10.:deny\n127.0.0.1:allow,RELAYCLIENT=\"\"\n:allow\n", time.Hour)
	r.waitFor(t, "10.0.0.1", func(s string) bool { return s == "deny" })
	if err := os.Truncate(r.rules, 0); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "a warning about the emptied rules file", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return strings.Contains(strings.Join(r.errs, "\n"), "has 0 rules where the CDB was built from 3")
	})
	r.store.Record(grant.Grant{IP: "127.0.0.9", User: "carol", Service: "pop3", Time: time.Now()})
	r.waitFor(t, "127.0.0.9", relays)
	if got := r.lookup(t, "10.0.0.1"); got != "deny" {
		t.Errorf("static deny lost while the empty file is held back: %q", got)
	}
	r.w.Reload()
	r.waitFor(t, "10.0.0.1", func(s string) bool { return s == "allow" })
}

// TestShrunkRulesHeldAcrossWriters: with the copy of the confirmed rules
// on disk (Config.Confirmed), shared with every other writer, an emptied
// rules file stays held back whoever else publishes: another writer
// holding it back too and replacing the CDB (cron's relayctl expire)
// confirms nothing; one that confirms it (relayctl rebuild saving the
// copy) does; a watcher restarted over an emptied file holds it back
// from its first publish.
func TestShrunkRulesHeldAcrossWriters(t *testing.T) {
	t.Parallel()
	const static = "10.:deny\n127.0.0.1:allow,RELAYCLIENT=\"\"\n:allow\n"
	dir := t.TempDir()
	copyPath := filepath.Join(dir, "tcp.smtp.cdb.rules")
	os.Mkdir(filepath.Join(dir, "spool"), 0o755)
	os.WriteFile(filepath.Join(dir, "tcp.smtp"), []byte(static), 0o644)
	r := startRig(t, dir, time.Hour, copyPath)
	r.waitFor(t, "10.0.0.1", func(s string) bool { return s == "deny" })
	if _, err := confirmed.Read(copyPath); err != nil {
		t.Fatalf("the first read saved no copy: %v", err)
	}
	said := func(s string) bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return strings.Contains(strings.Join(r.errs, "\n"), s)
	}
	other := func(confirm bool) confirmed.Result {
		t.Helper()
		text, _ := os.ReadFile(r.rules)
		rs, err := rules.Parse(strings.NewReader(string(text)), r.rules)
		if err != nil {
			t.Fatal(err)
		}
		res, err := (&confirmed.Guard{Path: copyPath, Source: r.rules}).Apply(text, rs, confirm)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	os.Truncate(r.rules, 0)
	wait.For(t, "the emptied file held back", func() bool { return said("has 0 rules where the CDB was built from 3") })
	// Another writer holds it back too, and publishes the CDB.
	if res := other(false); !res.Held || len(res.Rules) != 3 {
		t.Fatalf("another writer: %+v", res)
	}
	before, _ := os.ReadFile(r.cdb)
	atomic.WriteFile(r.cdb, 0o644, func(f *os.File) error { _, err := f.Write(before); return err })
	r.store.Record(grant.Grant{IP: "127.0.0.9", User: "carol", Service: "pop3", Time: time.Now()})
	r.waitFor(t, "127.0.0.9", relays)
	if got := r.lookup(t, "10.0.0.1"); got != "deny" {
		t.Errorf("another writer's CDB was taken as a confirmation: 10.0.0.1 is %q", got)
	}
	// A writer that confirms it.
	if res := other(true); res.Held {
		t.Fatalf("confirming writer: %+v", res)
	}
	r.waitFor(t, "10.0.0.1", func(s string) bool { return s == "allow" })
	r.waitFor(t, "127.0.0.9", relays)

	// The full file back and confirmed, then emptied while no watcher
	// runs: the next one holds it back from the start.
	r.stop()
	os.WriteFile(r.rules, []byte(static), 0o644)
	other(false)
	os.Truncate(r.rules, 0)
	os.Remove(r.cdb)
	r2 := startRig(t, dir, time.Hour, copyPath)
	r2.waitFor(t, "10.0.0.1", func(s string) bool { return s == "deny" })
	r2.waitFor(t, "127.0.0.9", relays)
	r2.w.Reload()
	r2.waitFor(t, "10.0.0.1", func(s string) bool { return s == "allow" })
	if res := other(false); res.Held {
		t.Errorf("after the watcher's reload another writer still holds it back: %+v", res)
	}
}

// sharer records what a watcher shares.
type sharer struct {
	mu  sync.Mutex
	log []string
}

func (s *sharer) add(e string) {
	s.mu.Lock()
	s.log = append(s.log, e)
	s.mu.Unlock()
}
func (s *sharer) Sync(live []grant.Grant, now time.Time) { s.add(fmt.Sprintf("sync %d", len(live))) }
func (s *sharer) Put(g grant.Grant)                      { s.add("put " + g.IP) }
func (s *sharer) Remove(ip string)                       { s.add("remove " + ip) }

func (s *sharer) has(e string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range s.log {
		if l == e {
			return true
		}
	}
	return false
}

// TestShareChanges: the Sharer (the etcd publisher) gets every live grant
// at the start and on a reload, and after a login or a revoke only that
// grant, never the whole list again: a publish under a storm costs it the
// changes.
func TestShareChanges(t *testing.T) {
	dir := t.TempDir()
	spool := filepath.Join(dir, "spool")
	if err := os.Mkdir(spool, 0o755); err != nil {
		t.Fatal(err)
	}
	store := grant.New(spool)
	for _, ip := range []string{"192.0.2.1", "192.0.2.2"} {
		if err := store.Record(grant.Grant{IP: ip, User: "u", Service: "pop3"}); err != nil {
			t.Fatal(err)
		}
	}
	sh := &sharer{}
	w := New(Config{
		Spool: spool, MaxAge: time.Hour, Rescan: time.Hour, Source: store, Share: sh, Logf: t.Logf,
		Publish: func([]rules.Rule, []grant.Grant, time.Time) error { return nil },
		Observe: func(st Stats) { sh.add("publish " + st.Reason) },
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() { cancel(); <-done }()
	wait.For(t, "every grant shared at the start", func() bool { return sh.has("sync 2") })
	if err := store.Record(grant.Grant{IP: "192.0.2.3", User: "u", Service: "imap"}); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "the login shared", func() bool { return sh.has("put 192.0.2.3") })
	if _, err := store.Remove("192.0.2.1"); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "the revoke shared", func() bool { return sh.has("remove 192.0.2.1") })
	if got, want := sh.shared(), "sync 2, put 192.0.2.3, remove 192.0.2.1"; got != want {
		t.Errorf("shared %s, want %s", got, want)
	}
	// A grant that ends in a second: its expiry publishes, and shares
	// nothing (the mirrors drop it themselves). (Put, or Remove if the
	// machine took longer than the second to see the login.)
	if err := store.Record(grant.Grant{IP: "192.0.2.4", User: "admin", Service: "manual", Expires: time.Now().Add(time.Second)}); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "the expiry's publish", func() bool { return sh.has("publish expiry") })
	got := sh.shared()
	if got != "sync 2, put 192.0.2.3, remove 192.0.2.1, put 192.0.2.4" && got != "sync 2, put 192.0.2.3, remove 192.0.2.1, remove 192.0.2.4" {
		t.Errorf("after the expiry, shared %s", got)
	}
	w.Reload()
	wait.For(t, "every grant shared again on a reload", func() bool { return sh.has("publish reload") })
	if after := sh.shared(); after != got+", sync 2" {
		t.Errorf("after a reload, shared %s", after)
	}
}

// shared is what was shared so far, in order (the publishes left out).
func (s *sharer) shared() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, l := range s.log {
		if !strings.HasPrefix(l, "publish ") {
			out = append(out, l)
		}
	}
	return strings.Join(out, ", ")
}

// TestRulesTryAgain: a rules read that failed for a passing reason
// (ErrTryAgain: relayctl's lock was busy) is made again at the next
// publish, not left until the rules file changes again.
func TestRulesTryAgain(t *testing.T) {
	dir := t.TempDir()
	spool := filepath.Join(dir, "spool")
	os.Mkdir(spool, 0o755)
	store := grant.New(spool)
	parse := func(text string) []rules.Rule {
		rs, err := rules.Parse(strings.NewReader(text), "tcp.smtp")
		if err != nil {
			t.Fatal(err)
		}
		return rs
	}
	var mu sync.Mutex
	calls, published := 0, -1
	w := New(Config{
		Spool: spool, Rules: filepath.Join(dir, "tcp.smtp"), MaxAge: time.Hour, Rescan: time.Hour, Source: store, Logf: t.Logf,
		LoadRules: func(bool) (confirmed.Result, error) {
			mu.Lock()
			defer mu.Unlock()
			calls++
			switch calls {
			case 1:
				return confirmed.Result{Rules: parse(":deny\n")}, nil
			case 2:
				return confirmed.Result{}, fmt.Errorf("unable to lock: busy: %w", ErrTryAgain)
			}
			return confirmed.Result{Rules: parse("10.:deny\n127.:deny\n:allow\n")}, nil
		},
		Publish: func(static []rules.Rule, _ []grant.Grant, _ time.Time) error {
			mu.Lock()
			published = len(static)
			mu.Unlock()
			return nil
		},
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() { cancel(); <-done }()
	state := func() (int, int) { mu.Lock(); defer mu.Unlock(); return calls, published }
	wait.For(t, "the first publish", func() bool { _, p := state(); return p == 1 })
	w.Reload()
	wait.For(t, "the failed read", func() bool { c, _ := state(); return c >= 2 })
	store.Record(grant.Grant{IP: "192.0.2.1", User: "u", Service: "pop3"})
	wait.For(t, "the rules read again at the next publish", func() bool { _, p := state(); return p == 3 })
}
