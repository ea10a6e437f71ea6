package metrics

import (
	"log"
	"net"
	"net/http"
	"sync"
	"time"
)

// The metrics server's limits. A Prometheus server scrapes with one
// connection (kept alive between scrapes), a second one during a
// restart; nothing else needs the endpoint. The limits keep a flood of
// idle or slow connections (slowloris) from taking the watcher's file
// descriptors: every connection the server holds is one, and a watcher
// out of descriptors can no longer read the spool or write the CDB.
const (
	// MaxConns is how many connections the server holds at once. One
	// more is accepted and closed at once (with a reset, leaving no
	// TIME_WAIT): besides the listener, at most MaxConns+1 descriptors
	// ever go to the endpoint, whatever the number of clients.
	MaxConns = 64
	// ReadHeaderTimeout bounds the time from a connection's start (or a
	// kept-alive connection's next request) to the end of its request
	// headers: a client trickling a header a byte at a time is cut off
	// when it runs out, however fast it trickles.
	ReadHeaderTimeout = 5 * time.Second
	// ReadTimeout bounds reading a whole request (a GET has no body).
	ReadTimeout = 10 * time.Second
	// WriteTimeout bounds the time from the end of a request's headers
	// to the end of its response: a client that does not read its
	// response holds its connection no longer than this.
	WriteTimeout = 30 * time.Second
	// IdleTimeout is how long a kept-alive connection may wait for its
	// next request: short, since 64 clients that keep requesting within
	// it hold every slot. Prometheus scrapes every 15 s to 1 min; a
	// longer interval just opens a new connection for each scrape.
	IdleTimeout = 30 * time.Second
)

// Listen listens on addr (host:port) for the metrics server, holding at
// most MaxConns connections at once.
func Listen(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return LimitListener(ln, MaxConns), nil
}

// LimitListener returns a listener that holds at most n of ln's
// connections at once: a connection accepted while n are open is closed
// at once, and Accept goes on to the next. (Not waiting to accept, as
// golang.org/x/net/netutil's does: a client then waits in the kernel's
// backlog, seeing no answer, where here it sees its connection refused.)
func LimitListener(ln net.Listener, n int) net.Listener {
	return &limitListener{Listener: ln, sem: make(chan struct{}, n)}
}

type limitListener struct {
	net.Listener
	sem chan struct{}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.sem <- struct{}{}:
			return &limitConn{Conn: c, release: func() { <-l.sem }}, nil
		default:
			if tc, ok := c.(*net.TCPConn); ok {
				tc.SetLinger(0)
			}
			c.Close()
		}
	}
}

// limitConn gives its slot back when it is closed, once.
type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// Server returns the HTTP server of the metrics, on /metrics, with the
// timeouts above; its own errors (a failed accept) go to logf.
func (m *Metrics) Server(logf func(format string, args ...any)) *http.Server {
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.Handler())
	return &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: ReadHeaderTimeout,
		ReadTimeout:       ReadTimeout,
		WriteTimeout:      WriteTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          log.New(logWriter(logf), "", 0),
	}
}

// logWriter turns the server's log lines into calls of logf.
type logWriter func(format string, args ...any)

func (w logWriter) Write(p []byte) (int, error) {
	msg := string(p)
	for len(msg) > 0 && msg[len(msg)-1] == '\n' {
		msg = msg[:len(msg)-1]
	}
	w("metrics: %s", msg)
	return len(p), nil
}
