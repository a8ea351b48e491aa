package config

import (
	"fmt"
	"net"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Transparent is attache's transparent listener: it accepts connections
// that iptables redirected to it (see `attache iptables`), reads where each
// was going (its original destination) and serves it as the service of
// that port would. Zero when off.
//
//	transparent:
//	  listen: ":10000"
//	  per_consumer: true   # BACKEND_<port> of the calling container first
//	  tproxy: true         # TPROXY rules (attache iptables --tproxy), not REDIRECT
//
// Selection: a TCP service whose listen port is the original destination
// port serves the connection; if several services share that port (on
// different hosts), the one whose listen host is the original address
// wins, then one on every interface, then the first in the file. A
// connection that selects no service, or that was not redirected at all,
// is refused and counted.
type Transparent struct {
	// Listen is the transparent listener's [host:]port.
	Listen string
	// PerConsumer, when set, asks the Docker engine (discovery.docker.host)
	// which container each redirected connection comes from: its
	// BACKEND_<port> variable, or its attache.connect.<port> label, names
	// the backends for that port (any form a service's backends take,
	// comma-separated: see ConsumerService), before the port's service is
	// considered.
	PerConsumer bool
	// TProxy, when set, takes connections that iptables TPROXY rules
	// (`attache iptables --tproxy`) delivered instead of REDIRECT ones: the
	// listener sets IP_TRANSPARENT (which needs CAP_NET_ADMIN) and a
	// connection's original destination is its own local address.
	TProxy bool
	// Origin is "attache.yaml:3" or "--transparent".
	Origin string
}

// Enabled reports whether a transparent listener is configured.
func (t Transparent) Enabled() bool { return t.Listen != "" }

// ParseTransparentListen checks a transparent listen address: TCP only.
func ParseTransparentListen(s string) (string, error) {
	addr, err := ParseListen(s)
	if err != nil {
		return "", err
	}
	if _, unix := UnixPath(addr); unix {
		return "", fmt.Errorf("want [host:]port (redirected connections are TCP), got %q", s)
	}
	if _, port, _ := net.SplitHostPort(addr); port == "0" {
		return "", fmt.Errorf("want a fixed port (the iptables rules name it), got %q", s)
	}
	return addr, nil
}

func (p *fileParser) transparent(n *yaml.Node) Transparent {
	t := Transparent{Origin: fmt.Sprintf("%s:%d", p.name, n.Line)}
	p.fields(n, "transparent", map[string]func(*yaml.Node){
		"listen": func(v *yaml.Node) {
			s, ok := p.scalar(v, "listen")
			if !ok {
				return
			}
			addr, err := ParseTransparentListen(s)
			if err != nil {
				p.errorf(v, "listen", "%v", err)
				return
			}
			t.Listen = addr
		},
		"per_consumer": func(v *yaml.Node) { t.PerConsumer = p.boolean(v, "per_consumer") },
		"tproxy":       func(v *yaml.Node) { t.TProxy = p.boolean(v, "tproxy") },
	})
	if n = deref(n); n.Kind == yaml.MappingNode && !hasKey(n, "listen") {
		p.errorf(n, "transparent", "want listen: [host:]port")
	}
	return t
}

// validateTransparent refuses a transparent listener on a TCP service's
// port: a redirected connection to that port would then be its own
// service's.
func validateTransparent(cfg *Config) Errors {
	t := cfg.Transparent
	if !t.Enabled() {
		return nil
	}
	host, portStr, _ := net.SplitHostPort(t.Listen)
	for _, s := range cfg.Services {
		if s.IsUDP() {
			continue
		}
		sh, sp, err := net.SplitHostPort(s.Listen)
		if err != nil || sp != portStr {
			continue
		}
		if sh == host || isWildcard(sh) || isWildcard(host) {
			return Errors{fmt.Errorf("%s and %s: transparent listener and service %q both listen on port %s",
				t.Origin, s.Origin, s.Name, portStr)}
		}
	}
	return nil
}

// SelectTransparent picks the service that serves a redirected connection
// to addr:port among services (see Transparent), or -1 for none.
func SelectTransparent(services []Service, addr string, port int) int {
	ps := strconv.Itoa(port)
	wildcard, first := -1, -1
	for i, s := range services {
		if s.IsUDP() {
			continue
		}
		h, p, err := net.SplitHostPort(s.Listen)
		if err != nil || p != ps {
			continue
		}
		switch {
		case h == addr:
			return i
		case isWildcard(h) && wildcard < 0:
			wildcard = i
		case first < 0:
			first = i
		}
	}
	if wildcard >= 0 {
		return wildcard
	}
	return first
}

// ConsumerForms are the backend forms a consumer's value may use, as its
// error messages list them.
const ConsumerForms = "a comma-separated list of host:port, srv://name (or a bare SRV name), dns://name:port, " +
	"etcd://host:port/key, consul://[host:port]/key, consul-service://[host:port]/name, docker://label-value " +
	"or attache://host:port/service"

// ConsumerService is the service that serves a consumer's own choice of
// backends in transparent mode: value, its BACKEND_<port> variable or
// attache.connect.<port> label, lists backends in any form ParseBackend
// reads, separated by commas, and they are checked as a file's backends
// are (no backend twice, etcd:// needs its server, links need the link
// section of cfg). The service takes the settings of base, the service of
// the port (balancing, health checks, retries, timeouts, PROXY protocol),
// or the built-in defaults when base is nil; its name is name and it
// listens nowhere: the transparent listener hands it its connections.
// cfg gives the discovery and link sections.
func ConsumerService(name, value string, base *Service, cfg *Config) (Service, error) {
	var s Service
	if base != nil {
		s = *base
	} else {
		BuiltinDefaults.apply(&s)
		s.RetryTimeout = s.ConnectTimeout
		s.Balance = "round_robin"
	}
	s.Name, s.Listen, s.Origin, s.Backends = name, "", "consumer", nil
	for v := range strings.SplitSeq(value, ",") {
		b, err := ParseBackend(strings.TrimSpace(v))
		if err != nil {
			return Service{}, fmt.Errorf("want %s: %w", ConsumerForms, err)
		}
		s.Backends = append(s.Backends, b)
	}
	errs := checkService(&s, cfg.Discovery.Etcd.Endpoints)
	errs = append(errs, checkLinkBackends(s, cfg.Link)...)
	if len(errs) > 0 {
		return Service{}, errs
	}
	return s, nil
}
