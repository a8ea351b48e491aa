package config

import (
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
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
	// Forwards are --forward values: [LISTEN_HOST:]PORT=BACKEND[,BACKEND…],
	// each BACKEND as ParseBackend reads it.
	Forwards []string
	// Args are the positional arguments: none, or HOST PORT (the later form
	// of the classic ambassador image: listen on PORT, forward to HOST:PORT).
	Args []string
	// Transparent is the --transparent flag's [host:]port, or "": it beats
	// the file's transparent block.
	Transparent string
	// PerConsumer is --per-consumer: per-consumer backends in transparent
	// mode (see Transparent.PerConsumer).
	PerConsumer bool
	// TProxy is --tproxy: the transparent listener takes TPROXY'd
	// connections (see Transparent.TProxy).
	TProxy bool
	// Flags are per-service defaults set explicitly on the command line; a
	// zero field was not set. They beat the file's defaults block, and a
	// service's own setting beats them.
	Flags Defaults
}

// Load reads, parses and validates every source and returns the effective
// configuration, or an Errors listing every problem found.
//
// Per-service settings come, from lowest to highest priority, from
// BuiltinDefaults, the file's defaults block, the flags set explicitly
// (src.Flags) and the service's own block in the file.
//
// Names that attache generates (forward-6379, redis-6379) are made unique
// with a -2, -3 … suffix when a name is already taken, so two --forward
// flags on different hosts with the same port, or several on port 0, work;
// names written in the file are never changed, and two file services with
// one name are an error.
func Load(src Sources) (*Config, error) {
	var (
		cfg       Config
		errs      Errors
		generated = map[int]bool{} // indexes into cfg.Services
	)
	fileDefaults := Defaults{}
	if src.File != "" || src.FileData != nil {
		name := src.File
		if name == "" {
			name = "config"
		}
		data := src.FileData
		var err error
		if data == nil {
			data, err = os.ReadFile(src.File)
			if err != nil {
				errs = append(errs, fmt.Errorf("config file: %w", err))
			}
		}
		if err == nil {
			f, err := ParseFile(name, data)
			errs = appendErrs(errs, err)
			fileDefaults = f.Defaults
			cfg.Discovery = f.Discovery
			cfg.Link = f.Link
			cfg.Transparent = f.Transparent
			cfg.Services = append(cfg.Services, f.Services...)
		}
	}
	if src.Transparent != "" {
		addr, err := ParseTransparentListen(src.Transparent)
		if err != nil {
			errs = append(errs, fmt.Errorf("--transparent: %w", err))
		} else {
			cfg.Transparent = Transparent{Listen: addr, Origin: "--transparent", PerConsumer: cfg.Transparent.PerConsumer, TProxy: cfg.Transparent.TProxy}
		}
	}
	if src.PerConsumer {
		if src.Transparent == "" && !cfg.Transparent.Enabled() {
			errs = append(errs, errors.New("--per-consumer: needs --transparent [HOST:]PORT (or a transparent block in the file)"))
		}
		cfg.Transparent.PerConsumer = true
	}
	if src.TProxy {
		if src.Transparent == "" && !cfg.Transparent.Enabled() {
			errs = append(errs, errors.New("--tproxy: needs --transparent [HOST:]PORT (or a transparent block in the file)"))
		}
		cfg.Transparent.TProxy = true
	}
	addGenerated := func(s Service) {
		generated[len(cfg.Services)] = true
		cfg.Services = append(cfg.Services, s)
	}

	for _, fwd := range src.Forwards {
		s, err := ParseForward(fwd)
		if err != nil {
			errs = append(errs, fmt.Errorf("--forward %s: %w", fwd, err))
			continue
		}
		addGenerated(s)
	}

	switch len(src.Args) {
	case 0:
	case 2:
		s, err := parseHostPortArgs(src.Args[0], src.Args[1])
		if err != nil {
			errs = append(errs, err)
		} else {
			addGenerated(s)
		}
	default:
		errs = append(errs, argsError(src.Args))
	}

	var linkNames []string
	if src.Env != nil {
		le, err := ParseLinkEnv(src.Env)
		errs = appendErrs(errs, err)
		for _, s := range le.Services {
			addGenerated(s)
		}
		cfg.Warnings = append(cfg.Warnings, le.Warnings...)
		linkNames = le.LinkNames
	}

	uniqueNames(cfg.Services, generated)
	defaults := overlay(src.Flags, fileDefaults)
	for i := range cfg.Services {
		s := &cfg.Services[i]
		defaults.apply(s)
		BuiltinDefaults.apply(s)
		if s.MaxConnections < 0 { // explicitly "no limit"
			s.MaxConnections = 0
		}
		if s.Retries < 0 { // explicitly none
			s.Retries = 0
		}
		applyUDP(s, defaults)
		if s.RetryTimeout == 0 {
			s.RetryTimeout = s.ConnectTimeout
		}
		if s.Balance == "" {
			s.Balance = "round_robin"
			if slices.ContainsFunc(s.Backends, func(b Backend) bool { return b.Discover != nil && b.Discover.Kind == KindSRV }) {
				s.Balance = "first"
			}
		}
	}
	errs = append(errs, Validate(&cfg)...)
	if len(errs) == 0 && len(cfg.Services) == 0 && !cfg.Transparent.PerConsumer { // per-consumer needs no service
		errs = append(errs, noServicesError(src.Env != nil, linkNames, cfg.Warnings))
	}
	if len(errs) > 0 {
		return &cfg, errs
	}
	return &cfg, nil
}

