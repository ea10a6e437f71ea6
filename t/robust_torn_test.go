package t

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/poprelay/poprelay/internal/wait"
)

// prober looks the CDB up over and over, in the file (as rules.Lookup on a
// fresh open, the way tcpserver opens it per connection) or through a real
// tcpserver -x, and checks every answer against the two the CDB may give.
type prober struct {
	mu     sync.Mutex
	n      int
	seen   [2]int   // answers equal to want[0], want[1]
	errs   []string // the first few bad answers
	nerrs  int
	mixed  int // file snapshots that were neither (a half or mixed file)
	stop   chan struct{}
	wg     sync.WaitGroup
	probes []string
	want   [2][]string
}

func newProber(probes []string, a, b []string) *prober {
	return &prober{stop: make(chan struct{}), probes: probes, want: [2][]string{a, b}}
}

func (p *prober) bad(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.nerrs++
	if len(p.errs) < 10 {
		p.errs = append(p.errs, fmt.Sprintf(format, args...))
	}
}

func (p *prober) ok(which int) {
	p.mu.Lock()
	p.n++
	p.seen[which]++
	p.mu.Unlock()
}

func (p *prober) stopped() bool {
	select {
	case <-p.stop:
		return true
	default:
		return false
	}
}

// file probes the CDB file: every snapshot must be all old or all new.
func (p *prober) file(path string) {
	p.wg.Go(func() {
		for !p.stopped() {
			got, err := view(path, p.probes)
			switch {
			case err != nil:
				p.bad("lookup in %s: %v", path, err)
			case slices.Equal(got, p.want[0]):
				p.ok(0)
			case slices.Equal(got, p.want[1]):
				p.ok(1)
			default:
				p.bad("lookup in %s: neither answer: %q", path, got)
			}
		}
	})
}

// tcp probes a real tcpserver -x running /usr/bin/env: each connection's
// RELAYCLIENT, RBLSMTPD and QMAILQUEUE must be those of one of the answers
// for its address, and no connection may be dropped (every rule allows).
func (p *prober) tcp(port int) {
	p.wg.Go(func() {
		for i := 0; !p.stopped(); i++ {
			k := i % len(p.probes)
			out, err := probeDial(p.probes[k], port)
			if err != nil {
				p.bad("connection from %s: %v", p.probes[k], err)
				continue
			}
			if out == "" {
				p.bad("connection from %s dropped", p.probes[k])
				continue
			}
			got := projectEnv(envFrom(out))
			switch got {
			case projectView(p.want[0][k]):
				p.ok(0)
			case projectView(p.want[1][k]):
				p.ok(1)
			default:
				p.bad("connection from %s: %s is neither %s nor %s", p.probes[k], got, projectView(p.want[0][k]), projectView(p.want[1][k]))
			}
			time.Sleep(2 * time.Millisecond) // pacing of the probes: spare the TIME_WAIT table
		}
	})
}

func (p *prober) finish() {
	close(p.stop)
	p.wg.Wait()
}

func (p *prober) String() string {
	return fmt.Sprintf("%d lookups (%d old-set, %d new-set answers), %d bad", p.n, p.seen[0], p.seen[1], p.nerrs)
}

// probeDial connects from src, closes its side and returns what the
// program wrote.
func probeDial(src string, port int) (string, error) {
	c, err := connectFrom(src, port)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(c)
	return string(b), err
}

var probeVars = []string{"QMAILQUEUE", "RBLSMTPD", "RELAYCLIENT"}

// projectEnv renders the variables of probeVars a program got.
func projectEnv(env map[string]string) string {
	var s []string
	for _, k := range probeVars {
		if v, ok := env[k]; ok {
			s = append(s, k+"="+v)
		}
	}
	return "allow " + strings.Join(s, " ")
}

