package t

import "testing"

// TestTcpserverHarness checks the harness itself: a real tcpserver on
// loopback sees the source address the client bound.
func TestTcpserverHarness(t *testing.T) {
	ts := startTcpserver(t, baseEnv(), []string{"-R", "-H"}, "/usr/bin/env")
	for _, src := range []string{"127.0.0.2", "127.0.0.77"} {
		env := envFrom(dialFrom(t, src, ts.Port, ""))
		if env["TCPREMOTEIP"] != src {
			t.Errorf("from %s: TCPREMOTEIP=%q", src, env["TCPREMOTEIP"])
		}
	}
}
