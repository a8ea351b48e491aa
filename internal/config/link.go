package config

import (
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Link configures the links between attache hosts: mutual TLS on one port
// per host. A host that only dials links (attache:// backends) needs Cert,
// Key and CA; a link server also needs Listen and the services it Offers.
//
//	link:
//	  listen: 0.0.0.0:7443            # serve the link here (omit on hosts that only dial)
//	  cert: /etc/attache/host-b.crt   # this host's certificate (attache certs issue host-b)
//	  key: /etc/attache/host-b.key
//	  ca: /etc/attache/fleet-ca.crt   # peers must be signed by it
//	  handshake_timeout: 10s
//	  offer:                          # services reachable over the link, and who may reach each
//	    redis: [host-a, host-c]       # certificate names (CN or DNS SAN); "*" is every fleet member
//	    postgres: {allow: ["*"]}
//	  register:                       # announce the offered services in etcd (discovery.etcd.endpoints)
//	    advertise: 10.0.0.2:7443      # the address peers dial
//	    prefix: /attache/links        # keys are <prefix>/<service>/<advertise>
//	    ttl: 10s                      # the lease: the keys vanish this long after the host dies
type Link struct {
	// Listen is the link server's host:port; "" means no link server.
	Listen string
	// Cert, Key and CA are PEM files: this host's certificate and key, and
	// the CA peers must be signed by. They are reloaded when they change.
	Cert, Key, CA string
	// HandshakeTimeout bounds a link server's handshakes; 0 is the default.
	HandshakeTimeout time.Duration
	// Mode is how this host's attache:// backends carry their connections:
	// LinkMultiplexed (the default: streams on a few pooled connections
	// per link server) or LinkPerConnection (a TLS connection each).
	Mode string
	// Offer are the services the link server routes to, each with its
	// allow list.
	Offer []LinkOffer
	// Register, when set, announces the offered services in etcd.
	Register *LinkRegister
	// Origin is where the link block is ("attache.yaml:3"), for errors.
	Origin string
}

// Link modes.
const (
	LinkMultiplexed   = "multiplexed"
	LinkPerConnection = "per_connection"
)

// LinkOffer is one service offered on the link server.
type LinkOffer struct {
	// Service is the name of a service of this configuration.
	Service string
	// Allow are the certificate names (CN or DNS SAN) of the peers that may
	// reach it; "*" admits every certificate the CA signed.
	Allow  []string
	Origin string
}

// LinkRegister announces a link server's services in etcd.
type LinkRegister struct {
	// Advertise is the host:port peers dial to reach this link server.
	Advertise string
	// Prefix is the etcd key prefix; each offered service is announced
	// under <Prefix>/<service>/<Advertise>, with Advertise as the value.
	Prefix string
	// TTL is the lease's time to live: the keys disappear this long after
	// the link server stops renewing them.
	TTL time.Duration
}

// Enabled reports whether the file has a link section.
func (l Link) Enabled() bool { return l.Origin != "" }

// DefaultLinkPrefix is where link servers register and where
// attache://etcd/<service> looks.
const DefaultLinkPrefix = "/attache/links"

// DefaultLinkRegisterTTL is the registration lease's default TTL.
const DefaultLinkRegisterTTL = 10 * time.Second

// linkScheme is the backend URL scheme of a service reached over a link.
const linkScheme = "attache"

// linkEtcd is the authority of attache://etcd/<service>.
const linkEtcd = "etcd"

// linkString prints a link backend as ParseBackend reads it back where a
// URL form exists: attache://host:port/svc, attache://srv-name/svc and
// attache://etcd/svc; other discovered link servers print as their entry
// followed by "via link svc".
func (b Backend) linkString() string {
	s := ""
	switch d := b.Discover; {
	case d == nil:
		s = linkScheme + "://" + b.Addr + "/" + b.Link
		if b.Weight > 1 {
			s += fmt.Sprintf(" (weight %d)", b.Weight)
		}
	case d.Kind == KindSRV:
		s = linkScheme + "://" + d.Name + "/" + b.Link
	case d.Kind == KindEtcd && d.Server == "" && d.Name == DefaultLinkPrefix+"/"+b.Link:
		s = linkScheme + "://" + linkEtcd + "/" + b.Link
	default:
		s = d.String() + " via link " + b.Link
	}
	return s
}

// parseLinkURL reads attache://<host:port | srv-name | etcd>/<service>.
func parseLinkURL(rest, whole string) (Backend, error) {
	const form = "attache://host:port/service, attache://srv-name/service or attache://etcd/service"
	authority, service, ok := strings.Cut(rest, "/")
	if !ok || service == "" {
		return Backend{}, fmt.Errorf("want %s, got %q: the service is missing", form, whole)
	}
	if err := checkLinkService(service); err != nil {
		return Backend{}, fmt.Errorf("want %s, got %q: %w", form, whole, err)
	}
	switch {
	case authority == "":
		return Backend{}, fmt.Errorf("want %s, got %q: the link server is missing", form, whole)
	case strings.EqualFold(authority, linkEtcd):
		return Backend{Link: service, Discover: &Discover{Kind: KindEtcd, Name: DefaultLinkPrefix + "/" + service}}, nil
	case strings.Contains(authority, ":"):
		addr, err := ParseHostPort(authority)
		if err != nil {
			return Backend{}, fmt.Errorf("want %s, got %q: %w", form, whole, err)
		}
		return Backend{Link: service, Addr: addr}, nil
	}
	if isNumeric(authority) {
		return Backend{}, fmt.Errorf("want %s, got %q: an IP address needs the link port", form, whole)
	}
	name, err := dnsName(authority)
	if err != nil {
		return Backend{}, fmt.Errorf("want %s, got %q: %w", form, whole, err)
	}
	return Backend{Link: service, Discover: &Discover{Kind: KindSRV, Name: name}}, nil
}

// checkLinkService accepts the name of a service on a remote link server:
// a service name, as the remote configuration has it.
func checkLinkService(s string) error {
	if !serviceNameRE.MatchString(s) {
		return fmt.Errorf("want a service name (letters, digits, '.', '_' or '-', at most 63, starting with a letter or digit), got %q", s)
	}
	return nil
}

func (p *fileParser) link(n *yaml.Node) Link {
	l := Link{Origin: fmt.Sprintf("%s:%d", p.name, n.Line)}
	file := func(key string) func(*yaml.Node) {
		return func(v *yaml.Node) {
			s, ok := p.scalar(v, key)
			if !ok {
				return
			}
			if s == "" || checkText(s) != nil {
				p.errorf(v, key, "want the path of a PEM file, got %q", s)
				return
			}
			switch key {
			case "cert":
				l.Cert = s
			case "key":
				l.Key = s
			case "ca":
				l.CA = s
			}
		}
	}
	p.fields(n, "link", map[string]func(*yaml.Node){
		"listen": func(v *yaml.Node) {
			if s, ok := p.scalar(v, "listen"); ok {
				addr, err := ParseListen(s)
				if err == nil {
					if _, unix := UnixPath(addr); unix {
						err = fmt.Errorf("want [host:]port (the link is TCP), got %q", s)
					}
				}
				if err != nil {
					p.errorf(v, "listen", "%v", err)
					return
				}
				l.Listen = addr
			}
		},
		"cert":              file("cert"),
		"key":               file("key"),
		"ca":                file("ca"),
		"handshake_timeout": func(v *yaml.Node) { l.HandshakeTimeout = p.duration(v, "handshake_timeout", false) },
		"mode": func(v *yaml.Node) {
			if s, ok := p.scalar(v, "mode"); ok {
				if s != LinkMultiplexed && s != LinkPerConnection {
					p.errorf(v, "mode", "want %s or %s, got %q", LinkMultiplexed, LinkPerConnection, s)
					return
				}
				l.Mode = s
			}
		},
		"offer":    func(v *yaml.Node) { l.Offer = p.linkOffers(v) },
		"register": func(v *yaml.Node) { l.Register = p.linkRegister(v) },
	})
	n = deref(n)
	if n.Kind != yaml.MappingNode {
		return l
	}
	var missing []string
	for _, k := range []string{"cert", "key", "ca"} {
		if !hasKey(n, k) {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		p.errorf(n, "link", "missing %s: a link needs this host's certificate and key and the fleet's CA (attache certs init, attache certs issue)",
			strings.Join(missing, ", "))
	}
	if !hasKey(n, "listen") {
		for _, k := range []string{"offer", "register", "handshake_timeout"} {
			if kn := keyNode(n, k); kn != nil {
				p.errorf(kn, k, "only a link server takes %s: set link.listen too", k)
			}
		}
	} else if !hasKey(n, "offer") {
		p.errorf(n, "offer", "missing: a link server (link.listen) must offer at least one service, with its allow list")
	}
	return l
}

func (p *fileParser) linkOffers(v *yaml.Node) []LinkOffer {
	v = deref(v)
	if v.Kind != yaml.MappingNode {
		p.errorf(v, "offer", "want a mapping of service name to allow list, such as {redis: [host-a]}, got %s", describe(v))
		return nil
	}
	if len(v.Content) == 0 {
		p.errorf(v, "offer", "empty: want at least one service")
		return nil
	}
	var out []LinkOffer
	seen := map[string]int{}
	for i := 0; i+1 < len(v.Content); i += 2 {
		k, val := v.Content[i], deref(v.Content[i+1])
		name := k.Value
		if k.Kind != yaml.ScalarNode || !serviceNameRE.MatchString(name) {
			p.errorf(k, "offer", "want a service name, got %s", keyName(k))
			continue
		}
		if line, dup := seen[name]; dup {
			p.errorf(k, name, "service offered twice (first on line %d)", line)
			continue
		}
		seen[name] = k.Line
		o := LinkOffer{Service: name, Origin: fmt.Sprintf("%s:%d", p.name, k.Line)}
		switch val.Kind {
		case yaml.SequenceNode:
			o.Allow = p.allowList(val, name)
		case yaml.MappingNode:
			p.fields(val, "offer."+name, map[string]func(*yaml.Node){
				"allow": func(a *yaml.Node) { o.Allow = p.allowList(deref(a), name) },
			})
			if !hasKey(val, "allow") {
				p.errorf(val, "allow", "missing for service %q: want the certificate names that may reach it, or [\"*\"]", name)
			}
		default:
			p.errorf(val, name, "want an allow list of certificate names, such as [host-a, host-c] or [\"*\"], got %s", describe(val))
		}
		out = append(out, o)
	}
	return out
}

func (p *fileParser) allowList(v *yaml.Node, service string) []string {
	if v.Kind != yaml.SequenceNode {
		p.errorf(v, "allow", "want a list of certificate names, got %s", describe(v))
		return nil
	}
	if len(v.Content) == 0 {
		p.errorf(v, "allow", "empty for service %q: nobody could reach it; list certificate names, or \"*\" for every fleet member", service)
		return nil
	}
	var out []string
	for _, n := range v.Content {
		s, ok := p.scalar(n, "allow")
		if !ok {
			continue
		}
		if s != "*" {
			if _, err := dnsName(s); err != nil || strings.HasSuffix(s, ".") {
				p.errorf(n, "allow", "want a certificate name (as `attache certs issue NAME` gave it) or \"*\", got %q", s)
				continue
			}
		}
		if slices.Contains(out, s) {
			p.errorf(n, "allow", "%q listed twice for service %q", s, service)
			continue
		}
		out = append(out, s)
	}
	return out
}

func (p *fileParser) linkRegister(v *yaml.Node) *LinkRegister {
	r := &LinkRegister{Prefix: DefaultLinkPrefix, TTL: DefaultLinkRegisterTTL}
	p.fields(v, "link.register", map[string]func(*yaml.Node){
		"advertise": func(n *yaml.Node) {
			if s, ok := p.scalar(n, "advertise"); ok {
				addr, err := ParseHostPort(s)
				if err != nil {
					p.errorf(n, "advertise", "%v", err)
				}
				r.Advertise = addr
			}
		},
		"prefix": func(n *yaml.Node) {
			if s, ok := p.scalar(n, "prefix"); ok {
				s = strings.TrimRight(s, "/")
				if !strings.HasPrefix(s, "/") || checkKey(s) != nil {
					p.errorf(n, "prefix", "want an etcd key prefix such as /attache/links, got %q", s)
				}
				r.Prefix = s
			}
		},
		"ttl": func(n *yaml.Node) {
			r.TTL = p.duration(n, "ttl", false)
			if r.TTL > 0 && r.TTL < 2*time.Second {
				p.errorf(n, "ttl", "want 2s or more (etcd leases are in whole seconds), got %s", r.TTL)
			}
		},
	})
	if v = deref(v); v.Kind == yaml.MappingNode && !hasKey(v, "advertise") {
		p.errorf(v, "advertise", "missing in link.register: want the host:port peers dial to reach this link server")
	}
	return r
}

// validateLink checks the link section against the rest of the
// configuration: offered services exist, the link port clashes with no
// service, link backends have what they need.
func validateLink(cfg *Config) Errors {
	var errs Errors
	l := cfg.Link
	byName := map[string]bool{}
	for _, s := range cfg.Services {
		byName[s.Name] = true
	}
	for _, o := range l.Offer {
		if !byName[o.Service] {
			errs = append(errs, fmt.Errorf("%s: offer: no service named %q in this configuration (want one of: %s)",
				o.Origin, o.Service, strings.Join(slices.Sorted(maps.Keys(byName)), ", ")))
		}
	}
	if l.Register != nil && len(cfg.Discovery.Etcd.Endpoints) == 0 {
		errs = append(errs, fmt.Errorf("%s: link.register needs discovery.etcd.endpoints (the etcd to register in)", l.Origin))
	}
	if l.Listen != "" {
		lh, lp, _ := net.SplitHostPort(l.Listen)
		for _, s := range cfg.Services {
			h, p, err := net.SplitHostPort(s.Listen)
			if err != nil || p != lp || p == "0" {
				continue
			}
			if h == lh || isWildcard(h) || isWildcard(lh) {
				errs = append(errs, fmt.Errorf("%s and %s: link.listen %s and service %q (%s) both listen on port %s",
					l.Origin, s.Origin, l.Listen, s.Name, s.Listen, p))
			}
		}
	}
	for _, s := range cfg.Services {
		errs = append(errs, checkLinkBackends(s, l)...)
	}
	return errs
}

// checkLinkBackends: a service's backends are either all links to one
// remote service, or none (a service has one way of dialling), and links
// need this host's certificate.
func checkLinkBackends(s Service, l Link) Errors {
	links, remote := 0, ""
	for _, b := range s.Backends {
		if b.Link == "" {
			continue
		}
		if links > 0 && b.Link != remote {
			return Errors{fmt.Errorf("%s: service %q: its link backends name two remote services, %q and %q; a service reaches one",
				s.Origin, s.Name, remote, b.Link)}
		}
		links++
		remote = b.Link
	}
	switch {
	case links == 0:
		return nil
	case links != len(s.Backends):
		return Errors{fmt.Errorf("%s: service %q mixes attache:// link backends and plain ones; put them in two services", s.Origin, s.Name)}
	case l.Cert == "" || l.Key == "" || l.CA == "":
		return Errors{fmt.Errorf("%s: service %q has attache:// backends: the file needs a link section with cert, key and ca", s.Origin, s.Name)}
	}
	return nil
}

// linkService reads the link key of a backend mapping.
func (p *fileParser) linkService(n *yaml.Node) string {
	s, ok := p.scalar(n, "link")
	if !ok {
		return ""
	}
	if err := checkLinkService(s); err != nil {
		p.errorf(n, "link", "%v", err)
		return ""
	}
	return s
}
