package daemon

import (
	"context"
	"net"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/attache/attache/internal/admin"
	"github.com/attache/attache/internal/backend"
	"github.com/attache/attache/internal/balance"
	"github.com/attache/attache/internal/config"
	"github.com/attache/attache/internal/health"
	"github.com/attache/attache/internal/listen"
	"github.com/attache/attache/internal/proxy"
	"github.com/attache/attache/internal/udp"
)

// TCP and UDP services share one core. A service of either protocol is a
// liveService[L] over its listener type (*proxy.Listener, *udp.Listener), and
// what a service does with its backends is written once, here: static
// backends and the admin API's override, discovery, the health registry,
// active checks, drains, the admin view and the reload transaction. What
// truly differs per protocol is a protocol[L] (tcpProtocol in tcp.go,
// udpProtocol in udp.go): how its listeners open and serve, how a backend
// is checked, what a route carries and what is counted.
//
// The daemon keeps one table per protocol (daemon.serving, udpServing):
// a TCP and a UDP service may listen on the same address (DNS does).

// listener is what the shared code needs of a protocol's listener.
type listener interface {
	Addr() net.Addr
	Close() error
}

// protocol is what differs between TCP and UDP services. Its methods run
// with daemon.mu held, except open, serve and counters, which run without
// it (they do I/O or read counters only).
type protocol[L listener] interface {
	// open opens the services' listeners, all or none; a socket in in
	// (which may be nil) is taken instead of opening one.
	open(ctx context.Context, in *listen.Inherited, services []config.Service) ([]L, error)
	// serve starts l's accept or read loop under the daemon's WaitGroup.
	serve(d *daemon, l L)
	// checker is the active health check of sv's backends.
	checker(d *daemon, sv *liveService[L]) health.Checker
	// onHealth is what a health verdict change does besides counting, or
	// nil; it runs on the monitor's goroutine, so it must capture what it
	// needs of sv now.
	onHealth(d *daemon, sv *liveService[L]) func(addr string, healthy bool)
	// publish builds sv's route from sv.svc and sv.set and hands it to the
	// listener; prev is the set it replaces (nil the first time).
	publish(d *daemon, sv *liveService[L], prev *backend.Set)
	// counters fills views[i].Connections (and any protocol section) from
	// svs[i]'s listener.
	counters(d *daemon, svs []*liveService[L], views []admin.Service)
	// removedNote is the log line of a service a reload removed: what
	// becomes of its connections or sessions.
	removedNote() string
}

// liveService is one listener and what its routes are built from. Fields are
// guarded by daemon.mu.
type liveService[L listener] struct {
	proto protocol[L]
	svc   config.Service
	l     L
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
	// backends in transparent mode (consumer.go, TCP only): it has its
	// own discovery, and its goroutines stop with it.
	consumer *consumerRoute
}

// served is a TCP service, udpServed a UDP one.
type (
	served    = liveService[*proxy.Listener]
	udpServed = liveService[*udp.Listener]
)

// serviceTable is one protocol's services by servingKey. It is guarded by
// daemon.mu.
type serviceTable[L listener] map[string]*liveService[L]

// servingKey names a service's listener across reloads: its configured
// listen address, and its name too when the port is 0 (several services
// may ask for "any free port" on one host; each keeps its own).
func servingKey(s config.Service) string {
	if _, port, err := net.SplitHostPort(s.Listen); err == nil && port == "0" {
		return s.Listen + " " + s.Name
	}
	return s.Listen
}

// start adds the listener opened for s to t and serves it.
func (t serviceTable[L]) start(d *daemon, proto protocol[L], s config.Service, l L) {
	d.mu.Lock()
	sv := &liveService[L]{proto: proto, l: l}
	t[servingKey(s)] = sv
	sv.configure(d, s)
	d.mu.Unlock()
	d.log.Info("forwarding", "service", s.Name, "listen", l.Addr().String(), "protocol", s.ProtocolName(),
		"backends", backendList(s), "balance", s.Balance, "from", s.Origin)
	proto.serve(d, l)
}

