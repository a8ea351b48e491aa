// Package config turns the three ways an operator describes attache's work
// (Docker link variables, command-line forwards and a YAML file) into one
// validated routing table.
//
// Typical usage:
//
//	cfg, err := config.Load(config.Sources{File: "attache.yaml", Env: os.Environ(), Forwards: fwds})
//	if err != nil { /* err lists every problem, each naming its input */ }
//
// Parsing and validation are separate steps: each parser reports what is wrong
// with its own input (file:line: key, or the variable's name), then Validate
// checks what only the whole table can show, such as two services on one port.
package config

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Config is the effective configuration: every service attache forwards,
// with defaults already applied.
type Config struct {
	Services []Service
	// Discovery holds how to reach each source of truth that backend entries
	// of kind dns, srv, etcd, consul and docker ask.
	Discovery Discovery
	// Link configures the mutual-TLS links between attache hosts (see
	// link.go); zero when the file has no link section.
	Link Link
	// Transparent is the listener for connections redirected by iptables
	// (see transparent.go); zero when off.
	Transparent Transparent
	// Warnings are things the operator should know about but that do not stop
	// attache, such as SCTP link variables, which are recognised but not
	// forwarded.
	Warnings []string
}

// Service is one listener and the backends its connections are forwarded to.
type Service struct {
	// Name identifies the service in logs and, later, in metrics and the admin
	// API. Names are unique.
	Name string
	// Listen is the host:port the service accepts connections on. An empty
	// host means every interface.
	Listen string
	// Backends are tried in round-robin order; a failed dial moves on to the
	// next backend before the client sees an error.
	Backends []Backend
	// ConnectTimeout bounds one dial to one backend.
	ConnectTimeout time.Duration
	// IdleTimeout closes a connection on which no byte moved in either
	// direction for this long. Zero disables it.
	IdleTimeout time.Duration
	// KeepAlive is the TCP keepalive period on both sides. Negative disables it.
	KeepAlive time.Duration
	// MaxConnections caps the connections open at once on this listener; when
	// it is reached attache stops accepting until one closes. Zero is no limit.
	// (Before Load applies the defaults, -1 means "no limit, set explicitly",
	// so that max_connections: 0 on a service beats a default cap.)
	MaxConnections int
	// Balance names the balancing policy (see balance.Names); "" is
	// round_robin, or first when a backend is an SRV query (SRV priorities
	// are failover tiers).
	Balance string
	// HealthCheck, when set, probes every backend actively; nil means only
	// passive health (dial failures eject a backend for a while).
	HealthCheck *HealthCheck
	// Retries is how many other backends a connection tries after a failed
	// dial before the client sees an error; -1 (explicit 0) means none.
	Retries int
	// RetryTimeout bounds the whole search for a backend, including waiting
	// for one to appear or recover when none is usable.
	RetryTimeout time.Duration
	// EjectTime is how long a backend that failed a dial is kept out of
	// rotation at first; it doubles with each further failure, up to 30
	// times as long. Negative turns passive health off.
	EjectTime time.Duration
	// CloseOnRemove closes the connections open to a backend when it leaves
	// the service or fails its health check. Off by default: a connection
	// that still works is left alone.
	CloseOnRemove bool
	// AcceptProxy, when set, reads a PROXY protocol header at the start of
	// each connection: the listener is behind another load balancer.
	AcceptProxy *AcceptProxy
	// SendProxy is the PROXY protocol version sent to every backend before
	// the client's bytes, unless the backend sets its own: 1, 2, or 0 for
	// none (see SendProxyVersion).
	SendProxy int
	// Protocol is "" (TCP) or ProtoUDP; see udp.go.
	Protocol string
	// UDPIdleTimeout ends a UDP session after this long without a datagram
	// either way; MaxSessions bounds a UDP service's session table. Both
	// are zero for a TCP service.
	UDPIdleTimeout time.Duration
	MaxSessions    int
	// Origin says where the service came from, for error messages and
	// `attache check`: "env REDIS_PORT_6379_TCP", "--forward 6379=h:p",
	// "attache.yaml:12".
	Origin string
}

// Backend is one address a service forwards to.
type Backend struct {
	// Addr is host:port. Hostnames are resolved at each new connection, never
	// once at start-up, so a DNS change takes effect without a restart.
	// Empty when Discover is set.
	Addr string
	// Weight biases the weighted and least_conn policies; 0 means 1.
	Weight int
	// SendProxy overrides the service's send_proxy for this backend: 1,
	// 2, -1 for none, or 0 to follow the service.
	SendProxy int
	// Discover, when set, makes this entry a live query instead of an
	// address.
	Discover *Discover
	// Link, when set, names a service on a remote attache: Addr (or each
	// endpoint Discover finds) is that host's link server, dialled over
	// mutual TLS (attache://host:port/service).
	Link string
}

// HealthCheck is an active health check. Without Send it only connects.
type HealthCheck struct {
	Interval time.Duration
	Timeout  time.Duration
	// Rise successes in a row mark a down backend up; Fall failures in a row
	// mark an up backend down.
	Rise, Fall int
	// Send is written after connecting; Expect must then appear in the reply.
	Send, Expect string
}

// DefaultHealthCheck fills what a health_check block leaves out.
var DefaultHealthCheck = HealthCheck{Interval: 5 * time.Second, Timeout: 2 * time.Second, Rise: 2, Fall: 3}

// Defaults are the per-service settings applied where a source says nothing.
// A zero field is not set; a negative one is set to "off" (durations) or "no
// limit" (MaxConnections), so that it beats a lower-priority default.
type Defaults struct {
	Retries        int
	RetryTimeout   time.Duration
	EjectTime      time.Duration
	ConnectTimeout time.Duration
	IdleTimeout    time.Duration
	KeepAlive      time.Duration
	MaxConnections int
	// UDPIdleTimeout and MaxSessions apply to UDP services only.
	UDPIdleTimeout time.Duration
	MaxSessions    int
}

