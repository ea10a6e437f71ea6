package metrics

import (
	"errors"
	"fmt"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/poprelay/poprelay/internal/wait"
)

// TestLimitListener: with n connections held, the next is closed at
// once (the client reads EOF or a reset, not a hang), and closing one of
// the n lets a new one in.
func TestLimitListener(t *testing.T) {
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	const n = 3
	ln := LimitListener(raw, n)
	defer ln.Close()
	held := make(chan net.Conn, 10)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(held)
				return
			}
			held <- c
		}
	}()
	dial := func() net.Conn {
		t.Helper()
		c, err := net.Dial("tcp", raw.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	var server []net.Conn
	for range n {
		dial()
		server = append(server, <-held)
	}
	// Over the cap: closed by the server.
	if err := closedByServer(raw.Addr().String()); err != nil {
		t.Fatalf("a connection over the cap: %v", err)
	}
	if len(held) != 0 {
		t.Fatalf("a connection over the cap was handed to the server")
	}
	// Closing one frees its slot, once: a double Close frees no more.
	server[0].Close()
	server[0].Close()
	dial()
	c := <-held
	server = append(server[1:], c)
	if err := closedByServer(raw.Addr().String()); err != nil {
		t.Fatalf("the cap grew after a double Close: %v", err)
	}
	for _, c := range server {
		c.Close()
	}
	// All slots free again: n new ones are held.
	for range n {
		dial()
		wait.For(t, "a connection to be accepted", func() bool { return len(held) > 0 })
		<-held
	}
}

// closedByServer connects to addr and reads until the server closes the
// connection, or a minute (only so that a broken limiter fails instead of
// hanging the test). The reset may already fail the connect.
func closedByServer(addr string) error {
	c, err := net.Dial("tcp", addr)
	if errors.Is(err, syscall.ECONNRESET) {
		return nil
	}
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(time.Minute))
	_, err = c.Read(make([]byte, 1))
	var ne net.Error
	if err == nil || errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("not closed by the server: %v", err)
	}
	return nil
}
