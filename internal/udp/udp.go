// Package udp is attache's UDP data path. UDP has no connections, so the
// proxy makes its own: a session per client address, holding a connected
// socket to the backend the balancing policy picked when the client's first
// datagram arrived. Datagrams from the client go out through that socket;
// replies read from it go back to the client from the listening socket, so
// the client sees them come from the address it wrote to, and replies are
// never crossed between clients (each client has its own upstream socket,
// hence its own source port as the backend sees it).
//
// Sessions end when no datagram moved either way for the route's idle
// timeout. The session table is bounded (Route.MaxSessions): when it is
// full, datagrams from new clients are dropped and counted while existing
// sessions carry on. Evicting the oldest session instead would let a flood
// of spoofed sources push out every real client; dropping keeps what works
// working, and idle expiry frees the slots.
//
// Typical usage:
//
//	pc, _ := net.ListenUDP("udp4", &net.UDPAddr{Port: 53})
//	l := udp.NewListener(pc, &udp.Route{Service: "dns", Backends: set})
//	go l.Serve(ctx)         // returns when ctx is done or l is closed, sessions ended
//	l.SetRoute(newRoute)    // discovery, health: applies to new sessions and moves
//	                        // sessions off removed or failed backends at their next datagram
package udp

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/attache/attache/internal/backend"
	"github.com/attache/attache/internal/balance"
)

// Defaults for the zero fields of a Route.
const (
	DefaultIdleTimeout    = 60 * time.Second
	DefaultMaxSessions    = 10000
	DefaultConnectTimeout = 5 * time.Second
)

// maxDatagram is the largest UDP payload (65535 less the 8-byte UDP header,
// rounded up): every buffer is this size, so no datagram is ever cut.
const maxDatagram = 64 << 10

// maxPending bounds the datagrams a session queues while its upstream
// socket is being opened (a hostname being resolved); later ones are
// dropped, as a full socket buffer would drop them.
const maxPending = 16

// Route is what a listener forwards to. It is immutable once served; a new
// one is swapped in whole (Listener.SetRoute). Unlike TCP, sessions do not
// keep the route they started with for ever: at each datagram a session
// checks that its backend is still in the current route and usable, and
// moves to a new pick otherwise (see Listener).
type Route struct {
	// Service names the route in logs.
	Service string
	// Backends is the set Policy picks from. A hostname is resolved when a
	// session opens its upstream socket.
	Backends *backend.Set
	// Policy picks a backend for each new session; nil is round robin.
	Policy balance.Policy
	// Draining are backends out of rotation that keep their sessions (an
	// operator's drain): no new session picks one, and a session on one
	// stays until it expires, as a TCP connection to a drained backend
	// stays open until it ends.
	Draining []*backend.Backend
	// Retries is how many further backends a new session tries when its
	// upstream socket cannot be opened (an unresolvable name).
	Retries int
	// Passive, when true, ejects a backend whose socket reports that
	// nothing listens (ICMP port unreachable, seen as ECONNREFUSED) or
	// that cannot be opened, so new sessions avoid it for a back-off.
	Passive bool
	// ConnectTimeout bounds opening one upstream socket, name resolution
	// included; zero means 5s.
	ConnectTimeout time.Duration
	// IdleTimeout ends a session after this long without a datagram either
	// way; zero means 60s. A swapped route's value applies to every
	// session from its next check on.
	IdleTimeout time.Duration
	// MaxSessions bounds the session table; zero means 10000. Each session
	// holds one socket, so this also bounds the descriptors UDP uses.
	MaxSessions int
	// OnRefused, when set, is called (on a session's goroutine) when a
	// backend's socket reports that nothing listens there: the daemon
	// uses it to ask the active checks to look now.
	OnRefused func(b *backend.Backend)

	defaultPolicy balance.RoundRobin
}

func (r *Route) policy() balance.Policy {
	if r.Policy == nil {
		return &r.defaultPolicy
	}
	return r.Policy
}

