// Package metrics exports what relayctl watch does as Prometheus metrics:
// grants live, rebuilds, rebuild duration, login-to-CDB latency and
// errors by kind.
package metrics

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/poprelay/poprelay/internal/watch"
)

// Metrics is one watcher's set of metrics, in a registry of its own.
type Metrics struct {
	reg      *prometheus.Registry
	grants   prometheus.Gauge
	rebuilds *prometheus.CounterVec
	duration prometheus.Histogram
	latency  prometheus.Histogram
	errors   *prometheus.CounterVec
	capped   *prometheus.GaugeVec
}

// Error kinds, as watch reports them; pre-created so they show as 0.
var kinds = []string{"rules", "spool", "rebuild", "watch", "engine"}

// New returns the metrics, registered with the Go and process collectors.
func New() *Metrics {
	// Buckets from 0.5 ms to ~4 s: a rebuild of 100k grants takes tens
	// of ms; login-to-CDB should stay under 100 ms.
	buckets := prometheus.ExponentialBuckets(0.0005, 2, 14)
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		grants: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "poprelay", Name: "grants_live",
			Help: "Grants in the last published CDB.",
		}),
		rebuilds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "poprelay", Name: "rebuilds_total",
			Help: "CDB rebuilds published, by trigger (start, change, expiry, rescan, reload, retry).",
		}, []string{"reason"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "poprelay", Name: "rebuild_duration_seconds",
			Help: "Time to merge the grants with the static rules and publish the CDB.", Buckets: buckets,
		}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "poprelay", Name: "login_to_cdb_seconds",
			Help: "Time from a grant's file changing to a CDB with it being published.", Buckets: buckets,
		}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "poprelay", Name: "errors_total",
			Help: "Failures by kind: rules (bad or unreadable rules file), spool, rebuild, watch (events lost), engine (etcd).",
		}, []string{"kind"}),
		capped: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "poprelay", Name: "grants_capped",
			Help: "Live grants the last publish refused by a cap: user (beyond a user's --max-per-user newest) or total (beyond the --max-grants newest; alert on it).",
		}, []string{"cap"}),
	}
	m.capped.WithLabelValues("user")
	m.capped.WithLabelValues("total")
	for _, k := range kinds {
		m.errors.WithLabelValues(k)
	}
	m.reg.MustRegister(m.grants, m.rebuilds, m.duration, m.latency, m.errors, m.capped,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Observe records one publish; it fits watch.Config.Observe.
func (m *Metrics) Observe(s watch.Stats) {
	m.grants.Set(float64(s.Grants))
	m.capped.WithLabelValues("user").Set(float64(s.Capped))
	m.capped.WithLabelValues("total").Set(float64(s.OverCap))
	m.rebuilds.WithLabelValues(s.Reason).Inc()
	m.duration.Observe(s.Duration.Seconds())
	for _, l := range s.Latency {
		m.latency.Observe(l.Seconds())
	}
}

// Error counts one failure; it fits watch.Config.OnError.
func (m *Metrics) Error(kind string, _ error) {
	m.errors.WithLabelValues(kind).Inc()
}

// Handler serves the metrics in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}
