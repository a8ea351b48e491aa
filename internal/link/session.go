package link

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"sync"
	"sync/atomic"

	"github.com/attache/attache/internal/certs"
	"github.com/attache/attache/internal/h2mux"
)

// serverSession is a multiplexed connection a client set up with the
// link server: each stream it opens names a service and is authorised on
// its own against the certificate the handshake checked.
type serverSession struct {
	mux  *h2mux.Session
	tls  *tls.Conn
	leaf *x509.Certificate
	gen  uint64 // the server identity's generation at the handshake
	// streams counts the streams being served; goingAway that the server
	// takes no more (shutdown, upgrade, new certificate): the session
	// closes once its last stream ends.
	streams   atomic.Int64
	goingAway atomic.Bool
	loop      int // the event loop reading it, or -1
}

// sessions are the server's open multiplexed connections.
type sessions struct {
	mu     sync.Mutex
	open   map[*serverSession]struct{}
	closed bool
	wg     sync.WaitGroup // accept loops and stream goroutines
}

// startSession serves a multiplexed connection whose handshake chose
// attache/h2. It returns at once: the session's streams are served on
// goroutines of the server's (see Close), not the handshake's.
func (s *Server) startSession(ctx context.Context, tc *tls.Conn, leaf *x509.Certificate, resumed bool) {
	mux, err := h2mux.Server(tc, muxConfig(s.handshakeTimeout(), tc, s.Reader))
	if err != nil {
		s.logger().Error("link session", "remote", tc.RemoteAddr().String(), "error", err)
		tc.Close()
		return
	}
	ss := &serverSession{mux: mux, tls: tc, leaf: leaf, gen: s.Identity.Generation()}
	ss.loop = readSession(s.Reader, mux, tc)
	s.sess.mu.Lock()
	if s.sess.closed || ctx.Err() != nil {
		s.sess.mu.Unlock()
		mux.Close()
		return
	}
	if s.sess.open == nil {
		s.sess.open = map[*serverSession]struct{}{}
	}
	s.sess.open[ss] = struct{}{}
	s.sess.wg.Add(1)
	s.sess.mu.Unlock()
	s.Stats.handshake(true, resumed)
	s.Stats.sessionOpened(sideServer)
	s.logger().Debug("link session", "peer", certs.Names(leaf), "remote", tc.RemoteAddr().String(), "resumed", resumed)
	go func() {
		defer s.sess.wg.Done()
		s.acceptStreams(ctx, ss)
	}()
}

// acceptStreams serves the session's streams until it closes.
func (s *Server) acceptStreams(ctx context.Context, ss *serverSession) {
	defer func() {
		s.sess.mu.Lock()
		delete(s.sess.open, ss)
		s.sess.mu.Unlock()
		s.Stats.sessionClosed(sideServer)
	}()
	for {
		hs, err := ss.mux.Accept()
		if err != nil {
			return
		}
		ss.streams.Add(1)
		st := newStream(hs, ss.tls, s.Stats, sideServer, ss.release, ss.loop)
		st.goAway = ss.goAway
		if ss.gen != s.Identity.Generation() {
			// This server's certificate changed: the client sets up a
			// new connection, which sees it, for its next streams.
			ss.goAway()
		}
		if ss.goingAway.Load() {
			s.sess.wg.Go(func() { refuseGoingAway(st) })
			continue
		}
		s.sess.wg.Go(func() { s.serveSessionStream(ctx, st, ss.leaf) })
	}
}

// serveSessionStream serves a stream to the service its opening named.
func (s *Server) serveSessionStream(ctx context.Context, st *Stream, leaf *x509.Certificate) {
	defer func() {
		if v := recover(); v != nil {
			s.logger().Error("panic in link stream", "remote", st.RemoteAddr().String(), "panic", v)
			st.Reset()
		}
	}()
	s.serveStream(ctx, st, st.Authority(), leaf, func() {})
}

func (ss *serverSession) release() {
	if ss.streams.Add(-1) == 0 && ss.goingAway.Load() {
		_ = ss.mux.Close()
	}
}

// goAway takes the session out of service: the streams it carries go on,
// the client hears GOAWAY and opens its next streams on a new connection
// (those already on their way are refused, and opened again there too),
// and the session closes once its last stream ends.
func (ss *serverSession) goAway() {
	if ss.goingAway.Swap(true) {
		return
	}
	ss.mux.GoAway()
	if ss.streams.Load() == 0 {
		_ = ss.mux.Close()
	}
}

// refuseGoingAway answers a stream opened on a session that is going away.
func refuseGoingAway(st *Stream) {
	_ = st.answer(statusGoingAway)
	_ = st.Close()
}

// goAwayAll takes every session out of service: the server is stopping
// (or handing its socket to a new process), so clients open their next
// streams on new connections, elsewhere, while the streams open here go on.
func (s *Server) goAwayAll() {
	s.sess.mu.Lock()
	defer s.sess.mu.Unlock()
	for ss := range s.sess.open {
		ss.goAway()
	}
}

// Close closes every multiplexed connection at once (their open streams
// fail) and waits for their goroutines. Serve leaves the sessions to their
// streams when it returns (they close once the last stream ends); Close is
// for the end of a drain.
func (s *Server) Close() error {
	s.sess.mu.Lock()
	s.sess.closed = true
	var all []*serverSession
	for ss := range s.sess.open {
		all = append(all, ss)
	}
	s.sess.mu.Unlock()
	var errs []error
	for _, ss := range all {
		errs = append(errs, ss.mux.Close())
	}
	s.sess.wg.Wait()
	return errors.Join(errs...)
}
