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
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/attache/attache/internal/config"
	"github.com/attache/attache/internal/proxy"
)

// Options tune the daemon itself, as opposed to the services it runs.
type Options struct {
	Logger *slog.Logger
	// Grace is how long open connections may take to finish after a
	// shutdown begins; the rest are then closed. Zero closes them at once.
	Grace time.Duration
	// Resolver resolves backend hostnames; nil uses the system resolver.
	Resolver *net.Resolver
	// Ready, when set, is called once every listener is open, with the
	// bound addresses in service order (tests listen on port 0).
	Ready func([]Bound)
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
func Run(ctx context.Context, cfg *config.Config, opts Options) error {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	for _, w := range cfg.Warnings {
		log.Warn(w)
	}
	listeners, err := openAll(ctx, cfg.Services)
	if err != nil {
		return err
	}
	p := &proxy.Proxy{Logger: log, Resolver: opts.Resolver}
	bound := make([]Bound, len(listeners))
	for i, l := range listeners {
		s := cfg.Services[i]
		bound[i] = Bound{Service: s.Name, Addr: l.Addr()}
		log.Info("forwarding", "service", s.Name, "listen", l.Addr().String(),
			"backends", backendAddrs(s), "from", s.Origin)
	}

	serveCtx, stopServing := context.WithCancel(ctx)
	defer stopServing()
	var (
		wg      sync.WaitGroup
		errMu   sync.Mutex
		serveEr error
	)
	for _, l := range listeners {
		wg.Go(func() {
			if err := p.Serve(serveCtx, l); err != nil {
				errMu.Lock()
				serveEr = errors.Join(serveEr, err)
				errMu.Unlock()
				log.Error("listener stopped; shutting down", "listen", l.Addr().String(), "error", err)
				stopServing()
			}
		})
	}
	if opts.Ready != nil {
		opts.Ready(bound)
	}
	<-serveCtx.Done()
	for _, l := range listeners {
		l.Close()
	}
	wg.Wait()

	if n := p.Active(); n > 0 {
		log.Info("draining open connections", "connections", n, "grace", opts.Grace)
	}
	graceCtx, cancel := context.WithTimeout(context.Background(), opts.Grace)
	defer cancel()
	if forced := p.Shutdown(graceCtx); forced > 0 {
		log.Warn("grace period over; closed remaining connections", "connections", forced)
	}
	log.Info("stopped")
	return serveEr
}

// openAll opens every service's listener, or none: on the first failure it
// closes those already open and reports which service and port failed.
func openAll(ctx context.Context, services []config.Service) ([]*proxy.Listener, error) {
	var out []*proxy.Listener
	for _, s := range services {
		lc := proxy.ListenConfig(s.KeepAlive)
		ln, err := lc.Listen(ctx, listenNetwork(s.Listen), s.Listen)
		if err != nil {
			for _, l := range out {
				l.Close()
			}
			return nil, &ListenError{Service: s, Err: unwrapOp(err)}
		}
		out = append(out, proxy.NewListener(ln, routeFor(s), s.MaxConnections))
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

func routeFor(s config.Service) *proxy.Route {
	return &proxy.Route{
		Service:        s.Name,
		Backends:       backendAddrs(s),
		ConnectTimeout: s.ConnectTimeout,
		IdleTimeout:    s.IdleTimeout,
		KeepAlive:      s.KeepAlive,
	}
}

func backendAddrs(s config.Service) []string {
	out := make([]string, len(s.Backends))
	for i, b := range s.Backends {
		out[i] = b.Addr
	}
	return out
}

func unwrapOp(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		return oe.Err
	}
	return err
}
