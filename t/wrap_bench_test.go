package t

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"
)

// wrBenchCase is one way to run a login's next program.
type wrBenchCase struct {
	name string
	argv []string
	env  []string
}

// wrBenchCases: the next program alone, the same behind a C exec hop
// (env(1)) and behind the smallest Go program that only execs it (the
// floor for any Go wrapper: runtime start-up, a bigger address space to
// tear down at exec), and behind checkpassword-wrap recording nothing,
// recording to a spool on tmpfs (no fsync cost), and recording to a spool
// on the test's disk (fsync).
func wrBenchCases(t testing.TB) []wrBenchCase {
	disk := t.TempDir()
	goexec := filepath.Join(t.TempDir(), "goexec")
	if out, err := exec.Command("go", "build", "-trimpath", "-o", goexec, "./testdata/goexec").CombinedOutput(); err != nil {
		t.Fatalf("building the minimal Go exec: %v\n%s", err, out)
	}
	cases := []wrBenchCase{
		{"next alone", []string{"/bin/true"}, nil},
		{"env(1) hop", []string{"/usr/bin/env", "/bin/true"}, nil},
		{"minimal Go exec", []string{goexec, "/bin/true"}, nil},
		{"wrap, no record", []string{bin("checkpassword-wrap"), "--spool", disk, "/bin/true"}, []string{"AUTHORIZED=1"}},
		{"wrap, record on disk", []string{bin("checkpassword-wrap"), "--spool", disk, "/bin/true"}, nil},
	}
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		shm, err := os.MkdirTemp("/dev/shm", "poprelay-bench-")
		if err == nil {
			t.Cleanup(func() { os.RemoveAll(shm) })
			cases = append(cases, wrBenchCase{"wrap, record on tmpfs", []string{bin("checkpassword-wrap"), "--spool", shm, "/bin/true"}, nil})
		}
	}
	return cases
}

// wrBenchRun runs one case once and returns its wall time and its CPU
// time (user and system, of the whole exec chain).
func wrBenchRun(t testing.TB, c wrBenchCase, i int) (wall, cpu time.Duration) {
	cmd := exec.Command(c.argv[0], c.argv[1:]...)
	cmd.Env = baseEnv(append([]string{fmt.Sprintf("TCPREMOTEIP=127.2.%d.%d", i/250%250, i%250+1), "USER=alice"}, c.env...)...)
	start := time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s: %v", c.name, err)
	}
	return time.Since(start), cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
}

// TestWrapLatency measures a login's exec chain with and without the
// wrapper, interleaved so that machine noise hits every case alike, and
// logs for each the median and 90th percentile of wall time, the median
// CPU time, and both medians as a ratio to the minimal Go exec (the
// target is at most 1.3). It reports; it does not fail on a slow machine.
// POPRELAY_BENCH_N sets the rounds (default 200). scripts/bench-wrap runs it.
func TestWrapLatency(t *testing.T) {
	benchOnly(t)
	n := 200
	if v, err := strconv.Atoi(os.Getenv("POPRELAY_BENCH_N")); err == nil && v > 0 {
		n = v
	}
	cases := wrBenchCases(t)
	walls := make([][]time.Duration, len(cases))
	cpus := make([][]time.Duration, len(cases))
	for i := range n {
		for j, c := range cases {
			w, cpu := wrBenchRun(t, c, i)
			walls[j] = append(walls[j], w)
			cpus[j] = append(cpus[j], cpu)
		}
	}
	var floorWall, floorCPU time.Duration
	for j, c := range cases {
		slices.Sort(walls[j])
		slices.Sort(cpus[j])
		if c.name == "minimal Go exec" {
			floorWall, floorCPU = walls[j][n/2], cpus[j][n/2]
		}
	}
	for j, c := range cases {
		med, p90, cpu := walls[j][n/2], walls[j][n*9/10], cpus[j][n/2]
		t.Logf("%-22s wall median %7.3f ms  p90 %7.3f ms  cpu median %7.3f ms  vs minimal Go exec: wall %.2fx cpu %.2fx",
			c.name, ms(med), ms(p90), ms(cpu), float64(med)/float64(floorWall), float64(cpu)/float64(floorCPU))
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// BenchmarkWrapLogin: the same cases as Go benchmarks.
func BenchmarkWrapLogin(b *testing.B) {
	for _, c := range wrBenchCases(b) {
		b.Run(c.name, func(b *testing.B) {
			i := 0
			for b.Loop() {
				wrBenchRun(b, c, i)
				i++
			}
		})
	}
}
