// Package daemon is attache's composition root: it builds the data path from
// a validated configuration, opens every listener or none, owns every
// goroutine, and shuts down in order.
//
// Typical usage:
//
//	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
//	defer stop()
//	err := daemon.Run(ctx, cfg, daemon.Options{Logger: log, Grace: 30 * time.Second})
package daemon

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/attache/attache/internal/admin"
	"github.com/attache/attache/internal/backend"
	"github.com/attache/attache/internal/config"
	"github.com/attache/attache/internal/health"
	"github.com/attache/attache/internal/listen"
	"github.com/attache/attache/internal/proxy"
	"github.com/attache/attache/internal/sdnotify"
	"github.com/attache/attache/internal/udp"
	"github.com/prometheus/client_golang/prometheus"
)

// Options tune the daemon itself, as opposed to the services it runs.
type Options struct {
	Logger *slog.Logger
	// Grace is how long open connections may take to finish after a
	// shutdown begins; the rest are then closed. Zero closes them at once.
	Grace time.Duration
	// Resolver resolves backend hostnames; nil uses the system resolver.
	Resolver *net.Resolver
	// Loops is how many event loops carry TCP connections (see
	// proxy.Proxy.Loops): 0 chooses, negative uses goroutines instead.
	Loops int
	// AccessLog logs one info line per closed connection ("connection
	// closed", with client, backend, duration, bytes and reason). Off, the
	// line is logged at debug only.
	AccessLog bool
	// LogOutput and LogHandler, when both set, give access lines a handler
	// of their own (LogHandler builds it in the main logger's format and
	// level) over a buffer in memory that a goroutine of Run's writes to
	// LogOutput in batches (see accesslog.go): a closing connection then
	// costs no system call, and a slow sink drops lines rather than stall
	// the event loops. Without them access lines go through Logger.
	LogOutput  io.Writer
	LogHandler func(io.Writer) slog.Handler
	// Ready, when set, is called once every listener is open, with the
	// bound addresses in service order (tests listen on port 0).
	Ready func([]Bound)
	// Reload asks for a reload (the CLI sends on SIGHUP); Load reads the
	// configuration again for it, and Reloaded, when set, hears how each
	// reload went.
	Reload   <-chan os.Signal
	Load     func() (*config.Config, error)
	Reloaded func(error)
	// Admin, when not empty, is the host:port of the admin HTTP API
	// (health, readiness, state, metrics); off by default. It opens with
	// the listeners, all or nothing, and closes last at shutdown.
	Admin string
	// AdminReady, when set, is called with the admin API's bound address
	// before Ready (tests listen on port 0).
	AdminReady func(net.Addr)
	// AdminToken is the bearer token the admin API's mutating calls
	// (reload, backends, drain) must present; empty turns them off (403).
	AdminToken string
	// Upgrade asks for a zero-downtime upgrade (the CLI sends on SIGUSR2):
	// a new process takes the listeners over and this one drains and
	// returns nil (see upgrade.go).
	Upgrade <-chan os.Signal
	// UpgradeTimeout bounds how long the new process may take to serve
	// (default 1 minute).
	UpgradeTimeout time.Duration
	// Inherited are the listening sockets handed over by the process this
	// one replaces, nil if it was not started by an upgrade. Run takes
	// what matches its configuration and opens the rest.
	Inherited *listen.Inherited
	// PIDFile, when set, is written with this process's id once every
	// listener serves, and removed at exit unless a newer process has
	// rewritten it.
	PIDFile string
	// Notifier sends systemd its notify messages (systemd.go); nil sends
	// nothing.
	Notifier *sdnotify.Notifier
	// Version is this build's version (buildinfo.Version), served as the
	// attache_build_info metric's version label and on the status page;
	// empty is "dev".
	Version string
}

// Bound is an open listener.
type Bound struct {
	Service string
	Addr    net.Addr
}

// ListenError is returned when a listener cannot be opened; nothing is left
// listening when Run returns it.
type ListenError struct {
	Service config.Service
	Err     error
}

