package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/attache/attache/internal/config"
	"github.com/attache/attache/internal/discovery/docker"
	"github.com/attache/attache/internal/listen"
	"github.com/attache/attache/internal/proxy"
	"github.com/attache/attache/internal/transparent"
	"github.com/prometheus/client_golang/prometheus"
)

// Transparent mode: one listener takes the connections iptables redirected
// to attache (see `attache iptables`), reads where each was going, and
// hands it to the listener of the service of that port (config.Transparent
// says which), as the link server hands its streams: balanced, counted,
// drained and closed by the service, and spliced like any other.

// kindTransparent names the transparent listener among inherited sockets.
const kindTransparent = "transparent"

// transparentRun is the daemon's transparent listener and its counters.
type transparentRun struct {
	cfg config.Transparent
	ln  net.Listener
	log *slog.Logger
	// port is the listener's own port, to refuse a connection whose
	// original destination is attache's transparent listener itself.
	port int

	// Outcomes of accepted connections (attache_transparent_connections_total).
	routed, noService, notRedirected, loop, failed atomic.Int64
	// lastWarn rate-limits the refusal log lines (unix nanoseconds).
	lastWarn atomic.Int64

	// callers finds the calling container for per-consumer backends; nil
	// when off. consumers holds the routes their variables asked for, by
	// caller, port and value (consumer.go).
	callers   *docker.Callers
	consumed  atomic.Int64 // connections routed by a consumer's own choice
	badValues atomic.Int64 // consumers' values found malformed
	badValue  atomic.Int64 // connections refused for one
	consMu    sync.Mutex
	consumers map[consumerKey]*consumerRoute
}

// Refusal reasons, the metric's result label.
const (
	resultRouted        = "routed"
	resultConsumer      = "consumer"
	resultNoService     = "no_service"
	resultBadValue      = "bad_value"
	resultNotRedirected = "not_redirected"
	resultLoop          = "loop"
	resultError         = "error"
)

// openTransparent opens the transparent listener, or returns nil when the
// configuration has none.
func openTransparent(ctx context.Context, cfg *config.Config, in *listen.Inherited, log *slog.Logger) (*transparentRun, error) {
	t := cfg.Transparent
	if !t.Enabled() {
		return nil, nil
	}
	lc := proxy.ListenConfig(0)
	if t.TProxy {
		lc.Control = transparent.TProxyControl(lc.Control)
	}
	ln, err := in.Listen(ctx, lc, kindTransparent, listenNetwork(t.Listen), t.Listen)
	if err != nil {
		return nil, fmt.Errorf("transparent listener: listen %s (%s): %w", t.Listen, t.Origin, unwrapOp(err))
	}
	tr := &transparentRun{cfg: t, ln: ln, log: log.With("component", "transparent"),
		port: ln.Addr().(*net.TCPAddr).Port, consumers: map[consumerKey]*consumerRoute{}}
	if t.PerConsumer {
		if tr.callers, err = docker.NewCallers(cfg.Discovery.Docker.Host, tlsFiles(cfg.Discovery.Docker.TLS), log); err != nil {
			ln.Close()
			return nil, fmt.Errorf("transparent listener (%s): %w", t.Origin, err)
		}
	}
	return tr, nil
}

func (tr *transparentRun) close() {
	if tr != nil {
		tr.ln.Close()
	}
}

// startTransparent runs the accept loop; a listener that dies stops the
// daemon, as a service listener does.
func (d *daemon) startTransparent(tr *transparentRun) {
	if tr == nil {
		return
	}
	d.log.Info("transparent listener", "addr", tr.ln.Addr().String(), "from", tr.cfg.Origin,
		"per_consumer", tr.callers != nil, "tproxy", tr.cfg.TProxy)
	if tr.callers != nil {
		tr.callers.OnInvalidate = func(id string) { d.forgetCaller(tr, id) }
		d.wg.Go(func() { tr.callers.Run(d.ctx) })
	}
	d.accepting.Add(1)
	d.wg.Go(func() {
		defer d.accepting.Done()
		if err := d.serveTransparent(tr); err != nil {
			d.mu.Lock()
			d.serveErr = errors.Join(d.serveErr, err)
			d.mu.Unlock()
			d.log.Error("transparent listener stopped; shutting down", "error", err)
			d.stop()
		}
	})
}