// startAll serves the listeners opened for services (in the same order)
// and returns their bound addresses.
func (t serviceTable[L]) startAll(d *daemon, proto protocol[L], services []config.Service, ls []L) []Bound {
	bound := make([]Bound, len(ls))
	for i, l := range ls {
		bound[i] = Bound{Service: services[i].Name, Addr: l.Addr()}
		t.start(d, proto, services[i], l)
	}
	return bound
}

// byName finds a service by name, or nil. d.mu is held.
func (t serviceTable[L]) byName(name string) *liveService[L] {
	for _, sv := range t {
		if sv.svc.Name == name {
			return sv
		}
	}
	return nil
}

// closeListeners closes every listener of t (shutdown, hand-over). d.mu
// is held.
func (t serviceTable[L]) closeListeners() {
	for _, sv := range t {
		sv.l.Close()
	}
}

// rediscover rebuilds the services of t whose discovered endpoints changed
// between prev and cur. d.mu is held.
func (t serviceTable[L]) rediscover(d *daemon, prev, cur map[string][]backend.Endpoint) {
	for _, sv := range t {
		name := sv.svc.Name
		old, had := prev[name]
		now, has := cur[name]
		if had == has && slices.Equal(old, now) {
			continue
		}
		d.log.Info("backends changed", "service", name, "discovered", len(now))
		sv.rebuild(d)
	}
}

// configure (re)applies a service's configuration to its listener: policy,
// passive ejection, health checks, then the route. d.mu is held.
func (sv *liveService[L]) configure(d *daemon, s config.Service) {
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
		sv.startMonitor(d)
	}
	sv.rebuild(d)
}

// reconfigure applies what changes with a service's configuration from
// old to s besides its checks: the registry forgets a renamed service, the
// policy is rebuilt only when its name changed (so a round robin cursor or
// a source hash does not restart), and passive ejection takes the new
// back-off. It returns the policy to use. d.mu is held.
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

