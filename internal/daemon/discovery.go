package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"reflect"
	"slices"
	"sync"

	"github.com/attache/attache/internal/backend"
	"github.com/attache/attache/internal/config"
	"github.com/attache/attache/internal/discovery"
	"github.com/attache/attache/internal/discovery/consul"
	"github.com/attache/attache/internal/discovery/dns"
	"github.com/attache/attache/internal/discovery/docker"
	"github.com/attache/attache/internal/discovery/etcd"
	"github.com/attache/attache/internal/tlsclient"
)

// discoveryRun is a set of providers built from one configuration, and the
// goroutines running them once started.
type discoveryRun struct {
	// spec is what the providers were built from; a reload whose spec is
	// equal keeps the running providers (and their watches) untouched.
	spec      discoverySpec
	providers []discovery.Provider
	cancel    context.CancelFunc
	merger    *discovery.Merger
	wg        sync.WaitGroup
}

// discoverySpec is every discovery entry of a configuration plus the
// discovery section: all a provider's behaviour depends on.
type discoverySpec struct {
	Settings config.Discovery
	Entries  map[string][]config.Discover // service → entries, in file order
}

// newDiscovery builds (and so validates) the providers cfg needs, without
// starting them. A configuration without discovery entries gives a run with
// no providers.
func newDiscovery(cfg *config.Config, log *slog.Logger) (*discoveryRun, error) {
	spec := discoverySpec{Settings: cfg.Discovery, Entries: map[string][]config.Discover{}}
	for _, s := range cfg.Services {
		for _, b := range s.Backends {
			if b.Discover != nil {
				spec.Entries[s.Name] = append(spec.Entries[s.Name], *b.Discover)
			}
		}
	}
	run := &discoveryRun{spec: spec}
	// Providers are told apart by name: the merger keeps one snapshot per
	// name, and metrics label by it. So etcd and Consul configurations are
	// keyed by the name their provider will have, which says which cluster
	// or agent it reaches and how: entries that reach the same one, however
	// they spell it (the discovery section, or a URL naming the server),
	// share a provider, and two providers never share a name.
	var (
		dnsCfg    = dns.Config{Server: cfg.Discovery.DNS.Server, MinTTL: cfg.Discovery.DNS.MinTTL, MaxTTL: cfg.Discovery.DNS.MaxTTL, Timeout: cfg.Discovery.DNS.Timeout}
		etcdCfgs  = map[string]*etcd.Config{}   // by provider name
		consulCfg = map[string]*consul.Config{} // by provider name
		dockerFor = map[string][]string{}       // label value → attache services
	)
	for _, svc := range slices.Sorted(maps.Keys(spec.Entries)) {
		for _, e := range spec.Entries[svc] {
			switch e.Kind {
			case config.KindDNS:
				dnsCfg.Queries = append(dnsCfg.Queries, dns.Query{Service: svc, Name: e.Name, Type: dns.A, Port: e.Port})
			case config.KindSRV:
				dnsCfg.Queries = append(dnsCfg.Queries, dns.Query{Service: svc, Name: e.Name, Type: dns.SRV})
			case config.KindEtcd:
				eps := cfg.Discovery.Etcd.Endpoints
				if e.Server != "" {
					eps = []string{e.Server}
				}
				name := etcd.Name(eps)
				c := etcdCfgs[name]
				if c == nil {
					c = &etcd.Config{Endpoints: eps, Username: cfg.Discovery.Etcd.Username, Password: cfg.Discovery.Etcd.Password,
						TLS: tlsFiles(cfg.Discovery.Etcd.TLS), DialTimeout: cfg.Discovery.Etcd.DialTimeout, Logger: log}
					etcdCfgs[name] = c
				}
				if w := (etcd.Watch{Service: svc, Key: e.Name}); !slices.Contains(c.Watches, w) {
					c.Watches = append(c.Watches, w)
				}
			case config.KindConsul, config.KindConsulKV:
				addr := cfg.Discovery.Consul.Address
				if e.Server != "" {
					addr = e.Server
				}
				name, err := consul.Name(addr, tlsFiles(cfg.Discovery.Consul.TLS))
				if err != nil {
					return nil, fmt.Errorf("discovery (consul): service %s: %w", svc, err)
				}
				c := consulCfg[name]
				if c == nil {
					c = &consul.Config{Address: addr, TLS: tlsFiles(cfg.Discovery.Consul.TLS), Token: cfg.Discovery.Consul.Token,
						Datacenter: cfg.Discovery.Consul.Datacenter, Logger: log}
					consulCfg[name] = c
				}
				w := consul.Watch{Service: svc, Name: e.Name, Tag: e.Tag}
				if e.Kind == config.KindConsulKV {
					w = consul.Watch{Service: svc, KVKey: e.Name}
				}
				c.Watches = append(c.Watches, w)
			case config.KindDocker:
				dockerFor[e.Name] = append(dockerFor[e.Name], svc)
			default:
				return nil, fmt.Errorf("service %s: unknown discovery kind %q", svc, e.Kind)
			}
		}
	}
	add := func(p discovery.Provider, err error, what string) error {
		if err != nil {
			return fmt.Errorf("discovery (%s): %w", what, err)
		}
		run.providers = append(run.providers, p)
		return nil
	}
	if len(dnsCfg.Queries) > 0 {
		dnsCfg.Logger = log
		p, err := dns.New(dnsCfg)
		if err := add(p, err, "dns"); err != nil {
			return nil, err
		}
	}
	for _, name := range slices.Sorted(maps.Keys(etcdCfgs)) {
		p, err := etcd.New(*etcdCfgs[name])
		if err := add(p, err, "etcd"); err != nil {
			return nil, err
		}
	}
	for _, name := range slices.Sorted(maps.Keys(consulCfg)) {
		p, err := consul.New(*consulCfg[name])
		if err := add(p, err, "consul"); err != nil {
			return nil, err
		}
	}
	if len(dockerFor) > 0 {
		dc := cfg.Discovery.Docker
		p, err := docker.New(docker.Config{Host: dc.Host, TLS: tlsFiles(dc.TLS), Label: dc.Label, PortLabel: dc.PortLabel,
			Network: dc.Network, Services: slices.Sorted(maps.Keys(dockerFor)), Logger: log})
		if err != nil {
			return nil, fmt.Errorf("discovery (docker): %w", err)
		}
		run.providers = append(run.providers, renamed{Provider: p, to: dockerFor})
	}
	return run, nil
}