func (d *daemon) serveTransparent(tr *transparentRun) error {
	stop := context.AfterFunc(d.ctx, func() { tr.ln.Close() })
	defer stop()
	var delay time.Duration
	for {
		c, err := tr.ln.Accept()
		if err != nil {
			if d.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			if proxy.IsTemporaryAcceptError(err) {
				// Out of descriptors: wait for connections to end, as the
				// service listeners do, rather than spin or give up.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				tr.warn("transparent listener: accept failed; retrying", "error", err, "retry_in", delay)
				select {
				case <-time.After(delay):
				case <-d.ctx.Done():
					return nil
				}
				continue
			}
			return fmt.Errorf("transparent listener %s: %w", tr.ln.Addr(), err)
		}
		delay = 0
		d.wg.Go(func() { d.routeTransparent(tr, c.(*net.TCPConn)) })
	}
}

// routeTransparent finds the service of c's original destination and
// hands c to its listener, or refuses it.
func (d *daemon) routeTransparent(tr *transparentRun, c *net.TCPConn) {
	local := c.LocalAddr()
	var (
		dst netip.AddrPort
		err error
	)
	if tr.cfg.TProxy {
		dst, err = transparent.TProxyDst(local)
	} else {
		dst, err = transparent.OriginalDst(c, local)
	}
	switch {
	case errors.Is(err, transparent.ErrNotTracked):
		tr.refuse(c, &tr.notRedirected, resultNotRedirected, "none")
		return
	case err != nil:
		tr.refuse(c, &tr.failed, resultError, err.Error())
		return
	case dst.Addr().Unmap() == local.(*net.TCPAddr).AddrPort().Addr().Unmap() && dst.Port() == uint16(tr.port):
		// Dialled the listener directly: conntrack tracked it unchanged.
		tr.refuse(c, &tr.notRedirected, resultNotRedirected, dst.String())
		return
	case dst.Port() == uint16(tr.port) && tr.ownAddr(dst.Addr()):
		// Redirected to the transparent listener itself (another address
		// of this host): serving it would route attache to itself.
		tr.refuse(c, &tr.loop, resultLoop, dst.String())
		return
	}
	if tr.callers != nil {
		l, err := d.consumerListener(tr, c, dst)
		if isBadConsumerValue(err) {
			tr.refuse(c, &tr.badValue, resultBadValue, dst.String())
			return
		}
		if err != nil {
			tr.refuse(c, &tr.failed, resultError, err.Error())
			return
		}
		if l != nil {
			tr.consumed.Add(1)
			d.proxy.Handle(d.ctx, l, c, func(error) error { return nil })
			return
		}
	}
	l := d.transparentListener(dst)
	if l == nil {
		tr.refuse(c, &tr.noService, resultNoService, dst.String())
		return
	}
	tr.routed.Add(1)
	d.proxy.Handle(d.ctx, l, c, func(error) error { return nil })
}

// ownAddr reports whether a is an address the transparent listener
// accepts on: its own host, or any local address for a wildcard listener.
func (tr *transparentRun) ownAddr(a netip.Addr) bool {
	la := tr.ln.Addr().(*net.TCPAddr).AddrPort().Addr().Unmap()
	if !la.IsUnspecified() {
		return la == a.Unmap()
	}
	if a.IsLoopback() {
		return true
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, ia := range addrs {
		if n, ok := ia.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Unmap() == a.Unmap() {
				return true
			}
		}
	}
	return false
}

// transparentListener is the served listener of the TCP service that dst
// selects (config.SelectTransparent's rule), or nil.
func (d *daemon) transparentListener(dst netip.AddrPort) *proxy.Listener {
	if sv := d.transparentServed(dst); sv != nil {
		return sv.l
	}
	return nil
}

// transparentServed is the TCP service that dst selects, or nil; the
// copy's svc is a snapshot taken under d.mu.
func (d *daemon) transparentServed(dst netip.AddrPort) *served {
	addr, port := dst.Addr().Unmap().String(), strconv.Itoa(int(dst.Port()))
	d.mu.Lock()
	defer d.mu.Unlock()
	var (
		best     *served
		bestRank int
	)
	for _, sv := range d.serving {
		h, p, err := net.SplitHostPort(sv.svc.Listen)
		if err != nil || p != port {
			continue
		}
		rank := 1
		switch {
		case h == addr:
			rank = 3
		case h == "" || h == "0.0.0.0" || h == "::":
			rank = 2
		}
		if rank > bestRank || rank == bestRank && sv.svc.Name < best.svc.Name {
			best, bestRank = sv, rank
		}
	}
	if best == nil {
		return nil
	}
	return &served{svc: best.svc, l: best.l}
}