// startMonitor starts the active checks of sv's backends. A consumer's
// route runs them under its own context, so they stop when it is dropped.
// d.mu is held.
func (sv *liveService[L]) startMonitor(d *daemon) {
	hc := sv.svc.HealthCheck
	spec := health.Spec{Interval: hc.Interval, Timeout: hc.Timeout, Rise: hc.Rise, Fall: hc.Fall}
	m := health.NewMonitor(sv.svc.Name, spec, sv.proto.checker(d, sv), d.log)
	service, also := sv.svc.Name, sv.proto.onHealth(d, sv)
	m.OnChange = func(addr string, healthy bool) {
		if testHookHealth != nil {
			testHookHealth(service, addr, healthy)
		}
		if also != nil {
			also(addr, healthy)
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
func (sv *liveService[L]) unconfigure(d *daemon) {
	if sv.stopMonitor != nil {
		sv.stopMonitor()
	}
	d.registry.Forget(sv.svc.Name)
	delete(d.drained, sv.svc.Name)
}

// rebuild publishes a new route for sv from its static backends (or the
// admin API's override) and what discovery currently reports, less the
// drained ones. Connections and sessions in flight keep the route they
// started with; backends that stay keep their state. d.mu is held.
func (sv *liveService[L]) rebuild(d *daemon) {
	name := sv.svc.Name
	eps, draining := d.withoutDrained(name, sv.endpoints(d))
	prev := sv.set
	sv.set, sv.draining = d.registry.Resolve(name, eps), draining
	sv.proto.publish(d, sv, prev)
	if sv.monitor != nil {
		sv.monitor.Update(sv.set)
	}
	if testHookRebuilt != nil {
		testHookRebuilt(name, setAddrs(sv.set))
	}
}

// endpoints are sv's backends before drains: the static ones, or the
// admin API's override, then the discovered ones. With the "first" policy
// the static ones fail over in the order they are listed. d.mu is held.
func (sv *liveService[L]) endpoints(d *daemon) []backend.Endpoint {
	s := sv.svc
	first := s.Balance == "first"
	var eps []backend.Endpoint
	if sv.overridden {
		for i, ep := range sv.override {
			if first {
				ep.Priority = i
			}
			eps = append(eps, ep)
		}
	} else {
		for i, b := range s.Backends {
			if b.Discover != nil {
				continue
			}
			ep := backend.Endpoint{Addr: b.Addr, Weight: b.Weight}
			if first {
				ep.Priority = i
			}
			eps = append(eps, ep)
		}
	}
	discovered := d.discovered[s.Name]
	if sv.consumer != nil {
		discovered = sv.consumer.discovered
	}
	return append(eps, discovered...)
}

// setBackends replaces sv's static backends until the next reload (PUT
// /v1/services/{name}/backends). d.mu is held.
func (sv *liveService[L]) setBackends(d *daemon, specs []admin.BackendSpec) error {
	if len(specs) == 0 && !hasDiscovery(sv.svc) {
		return admin.Errorf(http.StatusBadRequest, "backends: service %q has no discovery entries, so it needs at least one backend", sv.svc.Name)
	}
	eps := make([]backend.Endpoint, len(specs))
	for i, s := range specs {
		eps[i] = backend.Endpoint{Addr: s.Addr, Weight: s.Weight}
	}
	sv.override, sv.overridden = eps, true
	sv.rebuild(d)
	d.log.Info("admin: static backends overridden until the next reload", "service", sv.svc.Name, "backends", len(eps))
	return nil
}

// drain takes addr out of sv's rotation (on) or puts it back (see
// adminState.Drain). The call is idempotent. d.mu is held.
func (sv *liveService[L]) drain(d *daemon, addr string, on bool) error {
	service := sv.svc.Name
	if _, drained := d.drained[service][addr]; on == drained {
		return nil
	}
	if on {
		var b *backend.Backend
		for i := range sv.set.Len() {
			if sv.set.At(i).Addr == addr {
				b = sv.set.At(i)
			}
		}
		if b == nil {
			return admin.Errorf(http.StatusNotFound, "service %q has no backend %s (it has %s)", service, addr, strings.Join(setAddrs(sv.set), ", "))
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
	sv.rebuild(d)
	d.log.Info("admin: backend drain changed", "service", service, "backend", addr, "draining", on)
	return nil
}

// controlled is a service of either protocol, as the admin API changes it.
type controlled interface {
	setBackends(d *daemon, specs []admin.BackendSpec) error
	drain(d *daemon, addr string, on bool) error
}

var (
	_ controlled = (*served)(nil)
	_ controlled = (*udpServed)(nil)
)

// controlled finds a service of either protocol by name; d.mu is held.
func (d *daemon) controlled(name string) (controlled, error) {
	if sv := d.serving.byName(name); sv != nil {
		return sv, nil
	}
	if us := d.udpServing.byName(name); us != nil {
		return us, nil
	}
	var names []string
	for _, sv := range d.serving {
		names = append(names, sv.svc.Name)
	}
	for _, us := range d.udpServing {
		names = append(names, us.svc.Name)
	}
	slices.Sort(names)
	return nil, admin.Errorf(http.StatusNotFound, "no service %q (services: %s)", name, strings.Join(names, ", "))
}

// adminViews is the admin view of every service in t. The daemon lock is
// held only to copy references; health monitors and counters are asked
// afterwards, so a slow scrape never holds up a reload.
func (t serviceTable[L]) adminViews(d *daemon, proto protocol[L], now time.Time) []admin.Service {
	d.mu.Lock()
	svs := make([]*liveService[L], 0, len(t))
	views := make([]admin.Service, 0, len(t))
	monitors := make([]*health.Monitor, 0, len(t))
	for _, sv := range t {
		s := sv.svc
		v := admin.Service{
			Name: s.Name, Listen: sv.l.Addr().String(), Balance: s.Balance, Discovery: []string{}, Protocol: s.ProtocolName(),
			Backends: backendViews(sv.set, sv.draining, sv.monitor != nil, now),
		}
		for _, b := range s.Backends {
			if b.Discover != nil {
				v.Discovery = append(v.Discovery, b.String())
			}
		}
		svs, views, monitors = append(svs, sv), append(views, v), append(monitors, sv.monitor)
	}
	d.mu.Unlock()

	proto.counters(d, svs, views)
	for i, m := range monitors {
		if m != nil {
			withChecks(views[i].Backends, m.Status())
		}
	}
	return views
}

// withChecks adds each backend's last check to its admin view.
func withChecks(views []admin.Backend, statuses []health.Status) {
	checks := make(map[string]health.Status, len(statuses))
	for _, st := range statuses {
		checks[st.Addr] = st
	}
	for i := range views {
		if st, ok := checks[views[i].Addr]; ok {
			views[i].LastError, views[i].LastCheck = st.LastError, st.LastCheck
		}
	}
}

// reloadPlan is one protocol's half of a reload: the services kept (with
// their new configuration), and the listeners opened for the added ones.
type reloadPlan[L listener] struct {
	table  serviceTable[L]
	proto  protocol[L]
	keep   map[string]config.Service // by servingKey
	added  []config.Service
	opened []L
}

// planReload opens the listeners services add to t before anything
// changes; on error nothing is left open.
func planReload[L listener](d *daemon, t serviceTable[L], proto protocol[L], services []config.Service) (*reloadPlan[L], error) {
	p := &reloadPlan[L]{table: t, proto: proto, keep: map[string]config.Service{}}
	d.mu.Lock()
	for _, s := range services {
		key := servingKey(s)
		sv, ok := t[key]
		if !ok {
			p.added = append(p.added, s)
			continue
		}
		p.keep[key] = s
		if sv.svc.MaxConnections != s.MaxConnections {
			d.log.Warn("reload: a new max_connections takes effect on restart", "service", s.Name, "listen", s.Listen)
		}
	}
	d.mu.Unlock()
	opened, err := proto.open(d.ctx, nil, p.added)
	if err != nil {
		return nil, err
	}
	p.opened = opened
	return p, nil
}

// abort closes what the plan opened (another part of the reload failed).
func (p *reloadPlan[L]) abort() {
	for _, l := range p.opened {
		l.Close()
	}
}

// commit applies the plan: kept services take their new configuration (a
// reload ends a runtime override; open connections and sessions carry on
// with the route they have), removed ones are released and their
// listeners closed, added ones start. Both are counted in sum.
func (p *reloadPlan[L]) commit(d *daemon, sum *admin.ReloadSummary) {
	d.mu.Lock()
	var gone []*liveService[L]
	for key, sv := range p.table {
		s, ok := p.keep[key]
		if !ok {
			gone = append(gone, sv)
			delete(p.table, key)
			continue
		}
		sv.override, sv.overridden = nil, false
		sv.configure(d, s)
	}
	for _, sv := range gone {
		sv.unconfigure(d)
		sum.Removed = append(sum.Removed, sv.svc.Name)
	}
	d.mu.Unlock()
	for _, sv := range gone {
		d.log.Info(p.proto.removedNote(), "service", sv.svc.Name, "listen", sv.l.Addr().String())
		sv.l.Close()
	}
	for i, l := range p.opened {
		p.table.start(d, p.proto, p.added[i], l)
		sum.Added = append(sum.Added, p.added[i].Name)
	}
}

// Test hooks, set by tests before Run: every route rebuild, every health
// verdict change, the running daemon once everything started.
var (
	testHookRebuilt func(service string, addrs []string)
	testHookHealth  func(service, addr string, healthy bool)
	testHookDaemon  func(d *daemon)
)

// setAddrs is the addresses of s, in its order.
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
	d.serving.rediscover(d, prev, m)
	d.udpServing.rediscover(d, prev, m)
}

// backendList is a service's backends for the start-up log line.
func backendList(s config.Service) []string {
	out := make([]string, len(s.Backends))
	for i, b := range s.Backends {
		out[i] = b.String()
	}
	return out
}
