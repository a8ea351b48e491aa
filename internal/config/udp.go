package config

import (
	"fmt"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Protocols a service forwards. A service is TCP unless it says udp:
//
//	services:
//	  - name: dns
//	    protocol: udp
//	    listen: 53
//	    backends: [10.0.0.2:53, 10.0.0.3:53]
//	    udp_idle_timeout: 10s   # sessions end after this long without a datagram (default 60s)
//	    max_sessions: 10000     # the session table's bound (the default)
//	    health_check: {send: "ping", expect: "pong"}  # a datagram out, a reply back
//
// A UDP service keeps a session per client address: a socket of its own to
// the backend picked for that client, so replies go back to the right
// client. Sessions end after udp_idle_timeout without a datagram either way;
// when max_sessions are open, datagrams from new clients are dropped (and
// counted) until some expire, while the open sessions carry on.
//
// A TCP and a UDP service may listen on the same port. Settings that only
// mean something for TCP (keepalive, max_connections, idle_timeout,
// close_on_remove, accept_proxy, send_proxy) are errors on a UDP service,
// and the UDP ones (udp_idle_timeout, max_sessions) on a TCP service; both
// kinds may be set in the defaults block, where each applies to its own.
const (
	ProtoTCP = "tcp"
	ProtoUDP = "udp"
)

// Defaults of the UDP settings, applied by Load to UDP services.
const (
	DefaultUDPIdleTimeout = 60 * time.Second
	DefaultMaxSessions    = 10000
)

// IsUDP reports whether the service forwards UDP.
func (s *Service) IsUDP() bool { return s.Protocol == ProtoUDP }

// ProtocolName is the service's protocol as `attache check` prints it.
func (s *Service) ProtocolName() string {
	if s.Protocol == "" {
		return ProtoTCP
	}
	return s.Protocol
}

func (p *fileParser) protocol(v *yaml.Node) string {
	s, ok := p.scalar(v, "protocol")
	if !ok {
		return ""
	}
	switch strings.ToLower(s) {
	case ProtoTCP:
		return "" // the default, so a TCP service looks the same however written
	case ProtoUDP:
		return ProtoUDP
	}
	p.errorf(v, "protocol", "want tcp or udp, got %q", s)
	return ""
}

// tcpOnlyKeys are the service keys that mean nothing for UDP, with what to
// say instead.
var tcpOnlyKeys = map[string]string{
	"keepalive":       "UDP has no keepalive",
	"max_connections": "use max_sessions to bound a udp service",
	"idle_timeout":    "a udp service's sessions end after udp_idle_timeout",
	"close_on_remove": "udp sessions always move off a removed or failed backend at their next datagram",
	"accept_proxy":    "the PROXY protocol is read on TCP connections only",
	"send_proxy":      "the PROXY protocol is sent on TCP connections only",
}

// checkProtocolKeys reports the keys of service mapping sn that do not fit
// its protocol, each at its own line, in file order.
func (p *fileParser) checkProtocolKeys(sn *yaml.Node, s *Service) {
	for i := 0; i+1 < len(sn.Content); i += 2 {
		k := sn.Content[i]
		switch key := k.Value; {
		case !s.IsUDP():
			if key == "udp_idle_timeout" || key == "max_sessions" {
				p.errorf(k, key, "only a udp service takes %s (add protocol: udp, or remove it)", key)
			}
		case tcpOnlyKeys[key] != "":
			p.errorf(k, key, "not for a udp service: %s", tcpOnlyKeys[key])
		case key == "health_check" && s.HealthCheck != nil && s.HealthCheck.Send == "":
			p.errorf(k, key, "%s", udpCheckNeedsSend)
		case key == "backends":
			for _, b := range s.Backends {
				if msg := udpBackendProblem(b); msg != "" {
					p.errorf(k, key, "%s", msg)
				}
			}
		case key == "listen":
			if _, unix := UnixPath(s.Listen); unix {
				p.errorf(k, key, "%s", udpUnixListen)
			}
		}
	}
}

const (
	udpCheckNeedsSend = "a udp service's check sends a datagram and waits for the reply: want {send: ..., expect: ...} (UDP has no connection to open, so there is no connect-only check)"
	udpUnixListen     = "a udp service listens on host:port, not on a Unix socket"
)

// udpBackendProblem says why b cannot be a UDP service's backend, or "".
func udpBackendProblem(b Backend) string {
	switch {
	case b.Link != "":
		return fmt.Sprintf("backend %s: attache:// links are mutual-TLS TCP streams; a udp service cannot use one", b)
	case b.SendProxy != 0:
		return fmt.Sprintf("backend %s: the PROXY protocol is sent on TCP connections only", b)
	}
	if _, unix := UnixPath(b.Addr); unix {
		return fmt.Sprintf("backend %s: a udp service forwards to host:port, not to a Unix socket", b)
	}
	return ""
}

// checkUDP checks a service's protocol and, for UDP, what only TCP has, for
// Validate (the file parser reports the same at each key's line).
func checkUDP(s *Service) Errors {
	var errs Errors
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: service %q: %s", s.Origin, s.Name, fmt.Sprintf(format, args...)))
	}
	switch s.Protocol {
	case "", ProtoTCP:
		if s.MaxSessions != 0 || s.UDPIdleTimeout != 0 {
			bad("max_sessions and udp_idle_timeout are for udp services only")
		}
		return errs
	case ProtoUDP:
	default:
		bad("protocol %q: want tcp or udp", s.Protocol)
		return errs
	}
	if _, unix := UnixPath(s.Listen); unix {
		bad("listen: %s", udpUnixListen)
	}
	for _, b := range s.Backends {
		if msg := udpBackendProblem(b); msg != "" {
			bad("%s", msg)
		}
	}
	if s.AcceptProxy != nil || s.SendProxy != 0 {
		bad("the PROXY protocol is for TCP services only")
	}
	if s.HealthCheck != nil && s.HealthCheck.Send == "" {
		bad("health_check: %s", udpCheckNeedsSend)
	}
	if s.MaxSessions < 0 || s.UDPIdleTimeout < 0 {
		bad("max_sessions and udp_idle_timeout must be positive")
	}
	return errs
}