func (e *ListenError) Error() string {
	return fmt.Sprintf("listen %s (service %s, from %s): %v", e.Service.Listen, e.Service.Name, e.Service.Origin, e.Err)
}

func (e *ListenError) Unwrap() error { return e.Err }

// Run serves cfg until ctx is done, then stops accepting, drains open
// connections for up to Grace and closes the rest. It returns an error if a
// listener cannot be opened (after closing the ones that were) or if a
// listener dies while serving: an ambassador that silently stops forwarding
// one of its ports is worse than one that exits and gets restarted.
//
// Each value on opts.Reload reloads the configuration through opts.Load as a
// transaction (see reload).
func Run(ctx context.Context, cfg *config.Config, opts Options) error {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	defer opts.Inherited.Close() // what the configuration no longer has
	for _, w := range cfg.Warnings {
		log.Warn(w)
	}
	// Build everything that can refuse the configuration before opening a
	// socket: never a half-started proxy.
	disc, err := newDiscovery(cfg, log)
	if err != nil {
		return err
	}
	lr, err := newLink(cfg, log)
	if err != nil {
		return err
	}
	var adminLn net.Listener
	if opts.Admin != "" {
		if adminLn, err = listenAdmin(ctx, opts); err != nil {
			return fmt.Errorf("admin API: listen %s: %w", opts.Admin, unwrapOp(err))
		}
	}
	tcpServices, udpServices := splitProtocols(cfg.Services) // UDP: see udp.go
	listeners, err := openAll(ctx, opts.Inherited, tcpServices)
	var udpListeners []*udp.Listener
	if err == nil {
		if udpListeners, err = openUDP(ctx, opts.Inherited, udpServices); err != nil {
			for _, l := range listeners {
				l.Close()
			}
		}
	}
	if err == nil {
		if err = lr.open(ctx, opts.Inherited); err != nil { // all listeners or none
			for _, l := range listeners {
				l.Close()
			}
			closeUDP(udpListeners)
		}
	}
	var tr *transparentRun
	if err == nil {
		if tr, err = openTransparent(ctx, cfg, opts.Inherited, log); err != nil {
			for _, l := range listeners {
				l.Close()
			}
			closeUDP(udpListeners)
			if lr != nil && lr.ln != nil {
				lr.ln.Close()
			}
		}
	}
	if err != nil {
		if adminLn != nil {
			adminLn.Close()
		}
		return err
	}
	serveCtx, stopServing := context.WithCancel(ctx)
	defer stopServing()
	alog := newAccessLog(log, opts)
	defer alog.close() // flushed below; this covers a panic's way out
	d := &daemon{
		log:        log,
		proxy:      &proxy.Proxy{Logger: log, Resolver: opts.Resolver, AccessLog: alog.logger, Loops: opts.Loops},
		access:     alog,
		ctx:        serveCtx,
		stop:       stopServing,
		serving:    map[string]*served{},
		registry:   health.NewRegistry(backend.DefaultBackoff),
		discovered: map[string][]backend.Endpoint{},
		drained:    map[string]map[string]*backend.Backend{},
		reloadReq:  make(chan reloadRequest),
		stopped:    make(chan struct{}),
		link:       lr,
		transp:     tr,
	}
	reg, reloads := newRegistry(d, cmp.Or(opts.Version, "dev"))
	d.registerLinkMetrics(reg, lr)
	reg.MustRegister(udpCollector{d})
	if tr != nil {
		reg.MustRegister(transparentCollector{tr})
	}
	bound := make([]Bound, len(listeners))
	for i, l := range listeners {
		s := tcpServices[i]
		bound[i] = Bound{Service: s.Name, Addr: l.Addr()}
		d.serve(s, l)
	}
	for i, l := range udpListeners {
		bound = append(bound, Bound{Service: udpServices[i].Name, Addr: l.Addr()})
		d.serveUDP(udpServices[i], l)
	}
	bound = inServiceOrder(cfg.Services, bound)
	d.startDiscovery(disc)
	d.startLink(lr)
	d.startTransparent(tr)
	if testHookDaemon != nil {
		testHookDaemon(d)
	}
	d.open.Store(true)
	// The admin API outlives serveCtx so /readyz can say 503 while the
	// connections drain; it stops last.
	adminCtx, stopAdmin := context.WithCancel(context.WithoutCancel(ctx))
	defer stopAdmin()
	var adminWG sync.WaitGroup
	if adminLn != nil {
		srv := &admin.Server{State: adminState{d}, Control: adminState{d}, Token: opts.AdminToken,
			Gatherer: reg, Logger: log.With("component", "admin"), Version: opts.Version}
		log.Info("admin API listening", "addr", adminLn.Addr().String())
		adminWG.Go(func() {
			if err := srv.Serve(adminCtx, adminLn); err != nil {
				log.Error("admin API stopped; the proxy carries on", "error", err)
			}
		})
		if opts.AdminReady != nil {
			opts.AdminReady(adminLn.Addr())
		}
	}
	d.announceReady(opts)
	d.wg.Go(func() { opts.Notifier.Watchdog(serveCtx) }) // WatchdogSec= in the unit
	if opts.Ready != nil {
		opts.Ready(bound)
	}
	handedOver := false
	for done := false; !done; {
		select {
		case <-serveCtx.Done():
			done = true
		case <-opts.Reload:
			_, err := d.reloadCounted(opts, reloads)
			if opts.Reloaded != nil {
				opts.Reloaded(err)
			}
		case req := <-d.reloadReq:
			// POST /v1/reload runs here, on the same goroutine as SIGHUP,
			// so two reloads never interleave.
			sum, err := d.reloadCounted(opts, reloads)
			req.reply <- reloadReply{sum, err}
			if opts.Reloaded != nil {
				opts.Reloaded(err)
			}
		case <-opts.Upgrade:
			handedOver = d.upgrade(opts, adminLn)
			done = handedOver
		}
	}
	if handedOver { // the new process answers the admin API now
		adminWG.Go(func() { retireAdmin(adminLn, stopAdmin) })
	} else {
		d.notified(opts.Notifier.Stopping(fmt.Sprintf("stopping: draining %d connections", d.proxy.Active())))
	}
	d.open.Store(false)
	close(d.stopped) // admin reloads asked from now on are refused
	d.mu.Lock()
	for _, sv := range d.serving {
		sv.l.Close()
	}
	d.mu.Unlock()
	d.transp.close()
	d.closeUDPListeners() // their sessions end: UDP has nothing to drain
	if handedOver {
		d.drainHandedOver(opts.Grace)
	}
	d.wg.Wait()
	d.stopDiscovery()

	if n := d.proxy.Active(); n > 0 {
		log.Info("draining open connections", "connections", n, "grace", opts.Grace)
	}
	graceCtx, cancel := context.WithTimeout(context.Background(), opts.Grace)
	defer cancel()
	if forced := d.proxy.Shutdown(graceCtx); forced > 0 {
		log.Warn("grace period over; closed remaining connections", "connections", forced)
	}
	d.link.close()
	stopAdmin()
	adminWG.Wait()
	d.releasePIDFile(opts)
	alog.close() // every connection has closed: its last lines go out now
	log.Info("stopped")
	return d.serveErr
}

