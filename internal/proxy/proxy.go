package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/attache/attache/internal/backend"
	"github.com/attache/attache/internal/balance"
)

// Route is what a listener forwards to. A Route is immutable once served,
// apart from its counters; a new one is swapped in whole (Listener.SetRoute),
// and connections in flight keep the Route they started with.
type Route struct {
	// Service names the route in logs.
	Service string
	// Backends is the set Policy picks from. A hostname in an address is
	// resolved at each dial.
	Backends *backend.Set
	// Policy chooses a backend for each connection; nil is round robin.
	Policy balance.Policy
	// Retries is how many further dials a connection may make, each to the
	// backend Policy picks next, after a failed one.
	Retries int
	// RetryTimeout bounds the whole search for a backend, dials and waits
	// included: when no backend is usable (none discovered yet, or all
	// down), a new connection waits up to this long for one to appear
	// before it is closed. Zero means ConnectTimeout.
	RetryTimeout time.Duration
	// Passive, when true, ejects a backend whose dial failed for a back-off
	// (see backend.Backend.ReportFailure), so the next connections avoid it.
	Passive bool
	// ConnectTimeout bounds one dial to one backend; zero means 5s.
	ConnectTimeout time.Duration
	// IdleTimeout closes a connection with no bytes moving either way for
	// this long; zero or negative disables it.
	IdleTimeout time.Duration
	// KeepAlive is the TCP keepalive period for the backend side (idle time
	// and probe interval); zero means 30s, negative disables it. The client
	// side takes it from the listener (see ListenConfig).
	KeepAlive time.Duration
	// Dial, when set, opens connections to backends instead of a TCP
	// dialer: the link client's mutual-TLS dialer for attache:// backends
	// (see link.go). Each dial is bounded by ConnectTimeout.
	Dial DialFunc
	// DialLoopStreams says that Dial returns streams the event loops carry
	// (a multiplexed link's, see loopStream): the listener then accepts on
	// the loops, and a connection holds no goroutine while it is idle.
	DialLoopStreams bool
	// AcceptProxy, when set, makes the listener read a PROXY protocol
	// header at the start of each connection (see AcceptProxy).
	AcceptProxy *AcceptProxy
	// SendProxy is the PROXY protocol version (1 or 2) written to each
	// backend before the client's bytes; 0 sends none. SendProxyFor
	// overrides it by backend address (0 there: none for that one).
	SendProxy    int
	SendProxyFor map[string]int

	defaultPolicy balance.RoundRobin

	// The Dialer (and its keepalive Control closure) is built once per
	// route, not once per connection.
	dialerOnce sync.Once
	dialerVal  net.Dialer
}

// NewRoute is a Route to fixed addresses, round robin, with passive health
// and one retry per other backend, as the foundation's ambassador did.
func NewRoute(service string, addrs ...string) *Route {
	return &Route{Service: service, Backends: Addrs(addrs...), Retries: max(len(addrs)-1, 0), Passive: true}
}

// Addrs is a Set of fresh backends at addrs (no shared health state).
func Addrs(addrs ...string) *backend.Set {
	bs := make([]*backend.Backend, len(addrs))
	for i, a := range addrs {
		bs[i] = backend.New(backend.Endpoint{Addr: a})
	}
	return backend.NewSet(bs...)
}

func (r *Route) policy() balance.Policy {
	if r.Policy == nil {
		return &r.defaultPolicy
	}
	return r.Policy
}

func (r *Route) retryTimeout() time.Duration {
	if r.RetryTimeout <= 0 {
		return r.connectTimeout()
	}
	return r.RetryTimeout
}

func (r *Route) connectTimeout() time.Duration {
	if r.ConnectTimeout <= 0 {
		return 5 * time.Second
	}
	return r.ConnectTimeout
}