func (r *Route) idleTimeout() time.Duration {
	if r.IdleTimeout <= 0 {
		return DefaultIdleTimeout
	}
	return r.IdleTimeout
}

func (r *Route) maxSessions() int {
	if r.MaxSessions <= 0 {
		return DefaultMaxSessions
	}
	return r.MaxSessions
}

// SessionLimit is MaxSessions with its default applied.
func (r *Route) SessionLimit() int { return r.maxSessions() }

func (r *Route) connectTimeout() time.Duration {
	if r.ConnectTimeout <= 0 {
		return DefaultConnectTimeout
	}
	return r.ConnectTimeout
}

// Stats are a listener's counters, safe to read at any time. The bytes and
// packets of open sessions are kept on the sessions and added here when
// they end; Listener.Counters gives the live totals.
type Stats struct {
	Created    atomic.Int64 // sessions created
	Expired    atomic.Int64 // sessions ended by the idle timeout
	Moved      atomic.Int64 // sessions ended because their backend left the route or failed
	TableFull  atomic.Int64 // datagrams from new clients dropped: the session table was full
	NoBackend  atomic.Int64 // datagrams dropped: no backend was usable
	DialErrors atomic.Int64 // upstream sockets that could not be opened
	Refused    atomic.Int64 // sessions ended because the backend's port was closed (ECONNREFUSED)
	Dropped    atomic.Int64 // other datagrams dropped: queue full while opening, send errors

	packetsIn, packetsOut, bytesIn, bytesOut atomic.Int64 // of ended sessions
}

// Counters is a snapshot of a listener's counters, open sessions included.
type Counters struct {
	Active, Created, Expired, Moved, Refused  int64
	TableFull, NoBackend, DialErrors, Dropped int64
	// In is client to backend, Out backend to client.
	PacketsIn, PacketsOut, BytesIn, BytesOut int64
}

// Listener is one served UDP socket and its session table.
type Listener struct {
	// Logger receives debug lines per session and warnings; nil logs
	// nothing. AccessLog, when set, receives one info line per ended
	// session; nil logs that line at debug on Logger. Resolver resolves
	// backend hostnames; nil is the system resolver. Set them before Serve.
	Logger    *slog.Logger
	AccessLog *slog.Logger
	Resolver  *net.Resolver

	Stats Stats

	conn  *net.UDPConn
	route atomic.Pointer[Route]

	mu       sync.Mutex
	sessions map[netip.AddrPort]*session
	// live are the sessions whose goroutine has not finished, in the table
	// or not (a moved or expired session leaves the table at once, and
	// adds its counts to Stats a moment later in finish).
	live   map[*session]struct{}
	closed bool
	wg     sync.WaitGroup // session goroutines
	ctx    context.Context

	lastFullLog time.Time // read loop only
}

// NewListener serves conn (a bound, unconnected UDP socket) with route r.
// The listener owns conn from now on: Serve closes it when it returns.
func NewListener(conn *net.UDPConn, r *Route) *Listener {
	l := &Listener{conn: conn, sessions: map[netip.AddrPort]*session{}, live: map[*session]struct{}{}}
	l.route.Store(r)
	return l
}

// Addr is the bound address (the real port after listening on port 0).
func (l *Listener) Addr() net.Addr { return l.conn.LocalAddr() }

// Route returns the current route.
func (l *Listener) Route() *Route { return l.route.Load() }

// SetRoute swaps the route. New sessions pick from it at once; an open
// session moves at its next datagram from the client if its backend is no
// longer in the route or is unhealthy (its old socket is closed, and a
// reply still on its way from the old backend is lost, as UDP may lose
// it anyway).
func (l *Listener) SetRoute(r *Route) { l.route.Store(r) }

// Close closes the socket: Serve ends every session and returns.
func (l *Listener) Close() error { return l.conn.Close() }

// Sessions is the number of open sessions.
func (l *Listener) Sessions() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.sessions)
}

