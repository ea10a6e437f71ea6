package share

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/poprelay/poprelay/internal/regular"
)

// maxPassword bounds a password file.
const maxPassword = 1024

// ReadPasswordFile reads an etcd password from path: a regular file (a
// FIFO, directory or device is refused without blocking), at most 1 KiB,
// one line; one trailing newline (LF or CRLF) is stripped. warn is set
// when the file is readable by every user. No error holds the password.
func ReadPasswordFile(path string) (pw, warn string, err error) {
	f, st, err := regular.Open(path)
	if err != nil {
		return "", "", fmt.Errorf("%w: password file: %v", ErrConfig, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxPassword+2))
	if err != nil {
		return "", "", fmt.Errorf("%w: password file %s: %v", ErrConfig, path, err)
	}
	b = bytes.TrimSuffix(b, []byte("\n"))
	b = bytes.TrimSuffix(b, []byte("\r"))
	switch {
	case len(b) > maxPassword:
		return "", "", fmt.Errorf("%w: password file %s: longer than %d bytes", ErrConfig, path, maxPassword)
	case len(b) == 0:
		return "", "", fmt.Errorf("%w: password file %s is empty", ErrConfig, path)
	case bytes.ContainsAny(b, "\n\r\x00"):
		return "", "", fmt.Errorf("%w: password file %s: more than one line, or a NUL byte", ErrConfig, path)
	}
	if st.Mode().Perm()&0o004 != 0 {
		warn = fmt.Sprintf("the etcd password file %s is readable by every user (mode %04o): chmod o-r %s", path, st.Mode().Perm(), path)
	}
	return string(b), warn, nil
}

// endpoint is one etcd endpoint, taken apart as the client takes it.
type endpoint struct {
	scheme   string // http, https, unix, unixs, or "" (none given)
	addr     string // host:port, or a socket path
	host     string // host alone ("" for a socket)
	userinfo bool   // the URL held user:password@
}

func parseEndpoint(s string) endpoint {
	var ep endpoint
	rest := s
	if i := strings.Index(rest, "://"); i >= 0 {
		ep.scheme, rest = strings.ToLower(rest[:i]), rest[i+3:]
	}
	if ep.scheme == "unix" || ep.scheme == "unixs" {
		ep.addr = rest
		return ep
	}
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		rest = rest[:i]
	}
	if i := strings.LastIndexByte(rest, '@'); i >= 0 {
		ep.userinfo, rest = true, rest[i+1:]
	}
	ep.addr = rest
	ep.host = rest
	if h, _, err := net.SplitHostPort(rest); err == nil {
		ep.host = h
	}
	return ep
}

// String is the endpoint without credentials.
func (ep endpoint) String() string {
	if ep.scheme == "" {
		return ep.addr
	}
	return ep.scheme + "://" + ep.addr
}

// secure tells whether the client talks TLS to it (clientv3's rule: the
// scheme decides; without one, TLS if any TLS setting is given).
func (ep endpoint) secure(tlsSet bool) bool {
	switch ep.scheme {
	case "https", "unixs":
		return true
	case "":
		return tlsSet
	}
	return false
}

