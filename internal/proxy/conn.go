package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/attache/attache/internal/backend"
)

var temporaryAcceptErrnos = []error{
	unix.EMFILE, unix.ENFILE, unix.ENOBUFS, unix.ENOMEM, unix.ECONNABORTED, unix.EAGAIN,
}

// conn is one proxied connection. Its sockets are closed by finish, which
// runs once, after the dial failed or both copy goroutines ended; abort may
// be called from any goroutine to end the connection early.
type conn struct {
	client   halfConn         // a socket, or a link's TLS stream (see link.go)
	backend  halfConn         // set once dialled, under mu
	target   *backend.Backend // the backend dialled, under mu; its Active count is ours
	listener *Listener
	route    *Route
	sem      chan struct{}
	start    time.Time
	// src and dst are the client's address and the one it connected to,
	// as a PROXY protocol header gave them; zero when there was none
	// (then the socket's own addresses stand).
	src, dst netip.AddrPort
	// ready, for a stream the link server handed over, hears the dial's
	// outcome before the copy starts (see Handle).
	ready func(error) error
	// early holds bytes a loop read from the client before it handed the
	// connection to handle ((*early)[:earlyN]): handle sends them first.
	early      *[]byte
	earlyN     int
	bytesEarly int64 // of those, written to the backend (in bytesIn too)
	// earlySent: the route's dialer sent the early bytes with its
	// opening (a link stream's first frame), so handle does not.
	earlySent bool
	// budget is the dial retry budget (see dialBudget), which a loop
	// that dialled first hands over with the connection.
	budget    backend.DialBudget
	budgetSet bool

	mu      sync.Mutex
	reason  string // why it was aborted; "" when it ended by itself
	aborted bool
	// id numbers the connection for the admin API (set by track).
	id uint64

	// movedIn and movedOut are the bytes moved so far each way, added
	// chunk by chunk by the copy loops: the admin API's live view, and
	// the idle timer's sign of life. Each sits with its connection, so
	// the adds never contend across connections.
	movedIn, movedOut atomic.Int64
	pending           atomic.Int32 // copy goroutines still running
	// backendDone: the backend ended its side and the client was told
	// (its write side shut); only the client's side may still be open.
	backendDone atomic.Bool
	// clientShut and backendShut are set just before the copy shuts that
	// socket's write half: its FIN is ours (see resetAtEOF).
	clientShut, backendShut atomic.Bool

	// Written before the copy goroutines start, or by one of them before
	// its pending.Add; read by finish after both.
	backendAddr       string
	stopIdle          func()
	bytesIn, bytesOut int64
	upErr, downErr    error
}

// abort closes both sockets, which unblocks both copy goroutines.
func (c *conn) abort(reason string) { c.end(reason, false) }

// fail ends c after a direction failed (a peer reset, a write error):
// bytes were lost on the way, so both peers get a reset (RST), never a
// FIN or a TLS close_notify that would pass a cut stream off as a
// complete one. A client's reset reaches the backend as a reset, and
// back. (A Unix socket has no reset: its peer reads an EOF.)
func (c *conn) fail() { c.end("", true) }

func (c *conn) end(reason string, reset bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.aborted {
		return
	}
	c.aborted = true
	c.reason = reason
	// Expire both sockets before closing either. A copy goroutine blocked
	// writing to one socket does so inside its read of the other (the
	// RawConn.Read callback), and Close waits for that read to return:
	// closing the client while its bytes wait for a backend that stopped
	// reading would block for good. An expired deadline returns every
	// blocked call at once.
	expire(c.client)
	if c.backend != nil {
		expire(c.backend)
	}
	closeConn(c.client, reset)
	if c.backend != nil {
		closeConn(c.backend, reset)
	}
}

// expire sets a deadline in the past on h, which wakes its blocked calls.
func expire(h halfConn) { _ = h.SetDeadline(time.Unix(1, 0)) }

// closeConn closes h, with a reset for its peer when reset is set.
func closeConn(h halfConn, reset bool) {
	if !reset {
		h.Close()
		return
	}
	switch s := h.(type) {
	case *rawSock:
		s.closeWithReset()
	case *net.TCPConn:
		_ = s.SetLinger(0)
		s.Close()
	case netConner:
		// A TLS stream (a *tls.Conn, a per-connection link's stream):
		// reset under it, so that no close_notify goes first (the peer
		// would read it as the stream's clean end).
		if tc, ok := s.NetConn().(halfConn); ok {
			closeConn(tc, true)
		}
		h.Close()
	case resetter:
		_ = s.Reset() // a stream of a multiplexed link: its peer sees a reset
	case lingerer:
		_ = s.SetLinger(0) // a TCP socket wrapped for a TLS stream
		h.Close()
	default:
		h.Close()
	}
}

