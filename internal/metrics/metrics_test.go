package metrics

import (
	"errors"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/poprelay/poprelay/internal/watch"
)

func TestExposition(t *testing.T) {
	m := New()
	m.Observe(watch.Stats{Grants: 42, Duration: 3 * time.Millisecond, Reason: "change",
		Latency: []time.Duration{4 * time.Millisecond, 9 * time.Millisecond}, Capped: 7, OverCap: 3})
	m.Error("rules", errors.New("tcp.smtp:3: unable to parse this line"))
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	body := string(b)
	for _, want := range []string{
		"poprelay_grants_live 42",
		`poprelay_rebuilds_total{reason="change"} 1`,
		"poprelay_rebuild_duration_seconds_count 1",
		"poprelay_login_to_cdb_seconds_count 2",
		`poprelay_errors_total{kind="rules"} 1`,
		`poprelay_errors_total{kind="spool"} 0`,
		`poprelay_grants_capped{cap="user"} 7`,
		`poprelay_grants_capped{cap="total"} 3`,
		"process_resident_memory_bytes",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}