// reloadTransparent warns that the transparent listener itself changes
// on restart only; the services it selects among change with the reload.
func (d *daemon) reloadTransparent(cfg *config.Config) {
	var cur config.Transparent
	if d.transp != nil {
		cur = d.transp.cfg
	}
	if cur.Listen != cfg.Transparent.Listen {
		d.log.Warn("reload: the transparent listener's address takes effect on restart",
			"running", cur.Listen, "configured", cfg.Transparent.Listen)
	}
	if cur.TProxy != cfg.Transparent.TProxy {
		d.log.Warn("reload: the transparent listener's tproxy setting takes effect on restart",
			"running", cur.TProxy, "configured", cfg.Transparent.TProxy)
	}
	if d.transp != nil {
		// Consumers' routes took the settings of the services and the
		// discovery section: the next connection builds them anew.
		d.dropConsumers(d.transp, "reload", func(consumerKey) bool { return true })
	}
}

// refuse closes c, counts it, and logs at most one line a second.
func (tr *transparentRun) refuse(c net.Conn, n *atomic.Int64, reason, dst string) {
	n.Add(1)
	c.Close()
	tr.warn("transparent connection refused", "reason", reason, "client", c.RemoteAddr().String(), "original_dst", dst)
}

func (tr *transparentRun) warn(msg string, args ...any) {
	now := time.Now().UnixNano()
	last := tr.lastWarn.Load()
	if now-last < int64(time.Second) || !tr.lastWarn.CompareAndSwap(last, now) {
		return
	}
	tr.log.Warn(msg, args...)
}

var descTransparent = prometheus.NewDesc("attache_transparent_connections_total",
	"Connections accepted by the transparent listener, by result: routed to a service, routed to the backends the calling container chose (consumer), or refused because no service has the original destination's port (no_service), the calling container's choice of backends is malformed (bad_value), they were not redirected (not_redirected), their original destination is the transparent listener itself (loop), or the original destination could not be read (error).",
	[]string{"result"}, nil)

type transparentCollector struct{ tr *transparentRun }

func (transparentCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descTransparent
	ch <- descCallerLookups
	ch <- descCallerHits
	ch <- descConsumerRoutes
	ch <- descConsumerBadValues
}

func (c transparentCollector) Collect(ch chan<- prometheus.Metric) {
	for _, r := range []struct {
		result string
		n      *atomic.Int64
	}{{resultRouted, &c.tr.routed}, {resultConsumer, &c.tr.consumed}, {resultNoService, &c.tr.noService}, {resultBadValue, &c.tr.badValue}, {resultNotRedirected, &c.tr.notRedirected},
		{resultLoop, &c.tr.loop}, {resultError, &c.tr.failed}} {
		ch <- prometheus.MustNewConstMetric(descTransparent, prometheus.CounterValue, float64(r.n.Load()), r.result)
	}
	if c.tr.callers != nil {
		lookups, hits := c.tr.callers.Stats()
		ch <- prometheus.MustNewConstMetric(descCallerLookups, prometheus.CounterValue, float64(lookups))
		ch <- prometheus.MustNewConstMetric(descCallerHits, prometheus.CounterValue, float64(hits))
		ch <- prometheus.MustNewConstMetric(descConsumerRoutes, prometheus.GaugeValue, float64(c.tr.consumerRoutes()))
		ch <- prometheus.MustNewConstMetric(descConsumerBadValues, prometheus.CounterValue, float64(c.tr.badValues.Load()))
	}
}

var (
	descCallerLookups = prometheus.NewDesc("attache_transparent_caller_lookups_total",
		"Per-consumer backends: lookups of the container a redirected connection comes from.", nil, nil)
	descCallerHits = prometheus.NewDesc("attache_transparent_caller_cache_hits_total",
		"Per-consumer backends: lookups answered from the cache (kept until a Docker event about the container).", nil, nil)
	descConsumerRoutes = prometheus.NewDesc("attache_transparent_consumer_routes",
		"Per-consumer backends: routes built from containers' choices and cached (with their discovery providers) until a Docker event about the container, a reload or shutdown.", nil, nil)
	descConsumerBadValues = prometheus.NewDesc("attache_transparent_consumer_bad_values_total",
		"Per-consumer backends: BACKEND_<port> variables or attache.connect.<port> labels found malformed (each logged once with the container, port, value and the forms expected).", nil, nil)
)
