package t

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/poprelay/poprelay/internal/cdb"
	"github.com/poprelay/poprelay/internal/etcdtest"
	"github.com/poprelay/poprelay/internal/wait"
)

// The scale benchmarks (make bench-scale): each figure is a ratio, in one
// run, against the real tcprules compiling the same records from a text
// file (the static rules plus one exact line per grant).

// scaleStatic is the static rules file of the scale benchmarks: 1000
// lines, prefixes with settings, a few denies, exact addresses, a default.
func scaleStatic() string {
	var b strings.Builder
	for i := range 999 {
		switch {
		case i%100 == 0:
			fmt.Fprintf(&b, "172.%d.%d.:allow,QMAILQUEUE=\"/var/qmail/bin/qq\",DATABYTES=\"%d\"\n", 20+i/256%8, i%256, i)
		case i%100 == 1:
			fmt.Fprintf(&b, "192.168.%d.:deny\n", i%256)
		default:
			fmt.Fprintf(&b, "172.%d.%d.%d:allow,RELAYCLIENT=\"\"\n", 28+i/65536%4, i/256%256, i%256)
		}
	}
	b.WriteString(":allow\n")
	return b.String()
}

// grantIP is the address of standing grant i.
func grantIP(i int) string {
	return fmt.Sprintf("%d.%d.%d.%d", 11+i>>24&15, i>>16&255, i>>8&255, i&255)
}

// writeScaleSpool writes n grant files straight into spool, in the store's
// format, and returns the equivalent tcprules input: static, then one
// exact line per grant.
func writeScaleSpool(t testing.TB, spool, static string, n int) string {
	t.Helper()
	dir := filepath.Dir(spool)
	if spool == "" {
		dir = t.TempDir()
	}
	eq := filepath.Join(dir, "equivalent")
	f, err := os.Create(eq)
	if err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriter(f)
	w.WriteString(static)
	now := time.Now().Unix()
	for i := range n {
		ip := grantIP(i)
		c := fmt.Sprintf("user=user%d@example.com\nservice=pop3\ntime=%d\n", i, now-int64(i%1800))
		if spool != "" {
			if err := os.WriteFile(filepath.Join(spool, ip), []byte(c), 0o640); err != nil {
				t.Fatal(err)
			}
		}
		fmt.Fprintf(w, "%s:allow,RELAYCLIENT=\"\",RBLSMTPD=\"\"\n", ip)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	// The setup's writes (a grant file each) go to disk now, not
	// during what is measured next: the kernel's writeback of 100k new
	// inodes, due some 30 s later, would stall the publishes' fsyncs
	// and the tcprules floor at random.
	syscall.Sync()
	return eq
}

// run runs a command and returns its wall time and peak RSS in MB.
func measure(t testing.TB, env []string, stdin string, name string, args ...string) (time.Duration, float64) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = env
	if stdin != "" {
		f, err := os.Open(stdin)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		cmd.Stdin = f
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	t0 := time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %q: %v: %s", name, args, err, stderr.String())
	}
	d := time.Since(t0)
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	return d, float64(ru.Maxrss) / 1024
}

// best is the least of runs of f.
func best(runs int, f func() (time.Duration, float64)) (time.Duration, float64) {
	var d time.Duration
	var rss float64
	for i := range runs {
		x, r := f()
		if i == 0 || x < d {
			d = x
		}
		rss = max(rss, r)
	}
	return d, rss
}

// tcprulesTime is the real tcprules compiling the text file eq.
func tcprulesTime(t testing.TB, eq string, runs int) (time.Duration, float64) {
	t.Helper()
	need(t, "tcprules")
	dir := t.TempDir()
	return best(runs, func() (time.Duration, float64) {
		return measure(t, baseEnv(), eq, "tcprules", filepath.Join(dir, "eq.cdb"), filepath.Join(dir, "eq.tmp"))
	})
}

func loadNote(t testing.TB) {
	b, _ := os.ReadFile("/proc/loadavg")
	t.Logf("machine: %d CPUs, load average %s", numCPU(), strings.Join(strings.Fields(string(b))[:3], " "))
}

func numCPU() int {
	b, _ := os.ReadFile("/proc/cpuinfo")
	return strings.Count(string(b), "\nprocessor") + 1
}

// scaleSizes is POPRELAY_SCALE_SIZES (e.g. "100000,1000000") or def.
func scaleSizes(def ...int) []int {
	v := os.Getenv("POPRELAY_SCALE_SIZES")
	if v == "" {
		return def
	}
	var out []int
	for _, f := range strings.Split(v, ",") {
		if n, err := strconv.Atoi(f); err == nil {
			out = append(out, n)
		}
	}
	return out
}

