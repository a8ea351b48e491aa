package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// What the proxy needs to carry connections over attache's mutual-TLS links
// (package link): a route may dial its backends through a DialFunc (the link
// client's, for attache:// backends), and the link server may hand an
// authorised stream to the proxy (Handle) so that it is balanced, counted,
// drained and closed like a connection the service's listener accepted.
// Either side may then be a *tls.Conn, which cannot be spliced: its bytes
// are encrypted in user space. copyConn keeps the splice engine for two
// sockets and falls back to a buffered copy otherwise.

// DialFunc opens a connection to a backend, as net.Dialer.DialContext does.
// early, when not empty, are the client's first bytes: the dialer sends
// them with its opening, so that they reach the backend without waiting
// for the answer that the backend is connected (a link stream's first
// frame carries them), and a connection it returns has sent them. A dial
// that fails has delivered none of them to any backend (a link server
// that refuses a stream drops its bytes), so the next backend gets them
// all.
type DialFunc func(ctx context.Context, network, addr string, early []byte) (net.Conn, error)

// loopStream is a connection the event loop carries without a socket: a
// multiplexed link's stream (link.Stream). TryRead and TryWrite never
// wait: when one cannot go on (syscall.EAGAIN; for TryRead also a read
// that emptied the stream) the function given to SetNotify is called once
// it may, from another goroutine, and must not block.
type loopStream interface {
	halfConn
	TryRead(b []byte) (int, error)
	// TryWriteTo is TryRead handing the stream's own buffers to write
	// instead of copying them out (see h2mux.Stream.TryWriteTo).
	TryWriteTo(v [][]byte, write func([][]byte) int) (n int, emptied bool, err error)
	TryWrite(b []byte) (int, error)
	// TryReadFrom is TryWrite having read put the bytes straight into
	// the stream's outgoing frames (see h2mux.Stream.TryReadFrom).
	TryReadFrom(read func([]byte) int) (int, error)
	SetNotify(func())
	CloseRead() error
	Reset() error
}

// halfConn is a connection whose write half can be shut: a socket, or a
// *tls.Conn, whose CloseWrite sends TLS 1.3's close_notify (the peer reads
// EOF and may still write back).
type halfConn interface {
	net.Conn
	CloseWrite() error
}

// dialBackend dials addr with the route's Dial when it has one, bounded by
// the connect timeout as the plain dialer is, else with d.
func (r *Route) dialBackend(ctx context.Context, d *net.Dialer, network, addr string, early []byte) (net.Conn, error) {
	if r.Dial == nil {
		return d.DialContext(ctx, network, addr)
	}
	ctx, cancel := context.WithTimeout(ctx, r.connectTimeout())
	defer cancel()
	c, err := r.Dial(ctx, network, addr, early)
	if err != nil {
		return nil, err
	}
	if _, ok := c.(halfConn); !ok {
		c.Close()
		return nil, errors.New("proxy: the route's dialer returned a connection without CloseWrite")
	}
	return c, nil
}

// readEarly reads what the client has sent already, without waiting, so
// that a route's dialer can send it with its opening (see DialFunc): for
// a client that speaks first (a request on a new connection), the request
// then crosses a link with the stream's opening instead of after the link
// server's answer. It reports false when the client's socket failed (a
// reset): the connection ends there.
func (c *conn) readEarly() bool {
	b := bufPool.Get().(*[]byte)
	var n int
	var rerr error
	switch cs := c.client.(type) {
	case *rawSock:
		if cs.netConn() != nil {
			bufPool.Put(b)
			return true
		}
		// Not on a loop yet: this goroutine owns the non-blocking
		// descriptor.
		n, rerr = rawRead(cs.fd, *b)
	case syscall.Conn:
		raw, err := cs.SyscallConn()
		if err != nil {
			bufPool.Put(b)
			return true
		}
		_ = raw.Read(func(fd uintptr) bool {
			for {
				n, rerr = unix.Read(int(fd), *b)
				if rerr != unix.EINTR {
					return true // one try: never waits
				}
			}
		})
	default:
		bufPool.Put(b)
		return true
	}
	switch {
	case rerr == unix.EAGAIN || n == 0 && rerr == nil:
		// Nothing yet, or an EOF, which the copy reads again: TCP
		// repeats an EOF, where a reset's error is given once.
		bufPool.Put(b)
		return true
	case rerr != nil:
		bufPool.Put(b)
		c.markAborted("client reset before the backend was dialled")
		return false
	}
	c.early, c.earlyN = b, n
	return true
}

// ErrShuttingDown is what a handed-off stream's ready hears when the proxy
// is shutting down (or handing over to a new process) and will not take
// it: the link server then tells its client to open the stream again
// elsewhere.
var ErrShuttingDown = errors.New("shutting down")

