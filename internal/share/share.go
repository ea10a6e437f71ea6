// Package share shares grants between hosts through etcd (v3 API), so a
// login on any POP/IMAP host opens relaying on every SMTP host.
//
// The local spool stays the source of truth on each POP/IMAP host: a
// login only writes the spool, and a Publisher copies the host's grants
// to etcd in the background (it never blocks, and keeps a bounded backlog
// while etcd is unreachable). Each SMTP host runs a Mirror: a full read,
// then a watch from that revision, kept in memory and offered as a grant
// source for the CDB rebuild.
//
// Keys, under a prefix (default /poprelay/v1/):
//
//	grants/<ip>   {"user":"alice","service":"pop3","host":"pop1",
//	               "time":"2026-11-26T11:00:00.123Z","exp":"2026-11-26T12:00:00.123Z"}
//	revoked/<ip>  {"time":"2026-11-26T11:30:00Z","by":"relayctl@smtp2"}
//
// <ip> is the canonical text of grant.CanonicalIP. "exp" is when the
// grant stops relaying; every mirror applies it itself, so grants close
// on time even while etcd is down. Each grant key is attached to a lease
// that outlives exp a little, so etcd cleans up after itself; leases are
// shared by all grants expiring in the same bucket (one minute by
// default), so 100k grants need about 60 leases, not 100k.
//
// A revocation deletes the grant and leaves a revoked/<ip> marker for
// MarkerTTL (at least the max age). A grant whose login time is not after
// the marker's time is refused, so a delayed replay from a POP host
// cannot bring a revoked grant back; a new login can.
//
// Writes are conditional transactions: a grant replaces the shared one
// only if it is newer (login time, then exp), and a host deletes a key
// only while it still holds exactly what that host wrote.
//
// The package never prints: it returns errors and logs through Logf.
package share

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"

	"github.com/poprelay/poprelay/internal/grant"
	"github.com/poprelay/poprelay/internal/quote"
)

// DefaultPrefix is where poprelay keeps its keys in etcd.
const DefaultPrefix = "/poprelay/v1/"

// Environment variables read by FromEnv.
const (
	EnvEndpoints  = "POPRELAY_ETCD_ENDPOINTS" // comma or space separated
	EnvCert       = "POPRELAY_ETCD_CERT"      // client certificate (PEM file)
	EnvKey        = "POPRELAY_ETCD_KEY"       // client key (PEM file)
	EnvCA         = "POPRELAY_ETCD_CA"        // CA bundle (PEM file)
	EnvUser       = "POPRELAY_ETCD_USER"
	EnvPassword   = "POPRELAY_ETCD_PASSWORD"
	EnvPassFile   = "POPRELAY_ETCD_PASSWORD_FILE" // the password, in a file
	EnvPrefix     = "POPRELAY_ETCD_PREFIX"
	EnvTimeout    = "POPRELAY_ETCD_TIMEOUT"    // Go duration ("5s") or seconds
	EnvMaxPerHost = "POPRELAY_ETCD_MAXPERHOST" // grants kept per origin host
)

// DefaultMaxPerHost is how many grants a mirror keeps per origin host
// (the "host" of a grant's value) unless configured otherwise: half of
// the default total cap (merge.DefaultMaxGrants), so that one POP host
// flooding etcd leaves the other half of the SMTP host's total to the
// others. A host with more concurrent grants than that, or an SMTP host
// with a higher --max-grants, raises it.
const DefaultMaxPerHost = 50000

var (
	// ErrConfig reports an unusable etcd configuration.
	ErrConfig = errors.New("share: bad etcd configuration")
	// ErrRevoked reports a grant refused because its address was
	// revoked at or after its login time.
	ErrRevoked = errors.New("share: address revoked")
	// ErrNotReady reports a mirror that has not read etcd successfully
	// yet. Once it has, it always answers from its last good data.
	ErrNotReady = errors.New("share: no successful read from etcd yet")
	// ErrDenied reports etcd refusing the credentials (a wrong password,
	// an unknown user) or an operation their roles do not permit. No
	// retry helps until an admin changes the credentials or the roles.
	ErrDenied = errors.New("share: etcd denied access")
	// ErrExpired reports a grant that expired before it could be shared.
	ErrExpired = errors.New("share: grant already expired")
	// errBusy reports a key that kept changing under a write.
	errBusy = errors.New("share: key changed during the write; giving up")
)

// Config says how to reach etcd. Only Endpoints is required.
type Config struct {
	Endpoints   []string      // e.g. https://10.0.0.1:2379
	Cert, Key   string        // client certificate and key files (PEM)
	CA          string        // CA bundle file (PEM); empty: system roots
	Username    string        // etcd user (needs etcd reachable at Open)
	Password    string        // its password
	PassFile    string        // the file Password was read from, if any
	Prefix      string        // key prefix; default DefaultPrefix
	DialTimeout time.Duration // connect and request timeout; default 5s
	// MaxPerHost caps the grants a mirror (and List) keeps per origin
	// host: over it, that host's newest grants are kept. Default
	// DefaultMaxPerHost.
	MaxPerHost int

	notes []string // warnings found while reading the configuration
}

