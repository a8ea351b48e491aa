package link

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/attache/attache/internal/h2mux"
	"github.com/attache/attache/internal/loophint"
)

// How a Client spreads streams over pooled connections to one link server:
// streams go to the least loaded connection; while there are fewer
// connections than CPUs, or once every connection carries
// streamsPerSession, another one is opened (the new streams go on meanwhile
// on the existing ones), up to sessionsPerPeer. Each connection encrypts on
// its own goroutine and decrypts on the peer's, so a connection per CPU
// lets bulk streams use every core at both ends, as HAProxy's threads do
// with a TLS connection each.
const (
	streamsPerSession = 64
	sessionsPerPeer   = 4
)

// minSessions is how many pooled connections a link server gets as soon as
// it carries streams: Client.Sessions, or one per CPU, up to
// sessionsPerPeer.
func (c *Client) minSessions() int {
	if c.Sessions > 0 {
		return min(c.Sessions, sessionsPerPeer)
	}
	return min(runtime.GOMAXPROCS(0), sessionsPerPeer)
}

// ErrClientClosed is returned by dials after Client.Close.
var ErrClientClosed = errors.New("link: client closed")

// errLegacyServer is what waiters for a pooled connection hear when the
// link server only speaks attache/1: they dial a connection of their own.
var errLegacyServer = errors.New("link server speaks attache/1 only")

// pool holds a Client's multiplexed sessions, per link server address.
type pool struct {
	mu     sync.Mutex
	peers  map[string]*peer
	closed bool
	ctx    context.Context // ends background dials at Close
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// peer is what the pool keeps for one link server.
type peer struct {
	sessions []*clientSession
	dial     *sessionDial // in flight, or nil
	// legacy is set when the server answered attache/1 only (an older
	// attache): its streams get connections of their own.
	legacy bool
}

type sessionDial struct {
	done chan struct{}
	cs   *clientSession
	err  error
}

// clientSession is one pooled connection.
type clientSession struct {
	mux   *h2mux.Session
	tls   *tls.Conn
	addr  string
	gen   uint64 // the identity generation it was set up with
	stats *Stats
	// streams counts the streams open on it, retired that it takes no
	// more (its certificate is replaced, or the server said go away): it
	// closes once its last stream ends.
	streams atomic.Int64
	retired atomic.Bool
	used    atomic.Bool // has carried a stream
	loop    int         // the event loop reading it, or -1
}

func (c *Client) streamPool() *pool {
	p := &c.pool
	p.mu.Lock()
	if p.peers == nil {
		p.peers = map[string]*peer{}
		p.ctx, p.cancel = context.WithCancel(context.Background())
	}
	p.mu.Unlock()
	return p
}

// Close closes the client's pooled connections (their open streams fail)
// and waits for dials in flight. Dials after Close fail.
func (c *Client) Close() error {
	p := c.streamPool()
	p.mu.Lock()
	p.closed = true
	var all []*clientSession
	for _, pe := range p.peers {
		all = append(all, pe.sessions...)
		pe.sessions = nil
	}
	p.mu.Unlock()
	p.cancel()
	for _, cs := range all {
		_ = cs.mux.Close()
	}
	p.wg.Wait()
	return nil
}

// session returns a pooled session to the link server at addr, dialling
// one if there is none (or growing the pool in the background when every
// session is busy).
func (c *Client) session(ctx context.Context, service, addr string) (*clientSession, error) {
	p := c.streamPool()
	loop, ok := loophint.From(ctx)
	if !ok {
		loop = -1
	}
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, ErrClientClosed
		}
		pe := p.peers[addr]
		if pe == nil {
			pe = &peer{}
			p.peers[addr] = pe
		}
		if pe.legacy {
			p.mu.Unlock()
			return nil, errLegacyServer
		}
		best, retired := pe.pick(c.Identity.Generation(), loop)
		grow := best == nil || len(pe.sessions) < c.minSessions() || best.streams.Load() >= streamsPerSession
		if best != nil && (!grow || len(pe.sessions) >= sessionsPerPeer) {
			p.mu.Unlock()
			closeIdle(retired)
			return best, nil
		}
		d := pe.dial
		if d == nil {
			d = &sessionDial{done: make(chan struct{})}
			pe.dial = d
			p.wg.Go(func() { c.dialSession(p, pe, d, service, addr) })
		}
		p.mu.Unlock()
		closeIdle(retired)
		if best != nil {
			return best, nil
		}
		select {
		case <-d.done:
			// The session this caller waited for, even if it has
			// died meanwhile: its failure is this dial's answer (a
			// server refusing this host's certificate closes it at
			// once), not a reason for another handshake.
			return d.cs, d.err
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	}
}