// daemon is the running state: one served listener per listen address.
type daemon struct {
	log *slog.Logger
	// access is the access log, its buffer and drop count (accesslog.go).
	access *accessLog
	proxy  *proxy.Proxy
	ctx    context.Context
	stop   context.CancelFunc
	wg     sync.WaitGroup

	// discoveryUpdates counts snapshots by provider (metrics); set by
	// newRegistry before discovery starts.
	discoveryUpdates *prometheus.CounterVec

	// registry holds each backend's live state (connections, health),
	// keyed by service and address, across reloads and discovery changes.
	registry *health.Registry

	// discovery is the running set of providers, replaced on a reload
	// that changes what to discover.
	discMu sync.Mutex
	disc   *discoveryRun

	// open is true from the moment every listener serves until shutdown
	// begins (readiness).
	open atomic.Bool

	upgradeState // zero-downtime upgrades (upgrade.go)
	udpState     // UDP services (udp.go), guarded by mu

	// link is the links between hosts (link.go); nil without a link
	// section. Set before the first route is built.
	link *linkRun
	// transp is the transparent listener (transparent.go); nil without
	// one.
	transp *transparentRun

	// reloadReq carries admin reloads to Run's loop; stopped closes when
	// the loop has ended.
	reloadReq chan reloadRequest
	stopped   chan struct{}

	mu         sync.Mutex
	serving    map[string]*served // by servingKey
	discovered map[string][]backend.Endpoint
	// drained is, by service and address, the backends taken out of
	// rotation by the admin API, with the state their open connections
	// hold. It outlives reloads while the service exists.
	drained  map[string]map[string]*backend.Backend
	serveErr error
}