// Enabled tells whether any endpoint is configured.
func (c Config) Enabled() bool { return len(c.Endpoints) > 0 }

// FromEnv reads the POPRELAY_ETCD_* variables through getenv (os.Getenv
// in production). Unset variables leave the zero value. The password
// comes from POPRELAY_ETCD_PASSWORD or is read from the file named by
// POPRELAY_ETCD_PASSWORD_FILE (see ReadPasswordFile), not both.
func FromEnv(getenv func(string) string) (Config, error) {
	c := Config{
		Endpoints: splitList(getenv(EnvEndpoints)),
		Cert:      getenv(EnvCert),
		Key:       getenv(EnvKey),
		CA:        getenv(EnvCA),
		Username:  getenv(EnvUser),
		Password:  getenv(EnvPassword),
		PassFile:  getenv(EnvPassFile),
		Prefix:    getenv(EnvPrefix),
	}
	if c.PassFile != "" {
		if c.Password != "" {
			return c, fmt.Errorf("%w: %s and %s exclude each other", ErrConfig, EnvPassword, EnvPassFile)
		}
		pw, warn, err := ReadPasswordFile(c.PassFile)
		if err != nil {
			return c, err
		}
		c.Password = pw
		if warn != "" {
			c.notes = append(c.notes, warn)
		}
	}
	if s := getenv(EnvTimeout); s != "" {
		d, err := parseDuration(s)
		if err != nil {
			return c, fmt.Errorf("%w: %s=%q: %v", ErrConfig, EnvTimeout, s, err)
		}
		c.DialTimeout = d
	}
	if s := getenv(EnvMaxPerHost); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			return c, fmt.Errorf("%w: %s=%q: want a number of grants, at least 1", ErrConfig, EnvMaxPerHost, s)
		}
		c.MaxPerHost = n
	}
	return c, c.check()
}

// Flags are the --etcd-* flags of a command, resolved against the
// environment after parsing: a flag given wins, else the variable, else
// the default.
type Flags struct {
	fs   *flag.FlagSet
	vals map[string]*string
	set  []Setting
}

// Setting is one effective etcd setting and where it came from, for
// "relayctl config". The password's value is shown as "(set)".
type Setting struct {
	Name, Env, Value, Source string
}

// flagDefs are the flags, their variables and their help.
var flagDefs = []struct{ name, env, help string }{
	{"etcd-endpoints", EnvEndpoints, "etcd endpoint `URLS`, comma separated (none: etcd is not used)"},
	{"etcd-cert", EnvCert, "etcd client certificate `FILE` (PEM)"},
	{"etcd-key", EnvKey, "etcd client key `FILE` (PEM)"},
	{"etcd-ca", EnvCA, "etcd CA bundle `FILE` (PEM)"},
	{"etcd-user", EnvUser, "etcd user `NAME`"},
	{"etcd-password", EnvPassword, "etcd `PASSWORD`: on the command line every local user sees it in ps; use --etcd-password-file"},
	{"etcd-password-file", EnvPassFile, "read the etcd password from `FILE` (one line; keep it mode 0600 or 0640)"},
	{"etcd-prefix", EnvPrefix, "etcd key `PREFIX`, ending in / (default " + DefaultPrefix + ")"},
	{"etcd-timeout", EnvTimeout, "etcd connect and request timeout, `DUR` (default 5s)"},
	{"etcd-max-per-host", EnvMaxPerHost, "keep at most `N` grants shared by one host (the newest; default " + strconv.Itoa(DefaultMaxPerHost) + ")"},
}

// RegisterFlags adds the --etcd-* flags to fs. Call Resolve after
// fs.Parse.
func RegisterFlags(fs *flag.FlagSet) *Flags {
	f := &Flags{fs: fs, vals: map[string]*string{}}
	for _, d := range flagDefs {
		f.vals[d.name] = fs.String(d.name, "", d.help+" ($"+d.env+")")
	}
	return f
}