// local tells whether the endpoint cannot be reached from another host:
// a Unix socket or a loopback address.
func (ep endpoint) local() bool {
	if ep.scheme == "unix" || ep.scheme == "unixs" {
		return true
	}
	if strings.EqualFold(ep.host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(ep.host)
	return err == nil && a.Unmap().IsLoopback()
}

// Security is how a configuration protects poprelay's connection to etcd,
// for "relayctl config" and the warnings commands give at start.
type Security struct {
	TLS        string   // "yes", "no", or "partly: A, B" (the plain endpoints)
	ClientCert string   // the client certificate file; "" if none
	User       string   // the etcd user; "" if none
	Warnings   []string // each a sentence
}

// Security describes c. Whoever can write poprelay's grants in etcd can
// open the relay on every SMTP host, so it warns about every way the
// configuration lets others do so.
func (c Config) Security() Security {
	tlsSet := c.Cert != "" || c.CA != ""
	sec := Security{ClientCert: c.Cert, User: c.Username}
	var plain, open, clear []string
	for _, e := range c.Endpoints {
		ep := parseEndpoint(e)
		if ep.secure(tlsSet) {
			continue
		}
		plain = append(plain, ep.String())
		if ep.local() {
			continue
		}
		if c.Username == "" {
			open = append(open, ep.String())
		} else {
			clear = append(clear, ep.String())
		}
	}
	switch {
	case len(c.Endpoints) == 0:
		sec.TLS = "no (etcd not used)"
	case len(plain) == 0:
		sec.TLS = "yes"
	case len(plain) == len(c.Endpoints):
		sec.TLS = "no"
	default:
		sec.TLS = "partly: not to " + strings.Join(plain, ", ")
	}
	if len(open) > 0 {
		w := fmt.Sprintf("etcd endpoint %s: plain http on a non-loopback address and no authentication configured: anyone who can reach it can open the relay (use https:// with client certificates or an etcd user, see docs/etcd.md)", strings.Join(open, ", "))
		if c.Cert != "" {
			w += "; the client certificate is not sent over plain http"
		}
		sec.Warnings = append(sec.Warnings, w)
	}
	if len(clear) > 0 {
		sec.Warnings = append(sec.Warnings, fmt.Sprintf("etcd endpoint %s: plain http on a non-loopback address: the password of etcd user %q crosses the network in clear, and whoever reads it can open the relay (use https://)", strings.Join(clear, ", "), c.Username))
	}
	sec.Warnings = append(sec.Warnings, c.notes...)
	return sec
}

// who names the identity etcd sees, for messages.
func (c *Cluster) who() string {
	switch {
	case c.cfg.Username != "":
		return fmt.Sprintf("etcd user %q", c.cfg.Username)
	case c.certCN != "":
		return fmt.Sprintf("etcd user %q (the client certificate's name)", c.certCN)
	}
	return "a client without user or certificate"
}

// explain makes an etcd error say what went wrong: ErrDenied for refused
// credentials or permissions, and for a request that found no etcd to
// talk to, what connecting to each endpoint says (refused, a TLS
// certificate not trusted, ...), which the client itself only reports
// as a timeout.
func (c *Cluster) explain(err error) error {
	switch {
	case err == nil, errors.Is(err, ErrDenied), errors.Is(err, context.Canceled):
		return err
	case errors.Is(err, rpctypes.ErrPermissionDenied):
		return fmt.Errorf("%w: %s may not do this under %s (%v)", ErrDenied, c.who(), c.cfg.Prefix, err)
	case denied(err):
		return fmt.Errorf("%w: %s: %v", ErrDenied, c.who(), err)
	case errors.Is(err, context.DeadlineExceeded), status.Code(err) == codes.Unavailable, status.Code(err) == codes.DeadlineExceeded:
		if p := c.cfg.probe(c.tls); p != nil {
			return fmt.Errorf("%v (%w)", p, err)
		}
	}
	return err
}

// denied tells errors of refused credentials.
func denied(err error) bool {
	for _, e := range []error{rpctypes.ErrAuthFailed, rpctypes.ErrUserEmpty, rpctypes.ErrUserNotFound,
		rpctypes.ErrPermissionDenied} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// probe connects to every endpoint as the client would (TCP, then TLS
// with the same settings) and reports what fails, naming the endpoints;
// nil if each accepts the connection.
func (c Config) probe(tc *tls.Config) error {
	d := min(c.DialTimeout, 2*time.Second)
	if d <= 0 {
		d = 2 * time.Second
	}
	errs := make([]error, len(c.Endpoints))
	var wg sync.WaitGroup
	for i, e := range c.Endpoints {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ep := parseEndpoint(e)
			if err := ep.probe(tc, d); err != nil {
				errs[i] = fmt.Errorf("etcd at %s: %v", ep, err)
			}
		}()
	}
	wg.Wait()
	var msgs []string
	for _, err := range errs {
		if err != nil {
			msgs = append(msgs, err.Error())
		}
	}
	if len(msgs) == 0 {
		return nil
	}
	return errors.New(strings.Join(msgs, "; "))
}

func (ep endpoint) probe(tc *tls.Config, d time.Duration) error {
	network := "tcp"
	if ep.scheme == "unix" || ep.scheme == "unixs" {
		network = "unix"
	}
	conn, err := net.DialTimeout(network, ep.addr, d)
	if err != nil {
		var oe *net.OpError
		if errors.As(err, &oe) {
			return oe.Err
		}
		return err
	}
	defer conn.Close()
	if !ep.secure(tc != nil) {
		return nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if tc != nil {
		cfg = tc.Clone()
	}
	if cfg.ServerName == "" {
		cfg.ServerName = ep.host
	}
	cfg.NextProtos = []string{"h2"}
	conn.SetDeadline(time.Now().Add(d))
	tconn := tls.Client(conn, cfg)
	if err := tconn.Handshake(); err != nil {
		return fmt.Errorf("TLS handshake: %v", err)
	}
	// Under TLS 1.3 the server checks the client's certificate after
	// the handshake: its refusal is an alert on the first read.
	conn.SetDeadline(time.Now().Add(min(d, 500*time.Millisecond)))
	if _, err := tconn.Read(make([]byte, 1)); err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil
		}
		return fmt.Errorf("TLS: %v", err)
	}
	return nil
}