// scaleSite is a site for up to 1M grants: above the default total cap
// (--max-grants 100000), which the benchmarks raise.
func scaleSite(t *testing.T, static string) *relayctlSite {
	s := newRelayctlSite(t, static)
	s.env = append(s.env, "POPRELAY_MAXGRANTS=2000000")
	return s
}

// TestScaleRebuild: relayctl rebuild as a new process at 100k and 1M
// grants, against tcprules on the equivalent text file: with the spool
// unchanged since the last run, after 100 logins since (their files
// read, not yet folded), and the same without the state file; each the
// best of three runs, as tcprules' time is. The 100k
// site starts as the last release left it, a grant file each (the first
// run folds and removes them: the upgrade, once); the 1M site starts
// from relayctl import of vpopmail's open-smtp.
func TestScaleRebuild(t *testing.T) {
	benchOnly(t)
	loadNote(t)
	static := scaleStatic()
	for _, n := range scaleSizes(100_000, 1_000_000) {
		s := scaleSite(t, static)
		rc := func() (time.Duration, float64) { return measure(t, s.env, "", bin("relayctl"), "rebuild") }
		var eq, setup string
		if n <= 100_000 {
			eq = writeScaleSpool(t, s.spool, static, n)
			d, rss := rc()
			setup = fmt.Sprintf("the upgrade's first run (every file read, folded and removed) %v, %.0f MB", d.Round(time.Millisecond), rss)
		} else {
			eq = writeScaleSpool(t, "", static, n)
			open := writeOpenSMTP(t, n)
			d, rss := measure(t, s.env, "", bin("relayctl"), "import", "--vpopmail", open)
			setup = fmt.Sprintf("import of %d open-smtp lines %v, %.0f MB", n, d.Round(time.Millisecond), rss)
			os.Remove(open)
		}
		syscall.Sync()
		floor, floorRSS := tcprulesTime(t, eq, 3)
		// Each figure is the best of three runs, as tcprules' is.
		warm, warmRSS := best(3, rc)
		// 100 logins since the last run, new ones for each run.
		round := 0
		more, moreRSS := best(3, func() (time.Duration, float64) {
			for i := range 100 {
				os.WriteFile(filepath.Join(s.spool, fmt.Sprintf("198.18.%d.%d", round, i)), []byte(fmt.Sprintf("user=new%d\nservice=pop3\ntime=%d\n", i, time.Now().Unix())), 0o640)
			}
			round++
			return rc()
		})
		cold, coldRSS := best(3, func() (time.Duration, float64) {
			os.Remove(s.cdb + ".state")
			return rc()
		})
		t.Logf("%d grants: tcprules %v (%.0f MB); relayctl rebuild, spool unchanged %v (%.1fx, %.0f MB), after 100 logins %v (%.1fx, %.0f MB), the same without the state file %v (%.1fx, %.0f MB); setup: %s",
			n, floor.Round(time.Millisecond), floorRSS, warm.Round(time.Millisecond), ratio(warm, floor), warmRSS,
			more.Round(time.Millisecond), ratio(more, floor), moreRSS, cold.Round(time.Millisecond), ratio(cold, floor), coldRSS, setup)
		os.RemoveAll(s.dir)
	}
}

// writeOpenSMTP writes vpopmail's open-smtp for the n standing grants
// and returns its path.
func writeOpenSMTP(t testing.TB, n int) string {
	t.Helper()
	open := filepath.Join(t.TempDir(), "open-smtp")
	writeOpenSMTPTo(t, open, n, grantIP)
	return open
}