// tlsFiles is a tls section of the file for the package that dials; nil
// (no section) leaves TLS to that source's CLI variables.
func tlsFiles(t *config.ClientTLS) *tlsclient.Files {
	if t == nil {
		return nil
	}
	f := tlsclient.Files(*t)
	return &f
}

// renamed reports a provider's services under other names: Docker label
// values are not always the attache service names that ask for them, and
// one label value may feed several services.
type renamed struct {
	discovery.Provider
	to map[string][]string
}

func (r renamed) Run(ctx context.Context, out chan<- discovery.Snapshot) error {
	in := make(chan discovery.Snapshot)
	errc := make(chan error, 1)
	go func() { errc <- r.Provider.Run(ctx, in) }()
	for {
		select {
		case err := <-errc:
			return err
		case s := <-in:
			m := map[string][]backend.Endpoint{}
			for from, eps := range s.Services {
				for _, to := range r.to[from] {
					m[to] = append(m[to], eps...)
				}
			}
			select {
			case out <- discovery.Snapshot{Provider: s.Provider, Services: m}:
			case <-ctx.Done():
				return <-errc
			}
		}
	}
}

// startDiscovery runs next's providers, unless the running ones were built
// from the same spec, in which case they carry on and next is dropped.
func (d *daemon) startDiscovery(next *discoveryRun) {
	d.discMu.Lock()
	defer d.discMu.Unlock()
	var seed map[string]map[string][]backend.Endpoint
	if cur := d.disc; cur != nil {
		if reflect.DeepEqual(cur.spec, next.spec) {
			return
		}
		cur.stop()
		// Keep what the old providers found until their successors of the
		// same name report, so a reload does not empty a service.
		if cur.merger != nil {
			seed = cur.merger.Snapshots()
			for name := range seed {
				if !slices.ContainsFunc(next.providers, func(p discovery.Provider) bool { return p.Name() == name }) {
					delete(seed, name)
				}
			}
		}
	}
	d.disc = next
	if len(next.providers) == 0 {
		// Nothing to discover: drop what an earlier configuration found.
		d.applyDiscovered(map[string][]backend.Endpoint{})
		return
	}
	ctx, cancel := context.WithCancel(d.ctx)
	m := &discovery.Merger{Apply: d.applyDiscovered, Logger: d.log, Seed: seed}
	if d.discoveryUpdates != nil {
		// Only the services' providers are counted, as only they are
		// reported (readiness, /v1/discovery, the other discovery
		// metrics): a per-consumer route's providers bear the same names
		// and would add to these series.
		m.OnSnapshot = func(provider string) { d.discoveryUpdates.WithLabelValues(provider).Inc() }
	}
	d.runDiscovery(ctx, cancel, next, m)
	d.log.Info("discovery started", "providers", len(next.providers))
}

// runDiscovery starts r's providers and m, which merges what they report,
// on r's goroutines until ctx is done (cancel ends it, and r.stop waits).
// The daemon's services and each per-consumer route (consumer.go) run
// their providers this way.
func (d *daemon) runDiscovery(ctx context.Context, cancel context.CancelFunc, r *discoveryRun, m *discovery.Merger) {
	r.cancel = cancel
	snaps := make(chan discovery.Snapshot)
	r.merger = m
	r.wg.Go(func() { m.Run(ctx, snaps) })
	for _, p := range r.providers {
		r.wg.Go(func() {
			if err := p.Run(ctx, snaps); err != nil && ctx.Err() == nil {
				// The last good set stays in force: better stale backends
				// than none.
				d.log.Error("discovery provider stopped; its last backends stay in force", "provider", p.Name(), "error", err)
			}
		})
	}
}

func (r *discoveryRun) stop() {
	if r.cancel != nil {
		r.cancel()
	}
	r.wg.Wait()
}

// stopDiscovery stops the running providers (at shutdown).
func (d *daemon) stopDiscovery() {
	d.discMu.Lock()
	defer d.discMu.Unlock()
	if d.disc != nil {
		d.disc.stop()
		d.disc = nil
	}
}
