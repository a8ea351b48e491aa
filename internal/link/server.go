package link

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/attache/attache/internal/certs"
	"github.com/attache/attache/internal/loophint"
)

// Handler takes over an authorised link stream for one service. It owns c.
// It must call ready exactly once: with nil once it has connected to the
// service's backend (the server then tells the client, and a non-nil return
// means the client could not be told, so the stream must be dropped), or
// with the error that kept it from connecting (the server tells the client
// and counts a no_backend refusal). It may return before the stream ends:
// the daemon's handler hands the stream to the proxy, whose goroutines copy
// it.
type Handler func(ctx context.Context, c net.Conn, ready func(error) error)

// Target is what a service offered on the link resolves to.
type Target struct {
	// Allow are the certificate names (CN or DNS SAN) that may reach the
	// service; AllowAny admits every certificate the CA signed.
	Allow []string
	// Handle serves an authorised stream.
	Handle Handler
}

// DefaultHandshakeTimeout bounds a handshake when Server.HandshakeTimeout
// is zero.
const DefaultHandshakeTimeout = 10 * time.Second

// Server terminates mutual TLS on one port and routes each stream to the
// service its client named. The zero value is not usable: Identity and
// Lookup are required.
type Server struct {
	Identity *Identity
	// Lookup finds the service a client asked for. It is called twice per
	// connection, in the handshake (to refuse an unknown service there) and
	// after it (for the allow list and the handler), so a reload between
	// the two is seen.
	Lookup func(service string) (Target, bool)
	// HandshakeTimeout bounds the TLS handshake, the status byte included;
	// zero is DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	Logger           *slog.Logger
	Stats            *Stats
	// Reader, when set, reads the multiplexed connections on event loops
	// (the proxy's) instead of a goroutine per connection; their streams
	// tell which (Stream.Loop).
	Reader loophint.Reader

	once sync.Once
	conf *tls.Config
	sess sessions
	// legacyOnly makes the server answer as an attache before multiplexed
	// links did: attache/1 only (tests of the client's fallback).
	legacyOnly bool
}

func (s *Server) logger() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

func (s *Server) handshakeTimeout() time.Duration {
	if s.HandshakeTimeout <= 0 {
		return DefaultHandshakeTimeout
	}
	return s.HandshakeTimeout
}

// config is the one base configuration every connection starts from: its
// session ticket keys are shared, so a client resumes its session on any
// later connection. Certificates and the CA pool are read per handshake
// (GetConfigForClient), so a reload applies to the next handshake.
func (s *Server) config() *tls.Config {
	s.once.Do(func() {
		s.conf = &tls.Config{
			MinVersion:         tls.VersionTLS13,
			GetConfigForClient: s.configForClient,
		}
	})
	return s.conf
}

func (s *Server) configForClient(hello *tls.ClientHelloInfo) (*tls.Config, error) {
	service, ok := ServiceFromSNI(hello.ServerName)
	if !ok {
		return nil, &refusal{reason: ReasonNoService, detail: fmt.Sprintf("SNI %q names no service (want <service>%s)", hello.ServerName, sniSuffix)}
	}
	if !s.legacyOnly && slices.Contains(hello.SupportedProtos, ALPN2) {
		// A multiplexed connection: its streams name their services
		// and are checked one by one (the SNI names the first).
		return s.tlsConfig(ALPN2), nil
	}
	if !slices.Contains(hello.SupportedProtos, ALPN) {
		return nil, &refusal{reason: ReasonHandshake, service: service, detail: fmt.Sprintf("client does not speak %s (ALPN %q)", ALPN, hello.SupportedProtos)}
	}
	if _, ok := s.Lookup(service); !ok {
		return nil, &refusal{reason: ReasonUnknownService, service: service, detail: "service not offered on this link"}
	}
	return s.tlsConfig(ALPN), nil
}

func (s *Server) tlsConfig(proto string) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{*s.Identity.Certificate()},
		NextProtos:   []string{proto},
		// Go checks that the client owns the certificate's key;
		// verifyClient checks the chain against the CA current at this
		// handshake, on resumed sessions too.
		ClientAuth:       tls.RequireAnyClientCert,
		VerifyConnection: s.verifyClient,
	}
}

func (s *Server) verifyClient(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return &refusal{reason: ReasonNoCertificate, detail: "the client sent no certificate"}
	}
	return verifyPeer(cs.PeerCertificates, s.Identity.Pool(), x509.ExtKeyUsageClientAuth)
}