// applyUDP finishes a UDP service after the defaults: its own settings
// take the defaults' UDP values, or the built-in ones, and the TCP-only
// ones are cleared, so `attache check` and the daemon see only what
// applies. It does nothing to a TCP service.
func applyUDP(s *Service, d Defaults) {
	if !s.IsUDP() {
		return
	}
	if s.UDPIdleTimeout == 0 {
		s.UDPIdleTimeout = d.UDPIdleTimeout
	}
	if s.UDPIdleTimeout == 0 {
		s.UDPIdleTimeout = DefaultUDPIdleTimeout
	}
	if s.MaxSessions == 0 {
		s.MaxSessions = d.MaxSessions
	}
	if s.MaxSessions == 0 {
		s.MaxSessions = DefaultMaxSessions
	}
	s.KeepAlive, s.MaxConnections, s.IdleTimeout, s.CloseOnRemove = 0, 0, 0, false
}

// cutProtocol splits a --forward listen side written Docker's way,
// LISTEN/udp or LISTEN/tcp, and reports whether it had such a suffix. The
// suffix (rather than a udp: prefix) keeps HOST:PORT unambiguous: a listen
// host may be called udp.
func cutProtocol(listen string) (string, string, bool) {
	i := strings.LastIndexByte(listen, '/')
	if i < 0 || strings.HasPrefix(listen, unixScheme) {
		return listen, "", false
	}
	switch strings.ToLower(listen[i+1:]) {
	case ProtoUDP:
		return listen[:i], ProtoUDP, true
	case ProtoTCP:
		return listen[:i], "", true
	}
	return listen, "", false
}

// parseProtocolForward parses a --forward value whose listen side ends in
// /udp or /tcp, and reports whether it had one.
func parseProtocolForward(v string) (Service, bool, error) {
	listen, target, ok := strings.Cut(v, "=")
	if !ok {
		return Service{}, false, nil
	}
	l, proto, ok := cutProtocol(listen)
	if !ok {
		return Service{}, false, nil
	}
	if _, _, again := cutProtocol(l); again {
		return Service{}, true, fmt.Errorf("listen side: want one /udp or /tcp after the port, got %q", listen)
	}
	s, err := ParseForward(l + "=" + target)
	if err != nil {
		return Service{}, true, err
	}
	s.Origin = "--forward " + v
	if proto == ProtoUDP {
		s.Protocol = ProtoUDP
		s.Name += "-udp"
		for _, b := range s.Backends {
			if msg := udpBackendProblem(b); msg != "" {
				return Service{}, true, fmt.Errorf("target side: %s", msg)
			}
		}
	}
	return s, true, nil
}

// listenKey is what two services clash on: the protocol and the port.
type listenKey struct {
	udp  bool
	port int
}

// protoNote marks a UDP service's listen address in a clash message.
func protoNote(s *Service) string {
	if s.IsUDP() {
		return "/udp"
	}
	return ""
}
