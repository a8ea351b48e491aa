package config

import (
	"fmt"
	"net/url"
	"sort"
	"strconv"
	"strings"
)

// LinkEnv is what the Docker link variables in an environment ask for.
type LinkEnv struct {
	Services []Service
	Warnings []string
	// LinkNames lists the <ALIAS>_NAME=/parent/alias variables seen. Docker
	// sets them for every --link; when they are present but no port variable
	// is, the engine is one (29 and later) that no longer sets link port
	// variables, and the operator deserves to be told so.
	LinkNames []string
}

// ParseLinkEnv reads the legacy Docker link contract from environ
// ("KEY=value" strings, as os.Environ returns them):
//
//	<ALIAS>_PORT_<port>_TCP=tcp://<host>:<port>
//
// listens on 0.0.0.0:<port> (the number in the variable's name) and forwards
// to the host:port in its value, exactly as the socat ambassadors did. It
// ignores the _ADDR, _PORT, _PROTO, _START and _END companions, <ALIAS>_PORT,
// and every <ALIAS>_ENV_* variable: those carry the linked container's own
// environment, and a linked ambassador's link variables must not open ports
// here. The same port asked for by several variables with one target (Compose
// v1 sets three aliases per link) is one service; two different targets for
// one port is an error naming both variables. _UDP and _SCTP variables are
// recognised and reported as warnings, since attache does not forward them yet.
//
// Every problem is reported, not just the first.
func ParseLinkEnv(environ []string) (LinkEnv, error) {
	var (
		out   LinkEnv
		errs  Errors
		byPrt = map[int]*linkVar{}
	)
	// Sort for deterministic service order and error messages.
	env := append([]string(nil), environ...)
	sort.Strings(env)
	for _, kv := range env {
		name, value, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		if alias, ok := strings.CutSuffix(name, "_NAME"); ok && strings.HasPrefix(value, "/") && alias != "" && !strings.Contains(alias, "_ENV_") {
			out.LinkNames = append(out.LinkNames, name)
			continue
		}
		alias, port, proto, ok := splitLinkName(name)
		if !ok {
			continue
		}
		if strings.Contains(alias, "_ENV_") || strings.HasPrefix(alias, "ENV_") {
			// <ALIAS>_ENV_<OTHER>_PORT_<n>_TCP: the linked container's own
			// link variable, passed through by Docker. Never ours to open.
			continue
		}
		p, err := ParsePort(port)
		if err != nil {
			errs = append(errs, fmt.Errorf("env %s: port in the variable name: %w", name, err))
			continue
		}
		if proto != "TCP" {
			out.Warnings = append(out.Warnings, fmt.Sprintf(
				"env %s: %s link variables are recognised but not yet supported; port %d is not forwarded",
				name, proto, p))
			continue
		}
		target, err := parseLinkValue(value)
		if err != nil {
			errs = append(errs, fmt.Errorf("env %s: %w", name, err))
			continue
		}
		if prev, ok := byPrt[p]; ok {
			if prev.target != target {
				errs = append(errs, fmt.Errorf(
					"env %s and env %s: both ask for port %d, with different targets %s and %s",
					prev.name, name, p, prev.target, target))
				continue
			}
			prev.aliases = append(prev.aliases, alias)
			continue
		}
		byPrt[p] = &linkVar{name: name, target: target, port: p, aliases: []string{alias}}
	}
	ports := make([]int, 0, len(byPrt))
	for p := range byPrt {
		ports = append(ports, p)
	}
	sort.Ints(ports)
	for _, p := range ports {
		v := byPrt[p]
		out.Services = append(out.Services, Service{
			Name:     linkServiceName(v.aliases, p),
			Listen:   "0.0.0.0:" + strconv.Itoa(p),
			Backends: []Backend{{Addr: v.target}},
			Origin:   "env " + v.name,
		})
	}
	if len(errs) > 0 {
		return out, errs
	}
	return out, nil
}

type linkVar struct {
	name    string
	target  string
	port    int
	aliases []string
}

// splitLinkName splits "<ALIAS>_PORT_<port>_<PROTO>". The last "_PORT_" is
// the separator, so aliases may themselves contain "_PORT_".
func splitLinkName(name string) (alias, port, proto string, ok bool) {
	for _, p := range []string{"_TCP", "_UDP", "_SCTP"} {
		if rest, found := strings.CutSuffix(name, p); found {
			proto = p[1:]
			i := strings.LastIndex(rest, "_PORT_")
			if i <= 0 {
				return "", "", "", false
			}
			alias, port = rest[:i], rest[i+len("_PORT_"):]
			if port == "" {
				return "", "", "", false
			}
			// Docker only ever puts digits here; anything else is some
			// other variable that happens to end in _TCP.
			for _, c := range port {
				if c < '0' || c > '9' {
					return "", "", "", false
				}
			}
			return alias, port, proto, true
		}
	}
	return "", "", "", false
}

// parseLinkValue checks "tcp://host:port" and returns host:port.
func parseLinkValue(v string) (string, error) {
	scheme, rest, ok := strings.Cut(v, "://")
	if !ok || !strings.EqualFold(scheme, "tcp") {
		return "", fmt.Errorf("want tcp://host:port, got %q", v)
	}
	if strings.ContainsAny(rest, "/?#@") {
		// Allow a single trailing slash, which some hand-written values carry.
		if t, found := strings.CutSuffix(rest, "/"); found && !strings.ContainsAny(t, "/?#@") {
			rest = t
		} else {
			return "", fmt.Errorf("want tcp://host:port with nothing after the port, got %q", v)
		}
	}
	if _, err := url.Parse("tcp://" + rest); err != nil && !strings.Contains(rest, "%") {
		return "", fmt.Errorf("want tcp://host:port, got %q", v)
	}
	addr, err := ParseHostPort(rest)
	if err != nil {
		return "", fmt.Errorf("in %q: %w", v, err)
	}
	return addr, nil
}

func linkServiceName(aliases []string, port int) string {
	// The shortest alias is the most readable one: Compose's DB beats
	// MYAPP_DB_1.
	best := aliases[0]
	for _, a := range aliases[1:] {
		if len(a) < len(best) {
			best = a
		}
	}
	return strings.ToLower(strings.ReplaceAll(best, "_", "-")) + "-" + strconv.Itoa(port)
}

// Errors is every problem found in the configuration, each naming its input.
type Errors []error

func (e Errors) Error() string {
	msgs := make([]string, len(e))
	for i, err := range e {
		msgs[i] = err.Error()
	}
	return strings.Join(msgs, "\n")
}

// Unwrap lets errors.Is and errors.As look at each problem.
func (e Errors) Unwrap() []error { return e }
