package config

import (
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
)

// Validate checks what no single source can: unique service names, no two
// services of one protocol on one port (the same host, or a wildcard host that overlaps any
// other), and no backend listed twice in one service. It also checks each
// service's listen address and backends, which the parsers already did for
// what they produced, for a Config built by other code. Every error names the
// origin of the services involved.
//
// Generated names are made unique by Load before Validate runs, so a name
// clash reported here is between names the operator chose.
func Validate(cfg *Config) Errors {
	var errs Errors
	byName := map[string]*Service{}
	type bound struct {
		host string
		svc  *Service
	}
	byPort := map[listenKey][]bound{} // a TCP and a UDP service may share a port
	byUnix := map[string]*Service{}
	for i := range cfg.Services {
		s := &cfg.Services[i]
		errs = append(errs, checkService(s, cfg.Discovery.Etcd.Endpoints)...)
		errs = append(errs, checkProxy(s)...)
		errs = append(errs, checkUDP(s)...)
		listen, err := ParseListen(s.Listen)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: listen: %w", s.Origin, err))
			continue
		}
		if _, unix := UnixPath(listen); unix {
			// A socket path stands for a port: one service each.
			if prev, ok := byUnix[listen]; ok {
				errs = append(errs, fmt.Errorf("%s and %s: both listen on %s", prev.Origin, s.Origin, listen))
				continue
			}
			byUnix[listen] = s
		}
		host, portStr, _ := net.SplitHostPort(listen)
		port, _ := strconv.Atoi(portStr)
		clash := false
		key := listenKey{s.IsUDP(), port}
		for _, b := range byPort[key] {
			if port == 0 { // each gets its own free port
				break
			}
			if b.host == host || isWildcard(b.host) || isWildcard(host) {
				errs = append(errs, fmt.Errorf("%s and %s: both listen on port %d%s (%s and %s)",
					b.svc.Origin, s.Origin, port, protoNote(s), b.svc.Listen, s.Listen))
				clash = true
				break
			}
		}
		if clash {
			continue
		}
		byPort[key] = append(byPort[key], bound{host, s})
		if prev, ok := byName[s.Name]; ok {
			errs = append(errs, fmt.Errorf("%s and %s: both define service %q", prev.Origin, s.Origin, s.Name))
			continue
		}
		byName[s.Name] = s
	}
	errs = append(errs, validateTransparent(cfg)...)
	return append(errs, validateLink(cfg)...)
}

// discoverKinds are the Kind constants, for checking a Config built by code.
var discoverKinds = []string{KindDNS, KindSRV, KindEtcd, KindConsul, KindConsulKV, KindDocker}

func isWildcard(host string) bool {
	if host == "" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsUnspecified()
}

// checkService checks one service on its own. The parsers already ensure all
// of this for what they produce; Validate checks it again for a Config built
// by other code, and for what only the whole service shows (a backend listed
// twice).
func checkService(s *Service, etcdEndpoints []string) Errors {
	var errs Errors
	if s.Name == "" {
		errs = append(errs, fmt.Errorf("%s: service has no name", s.Origin))
	}
	if len(s.Backends) == 0 {
		errs = append(errs, fmt.Errorf("%s: service %q has no backends", s.Origin, s.Name))
	}
	seen := map[string]bool{}
	for _, b := range s.Backends {
		key := b.Addr
		if b.Discover != nil {
			key = b.Discover.String()
			if !slices.Contains(discoverKinds, b.Discover.Kind) {
				errs = append(errs, fmt.Errorf("%s: service %q: unknown discovery kind %q (want one of %s)",
					s.Origin, s.Name, b.Discover.Kind, strings.Join(discoverKinds, ", ")))
				continue
			}
			if b.Discover.Name == "" || b.Discover.Kind == KindDNS && b.Discover.Port == 0 {
				errs = append(errs, fmt.Errorf("%s: service %q: incomplete %s", s.Origin, s.Name, describeDiscovery(b.Discover)))
				continue
			}
			if b.Discover.Kind == KindEtcd && b.Discover.Server == "" && len(etcdEndpoints) == 0 {
				errs = append(errs, fmt.Errorf("%s: service %q: %s needs discovery.etcd.endpoints in the file, or an etcd://host:port/key URL",
					s.Origin, s.Name, describeDiscovery(b.Discover)))
			}
		} else if _, err := ParseBackendAddr(b.Addr); err != nil {
			errs = append(errs, fmt.Errorf("%s: service %q: backend: %w", s.Origin, s.Name, err))
			continue
		}
		if seen[key] {
			errs = append(errs, fmt.Errorf("%s: service %q lists backend %s twice", s.Origin, s.Name, key))
		}
		seen[key] = true
	}
	if s.Balance != "" && !slices.Contains(Policies, s.Balance) {
		errs = append(errs, fmt.Errorf("%s: service %q: unknown balance policy %q (want one of %s)",
			s.Origin, s.Name, s.Balance, strings.Join(Policies, ", ")))
	}
	return errs
}
