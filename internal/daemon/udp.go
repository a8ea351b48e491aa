package daemon

import (
	"cmp"
	"context"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/attache/attache/internal/admin"
	"github.com/attache/attache/internal/backend"
	"github.com/attache/attache/internal/balance"
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
// shutdown. They are kept in a map of their own because their data path
// (package udp) has sessions instead of connections.
//
// Upgrades: UDP sockets are opened with SO_REUSEPORT and are not handed
// over. The new process binds the same port beside the old one (the kernel
// spreads clients over both for that moment), and the old one closes its
// socket when it hands over: its sessions end, and their clients' next
// datagrams open sessions in the new process. The cost of SO_REUSEPORT is
// that a second attache of the same user on the same UDP port shares the
// port instead of failing to start.

// udpState is the daemon's UDP services, guarded by daemon.mu.
type udpState struct {
	udpServing map[string]*udpServed // by servingKey
}

// udpServed is one UDP listener and what its routes are built from, as
// served is for TCP. Fields are guarded by daemon.mu.
type udpServed struct {
	svc         config.Service
	l           *udp.Listener
	policy      balance.Policy
	set         *backend.Set
	monitor     *health.Monitor
	stopMonitor context.CancelFunc
	override    []backend.Endpoint
	overridden  bool
	draining    []*backend.Backend
}

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

// udpNetwork is listenNetwork for UDP: an IPv4 address stays IPv4-only,
// an IPv6 literal is IPv6, anything else (a hostname, an empty host, [::])
// is dual-stack.
func udpNetwork(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return "udp"
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		switch {
		case ip.Is4():
			return "udp4"
		case ip.IsUnspecified():
			return "udp"
		}
		return "udp6"
	}
	return "udp"
}

// udpReadBuffer is asked for the listening socket: every client's
// datagrams queue in it while the read loop is busy. The kernel caps it at
// net.core.rmem_max (208 KiB unless raised).
const udpReadBuffer = 4 << 20

// openUDP opens every UDP service's socket, or none: on the first failure
// it closes those already open and reports which service failed. A socket
// passed by systemd's socket activation is taken instead (in may be nil).
func openUDP(ctx context.Context, in *listen.Inherited, services []config.Service) ([]*udp.Listener, error) {
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
		// The route is set by configureUDP once the daemon owns it.
		out = append(out, udp.NewListener(conn, &udp.Route{Service: s.Name, Backends: backend.NewSet()}))
	}
	return out, nil
}

func closeUDP(ls []*udp.Listener) {
	for _, l := range ls {
		l.Close()
	}
}

// serveUDP starts serving one UDP listener.
func (d *daemon) serveUDP(s config.Service, l *udp.Listener) {
	l.Logger, l.AccessLog, l.Resolver = d.log, d.proxy.AccessLog, d.proxy.Resolver
	d.mu.Lock()
	if d.udpServing == nil {
		d.udpServing = map[string]*udpServed{}
	}
	us := &udpServed{l: l}
	d.udpServing[servingKey(s)] = us
	d.configureUDP(us, s)
	d.mu.Unlock()
	d.log.Info("forwarding", "service", s.Name, "listen", l.Addr().String(), "protocol", config.ProtoUDP,
		"backends", backendList(s), "balance", s.Balance, "from", s.Origin)
	d.wg.Go(func() {
		if err := l.Serve(d.ctx); err != nil {
			d.log.Error("udp listener stopped", "listen", l.Addr().String(), "error", err)
		}
	})
}

// configureUDP (re)applies a UDP service's configuration: policy, passive
// ejection, active checks, then the route. d.mu is held.
func (d *daemon) configureUDP(us *udpServed, s config.Service) {
	old := us.svc
	us.policy = d.reconfigure(old, s, us.policy)
	if us.monitor != nil && checksChanged(old, s) {
		us.stopMonitor()
		us.monitor, us.stopMonitor = nil, nil
		for i := range us.set.Len() {
			us.set.At(i).SetHealthy(true)
		}
	}
	us.svc = s
	if s.HealthCheck != nil && us.monitor == nil {
		hc := s.HealthCheck
		checker := health.UDP{Send: []byte(hc.Send), Expect: []byte(hc.Expect), Resolver: d.proxy.Resolver}
		m := health.NewMonitor(s.Name, health.Spec{Interval: hc.Interval, Timeout: hc.Timeout, Rise: hc.Rise, Fall: hc.Fall}, checker, d.log)
		service := s.Name
		m.OnChange = func(addr string, healthy bool) {
			if testHookHealth != nil {
				testHookHealth(service, addr, healthy)
			}
		}
		ctx, cancel := context.WithCancel(d.ctx)
		us.monitor, us.stopMonitor = m, cancel
		d.wg.Go(func() { _ = m.Run(ctx) })
	}
	d.rebuildUDP(us)
}