// uniqueNames renames generated services whose name is taken, by a service
// from the file or an earlier generated one.
func uniqueNames(services []Service, generated map[int]bool) {
	taken := map[string]bool{}
	for i, s := range services {
		if !generated[i] {
			taken[s.Name] = true
		}
	}
	for i := range services {
		if !generated[i] {
			continue
		}
		s := &services[i]
		name := s.Name
		for n := 2; taken[name]; n++ {
			name = s.Name + "-" + strconv.Itoa(n)
		}
		s.Name = name
		taken[name] = true
	}
}

func argsError(args []string) error {
	msg := fmt.Sprintf("arguments %q: want none, or HOST PORT (listen on PORT, forward to HOST:PORT)",
		strings.Join(args, " "))
	if len(args) == 1 {
		if addr, err := ParseHostPort(args[0]); err == nil {
			_, port, _ := net.SplitHostPort(addr)
			host := strings.TrimSuffix(addr, ":"+port)
			msg += fmt.Sprintf("; did you mean %s %s, or --forward %s=%s?", strings.Trim(host, "[]"), port, port, addr)
		}
	}
	return errors.New(msg)
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
	if top.Retries != 0 {
		out.Retries = top.Retries
	}
	if top.RetryTimeout != 0 {
		out.RetryTimeout = top.RetryTimeout
	}
	if top.EjectTime != 0 {
		out.EjectTime = top.EjectTime
	}
	if top.UDPIdleTimeout != 0 {
		out.UDPIdleTimeout = top.UDPIdleTimeout
	}
	if top.MaxSessions != 0 {
		out.MaxSessions = top.MaxSessions
	}
	return out
}

// noServicesError says that there is nothing to forward and, when the
// environment was read, why link variables may be missing. The two causes
// show in different environments, so each is named where it can apply:
//
//   - Docker sets <ALIAS>_NAME for every link but <ALIAS>_PORT_<port>_TCP
//     only for the ports the linked container exposes: names without port
//     variables mean a linked container that exposes none, on any engine.
//   - Docker Engine 29 and later set no link variable at all, names
//     included, unless the daemon runs with
//     DOCKER_KEEP_DEPRECATED_LEGACY_LINKS_ENV_VARS=1: an environment without
//     any is what a --link looks like there.
func noServicesError(envRead bool, linkNames, warnings []string) error {
	msg := "no services to forward: give a config file (-c), --forward [LISTEN_HOST:]PORT=HOST:PORT, " +
		"HOST PORT arguments, or Docker link variables such as REDIS_PORT_6379_TCP=tcp://host:6379"
	if len(warnings) > 0 {
		// Without services the caller prints only this error, so say why the
		// link variables that were there did not count.
		msg += " (" + strings.Join(warnings, "; ") + ")"
	}
	switch {
	case len(linkNames) > 0:
		return fmt.Errorf("%s; the environment has link names (%s) but no <ALIAS>_PORT_<port>_TCP variables: "+
			"Docker sets those only for the ports a linked container exposes, and this one exposes none "+
			"(no EXPOSE in its image, no --expose or -p when it was started): start it with --expose PORT, "+
			"or pass the target explicitly, e.g. -e REDIS_PORT_6379_TCP=tcp://redis:6379 "+
			"(Docker Engine 29 and later, unless the daemon runs with DOCKER_KEEP_DEPRECATED_LEGACY_LINKS_ENV_VARS=1, "+
			"set no link variables at all, these names included)", msg, strings.Join(linkNames, ", "))
	case envRead:
		return fmt.Errorf("%s; if this container was started with --link: Docker Engine 29 and later set no link "+
			"variables unless the daemon runs with DOCKER_KEEP_DEPRECATED_LEGACY_LINKS_ENV_VARS=1; "+
			"pass the target explicitly instead, e.g. -e REDIS_PORT_6379_TCP=tcp://redis:6379 or attache redis 6379", msg)
	}
	return errors.New(msg)
}

// ParseForward parses a --forward value, [LISTEN_HOST:]PORT=HOST:PORT, or
// [LISTEN_HOST:]PORT/udp=HOST:PORT for a UDP service (named forward-PORT-udp).
func ParseForward(v string) (Service, error) {
	if s, ok, err := parseProtocolForward(v); ok { // LISTEN/udp=…
		return s, err
	}
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
		b, err := ParseBackend(t)
		if err != nil {
			return Service{}, fmt.Errorf("target side: %w", err)
		}
		backends = append(backends, b)
	}
	_, port, _ := net.SplitHostPort(l)
	if _, unix := UnixPath(l); unix {
		port = "unix" // made unique by Load, like every generated name
	}
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
	// An IPv6 literal may come bare (2001:db8::1) or bracketed ([2001:db8::1]).
	bare := host
	if len(bare) > 2 && bare[0] == '[' && bare[len(bare)-1] == ']' {
		bare = bare[1 : len(bare)-1]
	}
	if bare == "" {
		return Service{}, fmt.Errorf("argument HOST: want a host name or IP address, got an empty value")
	}
	h, err := canonicalHost(bare)
	if err != nil {
		return Service{}, fmt.Errorf("argument HOST %q: %w", host, err)
	}
	return Service{
		Name: fmt.Sprintf("forward-%d", p),
		// A bare port, as --forward PORT= and a file's listen: PORT take
		// it: every interface, IPv4 and IPv6.
		Listen:   fmt.Sprintf(":%d", p),
		Backends: []Backend{{Addr: net.JoinHostPort(h, strconv.Itoa(p))}},
		Origin:   "arguments " + host + " " + port,
	}, nil
}