// Resolve returns the configuration: each flag given on the command
// line, else its variable through getenv, else the default.
func (f *Flags) Resolve(getenv func(string) string) (Config, error) {
	given := map[string]bool{}
	f.fs.Visit(func(fl *flag.Flag) { given[fl.Name] = true })
	defaults := map[string]string{EnvPrefix: DefaultPrefix, EnvTimeout: "5s", EnvMaxPerHost: strconv.Itoa(DefaultMaxPerHost)} // shown only
	env := map[string]string{}
	f.set = f.set[:0]
	for _, d := range flagDefs {
		st := Setting{Name: d.name, Env: d.env, Value: defaults[d.env], Source: "default"}
		switch v := getenv(d.env); {
		case given[d.name]:
			st.Value, st.Source = *f.vals[d.name], "flag --"+d.name
			env[d.env] = st.Value
		case v != "":
			st.Value, st.Source = v, "env "+d.env
			env[d.env] = st.Value
		}
		if d.env == EnvPassword && st.Value != "" {
			st.Value = "(set)"
		}
		f.set = append(f.set, st)
	}
	c, err := FromEnv(func(k string) string { return env[k] })
	if given["etcd-password"] && *f.vals["etcd-password"] != "" {
		c.notes = append(c.notes, "--etcd-password on the command line is visible to every local user (ps, /proc): use --etcd-password-file or "+EnvPassFile)
	}
	return c, err
}

// Settings lists the effective settings of the last Resolve.
func (f *Flags) Settings() []Setting { return f.set }

// Check reports an inconsistent configuration.
func (c Config) Check() error { return c.check() }

func (c Config) check() error {
	if (c.Cert == "") != (c.Key == "") {
		return fmt.Errorf("%w: a client certificate needs both %s and %s", ErrConfig, EnvCert, EnvKey)
	}
	if (c.Username == "") != (c.Password == "") {
		return fmt.Errorf("%w: %s goes with a password (%s or %s)", ErrConfig, EnvUser, EnvPassFile, EnvPassword)
	}
	if c.Prefix != "" && !strings.HasSuffix(c.Prefix, "/") {
		return fmt.Errorf("%w: prefix %q must end in /", ErrConfig, c.Prefix)
	}
	if c.DialTimeout < 0 {
		return fmt.Errorf("%w: negative timeout", ErrConfig)
	}
	if c.MaxPerHost < 0 {
		return fmt.Errorf("%w: negative %s", ErrConfig, EnvMaxPerHost)
	}
	for _, e := range c.Endpoints {
		ep := parseEndpoint(e)
		if strings.ContainsAny(e, " \t\n") || e == "" {
			return fmt.Errorf("%w: endpoint %q", ErrConfig, ep.String())
		}
		if ep.userinfo {
			return fmt.Errorf("%w: endpoint %s holds credentials, which are not used there: give %s and %s", ErrConfig, ep.String(), EnvUser, EnvPassFile)
		}
	}
	return nil
}

func splitList(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' || r == '\n' })
}

func parseDuration(s string) (time.Duration, error) {
	if n, err := strconv.ParseFloat(s, 64); err == nil {
		if n < 0 {
			return 0, errors.New("negative")
		}
		return time.Duration(n * float64(time.Second)), nil
	}
	d, err := time.ParseDuration(s)
	if err == nil && d < 0 {
		return 0, errors.New("negative")
	}
	return d, err
}

