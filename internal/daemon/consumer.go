package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"github.com/attache/attache/internal/backend"
	"github.com/attache/attache/internal/config"
	"github.com/attache/attache/internal/discovery"
	"github.com/attache/attache/internal/discovery/docker"
	"github.com/attache/attache/internal/proxy"
)

// Per-consumer routes (transparent mode with per_consumer): the calling
// container's BACKEND_<port> variable, or its attache.connect.<port>
// label, chooses the backends of its connections to <port>. The value
// takes every backend form a service's backends take in the file
// (config.ConsumerService): host:port lists, SRV names, dns://, etcd://,
// consul://, consul-service://, docker:// and attache:// links. Each
// (container, port, value) gets a route of its own, built by the code
// that builds a service's route (configure, rebuild) with the port's
// service's balancing, health checks, retries and timeouts; a value that
// names discovered backends gets providers of its own (newDiscovery,
// runDiscovery) feeding that route live, as a service's providers feed
// its route: connections in flight keep the route they started with.
//
// A route, its providers and its health checks live until the Docker
// engine reports an event about the container (docker.Callers'
// OnInvalidate), a reload, the cache bound (maxConsumerRoutes) or
// shutdown; the next connection builds it again from what the container
// says then.

type consumerKey struct {
	caller string
	port   uint16
	value  string
}

// maxConsumerRoutes bounds the per-consumer route cache; past it the cache
// starts over (routes in use are kept by their connections).
const maxConsumerRoutes = 4096

// consumerRoute is one consumer's route, or the error its value gave
// (logged once, then counted at each connection until the entry goes).
type consumerRoute struct {
	key       consumerKey
	container string
	sv        *served // nil when err is set
	err       error

	ctx    context.Context // ends when the entry is dropped
	cancel context.CancelFunc
	disc   *discoveryRun  // its providers; nil when its backends are fixed
	wg     sync.WaitGroup // its health monitor
	done   chan struct{}  // closed once every goroutine of the route returned
	// discovered is what its providers found; guarded by daemon.mu.
	discovered []backend.Endpoint
}

// badConsumerValue is a consumer's value that names no usable backends.
type badConsumerValue struct{ err error }

func (e *badConsumerValue) Error() string { return e.err.Error() }
func (e *badConsumerValue) Unwrap() error { return e.err }

// consumerListener is the route c's caller chose for dst's port, or nil
// when the caller is no container or chose nothing for that port: the
// port's service serves it then. A *badConsumerValue error means the
// caller's value is malformed.
func (d *daemon) consumerListener(tr *transparentRun, c *net.TCPConn, dst netip.AddrPort) (*proxy.Listener, error) {
	src := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr()
	caller, err := tr.callers.Lookup(d.ctx, src)
	if err != nil {
		return nil, err
	}
	if caller == nil {
		return nil, nil
	}
	value, ok := caller.Connect[int(dst.Port())]
	if !ok {
		return nil, nil
	}
	cr := d.consumerRoute(tr, caller, dst, value)
	if cr.err != nil {
		return nil, cr.err
	}
	return cr.sv.l, nil
}

// consumerRoute returns the cached route for caller, dst's port and value,
// building it on first use.
func (d *daemon) consumerRoute(tr *transparentRun, caller *docker.Caller, dst netip.AddrPort, value string) *consumerRoute {
	key := consumerKey{caller.ID, dst.Port(), value}
	tr.consMu.Lock()
	defer tr.consMu.Unlock()
	if cr, ok := tr.consumers[key]; ok {
		return cr
	}
	if len(tr.consumers) >= maxConsumerRoutes {
		d.dropConsumersLocked(tr, "the route cache is full", func(consumerKey) bool { return true })
	}
	cr := d.newConsumerRoute(tr, caller, dst, value)
	tr.consumers[key] = cr
	return cr
}

