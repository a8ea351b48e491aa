package daemon

import (
	"cmp"
	"context"
	"net"
	"slices"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/attache/attache/internal/admin"
	"github.com/attache/attache/internal/backend"
	"github.com/attache/attache/internal/config"
	"github.com/attache/attache/internal/health"
	"github.com/attache/attache/internal/listen"
	"github.com/attache/attache/internal/udp"
	"github.com/prometheus/client_golang/prometheus"
)

// UDP services run beside the TCP ones: opened with them (all or nothing),
// routed from the same static and discovered backends through the same
// health Registry (keyed by service name, so TCP and UDP services never
// share state), reloaded as part of the same transaction, and closed at
// shutdown: they are services like the TCP ones (service.go), in a table
// of their own, whose data path (package udp) has sessions instead of
// connections.
//
// Upgrades: UDP sockets are opened with SO_REUSEPORT and are not handed
// over. The new process binds the same port beside the old one (the kernel
// spreads clients over both for that moment), and the old one closes its
// socket when it hands over: its sessions end, and their clients' next
// datagrams open sessions in the new process. The cost of SO_REUSEPORT is
// that a second attache of the same user on the same UDP port shares the
// port instead of failing to start.

// splitProtocols separates TCP services from UDP ones, each in config order.
func splitProtocols(services []config.Service) (tcp, udps []config.Service) {
	for _, s := range services {
		if s.IsUDP() {
			udps = append(udps, s)
		} else {
			tcp = append(tcp, s)
		}
	}
	return tcp, udps
}

// inServiceOrder sorts bound listeners by their service's place in the
// configuration (names are unique), so Ready reports them as before.
func inServiceOrder(services []config.Service, bound []Bound) []Bound {
	idx := make(map[string]int, len(services))
	for i, s := range services {
		idx[s.Name] = i
	}
	slices.SortStableFunc(bound, func(a, b Bound) int { return cmp.Compare(idx[a.Service], idx[b.Service]) })
	return bound
}

// udpNetwork is listenNetwork for UDP.
func udpNetwork(addr string) string { return ipNetwork("udp", addr) }

// udpReadBuffer is asked for the listening socket: every client's
// datagrams queue in it while the read loop is busy. The kernel caps it at
// net.core.rmem_max (208 KiB unless raised).
const udpReadBuffer = 4 << 20

// udpProtocol is what UDP services do their own way (see service.go): a
// read loop with sessions instead of connections, a send/expect datagram
// check, routes with a session table and the drained backends (their
// sessions stay until they expire), and the UDP counters.
type udpProtocol struct{}

// udpProto is the UDP protocol of every UDP service.
var udpProto protocol[*udp.Listener] = udpProtocol{}

// open opens every UDP service's socket, or none: on the first failure it
// closes those already open and reports which service failed. A socket
// passed by systemd's socket activation is taken instead (in may be nil).
func (udpProtocol) open(ctx context.Context, in *listen.Inherited, services []config.Service) ([]*udp.Listener, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		}); err != nil {
			return err
		}
		return serr
	}}
	var out []*udp.Listener
	for _, s := range services {
		pc := in.TakePacket(udpNetwork(s.Listen), s.Listen)
		var err error
		if pc == nil {
			pc, err = lc.ListenPacket(ctx, udpNetwork(s.Listen), s.Listen)
		}
		if err != nil {
			for _, l := range out {
				l.Close()
			}
			return nil, &ListenError{Service: s, Err: unwrapOp(err)}
		}
		conn := pc.(*net.UDPConn)
		_ = conn.SetReadBuffer(udpReadBuffer)
		// The route is set by configure once the daemon owns it.
		out = append(out, udp.NewListener(conn, &udp.Route{Service: s.Name, Backends: backend.NewSet()}))
	}
	return out, nil
}

// serve runs l's read loop. A UDP listener that dies is logged; the
// daemon carries on.
func (udpProtocol) serve(d *daemon, l *udp.Listener) {
	l.Logger, l.AccessLog, l.Resolver = d.log, d.proxy.AccessLog, d.proxy.Resolver
	d.wg.Go(func() {
		if err := l.Serve(d.ctx); err != nil {
			d.log.Error("udp listener stopped", "listen", l.Addr().String(), "error", err)
		}
	})
}

func (udpProtocol) checker(d *daemon, us *udpServed) health.Checker {
	hc := us.svc.HealthCheck
	return health.UDP{Send: []byte(hc.Send), Expect: []byte(hc.Expect), Resolver: d.proxy.Resolver}
}

func (udpProtocol) onHealth(*daemon, *udpServed) func(addr string, healthy bool) { return nil }