// pick drops the sessions that closed or belong to an older certificate
// and returns the least loaded of the others, or nil, and those it
// retired (for the caller to close once idle, out of the pool's lock,
// which is held). A session read by the event loop named in loop, when
// there is one (see loophint), comes first while it has room: the
// stream's bytes then reach the loop that carries it in the turn that
// read them.
func (pe *peer) pick(gen uint64, loop int) (best *clientSession, retired []*clientSession) {
	kept := pe.sessions[:0]
	var near *clientSession
	for _, cs := range pe.sessions {
		if cs.mux.IsClosed() || cs.retired.Load() || cs.mux.GoneAway() {
			continue
		}
		if cs.gen != gen {
			cs.retired.Store(true)
			retired = append(retired, cs)
			continue
		}
		kept = append(kept, cs)
		load := cs.streams.Load()
		if best == nil || load < best.streams.Load() {
			best = cs
		}
		if loop >= 0 && cs.loop == loop && load < streamsPerSession && (near == nil || load < near.streams.Load()) {
			near = cs
		}
	}
	clear(pe.sessions[len(kept):])
	pe.sessions = kept
	if near != nil {
		best = near
	}
	return best, retired
}

// dialSession sets up a pooled connection to addr and tells the waiters.
func (c *Client) dialSession(p *pool, pe *peer, d *sessionDial, service, addr string) {
	ctx, cancel := c.dialTimeout(p.ctx)
	defer cancel()
	cs, err := c.newSession(ctx, service, addr)
	p.mu.Lock()
	switch {
	case errors.Is(err, errLegacyServer):
		pe.legacy = true
	case err == nil && p.closed:
		err = ErrClientClosed
		defer cs.mux.Close()
	case err == nil:
		pe.sessions = append(pe.sessions, cs)
	}
	pe.dial = nil
	d.cs, d.err = cs, err
	close(d.done)
	p.mu.Unlock()
}

// newSession runs the handshake of a pooled connection. A server that
// answers attache/1 only is an older attache: errLegacyServer.
func (c *Client) newSession(ctx context.Context, service, addr string) (*clientSession, error) {
	gen := c.Identity.Generation()
	tc, err := c.handshake(ctx, service, addr, []string{ALPN2, ALPN})
	if err != nil {
		return nil, err
	}
	cs := tc.ConnectionState()
	if cs.NegotiatedProtocol != ALPN2 {
		tc.Close()
		return nil, errLegacyServer
	}
	c.Stats.handshake(false, cs.DidResume)
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	if d, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(d))
	}
	mux, err := h2mux.Client(tc, muxConfig(timeout, tc, c.Reader))
	if err != nil {
		tc.Close()
		return nil, fmt.Errorf("link session with %s: %w", addr, err)
	}
	s := &clientSession{mux: mux, tls: tc, addr: addr, gen: gen, stats: c.Stats}
	s.loop = readSession(c.Reader, mux, tc)
	c.Stats.sessionOpened(sideClient)
	// Owned by the session: it ends when the session closes (peer gone,
	// retired and idle, or Client.Close).
	go func() {
		<-mux.Done()
		c.Stats.sessionClosed(sideClient)
	}()
	return s, nil
}

// closeIdle closes the retired sessions that carry no stream (the others
// close with their last one).
func closeIdle(retired []*clientSession) {
	for _, cs := range retired {
		cs.retire()
	}
}

// retire takes the session out of use; it closes with its last stream.
func (cs *clientSession) retire() {
	cs.retired.Store(true)
	if cs.streams.Load() == 0 {
		_ = cs.mux.Close()
	}
}

