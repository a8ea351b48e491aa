// Package link carries connections between attache hosts over mutual TLS:
// one link server per host listens on a single port and routes each
// incoming stream to a local service by name, and a client-side dialer
// reaches it for attache:// backends. Both ends present a certificate
// signed by the fleet's CA (see package certs); TLS 1.3 only.
//
// Typical usage:
//
//	id, err := link.NewIdentity(link.Files{Cert: "host.crt", Key: "host.key", CA: "fleet-ca.crt"}, log, stats)
//	wg.Go(func() { id.Watch(ctx, 0) }) // reload the files when they change on disk
//
//	srv := &link.Server{Identity: id, Lookup: lookup, Logger: log, Stats: stats}
//	wg.Go(func() { _ = srv.Serve(ctx, ln) })
//
//	cl := &link.Client{Identity: id, Stats: stats}
//	c, err := cl.Dial(ctx, "redis", "10.0.0.2:7443") // a stream to host 10.0.0.2's service redis
//
// # Wire protocol ("attache/1")
//
// The client opens a TLS 1.3 connection with ALPN "attache/1" and the
// service it wants in the SNI as "<service>.attache" (the suffix keeps a
// service named like an IP address a valid host name, which Go's TLS client
// would otherwise leave out of the SNI). The server refuses in the handshake
// a client without a certificate signed by the CA, an expired one, a
// missing or unknown service name, and a client not speaking attache/1.
// Once the handshake is done it checks the client's certificate names
// against the service's allow list, connects to the service's backend, and
// only then writes one status byte: 0 (connected; the stream that follows is
// the backend's), or a refusal code, after which it closes. The client's
// dial returns only after that byte, so a dial that succeeds means the whole
// path works, and a link server whose backend is down fails the dial, which
// lets the client-side ambassador fail over to another link server before
// its own client sees anything. The status byte costs one round trip beyond
// the handshake, overlapped with the server's dial to its backend.
//
// The service name travels in the clear (SNI is not encrypted); the
// stream's bytes do not.
//
// Half-close crosses the link: CloseWrite on a *tls.Conn sends TLS 1.3's
// close_notify, which the other end reads as EOF while it may still write.
package link

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// ALPN is the application protocol both ends negotiate.
const ALPN = "attache/1"

// sniSuffix ends every SNI a link client sends.
const sniSuffix = ".attache"

// ServerName is the SNI a client sends to reach service.
func ServerName(service string) string { return service + sniSuffix }

// ServiceFromSNI is the service a client asked for, from its SNI.
func ServiceFromSNI(sni string) (string, bool) {
	s, ok := strings.CutSuffix(sni, sniSuffix)
	if !ok || s == "" {
		return "", false
	}
	return s, true
}

// Status bytes the server writes after the handshake.
const (
	statusOK         byte = 0
	statusNotAllowed byte = 1
	statusUnknown    byte = 2
	statusNoBackend  byte = 3
	statusExpired    byte = 4 // the client's certificate expired during a multiplexed connection
	statusGoingAway  byte = 5 // the multiplexed connection takes no more streams: open it on a new one
)

// Refusal reasons, as logs and the attache_link_refused_total metric name
// them.
const (
	ReasonNotTLS         = "not_tls"         // the first bytes were not a TLS record: plain TCP, garbage
	ReasonHandshake      = "handshake"       // a TLS handshake that failed otherwise (malformed, TLS 1.2 only, no attache/1)
	ReasonTimeout        = "timeout"         // the handshake did not finish within the handshake timeout
	ReasonClosed         = "closed"          // the peer went away during the handshake
	ReasonPeerRejected   = "peer_rejected"   // the peer refused this server's certificate
	ReasonNoCertificate  = "no_certificate"  // the client sent no certificate
	ReasonUnknownCA      = "unknown_ca"      // the client's certificate is not signed by the CA
	ReasonExpired        = "expired"         // the client's certificate is expired or not yet valid
	ReasonBadCertificate = "bad_certificate" // another certificate problem (wrong key usage …)
	ReasonNoService      = "no_service"      // no service name in the SNI
	ReasonUnknownService = "unknown_service" // the service named is not offered here
	ReasonNotAllowed     = "not_allowed"     // the client's names are not on the service's allow list
	ReasonNoBackend      = "no_backend"      // authorised, but the service's backend could not be reached
)

// Reasons lists every refusal reason, so metrics show each at 0 from the
// start.
var Reasons = []string{ReasonNotTLS, ReasonHandshake, ReasonTimeout, ReasonClosed, ReasonPeerRejected,
	ReasonNoCertificate, ReasonUnknownCA, ReasonExpired, ReasonBadCertificate, ReasonNoService,
	ReasonUnknownService, ReasonNotAllowed, ReasonNoBackend}

// AllowAny in an allow list admits every certificate the CA signed.
const AllowAny = "*"

// Allowed reports whether a peer with the given certificate names may reach
// a service with allow list allow. Names compare case-insensitively, as DNS
// names do. An empty list admits nobody.
func Allowed(allow, names []string) bool {
	for _, a := range allow {
		if a == AllowAny {
			return true
		}
		if slices.ContainsFunc(names, func(n string) bool { return strings.EqualFold(n, a) }) {
			return true
		}
	}
	return false
}

// RefusedError is a dial the link server refused after the handshake.
type RefusedError struct {
	Service string
	Addr    string
	Status  byte
}

func (e *RefusedError) Error() string {
	switch e.Status {
	case statusNotAllowed:
		return fmt.Sprintf("link server %s refused: this host's certificate is not on the allow list of service %q", e.Addr, e.Service)
	case statusUnknown:
		return fmt.Sprintf("link server %s refused: it does not offer service %q", e.Addr, e.Service)
	case statusNoBackend:
		return fmt.Sprintf("link server %s could not reach a backend of service %q", e.Addr, e.Service)
	case statusGoingAway:
		return fmt.Sprintf("link server %s takes no more streams on this connection (stopping, upgrading or changing its certificate)", e.Addr)
	case statusExpired:
		return fmt.Sprintf("link server %s refused service %q: this host's certificate has expired", e.Addr, e.Service)
	}
	return fmt.Sprintf("link server %s refused service %q with unknown status %d", e.Addr, e.Service, e.Status)
}

// ErrGoingAway, wrapped in the error a Handler passes to ready, says the
// stream was not taken because this host is stopping or handing over to a
// new process: the client is told to open it again on a new connection
// (which reaches the new process, or fails over) instead of a refusal.
var ErrGoingAway = errors.New("link server going away")

// ErrNoIdentity is returned by a dial or a handshake when no certificate is
// loaded.
var ErrNoIdentity = errors.New("link: no certificate loaded")