// verifyPeer checks a peer's chain against pool and classifies a failure.
func verifyPeer(chain []*x509.Certificate, pool *x509.CertPool, usage x509.ExtKeyUsage) error {
	leaf := chain[0]
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}})
	if err == nil {
		return nil
	}
	r := &refusal{reason: ReasonBadCertificate, names: certs.Names(leaf), detail: err.Error()}
	var (
		ua  x509.UnknownAuthorityError
		inv x509.CertificateInvalidError
	)
	switch {
	case errors.As(err, &ua):
		r.reason, r.detail = ReasonUnknownCA, fmt.Sprintf("certificate issued by %q is not signed by the link CA", leaf.Issuer.CommonName)
	case errors.As(err, &inv) && inv.Reason == x509.Expired:
		r.reason, r.detail = ReasonExpired, fmt.Sprintf("certificate valid from %s to %s", leaf.NotBefore.Format(time.RFC3339), leaf.NotAfter.Format(time.RFC3339))
	}
	return r
}

// refusal is why a connection was refused, for the log line and the
// metric. It travels as the error of the TLS callbacks.
type refusal struct {
	reason  string
	service string
	names   []string
	detail  string
}

func (r *refusal) Error() string { return r.reason + ": " + r.detail }

// Serve accepts link connections on ln until ctx is done or ln is closed,
// and returns once every connection it is still handshaking has ended
// (authorised streams belong to their Handler by then). It returns nil
// after a close, or the accept error that stopped it.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if s.Identity == nil || s.Lookup == nil {
		return errors.New("link server: Identity and Lookup are required")
	}
	wentAway := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(wentAway)
		ln.Close()
		s.goAwayAll()
	})
	defer func() {
		// Serve returns once the sessions were told to go away, not
		// merely once the closed listener ended Accept: a stream opened
		// after Serve returned must be refused (TestMuxServerShutdown
		// failed 1 time in CI's race run before this).
		if !stop() {
			<-wentAway
		}
	}()
	var wg sync.WaitGroup
	defer wg.Wait()
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporary(err) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.logger().Warn("link accept failed; backing off", "error", err, "backoff", backoff)
				select {
				case <-time.After(backoff):
				case <-ctx.Done():
					return nil
				}
				continue
			}
			return fmt.Errorf("link accept on %s: %w", ln.Addr(), err)
		}
		backoff = 0
		wg.Go(func() { s.serveConn(ctx, c) })
	}
}

func isTemporary(err error) bool {
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED, syscall.EAGAIN} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// serveConn runs one connection's handshake and authorisation, then hands
// the stream to the service's handler.
func (s *Server) serveConn(ctx context.Context, raw net.Conn) {
	defer func() {
		if v := recover(); v != nil {
			s.logger().Error("panic in link connection", "remote", raw.RemoteAddr().String(), "panic", v)
			raw.Close()
		}
	}()
	timeout := s.handshakeTimeout()
	_ = raw.SetDeadline(time.Now().Add(timeout))
	tc := tls.Server(wrapSocket(raw), s.config())
	hctx, cancel := context.WithTimeout(ctx, timeout)
	err := tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		s.refused(raw, classify(err))
		raw.Close()
		return
	}
	cs := tc.ConnectionState()
	leaf := cs.PeerCertificates[0]
	if cs.NegotiatedProtocol == ALPN2 {
		_ = raw.SetDeadline(time.Time{})
		s.startSession(ctx, tc, leaf, cs.DidResume)
		return
	}
	service, _ := ServiceFromSNI(cs.ServerName)
	s.serveStream(ctx, newTLSStream(tc), service, leaf, func() {
		s.Stats.handshake(true, cs.DidResume)
		_ = raw.SetDeadline(time.Time{})
		s.logger().Debug("link stream", "service", service, "peer", certs.Names(leaf), "remote", raw.RemoteAddr().String(), "resumed", cs.DidResume)
	})
}