// release is called once per stream when it ends.
func (cs *clientSession) release() {
	if cs.streams.Add(-1) == 0 && cs.retired.Load() {
		_ = cs.mux.Close()
	}
}

// dialStream opens a stream to service on a pooled connection to addr and
// waits for the server's answer. A session that carried streams before but
// cannot open this one (the server went away, the connection died) is
// retired and the open retried once on another.
func (c *Client) dialStream(ctx context.Context, service, addr string, early []byte) (net.Conn, error) {
	if c.Identity == nil {
		return nil, ErrNoIdentity
	}
	if service == "" {
		return nil, errors.New("link: no service name to dial")
	}
	ctx, cancel := c.dialTimeout(ctx)
	defer cancel()
	var lastErr error
	for range 2 {
		cs, err := c.session(ctx, service, addr)
		if errors.Is(err, errLegacyServer) {
			tc, err := c.dialPerConn(ctx, service, addr, early)
			if err != nil {
				return nil, err
			}
			return tc, nil
		}
		if err != nil {
			return nil, err
		}
		st, err := cs.open(ctx, service, addr, early)
		if err == nil {
			cs.used.Store(true)
			return st, nil
		}
		var refused *RefusedError
		if errors.As(err, &refused) && refused.Status == statusGoingAway {
			// The server said GOAWAY (it sends that before refusing
			// streams for it; a session out of stream identifiers
			// retired itself in open): the next try goes on a new
			// connection. Refused without it, the server's backlog
			// of streams to accept was full: the connection is fine.
			if cs.mux.GoneAway() || cs.mux.IsClosed() {
				cs.retire()
			}
			lastErr = err
			continue
		}
		if errors.As(err, &refused) {
			return nil, err
		}
		// No answer: the connection may be dead without a word (a cable
		// pulled, a host gone) until its keepalive notices; the next
		// streams go to a new one.
		cs.retire()
		if ctx.Err() != nil || !cs.used.Load() {
			// A new connection that cannot carry a stream: the server
			// refused this host (a TLS 1.3 server checks the client's
			// certificate after the client's handshake is done).
			return nil, err
		}
		lastErr = err
	}
	return nil, lastErr
}

// open opens a stream on the session, sends the client's early bytes right
// behind its opening frame, and waits for the server's answer. A stream
// the server did not take because it is going away (or a session that
// can open no more) is a RefusedError with statusGoingAway: the caller
// opens it again on a new connection.
func (cs *clientSession) open(ctx context.Context, service, addr string, early []byte) (*Stream, error) {
	hs, err := cs.mux.Open(service)
	if errors.Is(err, h2mux.ErrExhausted) {
		cs.retire() // no stream identifiers left: a new connection
		return nil, &RefusedError{Service: service, Addr: addr, Status: statusGoingAway}
	}
	if errors.Is(err, h2mux.ErrGoingAway) {
		return nil, &RefusedError{Service: service, Addr: addr, Status: statusGoingAway}
	}
	if err != nil {
		return nil, fmt.Errorf("link session with %s: open a stream: %w", addr, err)
	}
	cs.streams.Add(1)
	st := newStream(hs, cs.tls, cs.stats, sideClient, cs.release, cs.loop)
	if len(early) > 0 {
		// Within the stream's first window: queued behind the
		// opening at once.
		if _, err := st.Write(early); err != nil {
			st.Reset()
			return nil, fmt.Errorf("link session with %s: %w", addr, err)
		}
	}
	code, err := st.Response(ctx)
	switch {
	case errors.Is(err, h2mux.ErrRefused) || errors.Is(err, h2mux.ErrGoingAway):
		st.Reset()
		return nil, &RefusedError{Service: service, Addr: addr, Status: statusGoingAway}
	case err != nil:
		st.Reset()
		return nil, fmt.Errorf("link server %s did not answer for service %q: %w", addr, service, err)
	case code != statusToHTTP[statusOK]:
		st.Reset()
		status, ok := httpToStatus[code]
		if !ok {
			status = statusUnknownAnswer
		}
		return nil, &RefusedError{Service: service, Addr: addr, Status: status}
	}
	st.opened()
	return st, nil
}