// newConsumerRoute builds and starts a consumer's route; tr.consMu is held.
func (d *daemon) newConsumerRoute(tr *transparentRun, caller *docker.Caller, dst netip.AddrPort, value string) *consumerRoute {
	port := dst.Port()
	cr := &consumerRoute{key: consumerKey{caller.ID, port, value}, container: caller.Name, done: make(chan struct{})}
	// The name tells the container's routes apart in logs and in the
	// health registry, which keys backend state by it; the short ID keeps
	// a container recreated under the same name from sharing that state.
	name := fmt.Sprintf("%s@%.12s:%d", caller.Name, caller.ID, port)
	var base *config.Service
	if sv := d.transparentServed(dst); sv != nil {
		base = &sv.svc
	}
	cfg := &config.Config{Discovery: d.discoverySettings()}
	if d.link != nil {
		cfg.Link = d.link.cfg
	}
	s, err := config.ConsumerService(name, value, base, cfg)
	var disc *discoveryRun
	if err == nil {
		cfg.Services = []config.Service{s}
		disc, err = newDiscovery(cfg, d.log)
	}
	if err != nil {
		cr.err = &badConsumerValue{fmt.Errorf("container %s: backends for port %d %q: %w", caller.Name, port, value, err)}
		close(cr.done)
		tr.badValues.Add(1)
		tr.log.Warn("per-consumer backends: malformed value; the container's connections to this port are refused until it changes",
			"container", caller.Name, "port", port, "value", value, "error", err, "want", config.ConsumerForms)
		return cr
	}
	cr.ctx, cr.cancel = context.WithCancel(d.ctx)
	// Never served nor closed: the transparent listener hands it its
	// connections (proxy.Handle).
	l := proxy.NewListener(tr.ln, &proxy.Route{Service: name, Backends: backend.NewSet()}, 0)
	cr.sv = &served{proto: tcpProto, l: l, consumer: cr}
	d.mu.Lock()
	cr.sv.configure(d, s)
	d.mu.Unlock()
	if len(disc.providers) > 0 {
		cr.disc = disc
		ctx, cancel := context.WithCancel(cr.ctx)
		d.runDiscovery(ctx, cancel, disc, &discovery.Merger{Logger: d.log, Apply: func(m map[string][]backend.Endpoint) {
			d.mu.Lock()
			defer d.mu.Unlock()
			if cr.ctx.Err() != nil {
				return // dropped: its registry entries are forgotten
			}
			cr.discovered = m[name]
			cr.sv.rebuild(d)
			// After the rebuild: a connection that follows this line
			// takes the new route.
			tr.log.Info("per-consumer backends changed", "container", caller.Name, "port", port, "backends", setAddrs(cr.sv.set))
		}})
	}
	d.wg.Go(func() {
		cr.wg.Wait()
		if cr.disc != nil {
			cr.disc.wg.Wait()
		}
		close(cr.done)
	})
	tr.log.Info("per-consumer route", "container", caller.Name, "port", port, "backends", backendList(s),
		"from_service", base != nil, "balance", s.Balance)
	return cr
}

// discoverySettings is the discovery section in force, for the providers
// of consumers' routes.
func (d *daemon) discoverySettings() config.Discovery {
	d.discMu.Lock()
	defer d.discMu.Unlock()
	if d.disc == nil {
		return config.Discovery{}
	}
	return d.disc.spec.Settings
}

// dropConsumers drops the cached routes whose key matches, stopping their
// providers and health checks; connections in flight keep their route.
func (d *daemon) dropConsumers(tr *transparentRun, why string, match func(consumerKey) bool) {
	tr.consMu.Lock()
	defer tr.consMu.Unlock()
	d.dropConsumersLocked(tr, why, match)
}

// dropConsumersLocked is dropConsumers with tr.consMu held.
func (d *daemon) dropConsumersLocked(tr *transparentRun, why string, match func(consumerKey) bool) {
	var names []string
	for k, cr := range tr.consumers {
		if !match(k) {
			continue
		}
		delete(tr.consumers, k)
		if cr.sv == nil {
			continue
		}
		cr.cancel()
		names = append(names, cr.sv.svc.Name)
		tr.log.Debug("per-consumer route dropped", "container", cr.container, "port", k.port, "why", why)
	}
	if len(names) == 0 {
		return
	}
	// After cancel: an Apply that takes d.mu from now on sees the route
	// dropped and leaves the registry alone.
	d.mu.Lock()
	for _, n := range names {
		d.registry.Forget(n)
	}
	d.mu.Unlock()
}

// forgetCaller is docker.Callers' OnInvalidate: the routes built on what
// the engine said about container id ("" for every container) are stale.
func (d *daemon) forgetCaller(tr *transparentRun, id string) {
	d.dropConsumers(tr, "docker event", func(k consumerKey) bool { return id == "" || k.caller == id })
}

// consumerRoutes counts the cached routes, for the metrics.
func (tr *transparentRun) consumerRoutes() int {
	tr.consMu.Lock()
	defer tr.consMu.Unlock()
	n := 0
	for _, cr := range tr.consumers {
		if cr.err == nil {
			n++
		}
	}
	return n
}

// isBadConsumerValue reports whether err is a malformed consumer's value.
func isBadConsumerValue(err error) bool {
	_, ok := errors.AsType[*badConsumerValue](err)
	return ok
}
