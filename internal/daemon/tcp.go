package daemon

import (
	"context"
	"reflect"
	"slices"

	"github.com/attache/attache/internal/backend"
	"github.com/attache/attache/internal/balance"
	"github.com/attache/attache/internal/config"
	"github.com/attache/attache/internal/health"
	"github.com/attache/attache/internal/proxy"
)

// served is one open listener and what its routes are built from. Fields
// are guarded by daemon.mu.
type served struct {
	svc config.Service
	l   *proxy.Listener
	// policy lives as long as the service keeps its policy name, so a round
	// robin cursor or a source hash does not restart at every change.
	policy balance.Policy
	set    *backend.Set
	// monitor runs the active checks, when the service has them.
	monitor     *health.Monitor
	stopMonitor context.CancelFunc
	// override replaces the configured static backends when overridden
	// (PUT /v1/services/{name}/backends), until the next reload.
	override   []backend.Endpoint
	overridden bool
	// draining are the backends rebuild left out because they are
	// drained, for the admin view.
	draining []*backend.Backend
	// consumer is set on the route of a consumer's own choice of
	// backends in transparent mode (consumer.go): it has its own
	// discovery, and its goroutines stop with it.
	consumer *consumerRoute
}

// configure (re)applies a service's configuration to its listener: policy,
// health checks, passive ejection, then the route. d.mu is held.
func (d *daemon) configure(sv *served, s config.Service) {
	old := sv.svc
	sv.policy = d.reconfigure(old, s, sv.policy)
	if sv.monitor != nil && checksChanged(old, s) {
		sv.stopMonitor()
		sv.monitor, sv.stopMonitor = nil, nil
		// The checks stop with it: their verdict must not keep a backend
		// out of rotation.
		for i := range sv.set.Len() {
			sv.set.At(i).SetHealthy(true)
		}
	}
	sv.svc = s
	if s.HealthCheck != nil && sv.monitor == nil {
		d.startMonitor(sv)
	}
	d.rebuild(sv)
}

// reconfigure applies what every kind of service (TCP, UDP) shares when its
// configuration changes from old to s: the registry forgets a renamed
// service, the policy is rebuilt only when its name changed (so a round
// robin cursor or a source hash does not restart), and passive ejection
// takes the new back-off. It returns the policy to use. d.mu is held.
func (d *daemon) reconfigure(old, s config.Service, policy balance.Policy) balance.Policy {
	if old.Name != "" && old.Name != s.Name {
		d.registry.Forget(old.Name)
	}
	if policy == nil || old.Balance != s.Balance {
		p, err := balance.New(s.Balance)
		if err != nil { // config.Validate checked the name; keep serving regardless
			d.log.Error("balancing policy", "service", s.Name, "error", err)
			p = &balance.RoundRobin{}
		}
		policy = p
	}
	if s.EjectTime > 0 {
		d.registry.SetBackoff(s.Name, backend.Backoff{Base: s.EjectTime, Max: 30 * s.EjectTime})
	}
	return policy
}

// checksChanged reports whether a running health monitor built for old no
// longer fits s: the checks were removed or changed, or the service renamed.
func checksChanged(old, s config.Service) bool {
	return s.HealthCheck == nil || old.HealthCheck == nil || !reflect.DeepEqual(*s.HealthCheck, *old.HealthCheck) || old.Name != s.Name
}

func (d *daemon) startMonitor(sv *served) {
	hc := sv.svc.HealthCheck
	dial := healthDial(sv.l) // a LOCAL PROXY header for backends sent one
	if ld := d.linkDial(sv.svc); ld != nil {
		// Across the link: passes once the link server has authorised
		// this host and connected to its own backend (see package link).
		dial = ld
	}
	var checker health.Checker = health.TCP{Dial: dial}
	if hc.Send != "" || hc.Expect != "" {
		checker = health.SendExpect{Send: []byte(hc.Send), Expect: []byte(hc.Expect), Dial: dial}
	}
	m := health.NewMonitor(sv.svc.Name, health.Spec{Interval: hc.Interval, Timeout: hc.Timeout, Rise: hc.Rise, Fall: hc.Fall}, checker, d.log)
	l, service, closeOn := sv.l, sv.svc.Name, sv.svc.CloseOnRemove
	m.OnChange = func(addr string, healthy bool) {
		if testHookHealth != nil {
			testHookHealth(service, addr, healthy)
		}
		if closeOn && !healthy {
			if n := d.proxy.CloseBackend(l, addr, "backend failed its health check"); n > 0 {
				d.log.Info("closed connections to a failed backend", "service", service, "backend", addr, "connections", n)
			}
		}
	}
	parent, wg := d.ctx, &d.wg
	if cr := sv.consumer; cr != nil {
		parent, wg = cr.ctx, &cr.wg
	}
	ctx, cancel := context.WithCancel(parent)
	sv.monitor, sv.stopMonitor = m, cancel
	wg.Go(func() { _ = m.Run(ctx) })
}

