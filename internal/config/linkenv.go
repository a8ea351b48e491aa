package config

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// LinkEnv is what the Docker link variables in an environment ask for.
type LinkEnv struct {
	Services []Service
	Warnings []string
	// LinkNames lists the <ALIAS>_NAME=/parent/alias variables seen. Docker
	// sets them for every --link, and port variables only for the ports the
	// linked container exposes: names without port variables mean a linked
	// container that exposes none, and the operator deserves to be told so.
	LinkNames []string
}

// ParseLinkEnv reads the legacy Docker link contract from environ
// ("KEY=value" strings, as os.Environ returns them):
//
//	<ALIAS>_PORT_<port>_TCP=tcp://<host>:<port>
//	<ALIAS>_PORT_<port>_UDP=udp://<host>:<port>
//
// listens on 0.0.0.0:<port> (the number in the variable's name) and forwards
// to the host:port in its value, exactly as the socat ambassadors did; a _UDP
// variable makes a UDP service (named <alias>-<port>-udp) beside the TCP one
// of the same port, if any. It
// ignores the _ADDR, _PORT, _PROTO, _START and _END companions, <ALIAS>_PORT,
// and every <ALIAS>_ENV_* variable: those carry the linked container's own
// environment, and a linked ambassador's link variables must not open ports
// here. The same port asked for by several variables with one target (Compose
// v1 sets three aliases per link) is one service; two different targets for
// one port is an error naming both variables. _SCTP variables are recognised
// and reported as warnings, since attache does not forward SCTP.
//
// A variable whose alias contains _ENV_ is ambiguous: MY_ENV_DB_PORT_5432_TCP
// is either link MY_ENV_DB's port or link MY's copy of a DB_PORT_5432_TCP
// variable. Docker sets <ALIAS>_NAME for every link, so that decides: if
// MY_NAME is set the variable is MY's environment and is ignored silently
// (MY_ENV_DB_NAME, if set, may then be a copy too); otherwise, if
// MY_ENV_DB_NAME is set, it is a link of its own; with neither (the variable
// was set by hand) it is ignored with a warning saying how to rename it.
//
// Every problem is reported, not just the first, in a deterministic order.
func ParseLinkEnv(environ []string) (LinkEnv, error) {
	var (
		out   LinkEnv
		errs  Errors
		byPrt = map[linkPort]*linkVar{}
		other = map[string]*linkVar{} // "SCTP/2905" → the SCTP variables
	)
	// Sort for deterministic service order and error messages.
	env := append([]string(nil), environ...)
	sort.Strings(env)
	linked := linkAliases(env)
	for _, kv := range env {
		name, value, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		if _, ok := linkNameAlias(name, value); ok {
			if !passedThrough(name, linked) {
				out.LinkNames = append(out.LinkNames, name)
			}
			continue
		}
		alias, port, proto, ok := splitLinkName(name)
		if !ok {
			continue
		}
		if passedThrough(name, linked) {
			continue // a linked container's own variable, copied by Docker
		}
		if strings.Contains(name, "_ENV_") && !linked[alias] {
			out.Warnings = append(out.Warnings, fmt.Sprintf(
				"env %s: ignored: <ALIAS>_ENV_* variables are a linked container's own environment; "+
					"to forward this port, name the variable without _ENV_", name))
			continue
		}
		p, err := ParsePort(port)
		if err != nil {
			errs = append(errs, fmt.Errorf("env %s: port in the variable name: %w", name, err))
			continue
		}
		if proto == "SCTP" {
			key := proto + "/" + port
			if v, ok := other[key]; ok {
				v.others = append(v.others, name)
			} else {
				other[key] = &linkVar{name: name, port: p, proto: proto}
			}
			continue
		}
		target, err := parseLinkValue(value, strings.ToLower(proto))
		if err != nil {
			errs = append(errs, fmt.Errorf("env %s: %w", name, err))
			continue
		}
		key := linkPort{port: p, udp: proto == "UDP"}
		if prev, ok := byPrt[key]; ok {
			if prev.target != target {
				errs = append(errs, fmt.Errorf(
					"env %s and env %s: both ask for port %d, with different targets %s and %s",
					prev.name, name, p, prev.target, target))
				continue
			}
			// Name the service, and its origin, after the shortest alias:
			// Compose's DB beats MYAPP_DB_1.
			if len(alias) < len(prev.alias) {
				prev.alias, prev.name = alias, name
			}
			continue
		}
		byPrt[key] = &linkVar{name: name, target: target, port: p, alias: alias}
	}
	keys := slices.SortedFunc(maps.Keys(byPrt), func(a, b linkPort) int {
		if a.port != b.port {
			return a.port - b.port
		}
		return boolInt(a.udp) - boolInt(b.udp) // TCP first
	})
	for _, k := range keys {
		v := byPrt[k]
		s := Service{
			Name:     linkServiceName(v.alias, k.port),
			Listen:   "0.0.0.0:" + strconv.Itoa(k.port),
			Backends: []Backend{{Addr: v.target}},
			Origin:   "env " + v.name,
		}
		if k.udp {
			s.Protocol = ProtoUDP
			s.Name = linkServiceName(v.alias, k.port, "udp")
		}
		out.Services = append(out.Services, s)
	}
	out.Warnings = append(out.Warnings, otherProtoWarnings(other)...)
	if len(errs) > 0 {
		return out, errs
	}
	return out, nil
}