// Handle serves one connection accepted elsewhere (the link server's
// authorised streams) as if l had accepted it: l's current route, its
// counters, drain at shutdown, close_on_remove. The connection carries no
// PROXY protocol header whatever the route says, and does not wait for a
// slot of l's max_connections. ready hears the outcome of the dial before
// any byte is copied: nil once a backend is connected (a non-nil return
// drops the connection), or the dial's error. Handle returns once the copy
// has started or the connection is over; the proxy owns client from the
// call on.
func (p *Proxy) Handle(ctx context.Context, l *Listener, client net.Conn, ready func(error) error) {
	hc, ok := client.(halfConn)
	if !ok {
		client.Close()
		_ = ready(errors.New("proxy: connection cannot be half-closed"))
		return
	}
	l.Stats.Accepted.Add(1)
	cn := &conn{client: hc, listener: l, route: l.route.Load(), start: time.Now(), ready: ready}
	if !p.track(cn) {
		_ = ready(ErrShuttingDown)
		client.Close()
		return
	}
	p.handle(ctx, cn)
}

// tellReady passes a dial's outcome to a handed-off connection's ready,
// once; it reports whether to go on. Connections the proxy accepted itself
// have no ready and always go on.
func (c *conn) tellReady(err error) bool {
	if c.ready == nil {
		return true
	}
	ready := c.ready
	c.ready = nil
	return ready(err) == nil && err == nil
}

// copyConn copies src to dst until src's EOF (nil error) or a failure,
// and returns the bytes written. Two sockets go through the splice engine
// (pump); a TLS stream on either side through a buffered copy.
func copyConn(dst, src halfConn, moved *atomic.Int64) (int64, error) {
	if d, ok := dst.(sock); ok {
		if s, ok := src.(sock); ok {
			return pump(d, s, moved)
		}
	}
	if s, ok := src.(sock); ok {
		return copyFromSock(dst, s, moved)
	}
	return copyFromStream(dst, src, moved)
}

// copyFromSock reads a socket into any writer (a TLS stream), taking a
// pooled buffer only when the socket is readable, as the splice engine
// does: an idle direction holds no buffer.
func copyFromSock(dst io.Writer, src sock, moved *atomic.Int64) (int64, error) {
	raw, err := src.SyscallConn()
	if err != nil {
		return 0, err
	}
	var (
		total      int64
		rerr, werr error
	)
	readable := func(fd uintptr) bool {
		for {
			b := bufPool.Get().(*[]byte)
			n, err := unix.Read(int(fd), *b)
			for err == unix.EINTR {
				n, err = unix.Read(int(fd), *b)
			}
			switch {
			case err == unix.EAGAIN:
				bufPool.Put(b)
				return false // park, holding nothing
			case err != nil:
				bufPool.Put(b)
				rerr = err
				return true
			case n == 0:
				bufPool.Put(b)
				return true // EOF
			}
			w, err := dst.Write((*b)[:n])
			bufPool.Put(b)
			total += int64(w)
			moved.Add(int64(w))
			if err != nil {
				werr = err
				return true
			}
		}
	}
	if err := raw.Read(readable); err != nil && rerr == nil && werr == nil {
		return total, err // closed under us (abort, shutdown)
	}
	return total, errors.Join(rerr, werr)
}

// streamBufSize fits one TLS record (16 KiB of plaintext), which is the
// most a *tls.Conn's Read returns at once.
const streamBufSize = 16 << 10

var streamBufPool = sync.Pool{New: func() any { b := make([]byte, streamBufSize); return &b }}

// copyFromStream reads a TLS stream into dst. Unlike a socket, a *tls.Conn
// cannot be polled without reading it (it may hold decrypted bytes already),
// so the buffer is held while the direction waits: the price of a link
// connection, next to the TLS state it keeps anyway.
func copyFromStream(dst io.Writer, src io.Reader, moved *atomic.Int64) (int64, error) {
	if w, ok := src.(readWaiter); ok {
		return copyFromWaiter(dst, w, moved)
	}
	b := streamBufPool.Get().(*[]byte)
	defer streamBufPool.Put(b)
	var total int64
	for {
		n, err := src.Read(*b)
		if n > 0 {
			w, werr := dst.Write((*b)[:n])
			total += int64(w)
			moved.Add(int64(w))
			if werr != nil {
				return total, werr
			}
		}
		if errors.Is(err, io.EOF) {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// readWaiter is a stream that can wait for bytes without a buffer: a
// stream of a multiplexed link (link.Stream), whose bytes wait in the
// session's pooled buffers.
type readWaiter interface {
	io.Reader
	WaitRead() error
}

// copyFromWaiter copies a readWaiter into dst, holding a pooled buffer only
// while there are bytes to move: an idle direction holds none.
func copyFromWaiter(dst io.Writer, src readWaiter, moved *atomic.Int64) (int64, error) {
	var total int64
	for {
		if err := src.WaitRead(); err != nil {
			if errors.Is(err, io.EOF) {
				return total, nil
			}
			return total, err
		}
		b := bufPool.Get().(*[]byte)
		n, err := src.Read(*b)
		if n > 0 {
			w, werr := dst.Write((*b)[:n])
			total += int64(w)
			moved.Add(int64(w))
			if werr != nil {
				bufPool.Put(b)
				return total, werr
			}
		}
		bufPool.Put(b)
		if errors.Is(err, io.EOF) {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}