// netConner is a stream over a socket of its own: a *tls.Conn, or a type
// embedding one (a per-connection link's stream).
type netConner interface{ NetConn() net.Conn }

// lingerer is a TCP socket, possibly wrapped, that a zero linger makes
// close with a reset.
type lingerer interface{ SetLinger(sec int) error }

// resetter is a connection that can end with a reset rather than an EOF:
// a stream of a multiplexed link (link.Stream).
type resetter interface{ Reset() error }

// markAborted records why c ends, unless it was aborted already, without
// closing anything (the caller closes).
func (c *conn) markAborted(reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.aborted {
		c.aborted, c.reason = true, reason
	}
}

func (c *conn) setBackend(b halfConn, target *backend.Backend) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.aborted {
		return false
	}
	c.backend, c.target = b, target
	return true
}

func (c *conn) backendIs(addr string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.target != nil && c.target.Addr == addr
}

// handle dials the backend and starts the two copy goroutines, then
// returns: its stack, grown by the dial, is released, so an idle connection
// holds only the two small stacks of its parked copy goroutines. The last
// copy goroutine to finish calls finish.
func (p *Proxy) handle(ctx context.Context, c *conn) {
	started := false
	defer func() {
		if v := recover(); v != nil {
			p.logger().Error("panic in connection handler", "service", c.route.Service, "panic", v)
			c.abort("panic")
		}
		if !started {
			p.finish(c)
		}
	}()
	c.listener.Stats.Active.Add(1)
	r := c.route
	if r.AcceptProxy != nil && c.ready == nil {
		// The header is read with a deadline, through the net package.
		if cs, ok := c.client.(*rawSock); ok {
			if _, err := cs.asNet(); err != nil {
				p.logger().Warn("closing client connection", "service", r.Service, "client", c.clientName(), "error", err)
				return
			}
		}
		if !p.acceptProxy(c, r.AcceptProxy) {
			return
		}
	}
	if r.Dial != nil && c.early == nil && c.ready == nil {
		// For the dialer to send with its opening; after a PROXY
		// header instead (dialOne decides), like a loop's early bytes.
		if !c.readEarly() {
			return // the client reset, or its socket failed
		}
	}
	bc, target, err := p.dial(ctx, c, r)
	if err != nil {
		c.tellReady(err)
		p.unreachable(c, err)
		return
	}
	if !c.setBackend(bc, target) {
		bc.Close()
		target.Release()
		c.tellReady(ErrShuttingDown)
		return
	}
	if !c.tellReady(nil) {
		// The link client did not hear that the backend connected
		// (its stream or connection broke): the backend hears a reset,
		// not the clean end of an empty connection.
		c.fail()
		return // finish closes both
	}
	c.backendAddr = target.Addr
	if c.early != nil {
		// Sent already when the route's dialer took them.
		n, err := c.earlyN, error(nil)
		if !c.earlySent {
			n, err = bc.Write((*c.early)[:c.earlyN])
		}
		c.movedIn.Add(int64(n))
		c.bytesEarly = int64(n)
		bufPool.Put(c.early)
		c.early = nil
		if err != nil {
			c.upErr, c.bytesIn = err, c.bytesEarly
			c.fail() // the client's first bytes were lost
			p.logger().Info("connection ended with an error", "service", r.Service,
				"client", c.clientName(), "backend", c.backendAddr, "error", err)
			return
		}
	}
	if r.IdleTimeout > 0 {
		c.stopIdle = c.watchIdle(r.IdleTimeout)
	}
	if vs, ok := c.client.(loopStream); ok {
		if bs, ok := bc.(*rawSock); ok {
			// A link server's stream to a socket the loop dialled.
			started = p.adoptStream(c, bs.lp, bs, vs, true)
			return
		}
	}
	if cs, ok := c.client.(*rawSock); ok && cs.netConn() == nil {
		if bs, ok := bc.(*rawSock); ok {
			// Both sockets are the loop's: it carries the connection.
			started = p.adopt(c, bs.lp, cs, bs)
			return
		}
		if vs, ok := bc.(loopStream); ok {
			if lp := p.loopFor(c); lp != nil {
				// A multiplexed link's stream: the loop carries it
				// too, with no goroutine while it is idle.
				started = p.adoptStream(c, lp, cs, vs, false)
				return
			}
		}
		// The backend is a Unix socket or a link stream: the copy
		// goroutines carry it, and the client socket moves to them.
		if _, err := cs.asNet(); err != nil {
			p.logger().Warn("closing client connection", "service", r.Service, "client", c.clientName(), "error", err)
			return
		}
	}
	c.pending.Store(2)
	started = true
	go p.clientToBackend(c)
	go p.backendToClient(c)
}

