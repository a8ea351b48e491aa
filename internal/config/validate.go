package config

import (
	"fmt"
	"net"
	"strconv"
)

// Validate checks what no single source can: unique service names, no two
// services on one port (the same host, or a wildcard host that overlaps any
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
	byPort := map[int][]bound{}
	for i := range cfg.Services {
		s := &cfg.Services[i]
		errs = append(errs, checkService(s)...)
		listen, err := ParseListen(s.Listen)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: listen: %w", s.Origin, err))
			continue
		}
		host, portStr, _ := net.SplitHostPort(listen)
		port, _ := strconv.Atoi(portStr)
		clash := false
		for _, b := range byPort[port] {
			if port == 0 { // each gets its own free port
				break
			}
			if b.host == host || isWildcard(b.host) || isWildcard(host) {
				errs = append(errs, fmt.Errorf("%s and %s: both listen on port %d (%s and %s)",
					b.svc.Origin, s.Origin, port, b.svc.Listen, s.Listen))
				clash = true
				break
			}
		}
		if clash {
			continue
		}
		byPort[port] = append(byPort[port], bound{host, s})
		if prev, ok := byName[s.Name]; ok {
			errs = append(errs, fmt.Errorf("%s and %s: both define service %q", prev.Origin, s.Origin, s.Name))
			continue
		}
		byName[s.Name] = s
	}
	return errs
}

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
func checkService(s *Service) Errors {
	var errs Errors
	if s.Name == "" {
		errs = append(errs, fmt.Errorf("%s: service has no name", s.Origin))
	}
	if len(s.Backends) == 0 {
		errs = append(errs, fmt.Errorf("%s: service %q has no backends", s.Origin, s.Name))
	}
	seen := map[string]bool{}
	for _, b := range s.Backends {
		if _, err := ParseHostPort(b.Addr); err != nil {
			errs = append(errs, fmt.Errorf("%s: service %q: backend: %w", s.Origin, s.Name, err))
			continue
		}
		if seen[b.Addr] {
			errs = append(errs, fmt.Errorf("%s: service %q lists backend %s twice", s.Origin, s.Name, b.Addr))
		}
		seen[b.Addr] = true
	}
	return errs
}