// Counters returns the listener's counters with the open sessions' packets
// and bytes included.
func (l *Listener) Counters() Counters {
	st := &l.Stats
	c := Counters{
		Created: st.Created.Load(), Expired: st.Expired.Load(), Moved: st.Moved.Load(), Refused: st.Refused.Load(),
		TableFull: st.TableFull.Load(), NoBackend: st.NoBackend.Load(), DialErrors: st.DialErrors.Load(), Dropped: st.Dropped.Load(),
	}
	l.mu.Lock()
	c.Active = int64(len(l.sessions))
	for s := range l.live {
		c.PacketsIn += s.packetsIn.Load()
		c.PacketsOut += s.packetsOut.Load()
		c.BytesIn += s.bytesIn.Load()
		c.BytesOut += s.bytesOut.Load()
	}
	// Read the ended sessions' totals under the lock too: a session adds
	// its own to them and leaves live in one step (see finish), so
	// nothing is counted twice or missed, and the totals never go down.
	c.PacketsIn += st.packetsIn.Load()
	c.PacketsOut += st.packetsOut.Load()
	c.BytesIn += st.bytesIn.Load()
	c.BytesOut += st.bytesOut.Load()
	l.mu.Unlock()
	return c
}

func (l *Listener) logger() *slog.Logger {
	if l.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l.Logger
}

// Serve reads datagrams until ctx is done or the listener is closed, then
// ends every session, waits for their goroutines and closes the socket. It
// returns nil then; read errors other than a close are logged and retried
// with a back-off, since a UDP socket has no accept queue that can break.
func (l *Listener) Serve(ctx context.Context) error {
	l.mu.Lock()
	l.ctx = ctx
	l.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { l.conn.Close() })
	defer stop()
	defer l.shutdown()
	buf := make([]byte, maxDatagram)
	var backoff time.Duration
	for {
		n, from, err := l.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return nil
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			l.logger().Warn("udp read failed; backing off", "listen", l.Addr().String(), "error", err, "backoff", backoff)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return nil
			}
			continue
		}
		backoff = 0
		l.handle(buf[:n], netip.AddrPortFrom(from.Addr().Unmap(), from.Port()))
	}
}

// handle forwards one datagram from a client: to its session, or to a new
// one. It runs on the read loop only.
func (l *Listener) handle(p []byte, from netip.AddrPort) {
	r := l.route.Load()
	now := time.Now().UnixNano()
	l.mu.Lock()
	s := l.sessions[from]
	var (
		moved *session
		next  *backend.Backend
	)
	if s != nil && !s.usable(r) {
		// Its backend left the route or failed: pick again, unless
		// nothing else is usable and the old backend is still listed.
		if next = pick(r, from, 0); next != nil || !s.listed(r) {
			delete(l.sessions, from)
			moved, s = s, nil
		}
	}
	created := false
	if s == nil {
		s, created = l.create(r, from, next)
		if s == nil {
			l.mu.Unlock()
			if moved != nil {
				l.Stats.Moved.Add(1)
				moved.end("backend removed or unhealthy")
			}
			return
		}
	}
	s.last.Store(now)
	l.mu.Unlock()
	if moved != nil {
		l.Stats.Moved.Add(1)
		moved.end("backend removed or unhealthy")
	}
	if created {
		// The first datagram waits in the queue for the upstream socket.
		s.pending = append(s.pending, bytes.Clone(p))
		ctx := l.ctx
		l.wg.Go(func() { s.run(ctx) })
		return
	}
	s.forward(p)
}

