package proxy

import (
	"errors"
	"net"
	"net/netip"
	"time"

	"github.com/attache/attache/internal/proxyproto"
)

// AcceptProxy is how a listener behind another load balancer (HAProxy, an
// AWS NLB, another attache) learns the real client address: that balancer
// puts a PROXY protocol header (v1 or v2, told apart by its first bytes)
// at the start of each connection. The header is read before a backend is
// dialled, so the client address it carries is the one balancing
// (source_hash), the logs and a PROXY header sent onward use.
//
// Only peers in Trusted are believed: a header from anywhere else could
// claim any address.
type AcceptProxy struct {
	// Trusted are the address ranges the load balancers connect from. The
	// peers of a Unix socket listener are all trusted: the socket file's
	// permissions decide who may connect.
	Trusted []netip.Prefix
	// Required closes every connection that does not start with a valid
	// header, or comes from a peer outside Trusted. Without it, a header
	// is optional from trusted peers (one that sends none, or nothing
	// before Timeout, is served as a direct client) and is not looked for
	// from other peers, whose bytes pass untouched.
	Required bool
	// Timeout bounds the wait for the header; zero means 5s.
	Timeout time.Duration
}

func (a *AcceptProxy) timeout() time.Duration {
	if a.Timeout <= 0 {
		return 5 * time.Second
	}
	return a.Timeout
}

// trusts reports whether a header from the peer at addr may be believed.
func (a *AcceptProxy) trusts(addr net.Addr) bool {
	switch addr := addr.(type) {
	case *net.UnixAddr:
		return true
	case *net.TCPAddr:
		// An IPv4 client of a dual-stack listener shows as ::ffff:a.b.c.d;
		// the ranges are written in plain IPv4.
		ip := addr.AddrPort().Addr().Unmap()
		for _, p := range a.Trusted {
			if p.Contains(ip) {
				return true
			}
		}
	}
	return false
}

// acceptProxy reads c's PROXY header as ap says, and records the client
// address it gives. It reports false, having logged and counted why, when
// the connection must be closed.
func (p *Proxy) acceptProxy(c *conn, ap *AcceptProxy) bool {
	peer := c.client.RemoteAddr()
	if !ap.trusts(peer) {
		if !ap.Required {
			return true // a direct client; its bytes are its own
		}
		p.rejectProxy(c, "the peer is not in accept_proxy's trusted ranges", nil)
		return false
	}
	client := asSock(c.client) // a loop socket was moved to the net package for this
	_ = client.SetReadDeadline(time.Now().Add(ap.timeout()))
	h, err := proxyproto.Read(client)
	// The copy engine's reads honour the deadline too: clear it.
	_ = client.SetReadDeadline(time.Time{})
	switch {
	case err == nil:
	case errors.Is(err, proxyproto.ErrNoHeader) && !ap.Required:
		return true
	case errors.Is(err, proxyproto.ErrNoHeader):
		p.rejectProxy(c, "missing PROXY protocol header", err)
		return false
	default:
		p.rejectProxy(c, "malformed PROXY protocol header", err)
		return false
	}
	if h.HasAddrs() {
		c.src, c.dst = h.Source, h.Destination
	}
	return true
}

func (p *Proxy) rejectProxy(c *conn, why string, err error) {
	c.listener.Stats.ProxyRejected.Add(1)
	attrs := []any{"service", c.route.Service, "listen", c.listener.Addr().String(), "client", peerName(c.client)}
	if err != nil {
		attrs = append(attrs, "error", err)
	}
	p.logger().Warn(why+"; closing the connection", attrs...)
}

// SendProxyVersion is the PROXY protocol version to send to the backend
// at addr: 1, 2, or 0 for none. Health checks use it to open their
// connections as the proxy does (with a LOCAL header).
func (r *Route) SendProxyVersion(addr string) int {
	if r.SendProxyFor != nil {
		if v, ok := r.SendProxyFor[addr]; ok {
			return v
		}
	}
	return r.SendProxy
}

// sendProxyHeader writes the PROXY header of version v for c's client to a
// freshly dialled backend, before any of the client's bytes. A client
// without an IP address (a Unix socket peer) is sent as UNKNOWN, so the
// backend uses attache's own address.
func sendProxyHeader(bc net.Conn, v int, c *conn) error {
	h := proxyproto.Header{Version: v, Source: c.clientAddr(), Destination: c.localAddr()}
	var buf [proxyproto.MaxV1Len]byte
	_, err := bc.Write(h.Append(buf[:0]))
	return err
}
