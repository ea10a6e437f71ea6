package share

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// etcdBin finds the etcd server, failing in CI (where .ci/run installs
// it) and skipping visibly elsewhere.
func etcdBin(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("etcd"); err == nil {
		return p
	}
	if os.Getenv("CI") != "" {
		t.Fatal("etcd is not installed; .ci/run should have installed it (Debian: etcd-server)")
	}
	t.Skip("SKIP: etcd is not installed (Debian: etcd-server)")
	return ""
}

// etcdNode is one etcd server process on loopback.
type etcdNode struct {
	t       testing.TB
	bin     string
	name    string
	dir     string
	client  string // client URL
	peer    string // peer URL
	cluster string // --initial-cluster
	cmd     *exec.Cmd
	log     *os.File
	extra   []string // more flags (TLS)
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startEtcd runs a single-node etcd on ports chosen now, its data in a
// temp dir, and kills it (by PID) when the test ends.
func startEtcd(t testing.TB) *etcdNode {
	t.Helper()
	return startEtcdCluster(t, 1)[0]
}

// startEtcdCluster runs an n-node cluster on loopback and waits until it
// has a leader.
func startEtcdCluster(t testing.TB, n int) []*etcdNode {
	t.Helper()
	bin := etcdBin(t)
	base := t.TempDir()
	nodes := make([]*etcdNode, n)
	var members []string
	for i := range nodes {
		name := fmt.Sprintf("n%d", i)
		nodes[i] = &etcdNode{
			t:      t,
			bin:    bin,
			name:   name,
			dir:    filepath.Join(base, name),
			client: fmt.Sprintf("http://127.0.0.1:%d", freePort(t)),
			peer:   fmt.Sprintf("http://127.0.0.1:%d", freePort(t)),
		}
		members = append(members, name+"="+nodes[i].peer)
	}
	for _, e := range nodes {
		e.cluster = strings.Join(members, ",")
		e.start()
	}
	for _, e := range nodes {
		e.waitReady()
	}
	return nodes
}

// start runs the process (again, with the same data dir and ports).
func (e *etcdNode) start() {
	t := e.t
	t.Helper()
	if e.log == nil {
		f, err := os.Create(filepath.Join(filepath.Dir(e.dir), e.name+".log"))
		if err != nil {
			t.Fatal(err)
		}
		e.log = f
		t.Cleanup(func() { f.Close() })
	}
	cmd := exec.Command(e.bin, append([]string{
		"--name", e.name,
		"--data-dir", e.dir,
		"--listen-client-urls", e.client,
		"--advertise-client-urls", e.client,
		"--listen-peer-urls", e.peer,
		"--initial-advertise-peer-urls", e.peer,
		"--initial-cluster", e.cluster,
		"--initial-cluster-state", "new",
		"--initial-cluster-token", "poprelay-test",
		"--heartbeat-interval", "50",
		"--election-timeout", "500",
		"--logger", "zap",
		"--log-level", "warn",
	}, e.extra...)...)
	cmd.Stdout, cmd.Stderr = e.log, e.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting etcd: %v", err)
	}
	e.cmd = cmd
	t.Cleanup(func() { e.kill() })
}

// kill stops the process at once (SIGKILL, by PID).
func (e *etcdNode) kill() {
	if e.cmd == nil {
		return
	}
	syscall.Kill(e.cmd.Process.Pid, syscall.SIGKILL)
	e.cmd.Wait()
	e.cmd = nil
}

// waitReady waits until the node answers a read that needs a leader.
func (e *etcdNode) waitReady() {
	t := e.t
	t.Helper()
	cli := testClient(t, e.client)
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := cli.Get(ctx, "ready")
		cancel()
		if err == nil {
			return
		}
		if e.cmd != nil && e.cmd.ProcessState != nil {
			t.Fatalf("etcd %s exited; see %s.log", e.name, e.name)
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(e.log.Name())
			t.Fatalf("etcd %s not ready: %v\n%s", e.name, err, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// testClient is a plain etcd client for checks, closed at test end.
func testClient(t testing.TB, endpoints ...string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// open returns a Cluster for the endpoints, closed at test end.
func open(t testing.TB, opt Options, endpoints ...string) *Cluster {
	t.Helper()
	if opt.Logf == nil {
		opt.Logf = t.Logf
	}
	c, err := Open(Config{Endpoints: endpoints, DialTimeout: 2 * time.Second}, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// eventually polls cond until it holds or d passes.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