func (c Config) tls() (*tls.Config, error) {
	if c.Cert == "" && c.CA == "" && !anyHTTPS(c.Endpoints) {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.Cert != "" {
		kp, err := tls.LoadX509KeyPair(c.Cert, c.Key)
		if err != nil {
			return nil, fmt.Errorf("%w: client certificate: %v", ErrConfig, err)
		}
		tc.Certificates = []tls.Certificate{kp}
	}
	if c.CA != "" {
		pem, err := os.ReadFile(c.CA)
		if err != nil {
			return nil, fmt.Errorf("%w: CA: %v", ErrConfig, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%w: CA: no certificate in %s", ErrConfig, c.CA)
		}
		tc.RootCAs = pool
	}
	return tc, nil
}

func anyHTTPS(eps []string) bool {
	for _, e := range eps {
		if strings.HasPrefix(e, "https://") || strings.HasPrefix(e, "unixs://") {
			return true
		}
	}
	return false
}

// Options tune a Cluster. All are optional.
type Options struct {
	// Host names this host in the grants it shares and the markers it
	// leaves; default os.Hostname().
	Host string
	// MaxAge is the lifetime of a grant without its own expiry;
	// default 1h.
	MaxAge time.Duration
	// MarkerTTL is how long a revocation marker lives; default and
	// minimum MaxAge, so a replayed grant older than the revocation has
	// expired by the time the marker goes.
	MarkerTTL time.Duration
	// Bucket is the width of a lease bucket; default 1 minute.
	Bucket time.Duration
	// Slack is how long a key outlives the end of its bucket; default
	// 30s. The mirrors' own expiry is exact; the lease only cleans up.
	Slack time.Duration
	// Logf logs one line; nil discards.
	Logf func(format string, args ...any)
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
}

// Cluster is a connection to etcd and the operations poprelay runs on it.
// It is safe for concurrent use.
type Cluster struct {
	cli     *clientv3.Client
	cfg     Config
	opt     Options
	tls     *tls.Config // nil: plain
	certCN  string      // the client certificate's common name
	grants  string      // prefix + "grants/"
	revoked string      // prefix + "revoked/"
	leases  leaseCache

	scanHook func(limit int) // tests: told the length each page asks for
}

// Open returns a Cluster for cfg. Without a user name it does not wait
// for etcd: a cluster that is down at start is reached when it comes
// back. With one, etcd must answer within the timeout (to get a token).
func Open(cfg Config, opt Options) (*Cluster, error) {
	if !cfg.Enabled() {
		return nil, fmt.Errorf("%w: no endpoints (%s)", ErrConfig, EnvEndpoints)
	}
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.MaxPerHost == 0 {
		cfg.MaxPerHost = DefaultMaxPerHost
	}
	if opt.Host == "" {
		opt.Host, _ = os.Hostname()
	}
	if opt.MaxAge <= 0 {
		opt.MaxAge = time.Hour
	}
	if opt.MarkerTTL < opt.MaxAge {
		opt.MarkerTTL = opt.MaxAge
	}
	if opt.Bucket <= 0 {
		opt.Bucket = time.Minute
	}
	if opt.Slack <= 0 {
		opt.Slack = 30 * time.Second
	}
	if opt.Logf == nil {
		opt.Logf = func(string, ...any) {}
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	tc, err := cfg.tls()
	if err != nil {
		return nil, err
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            cfg.Endpoints,
		DialTimeout:          cfg.DialTimeout,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: cfg.DialTimeout,
		TLS:                  tc,
		Username:             cfg.Username,
		Password:             cfg.Password,
		Logger:               zap.NewNop(),
		// No response may be larger: a read that would be is read
		// again in smaller pages (see scan), so no key set written
		// into etcd, however large, makes a read fail for good.
		MaxCallRecvMsgSize: maxResponse,
		// Reconnect within a couple of seconds of etcd's return, not
		// after gRPC's default backoff of up to two minutes.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
			MinConnectTimeout: cfg.DialTimeout,
		})},
	})
	c := &Cluster{
		cli:     cli,
		cfg:     cfg,
		opt:     opt,
		tls:     tc,
		grants:  cfg.Prefix + "grants/",
		revoked: cfg.Prefix + "revoked/",
		leases:  leaseCache{byEnd: map[int64]clientv3.LeaseID{}},
	}
	if tc != nil && len(tc.Certificates) > 0 && tc.Certificates[0].Leaf != nil {
		c.certCN = tc.Certificates[0].Leaf.Subject.CommonName
	}
	if err != nil {
		var eps []string
		for _, e := range cfg.Endpoints {
			eps = append(eps, parseEndpoint(e).String())
		}
		if err = c.explain(err); errors.Is(err, ErrDenied) {
			return nil, err
		}
		return nil, fmt.Errorf("share: unable to reach etcd at %s: %w", strings.Join(eps, ","), err)
	}
	return c, nil
}

// Close closes the connection. Publishers and mirrors must be stopped
// first.
func (c *Cluster) Close() error { return c.cli.Close() }

// Client is the underlying etcd client (for tests and tools).
func (c *Cluster) Client() *clientv3.Client { return c.cli }

// Host is the name this host shares grants under.
func (c *Cluster) Host() string { return c.opt.Host }

func (c *Cluster) logf(format string, args ...any) { c.opt.Logf(format, args...) }

// withTimeout bounds one request by the configured timeout.
func (c *Cluster) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, c.cfg.DialTimeout)
}

// record is the JSON of a grant key.
type record struct {
	User    string    `json:"user"`
	Service string    `json:"service,omitempty"`
	Host    string    `json:"host,omitempty"`
	Time    time.Time `json:"time"`
	Exp     time.Time `json:"exp"`
}

// marker is the JSON of a revoked key.
type marker struct {
	Time time.Time `json:"time"`
	By   string    `json:"by,omitempty"`
}

// maxValue bounds what a key's value may hold.
const maxValue = 4096

// maxIP bounds the address in a key: the longest canonical text of
// an address (IPv6 with an IPv4 tail) is 45 bytes.
const maxIP = 45

func (c *Cluster) encode(g grant.Grant, host string) []byte {
	b, _ := json.Marshal(record{
		User:    g.User,
		Service: g.Service,
		Host:    host,
		Time:    g.Time.UTC(),
		Exp:     g.Expiry(c.opt.MaxAge).UTC(),
	})
	return b
}