// rebuildUDP publishes a new route for us from its static backends (or the
// admin override) and what discovery reports. Sessions on a backend that
// left move at their next datagram; sessions on a drained one stay. d.mu
// is held.
func (d *daemon) rebuildUDP(us *udpServed) {
	s := us.svc
	var eps []backend.Endpoint
	if us.overridden {
		eps = append(eps, us.override...)
	} else {
		for _, b := range s.Backends {
			if b.Discover == nil {
				eps = append(eps, backend.Endpoint{Addr: b.Addr, Weight: b.Weight})
			}
		}
	}
	if s.Balance == "first" {
		for i := range eps {
			eps[i].Priority = i // fixed backends fail over in the order listed
		}
	}
	eps = append(eps, d.discovered[s.Name]...)
	eps, us.draining = d.withoutDrained(s.Name, eps)
	set := d.registry.Resolve(s.Name, eps)
	us.set = set
	r := &udp.Route{
		Service: s.Name, Backends: set, Policy: us.policy, Draining: us.draining,
		Retries: s.Retries, Passive: s.EjectTime > 0, ConnectTimeout: s.ConnectTimeout,
		IdleTimeout: s.UDPIdleTimeout, MaxSessions: s.MaxSessions,
	}
	if m := us.monitor; m != nil {
		// A closed port seen by the data path is worth a look now.
		r.OnRefused = func(b *backend.Backend) { m.CheckNow(b.Addr) }
		m.Update(set)
	}
	us.l.SetRoute(r)
	if testHookRebuilt != nil {
		testHookRebuilt(s.Name, setAddrs(set))
	}
}

// unconfigureUDP releases what a removed UDP service held. d.mu is held.
func (d *daemon) unconfigureUDP(us *udpServed) {
	if us.stopMonitor != nil {
		us.stopMonitor()
	}
	d.registry.Forget(us.svc.Name)
	delete(d.drained, us.svc.Name)
}

// rediscoverUDP rebuilds the UDP services whose discovered endpoints
// changed between prev and m. d.mu is held.
func (d *daemon) rediscoverUDP(prev, m map[string][]backend.Endpoint) {
	for _, us := range d.udpServing {
		name := us.svc.Name
		old, had := prev[name]
		cur, has := m[name]
		if had == has && slices.Equal(old, cur) {
			continue
		}
		d.log.Info("backends changed", "service", name, "discovered", len(cur))
		d.rebuildUDP(us)
	}
}

// closeUDPListeners closes every UDP listener (shutdown, or hand-over to a
// new process): their Serve ends their sessions and returns.
func (d *daemon) closeUDPListeners() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, us := range d.udpServing {
		us.l.Close()
	}
}

// udpReload is the UDP half of a reload: what to keep, the sockets opened
// for new services, and the new configuration of each.
type udpReload struct {
	keep   map[string]config.Service // by servingKey
	added  []config.Service
	opened []*udp.Listener
}

// prepareUDP opens the sockets the new configuration adds, before anything
// changes; on error nothing is left open.
func (d *daemon) prepareUDP(cfg *config.Config) (*udpReload, error) {
	_, udps := splitProtocols(cfg.Services)
	plan := &udpReload{keep: map[string]config.Service{}}
	d.mu.Lock()
	for _, s := range udps {
		if _, ok := d.udpServing[servingKey(s)]; ok {
			plan.keep[servingKey(s)] = s
			continue
		}
		plan.added = append(plan.added, s)
	}
	d.mu.Unlock()
	opened, err := openUDP(d.ctx, nil, plan.added)
	if err != nil {
		return nil, err
	}
	plan.opened = opened
	return plan, nil
}

// commitUDP applies a prepared plan: kept services get their new
// configuration (open sessions carry on), removed ones are closed (their
// sessions end), added ones start.
func (d *daemon) commitUDP(p *udpReload, sum *admin.ReloadSummary) {
	d.mu.Lock()
	var removed []*udpServed
	for key, us := range d.udpServing {
		s, ok := p.keep[key]
		if !ok {
			removed = append(removed, us)
			delete(d.udpServing, key)
			continue
		}
		us.override, us.overridden = nil, false // a reload ends a runtime override
		d.configureUDP(us, s)
	}
	for _, us := range removed {
		d.unconfigureUDP(us)
		sum.Removed = append(sum.Removed, us.svc.Name)
	}
	d.mu.Unlock()
	for _, us := range removed {
		d.log.Info("reload: udp service removed; its sessions end", "service", us.svc.Name, "listen", us.l.Addr().String())
		us.l.Close()
	}
	for i, l := range p.opened {
		d.serveUDP(p.added[i], l)
		sum.Added = append(sum.Added, p.added[i].Name)
	}
}