// unconfigure releases what a removed service held. d.mu is held.
func (d *daemon) unconfigure(sv *served) {
	if sv.stopMonitor != nil {
		sv.stopMonitor()
	}
	d.registry.Forget(sv.svc.Name)
	delete(d.drained, sv.svc.Name)
}

// rebuild publishes a new route for sv from its static backends and what
// discovery currently reports. Connections in flight keep the route they
// started with; backends that stay keep their state. d.mu is held.
func (d *daemon) rebuild(sv *served) {
	s := sv.svc
	var eps []backend.Endpoint
	for i, b := range s.Backends {
		if b.Discover == nil {
			ep := backend.Endpoint{Addr: b.Addr, Weight: b.Weight}
			if s.Balance == "first" {
				// Fixed backends fail over in the order they are listed.
				ep.Priority = i
			}
			eps = append(eps, ep)
		}
	}
	if sv.overridden {
		eps = eps[:0]
		for i, ep := range sv.override {
			if s.Balance == "first" {
				ep.Priority = i
			}
			eps = append(eps, ep)
		}
	}
	discovered := d.discovered[s.Name]
	if sv.consumer != nil {
		discovered = sv.consumer.discovered
	}
	eps = append(eps, discovered...)
	eps, sv.draining = d.withoutDrained(s.Name, eps)
	set := d.registry.Resolve(s.Name, eps)
	prev := sv.set
	sv.set = set
	accept, send, sendFor := proxyProtocol(s)
	sv.l.SetRoute(&proxy.Route{
		Service:        s.Name,
		Backends:       set,
		Policy:         sv.policy,
		Retries:        s.Retries,
		RetryTimeout:   s.RetryTimeout,
		Passive:        s.EjectTime > 0,
		ConnectTimeout: s.ConnectTimeout,
		IdleTimeout:    s.IdleTimeout,
		KeepAlive:      s.KeepAlive,
		AcceptProxy:    accept,
		SendProxy:      send,
		SendProxyFor:   sendFor,
		Dial:           d.linkDial(s),
	})
	if sv.monitor != nil {
		sv.monitor.Update(set)
	}
	if testHookRebuilt != nil {
		testHookRebuilt(s.Name, setAddrs(set))
	}
	if s.CloseOnRemove && prev != nil {
		// Synchronous: CloseBackend only closes sockets, and a goroutine
		// here could be started by the discovery merger while Run is
		// already waiting for the daemon's goroutines at shutdown.
		for _, addr := range removedAddrs(prev, set) {
			if _, drained := d.drained[s.Name][addr]; drained {
				continue // draining lets open connections finish
			}
			if n := d.proxy.CloseBackend(sv.l, addr, "backend removed"); n > 0 {
				d.log.Info("closed connections to a removed backend", "service", s.Name, "backend", addr, "connections", n)
			}
		}
	}
}

// Test hooks, set by tests before Run: every route rebuild, every health
// verdict change, the running daemon once everything started.
var (
	testHookRebuilt func(service string, addrs []string)
	testHookHealth  func(service, addr string, healthy bool)
	testHookDaemon  func(d *daemon)
)

func removedAddrs(prev, cur *backend.Set) []string {
	now := setAddrs(cur)
	var out []string
	for i := range prev.Len() {
		if addr := prev.At(i).Addr; !slices.Contains(now, addr) {
			out = append(out, addr)
		}
	}
	return out
}

func setAddrs(s *backend.Set) []string {
	out := make([]string, s.Len())
	for i := range s.Len() {
		out[i] = s.At(i).Addr
	}
	return out
}

// applyDiscovered takes the merged discovery result and rebuilds the routes
// of the services whose endpoints changed.
func (d *daemon) applyDiscovered(m map[string][]backend.Endpoint) {
	d.mu.Lock()
	defer d.mu.Unlock()
	prev := d.discovered
	d.discovered = m // rebuild reads it
	for _, sv := range d.serving {
		name := sv.svc.Name
		old, had := prev[name]
		cur, has := m[name]
		if had == has && slices.Equal(old, cur) {
			continue
		}
		d.log.Info("backends changed", "service", name, "discovered", len(cur))
		d.rebuild(sv)
	}
	d.rediscoverUDP(prev, m)
}

// backendList is a service's backends for the start-up log line.
func backendList(s config.Service) []string {
	out := make([]string, len(s.Backends))
	for i, b := range s.Backends {
		out[i] = b.String()
	}
	return out
}