// decode turns a grant key and value into a grant, checking both: the key
// must end in a canonical IP and the value must have a login time and an
// expiry.
func (c *Cluster) decode(key, value []byte) (grant.Grant, string, error) {
	ip, ok := bytes.CutPrefix(key, []byte(c.grants))
	if !ok || len(ip) > maxIP {
		return grant.Grant{}, "", fmt.Errorf("share: %s: not a canonical IP", quoteKey(key))
	}
	if canon, err := grant.CanonicalIP(string(ip)); err != nil || canon != string(ip) {
		return grant.Grant{}, "", fmt.Errorf("share: %s: not a canonical IP", quoteKey(key))
	}
	if len(value) > maxValue {
		return grant.Grant{}, "", fmt.Errorf("share: %s: value of %d bytes", quoteKey(key), len(value))
	}
	var r record
	if err := json.Unmarshal(value, &r); err != nil {
		return grant.Grant{}, "", fmt.Errorf("share: %s: %v", quoteKey(key), err)
	}
	if r.Time.IsZero() || r.Exp.IsZero() {
		return grant.Grant{}, "", fmt.Errorf("share: %s: no time or exp", quoteKey(key))
	}
	for _, f := range []string{r.User, r.Service, r.Host} {
		if err := checkField(f); err != nil {
			return grant.Grant{}, "", fmt.Errorf("share: %s: %v", quoteKey(key), err)
		}
	}
	return grant.Grant{IP: string(ip), User: r.User, Service: r.Service, Time: r.Time, Expires: r.Exp}, r.Host, nil
}

// maxField bounds a user, service or host name, as the spool does.
const maxField = 255

// checkField accepts names that fit on one line: they end up in the CDB
// (TCPREMOTEINFO) and in logs.
func checkField(v string) error {
	if len(v) > maxField {
		return fmt.Errorf("%w: name of %d bytes", grant.ErrBadField, len(v))
	}
	for i := 0; i < len(v); i++ {
		if v[i] < 0x20 || v[i] == 0x7f {
			return fmt.Errorf("%w: %s has a control character", grant.ErrBadField, quote.Quote(v))
		}
	}
	return nil
}

// newer tells whether a should replace b: a later login, or the same
// login with a later expiry.
func newer(a, b grant.Grant) bool {
	if !a.Time.Equal(b.Time) {
		return a.Time.After(b.Time)
	}
	return a.Expires.After(b.Expires)
}

// share writes g (with origin host) unless a newer grant is already there
// or a revocation marker forbids it. It reports whether it wrote.
func (c *Cluster) share(ctx context.Context, g grant.Grant, host string) (bool, error) {
	now := c.opt.Now()
	exp := g.Expiry(c.opt.MaxAge)
	if !exp.After(now) {
		return false, ErrExpired
	}
	g.Expires = exp
	for _, f := range []string{g.User, g.Service, host} {
		if err := checkField(f); err != nil {
			return false, err
		}
	}
	gk, rk := c.grants+g.IP, c.revoked+g.IP
	val := c.encode(g, host)
	var gRev, rRev int64 // what the key and marker were when last read
	for try := 0; try < 5; try++ {
		lease, err := c.leases.get(ctx, c, exp)
		if err != nil {
			return false, err
		}
		cmp := []clientv3.Cmp{
			clientv3.Compare(clientv3.ModRevision(gk), "=", gRev),
			clientv3.Compare(clientv3.ModRevision(rk), "=", rRev),
		}
		tctx, cancel := c.withTimeout(ctx)
		resp, err := c.cli.Txn(tctx).If(cmp...).
			Then(clientv3.OpPut(gk, string(val), clientv3.WithLease(lease))).
			Else(clientv3.OpGet(gk), clientv3.OpGet(rk)).Commit()
		cancel()
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			c.leases.drop(exp, c, lease)
			continue
		}
		if err != nil {
			return false, err
		}
		if resp.Succeeded {
			return true, nil
		}
		gRev, rRev = 0, 0
		if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) > 0 {
			gRev = kvs[0].ModRevision
			if bytes.Equal(kvs[0].Value, val) {
				return false, nil
			}
			if old, _, err := c.decode(kvs[0].Key, kvs[0].Value); err == nil && !newer(g, old) {
				return false, nil
			}
		}
		if kvs := resp.Responses[1].GetResponseRange().GetKvs(); len(kvs) > 0 {
			rRev = kvs[0].ModRevision
			var m marker
			if err := json.Unmarshal(kvs[0].Value, &m); err == nil && !g.Time.After(m.Time) {
				return false, fmt.Errorf("%w: %s at %s by %s", ErrRevoked, g.IP, m.Time.UTC().Format(time.RFC3339), m.By)
			}
		}
	}
	return false, errBusy
}