// create makes a session for a new client with backend b, or the policy's
// pick when b is nil. It returns nil when the table is full or no backend
// is usable (the datagram is dropped and counted). l.mu is held.
func (l *Listener) create(r *Route, from netip.AddrPort, b *backend.Backend) (*session, bool) {
	if l.closed {
		return nil, false
	}
	if len(l.sessions) >= r.maxSessions() {
		l.Stats.TableFull.Add(1)
		if t := time.Now(); t.Sub(l.lastFullLog) > time.Second {
			l.lastFullLog = t
			l.logger().Warn("udp session table full; datagrams from new clients are dropped until sessions expire",
				"service", r.Service, "max_sessions", r.maxSessions(), "client", from.String())
		}
		return nil, false
	}
	if b == nil {
		b = pick(r, from, 0)
	}
	if b == nil {
		l.Stats.NoBackend.Add(1)
		return nil, false
	}
	// Counted from the moment it is chosen, as TCP connections are, so
	// least_conn sees a burst of new clients spread.
	b.Acquire()
	s := &session{l: l, client: from, target: b, route: r, start: time.Now()}
	l.sessions[from] = s
	l.live[s] = struct{}{}
	l.Stats.Created.Add(1)
	return s, true
}

// pick asks the policy for a new session's backend, with panic mode
// when passive health is on, as the TCP proxy does (balance.Choose):
// rather than drop a client's traffic when every backend is out, it tries
// one that is out only because passive ejection benched it. attempt is
// how many upstream sockets the session failed to open so far.
func pick(r *Route, from netip.AddrPort, attempt int) *backend.Backend {
	return balance.Choose(r.policy(), r.Backends, from, r.Passive, attempt)
}

// shutdown ends every session and waits for their goroutines.
func (l *Listener) shutdown() {
	l.conn.Close()
	l.mu.Lock()
	l.closed = true
	open := make([]*session, 0, len(l.sessions))
	for _, s := range l.sessions {
		open = append(open, s)
	}
	l.mu.Unlock()
	for _, s := range open {
		s.end("shutdown")
	}
	l.wg.Wait()
}

// session is one client's flow. Its goroutine (run) opens the upstream
// socket, reads replies and, when it returns, takes the session out of the
// table and closes the socket; end may be called from any goroutine to
// make it return early.
type session struct {
	l      *Listener
	client netip.AddrPort
	start  time.Time
	// target is the backend chosen; its Active count is this session's.
	// route is the route target was last found in. Both are guarded by
	// l.mu.
	target *backend.Backend
	route  *Route
	// last is the unix-nano time of the last datagram either way.
	last atomic.Int64

	mu      sync.Mutex
	conn    *net.UDPConn // set once opened, under mu
	pending [][]byte     // datagrams that came before conn, under mu
	ended   bool
	reason  string
	ready   atomic.Bool // conn is set and pending flushed: forward needs no lock

	packetsIn, packetsOut, bytesIn, bytesOut atomic.Int64
}

// usable reports whether the session's backend may keep its traffic under
// route r: still listed and healthy. l.mu is held.
func (s *session) usable(r *Route) bool {
	if s.route != r {
		if !s.listed(r) {
			return false
		}
		s.route = r
	}
	return s.target.Healthy()
}

// listed reports whether the session's backend is in r, in rotation or
// draining (the same address state, even if discovery changed its weight).
// l.mu is held.
func (s *session) listed(r *Route) bool {
	for i := range r.Backends.Len() {
		if r.Backends.At(i).SharesState(s.target) {
			return true
		}
	}
	for _, b := range r.Draining {
		if b.SharesState(s.target) {
			return true
		}
	}
	return false
}

// forward sends one datagram from the client to the backend, or queues it
// while the upstream socket is being opened.
func (s *session) forward(p []byte) {
	if !s.ready.Load() {
		s.mu.Lock()
		if !s.ready.Load() {
			if s.ended || len(s.pending) >= maxPending {
				s.l.Stats.Dropped.Add(1)
			} else {
				s.pending = append(s.pending, bytes.Clone(p))
			}
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
	}
	if s.send(p) {
		s.refused()
	}
}

// send writes p on the upstream socket and reports whether the backend's
// port is closed, the one error worth ending the session for; others (a
// full socket buffer) lose the datagram, as the network might.
func (s *session) send(p []byte) (refused bool) {
	n, err := s.conn.Write(p)
	if err != nil {
		s.l.Stats.Dropped.Add(1)
		return errors.Is(err, unix.ECONNREFUSED)
	}
	s.packetsIn.Add(1)
	s.bytesIn.Add(int64(n))
	return false
}

// end makes the session's goroutine return, closing its socket; the first
// reason given is the one logged.
func (s *session) end(reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return
	}
	s.ended, s.reason = true, reason
	if s.conn != nil {
		s.conn.Close()
	}
}

