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
	o, err := open(ctx, cfg, opts, log)
	if err != nil {
		return err
	}
	serveCtx, stopServing := context.WithCancel(ctx)
	defer stopServing()
	alog := newAccessLog(log, opts)
	defer alog.close() // flushed below; this covers a panic's way out
	d := newDaemon(serveCtx, stopServing, log, opts, alog, o)
	reg, reloads := d.metrics(opts)
	bound := d.start(cfg, o)
	// The admin API outlives serveCtx so /readyz can say 503 while the
	// connections drain; it stops last.
	adm := d.startAdmin(ctx, opts, o.admin, reg)
	defer adm.stop()
	d.announceReady(opts)
	d.wg.Go(func() { opts.Notifier.Watchdog(serveCtx) }) // WatchdogSec= in the unit
	if opts.Ready != nil {
		opts.Ready(bound)
	}
	handedOver := d.serveLoop(opts, reloads, o.admin)
	d.shutdown(opts, handedOver, adm)
	alog.close() // every connection has closed: its last lines go out now
	log.Info("stopped")
	return d.serveErr
}

// opened is what Run builds and opens before it starts anything: all of
// it, or none.
type opened struct {
	disc   *discoveryRun
	link   *linkRun
	transp *transparentRun
	admin  net.Listener // nil without Options.Admin
	// The services of each protocol in configuration order, and their
	// listeners in the same order.
	tcp, udp     []config.Service
	tcpListeners []*proxy.Listener
	udpListeners []*udp.Listener
}

// open builds everything that can refuse the configuration before it
// opens a socket (never a half-started proxy), then opens every listener:
// the admin API's, the services', the link server's and the transparent
// one. On any error what opened is closed again.
func open(ctx context.Context, cfg *config.Config, opts Options, log *slog.Logger) (*opened, error) {
	o := &opened{}
	var err error
	if o.disc, err = newDiscovery(cfg, log); err != nil {
		return nil, err
	}
	if o.link, err = newLink(cfg, log); err != nil {
		return nil, err
	}
	if opts.Admin != "" {
		if o.admin, err = listenAdmin(ctx, opts); err != nil {
			return nil, fmt.Errorf("admin API: listen %s: %w", opts.Admin, unwrapOp(err))
		}
	}
	o.tcp, o.udp = splitProtocols(cfg.Services) // UDP: see udp.go
	if err := o.listen(ctx, cfg, opts.Inherited, log); err != nil {
		o.close()
		return nil, err
	}
	return o, nil
}

// listen opens the services', link server's and transparent listeners in
// turn, stopping at the first that fails.
func (o *opened) listen(ctx context.Context, cfg *config.Config, in *listen.Inherited, log *slog.Logger) error {
	var err error
	if o.tcpListeners, err = tcpProto.open(ctx, in, o.tcp); err != nil {
		return err
	}
	if o.udpListeners, err = udpProto.open(ctx, in, o.udp); err != nil {
		return err
	}
	if err = o.link.open(ctx, in); err != nil {
		return err
	}
	o.transp, err = openTransparent(ctx, cfg, in, log)
	return err
}

// close closes what listen opened before one failed, and the admin API's
// socket.
func (o *opened) close() {
	for _, l := range o.tcpListeners {
		l.Close()
	}
	for _, l := range o.udpListeners {
		l.Close()
	}
	if o.link != nil && o.link.ln != nil {
		o.link.ln.Close()
	}
	if o.admin != nil {
		o.admin.Close()
	}
}

// newDaemon is the running state around what open opened, before any of
// it serves; ctx and stop are the serving context.
func newDaemon(ctx context.Context, stop context.CancelFunc, log *slog.Logger, opts Options, alog *accessLog, o *opened) *daemon {
	px := &proxy.Proxy{Logger: log, Resolver: opts.Resolver, AccessLog: alog.logger, Loops: opts.Loops}
	if o.link != nil {
		// The proxy's event loops read the link's multiplexed
		// connections, next to the streams they carry.
		o.link.client.Reader = px
	}
	return &daemon{
		log:        log,
		proxy:      px,
		access:     alog,
		ctx:        ctx,
		stop:       stop,
		serving:    serviceTable[*proxy.Listener]{},
		udpServing: serviceTable[*udp.Listener]{},
		registry:   health.NewRegistry(backend.DefaultBackoff),
		discovered: map[string][]backend.Endpoint{},
		drained:    map[string]map[string]*backend.Backend{},
		reloadReq:  make(chan reloadRequest),
		stopped:    make(chan struct{}),
		link:       o.link,
		transp:     o.transp,
	}
}