// BuiltinDefaults are used when neither flags nor the file set a default.
var BuiltinDefaults = Defaults{
	Retries:        3,
	EjectTime:      time.Second,
	ConnectTimeout: 5 * time.Second,
	IdleTimeout:    0,
	KeepAlive:      30 * time.Second,
	MaxConnections: 0,
}

func (d Defaults) apply(s *Service) {
	if s.ConnectTimeout == 0 {
		s.ConnectTimeout = d.ConnectTimeout
	}
	if s.IdleTimeout == 0 {
		s.IdleTimeout = d.IdleTimeout
	}
	if s.KeepAlive == 0 {
		s.KeepAlive = d.KeepAlive
	}
	if s.MaxConnections == 0 {
		s.MaxConnections = d.MaxConnections
	}
	if s.Retries == 0 {
		s.Retries = d.Retries
	}
	if s.RetryTimeout == 0 {
		s.RetryTimeout = d.RetryTimeout
	}
	if s.EjectTime == 0 {
		s.EjectTime = d.EjectTime
	}
}

// ParseHostPort checks a backend address: host:port with a non-empty host
// (a hostname, an IPv4 address or a bracketed IPv6 literal) and a port in
// 1-65535. It returns the address in canonical form: IP literals as
// net/netip prints them (lower case, shortest IPv6 form), the port without
// leading zeros. Parsing a canonical address returns it unchanged.
func ParseHostPort(s string) (string, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "", fmt.Errorf("want host:port (IPv6 in brackets), got %q", s)
	}
	if host == "" {
		return "", fmt.Errorf("want host:port with a host, got %q", s)
	}
	host, err = canonicalHost(host)
	if err != nil {
		return "", err
	}
	p, err := ParsePort(port)
	if err != nil {
		return "", err
	}
	return net.JoinHostPort(host, strconv.Itoa(p)), nil
}

// ParseListen checks a listen address: PORT, :PORT, HOST:PORT,
// [IPv6]:PORT, or a Unix socket as unix:///path. A bare port listens on every interface; port 0 picks a free
// port, which the log reports. It returns the address in canonical form
// (":PORT" for a bare port), which it accepts unchanged.
func ParseListen(s string) (string, error) {
	if s == "" {
		return "", fmt.Errorf("want [host:]port, got an empty value")
	}
	if strings.HasPrefix(s, unixScheme) {
		return ParseUnixAddr(s)
	}
	if !strings.Contains(s, ":") {
		p, err := parseListenPort(s)
		if err != nil {
			return "", err
		}
		return ":" + strconv.Itoa(p), nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "", fmt.Errorf("want [host:]port (IPv6 in brackets), got %q", s)
	}
	if host != "" {
		if host, err = canonicalHost(host); err != nil {
			return "", err
		}
	}
	p, err := parseListenPort(port)
	if err != nil {
		return "", err
	}
	return net.JoinHostPort(host, strconv.Itoa(p)), nil
}

func parseListenPort(s string) (int, error) {
	if s == "0" {
		return 0, nil
	}
	p, err := ParsePort(s)
	if err != nil {
		return 0, fmt.Errorf("want a port number 0-65535 (0: any free port), got %q", s)
	}
	return p, nil
}

// ParsePort accepts a decimal port number in 1-65535.
func ParsePort(s string) (int, error) {
	if s == "" {
		return 0, fmt.Errorf("want a port number 1-65535, got an empty value")
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("want a port number 1-65535, got %q", s)
		}
	}
	p, err := strconv.Atoi(s)
	if err != nil || p < 1 || p > 65535 {
		return 0, fmt.Errorf("want a port number 1-65535, got %q", s)
	}
	return p, nil
}

// canonicalHost accepts an IP literal (IPv6 with an optional zone naming an
// interface, fe80::1%eth0) or a DNS hostname (RFC 1123 labels, with
// underscores tolerated because Docker and Compose names use them), and
// returns it in canonical form.
//
// A dotted name made only of digits (192.168.1.520, 10.0.1) is rejected: it
// is a mistyped IPv4 address, and a resolver would either fail on it at the
// first connection or, through inet_aton, quietly dial some other address.
func canonicalHost(h string) (string, error) {
	if ip, err := netip.ParseAddr(h); err == nil {
		if zone := ip.Zone(); zone != "" && !isZone(zone) {
			return "", fmt.Errorf("want an interface name after %% in %q", h)
		}
		return ip.String(), nil
	}
	if strings.Contains(h, ":") || strings.Contains(h, "%") {
		return "", fmt.Errorf("want a host name or IP address, got %q", h)
	}
	if len(h) > 253 {
		return "", fmt.Errorf("host name %q is longer than 253 characters", h)
	}
	if strings.Trim(h, "0123456789.") == "" && strings.Contains(h, ".") {
		return "", fmt.Errorf("want a host name or IP address, got %q, which is not a valid IPv4 address", h)
	}
	for label := range strings.SplitSeq(strings.TrimSuffix(h, "."), ".") {
		if label == "" || len(label) > 63 {
			return "", fmt.Errorf("want a host name or IP address, got %q", h)
		}
		for i, c := range label {
			ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' ||
				c == '-' && i > 0 && i < len(label)-1
			if !ok {
				return "", fmt.Errorf("want a host name or IP address, got %q", h)
			}
		}
	}
	return h, nil
}

// isZone accepts what an interface name can be: letters, digits, '.', '_'
// and '-', or an interface index.
func isZone(z string) bool {
	for _, c := range z {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return len(z) <= 64
}