type linkVar struct {
	name   string // the variable the service is named after
	alias  string
	target string
	port   int
	proto  string
	others []string // SCTP: the further variables for the same port
}

// linkPort is what one service is made of: a port and a protocol.
type linkPort struct {
	port int
	udp  bool
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// otherProtoWarnings reports the SCTP link variables, one warning per port,
// in port order.
func otherProtoWarnings(other map[string]*linkVar) []string {
	vars := slices.Collect(maps.Values(other))
	slices.SortFunc(vars, func(a, b *linkVar) int {
		if a.port != b.port {
			return a.port - b.port
		}
		return strings.Compare(a.proto, b.proto)
	})
	var out []string
	for _, v := range vars {
		names := "env " + v.name
		if len(v.others) > 0 {
			names += " (and " + strings.Join(v.others, ", ") + ")"
		}
		out = append(out, fmt.Sprintf(
			"%s: %s link variables are recognised but not supported; port %d is not forwarded",
			names, v.proto, v.port))
	}
	return out
}

// linkNameAlias recognises <ALIAS>_NAME=/parent/alias, which Docker sets for
// every link.
func linkNameAlias(name, value string) (string, bool) {
	alias, ok := strings.CutSuffix(name, "_NAME")
	if !ok || alias == "" || !strings.HasPrefix(value, "/") {
		return "", false
	}
	return alias, true
}

// linkAliases is the set of aliases with an <ALIAS>_NAME variable.
func linkAliases(env []string) map[string]bool {
	out := map[string]bool{}
	for _, kv := range env {
		name, value, _ := strings.Cut(kv, "=")
		if alias, ok := linkNameAlias(name, value); ok {
			out[alias] = true
		}
	}
	return out
}

// passedThrough reports whether the variable name is <LINK>_ENV_<rest> for a
// link LINK that exists: the variable is a copy of that linked container's
// environment.
func passedThrough(name string, linked map[string]bool) bool {
	for i := 0; ; {
		j := strings.Index(name[i:], "_ENV_")
		if j < 0 {
			return false
		}
		if linked[name[:i+j]] {
			return true
		}
		i += j + 1
	}
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

// parseLinkValue checks "tcp://host:port" (or "udp://host:port", for
// proto udp) and returns host:port.
func parseLinkValue(v, proto string) (string, error) {
	scheme, rest, ok := strings.Cut(v, "://")
	if !ok || !strings.EqualFold(scheme, proto) {
		return "", fmt.Errorf("want %s://host:port, got %q", proto, v)
	}
	// Allow a single trailing slash, which some hand-written values carry.
	if t, found := strings.CutSuffix(rest, "/"); found {
		rest = t
	}
	if strings.ContainsAny(rest, "/?#@") {
		return "", fmt.Errorf("want %s://host:port with no user, path or query, got %q", proto, v)
	}
	addr, err := ParseHostPort(rest)
	if err != nil {
		return "", fmt.Errorf("in %q: %w", v, err)
	}
	return addr, nil
}

// linkServiceName names the service of a link port after an alias: lower
// case, '_' as '-', and only the characters a file's service name may use, so
// the names of every source look alike in logs and metrics. A UDP service
// gets "udp" as a further suffix (dns-53-udp beside dns-53).
func linkServiceName(alias string, port int, more ...string) string {
	suffix := "-" + strconv.Itoa(port)
	for _, m := range more {
		suffix += "-" + m
	}
	var b strings.Builder
	for _, c := range strings.ToLower(alias) {
		switch {
		case c >= 'a' && c <= 'z' || c >= '0' && c <= '9':
			b.WriteRune(c)
		case c == '.' && b.Len() > 0:
			b.WriteRune(c)
		case b.Len() > 0 && !strings.HasSuffix(b.String(), "-"):
			b.WriteByte('-')
		}
	}
	name := strings.TrimRight(b.String(), "-.")
	if len(name) > 63-len(suffix) {
		name = strings.TrimRight(name[:63-len(suffix)], "-.")
	}
	if name == "" {
		name = "link"
	}
	return name + suffix
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