// writeOpenSMTPTo writes an open-smtp file at path with a line for each
// of ip(0) to ip(n-1), their login times spread over the last 30 minutes.
func writeOpenSMTPTo(t testing.TB, path string, n int, ip func(int) string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriter(f)
	now := time.Now().Unix()
	for i := range n {
		fmt.Fprintf(w, "%s:allow,RELAYCLIENT=\"\",RBLSMTPD=\"\"\t%d\n", ip(i), now-int64(i%1800))
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

func ratio(a, b time.Duration) float64 { return float64(a) / float64(b) }

// TestScaleImport: relayctl import of 100k vpopmail open-smtp lines into
// an empty spool (one folded file written and synced, the CDB rebuilt),
// against tcprules on the equivalent text file.
func TestScaleImport(t *testing.T) {
	benchOnly(t)
	loadNote(t)
	const n = 100_000
	static := scaleStatic()
	eq := writeScaleSpool(t, "", static, n)
	open := writeOpenSMTP(t, n)
	floor, _ := tcprulesTime(t, eq, 3)
	var d time.Duration
	var rss float64
	for run := range 3 {
		s := scaleSite(t, static)
		x, r := measure(t, s.env, "", bin("relayctl"), "import", "--vpopmail", open)
		if run == 0 || x < d {
			d = x
		}
		rss = max(rss, r)
		if ents, _ := os.ReadDir(s.spool); len(ents) != 1 {
			t.Errorf("the spool after the import: %d entries", len(ents))
		}
		os.RemoveAll(s.dir)
	}
	t.Logf("import of %d vpopmail lines (one folded file written and synced, CDB rebuilt): %v (%.1fx tcprules' %v), %.0f MB",
		n, d.Round(time.Millisecond), ratio(d, floor), floor.Round(time.Millisecond), rss)
}

// poller reads a CDB again each time it is replaced and reports when each
// pending key first appears in it.
type poller struct {
	mu      sync.Mutex
	pending map[string]time.Time
	lat     []time.Duration
	// With spool set, the part of each latency after the grant file
	// was written (its change time): the watcher's share.
	spool string
	after []time.Duration
	stop  chan struct{}
	done  chan struct{}
}

func pollCDB(path string) *poller {
	p := &poller{pending: map[string]time.Time{}, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		var last os.FileInfo
		for {
			select {
			case <-p.stop:
				return
			default:
			}
			fi, err := os.Stat(path)
			// The watcher writes each CDB over the one before last (two
			// inodes in turn): a new one is a new inode or a new mtime.
			if err != nil || (last != nil && os.SameFile(fi, last) && fi.ModTime().Equal(last.ModTime())) {
				time.Sleep(500 * time.Microsecond) // pacing of the benchmark's CDB poller
				continue
			}
			r, err := cdb.Open(path)
			if err != nil {
				continue
			}
			last = fi
			now := time.Now()
			p.mu.Lock()
			for ip, at := range p.pending {
				if _, ok, _ := r.Find([]byte(ip)); ok {
					p.lat = append(p.lat, now.Sub(at))
					var st syscall.Stat_t
					if p.spool != "" && syscall.Stat(filepath.Join(p.spool, ip), &st) == nil {
						p.after = append(p.after, now.Sub(time.Unix(st.Ctim.Unix())))
					}
					delete(p.pending, ip)
				}
			}
			p.mu.Unlock()
			r.Close()
		}
	}()
	return p
}

func (p *poller) add(ip string, at time.Time) {
	p.mu.Lock()
	p.pending[ip] = at
	p.mu.Unlock()
}

// wait waits until nothing is pending, then stops the poller and returns
// the latencies, sorted.
func (p *poller) wait(t testing.TB) []time.Duration {
	t.Helper()
	wait.For(t, "every login in the CDB", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.pending) == 0
	})
	close(p.stop)
	<-p.done
	slices.Sort(p.lat)
	slices.Sort(p.after)
	return p.lat
}

func pct(lat []time.Duration, q float64) time.Duration {
	return lat[int(q*float64(len(lat)-1))].Round(100 * time.Microsecond)
}

// storm runs logins through the real checkpassword-wrap (one process per
// login) at rate a second for secs seconds, from addresses 100.64.x.y
// counted from base, on a host with spool; each is added to p when its
// process starts.
func storm(t testing.TB, spool string, p *poller, base, rate, secs int) {
	t.Helper()
	var wg sync.WaitGroup
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	for i := range rate * secs {
		<-tick.C
		ip := fmt.Sprintf("100.64.%d.%d", (base+i)>>8&255, (base+i)&255)
		cmd := exec.Command(bin("checkpassword-wrap"), "--spool", spool, "/bin/true")
		cmd.Env = baseEnv("TCPREMOTEIP="+ip, fmt.Sprint("USER=storm", base+i), "POPRELAY_NEVER=") // a user each: within the per-user cap
		p.add(ip, time.Now())
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() { defer wg.Done(); cmd.Wait() }()
	}
	wg.Wait()
}

// niceWatch is the shipped priority of the watcher (scripts/): nice -10
// where this process may raise a priority.
func niceWatch() []string {
	if os.Geteuid() == 0 {
		return []string{"nice", "-n", "-10", bin("relayctl")}
	}
	return []string{bin("relayctl")}
}

