package t

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/poprelay/poprelay/internal/metrics"
	"github.com/poprelay/poprelay/internal/wait"
)

// startWatchLimited runs "relayctl watch" under prlimit with nofile
// descriptors (soft and hard: Go raises the soft limit to the hard one)
// and waits for its first publish, like startWatch.
func (s *relayctlSite) startWatchLimited(t *testing.T, nofile int, args ...string) *watcher {
	t.Helper()
	prlimit := need(t, "prlimit")
	argv := append([]string{fmt.Sprintf("--nofile=%d:%d", nofile, nofile), bin("relayctl"), "watch", "--debounce", "2ms"}, args...)
	w := s.runWatch(t, prlimit, argv...)
	w.waitLine(t, "rebuilt: ")
	return w
}

// sockets counts the sockets among pid's descriptors, and all of them.
func sockets(pid int) (socks, fds int) {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if l, err := os.Readlink(dir + "/" + e.Name()); err == nil {
			fds++
			if strings.HasPrefix(l, "socket:") {
				socks++
			}
		}
	}
	return socks, fds
}

// TestMetricsFloodKeepsPublishing: a flood of idle connections and of
// slowloris requests (headers trickled a line at a time) on the
// watcher's --metrics port, kept up as the server closes them, must not
// take the descriptors the watcher publishes with. The watcher runs with
// 128 descriptors (prlimit) and the flood holds 150 connections open at
// all times: without the cap the server takes every descriptor ("accept:
// too many open files") and a login's grant may wait for one. With it,
// the server never holds more than metrics.MaxConns connections (counted
// in /proc/PID/fd while the flood goes on), the login is published
// during the flood, the server cuts the slowloris requests off itself
// (ReadHeaderTimeout), and /metrics answers once the flood stops.
func TestMetricsFloodKeepsPublishing(t *testing.T) {
	const nofile, idle, slow = 128, 120, 30
	if metrics.MaxConns+20 > nofile {
		t.Fatalf("metrics.MaxConns %d leaves the test's watcher (%d descriptors) too few", metrics.MaxConns, nofile)
	}
	s := newRelayctlSite(t, ":allow\n")
	w := s.startWatchLimited(t, nofile, "--metrics", "127.0.0.1:0")
	addr := strings.TrimSpace(strings.TrimPrefix(strings.TrimSuffix(w.waitLine(t, "metrics on http://"), "/metrics\n"), "relayctl: metrics on http://"))
	pid := w.cmd.Process.Pid
	base, baseFDs := sockets(pid)
	t.Logf("before the flood: %d sockets, %d descriptors", base, baseFDs)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var maxSocks, held, cutOff, dials atomic.Int64
	// hold keeps c until the server closes it or the flood stops; a
	// slow one trickles a header line every 200 ms.
	hold := func(c net.Conn, trickle bool) {
		defer c.Close()
		done := make(chan struct{})
		defer close(done)
		go func() {
			select {
			case <-stop:
				c.Close()
			case <-done:
			}
		}()
		var lines atomic.Int64
		if trickle {
			if _, err := io.WriteString(c, "GET /metrics HTTP/1.1\r\nHost: poprelay\r\n"); err != nil {
				return
			}
			go func() {
				tick := time.NewTicker(200 * time.Millisecond)
				defer tick.Stop()
				for {
					select {
					case <-done:
						return
					case <-tick.C:
						if _, err := fmt.Fprintf(c, "X-Pad-%d: a\r\n", lines.Load()); err != nil {
							return
						}
						lines.Add(1)
					}
				}
			}()
		}
		// Until the server closes it (EOF or a reset; whatever it
		// answered first is read and dropped).
		io.Copy(io.Discard, c)
		select {
		case <-stop:
		default:
			if trickle && lines.Load() > 0 {
				cutOff.Add(1)
			}
		}
	}
	flood := func(trickle bool) {
		defer wg.Done()
		// Paced, so the connections the cap turns away do not spin.
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if c, err := net.Dial("tcp", addr); err == nil {
				dials.Add(1)
				hold(c, trickle)
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}
	wg.Add(idle + slow)
	for i := range idle + slow {
		go flood(i >= idle)
	}
	var sampler sync.WaitGroup
	sampler.Add(1)
	go func() {
		defer sampler.Done()
		for {
			n, _ := sockets(pid)
			held.Store(int64(n))
			if int64(n) > maxSocks.Load() {
				maxSocks.Store(int64(n))
			}
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	stopFlood := sync.OnceFunc(func() {
		close(stop)
		wg.Wait()
		sampler.Wait()
	})
	defer stopFlood()

	// The flood is on: the server holds what it can.
	wait.For(t, fmt.Sprintf("the watcher to hold %d connections", metrics.MaxConns), func() bool {
		return held.Load() >= int64(metrics.MaxConns)
	})
	// A login meanwhile: its grant must be published.
	const ip = "192.0.2.61"
	recordAt(t, s.spool, ip, "alice")
	wait.For(t, ip+" relayed in the CDB during the flood", func() bool { return relays(t, s.cdb, ip) })
	// A slowloris request is cut off by the server, however it trickles.
	wait.For(t, "the server to cut off a trickled request", func() bool { return cutOff.Load() > 0 })
	stopFlood()
	t.Logf("flood: %d connections made, the watcher held at most %d sockets (%d before)", dials.Load(), maxSocks.Load(), base)

	// Once the flood stops, /metrics answers (each flood connection is
	// gone when the server or the flood closed it).
	wait.Succeeds(t, "/metrics to answer after the flood", func() error {
		c := &http.Client{Timeout: 30 * time.Second}
		resp, err := c.Get("http://" + addr + "/metrics")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		if resp.StatusCode != 200 || !strings.Contains(string(body), "poprelay_grants_live 1\n") {
			return fmt.Errorf("%s: %.200q", resp.Status, body)
		}
		return nil
	})

	// The listener and at most MaxConns connections, plus the one over
	// the cap being closed and any socket the watcher had before.
	if limit := int64(base + metrics.MaxConns + 1); maxSocks.Load() > limit {
		t.Errorf("the watcher held %d sockets during the flood, over %d (%d before, MaxConns %d)", maxSocks.Load(), limit, base, metrics.MaxConns)
	}
	select {
	case <-w.done:
		t.Fatal("the watcher exited during the flood")
	default:
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	var emfile []string
	for _, l := range w.lines {
		if strings.Contains(l, "too many open files") {
			emfile = append(emfile, strings.TrimSpace(l))
		}
	}
	if len(emfile) > 0 {
		t.Errorf("the watcher ran out of descriptors, %d lines, the first: %s", len(emfile), emfile[0])
	}
}