// unshare deletes ip's key if it still holds exactly value.
func (c *Cluster) unshare(ctx context.Context, ip string, value []byte) (bool, error) {
	gk := c.grants + ip
	tctx, cancel := c.withTimeout(ctx)
	defer cancel()
	resp, err := c.cli.Txn(tctx).If(clientv3.Compare(clientv3.Value(gk), "=", string(value))).
		Then(clientv3.OpDelete(gk)).Commit()
	if err != nil {
		return false, err
	}
	return resp.Succeeded, nil
}

// Allow shares g cluster-wide (relayctl allow): g.Time should be now, and
// g.Expires the end of the allowance (zero: Time + max age). It returns
// ErrRevoked if the address was revoked at or after g.Time.
func (c *Cluster) Allow(ctx context.Context, g grant.Grant) error {
	ip, err := grant.CanonicalIP(g.IP)
	if err != nil {
		return err
	}
	g.IP = ip
	_, err = c.share(ctx, g, c.opt.Host)
	return c.explain(err)
}

// Revoke deletes ip's grant cluster-wide and leaves a marker, so that no
// grant with a login time up to now comes back. by says who revoked it
// (default: this host). It reports whether a grant was there.
func (c *Cluster) Revoke(ctx context.Context, ip, by string) (bool, error) {
	ok, err := c.revoke(ctx, ip, by)
	return ok, c.explain(err)
}

func (c *Cluster) revoke(ctx context.Context, ip, by string) (bool, error) {
	ip, err := grant.CanonicalIP(ip)
	if err != nil {
		return false, err
	}
	if by == "" {
		by = c.opt.Host
	}
	now := c.opt.Now()
	exp := now.Add(c.opt.MarkerTTL)
	m, _ := json.Marshal(marker{Time: now.UTC(), By: by})
	for try := 0; try < 3; try++ {
		lease, err := c.leases.get(ctx, c, exp)
		if err != nil {
			return false, err
		}
		tctx, cancel := c.withTimeout(ctx)
		resp, err := c.cli.Txn(tctx).Then(
			clientv3.OpDelete(c.grants+ip),
			clientv3.OpPut(c.revoked+ip, string(m), clientv3.WithLease(lease)),
		).Commit()
		cancel()
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			c.leases.drop(exp, c, lease)
			continue
		}
		if err != nil {
			return false, err
		}
		return resp.Responses[0].GetResponseDeleteRange().GetDeleted() > 0, nil
	}
	return false, errBusy
}

// RevokeUser revokes every shared grant of user and returns their IPs.
func (c *Cluster) RevokeUser(ctx context.Context, user, by string) ([]string, error) {
	// Every key, not only those within the per-host cap: a revocation
	// must also reach the grants a mirror dropped.
	all, _, err := c.read(ctx, 0)
	if err != nil {
		return nil, c.explain(err)
	}
	now := c.opt.Now()
	gs := make([]grant.Grant, 0, len(all))
	for _, s := range all {
		if s.Expires.After(now) {
			gs = append(gs, s.Grant)
		}
	}
	sort.Slice(gs, func(i, j int) bool { return gs[i].IP < gs[j].IP })
	var ips []string
	for _, g := range gs {
		if g.User != user {
			continue
		}
		if _, err := c.Revoke(ctx, g.IP, by); err != nil {
			return ips, err
		}
		ips = append(ips, g.IP)
	}
	return ips, nil
}

// Shared is a grant as etcd holds it, with the host that shared it.
type Shared struct {
	grant.Grant
	Host string
}

// List reads every live grant from etcd, sorted by IP. Damaged keys are
// logged and skipped.
func (c *Cluster) List(ctx context.Context) ([]grant.Grant, error) {
	all, _, err := c.read(ctx, c.cfg.MaxPerHost)
	if err != nil {
		return nil, c.explain(err)
	}
	now := c.opt.Now()
	out := make([]grant.Grant, 0, len(all))
	for _, s := range all {
		if s.Expires.After(now) {
			out = append(out, s.Grant)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].IP < out[j].IP })
	return out, nil
}

// ListShared is List with each grant's origin host.
func (c *Cluster) ListShared(ctx context.Context) ([]Shared, error) {
	all, _, err := c.read(ctx, c.cfg.MaxPerHost)
	if err != nil {
		return nil, c.explain(err)
	}
	now := c.opt.Now()
	out := make([]Shared, 0, len(all))
	for _, s := range all {
		if s.Expires.After(now) {
			out = append(out, s)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].IP < out[j].IP })
	return out, nil
}

// page is how many keys one read returns at most.
const page = 5000

// firstPage is how many keys the first read of a scan asks for at most:
// etcd has no byte limit on a range read, and builds a whole page in
// memory before the client may refuse it as too large (5000 values of
// 1.5 MiB are 7 GiB), so a scan starts small and grows to what the
// pages read say.
const firstPage = 256