// Stats are a listener's counters, safe to read at any time.
type Stats struct {
	Accepted   atomic.Int64 // connections accepted
	Active     atomic.Int64 // connections open now
	Failed     atomic.Int64 // connections closed because no backend answered
	NoBackend  atomic.Int64 // of those, closed because no backend was usable at all
	Retried    atomic.Int64 // connections that needed more than one dial
	DialErrors atomic.Int64 // failed dials (one connection may count several)
	BytesIn    atomic.Int64 // client to backend
	BytesOut   atomic.Int64 // backend to client
	Limited    atomic.Int64 // times the accept loop waited on the connection limit
	// ProxyRejected counts connections closed for a missing or malformed
	// PROXY protocol header, or from a peer outside the trusted ranges.
	ProxyRejected atomic.Int64
	// DialDuration is how long the dials that connected took.
	DialDuration Histogram
}

// Proxy owns the connections of every listener it serves, so one Shutdown
// drains them all. The zero value is ready to use.
type Proxy struct {
	// Logger receives one debug line per connection and errors at the level
	// they deserve. Nil logs nothing.
	Logger *slog.Logger
	// AccessLog, when set, receives one info line per closed connection
	// (client, service, backend, duration, bytes each way, close reason).
	// It is written once per connection, after it closed, never on the
	// per-byte path. Nil logs that line at debug on Logger instead.
	AccessLog *slog.Logger
	// Resolver, when set, resolves backend hostnames (tests point it at
	// their own DNS server). Nil uses the system resolver.
	Resolver *net.Resolver
	// Loops is how many event loops carry plain TCP connections (see
	// loop.go): 0 means DefaultLoops, negative turns the engine off, and
	// every connection gets two copy goroutines instead. Connections to
	// Unix sockets or over links use the goroutines either way.
	Loops int

	loops   loops
	mu      sync.Mutex
	conns   map[*conn]struct{}
	lastID  uint64        // the last connection id given out
	drained chan struct{} // closed when conns becomes empty during shutdown
	// draining: shutdown has begun. track refuses new connections, and
	// a connection whose backend ended its side then ends (see
	// endDrained). Set under mu, so track and untrack read it there; the
	// copy paths read it without.
	draining atomic.Bool
	handlers sync.WaitGroup
}

// Listener is one served socket: its route, counters and connection limit.
type Listener struct {
	ln net.Listener
	// acceptFile is a duplicate of a TCP listener's descriptor that the
	// event loop engine accepts on (see Serve); Close closes it too, or
	// the socket would go on listening through it.
	mu          sync.Mutex
	acceptFile  *os.File
	closed      bool
	closedCh    chan struct{} // closed by Close
	beforeClose []func()      // run by Close before it closes acceptFile
	route       atomic.Pointer[Route]
	maxConns    int
	Stats       Stats
}

// NewListener wraps ln. maxConns caps the connections open at once (0: no
// cap); at the cap the accept loop waits, so new clients queue in the kernel's
// listen backlog instead of being refused.
func NewListener(ln net.Listener, r *Route, maxConns int) *Listener {
	if tl, ok := ln.(*net.TCPListener); ok {
		setNoDelay(tl)
	}
	l := &Listener{ln: ln, maxConns: maxConns}
	l.route.Store(r)
	return l
}

// Addr is the bound address (the real port after listening on :0).
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

// Route returns the current route.
func (l *Listener) Route() *Route { return l.route.Load() }

// SetRoute swaps the route for new connections.
func (l *Listener) SetRoute(r *Route) { l.route.Store(r) }

// Close stops accepting.
func (l *Listener) Close() error {
	l.mu.Lock()
	if !l.closed {
		l.closed = true
		for _, f := range l.beforeClose {
			f()
		}
		if l.closedCh != nil {
			close(l.closedCh)
		}
	}
	if l.acceptFile != nil {
		l.acceptFile.Close()
		l.acceptFile = nil
	}
	l.mu.Unlock()
	return l.ln.Close()
}

// onClose registers f to run when l closes, before its descriptors do,
// and returns a channel closed then.
func (l *Listener) onClose(f func()) <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closedCh == nil {
		l.closedCh = make(chan struct{})
		if l.closed {
			close(l.closedCh)
		}
	}
	if l.closed {
		f()
	} else {
		l.beforeClose = append(l.beforeClose, f)
	}
	return l.closedCh
}