// publish: sessions on a backend that left move at their next datagram;
// sessions on a drained one stay.
func (udpProtocol) publish(_ *daemon, us *udpServed, _ *backend.Set) {
	s := us.svc
	r := &udp.Route{
		Service: s.Name, Backends: us.set, Policy: us.policy, Draining: us.draining,
		Retries: s.Retries, Passive: s.EjectTime > 0, ConnectTimeout: s.ConnectTimeout,
		IdleTimeout: s.UDPIdleTimeout, MaxSessions: s.MaxSessions,
	}
	if m := us.monitor; m != nil {
		// A closed port seen by the data path is worth a look now.
		r.OnRefused = func(b *backend.Backend) { m.CheckNow(b.Addr) }
	}
	us.l.SetRoute(r)
}

// counters: sessions counted as connections, the UDP counters beside them.
func (udpProtocol) counters(_ *daemon, uss []*udpServed, views []admin.Service) {
	for i, us := range uss {
		c := us.l.Counters()
		views[i].Connections = admin.Counters{
			Accepted: c.Created, Active: c.Active, NoBackend: c.NoBackend, DialErrors: c.DialErrors,
			BytesIn: c.BytesIn, BytesOut: c.BytesOut, Limited: c.TableFull,
		}
		views[i].UDP = &admin.UDPCounters{
			MaxSessions: us.l.Route().SessionLimit(), Sessions: c.Active,
			Expired: c.Expired, Moved: c.Moved, Refused: c.Refused,
			TableFull: c.TableFull, NoBackend: c.NoBackend, Dropped: c.Dropped,
			PacketsIn: c.PacketsIn, PacketsOut: c.PacketsOut,
		}
	}
}

func (udpProtocol) removedNote() string { return "reload: udp service removed; its sessions end" }

// UDP metrics, from the listeners' counters at scrape time. Sessions,
// bytes and backend series also appear under attache_proxy_* and
// attache_backend_* (sessions counted as connections), so one dashboard
// shows every service; these are what only UDP has.
var (
	descUDPSessions = prometheus.NewDesc("attache_udp_sessions_active",
		"UDP sessions open now (one per client address).", []string{"service"}, nil)
	descUDPMaxSessions = prometheus.NewDesc("attache_udp_sessions_max",
		"The bound of the service's UDP session table (max_sessions).", []string{"service"}, nil)
	descUDPCreated = prometheus.NewDesc("attache_udp_sessions_created_total",
		"UDP sessions created.", []string{"service"}, nil)
	descUDPEnded = prometheus.NewDesc("attache_udp_sessions_ended_total",
		"UDP sessions ended, by reason: idle (udp_idle_timeout), moved (the backend left or failed), refused (the backend's port was closed).",
		[]string{"service", "reason"}, nil)
	descUDPDatagrams = prometheus.NewDesc("attache_udp_datagrams_total",
		"Datagrams forwarded: direction in is client to backend, out is backend to client.", []string{"service", "direction"}, nil)
	descUDPBytes = prometheus.NewDesc("attache_udp_bytes_total",
		"Payload bytes forwarded: direction in is client to backend, out is backend to client.", []string{"service", "direction"}, nil)
	descUDPDropped = prometheus.NewDesc("attache_udp_datagrams_dropped_total",
		"Datagrams dropped, by reason: table_full (a new client while max_sessions were open), no_backend, other (queue full while a session opened, send errors).",
		[]string{"service", "reason"}, nil)
)

// udpCollector serves the UDP metrics.
type udpCollector struct{ d *daemon }

var _ prometheus.Collector = udpCollector{}

func (udpCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descUDPSessions, descUDPMaxSessions, descUDPCreated, descUDPEnded,
		descUDPDatagrams, descUDPBytes, descUDPDropped} {
		ch <- d
	}
}

func (c udpCollector) Collect(ch chan<- prometheus.Metric) {
	type one struct {
		name string
		l    *udp.Listener
	}
	c.d.mu.Lock()
	all := make([]one, 0, len(c.d.udpServing))
	for _, us := range c.d.udpServing {
		all = append(all, one{us.svc.Name, us.l})
	}
	c.d.mu.Unlock()
	slices.SortFunc(all, func(a, b one) int { return cmp.Compare(a.name, b.name) })
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), labels...)
	}
	for _, o := range all {
		n, v := o.name, o.l.Counters()
		max := o.l.Route().SessionLimit()
		gauge(descUDPSessions, v.Active, n)
		gauge(descUDPMaxSessions, int64(max), n)
		counter(descUDPCreated, v.Created, n)
		counter(descUDPEnded, v.Expired, n, "idle")
		counter(descUDPEnded, v.Moved, n, "moved")
		counter(descUDPEnded, v.Refused, n, "refused")
		counter(descUDPDatagrams, v.PacketsIn, n, "in")
		counter(descUDPDatagrams, v.PacketsOut, n, "out")
		counter(descUDPBytes, v.BytesIn, n, "in")
		counter(descUDPBytes, v.BytesOut, n, "out")
		counter(descUDPDropped, v.TableFull, n, "table_full")
		counter(descUDPDropped, v.NoBackend, n, "no_backend")
		counter(descUDPDropped, v.Dropped, n, "other")
	}
}
