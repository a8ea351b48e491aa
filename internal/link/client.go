package link

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/attache/attache/internal/loophint"
)

// DefaultSessionCacheSize is how many TLS sessions a Client keeps for
// resumption, across every link server and service it dials.
const DefaultSessionCacheSize = 1024

// Client dials link servers. The zero value is not usable: Identity is
// required. It is safe for concurrent use.
type Client struct {
	Identity *Identity
	Stats    *Stats
	// KeepAlive is the TCP keepalive period of the link connections; zero
	// means 30s, negative disables it.
	KeepAlive time.Duration
	// Timeout bounds a dial that ctx does not bound (connect, handshake and
	// the server's status byte); zero means 10s.
	Timeout time.Duration
	// PerConnection gives every stream a TLS connection of its own
	// (attache/1) instead of a stream on a pooled connection (attache/h2).
	PerConnection bool
	// Sessions is how many pooled connections a link server gets at
	// least once it carries streams (more open as streams grow); zero
	// means one per CPU. At most 4.
	Sessions int
	// Reader, when set, reads the pooled connections on event loops (the
	// proxy's) instead of a goroutine per connection; a dial whose
	// context names a loop (loophint.With) prefers a connection that
	// loop reads.
	Reader loophint.Reader

	once  sync.Once
	cache tls.ClientSessionCache
	pool  pool
}

// DialFunc is the client's dialer for one remote service, in the shape the
// proxy and the health checks take: addr is the link server's host:port.
func (c *Client) DialFunc(service string) func(ctx context.Context, network, addr string, early []byte) (net.Conn, error) {
	return func(ctx context.Context, _ string, addr string, early []byte) (net.Conn, error) {
		return c.DialEarly(ctx, service, addr, early)
	}
}

// Dial opens a stream to service through the link server at addr. It
// returns once the server has authorised this host and connected to the
// service's backend (see the package doc): a *Stream on a pooled
// connection, or a *tls.Conn of its own with PerConnection.
func (c *Client) Dial(ctx context.Context, service, addr string) (net.Conn, error) {
	return c.DialEarly(ctx, service, addr, nil)
}

// DialEarly is Dial, sending early (the client's first bytes) with the
// stream's opening: they reach the service's backend as soon as the link
// server has connected to it, without waiting for its answer to cross
// back. A dial that fails delivered none of them (the server drops the
// bytes of a stream it refuses).
func (c *Client) DialEarly(ctx context.Context, service, addr string, early []byte) (net.Conn, error) {
	var (
		conn net.Conn
		err  error
	)
	if c.PerConnection {
		conn, err = c.dialPerConn(ctx, service, addr, early)
		var refused *RefusedError
		if errors.As(err, &refused) && refused.Status == statusGoingAway {
			// That process is stopping or handing over: a new
			// connection reaches its successor.
			conn, err = c.dialPerConn(ctx, service, addr, early)
		}
	} else {
		conn, err = c.dialStream(ctx, service, addr, early)
	}
	if err != nil {
		c.Stats.dialError()
		return nil, err
	}
	return conn, nil
}

// dialTimeout bounds ctx with the client's Timeout unless it has a
// deadline already.
func (c *Client) dialTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	return context.WithTimeout(ctx, timeout)
}

// handshake connects to the link server at addr and runs the TLS handshake
// offering protos, with service in the SNI.
func (c *Client) handshake(ctx context.Context, service, addr string, protos []string) (*tls.Conn, error) {
	if c.Identity == nil {
		return nil, ErrNoIdentity
	}
	c.once.Do(func() { c.cache = tls.NewLRUClientSessionCache(DefaultSessionCacheSize) })
	keepAlive := c.KeepAlive
	if keepAlive == 0 {
		keepAlive = 30 * time.Second
	}
	d := net.Dialer{KeepAlive: keepAlive}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	id := c.Identity
	pool := id.Pool()
	tc := tls.Client(wrapSocket(raw), &tls.Config{
		MinVersion: tls.VersionTLS13,
		ServerName: ServerName(service),
		NextProtos: protos,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return id.Certificate(), nil
		},
		// The server's name is not checked, only that the fleet's CA
		// signed it: link servers are found by discovery, by address,
		// and any member of the fleet may serve.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("link server sent no certificate")
			}
			if err := verifyPeer(cs.PeerCertificates, pool, x509.ExtKeyUsageServerAuth); err != nil {
				return fmt.Errorf("link server certificate refused: %w", err)
			}
			return nil
		},
		// The cache is keyed by address as well as by the SNI: a ticket
		// is only good with the server that issued it; and by the
		// certificate's generation: a resumed session carries the
		// certificate of its first handshake, so after a rotation the
		// server must see the new one.
		ClientSessionCache: addrCache{c.cache, fmt.Sprintf("%s|%d", addr, id.Generation())},
	})
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("link handshake with %s: %w", addr, err)
	}
	return tc, nil
}

// dialPerConn opens a link connection of its own for one stream
// (attache/1): a TLS handshake, then the server's status byte.
func (c *Client) dialPerConn(ctx context.Context, service, addr string, early []byte) (*tlsStream, error) {
	ctx, cancel := c.dialTimeout(ctx)
	defer cancel()
	tc, err := c.handshake(ctx, service, addr, []string{ALPN})
	if err != nil {
		return nil, err
	}
	if len(early) > 0 {
		// Sent before the status byte is read: the server reads the
		// stream only once it has connected to the backend, and drops
		// it with the connection when it refuses.
		stop := context.AfterFunc(ctx, func() { _ = tc.SetWriteDeadline(time.Unix(1, 0)) })
		_, err := tc.Write(early)
		stop()
		if err != nil {
			tc.Close()
			return nil, fmt.Errorf("link server %s: sending the first bytes for service %q: %w", addr, service, err)
		}
	}
	if err := readStatus(ctx, tc, service, addr); err != nil {
		tc.Close()
		return nil, err
	}
	c.Stats.handshake(false, tc.ConnectionState().DidResume)
	return newTLSStream(tc), nil
}

// readStatus reads the link server's answer to a stream: nil when it has
// connected the stream to the service's backend, a *RefusedError when it
// refused, or why no answer came.
func readStatus(ctx context.Context, c net.Conn, service, addr string) error {
	// ctx bounds the read: its end expires the read deadline.
	stop := context.AfterFunc(ctx, func() { _ = c.SetReadDeadline(time.Unix(1, 0)) })
	var status [1]byte
	_, err := io.ReadFull(c, status[:])
	stopped := stop()
	if err != nil {
		if !stopped || ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", err, context.Cause(ctx))
		}
		return fmt.Errorf("link server %s did not answer for service %q: %w", addr, service, err)
	}
	_ = c.SetReadDeadline(time.Time{}) // in case ctx ended just after the read
	if status[0] != statusOK {
		return &RefusedError{Service: service, Addr: addr, Status: status[0]}
	}
	return nil
}

// addrCache scopes a session cache to one server address.
type addrCache struct {
	c    tls.ClientSessionCache
	addr string
}

func (a addrCache) Get(key string) (*tls.ClientSessionState, bool) {
	return a.c.Get(a.addr + "|" + key)
}
func (a addrCache) Put(key string, cs *tls.ClientSessionState) { a.c.Put(a.addr+"|"+key, cs) }