func (l *Listener) isClosed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.closed
}

// rawAcceptConn returns a RawConn over a duplicate of l's TCP socket, which
// Serve accepts on with accept4(2): a listener's own RawConn cannot wait
// for readability (its Read is not supported), an *os.File's can. Nil when
// l is not TCP or is closed.
func (l *Listener) rawAcceptConn() syscall.RawConn {
	tl, ok := l.ln.(*net.TCPListener)
	if !ok {
		return nil
	}
	f, err := tl.File()
	if err != nil {
		return nil
	}
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed || l.acceptFile != nil {
		f.Close()
		return nil
	}
	l.acceptFile = f
	return rc
}

func (p *Proxy) logger() *slog.Logger {
	if p.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return p.Logger
}

// Serve accepts connections on l until ctx is done or l is closed. It
// returns nil after a close, or the accept error that stopped it.
func (p *Proxy) Serve(ctx context.Context, l *Listener) error {
	log := p.logger().With("listen", l.Addr().String())
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()

	var sem chan struct{}
	if l.maxConns > 0 {
		sem = make(chan struct{}, l.maxConns)
	}
	// A TCP listener's connections are accepted with accept4(2) on its
	// descriptor when the event loops run, so that Go's poller never
	// registers them (see rawsock.go).
	var (
		rawLn  syscall.RawConn
		accept *acceptCall
	)
	// A route the loops cannot carry (a per-connection link, a PROXY header) is
	// accepted through Go's poller: its connections go to the copy
	// goroutines anyway, and moving a loop's socket there costs a dup(2),
	// a close(2) and more per connection. A reload that changes the
	// route's kind keeps the listener's way of accepting; both carry
	// either kind.
	if loops := p.eventLoops(); len(loops) > 0 && l.route.Load().loopCarried() {
		// With no connection cap to wait on, the loops accept
		// themselves; else this goroutine does, on a raw socket.
		if l.maxConns == 0 {
			if ok, err := p.serveOnLoops(ctx, l, loops); ok {
				return err
			}
		}
		if rawLn = l.rawAcceptConn(); rawLn != nil {
			accept = newAcceptCall()
		}
	}
	var backoff time.Duration
	var lastLimitLog time.Time
	for {
		var c halfConn
		var err error
		if rawLn != nil {
			var rs *rawSock
			if rs, err = rawAccept(rawLn, accept); err == nil {
				c = rs
			}
		} else {
			var nc net.Conn
			if nc, err = l.ln.Accept(); err == nil {
				if tc, ok := nc.(sock); ok {
					c = tc
				} else {
					nc.Close()
					continue
				}
			}
		}
		if err != nil {
			// Closing the listener also closes the duplicate rawLn
			// accepts on, whose error is not net.ErrClosed.
			if errors.Is(err, net.ErrClosed) || l.isClosed() || ctx.Err() != nil {
				return nil
			}
			if isTemporaryAcceptError(err) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				log.Warn("accept failed; backing off", "error", err, "backoff", backoff)
				select {
				case <-time.After(backoff):
				case <-ctx.Done():
					return nil
				}
				continue
			}
			return fmt.Errorf("accept on %s: %w", l.Addr(), err)
		}
		backoff = 0
		tc := c
		// At the limit, this one connection waits here for a slot and the
		// ones after it wait in the kernel's listen backlog.
		if sem != nil {
			select {
			case sem <- struct{}{}:
			default:
				l.Stats.Limited.Add(1)
				if time.Since(lastLimitLog) > time.Second {
					lastLimitLog = time.Now()
					log.Warn("connection limit reached; new connections wait until one closes",
						"service", l.Route().Service, "max_connections", l.maxConns)
				}
				select {
				case sem <- struct{}{}:
				case <-ctx.Done():
					tc.Close()
					return nil
				}
			}
		}
		l.Stats.Accepted.Add(1)
		cn := &conn{client: tc, listener: l, route: l.route.Load(), sem: sem, start: time.Now()}
		if !p.track(cn) {
			tc.Close()
			if sem != nil {
				<-sem
			}
			return nil
		}
		go p.handle(ctx, cn)
	}
}