// finish runs once per connection, after both directions ended (or the dial
// failed): it closes both sockets, counts, logs and releases the slot.
func (p *Proxy) finish(c *conn) {
	c.client.Close()
	if c.backend != nil {
		c.backend.Close()
		c.target.Release()
	}
	if c.stopIdle != nil {
		c.stopIdle()
	}
	st := &c.listener.Stats
	st.Active.Add(-1)
	if c.sem != nil {
		<-c.sem
	}
	if c.backend != nil {
		p.logClose(c)
	}
	p.untrack(c)
}

func (p *Proxy) logClose(c *conn) {
	c.mu.Lock()
	reason := c.reason
	c.mu.Unlock()
	err := errors.Join(c.upErr, c.downErr)
	log := p.logger()
	if err != nil && !isExpectedClose(err) && reason == "" {
		log.Info("connection ended with an error", "service", c.route.Service,
			"client", c.clientName(), "backend", c.backendAddr, "error", err)
	}
	// The access log line: at info on the access logger when there is one,
	// else at debug on the main one.
	level, out := slog.LevelDebug, log
	if p.AccessLog != nil {
		level, out = slog.LevelInfo, p.AccessLog
	}
	if !out.Enabled(context.Background(), level) {
		return
	}
	if reason == "" {
		reason = "eof"
		if err != nil {
			reason = "error"
		}
	}
	attrs := []any{"service", c.route.Service, "client", c.clientName(),
		"backend", c.backendAddr, "duration", time.Since(c.start), "bytes_in", c.bytesIn,
		"bytes_out", c.bytesOut, "reason", reason}
	if c.src.IsValid() {
		// The client came through a load balancer: name it too.
		attrs = append(attrs, "via", peerName(c.client))
	}
	out.Log(context.Background(), level, "connection closed", attrs...)
}

// clientAddr is the client's address for source_hash and PROXY headers:
// the one a PROXY header gave, else the socket's peer; the zero value for
// a Unix socket peer.
func (c *conn) clientAddr() netip.AddrPort {
	if c.src.IsValid() {
		return c.src
	}
	return tcpAddrPort(c.client.RemoteAddr())
}

// localAddr is the address the client connected to, as clientAddr.
func (c *conn) localAddr() netip.AddrPort {
	if c.dst.IsValid() {
		return c.dst
	}
	return tcpAddrPort(c.client.LocalAddr())
}

func tcpAddrPort(a net.Addr) netip.AddrPort {
	if a, ok := a.(*net.TCPAddr); ok {
		return a.AddrPort()
	}
	return netip.AddrPort{}
}

// clientName is the client as logs show it.
func (c *conn) clientName() string {
	if c.src.IsValid() {
		return c.src.String()
	}
	return peerName(c.client)
}

// peerName is the socket's peer as logs show it; a Unix socket's peer has
// no address, so the socket's path stands in.
func peerName(c net.Conn) string {
	if _, ok := c.RemoteAddr().(*net.UnixAddr); ok {
		return backend.UnixScheme + c.LocalAddr().String()
	}
	return c.RemoteAddr().String()
}

func unwrapOpError(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		return oe.Err
	}
	return err
}

// The two directions propagate half-close: when one side reaches EOF, the
// other side's write half is shut down and the opposite direction carries on
// until it ends too. An error in either direction aborts both, since a reset
// stream cannot be finished. The direction that ends last skips the
// shutdown(2): finish closes both sockets right after, and close sends the
// same FIN (nothing is left unread on a socket that reached EOF).

// errResetAtEOF is a direction's error when its source's EOF stood for a
// reset (resetAtEOF).
var errResetAtEOF = fmt.Errorf("the peer reset the connection (its error went to a write): %w", unix.ECONNRESET)

// resetAtEOF reports whether the EOF just read from h stands for a reset.
// TCP reports a reset's error to one system call only; on the goroutine
// engine that is often the other direction's write to the same socket,
// running at the same moment, and this direction's read then sees a plain
// EOF. Passed on as a FIN, that would deliver a cut stream as a complete
// one. The socket's TCP state tells: CLOSE after a reset, CLOSE_WAIT after
// a FIN, unless this proxy sent its own FIN too (shut: the other
// direction had ended), after which CLOSE is a clean end. (The loops need
// no check: one goroutine serves both directions, and a failed write
// ends the pair before the read.)
//
// shut is read after the state, not before: the other direction may
// send its FIN in between, and on the loopback the peer's ACK moves the
// socket to CLOSE at once; read first, shut was still false and that
// clean end passed for a reset (the client lost the backend's reply: about
// 1 connection in 3000, under load, whose backend replies and closes while
// the client half-closes; TestReplyThenCloseIsNotAReset).
func resetAtEOF(h halfConn, shut *atomic.Bool) bool {
	return sawReset(h) && !shut.Load()
}

