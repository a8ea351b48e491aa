package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"reflect"
	"sync/atomic"

	"github.com/attache/attache/internal/config"
	"github.com/attache/attache/internal/etcdclient"
	"github.com/attache/attache/internal/link"
	"github.com/attache/attache/internal/listen"
	"github.com/attache/attache/internal/proxy"
	"github.com/prometheus/client_golang/prometheus"
)

// kindLink names the link server's socket among inherited listeners.
const kindLink = "link"

// linkRun is the daemon's side of the links between hosts: the identity
// (certificate files, reloaded when they change), the client that dials
// attache:// backends, and the link server when the configuration has
// link.listen. It lives as long as the daemon: a reload changes which
// services are offered and who may reach them, but the files, the listen
// address and the registration take effect on restart.
type linkRun struct {
	cfg    config.Link
	etcd   config.EtcdDiscovery // where link.register announces
	log    *slog.Logger
	id     *link.Identity
	stats  *link.Stats
	client *link.Client
	server *link.Server
	ln     net.Listener
	// offers maps each offered service to its allow list; swapped whole
	// by a reload.
	offers atomic.Pointer[map[string][]string]
}

// newLink loads the link identity, before any socket opens, so a missing
// or broken certificate file stops the start with the file's name. It
// returns nil when the configuration has no link section.
func newLink(cfg *config.Config, log *slog.Logger) (*linkRun, error) {
	if !cfg.Link.Enabled() {
		return nil, nil
	}
	log = log.With("component", "link")
	stats := link.NewStats()
	id, err := link.NewIdentity(link.Files{Cert: cfg.Link.Cert, Key: cfg.Link.Key, CA: cfg.Link.CA}, log, stats)
	if err != nil {
		return nil, fmt.Errorf("link (%s): %w", cfg.Link.Origin, err)
	}
	if r := cfg.Link.Register; r != nil {
		// The TLS files are read now, as for discovery, so a bad one stops
		// the start instead of the registration later.
		e := cfg.Discovery.Etcd
		if err := etcdclient.Check(etcdclient.Config{Endpoints: e.Endpoints, TLS: tlsFiles(e.TLS)}); err != nil {
			return nil, fmt.Errorf("link registration (%s): etcd: %w", cfg.Link.Origin, err)
		}
	}
	lr := &linkRun{cfg: cfg.Link, etcd: cfg.Discovery.Etcd, log: log, id: id, stats: stats,
		client: &link.Client{Identity: id, Stats: stats, PerConnection: cfg.Link.Mode == config.LinkPerConnection}}
	lr.setOffers(cfg.Link.Offer)
	return lr, nil
}

func (lr *linkRun) setOffers(offers []config.LinkOffer) {
	m := make(map[string][]string, len(offers))
	for _, o := range offers {
		m[o.Service] = o.Allow
	}
	lr.offers.Store(&m)
}

// open opens the link server's listener, if there is one to open.
func (lr *linkRun) open(ctx context.Context, in *listen.Inherited) error {
	if lr == nil || lr.cfg.Listen == "" {
		return nil
	}
	lc := proxy.ListenConfig(0)
	ln, err := in.Listen(ctx, lc, kindLink, listenNetwork(lr.cfg.Listen), lr.cfg.Listen)
	if err != nil {
		return fmt.Errorf("link server: listen %s (%s): %w", lr.cfg.Listen, lr.cfg.Origin, unwrapOp(err))
	}
	lr.ln = ln
	return nil
}

// start runs the certificate watch and the link server on the daemon's
// goroutines; a link server that dies stops the daemon, as a service
// listener does.
func (d *daemon) startLink(lr *linkRun) {
	if lr == nil {
		return
	}
	d.wg.Go(func() { lr.id.Watch(d.ctx, 0) })
	if lr.ln == nil {
		return
	}
	lr.server = &link.Server{Identity: lr.id, Lookup: d.linkTarget, HandshakeTimeout: lr.cfg.HandshakeTimeout,
		Logger: lr.log, Stats: lr.stats, Reader: d.proxy}
	d.log.Info("link server listening", "addr", lr.ln.Addr().String(), "names", lr.id.Names(),
		"offer", len(*lr.offers.Load()))
	// Counted with the accept loops: a hand-over waits for the link server
	// too before it drains, so a stream it is still handing over is not
	// refused by a proxy that is shutting down.
	d.accepting.Add(1)
	d.wg.Go(func() {
		defer d.accepting.Done()
		if err := lr.server.Serve(d.ctx, lr.ln); err != nil {
			d.mu.Lock()
			d.serveErr = errors.Join(d.serveErr, err)
			d.mu.Unlock()
			d.log.Error("link server stopped; shutting down", "error", err)
			d.stop()
		}
	})
	if r := lr.cfg.Register; r != nil {
		d.wg.Go(func() { d.registerLink(lr, r) })
	}
}

