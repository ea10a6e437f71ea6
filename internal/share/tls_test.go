package share

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/poprelay/poprelay/internal/etcdtest"
	"github.com/poprelay/poprelay/internal/grant"
)

// writeCert makes a key and a certificate signed by parent (self-signed
// if nil) and writes them as PEM files in dir.
func writeCert(t *testing.T, dir, name string, tmpl *x509.Certificate, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	os.WriteFile(filepath.Join(dir, name+".pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(filepath.Join(dir, name+"-key.pem"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	return cert, key
}

// TestTLS: etcd demanding client certificates; the configuration comes
// from the environment, as in relayctl.
func TestTLS(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	ca, caKey := writeCert(t, dir, "ca", &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}, nil, nil)
	writeCert(t, dir, "server", &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "etcd"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		KeyUsage:    x509.KeyUsageDigitalSignature,
	}, ca, caKey)
	writeCert(t, dir, "client", &x509.Certificate{
		SerialNumber: big.NewInt(3), Subject: pkix.Name{CommonName: "poprelay"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		KeyUsage:    x509.KeyUsageDigitalSignature,
	}, ca, caKey)

	e := etcdtest.New(t, "tls", filepath.Join(dir, "data"))
	e.Client = strings.Replace(e.Client, "http:", "https:", 1)
	e.Extra = []string{
		"--cert-file", filepath.Join(dir, "server.pem"),
		"--key-file", filepath.Join(dir, "server-key.pem"),
		"--trusted-ca-file", filepath.Join(dir, "ca.pem"),
		"--client-cert-auth",
	}
	e.Start()

	env := map[string]string{
		EnvEndpoints: e.Client,
		EnvCert:      filepath.Join(dir, "client.pem"),
		EnvKey:       filepath.Join(dir, "client-key.pem"),
		EnvCA:        filepath.Join(dir, "ca.pem"),
		EnvTimeout:   "2s",
	}
	cfg, err := FromEnv(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	c, err := Open(cfg, Options{Host: "pop1", Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	g := grant.Grant{IP: "192.0.2.44", User: "dave", Service: "pop3", Time: time.Now()}
	etcdtest.Eventually(t, 20*time.Second, "a write over TLS", func() bool { return c.Allow(context.Background(), g) == nil })
	gs, err := c.List(context.Background())
	if err != nil || len(gs) != 1 || gs[0].User != "dave" {
		t.Fatalf("List over TLS: %v %v", gs, err)
	}

	// Without a client certificate, etcd says no.
	delete(env, EnvCert)
	delete(env, EnvKey)
	cfg, _ = FromEnv(func(k string) string { return env[k] })
	c2, err := Open(cfg, Options{Host: "pop2"})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if _, err := c2.List(context.Background()); err == nil {
		t.Fatal("List without a client certificate succeeded")
	}
}

// TestAuth: etcd with authentication on; a poprelay user with a role on
// the prefix only.
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
		func() error { _, err := root.AuthEnable(ctx); return err },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	c, err := Open(Config{Endpoints: []string{e.Client}, Username: "poprelay", Password: "s3cret", DialTimeout: 2 * time.Second}, Options{Host: "pop1"})
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
	if _, err := Open(Config{Endpoints: []string{e.Client}, Username: "poprelay", Password: "wrong", DialTimeout: 2 * time.Second}, Options{}); err == nil {
		t.Fatal("Open with a wrong password succeeded")
	}
}
