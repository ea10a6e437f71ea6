package t

import (
	"context"
	"fmt"
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

// Etcd is one etcd server process on loopback.
type Etcd struct {
	t       testing.TB
	bin     string
	Name    string
	Dir     string // data dir
	Client  string // client URL
	Peer    string // peer URL
	cluster string // --initial-cluster
	Cmd     *exec.Cmd
}

// startEtcd runs a single-node etcd (Debian's etcd-server) on ports
// chosen now, with its data in a temp dir; it is killed by PID when the
// test ends.
func startEtcd(t testing.TB) *Etcd {
	t.Helper()
	return startEtcdCluster(t, 1)[0]
}

// startEtcdCluster runs an n-node etcd cluster on loopback and waits
// until every member answers a read that needs a leader.
func startEtcdCluster(t testing.TB, n int) []*Etcd {
	t.Helper()
	bin := need(t, "etcd")
	base := t.TempDir()
	nodes := make([]*Etcd, n)
	var members []string
	for i := range nodes {
		name := fmt.Sprintf("n%d", i)
		nodes[i] = &Etcd{
			t:      t,
			bin:    bin,
			Name:   name,
			Dir:    filepath.Join(base, name),
			Client: fmt.Sprintf("http://127.0.0.1:%d", freePort(t)),
			Peer:   fmt.Sprintf("http://127.0.0.1:%d", freePort(t)),
		}
		members = append(members, name+"="+nodes[i].Peer)
	}
	for _, e := range nodes {
		e.cluster = strings.Join(members, ",")
		e.Start()
	}
	for _, e := range nodes {
		e.WaitReady()
	}
	return nodes
}

// Start runs the server (again after Kill: same data dir and ports).
func (e *Etcd) Start() {
	e.t.Helper()
	e.Cmd, _ = start(e.t, baseEnv(), false, e.bin,
		"--name", e.Name,
		"--data-dir", e.Dir,
		"--listen-client-urls", e.Client,
		"--advertise-client-urls", e.Client,
		"--listen-peer-urls", e.Peer,
		"--initial-advertise-peer-urls", e.Peer,
		"--initial-cluster", e.cluster,
		"--initial-cluster-state", "new",
		"--initial-cluster-token", "poprelay-test",
		"--heartbeat-interval", "50",
		"--election-timeout", "500",
		"--logger", "zap",
		"--log-level", "error",
	)
}

// Kill stops the server at once (SIGKILL by PID).
func (e *Etcd) Kill() {
	if e.Cmd == nil {
		return
	}
	syscall.Kill(e.Cmd.Process.Pid, syscall.SIGKILL)
	e.Cmd.Wait()
	e.Cmd = nil
}

// WaitReady waits until the server answers a linearizable read.
func (e *Etcd) WaitReady() {
	e.t.Helper()
	cli := etcdClient(e.t, e.Client)
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := cli.Get(ctx, "ready")
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("etcd %s not ready: %v", e.Name, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// IsLeader tells whether this member leads its cluster now.
func (e *Etcd) IsLeader(ctx context.Context, cli *clientv3.Client) bool {
	st, err := cli.Status(ctx, e.Client)
	return err == nil && st.Leader == st.Header.MemberId
}

// RSS is the server's resident set size in kB (0 if unknown).
func (e *Etcd) RSS() int {
	if e.Cmd == nil {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", e.Cmd.Process.Pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kb int
			fmt.Sscan(strings.TrimSuffix(strings.TrimSpace(v), " kB"), &kb)
			return kb
		}
	}
	return 0
}

// etcdClient is a plain client for checks, closed when the test ends.
func etcdClient(t testing.TB, endpoints ...string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// etcdEventually polls cond until it holds or d passes.
func etcdEventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// clientvPrefix is the options of a prefix count.
func clientvPrefix() []clientv3.OpOption {
	return []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithCountOnly()}
}
