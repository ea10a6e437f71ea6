package etcdtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
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
)

// CA is a certificate authority made for one test with crypto/x509 (no
// external tools). Its certificate is Dir/NAME.pem.
type CA struct {
	Name string
	Dir  string
	Cert string // PEM file of the CA certificate

	t      testing.TB
	cert   *x509.Certificate
	key    *ecdsa.PrivateKey
	serial int64
}

// NewCA makes a CA named name whose files go in dir.
func NewCA(t testing.TB, dir, name string) *CA {
	t.Helper()
	ca := &CA{Name: name, Dir: dir, t: t, serial: 1}
	now := time.Now()
	ca.cert, ca.key = ca.write(name, &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}, true)
	ca.Cert = filepath.Join(dir, name+".pem")
	return ca
}

// Pair is a certificate and its key, as PEM files.
type Pair struct{ Cert, Key string }

// Server issues a server certificate for 127.0.0.1 and localhost (usable
// as a client certificate too, as etcd's peers need).
func (ca *CA) Server(name string) Pair {
	ca.t.Helper()
	now := time.Now()
	ca.write(name, &x509.Certificate{
		SerialNumber: ca.next(), Subject: pkix.Name{CommonName: name},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		KeyUsage:    x509.KeyUsageDigitalSignature,
	}, false)
	return ca.pair(name)
}

// Client issues a client certificate whose common name is cn: etcd with
// authentication on takes it as the user name.
func (ca *CA) Client(cn string) Pair {
	ca.t.Helper()
	now := time.Now()
	name := ca.Name + "-" + cn
	ca.write(name, &x509.Certificate{
		SerialNumber: ca.next(), Subject: pkix.Name{CommonName: cn},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		KeyUsage:    x509.KeyUsageDigitalSignature,
	}, false)
	return ca.pair(name)
}

func (ca *CA) next() *big.Int {
	ca.serial++
	return big.NewInt(ca.serial)
}

func (ca *CA) pair(name string) Pair {
	return Pair{Cert: filepath.Join(ca.Dir, name+".pem"), Key: filepath.Join(ca.Dir, name+"-key.pem")}
}

// write makes a key and a certificate signed by the CA (self-signed if
// self) and writes them as NAME.pem and NAME-key.pem, mode 0600.
func (ca *CA) write(name string, tmpl *x509.Certificate, self bool) (*x509.Certificate, *ecdsa.PrivateKey) {
	t := ca.t
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	parent, parentKey := ca.cert, ca.key
	if self {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	for file, b := range map[string]*pem.Block{
		name + ".pem":     {Type: "CERTIFICATE", Bytes: der},
		name + "-key.pem": {Type: "EC PRIVATE KEY", Bytes: kder},
	} {
		if err := os.WriteFile(filepath.Join(ca.Dir, file), pem.EncodeToMemory(b), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// UseTLS makes the node serve its clients over TLS with a certificate of
// ca and, if clientCerts, demand client certificates signed by ca
// (--client-cert-auth). Call it before Start.
func (e *Node) UseTLS(ca *CA, clientCerts bool) {
	e.t.Helper()
	srv := ca.Server(e.Name + "-server")
	e.Client = strings.Replace(e.Client, "http:", "https:", 1)
	e.Extra = append(e.Extra, "--cert-file", srv.Cert, "--key-file", srv.Key)
	if clientCerts {
		e.Extra = append(e.Extra, "--client-cert-auth", "--trusted-ca-file", ca.Cert)
	}
	e.TLS = ca.ClientTLS("etcdtest")
}

// ClientTLS is a client configuration trusting ca, with a client
// certificate of ca for cn.
func (ca *CA) ClientTLS(cn string) *tls.Config {
	ca.t.Helper()
	p := ca.Client(cn)
	kp, err := tls.LoadX509KeyPair(p.Cert, p.Key)
	if err != nil {
		ca.t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	return &tls.Config{Certificates: []tls.Certificate{kp}, RootCAs: pool, MinVersion: tls.VersionTLS12}
}
