package daemon

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics. The proxy's counters are atomics the data path keeps anyway
// (proxy.Stats, backend.Backend); the collector below reads them at scrape
// time, so serving metrics adds nothing to a connection's cost. The
// collector lives here rather than in proxy because only the daemon knows
// which listener is which service and which backends each one has now.
var (
	descAccepted = prometheus.NewDesc("attache_proxy_connections_accepted_total",
		"Connections accepted by the service's listener since it opened.", []string{"service"}, nil)
	descActive = prometheus.NewDesc("attache_proxy_connections_active",
		"Connections open now on the service's listener.", []string{"service"}, nil)
	descFailed = prometheus.NewDesc("attache_proxy_connections_failed_total",
		"Connections closed because no backend answered.", []string{"service"}, nil)
	descBytes = prometheus.NewDesc("attache_proxy_bytes_total",
		"Bytes proxied: direction in is client to backend, out is backend to client.", []string{"service", "direction"}, nil)
	descDialErrors = prometheus.NewDesc("attache_proxy_dial_errors_total",
		"Failed dials to backends (one connection may count several).", []string{"service"}, nil)
	descBackendActive = prometheus.NewDesc("attache_backend_active_connections",
		"Proxied connections open to the backend.", []string{"service", "backend"}, nil)
	descBackendHealthy = prometheus.NewDesc("attache_backend_healthy",
		"1 when balancing may pick the backend (checks pass and not ejected), else 0.", []string{"service", "backend"}, nil)
	descDiscoveryReady = prometheus.NewDesc("attache_discovery_ready",
		"1 once the discovery provider has sent its first snapshot.", []string{"provider"}, nil)
	descDiscoveryUp = prometheus.NewDesc("attache_discovery_up",
		"1 when the discovery provider's last contact with its source worked.", []string{"provider"}, nil)
)

// collector turns the daemon's live state into metrics at scrape time.
type collector struct{ d *daemon }

var _ prometheus.Collector = collector{}

func (collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descAccepted, descActive, descFailed, descBytes, descDialErrors,
		descBackendActive, descBackendHealthy, descDiscoveryReady, descDiscoveryUp} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), labels...)
	}
	for _, s := range c.d.services() {
		n := s.Connections
		counter(descAccepted, n.Accepted, s.Name)
		gauge(descActive, n.Active, s.Name)
		counter(descFailed, n.Failed, s.Name)
		counter(descBytes, n.BytesIn, s.Name, "in")
		counter(descBytes, n.BytesOut, s.Name, "out")
		counter(descDialErrors, n.DialErrors, s.Name)
		for _, b := range s.Backends {
			gauge(descBackendActive, b.Active, s.Name, b.Addr)
			gauge(descBackendHealthy, boolInt(b.Healthy), s.Name, b.Addr)
		}
	}
	for _, p := range c.d.discoveryState() {
		gauge(descDiscoveryReady, boolInt(p.Reported), p.Name)
		gauge(descDiscoveryUp, boolInt(p.Up), p.Name)
	}
}

func boolInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// newRegistry returns the daemon's private registry (never the global
// one: two daemons in one test binary must not share series) with the
// live-state collector and the reload counter, whose results start at 0 so
// a dashboard sees the series before the first reload.
func newRegistry(d *daemon) (*prometheus.Registry, *prometheus.CounterVec) {
	reg := prometheus.NewRegistry()
	reloads := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "attache_reload_total",
		Help: "Configuration reloads by result: success, or failure (the old configuration kept serving).",
	}, []string{"result"})
	reloads.WithLabelValues("success")
	reloads.WithLabelValues("failure")
	reg.MustRegister(collector{d}, reloads)
	return reg, reloads
}