// serveStream authorises a stream to service for the peer with
// certificate leaf and hands it to the service's handler; authorised runs
// once the checks pass, before the handler. c is a *tls.Conn of its own
// (attache/1) or a *Stream of a multiplexed connection (attache/h2).
func (s *Server) serveStream(ctx context.Context, c net.Conn, service string, leaf *x509.Certificate, authorised func()) {
	names := certs.Names(leaf)
	if now := time.Now(); now.After(leaf.NotAfter) {
		// Checked per stream: a multiplexed connection outlives the
		// handshake that checked the certificate.
		s.refuseStream(c, statusExpired, &refusal{reason: ReasonExpired, service: service, names: names,
			detail: fmt.Sprintf("certificate expired at %s", leaf.NotAfter.Format(time.RFC3339))})
		return
	}
	t, ok := s.Lookup(service)
	if !ok { // not offered, or removed by a reload since the handshake
		s.refuseStream(c, statusUnknown, &refusal{reason: ReasonUnknownService, service: service, names: names, detail: "service not offered on this link"})
		return
	}
	if !Allowed(t.Allow, names) {
		s.refuseStream(c, statusNotAllowed, &refusal{reason: ReasonNotAllowed, service: service, names: names,
			detail: fmt.Sprintf("certificate names %q are not on the service's allow list", names)})
		return
	}
	authorised()
	called := false
	timeout := s.handshakeTimeout()
	t.Handle(ctx, c, func(err error) error {
		if called {
			return errors.New("link: ready called twice")
		}
		called = true
		if errors.Is(err, ErrGoingAway) {
			if st, ok := c.(*Stream); ok && st.goAway != nil {
				st.goAway() // the next streams need not reach the handler to hear it
			}
			s.logger().Debug("link stream sent elsewhere: going away", "service", service, "peer", names, "remote", c.RemoteAddr().String())
			_ = answer(c, statusGoingAway, timeout)
			c.Close()
			return err
		}
		if err != nil {
			s.refuseStream(c, statusNoBackend, &refusal{reason: ReasonNoBackend, service: service, names: names, detail: err.Error()})
			return err
		}
		werr := answer(c, statusOK, timeout)
		if st, multiplexed := c.(*Stream); werr == nil && multiplexed {
			st.opened()
		}
		return werr
	})
}

// answer sends the server's answer to a stream: a multiplexed stream's
// HEADERS, or attache/1's status byte, whose write is bounded by timeout.
func answer(c net.Conn, status byte, timeout time.Duration) error {
	if st, ok := c.(*Stream); ok {
		return st.answer(status)
	}
	_ = c.SetWriteDeadline(time.Now().Add(timeout))
	_, err := c.Write([]byte{status})
	_ = c.SetWriteDeadline(time.Time{})
	return err
}

// refuseStream tells an authenticated client why, then closes.
func (s *Server) refuseStream(tc net.Conn, status byte, r *refusal) {
	_ = answer(tc, status, s.handshakeTimeout())
	s.refused(tc, r)
	tc.Close()
}

func (s *Server) refused(c net.Conn, r *refusal) {
	attrs := []any{"reason", r.reason, "remote", c.RemoteAddr().String()}
	if r.names != nil {
		attrs = append(attrs, "peer", r.names)
	}
	if r.service != "" {
		attrs = append(attrs, "service", r.service)
	}
	attrs = append(attrs, "error", r.detail)
	// A peer hanging up mid-handshake is routine (a port check, a client
	// that gave up); everything else is worth a warning.
	level := slog.LevelWarn
	if r.reason == ReasonClosed {
		level = slog.LevelDebug
	}
	s.logger().Log(context.Background(), level, "link connection refused", attrs...)
	// Counted after the log line is written, so whoever sees the count
	// (a scrape, a test) can also find the line.
	s.Stats.refuse(r.reason)
}

// classify turns a handshake error into a refusal.
func classify(err error) *refusal {
	var r *refusal
	if errors.As(err, &r) {
		return r
	}
	var (
		rh tls.RecordHeaderError
		ne net.Error
		oe *net.OpError
	)
	switch {
	case errors.As(err, &rh):
		return &refusal{reason: ReasonNotTLS, detail: fmt.Sprintf("the first bytes are not TLS: %q", rh.RecordHeader[:])}
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return &refusal{reason: ReasonTimeout, detail: "no complete handshake within the handshake timeout"}
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET), errors.Is(err, net.ErrClosed):
		return &refusal{reason: ReasonClosed, detail: err.Error()}
	case strings.Contains(err.Error(), "didn't provide a certificate"):
		// crypto/tls's own check (RequireAnyClientCert), before ours.
		return &refusal{reason: ReasonNoCertificate, detail: "the client sent no certificate"}
	case errors.As(err, &oe) && oe.Op == "remote error" && isCertAlert(oe.Err.Error()):
		// The peer sent an alert about certificates: it refused ours.
		return &refusal{reason: ReasonPeerRejected, detail: err.Error()}
	}
	return &refusal{reason: ReasonHandshake, detail: err.Error()}
}

// isCertAlert recognises the certificate alerts by their text (crypto/tls
// does not export the type of a received alert): bad, unsupported,
// revoked, expired or unknown certificate, and unknown certificate
// authority.
func isCertAlert(msg string) bool {
	return strings.Contains(msg, "certificate")
}