// pager carries the page length a scan learned to the next scan of
// the same reader (a Mirror's full reads): the smallest length the
// bytes of its pages called for, so a mirror that met large keys starts
// its next scan at that length, not at firstPage. The zero pager starts
// at firstPage.
type pager struct{ n atomic.Int64 }

// start is the length of a scan's first page.
func (p *pager) start() int {
	if p == nil {
		return firstPage
	}
	if n := int(p.n.Load()); n > 0 {
		return min(n, firstPage)
	}
	return firstPage
}

// learn records the smallest length a scan called for.
func (p *pager) learn(n int) {
	if p != nil {
		p.n.Store(int64(max(1, n)))
	}
}

// maxResponse bounds one response from etcd, in bytes (the client's
// receive limit). etcd refuses a request larger than its
// --max-request-bytes (default 1.5 MiB), so one key and its value always
// fit; a page of 5000 keys may not, and is then read again in smaller
// pages.
var maxResponse = 16 << 20

// tooLarge tells a response over the receive limit (or one etcd refused
// to send for its size).
func tooLarge(err error) bool { return status.Code(err) == codes.ResourceExhausted }

// scan calls fn with every key under prefix as of one revision, in key
// order, and returns that revision. It reads pages of at most page keys
// and maxResponse bytes, the first of at most firstPage keys (or what
// pg learned from the last scan, if fewer): a page too large for the
// limit, or too slow for the timeout while etcd still answers a small
// read, is read again shorter (to what would fill half the limit, when
// gRPC tells the size; a sixteenth after a timeout; else half as long),
// down to one key, and grows back after each page that went through (at
// most doubling, to what would fill half the limit at that page's size
// per key); a single key too large even alone is skipped by name (a
// keys-only read tells it), with a warning. So no set of keys, however
// large or hostile, makes the read fail for good: it costs time in
// proportion to their bytes. pg (nil: none) learns the smallest length
// the pages called for, for the next scan.
func (c *Cluster) scan(ctx context.Context, prefix string, fn func(kv *mvccpb.KeyValue), skips *skipLog, pg *pager) (int64, error) {
	end := clientv3.GetPrefixRangeEnd(prefix)
	var rev int64
	from := prefix
	n := pg.start()
	least := page // the smallest length the bytes called for
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(int64(n))}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		if c.scanHook != nil {
			c.scanHook(n)
		}
		tctx, cancel := c.withTimeout(ctx)
		resp, err := c.cli.Get(tctx, from, opts...)
		cancel()
		if err != nil {
			slow := status.Code(err) == codes.DeadlineExceeded || errors.Is(err, context.DeadlineExceeded)
			if ctx.Err() != nil || !(tooLarge(err) || slow) {
				return 0, err
			}
			if slow && c.cli.ActiveConnection().GetState() != connectivity.Ready {
				return 0, err // not connected: etcd is down, not slow
			}
			// Too large, or too slow: is etcd there at all? A
			// keys-only read of one key says, and names the key.
			key, r, perr := c.firstKey(ctx, from, end, rev)
			if perr != nil {
				return 0, err // etcd does not answer: the read fails
			}
			if rev == 0 {
				rev = r
			}
			if key == nil {
				pg.learn(least)
				return rev, nil // the keys left went meanwhile
			}
			if n > 1 {
				n = smaller(n, err)
				least = min(least, n)
				continue
			}
			if !tooLarge(err) {
				return 0, err // one key too slow: etcd is in trouble
			}
			skips.add(fmt.Errorf("%s: %v", quoteKey(key), err))
			from = string(key) + "\x00"
			continue
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		size := 0
		for _, kv := range resp.Kvs {
			size += len(kv.Key) + len(kv.Value)
			fn(kv)
		}
		// The next page: as many keys as would fill half the limit
		// at this page's size per key, at most twice as many (keys
		// past this page may be larger).
		fill := page
		if len(resp.Kvs) > 0 {
			fill = min(page, max(1, len(resp.Kvs)*(maxResponse/2)/max(size, 1)))
			least = min(least, fill)
		}
		if !resp.More || len(resp.Kvs) == 0 {
			pg.learn(least)
			return rev, nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		n = min(2*n, fill)
	}
}

// tooLargeBy finds the size of a response over the receive limit in
// gRPC's error ("received message larger than max (N vs. M)").
var tooLargeBy = regexp.MustCompile(`larger than max \((\d+) vs\. \d+\)`)

// smaller is the page length to try after n keys failed with err: what
// would fill half the limit if the response's size is known, a
// sixteenth after a timeout, else half.
func smaller(n int, err error) int {
	if m := tooLargeBy.FindStringSubmatch(err.Error()); m != nil {
		if size, perr := strconv.Atoi(m[1]); perr == nil && size > maxResponse {
			return max(1, min(n/2, int(int64(n)*int64(maxResponse/2)/int64(size))))
		}
	}
	if !tooLarge(err) {
		// Too slow: a page of 5000 grants takes a fraction of a
		// second, so one that took the whole timeout was far too
		// long. Each try costs a timeout: shrink fast.
		return max(1, n/16)
	}
	return max(1, n/2)
}