func (s *session) refused() {
	s.l.Stats.Refused.Add(1)
	s.l.mu.Lock()
	b, r := s.target, s.route
	s.l.mu.Unlock()
	if r.Passive {
		b.ReportFailure(time.Now())
	}
	if r.OnRefused != nil {
		r.OnRefused(b)
	}
	s.end("backend refused (port closed)")
}

// run is the session's goroutine: open the upstream socket, flush what
// queued meanwhile, relay replies until the session ends.
func (s *session) run(ctx context.Context) {
	defer s.finish()
	conn, err := s.open(ctx)
	s.mu.Lock()
	if err != nil || s.ended {
		if err != nil && !s.ended {
			s.ended, s.reason = true, "no backend reachable: "+err.Error()
		}
		s.l.Stats.Dropped.Add(int64(len(s.pending)))
		s.pending = nil
		s.mu.Unlock()
		if conn != nil {
			conn.Close()
		}
		return
	}
	s.conn = conn
	pending := s.pending
	s.pending = nil
	// Flush under the lock, so datagrams the read loop hands over now
	// queue behind these instead of overtaking them.
	refused := false
	for _, p := range pending {
		if refused = s.send(p); refused {
			break
		}
	}
	s.ready.Store(true)
	s.mu.Unlock()
	if refused {
		s.refused()
		return
	}
	s.relay()
}

// open opens the upstream socket to the session's backend; when that fails
// it ejects the backend (passive health) and tries the policy's next pick,
// up to Retries more times.
func (s *session) open(ctx context.Context) (*net.UDPConn, error) {
	l := s.l
	l.mu.Lock()
	b, r := s.target, s.route
	l.mu.Unlock()
	d := net.Dialer{Timeout: r.connectTimeout(), Resolver: l.Resolver}
	budget := backend.DialBudget{Retries: r.Retries}
	for {
		c, err := d.DialContext(ctx, "udp", b.Addr)
		b.CountDial(err == nil)
		if err == nil {
			return c.(*net.UDPConn), nil
		}
		l.Stats.DialErrors.Add(1)
		budget.Failed(b.Addr, err)
		l.logger().Debug("udp upstream socket failed", "service", r.Service, "backend", b.Addr, "error", err)
		if r.Passive && ctx.Err() == nil {
			b.ReportFailure(time.Now())
		}
		if !budget.Again(ctx, time.Now()) {
			return nil, budget.Err()
		}
		next := pick(r, s.client, budget.Attempts())
		if next == nil {
			return nil, budget.Err()
		}
		next.Acquire()
		l.mu.Lock()
		s.target = next
		l.mu.Unlock()
		b.Release()
		b = next
	}
}

// relay copies replies from the backend to the client until the session
// ends or stays idle for the route's idle timeout.
func (s *session) relay() {
	l := s.l
	rc, err := s.conn.SyscallConn()
	if err != nil {
		s.end("upstream socket: " + err.Error())
		return
	}
	idle := l.route.Load().idleTimeout()
	_ = s.conn.SetReadDeadline(time.Unix(0, s.last.Load()).Add(idle))
	rd := newReader(rc)
	for {
		bp, n, err := rd.next()
		if err == nil {
			s.last.Store(time.Now().UnixNano())
			_, werr := l.conn.WriteToUDPAddrPort((*bp)[:n], s.client)
			bufPool.Put(bp)
			if werr != nil {
				l.Stats.Dropped.Add(1)
				continue
			}
			s.packetsOut.Add(1)
			s.bytesOut.Add(int64(n))
			continue
		}
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			idle = l.route.Load().idleTimeout()
			if s.expire(idle) {
				return
			}
			_ = s.conn.SetReadDeadline(time.Unix(0, s.last.Load()).Add(idle))
		case errors.Is(err, unix.ECONNREFUSED):
			s.refused()
			return
		default: // closed by end, or a socket error
			s.end("upstream socket: " + err.Error())
			return
		}
	}
}