// metrics is the daemon's registry with every collector, and the reload
// counter. It sets what discovery counts with, so it runs before start.
func (d *daemon) metrics(opts Options) (*prometheus.Registry, *prometheus.CounterVec) {
	reg, reloads := newRegistry(d, cmp.Or(opts.Version, "dev"))
	d.registerLinkMetrics(reg, d.link)
	reg.MustRegister(udpCollector{d})
	if d.transp != nil {
		reg.MustRegister(transparentCollector{d.transp})
	}
	return reg, reloads
}

// start serves every opened listener, starts discovery, the link and the
// transparent listener, and marks the daemon open. It returns the bound
// addresses in service order.
func (d *daemon) start(cfg *config.Config, o *opened) []Bound {
	bound := d.serving.startAll(d, tcpProto, o.tcp, o.tcpListeners)
	bound = append(bound, d.udpServing.startAll(d, udpProto, o.udp, o.udpListeners)...)
	d.startDiscovery(o.disc)
	d.startLink(o.link)
	d.startTransparent(o.transp)
	if testHookDaemon != nil {
		testHookDaemon(d)
	}
	d.open.Store(true)
	return inServiceOrder(cfg.Services, bound)
}

// adminRun is the running admin API. It is stopped last, after the
// connections drained, so /readyz answers 503 meanwhile.
type adminRun struct {
	ln   net.Listener // nil without one
	stop context.CancelFunc
	wg   sync.WaitGroup
}

// startAdmin serves the admin API on ln, when there is one, until the
// returned adminRun is stopped; ctx's end does not stop it.
func (d *daemon) startAdmin(ctx context.Context, opts Options, ln net.Listener, reg *prometheus.Registry) *adminRun {
	adminCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	a := &adminRun{ln: ln, stop: stop}
	if ln == nil {
		return a
	}
	srv := &admin.Server{State: adminState{d}, Control: adminState{d}, Token: opts.AdminToken,
		Gatherer: reg, Logger: d.log.With("component", "admin"), Version: opts.Version}
	d.log.Info("admin API listening", "addr", ln.Addr().String())
	a.wg.Go(func() {
		if err := srv.Serve(adminCtx, ln); err != nil {
			d.log.Error("admin API stopped; the proxy carries on", "error", err)
		}
	})
	if opts.AdminReady != nil {
		opts.AdminReady(ln.Addr())
	}
	return a
}

// serveLoop runs reloads (SIGHUP and POST /v1/reload) and upgrades one at
// a time until the serving context ends or an upgrade hands over; it
// reports whether one did.
func (d *daemon) serveLoop(opts Options, reloads *prometheus.CounterVec, adminLn net.Listener) (handedOver bool) {
	for {
		select {
		case <-d.ctx.Done():
			return false
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
			if d.upgrade(opts, adminLn) {
				return true
			}
		}
	}
}

// shutdown stops in order: listeners first (UDP sessions end with
// theirs), then the connections drain for up to Grace (after a hand-over,
// before the serving context is cancelled), then the daemon's goroutines,
// discovery, the link and the admin API. The pid file goes last.
func (d *daemon) shutdown(opts Options, handedOver bool, adm *adminRun) {
	if handedOver { // the new process answers the admin API now
		adm.wg.Go(func() { retireAdmin(adm.ln, adm.stop) })
	} else {
		d.notified(opts.Notifier.Stopping(fmt.Sprintf("stopping: draining %d connections", d.proxy.Active())))
	}
	d.open.Store(false)
	close(d.stopped) // admin reloads asked from now on are refused
	d.mu.Lock()
	d.serving.closeListeners()
	d.mu.Unlock()
	d.transp.close()
	d.mu.Lock()
	d.udpServing.closeListeners() // their sessions end: UDP has nothing to drain
	d.mu.Unlock()
	if handedOver {
		d.drainHandedOver(opts.Grace)
	}
	d.wg.Wait()
	d.stopDiscovery()
	d.drainConnections(opts.Grace)
	d.link.close()
	adm.stop()
	adm.wg.Wait()
	d.releasePIDFile(opts)
}