// projectView renders a view line (see view) the same way.
func projectView(line string) string {
	f := strings.Fields(line)
	if len(f) == 0 || f[0] != "allow" {
		return line
	}
	env := map[string]string{}
	for _, kv := range f[1:] {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	return projectEnv(env)
}

// tornSite is a site with two spools, A and B, whose grants differ, and
// the answers of the CDB built from each.
type tornSite struct {
	*relayctlSite
	spoolB       string
	probes       []string
	wantA, wantB []string
	bytesA       []byte
	bytesB       []byte
}

const tornTail = "127.0.0.:allow,QMAILQUEUE=\"/var/qmail/bin/qq\"\n:allow\n"

func newTornSite(t *testing.T) *tornSite {
	t.Helper()
	s := &tornSite{relayctlSite: newRelayctlSite(t, bigRules(2000, tornTail))}
	s.spoolB = filepath.Join(s.dir, "spoolB")
	if err := os.Mkdir(s.spoolB, 0o755); err != nil {
		t.Fatal(err)
	}
	for i := range 12 {
		s.probes = append(s.probes, fmt.Sprintf("127.0.0.%d", 30+i))
	}
	// A grants probes 0-5, B grants 4-9, both 11; 10 is never granted.
	for i, ip := range s.probes {
		if i <= 5 || i == 11 {
			recordAt(t, s.spool, ip, "a")
		}
		if i >= 4 && i <= 9 || i == 11 {
			recordAt(t, s.spoolB, ip, "b")
		}
	}
	var err error
	for _, x := range []struct {
		spool string
		want  *[]string
		b     *[]byte
	}{{s.spool, &s.wantA, &s.bytesA}, {s.spoolB, &s.wantB, &s.bytesB}} {
		if r := s.run(t, "rebuild", "--spool", x.spool); r.code != 0 {
			t.Fatalf("rebuild: %d %s", r.code, r.stderr)
		}
		if *x.want, err = view(s.cdb, s.probes); err != nil {
			t.Fatal(err)
		}
		*x.b = s.mustCDB(t)
	}
	if slices.Equal(s.wantA, s.wantB) {
		t.Fatal("the two grant sets give the same answers")
	}
	return s
}

// TestRobustTornReads: a prober doing real tcpserver -x connections and
// rules.Lookup on the CDB file, while "relayctl rebuild" runs back to back
// (200 times; 1000 under make stress), alternating between two grant
// sets: every answer is the old or the new one, never an error, a dropped
// connection or a half file.
func TestRobustTornReads(t *testing.T) {
	n := sized(200, 1000)
	s := newTornSite(t)
	ts := startTcpserver(t, baseEnv(), []string{"-x", s.cdb, "-R", "-H"}, "/usr/bin/env")

	file := newProber(s.probes, s.wantA, s.wantB)
	file.file(s.cdb)
	file.file(s.cdb)
	tcp := newProber(s.probes, s.wantA, s.wantB)
	tcp.tcp(ts.Port)

	start := time.Now()
	for i := range n {
		spool := s.spool
		if i%2 == 0 {
			spool = s.spoolB
		}
		if r := s.run(t, "rebuild", "--spool", spool); r.code != 0 {
			t.Fatalf("rebuild %d: exit %d: %s", i, r.code, r.stderr)
		}
	}
	took := time.Since(start)
	file.finish()
	tcp.finish()
	t.Logf("%d rebuilds (%d static rules) in %v (%.1f ms each)", n, 2002, took.Round(time.Millisecond), float64(took.Microseconds())/1000/float64(n))
	t.Logf("file prober: %v", file)
	t.Logf("tcpserver prober: %v", tcp)
	for _, p := range []*prober{file, tcp} {
		for _, e := range p.errs {
			t.Error(e)
		}
		if p.seen[0] == 0 || p.seen[1] == 0 {
			t.Errorf("a prober never saw both answers (%v): it did not run during the rebuilds", p)
		}
	}
	if got := s.debris(t); len(got) != 0 {
		t.Errorf("temp files left beside the CDB: %q", got)
	}
}

// TestRobustTornReadsDetector is the control of TestRobustTornReads: the
// same prober against a writer that rewrites the CDB in place (cdbbuild
// with the CDB as its own temp file, as a careless script would run
// tcprules) must see a torn read; if it never does, the prober proves
// nothing.
func TestRobustTornReadsDetector(t *testing.T) {
	s := newTornSite(t)
	// The two merged CDBs as rules lines (cdbbuild -d), for cdbbuild.
	ruleText := func(b []byte) string {
		x := filepath.Join(s.dir, "x.cdb")
		os.WriteFile(x, b, 0o644)
		r := runCmd(t, baseEnv(), "", wait.Patience, bin("cdbbuild"), "-d", x)
		if r.code != 0 {
			t.Fatalf("cdbbuild -d: %d %s", r.code, r.stderr)
		}
		return r.stdout
	}
	texts := []string{ruleText(s.bytesA), ruleText(s.bytesB)}
	p := newProber(s.probes, s.wantA, s.wantB)
	p.file(s.cdb)
	i := 0
	for ; i < 500; i++ {
		r := runCmd(t, baseEnv(), texts[i%2], wait.Patience, bin("cdbbuild"), s.cdb, s.cdb)
		if r.code != 0 {
			t.Fatalf("cdbbuild: %d %s", r.code, r.stderr)
		}
		p.mu.Lock()
		torn := p.nerrs > 0
		p.mu.Unlock()
		if torn {
			break
		}
	}
	p.finish()
	t.Logf("in-place writer, %d writes: %v", i+1, p)
	if p.nerrs == 0 {
		t.Errorf("the prober saw no torn read in %d in-place rewrites: it cannot tell a torn CDB", i)
	} else {
		t.Logf("first torn read seen: %s", p.errs[0])
	}
}

// TestRobustTornReadsWatch: relayctl watch writes each CDB over the one it
// replaced the time before (atomic.Spare, two inodes in turn). While it
// publishes back and forth between two grant sets (100 times; 500 under
// make stress), real tcpserver connections and lookups in the file see
// one answer or the other, never a part; and a reader that keeps the CDB
// open across two publishes and more reads, to the end, the very bytes it
// opened (the spare is never written over while anything has it open).
func TestRobustTornReadsWatch(t *testing.T) {
	n := sized(100, 500)
	s := newRelayctlSite(t, bigRules(2000, tornTail))
	var probes []string
	for i := range 12 {
		probes = append(probes, fmt.Sprintf("127.0.0.%d", 30+i))
	}
	for _, ip := range probes[:6] {
		recordAt(t, s.spool, ip, "a")
	}
	flip := probes[8] // granted in B, not in A
	var want [2][]string
	for i := range want {
		if i == 1 {
			recordAt(t, s.spool, flip, "b")
		}
		if r := s.run(t, "rebuild"); r.code != 0 {
			t.Fatalf("rebuild: %d %s", r.code, r.stderr)
		}
		var err error
		if want[i], err = view(s.cdb, probes); err != nil {
			t.Fatal(err)
		}
	}
	if slices.Equal(want[0], want[1]) {
		t.Fatal("the two grant sets give the same answers")
	}
	ts := startTcpserver(t, baseEnv(), []string{"-x", s.cdb, "-R", "-H"}, "/usr/bin/env")
	start(t, s.env, false, bin("relayctl"), "watch")
	wait.For(t, "the watcher's first publish", func() bool {
		got, err := view(s.cdb, probes)
		return err == nil && slices.Equal(got, want[1])
	})

	file := newProber(probes, want[0], want[1])
	file.file(s.cdb)
	tcp := newProber(probes, want[0], want[1])
	tcp.tcp(ts.Port)
	// The holder opens the CDB, waits for two publishes, then reads the
	// file it holds again.
	var flips atomic.Int64
	var held, changed atomic.Int64
	holder := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-holder:
				return
			default:
			}
			f, err := os.Open(s.cdb)
			if err != nil {
				continue
			}
			first, err := io.ReadAll(f)
			from := flips.Load()
			for flips.Load() < from+2 {
				select {
				case <-holder:
					f.Close()
					return
				case <-time.After(time.Millisecond): // pacing of the holder's check
				}
			}
			again, err2 := io.ReadAll(io.NewSectionReader(f, 0, 1<<30))
			f.Close()
			held.Add(1)
			if err != nil || err2 != nil || !bytes.Equal(first, again) {
				changed.Add(1)
			}
		}
	}()

	for i := range n {
		which := i % 2 // 0: A, 1: B
		// A grant no probe asks about makes every publish's bytes
		// new, so a held file written over cannot go unnoticed.
		recordAt(t, s.spool, fmt.Sprintf("172.20.%d.%d", i/256, i%256), "x")
		if which == 1 {
			recordAt(t, s.spool, flip, "b")
		} else if err := os.Remove(filepath.Join(s.spool, flip)); err != nil {
			t.Fatal(err)
		}
		wait.For(t, "the CDB with the grant set flipped", func() bool {
			got, err := view(s.cdb, probes)
			return err == nil && slices.Equal(got, want[which])
		})
		flips.Add(1)
	}
	close(holder)
	<-done
	file.finish()
	tcp.finish()
	t.Logf("%d publishes; file prober: %v; tcpserver prober: %v; %d files held across two publishes, %d of them changed", n, file, tcp, held.Load(), changed.Load())
	for _, p := range []*prober{file, tcp} {
		for _, e := range p.errs {
			t.Error(e)
		}
		if p.seen[0] == 0 || p.seen[1] == 0 {
			t.Errorf("a prober never saw both answers (%v): it did not run during the publishes", p)
		}
	}
	if held.Load() == 0 || changed.Load() != 0 {
		t.Errorf("of %d files held open across two publishes, %d changed under the reader", held.Load(), changed.Load())
	}
}