// firstKey is the first key from from on (nil: none), by a keys-only
// read of one key, and the revision read.
func (c *Cluster) firstKey(ctx context.Context, from, end string, rev int64) ([]byte, int64, error) {
	opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(1), clientv3.WithKeysOnly()}
	if rev != 0 {
		opts = append(opts, clientv3.WithRev(rev))
	}
	tctx, cancel := c.withTimeout(ctx)
	defer cancel()
	resp, err := c.cli.Get(tctx, from, opts...)
	if err != nil {
		return nil, 0, err
	}
	if len(resp.Kvs) == 0 {
		return nil, resp.Header.Revision, nil
	}
	return resp.Kvs[0].Key, resp.Header.Revision, nil
}

// quoteKey is a key for a log line: quoted, and cut after 80 bytes (a
// hostile key may be megabytes long).
func quoteKey(k []byte) string {
	if len(k) > 80 {
		return fmt.Sprintf("key %s... (%d bytes)", quote.Quote(string(k[:80])), len(k))
	}
	return "key " + quote.Quote(string(k))
}

// read returns every grant as of one revision, reading in bounded pages
// (see scan). Keys that hold no usable grant are skipped, with a warning
// for the first few (see skipLog). With perHost > 0, the expired are
// skipped before they are counted (an expired key with a newer login
// must not push out a live grant), at most that many grants per origin
// host are kept, the newest (see hostCaps), and each host over it is
// named in a warning; with perHost 0, expired ones are returned too.
func (c *Cluster) read(ctx context.Context, perHost int) (map[string]Shared, int64, error) {
	all, _, rev, err := c.readCapped(ctx, perHost, nil)
	return all, rev, err
}

// readCapped is read that also returns the count of each host's grants;
// pg (nil: none) carries the page length from one read to the next.
func (c *Cluster) readCapped(ctx context.Context, perHost int, pg *pager) (map[string]Shared, *hostCaps, int64, error) {
	all := map[string]Shared{}
	caps := newHostCaps(perHost)
	skips := c.newSkips(c.grants)
	now := c.opt.Now()
	rev, err := c.scan(ctx, c.grants, func(kv *mvccpb.KeyValue) {
		g, host, err := c.decode(kv.Key, kv.Value)
		if err != nil {
			skips.add(err)
			return
		}
		if perHost > 0 && !g.Expires.After(now) {
			return // expired: counts for no host
		}
		s := Shared{Grant: g, Host: host}
		all[g.IP] = s
		if out, ok := caps.add(s); ok {
			delete(all, out.IP)
		}
	}, skips, pg)
	if err != nil {
		return nil, nil, 0, err
	}
	skips.done()
	caps.report(c, c.opt.Now(), 0)
	return all, caps, rev, nil
}

// leaseCache hands out one lease per expiry bucket.
type leaseCache struct {
	mu    sync.Mutex
	byEnd map[int64]clientv3.LeaseID // bucket end (Unix seconds) → lease
}

// bucketEnd is the end of exp's bucket.
func (c *Cluster) bucketEnd(exp time.Time) time.Time {
	b := exp.Truncate(c.opt.Bucket)
	if b.Before(exp) {
		b = b.Add(c.opt.Bucket)
	}
	return b
}

// get returns the lease for exp's bucket, granting it if needed: its TTL
// runs to the bucket's end plus the slack.
func (l *leaseCache) get(ctx context.Context, c *Cluster, exp time.Time) (clientv3.LeaseID, error) {
	end := c.bucketEnd(exp)
	now := c.opt.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	for e := range l.byEnd {
		if time.Unix(e, 0).Add(c.opt.Slack).Before(now) {
			delete(l.byEnd, e)
		}
	}
	if id, ok := l.byEnd[end.Unix()]; ok {
		return id, nil
	}
	ttl := int64((end.Add(c.opt.Slack).Sub(now) + time.Second - 1) / time.Second)
	ttl = max(ttl, 5)
	tctx, cancel := c.withTimeout(ctx)
	defer cancel()
	resp, err := c.cli.Grant(tctx, ttl)
	if err != nil {
		return 0, err
	}
	l.byEnd[end.Unix()] = resp.ID
	return resp.ID, nil
}

// drop forgets a lease etcd no longer knows.
func (l *leaseCache) drop(exp time.Time, c *Cluster, id clientv3.LeaseID) {
	end := c.bucketEnd(exp).Unix()
	l.mu.Lock()
	if l.byEnd[end] == id {
		delete(l.byEnd, end)
	}
	l.mu.Unlock()
}
