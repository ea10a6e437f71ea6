package share

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/poprelay/poprelay/internal/etcdtest"
	"github.com/poprelay/poprelay/internal/grant"
	"github.com/poprelay/poprelay/internal/wait"
)

// TestTLS: etcd demanding client certificates; the configuration comes
// from the environment, as in relayctl. A CA that does not match, a
// certificate of another CA and no certificate each fail with what went
// wrong, not just a timeout.
func TestTLS(t *testing.T) {
	dir := t.TempDir()
	ca := etcdtest.NewCA(t, dir, "ca")
	other := etcdtest.NewCA(t, dir, "other")
	e := etcdtest.New(t, "tls", filepath.Join(dir, "data"))
	e.UseTLS(ca, true)
	e.Start()
	e.WaitReady()

	client := ca.Client("poprelay")
	env := map[string]string{
		EnvEndpoints: e.Client,
		EnvCert:      client.Cert,
		EnvKey:       client.Key,
		EnvCA:        ca.Cert,
		EnvTimeout:   "30s", // a request that should succeed must not time out on a busy machine
	}
	cfg, err := FromEnv(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if sec := cfg.Security(); sec.TLS != "yes" || sec.ClientCert != client.Cert || len(sec.Warnings) != 0 {
		t.Errorf("Security: %+v", sec)
	}
	c, err := Open(cfg, Options{Host: "pop1", Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	g := grant.Grant{IP: "192.0.2.44", User: "dave", Service: "pop3", Time: time.Now()}
	if err := c.Allow(context.Background(), g); err != nil {
		t.Fatal(err)
	}
	gs, err := c.List(context.Background())
	if err != nil || len(gs) != 1 || gs[0].User != "dave" {
		t.Fatalf("List over TLS: %v %v", gs, err)
	}

	wrongCA := other.Client("poprelay")
	for _, tc := range []struct {
		name          string
		cert, key, ca string
		want1, want2  string // either in the error
	}{
		{"server not trusted (wrong CA)", client.Cert, client.Key, other.Cert, "certificate signed by unknown authority", ""},
		{"client certificate of another CA", wrongCA.Cert, wrongCA.Key, ca.Cert, "bad certificate", "unknown certificate authority"},
		{"no client certificate", "", "", ca.Cert, "certificate required", "bad certificate"},
	} {
		// A refused handshake shows only when the request's time is up
		// (gRPC keeps trying): 5s, not 30s, so the three cases take 15s;
		// time enough for a busy machine to try the handshake once.
		cfg := Config{Endpoints: []string{e.Client}, Cert: tc.cert, Key: tc.key, CA: tc.ca, DialTimeout: 5 * time.Second}
		c, err := Open(cfg, Options{Host: "pop2"})
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.List(context.Background())
		c.Close()
		if err == nil || !strings.Contains(err.Error(), "etcd at "+e.Client) ||
			!(strings.Contains(err.Error(), tc.want1) || tc.want2 != "" && strings.Contains(err.Error(), tc.want2)) {
			t.Errorf("%s: List: %v; want the endpoint and %q", tc.name, err, tc.want1)
		} else {
			t.Logf("%s: %v", tc.name, err)
		}
	}
}

// TestAuth: etcd with authentication on; a poprelay user with a role on
// the prefix only. A wrong password and a role that does not permit a
// write are ErrDenied, naming the user.
func TestAuth(t *testing.T) {
	e := etcdtest.Start(t)
	ctx := context.Background()
	root := etcdtest.Client(t, e.Client)
	for _, step := range []func() error{
		func() error { _, err := root.UserAdd(ctx, "root", "rootpw"); return err },
		func() error { _, err := root.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := root.RoleAdd(ctx, "poprelay"); return err },
		func() error {
			_, err := root.RoleGrantPermission(ctx, "poprelay", DefaultPrefix, clientv3.GetPrefixRangeEnd(DefaultPrefix), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := root.UserAdd(ctx, "poprelay", "s3cret"); return err },
		func() error { _, err := root.UserGrantRole(ctx, "poprelay", "poprelay"); return err },
		func() error { _, err := root.RoleAdd(ctx, "reader"); return err },
		func() error {
			_, err := root.RoleGrantPermission(ctx, "reader", DefaultPrefix+"grants/", clientv3.GetPrefixRangeEnd(DefaultPrefix+"grants/"), clientv3.PermissionType(clientv3.PermRead))
			return err
		},
		func() error { _, err := root.UserAdd(ctx, "smtp1", "s3cret2"); return err },
		func() error { _, err := root.UserGrantRole(ctx, "smtp1", "reader"); return err },
		func() error { _, err := root.AuthEnable(ctx); return err },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	c, err := Open(Config{Endpoints: []string{e.Client}, Username: "poprelay", Password: "s3cret", DialTimeout: 30 * time.Second}, Options{Host: "pop1"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	g := grant.Grant{IP: "192.0.2.45", User: "erin", Service: "imap", Time: time.Now()}
	if err := c.Allow(ctx, g); err != nil {
		t.Fatal(err)
	}
	if ok, err := c.Revoke(ctx, g.IP, ""); err != nil || !ok {
		t.Fatalf("Revoke: %v %v", ok, err)
	}
	_, err = Open(Config{Endpoints: []string{e.Client}, Username: "poprelay", Password: "wrong", DialTimeout: 30 * time.Second}, Options{})
	if !errors.Is(err, ErrDenied) || !strings.Contains(err.Error(), `etcd user "poprelay"`) || !strings.Contains(err.Error(), "authentication failed") {
		t.Fatalf("Open with a wrong password: %v; want ErrDenied naming the user", err)
	}

	// A user whose role does not cover the key is denied, and told so.
	var logMu sync.Mutex
	var logged []string
	logf := func(format string, args ...any) {
		logMu.Lock()
		logged = append(logged, fmt.Sprintf(format, args...))
		logMu.Unlock()
	}
	r, err := Open(Config{Endpoints: []string{e.Client}, Username: "smtp1", Password: "s3cret2", DialTimeout: 30 * time.Second}, Options{Host: "smtp1", Logf: logf})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := r.List(ctx); err != nil {
		t.Fatalf("List with read access: %v", err)
	}
	if err := r.Allow(ctx, g); !errors.Is(err, ErrDenied) || !strings.Contains(err.Error(), `etcd user "smtp1" may not`) {
		t.Errorf("Allow without write access: %v; want ErrDenied naming the user", err)
	}
	if _, err := r.Revoke(ctx, g.IP, ""); !errors.Is(err, ErrDenied) {
		t.Errorf("Revoke without write access: %v; want ErrDenied", err)
	}
	// A publisher whose writes are refused says so (not "unreachable")
	// and keeps its backlog.
	p := runPublisher(t, r, PublisherOptions{Resync: -1})
	p.Put(grant.Grant{IP: "192.0.2.46", User: "frank", Time: time.Now()})
	wait.For(t, "the publisher's warning", func() bool {
		logMu.Lock()
		defer logMu.Unlock()
		for _, l := range logged {
			if strings.Contains(l, "etcd refuses this host's writes, keeping a backlog: share: etcd denied access: etcd user \"smtp1\" may not") {
				return true
			}
		}
		return false
	})
	if n := p.Pending(); n != 1 {
		t.Errorf("backlog: %d changes, want 1", n)
	}
}