// udpByName finds a UDP service by name, or nil. d.mu is held.
func (d *daemon) udpByName(name string) *udpServed {
	for _, us := range d.udpServing {
		if us.svc.Name == name {
			return us
		}
	}
	return nil
}

// setUDPBackends is SetBackends for a UDP service. d.mu is held.
func (d *daemon) setUDPBackends(us *udpServed, specs []admin.BackendSpec) error {
	if len(specs) == 0 && !hasDiscovery(us.svc) {
		return admin.Errorf(http.StatusBadRequest, "backends: service %q has no discovery entries, so it needs at least one backend", us.svc.Name)
	}
	eps := make([]backend.Endpoint, len(specs))
	for i, s := range specs {
		eps[i] = backend.Endpoint{Addr: s.Addr, Weight: s.Weight}
	}
	us.override, us.overridden = eps, true
	d.rebuildUDP(us)
	d.log.Info("admin: static backends overridden until the next reload", "service", us.svc.Name, "backends", len(eps))
	return nil
}

// drainUDP is Drain for a UDP service: the backend takes no new sessions,
// and the sessions it has stay until they expire. d.mu is held.
func (d *daemon) drainUDP(us *udpServed, addr string, on bool) error {
	service := us.svc.Name
	_, drained := d.drained[service][addr]
	if on == drained {
		return nil
	}
	if on {
		var b *backend.Backend
		for i := range us.set.Len() {
			if us.set.At(i).Addr == addr {
				b = us.set.At(i)
			}
		}
		if b == nil {
			return admin.Errorf(http.StatusNotFound, "service %q has no backend %s (it has %s)", service, addr, strings.Join(setAddrs(us.set), ", "))
		}
		if d.drained[service] == nil {
			d.drained[service] = map[string]*backend.Backend{}
		}
		d.drained[service][addr] = b
	} else {
		d.registry.Adopt(service, d.drained[service][addr])
		delete(d.drained[service], addr)
		if len(d.drained[service]) == 0 {
			delete(d.drained, service)
		}
	}
	d.rebuildUDP(us)
	d.log.Info("admin: backend drain changed", "service", service, "backend", addr, "draining", on)
	return nil
}

// udpServices is the admin view of the UDP services: sessions counted as
// connections, the UDP counters beside them.
func (d *daemon) udpServices(now time.Time) []admin.Service {
	type item struct {
		svc admin.Service
		us  *udpServed
		mon *health.Monitor
	}
	d.mu.Lock()
	items := make([]item, 0, len(d.udpServing))
	for _, us := range d.udpServing {
		s := us.svc
		it := item{us: us, mon: us.monitor, svc: admin.Service{
			Name: s.Name, Listen: us.l.Addr().String(), Balance: s.Balance, Discovery: []string{}, Protocol: config.ProtoUDP,
		}}
		for _, b := range s.Backends {
			if b.Discover != nil {
				it.svc.Discovery = append(it.svc.Discovery, b.String())
			}
		}
		it.svc.Backends = backendViews(us.set, us.draining, us.monitor != nil, now)
		items = append(items, it)
	}
	d.mu.Unlock()

	out := make([]admin.Service, 0, len(items))
	for _, it := range items {
		c := it.us.l.Counters()
		it.svc.Connections = admin.Counters{
			Accepted: c.Created, Active: c.Active, NoBackend: c.NoBackend, DialErrors: c.DialErrors,
			BytesIn: c.BytesIn, BytesOut: c.BytesOut, Limited: c.TableFull,
		}
		it.svc.UDP = &admin.UDPCounters{
			MaxSessions: it.us.l.Route().SessionLimit(), Sessions: c.Active,
			Expired: c.Expired, Moved: c.Moved, Refused: c.Refused,
			TableFull: c.TableFull, NoBackend: c.NoBackend, Dropped: c.Dropped,
			PacketsIn: c.PacketsIn, PacketsOut: c.PacketsOut,
		}
		if it.mon != nil {
			checks := map[string]health.Status{}
			for _, st := range it.mon.Status() {
				checks[st.Addr] = st
			}
			for i := range it.svc.Backends {
				ab := &it.svc.Backends[i]
				if st, ok := checks[ab.Addr]; ok {
					ab.LastError, ab.LastCheck = st.LastError, st.LastCheck
				}
			}
		}
		out = append(out, it.svc)
	}
	return out
}

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