// TestScaleWatch: relayctl watch with 100k standing grants, logins
// through the real wrapper (one process per login) at 100/s and 200/s for
// 10 s each; login (the wrapper's start) -> its record in the CDB, p50
// and p99, against tcprules on the equivalent 100k-line file.
func TestScaleWatch(t *testing.T) {
	benchOnly(t)
	loadNote(t)
	const n = 100_000
	static := scaleStatic()
	s := scaleSite(t, static)
	eq := writeScaleSpool(t, "", static, n)
	// The standing grants in the folded file, as a site has them.
	s.relayctl(t, "import", "--vpopmail", writeOpenSMTP(t, n))
	syscall.Sync()
	floor, _ := tcprulesTime(t, eq, 3)
	args := niceWatch()
	cmd, stderr := start(t, s.env, true, args[0], append(args[1:], "watch")...)
	// The watcher's own account of each publish ("rebuilt: change: N
	// grants in X ms"), reported per storm beside the latencies.
	var pubMu sync.Mutex
	var pubs []time.Duration
	go func() {
		for {
			line, err := stderr.ReadString('\n')
			if err != nil {
				return
			}
			if _, after, ok := strings.Cut(line, "rebuilt: change: "); ok {
				var n int
				var ms float64
				if _, err := fmt.Sscanf(after, "%d grants in %f ms", &n, &ms); err == nil {
					pubMu.Lock()
					pubs = append(pubs, time.Duration(ms*float64(time.Millisecond)))
					pubMu.Unlock()
				}
			}
		}
	}()
	// Wait for the watcher's first publish: a new CDB.
	st0, _ := os.Stat(s.cdb)
	wait.For(t, "the watcher's first publish", func() bool {
		st, err := os.Stat(s.cdb)
		return err == nil && !os.SameFile(st, st0)
	})
	base := 0
	for _, rate := range []int{100, 200} {
		syscall.Sync() // what came before goes to disk first (see writeScaleSpool)
		cpu0, _ := procStats(cmd.Process.Pid)
		pubMu.Lock()
		pubs = pubs[:0]
		pubMu.Unlock()
		t0 := time.Now()
		p := pollCDB(s.cdb)
		p.spool = s.spool
		storm(t, s.spool, p, base, rate, 10)
		base += rate * 10
		lat := p.wait(t)
		cpu1, hwm := procStats(cmd.Process.Pid)
		t.Logf("watch, %d standing grants, %d logins/s for 10 s through checkpassword-wrap (%s): login -> CDB p50 %v, p99 %v (%.1fx tcprules' %v), max %v; watcher %.0f%% of a core, peak RSS %d MB",
			n, rate, strings.Join(args[:len(args)-1], " "), pct(lat, 0.5), pct(lat, 0.99), ratio(pct(lat, 0.99), floor), floor.Round(time.Millisecond),
			pct(lat, 1), 100*(cpu1-cpu0).Seconds()/time.Since(t0).Seconds(), hwm/1024)
		pubMu.Lock()
		if len(pubs) > 0 {
			slices.Sort(pubs)
			t.Logf("  the watcher published %d times, each taking p50 %v, max %v (its own log)", len(pubs), pct(pubs, 0.5), pct(pubs, 1))
		}
		if len(p.after) > 0 {
			t.Logf("  grant file written -> CDB: p50 %v, p99 %v (the rest is the wrapper's start and write)", pct(p.after, 0.5), pct(p.after, 0.99))
		}
		pubMu.Unlock()
	}
}

// TestScaleEtcd: two hosts: logins through the real wrapper on a POP host
// (relayctl watch --publish etcd) at 100/s for 10 s, with 100k grants in
// etcd; login -> its record in the SMTP host's CDB (relayctl watch
// --source etcd), p50 and p99, against tcprules on the equivalent
// 100k-line file plus etcd's own put -> watch latency measured in the same
// run.
func TestScaleEtcd(t *testing.T) {
	benchOnly(t)
	loadNote(t)
	const n = 100_000
	e := etcdtest.Start(t)
	cli := etcdtest.Client(t, e.Client)
	preloadGrants(t, cli, n)
	static := scaleStatic()
	eq := writeScaleSpool(t, "", static, n)
	floor, _ := tcprulesTime(t, eq, 3)
	a := scaleSite(t, ":allow\n")
	b := scaleSite(t, static)
	for _, s := range []*relayctlSite{a, b} {
		s.env = append(s.env, "POPRELAY_ETCD_ENDPOINTS="+e.Client)
	}
	// Both at the shipped priority (Nice=-10), as niceWatch.
	for _, w := range []*watcher{a.startWatch(t, "--publish", "etcd"), b.startWatch(t, "--source", "etcd")} {
		if os.Geteuid() == 0 {
			if err := syscall.Setpriority(syscall.PRIO_PROCESS, w.cmd.Process.Pid, -10); err != nil {
				t.Fatal(err)
			}
		}
	}

	// etcd's own put -> watch latency, in this run.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wch := cli.Watch(ctx, "/poprelay-bench/", clientv3.WithPrefix())
	var etcdLat []time.Duration
	for i := range 200 {
		t0 := time.Now()
		if _, err := cli.Put(ctx, fmt.Sprintf("/poprelay-bench/%d", i), "x"); err != nil {
			t.Fatal(err)
		}
		<-wch
		etcdLat = append(etcdLat, time.Since(t0))
	}
	slices.Sort(etcdLat)

	syscall.Sync() // what came before goes to disk first (see writeScaleSpool)
	p := pollCDB(b.cdb)
	storm(t, a.spool, p, 0, 100, 10)
	lat := p.wait(t)
	bar := floor + pct(etcdLat, 0.99)
	t.Logf("two hosts, %d grants in etcd, 100 logins/s for 10 s on the POP host, both watchers at nice -10: login -> SMTP host's CDB p50 %v, p99 %v; floor tcprules %v + etcd put->watch p99 %v (p50 %v) = %v: %.1fx",
		n, pct(lat, 0.5), pct(lat, 0.99), floor.Round(time.Millisecond), pct(etcdLat, 0.99), pct(etcdLat, 0.5), bar, ratio(pct(lat, 0.99), bar))
}

