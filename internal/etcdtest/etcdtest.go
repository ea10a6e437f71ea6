// Package etcdtest runs real etcd servers (Debian's etcd-server) on
// loopback for tests: one node or a small cluster, on ports chosen at run
// time, with data in temp dirs, killed by PID when the test ends. Only
// test code imports it.
package etcdtest

import (
	"context"
	"crypto/tls"
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

	"github.com/poprelay/poprelay/internal/wait"
)

// Bin finds the etcd server, failing in CI (where .ci/run installs it)
// and skipping visibly elsewhere.
func Bin(t testing.TB) string {
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

// Node is one etcd server process on loopback.
type Node struct {
	Name    string
	Dir     string   // data dir
	Client  string   // client URL
	Peer    string   // peer URL
	Cluster string   // --initial-cluster
	Extra   []string // more flags (TLS)
	Cmd     *exec.Cmd
	TLS     *tls.Config // what WaitReady connects with (UseTLS sets it)

	t   testing.TB
	bin string
	log *os.File
}

// New returns a node, not started, named name with its data in dir, http
// URLs on ports chosen now, and a cluster of itself alone.
func New(t testing.TB, name, dir string) *Node {
	t.Helper()
	e := &Node{
		t:      t,
		bin:    Bin(t),
		Name:   name,
		Dir:    dir,
		Client: fmt.Sprintf("http://127.0.0.1:%d", freePort(t)),
		Peer:   fmt.Sprintf("http://127.0.0.1:%d", freePort(t)),
	}
	e.Cluster = name + "=" + e.Peer
	return e
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

// Start runs a single-node etcd and waits until it is ready.
func Start(t testing.TB) *Node {
	t.Helper()
	return StartCluster(t, 1)[0]
}

// StartCluster runs an n-node cluster and waits until every member
// answers a read that needs a leader.
func StartCluster(t testing.TB, n int) []*Node {
	t.Helper()
	base := t.TempDir()
	nodes := make([]*Node, n)
	var members []string
	for i := range nodes {
		name := fmt.Sprintf("n%d", i)
		nodes[i] = New(t, name, filepath.Join(base, name))
		members = append(members, name+"="+nodes[i].Peer)
	}
	for _, e := range nodes {
		e.Cluster = strings.Join(members, ",")
		e.Start()
	}
	for _, e := range nodes {
		e.WaitReady()
	}
	return nodes
}

// Start runs the server (again after Kill: same data dir and ports). Its
// output goes to NAME.log beside the data dir, shown if the test fails.
func (e *Node) Start() {
	t := e.t
	t.Helper()
	if e.log == nil {
		f, err := os.Create(filepath.Join(filepath.Dir(e.Dir), e.Name+".log"))
		if err != nil {
			t.Fatal(err)
		}
		e.log = f
		t.Cleanup(func() {
			e.Kill()
			if t.Failed() {
				if b, _ := os.ReadFile(f.Name()); len(b) > 0 {
					t.Logf("etcd %s log:\n%s", e.Name, b)
				}
			}
			f.Close()
		})
	}
	cmd := exec.Command(e.bin, append([]string{
		"--name", e.Name,
		"--data-dir", e.Dir,
		"--listen-client-urls", e.Client,
		"--advertise-client-urls", e.Client,
		"--listen-peer-urls", e.Peer,
		"--initial-advertise-peer-urls", e.Peer,
		"--initial-cluster", e.Cluster,
		"--initial-cluster-state", "new",
		"--initial-cluster-token", "poprelay-test",
		// etcd's defaults: shorter ones make a member on a busy
		// machine call elections while its leader is alive.
		"--heartbeat-interval", "100",
		"--election-timeout", "1000",
		"--logger", "zap",
		"--log-level", "warn",
	}, e.Extra...)...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "LC_ALL=C"}
	cmd.Stdout, cmd.Stderr = e.log, e.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting etcd: %v", err)
	}
	e.Cmd = cmd
}

// Kill stops the server at once (SIGKILL, by PID).
func (e *Node) Kill() {
	if e.Cmd == nil {
		return
	}
	syscall.Kill(e.Cmd.Process.Pid, syscall.SIGKILL)
	e.Cmd.Wait()
	e.Cmd = nil
}

// WaitReady waits until the server answers a read that needs a leader.
func (e *Node) WaitReady() {
	t := e.t
	t.Helper()
	cli := ClientTLS(t, e.TLS, e.Client)
	wait.Succeeds(t, "etcd "+e.Name+" to answer", func() error {
		// Each try may take long: a busy machine is no failure.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, err := cli.Get(ctx, "ready")
		return err
	})
}

// IsLeader tells whether this member leads its cluster now.
func (e *Node) IsLeader(ctx context.Context, cli *clientv3.Client) bool {
	st, err := cli.Status(ctx, e.Client)
	return err == nil && st.Leader == st.Header.MemberId
}

// RSS is the server's resident set size in kB (0 if unknown).
func (e *Node) RSS() int {
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

// Client is a plain etcd client for checks, closed when the test ends.
func Client(t testing.TB, endpoints ...string) *clientv3.Client {
	t.Helper()
	return ClientTLS(t, nil, endpoints...)
}

// ClientTLS is Client over TLS with tc (nil: plain).
func ClientTLS(t testing.TB, tc *tls.Config, endpoints ...string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 2 * time.Second, TLS: tc, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}
