package config

import (
	"fmt"
	"net"
	"os"
	"strings"
)

// Sources are every input attache takes its services from.
type Sources struct {
	// File is the path of a YAML configuration file, or "".
	File string
	// FileData, when not nil, is used instead of reading File (tests).
	FileData []byte
	// Env is the process environment ("KEY=value"), scanned for Docker link
	// variables. Nil reads no environment.
	Env []string
	// Forwards are --forward values: [LISTEN_HOST:]PORT=HOST:PORT.
	Forwards []string
	// Args are the positional arguments: none, or HOST PORT (the later form
	// of the classic ambassador image: listen on PORT, forward to HOST:PORT).
	Args []string
	// Flags are per-service defaults set explicitly on the command line; a
	// zero field was not set. They beat the file's defaults block, and a
	// service's own setting beats them.
	Flags Defaults
}

// Load reads, parses and validates every source and returns the effective
// configuration, or an Errors listing every problem found.
func Load(src Sources) (*Config, error) {
	var (
		cfg  Config
		errs Errors
	)
	fileDefaults := Defaults{}
	if src.File != "" || src.FileData != nil {
		data := src.FileData
		if data == nil {
			var err error
			data, err = os.ReadFile(src.File)
			if err != nil {
				return nil, Errors{fmt.Errorf("config file: %w", err)}
			}
		}
		name := src.File
		if name == "" {
			name = "config"
		}
		f, err := ParseFile(name, data)
		errs = appendErrs(errs, err)
		fileDefaults = f.Defaults
		cfg.Services = append(cfg.Services, f.Services...)
	}

	for _, fwd := range src.Forwards {
		s, err := ParseForward(fwd)
		if err != nil {
			errs = append(errs, fmt.Errorf("--forward %s: %w", fwd, err))
			continue
		}
		cfg.Services = append(cfg.Services, s)
	}

	switch len(src.Args) {
	case 0:
	case 2:
		s, err := parseHostPortArgs(src.Args[0], src.Args[1])
		if err != nil {
			errs = append(errs, err)
		} else {
			cfg.Services = append(cfg.Services, s)
		}
	default:
		errs = append(errs, fmt.Errorf("arguments %q: want none, or HOST PORT (listen on PORT, forward to HOST:PORT)",
			strings.Join(src.Args, " ")))
	}

	var linkNames []string
	if src.Env != nil {
		le, err := ParseLinkEnv(src.Env)
		errs = appendErrs(errs, err)
		cfg.Services = append(cfg.Services, le.Services...)
		cfg.Warnings = append(cfg.Warnings, le.Warnings...)
		linkNames = le.LinkNames
	}

	for i := range cfg.Services {
		s := &cfg.Services[i]
		overlay(src.Flags, fileDefaults).apply(s)
		BuiltinDefaults.apply(s)
	}
	errs = append(errs, Validate(&cfg)...)
	if len(errs) == 0 && len(cfg.Services) == 0 {
		errs = append(errs, noServicesError(linkNames))
	}
	if len(errs) > 0 {
		return &cfg, errs
	}
	return &cfg, nil
}

func appendErrs(errs Errors, err error) Errors {
	if err == nil {
		return errs
	}
	if list, ok := err.(Errors); ok {
		return append(errs, list...)
	}
	return append(errs, err)
}

// overlay returns top's set fields over bottom's.
func overlay(top, bottom Defaults) Defaults {
	out := bottom
	if top.ConnectTimeout != 0 {
		out.ConnectTimeout = top.ConnectTimeout
	}
	if top.IdleTimeout != 0 {
		out.IdleTimeout = top.IdleTimeout
	}
	if top.KeepAlive != 0 {
		out.KeepAlive = top.KeepAlive
	}
	if top.MaxConnections != 0 {
		out.MaxConnections = top.MaxConnections
	}
	return out
}

func noServicesError(linkNames []string) error {
	msg := "no services to forward: give a config file (-c), --forward [LISTEN_HOST:]PORT=HOST:PORT, " +
		"HOST PORT arguments, or Docker link variables such as REDIS_PORT_6379_TCP=tcp://host:6379"
	if len(linkNames) > 0 {
		return fmt.Errorf("%s; the environment has link names (%s) but no <ALIAS>_PORT_<port>_TCP variables: "+
			"Docker Engine 29 and later no longer set link port variables unless the daemon runs with "+
			"DOCKER_KEEP_DEPRECATED_LEGACY_LINKS_ENV_VARS=1; pass the target explicitly instead, "+
			"e.g. -e REDIS_PORT_6379_TCP=tcp://redis:6379", msg, strings.Join(linkNames, ", "))
	}
	return fmt.Errorf("%s", msg)
}

// ParseForward parses a --forward value, [LISTEN_HOST:]PORT=HOST:PORT.
func ParseForward(v string) (Service, error) {
	listen, target, ok := strings.Cut(v, "=")
	if !ok {
		return Service{}, fmt.Errorf("want [LISTEN_HOST:]PORT=HOST:PORT, got %q", v)
	}
	l, err := ParseListen(listen)
	if err != nil {
		return Service{}, fmt.Errorf("listen side: %w", err)
	}
	var backends []Backend
	for t := range strings.SplitSeq(target, ",") {
		addr, err := ParseHostPort(t)
		if err != nil {
			return Service{}, fmt.Errorf("target side: %w", err)
		}
		backends = append(backends, Backend{Addr: addr})
	}
	_, port, _ := net.SplitHostPort(l)
	return Service{
		Name:     "forward-" + port,
		Listen:   l,
		Backends: backends,
		Origin:   "--forward " + v,
	}, nil
}

func parseHostPortArgs(host, port string) (Service, error) {
	p, err := ParsePort(port)
	if err != nil {
		return Service{}, fmt.Errorf("argument PORT %q: %w", port, err)
	}
	addr, err := ParseHostPort(net.JoinHostPort(host, port))
	if err != nil {
		return Service{}, fmt.Errorf("argument HOST %q: %w", host, err)
	}
	return Service{
		Name:     fmt.Sprintf("forward-%d", p),
		Listen:   fmt.Sprintf("0.0.0.0:%d", p),
		Backends: []Backend{{Addr: addr}},
		Origin:   "arguments " + host + " " + port,
	}, nil
}
