package daemon

import (
	"context"
	"errors"
	"net"
	"slices"

	"github.com/attache/attache/internal/admin"
	"github.com/attache/attache/internal/backend"
	"github.com/attache/attache/internal/config"
	"github.com/attache/attache/internal/health"
	"github.com/attache/attache/internal/listen"
	"github.com/attache/attache/internal/proxy"
)

// tcpProtocol is what TCP services do their own way (see service.go): the
// proxy's accept loop, TCP or send/expect checks dialled the way the data
// path dials (PROXY header, link), routes with PROXY protocol and a link
// dialer, and connections closed when their backend fails or leaves
// (close_on_remove).
type tcpProtocol struct{}

// tcpProto is the TCP protocol of every TCP service.
var tcpProto protocol[*proxy.Listener] = tcpProtocol{}

// open opens every service's listener, or none: on the first failure it
// closes those already open and reports which service and port failed. A
// socket inherited in an upgrade for the same address is taken instead of
// opening one (in may be nil).
func (tcpProtocol) open(ctx context.Context, in *listen.Inherited, services []config.Service) ([]*proxy.Listener, error) {
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

// serve runs l's accept loop. A TCP listener that dies stops the daemon:
// an ambassador that silently stops forwarding one of its ports is worse
// than one that exits and gets restarted.
func (tcpProtocol) serve(d *daemon, l *proxy.Listener) {
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

func (tcpProtocol) checker(d *daemon, sv *served) health.Checker {
	hc := sv.svc.HealthCheck
	dial := healthDial(sv.l) // a LOCAL PROXY header for backends sent one
	if ld := d.linkDial(sv.svc); ld != nil {
		// Across the link: passes once the link server has authorised
		// this host and connected to its own backend (see package link).
		dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			return ld(ctx, network, addr, nil)
		}
	}
	if hc.Send != "" || hc.Expect != "" {
		return health.SendExpect{Send: []byte(hc.Send), Expect: []byte(hc.Expect), Dial: dial}
	}
	return health.TCP{Dial: dial}
}

// onHealth closes the connections to a backend that failed its check,
// when the service asks for it (close_on_remove).
func (tcpProtocol) onHealth(d *daemon, sv *served) func(addr string, healthy bool) {
	if !sv.svc.CloseOnRemove {
		return nil
	}
	l, service := sv.l, sv.svc.Name
	return func(addr string, healthy bool) {
		if healthy {
			return
		}
		if n := d.proxy.CloseBackend(l, addr, "backend failed its health check"); n > 0 {
			d.log.Info("closed connections to a failed backend", "service", service, "backend", addr, "connections", n)
		}
	}
}

func (tcpProtocol) publish(d *daemon, sv *served, prev *backend.Set) {
	s, set := sv.svc, sv.set
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
		// A multiplexed link's streams go on the event loops.
		DialLoopStreams: d.link != nil && !d.link.client.PerConnection,
	})
	if !s.CloseOnRemove || prev == nil {
		return
	}
	// Synchronous: CloseBackend only closes sockets, and a goroutine here
	// could be started by the discovery merger while Run is already
	// waiting for the daemon's goroutines at shutdown.
	for _, addr := range removedAddrs(prev, set) {
		if _, drained := d.drained[s.Name][addr]; drained {
			continue // draining lets open connections finish
		}
		if n := d.proxy.CloseBackend(sv.l, addr, "backend removed"); n > 0 {
			d.log.Info("closed connections to a removed backend", "service", s.Name, "backend", addr, "connections", n)
		}
	}
}

// counters reads the listeners' statistics, and the bytes of their open
// connections so far in one pass.
func (tcpProtocol) counters(d *daemon, svs []*served, views []admin.Service) {
	ls := make([]*proxy.Listener, len(svs))
	for i, sv := range svs {
		ls[i] = sv.l
	}
	moved := d.proxy.ListenersBytes(ls)
	for i, sv := range svs {
		st := &sv.l.Stats
		views[i].Connections = admin.Counters{
			Accepted: st.Accepted.Load(), Active: st.Active.Load(), Failed: st.Failed.Load(),
			NoBackend: st.NoBackend.Load(), Retried: st.Retried.Load(), DialErrors: st.DialErrors.Load(),
			BytesIn: moved[sv.l].In, BytesOut: moved[sv.l].Out, Limited: st.Limited.Load(),
			ProxyRejected: st.ProxyRejected.Load(),
		}
	}
}

func (tcpProtocol) removedNote() string {
	return "reload: service removed; its open connections carry on"
}

// removedAddrs is the addresses of prev that cur no longer has.
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