// drainConnections waits up to grace for the open connections to end, and
// then closes the rest.
func (d *daemon) drainConnections(grace time.Duration) {
	if n := d.proxy.Active(); n > 0 {
		d.log.Info("draining open connections", "connections", n, "grace", grace)
	}
	graceCtx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if forced := d.proxy.Shutdown(graceCtx); forced > 0 {
		d.log.Warn("grace period over; closed remaining connections", "connections", forced)
	}
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

	mu sync.Mutex
	// serving and udpServing are the services of each protocol
	// (service.go); the two keep separate tables because a TCP and a UDP
	// service may listen on the same address.
	serving    serviceTable[*proxy.Listener]
	udpServing serviceTable[*udp.Listener]
	discovered map[string][]backend.Endpoint
	// drained is, by service and address, the backends taken out of
	// rotation by the admin API, with the state their open connections
	// hold. It outlives reloads while the service exists.
	drained  map[string]map[string]*backend.Backend
	serveErr error
}

// reload is a transaction: the new configuration is loaded and validated
// whole, and the listeners it adds are opened, before anything changes. On
// any error the running configuration keeps serving untouched. Then routes
// of kept listeners are swapped (connections in flight keep the route they
// started with), new listeners start and removed ones stop accepting; their
// open connections carry on until they end or the daemon shuts down.
func (d *daemon) reload(load func() (*config.Config, error)) (admin.ReloadSummary, error) {
	failed := func(err error) (admin.ReloadSummary, error) {
		d.log.Error("reload failed; the running configuration keeps serving", "error", err)
		return admin.ReloadSummary{}, err
	}
	if load == nil {
		return admin.ReloadSummary{}, errNoSource
	}
	cfg, err := load()
	if err != nil {
		return failed(&configError{fmt.Errorf("reload: %w", err)})
	}
	disc, err := newDiscovery(cfg, d.log)
	if err == nil {
		err = d.checkLinkReload(cfg)
	}
	if err != nil {
		return failed(&configError{fmt.Errorf("reload: %w", err)})
	}
	tcps, udps := splitProtocols(cfg.Services)
	tcpPlan, err := planReload(d, d.serving, tcpProto, tcps)
	if err != nil {
		return failed(fmt.Errorf("reload: %w", err))
	}
	udpPlan, err := planReload(d, d.udpServing, udpProto, udps)
	if err != nil {
		tcpPlan.abort()
		return failed(fmt.Errorf("reload: %w", err))
	}
	for _, w := range cfg.Warnings {
		d.log.Warn(w)
	}
	sum := admin.ReloadSummary{Services: len(cfg.Services)}
	tcpPlan.commit(d, &sum)
	udpPlan.commit(d, &sum)
	d.reloadLink(cfg)
	d.reloadTransparent(cfg)
	d.startDiscovery(disc)
	d.log.Info("reloaded", "services", len(cfg.Services), "added", len(sum.Added), "removed", len(sum.Removed))
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

// listenNetwork keeps an IPv4 listen address IPv4-only (see ipNetwork).
func listenNetwork(addr string) string { return ipNetwork("tcp", addr) }

// ipNetwork is the network to open addr on, for base "tcp" or "udp": Go
// would open 0.0.0.0 as a dual-stack [::] socket, while the link contract
// (and the operator who wrote 0.0.0.0) means IPv4, so an IPv4 address is
// base+"4". IPv6 literals are base+"6"; a hostname or an empty host, and
// [::], are left to base (dual-stack).
func ipNetwork(base, addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return base
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		switch {
		case ip.Is4():
			return base + "4"
		case ip.IsUnspecified(): // [::] means every address, IPv4 too
			return base
		}
		return base + "6"
	}
	return base
}

func unwrapOp(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		return oe.Err
	}
	return err
}