// sawReset reports whether h's socket is in state CLOSE, or closed under
// the caller.
func sawReset(h halfConn) bool {
	if rs, ok := h.(*rawSock); ok {
		nc := rs.netConn() // a raw descriptor may be reused once closed
		if nc == nil {
			return false
		}
		h = nc
	}
	sc, ok := h.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	closed := false
	if err := raw.Control(func(f uintptr) { closed = tcpStateClosed(int(f)) }); err != nil {
		// Closed under this direction: the other one failed (its
		// write took the reset's error) or the connection was aborted;
		// either way no FIN may follow.
		return true
	}
	return closed
}

// tcpStateClosed reports whether the TCP socket fd is in state CLOSE.
func tcpStateClosed(fd int) bool {
	info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	return err == nil && info.State == unix.BPF_TCP_CLOSE
}

func (p *Proxy) clientToBackend(c *conn) {
	defer p.copyDone(c)
	n, err := copyConn(asSock(c.backend), asSock(c.client), &c.movedIn)
	if err == nil && resetAtEOF(asSock(c.client), &c.clientShut) {
		err = errResetAtEOF
	}
	c.bytesIn, c.upErr = n+c.bytesEarly, err
	if err != nil {
		c.fail()
		return
	}
	// The client finished sending: tell the backend, keep reading replies.
	if c.pending.Load() == 2 {
		c.backendShut.Store(true)
		_ = asSock(c.backend).CloseWrite()
	}
}

func (p *Proxy) backendToClient(c *conn) {
	defer p.copyDone(c)
	n, err := copyConn(asSock(c.client), asSock(c.backend), &c.movedOut)
	if err == nil && resetAtEOF(asSock(c.backend), &c.backendShut) {
		err = errResetAtEOF
	}
	c.bytesOut, c.downErr = n, err
	if err != nil {
		c.fail()
		return
	}
	if c.pending.Load() == 2 {
		c.clientShut.Store(true)
		_ = asSock(c.client).CloseWrite()
		c.backendDown(p)
	}
}

// backendDown records that the backend ended its side of c, and during a
// shutdown ends c (endDrained): a drain waits for exchanges in flight, and
// this one's answer is complete.
func (c *conn) backendDown(p *Proxy) {
	c.backendDone.Store(true)
	if p.draining.Load() {
		c.endDrained()
	}
}

// endDrained ends a connection during a drain once its backend has ended
// its side: the client's read side is shut, so the proxy reads an EOF
// from it and the connection finishes as if the client had closed,
// instead of holding the shutdown for its whole grace period while an
// idle client (a redis-cli, a pool) keeps its side open. What the client
// sends from then on is not read.
func (c *conn) endDrained() { shutRead(asSock(c.client)) }

// shutRead shuts h's read side: its blocked and later reads return EOF.
// A TLS stream's is its socket's.
func shutRead(h net.Conn) {
	switch s := h.(type) {
	case *rawSock:
		s.shutdownRead()
	case netConner:
		shutRead(s.NetConn())
	case interface{ CloseRead() error }:
		_ = s.CloseRead() // a *net.TCPConn; a link stream: its reads return EOF from now on
	}
}

func (p *Proxy) copyDone(c *conn) {
	if v := recover(); v != nil {
		p.logger().Error("panic in copy", "service", c.route.Service, "panic", v)
		c.abort("panic")
	}
	if c.pending.Add(-1) == 0 {
		p.finish(c)
	}
}

// watchIdle closes the connection once no byte has moved for timeout. It
// checks a counter four times per period instead of resetting a deadline on
// every read, so the data path pays one atomic add per chunk; a connection
// is closed between 1 and 1.25 times the timeout after its last byte.
func (c *conn) watchIdle(timeout time.Duration) (stop func()) {
	const checks = 4
	tick := timeout / checks
	var (
		mu      sync.Mutex
		last    = c.movedIn.Load() + c.movedOut.Load()
		still   int
		t       *time.Timer
		stopped bool
	)
	check := func() {
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return
		}
		now := c.movedIn.Load() + c.movedOut.Load()
		if now != last {
			last, still = now, 0
		} else if still++; still >= checks {
			c.abort("idle timeout")
			return
		}
		t.Reset(tick)
	}
	mu.Lock()
	t = time.AfterFunc(tick, check)
	mu.Unlock()
	return func() {
		mu.Lock()
		stopped = true
		t.Stop()
		mu.Unlock()
	}
}

// moved returns the bytes moved so far, client to backend and back.
func (c *conn) moved() (in, out int64) { return c.movedIn.Load(), c.movedOut.Load() }
