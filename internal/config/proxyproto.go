package config

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// AcceptProxy makes a listener read the PROXY protocol header (v1 or v2)
// that a load balancer in front of attache sends at the start of each
// connection, so the real client address is the one logged, balanced on
// (source_hash) and sent onward.
//
//	accept_proxy:
//	  trusted: [10.0.0.0/8, 192.168.1.10]  # the load balancers' addresses
//	  required: true                       # the default
//	  timeout: 5s                          # the default
type AcceptProxy struct {
	// Trusted are the ranges the load balancers connect from; only their
	// headers are believed. A Unix socket listener needs none: the
	// socket file's permissions decide who connects.
	Trusted []netip.Prefix
	// Required (the default) closes, with a log line, every connection
	// that does not start with a valid header or comes from outside
	// Trusted. Off, the header is optional from trusted peers and not
	// looked for from others.
	Required bool
	// Timeout bounds the wait for the header.
	Timeout time.Duration
}

// DefaultProxyHeaderTimeout is AcceptProxy.Timeout when the file sets none.
const DefaultProxyHeaderTimeout = 5 * time.Second

// SendProxyVersion is the PROXY protocol version attache sends to backend b
// of s before the client's bytes: 1, 2, or 0 for none. A backend's own
// send_proxy beats the service's.
func (s *Service) SendProxyVersion(b Backend) int {
	v := s.SendProxy
	if b.SendProxy != 0 {
		v = b.SendProxy
	}
	return max(v, 0)
}

// ParseProxyVersion reads a send_proxy value: v1, v2, or off (returned as
// -1, so a backend's off beats its service's version).
func ParseProxyVersion(s string) (int, error) {
	switch strings.ToLower(s) {
	case "v1":
		return 1, nil
	case "v2":
		return 2, nil
	case "off":
		return -1, nil
	}
	return 0, fmt.Errorf("want v1, v2 or off, got %q", s)
}

func (p *fileParser) sendProxy(v *yaml.Node) int {
	s, ok := p.scalar(v, "send_proxy")
	if !ok {
		return 0
	}
	n, err := ParseProxyVersion(s)
	if err != nil {
		p.errorf(v, "send_proxy", "%v", err)
	}
	return n
}

func (p *fileParser) acceptProxy(v *yaml.Node) *AcceptProxy {
	a := &AcceptProxy{Required: true, Timeout: DefaultProxyHeaderTimeout}
	p.fields(v, "accept_proxy", map[string]func(*yaml.Node){
		"trusted":  func(n *yaml.Node) { a.Trusted = p.prefixes(n, "trusted") },
		"required": func(n *yaml.Node) { a.Required = p.boolean(n, "required") },
		"timeout":  func(n *yaml.Node) { a.Timeout = p.duration(n, "timeout", false) },
	})
	return a
}

// prefixes reads a list of CIDR ranges; a bare address is a range of one.
func (p *fileParser) prefixes(v *yaml.Node, key string) []netip.Prefix {
	v = deref(v)
	if v.Kind != yaml.SequenceNode {
		p.errorf(v, key, "want a list of address ranges such as [10.0.0.0/8, \"2001:db8::/32\"], got %s", describe(v))
		return nil
	}
	var out []netip.Prefix
	for _, n := range v.Content {
		s, ok := p.scalar(n, key)
		if !ok {
			continue
		}
		pr, err := ParsePrefix(s)
		if err != nil {
			p.errorf(n, key, "%v", err)
			continue
		}
		out = append(out, pr)
	}
	return out
}

// ParsePrefix reads an address range, 10.0.0.0/8 or 2001:db8::/32, or a
// single address (a /32 or /128). Host bits must be zero: 10.0.0.1/8 is
// more likely a typo than a range.
func ParsePrefix(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("want an address range such as 10.0.0.0/8 or an IP address, got %q", s)
		}
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	pr, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("want an address range such as 10.0.0.0/8 or 2001:db8::/32, got %q", s)
	}
	if m := pr.Masked(); m != pr {
		return netip.Prefix{}, fmt.Errorf("range %q has host bits set; want %s", s, m)
	}
	return pr, nil
}

// checkProxy checks a service's PROXY protocol settings, for Validate.
func checkProxy(s *Service) Errors {
	var errs Errors
	bad := func(v int) bool { return v < -1 || v > 2 }
	if bad(s.SendProxy) {
		errs = append(errs, fmt.Errorf("%s: service %q: send_proxy %d: want 1, 2, or -1 for off", s.Origin, s.Name, s.SendProxy))
	}
	for _, b := range s.Backends {
		if bad(b.SendProxy) {
			errs = append(errs, fmt.Errorf("%s: service %q: backend %s: send_proxy %d: want 1, 2, or -1 for off", s.Origin, s.Name, b, b.SendProxy))
		}
		if b.SendProxy != 0 && b.Discover != nil {
			errs = append(errs, fmt.Errorf("%s: service %q: backend %s: only a fixed address takes its own send_proxy; discovered backends follow the service's",
				s.Origin, s.Name, b))
		}
	}
	if a := s.AcceptProxy; a != nil {
		if _, unix := UnixPath(s.Listen); len(a.Trusted) == 0 && !unix {
			errs = append(errs, fmt.Errorf("%s: service %q: accept_proxy: trusted: want the address ranges the load balancers connect from (0.0.0.0/0 and ::/0 trust everyone)",
				s.Origin, s.Name))
		}
		if a.Timeout <= 0 {
			errs = append(errs, fmt.Errorf("%s: service %q: accept_proxy: timeout: want a duration greater than zero", s.Origin, s.Name))
		}
	}
	return errs
}