// linkTarget is the link server's Lookup: an offered service that runs
// here, its allow list, and a handler that hands the stream to the proxy
// as if the service's own listener had accepted it.
func (d *daemon) linkTarget(service string) (link.Target, bool) {
	allow, ok := (*d.link.offers.Load())[service]
	if !ok {
		return link.Target{}, false
	}
	d.mu.Lock()
	var l *proxy.Listener
	for _, sv := range d.serving {
		if sv.svc.Name == service {
			l = sv.l
			break
		}
	}
	d.mu.Unlock()
	if l == nil {
		return link.Target{}, false
	}
	return link.Target{Allow: allow, Handle: func(ctx context.Context, c net.Conn, ready func(error) error) {
		d.proxy.Handle(ctx, l, c, func(err error) error {
			if errors.Is(err, proxy.ErrShuttingDown) {
				// Stopping or handing over: the client opens the
				// stream again, on a new connection.
				err = fmt.Errorf("%w: %w", link.ErrGoingAway, err)
			}
			return ready(err)
		})
	}}, true
}

// linkDial is the dialer of a service whose backends are attache:// links,
// or nil for a service of plain backends.
func (d *daemon) linkDial(s config.Service) proxy.DialFunc {
	if len(s.Backends) == 0 || s.Backends[0].Link == "" || d.link == nil {
		return nil
	}
	return d.link.client.DialFunc(s.Backends[0].Link)
}

// close closes the link's pooled connections, once every connection
// has ended or been closed (after the drain): the streams they carried
// are over by then.
func (lr *linkRun) close() {
	if lr == nil {
		return
	}
	if lr.server != nil {
		_ = lr.server.Close()
	}
	_ = lr.client.Close()
}

// checkLinkReload refuses a reload the running link cannot serve: link
// backends without a link identity (the certificate files are read at
// start). Other link changes are logged as taking effect on restart.
func (d *daemon) checkLinkReload(cfg *config.Config) error {
	for _, s := range cfg.Services {
		if len(s.Backends) > 0 && s.Backends[0].Link != "" && d.link == nil {
			return fmt.Errorf("%s: service %q has attache:// backends, but attache started without a link section: restart to add one", s.Origin, s.Name)
		}
	}
	return nil
}

// reloadLink applies what a reload may change of the link: the offered
// services and their allow lists.
func (d *daemon) reloadLink(cfg *config.Config) {
	lr := d.link
	if lr == nil {
		if cfg.Link.Enabled() {
			d.log.Warn("reload: the link section takes effect on restart")
		}
		return
	}
	next := cfg.Link
	lr.setOffers(next.Offer)
	cur := lr.cfg
	cur.Offer, next.Offer, cur.Origin, next.Origin = nil, nil, "", ""
	if !reflect.DeepEqual(cur, next) {
		d.log.Warn("reload: link listen, certificate files, handshake timeout, mode and registration take effect on restart; offered services and allow lists changed now")
	}
}

// registerLinkMetrics adds the link's metrics to the daemon's registry.
func (d *daemon) registerLinkMetrics(reg prometheus.Registerer, lr *linkRun) {
	if lr == nil {
		return
	}
	if err := link.Register(reg, lr.stats, lr.id); err != nil {
		d.log.Error("link metrics", "error", err)
	}
}

// registerLink announces the offered services in etcd until the daemon
// stops (the lease is revoked then, so clients stop picking this host while
// it drains).
func (d *daemon) registerLink(lr *linkRun, r *config.LinkRegister) {
	a := &link.Announcer{
		Endpoints: lr.etcd.Endpoints, Username: lr.etcd.Username, Password: lr.etcd.Password, TLS: tlsFiles(lr.etcd.TLS),
		DialTimeout: lr.etcd.DialTimeout,
		Prefix:      r.Prefix, Advertise: r.Advertise, TTL: r.TTL, Logger: lr.log,
		Services: func() []string {
			var out []string
			for s := range *lr.offers.Load() {
				if _, ok := d.linkTarget(s); ok {
					out = append(out, s)
				}
			}
			return out
		},
	}
	if err := a.Run(d.ctx); err != nil {
		d.log.Error("link registration stopped", "error", err)
	}
}