// servingKey names a service's listener across reloads (TCP and UDP
// services keep separate tables): its configured listen address, and its
// name too when the port is 0 (several services may ask for "any free
// port" on one host; each keeps its own).
func servingKey(s config.Service) string {
	if _, port, err := net.SplitHostPort(s.Listen); err == nil && port == "0" {
		return s.Listen + " " + s.Name
	}
	return s.Listen
}

func (d *daemon) serve(s config.Service, l *proxy.Listener) {
	d.mu.Lock()
	sv := &served{svc: s, l: l}
	d.serving[servingKey(s)] = sv
	d.configure(sv, s)
	d.mu.Unlock()
	d.log.Info("forwarding", "service", s.Name, "listen", l.Addr().String(),
		"backends", backendList(s), "balance", s.Balance, "from", s.Origin)
	d.accepting.Add(1)
	d.wg.Go(func() {
		defer d.accepting.Done()
		if err := d.proxy.Serve(d.ctx, l); err != nil {
			d.mu.Lock()
			d.serveErr = errors.Join(d.serveErr, err)
			d.mu.Unlock()
			d.log.Error("listener stopped; shutting down", "listen", l.Addr().String(), "error", err)
			d.stop()
		}
	})
}

// reload is a transaction: the new configuration is loaded and validated
// whole, and the listeners it adds are opened, before anything changes. On
// any error the running configuration keeps serving untouched. Then routes
// of kept listeners are swapped (connections in flight keep the route they
// started with), new listeners start and removed ones stop accepting; their
// open connections carry on until they end or the daemon shuts down.
func (d *daemon) reload(load func() (*config.Config, error)) (admin.ReloadSummary, error) {
	var sum admin.ReloadSummary
	if load == nil {
		return sum, errNoSource
	}
	cfg, err := load()
	if err != nil {
		d.log.Error("reload failed; the running configuration keeps serving", "error", err)
		return sum, &configError{fmt.Errorf("reload: %w", err)}
	}
	disc, err := newDiscovery(cfg, d.log)
	if err == nil {
		err = d.checkLinkReload(cfg)
	}
	if err != nil {
		d.log.Error("reload failed; the running configuration keeps serving", "error", err)
		return sum, &configError{fmt.Errorf("reload: %w", err)}
	}
	d.mu.Lock()
	var added []config.Service
	keep := map[string]config.Service{}
	for _, s := range cfg.Services {
		if s.IsUDP() {
			continue // prepareUDP (udp.go)
		}
		if sv, ok := d.serving[servingKey(s)]; ok {
			keep[servingKey(s)] = s
			if sv.svc.MaxConnections != s.MaxConnections {
				d.log.Warn("reload: a new max_connections takes effect on restart",
					"service", s.Name, "listen", s.Listen)
			}
			continue
		}
		added = append(added, s)
	}
	d.mu.Unlock()
	opened, err := openAll(d.ctx, nil, added)
	if err != nil {
		d.log.Error("reload failed; the running configuration keeps serving", "error", err)
		return sum, fmt.Errorf("reload: %w", err)
	}
	udpPlan, err := d.prepareUDP(cfg)
	if err != nil {
		for _, l := range opened {
			l.Close()
		}
		d.log.Error("reload failed; the running configuration keeps serving", "error", err)
		return sum, fmt.Errorf("reload: %w", err)
	}
	for _, w := range cfg.Warnings {
		d.log.Warn(w)
	}
	d.mu.Lock()
	var removed []*served
	for addr, sv := range d.serving {
		s, ok := keep[addr]
		if !ok {
			removed = append(removed, sv)
			delete(d.serving, addr)
			continue
		}
		// A reload ends a runtime override of the static backends.
		sv.override, sv.overridden = nil, false
		d.configure(sv, s)
	}
	for _, sv := range removed {
		d.unconfigure(sv)
		sum.Removed = append(sum.Removed, sv.svc.Name)
	}
	d.mu.Unlock()
	for _, sv := range removed {
		d.log.Info("reload: service removed; its open connections carry on",
			"service", sv.svc.Name, "listen", sv.l.Addr().String())
		sv.l.Close()
	}
	for i, l := range opened {
		d.serve(added[i], l)
	}
	d.commitUDP(udpPlan, &sum)
	d.reloadLink(cfg)
	d.reloadTransparent(cfg)
	d.startDiscovery(disc)
	d.log.Info("reloaded", "services", len(cfg.Services), "added", len(added), "removed", len(removed))
	sum.Services = len(cfg.Services)
	for _, s := range added {
		sum.Added = append(sum.Added, s.Name)
	}
	return sum, nil
}

