package config

import (
	"fmt"
	"net"
	"strconv"
)

// Validate checks what no single source can: unique service names, and no
// two services on one port (the same host, or a wildcard host that overlaps
// any other). It also makes service names from different sources unique when
// they were generated (forward-6379 from a flag and from arguments clash only
// if their ports do, which is reported as a port clash instead).
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
		if len(s.Backends) == 0 {
			errs = append(errs, fmt.Errorf("%s: service %q has no backends", s.Origin, s.Name))
		}
		host, portStr, err := net.SplitHostPort(s.Listen)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: listen %q: want host:port", s.Origin, s.Listen))
			continue
		}
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
