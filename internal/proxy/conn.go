package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

var temporaryAcceptErrnos = []error{
	unix.EMFILE, unix.ENFILE, unix.ENOBUFS, unix.ENOMEM, unix.ECONNABORTED, unix.EAGAIN,
}

// conn is one proxied connection. Its sockets are closed by finish, which
// runs once, after the dial failed or both copy goroutines ended; abort may
// be called from any goroutine to end the connection early.
type conn struct {
	client   *net.TCPConn
	backend  *net.TCPConn // set once dialled, under mu
	listener *Listener
	route    *Route
	sem      chan struct{}
	start    time.Time

	mu      sync.Mutex
	reason  string // why it was aborted; "" when it ended by itself
	aborted bool

	activity atomic.Uint64
	pending  atomic.Int32 // copy goroutines still running

	// Written before the copy goroutines start, or by one of them before
	// its pending.Add; read by finish after both.
	backendAddr       string
	stopIdle          func()
	bytesIn, bytesOut int64
	upErr, downErr    error
}

// abort closes both sockets, which unblocks both copy goroutines.
func (c *conn) abort(reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.aborted {
		return
	}
	c.aborted = true
	c.reason = reason
	c.client.Close()
	if c.backend != nil {
		c.backend.Close()
	}
}

func (c *conn) setBackend(b *net.TCPConn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.aborted {
		return false
	}
	c.backend = b
	return true
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
	backend, addr, err := p.dial(ctx, c, r)
	if err != nil {
		c.listener.Stats.Failed.Add(1)
		p.logger().Warn("no backend reachable; closing client connection",
			"service", r.Service, "client", c.client.RemoteAddr().String(), "error", err)
		return
	}
	if !c.setBackend(backend) {
		backend.Close()
		return
	}
	c.backendAddr = addr
	if r.IdleTimeout > 0 {
		c.stopIdle = c.watchIdle(r.IdleTimeout)
	}
	var act *atomic.Uint64
	if r.IdleTimeout > 0 {
		act = &c.activity
	}
	c.pending.Store(2)
	started = true
	go p.clientToBackend(c, act)
	go p.backendToClient(c, act)
}

// finish runs once per connection, after both directions ended (or the dial
// failed): it closes both sockets, counts, logs and releases the slot.
func (p *Proxy) finish(c *conn) {
	c.client.Close()
	if c.backend != nil {
		c.backend.Close()
	}
	if c.stopIdle != nil {
		c.stopIdle()
	}
	st := &c.listener.Stats
	st.BytesIn.Add(c.bytesIn)
	st.BytesOut.Add(c.bytesOut)
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
			"client", c.client.RemoteAddr().String(), "backend", c.backendAddr, "error", err)
	}
	if !log.Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	if reason == "" {
		reason = "eof"
		if err != nil {
			reason = "error"
		}
	}
	log.Debug("connection closed", "service", c.route.Service, "client", c.client.RemoteAddr().String(),
		"backend", c.backendAddr, "duration", time.Since(c.start), "bytes_in", c.bytesIn,
		"bytes_out", c.bytesOut, "reason", reason)
}

// dial tries each backend once, starting at the round-robin cursor, and
// returns the first connection that succeeds. A failed dial moves on to the
// next backend before the client sees anything.
func (p *Proxy) dial(ctx context.Context, c *conn, r *Route) (*net.TCPConn, string, error) {
	n := len(r.Backends)
	if n == 0 {
		return nil, "", errors.New("route has no backends")
	}
	d := r.dialer(p.Resolver)
	first := int(r.next.Add(1)-1) % n
	var errs []error
	for i := range n {
		addr := r.Backends[(first+i)%n]
		bc, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			return bc.(*net.TCPConn), addr, nil
		}
		c.listener.Stats.DialErrors.Add(1)
		errs = append(errs, fmt.Errorf("%s: %w", addr, unwrapOpError(err)))
		p.logger().Debug("dial failed; trying the next backend", "service", r.Service, "backend", addr, "error", err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, "", errors.Join(errs...)
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

func (p *Proxy) clientToBackend(c *conn, act *atomic.Uint64) {
	defer p.copyDone(c)
	n, err := pump(c.backend, c.client, act)
	c.bytesIn, c.upErr = n, err
	if err != nil {
		c.abort("")
		return
	}
	// The client finished sending: tell the backend, keep reading replies.
	if c.pending.Load() == 2 {
		_ = c.backend.CloseWrite()
	}
}

func (p *Proxy) backendToClient(c *conn, act *atomic.Uint64) {
	defer p.copyDone(c)
	n, err := pump(c.client, c.backend, act)
	c.bytesOut, c.downErr = n, err
	if err != nil {
		c.abort("")
		return
	}
	if c.pending.Load() == 2 {
		_ = c.client.CloseWrite()
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
		last    = c.activity.Load()
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
		now := c.activity.Load()
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