// track registers a connection; it refuses once shutdown has begun.
func (p *Proxy) track(c *conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.draining.Load() {
		return false
	}
	if p.conns == nil {
		p.conns = make(map[*conn]struct{})
	}
	p.conns[c] = struct{}{}
	p.lastID++
	c.id = p.lastID
	p.handlers.Add(1)
	return true
}

func (p *Proxy) untrack(c *conn) {
	p.mu.Lock()
	// The connection's bytes move from its live counters to the
	// listener's totals under the lock ListenersBytes reads both under, so
	// a reading never counts them twice or misses them: the totals it
	// reports only grow, as counters must.
	st := &c.listener.Stats
	st.BytesIn.Add(c.bytesIn)
	st.BytesOut.Add(c.bytesOut)
	delete(p.conns, c)
	if p.draining.Load() && len(p.conns) == 0 && p.drained != nil {
		close(p.drained)
		p.drained = nil
	}
	p.mu.Unlock()
	p.handlers.Done()
}

// CloseBackend aborts the connections of l that are open to the backend at
// addr, and returns how many it closed. The daemon uses it for services with
// close_on_remove, when a backend leaves the set or fails its checks.
func (p *Proxy) CloseBackend(l *Listener, addr, reason string) int {
	p.mu.Lock()
	var victims []*conn
	for c := range p.conns {
		if c.listener == l && c.backendIs(addr) {
			victims = append(victims, c)
		}
	}
	p.mu.Unlock()
	for _, c := range victims {
		c.abort(reason)
	}
	if len(victims) > 0 {
		// An event loop closes its sockets when it gets to the close
		// posted to it: wait for that, so they are closed on return, as
		// the goroutine engine's are.
		p.syncLoops()
	}
	return len(victims)
}

// Bytes is what a listener has moved: In is client to backend, Out back.
type Bytes struct{ In, Out int64 }

// ListenersBytes returns the bytes each of ls has moved each way, counting
// the open connections' bytes so far (a long-lived connection shows its
// traffic as it flows, not only when it closes). It makes one pass over the
// open connections: a scrape holds the lock that every accept and close
// takes for one walk, however many services there are.
func (p *Proxy) ListenersBytes(ls []*Listener) map[*Listener]Bytes {
	out := make(map[*Listener]Bytes, len(ls))
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, l := range ls {
		out[l] = Bytes{l.Stats.BytesIn.Load(), l.Stats.BytesOut.Load()}
	}
	for c := range p.conns {
		if b, ok := out[c.listener]; ok {
			ci, co := c.moved()
			out[c.listener] = Bytes{b.In + ci, b.Out + co}
		}
	}
	return out
}

// Active reports the connections open across every listener.
func (p *Proxy) Active() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Shutdown waits for open connections to finish until ctx is done, then
// closes the rest and waits for their handlers to return. Listeners must be
// closed first (cancel Serve's context); Shutdown refuses new connections
// that were already accepted but not yet tracked. It returns the number of
// connections it had to force-close.
func (p *Proxy) Shutdown(ctx context.Context) int {
	p.mu.Lock()
	p.draining.Store(true)
	var drained chan struct{}
	if len(p.conns) > 0 {
		drained = make(chan struct{})
		p.drained = drained
	}
	for c := range p.conns {
		if c.backendDone.Load() {
			c.endDrained()
		}
	}
	p.mu.Unlock()
	forced := 0
	if drained != nil {
		select {
		case <-drained:
		case <-ctx.Done():
			p.mu.Lock()
			for c := range p.conns {
				c.abort("shutdown")
				forced++
			}
			p.mu.Unlock()
		}
	}
	p.handlers.Wait()
	p.stopLoops()
	return forced
}

// IsTemporaryAcceptError reports whether an accept error passes (out of
// descriptors or buffers, an aborted handshake): other accept loops (the
// transparent listener's) back off on it as Serve does.
func IsTemporaryAcceptError(err error) bool { return isTemporaryAcceptError(err) }

func isTemporaryAcceptError(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	for _, e := range temporaryAcceptErrnos {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