// reloadCounted reloads and counts the result in attache_reload_total.
func (d *daemon) reloadCounted(opts Options, reloads *prometheus.CounterVec) (admin.ReloadSummary, error) {
	d.notified(opts.Notifier.Reloading("reloading the configuration"))
	sum, err := d.reload(opts.Load)
	d.notifyReloaded(opts, err)
	result := "success"
	if err != nil {
		result = "failure"
	}
	reloads.WithLabelValues(result).Inc()
	return sum, err
}

// errNoSource: the daemon was started without a way to read its
// configuration again.
var errNoSource = errors.New("reload: no configuration source to reload from")

// configError marks a reload refused because the new configuration is
// invalid (as opposed to a port that would not open).
type configError struct{ err error }

func (e *configError) Error() string { return e.err.Error() }
func (e *configError) Unwrap() error { return e.err }

type reloadRequest struct{ reply chan reloadReply }

type reloadReply struct {
	sum admin.ReloadSummary
	err error
}

// openAll opens every service's listener, or none: on the first failure it
// closes those already open and reports which service and port failed. A
// socket inherited in an upgrade for the same address is taken instead of
// opening one (in may be nil).
func openAll(ctx context.Context, in *listen.Inherited, services []config.Service) ([]*proxy.Listener, error) {
	var out []*proxy.Listener
	for _, s := range services {
		var (
			ln  net.Listener
			err error
		)
		if path, unix := config.UnixPath(s.Listen); unix {
			if ln = in.Take(listen.KindService, "unix", path); ln == nil {
				ln, err = proxy.ListenUnix(ctx, path)
			}
		} else {
			lc := proxy.ListenConfig(s.KeepAlive)
			ln, err = in.Listen(ctx, lc, listen.KindService, listenNetwork(s.Listen), s.Listen)
		}
		if err != nil {
			for _, l := range out {
				l.Close()
			}
			return nil, &ListenError{Service: s, Err: unwrapOp(err)}
		}
		// The route is set by configure once the daemon owns the listener.
		out = append(out, proxy.NewListener(ln, &proxy.Route{Service: s.Name, Backends: backend.NewSet()}, s.MaxConnections))
	}
	return out, nil
}

// listenNetwork keeps an IPv4 listen address IPv4-only: Go would open
// 0.0.0.0 as a dual-stack [::] socket, while the link contract (and the
// operator who wrote 0.0.0.0) means IPv4. IPv6 literals are IPv6; a hostname
// or an empty host, and [::], are left to "tcp" (dual-stack).
func listenNetwork(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return "tcp"
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		switch {
		case ip.Is4():
			return "tcp4"
		case ip.IsUnspecified(): // [::] means every address, IPv4 too
			return "tcp"
		}
		return "tcp6"
	}
	return "tcp"
}

func unwrapOp(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		return oe.Err
	}
	return err
}