// TestScaleCaps: relayctl watch over a spool flooded with 1M grants (an
// open-smtp import), with the default caps (--max-grants 100000) and with
// none: its first publish, the CDB's size, the watcher's peak RSS and 20
// logins' publishes (the watcher's own account); then cron's expire and
// the watcher again: grants over the total cap stay in the spool (they
// relay again once the flood is over), so expire removes none of these.
func TestScaleCaps(t *testing.T) {
	benchOnly(t)
	loadNote(t)
	n := scaleSizes(1_000_000)[0]
	s := scaleSite(t, ":allow\n")
	s.relayctl(t, "import", "--vpopmail", writeOpenSMTP(t, n))
	syscall.Sync()
	round := 0
	watch := func(label string, env ...string) {
		cmd, stderr := start(t, append(slices.Clone(s.env), env...), true, bin("relayctl"), "watch")
		lines := make(chan string, 1000)
		go func() {
			for {
				line, err := stderr.ReadString('\n')
				if err != nil {
					close(lines)
					return
				}
				lines <- line
			}
		}()
		next := func(what string) string {
			t.Helper()
			deadline := time.After(wait.Patience)
			for {
				select {
				case l, ok := <-lines:
					if !ok {
						t.Fatalf("%s: the watcher exited", label)
					}
					if strings.Contains(l, what) {
						return strings.TrimSpace(l)
					}
				case <-deadline:
					t.Fatalf("%s: no %q from the watcher", label, what)
				}
			}
		}
		first := next("rebuilt: start")
		_, hwm := procStats(cmd.Process.Pid)
		var pubs []string
		for i := range 20 {
			login := exec.Command(bin("checkpassword-wrap"), "--spool", s.spool, "/bin/true")
			login.Env = baseEnv(fmt.Sprintf("TCPREMOTEIP=198.19.%d.%d", round, i+1), fmt.Sprintf("USER=login%d-%d", round, i), "POPRELAY_NEVER=")
			if out, err := login.CombinedOutput(); err != nil {
				t.Fatalf("checkpassword-wrap: %v: %s", err, out)
			}
			l := next("rebuilt: change")
			pubs = append(pubs, l[strings.LastIndex(l, " in ")+4:])
		}
		round++
		_, hwm2 := procStats(cmd.Process.Pid)
		st, _ := os.Stat(s.cdb)
		t.Logf("%s: %s; CDB %d bytes; peak RSS %d MB after start, %d MB after 20 logins; the logins' publishes: %s",
			label, strings.TrimPrefix(first, "relayctl: "), st.Size(), hwm/1024, hwm2/1024, strings.Join(pubs, ", "))
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		cmd.Wait()
	}
	watch("no caps", "POPRELAY_MAXGRANTS=0", "POPRELAY_MAXPERUSER=0")
	watch("default caps", "POPRELAY_MAXGRANTS=100000", "POPRELAY_MAXPERUSER=16")
	t0 := time.Now()
	d, rss := measure(t, append(slices.Clone(s.env), "POPRELAY_MAXGRANTS=100000"), "", bin("relayctl"), "expire")
	t.Logf("expire with the default caps: %v, %.0f MB (%v since)", d.Round(time.Millisecond), rss, time.Since(t0).Round(time.Millisecond))
	watch("default caps after expire", "POPRELAY_MAXGRANTS=100000", "POPRELAY_MAXPERUSER=16")
}
