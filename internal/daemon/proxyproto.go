package daemon

import (
	"context"
	"net"

	"github.com/attache/attache/internal/backend"
	"github.com/attache/attache/internal/config"
	"github.com/attache/attache/internal/health"
	"github.com/attache/attache/internal/proxy"
	"github.com/attache/attache/internal/proxyproto"
)

// proxyProtocol is what a service's route needs of its PROXY protocol
// settings: how its listener reads headers, and which version each backend
// is sent. sendFor lists only the fixed backends that override the
// service's version; nil when none does, which keeps the per-dial lookup
// to a nil check.
func proxyProtocol(s config.Service) (accept *proxy.AcceptProxy, send int, sendFor map[string]int) {
	if a := s.AcceptProxy; a != nil {
		accept = &proxy.AcceptProxy{Trusted: a.Trusted, Required: a.Required, Timeout: a.Timeout}
	}
	send = max(s.SendProxy, 0)
	for _, b := range s.Backends {
		if b.Discover == nil && b.SendProxy != 0 {
			if sendFor == nil {
				sendFor = map[string]int{}
			}
			sendFor[b.Addr] = s.SendProxyVersion(b)
		}
	}
	return accept, send, sendFor
}

// healthDial opens health check connections the way the proxy opens its
// own: a backend that is sent PROXY headers gets one on its checks too, a
// LOCAL one (v1: UNKNOWN), which tells it the connection is attache's own
// (HAProxy's check-send-proxy). Without it, a backend that requires the
// header would fail every send/expect check. The version is looked up on
// the listener's current route at each check, so a reload that changes
// send_proxy applies at once.
func healthDial(l *proxy.Listener) health.DialFunc {
	var d net.Dialer
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, address)
		if err != nil {
			return nil, err
		}
		addr := address
		if network == "unix" {
			addr = backend.UnixScheme + address
		}
		if v := l.Route().SendProxyVersion(addr); v != 0 {
			if _, err := c.Write(proxyproto.Header{Version: v, Local: true}.Append(nil)); err != nil {
				c.Close()
				return nil, err
			}
		}
		return c, nil
	}
}