// expire ends the session if nothing moved for idle. It decides under the
// table lock, which the read loop holds while it stamps a datagram, so a
// datagram that just arrived keeps the session open.
func (s *session) expire(idle time.Duration) bool {
	l := s.l
	l.mu.Lock()
	if time.Since(time.Unix(0, s.last.Load())) < idle {
		l.mu.Unlock()
		return false
	}
	if l.sessions[s.client] == s {
		delete(l.sessions, s.client)
	}
	l.mu.Unlock()
	l.Stats.Expired.Add(1)
	s.end("idle")
	return true
}

// finish runs once, when the session's goroutine returns: out of the table,
// socket closed, backend released, counters added up, access log line.
func (s *session) finish() {
	l := s.l
	s.end("ended") // a no-op unless nothing ended it yet
	l.mu.Lock()
	if l.sessions[s.client] == s {
		delete(l.sessions, s.client)
	}
	delete(l.live, s)
	target := s.target
	st := &l.Stats
	st.packetsIn.Add(s.packetsIn.Load())
	st.packetsOut.Add(s.packetsOut.Load())
	st.bytesIn.Add(s.bytesIn.Load())
	st.bytesOut.Add(s.bytesOut.Load())
	l.mu.Unlock()
	target.Release()
	s.mu.Lock()
	reason := s.reason
	s.mu.Unlock()
	level, out := slog.LevelDebug, l.logger()
	if l.AccessLog != nil {
		level, out = slog.LevelInfo, l.AccessLog
	}
	if !out.Enabled(context.Background(), level) {
		return
	}
	out.Log(context.Background(), level, "udp session closed", "service", l.route.Load().Service,
		"client", s.client.String(), "backend", target.Addr, "duration", time.Since(s.start),
		"packets_in", s.packetsIn.Load(), "packets_out", s.packetsOut.Load(),
		"bytes_in", s.bytesIn.Load(), "bytes_out", s.bytesOut.Load(), "reason", reason)
}

// bufPool holds the buffers replies are read into. A session takes one
// only while a datagram is waiting to be read, so ten thousand idle
// sessions hold no buffer at all (a buffer per session, sized for the
// largest datagram, would cost 640 MiB).
var bufPool = sync.Pool{New: func() any {
	b := make([]byte, maxDatagram)
	return &b
}}

// reader reads the datagrams of one connected socket into pooled buffers.
// Its callback for RawConn.Read is made once per session, so a read
// allocates nothing (a closure per read would cost three allocations).
type reader struct {
	rc   syscall.RawConn
	fn   func(fd uintptr) bool
	bp   *[]byte
	n    int
	rerr error
}

func newReader(rc syscall.RawConn) *reader {
	r := &reader{rc: rc}
	r.fn = r.read
	return r
}

// next waits for a datagram and returns it in a pooled buffer, which the
// caller puts back. It honours the socket's read deadline.
func (r *reader) next() (*[]byte, int, error) {
	r.bp, r.n, r.rerr = nil, 0, nil
	err := r.rc.Read(r.fn)
	if err == nil && r.rerr != nil {
		err = os.NewSyscallError("read", r.rerr)
	}
	if err != nil {
		if r.bp != nil {
			bufPool.Put(r.bp)
		}
		return nil, 0, err
	}
	return r.bp, r.n, nil
}

// read is the RawConn.Read callback: one read(2), or false to wait until
// the socket is readable.
func (r *reader) read(fd uintptr) bool {
	r.bp = bufPool.Get().(*[]byte)
	for {
		r.n, r.rerr = unix.Read(int(fd), *r.bp)
		if r.rerr != unix.EINTR {
			break
		}
	}
	if r.rerr == unix.EAGAIN {
		bufPool.Put(r.bp)
		r.bp = nil
		return false
	}
	return true
}
