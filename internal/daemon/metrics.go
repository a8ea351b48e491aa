package daemon

import (
	"cmp"
	"runtime"
	"slices"

	"github.com/attache/attache/internal/buildinfo"
	"github.com/attache/attache/internal/discovery"
	"github.com/attache/attache/internal/proxy"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
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
	descNoBackend = prometheus.NewDesc("attache_proxy_connections_no_backend_total",
		"Connections closed because no backend was usable at all for the whole retry timeout (a subset of failed).", []string{"service"}, nil)
	descRetried = prometheus.NewDesc("attache_proxy_connections_retried_total",
		"Connections that needed more than one dial before a backend answered.", []string{"service"}, nil)
	descLimited = prometheus.NewDesc("attache_proxy_connection_limit_waits_total",
		"Times the listener stopped accepting because max_connections were open.", []string{"service"}, nil)
	descBytes = prometheus.NewDesc("attache_proxy_bytes_total",
		"Bytes proxied: direction in is client to backend, out is backend to client.", []string{"service", "direction"}, nil)
	descDialErrors = prometheus.NewDesc("attache_proxy_dial_errors_total",
		"Failed dials to backends (one connection may count several).", []string{"service"}, nil)
	descProxyRejected = prometheus.NewDesc("attache_proxy_protocol_rejected_total",
		"Connections closed for a missing or malformed PROXY protocol header, or from a peer outside accept_proxy's trusted ranges.", []string{"service"}, nil)
	descDialDuration = prometheus.NewDesc("attache_proxy_dial_duration_seconds",
		"How long dials to backends that connected took.", []string{"service"}, nil)
	descBackendActive = prometheus.NewDesc("attache_backend_active_connections",
		"Proxied connections open to the backend.", []string{"service", "backend"}, nil)
	descBackendConns = prometheus.NewDesc("attache_backend_connections_total",
		"Dials to the backend that connected.", []string{"service", "backend"}, nil)
	descBackendDialErrors = prometheus.NewDesc("attache_backend_dial_errors_total",
		"Dials to the backend that failed.", []string{"service", "backend"}, nil)
	descBackendEjections = prometheus.NewDesc("attache_backend_ejections_total",
		"Times passive health ejected the backend after a failed dial.", []string{"service", "backend"}, nil)
	descBackendHealthy = prometheus.NewDesc("attache_backend_healthy",
		"1 when balancing may pick the backend (checks pass and not ejected), else 0.", []string{"service", "backend"}, nil)
	descDiscoveryReady = prometheus.NewDesc("attache_discovery_ready",
		"1 once the discovery provider has sent its first snapshot.", []string{"provider"}, nil)
	descDiscoveryUp = prometheus.NewDesc("attache_discovery_up",
		"1 when the discovery provider's last contact with its source worked.", []string{"provider"}, nil)
	descAccessLogDropped = prometheus.NewDesc("attache_access_log_dropped_total",
		"Access-log lines dropped because the log sink was too slow and the buffer in memory was full.", nil, nil)
	descDiscoveryErrors = prometheus.NewDesc("attache_discovery_errors_total",
		"Failed contacts of the discovery provider with its source (queries, watches, connections).", []string{"provider"}, nil)
)

// collector turns the daemon's live state into metrics at scrape time.
type collector struct{ d *daemon }

var _ prometheus.Collector = collector{}

func (collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descAccepted, descActive, descFailed, descNoBackend, descRetried,
		descLimited, descBytes, descDialErrors, descProxyRejected, descDialDuration, descBackendActive, descBackendConns,
		descBackendDialErrors, descBackendEjections, descBackendHealthy, descDiscoveryReady, descDiscoveryUp,
		descDiscoveryErrors, descAccessLogDropped} {
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
		counter(descNoBackend, n.NoBackend, s.Name)
		counter(descRetried, n.Retried, s.Name)
		counter(descLimited, n.Limited, s.Name)
		counter(descBytes, n.BytesIn, s.Name, "in")
		counter(descBytes, n.BytesOut, s.Name, "out")
		counter(descDialErrors, n.DialErrors, s.Name)
		counter(descProxyRejected, n.ProxyRejected, s.Name)
		for _, b := range s.Backends {
			gauge(descBackendActive, b.Active, s.Name, b.Addr)
			counter(descBackendConns, b.Connections, s.Name, b.Addr)
			counter(descBackendDialErrors, b.DialErrors, s.Name, b.Addr)
			counter(descBackendEjections, b.Ejections, s.Name, b.Addr)
			gauge(descBackendHealthy, boolInt(b.Healthy), s.Name, b.Addr)
		}
	}
	for _, h := range c.d.dialHistograms() {
		count, sum, buckets := h.hist.Snapshot()
		ch <- prometheus.MustNewConstHistogram(descDialDuration, count, sum, buckets, h.service)
	}
	for _, p := range c.d.discoveryState() {
		gauge(descDiscoveryReady, boolInt(p.Reported), p.Name)
		gauge(descDiscoveryUp, boolInt(p.Up), p.Name)
	}
	for _, p := range c.d.discoveryProviders() {
		if e, ok := p.(discovery.ErrorCounter); ok {
			counter(descDiscoveryErrors, e.Errors(), p.Name())
		}
	}
	ch <- prometheus.MustNewConstMetric(descAccessLogDropped, prometheus.CounterValue, float64(c.d.access.dropped()))
}

type serviceHistogram struct {
	service string
	hist    *proxy.Histogram
}

// dialHistograms returns every served listener's dial histogram, by
// service name.
func (d *daemon) dialHistograms() []serviceHistogram {
	d.mu.Lock()
	out := make([]serviceHistogram, 0, len(d.serving))
	for _, sv := range d.serving {
		out = append(out, serviceHistogram{sv.svc.Name, &sv.l.Stats.DialDuration})
	}
	d.mu.Unlock()
	slices.SortFunc(out, func(a, b serviceHistogram) int { return cmp.Compare(a.service, b.service) })
	return out
}

// discoveryProviders returns the running providers, unwrapped from the
// daemon's own renaming.
func (d *daemon) discoveryProviders() []discovery.Provider {
	d.discMu.Lock()
	defer d.discMu.Unlock()
	if d.disc == nil {
		return nil
	}
	out := make([]discovery.Provider, len(d.disc.providers))
	for i, p := range d.disc.providers {
		if r, ok := p.(renamed); ok {
			p = r.Provider
		}
		out[i] = p
	}
	return out
}

func boolInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// newRegistry returns the daemon's private registry (never the global
// one: two daemons in one test binary must not share series) with the
// live-state collector and the event counters, and the reload counter. The
// reload results start at 0 so a dashboard sees the series before the
// first reload. It sets d.discoveryUpdates, which outlives reloads. The
// standard Go runtime (go_*) and process (process_*) collectors and
// attache_build_info{version,goversion} come with it.
func newRegistry(d *daemon, version string) (*prometheus.Registry, *prometheus.CounterVec) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(buildinfo.Collector(version, runtime.Version()),
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reloads := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "attache_reload_total",
		Help: "Configuration reloads by result: success, or failure (the old configuration kept serving).",
	}, []string{"result"})
	reloads.WithLabelValues("success")
	reloads.WithLabelValues("failure")
	d.discoveryUpdates = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "attache_discovery_updates_total",
		Help: "Snapshots received from the discovery provider, changed or not.",
	}, []string{"provider"})
	reg.MustRegister(collector{d}, reloads, d.discoveryUpdates)
	return reg, reloads
}
