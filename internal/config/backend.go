package config

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// Discovery kinds a backend entry can name instead of a fixed address.
const (
	KindDNS      = "dns"       // A and AAAA records of a name: every address is a backend, on Port
	KindSRV      = "srv"       // SRV records: priority tiers, weights and ports from DNS
	KindEtcd     = "etcd"      // endpoints under an etcd key
	KindConsul   = "consul"    // passing instances of a Consul service (health API)
	KindConsulKV = "consul_kv" // endpoints in the Consul KV store under a key
	KindDocker   = "docker"    // running containers labelled attache.service=<Name>
)

// Discover is a backend entry that stands for however many backends a source
// of truth reports, followed live.
type Discover struct {
	// Kind is one of the Kind constants.
	Kind string
	// Name is what to look up: the DNS name, the etcd or Consul KV key, the
	// Consul service name or the Docker label value.
	Name string
	// Port is the backends' port for KindDNS (A/AAAA records carry none).
	Port int
	// Server, when set, overrides the discovery section's address for this
	// entry: the host:port of etcd:// and consul:// URLs.
	Server string
	// Tag filters Consul service instances.
	Tag string
}

// String is the entry as `attache check` prints it and as ParseBackend
// reads it back (all but an etcd entry without a server, which only the file
// form {etcd: key} can express: etcd has no default address).
func (d *Discover) String() string {
	switch d.Kind {
	case KindDNS:
		return "dns://" + net.JoinHostPort(d.Name, strconv.Itoa(d.Port))
	case KindSRV:
		return "srv://" + d.Name
	case KindEtcd:
		if d.Server != "" {
			return "etcd://" + urlHost(d.Server) + "/" + strings.TrimPrefix(d.Name, "/")
		}
		return "etcd:" + d.Name
	case KindConsul:
		s := "consul-service://" + urlHost(d.Server) + "/" + d.Name
		if d.Tag != "" {
			s += "?" + url.Values{"tag": {d.Tag}}.Encode()
		}
		return s
	case KindConsulKV:
		return "consul://" + urlHost(d.Server) + "/" + strings.TrimLeft(d.Name, "/")
	case KindDocker:
		return "docker://" + d.Name
	}
	return d.Kind + ":" + d.Name
}

// urlHost writes a canonical host:port for a URL: the '%' of an IPv6 zone
// must be escaped there, or the URL does not parse back.
func urlHost(server string) string { return strings.Replace(server, "%", "%25", 1) }

// String is the backend as `attache check` prints it.
func (b Backend) String() string {
	if b.Link != "" {
		return b.linkString()
	}
	if b.Discover != nil {
		return b.Discover.String()
	}
	var notes []string
	if b.Weight > 1 {
		notes = append(notes, fmt.Sprintf("weight %d", b.Weight))
	}
	switch b.SendProxy {
	case 1, 2:
		notes = append(notes, fmt.Sprintf("send_proxy v%d", b.SendProxy))
	case -1:
		notes = append(notes, "send_proxy off")
	}
	if len(notes) > 0 {
		return fmt.Sprintf("%s (%s)", b.Addr, strings.Join(notes, ", "))
	}
	return b.Addr
}

// ParseBackend reads a backend as it is written on the command line or as a
// plain string in the file:
//
//	host:port                 a fixed address (the host resolved at each connection)
//	unix:///path              a Unix stream socket
//	dns://name:port           every A/AAAA address of name, followed on the record TTL
//	srv://name                DNS SRV records of name
//	name                      (no port) DNS SRV records, as the old ambassadord read a bare name
//	etcd://host:port/key      endpoints stored under an etcd key (ambassadord's form)
//	consul://[host:port]/key  endpoints stored under a Consul KV key (ambassadord's form)
//	consul-service://[host:port]/name[?tag=t]  passing instances of a Consul service
//	docker://value            running containers labelled attache.service=value
//	attache://host:port/svc   service svc of the attache whose link server is at host:port
//	attache://name/svc        … of the link servers DNS SRV records of name give
//	attache://etcd/svc        … of the link servers registered in etcd (see Link.Register)
//
// Without host:port, consul URLs use the discovery section's address. Keys
// may not contain '?', '#', '%' or control characters: the URL forms could
// not carry them back.
func ParseBackend(s string) (Backend, error) {
	if s == "" {
		return Backend{}, fmt.Errorf("want host:port, a DNS SRV name or a discovery URL, got an empty value")
	}
	if strings.HasPrefix(s, unixScheme) {
		addr, err := ParseUnixAddr(s)
		if err != nil {
			return Backend{}, err
		}
		return Backend{Addr: addr}, nil
	}
	if scheme, rest, ok := strings.Cut(s, "://"); ok {
		if strings.EqualFold(scheme, linkScheme) {
			return parseLinkURL(rest, s)
		}
		d, err := parseBackendURL(strings.ToLower(scheme), rest, s)
		if err != nil {
			return Backend{}, err
		}
		return Backend{Discover: d}, nil
	}
	if addr, err := ParseHostPort(s); err == nil {
		return Backend{Addr: addr}, nil
	} else if strings.Contains(s, ":") {
		return Backend{}, err
	}
	// No port: the ambassadord form, a DNS SRV name. A number is not one,
	// but a forgotten half of host:port.
	if isNumeric(s) {
		if strings.Contains(s, ".") {
			return Backend{}, fmt.Errorf("want host:port, got %q, an IP address without a port", s)
		}
		return Backend{}, fmt.Errorf("want host:port, got %q, a port without a host", s)
	}
	name, err := dnsName(s)
	if err != nil {
		return Backend{}, fmt.Errorf("want host:port, a DNS SRV name or a discovery URL, got %q: %w", s, err)
	}
	return Backend{Discover: &Discover{Kind: KindSRV, Name: name}}, nil
}

// backendURLForms are the URL forms as error messages show them.
var backendURLForms = map[string]string{
	"dns":            "dns://name:port",
	"srv":            "srv://name",
	"etcd":           "etcd://host:port/key",
	"consul":         "consul://[host:port]/key",
	"consul-service": "consul-service://[host:port]/name[?tag=t]",
	"docker":         "docker://label-value",
}

func parseBackendURL(scheme, rest, whole string) (*Discover, error) {
	form, known := backendURLForms[scheme]
	var (
		d   *Discover
		err error
	)
	switch scheme {
	case "dns":
		d, err = parseDNSTarget(rest)
	case "srv":
		var name string
		if name, err = dnsName(rest); err == nil {
			d = &Discover{Kind: KindSRV, Name: name}
		}
	case "etcd", "consul", "consul-service":
		d, err = parseKeyURL(scheme, rest, whole)
	case "docker":
		if err = dockerLabelValue(rest); err == nil {
			d = &Discover{Kind: KindDocker, Name: rest}
		}
	case "tcp":
		return nil, fmt.Errorf("want host:port without tcp://, got %q", whole)
	}
	if !known {
		return nil, fmt.Errorf("unknown backend scheme %q in %q (want dns, srv, etcd, consul, consul-service, docker or attache)", scheme, whole)
	}
	if err != nil {
		return nil, fmt.Errorf("want %s, got %q: %w", form, whole, err)
	}
	return d, nil
}

// parseDNSTarget reads the name:port of a dns backend.
func parseDNSTarget(s string) (*Discover, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		if !strings.Contains(s, ":") {
			return nil, fmt.Errorf("the port is missing")
		}
		return nil, fmt.Errorf("not name:port")
	}
	name, err := dnsName(host)
	if err != nil {
		return nil, err
	}
	p, err := ParsePort(port)
	if err != nil {
		return nil, err
	}
	return &Discover{Kind: KindDNS, Name: name, Port: p}, nil
}

// parseKeyURL reads the etcd://, consul:// and consul-service:// forms.
// Whatever the URL says that attache would not use (credentials, a query
// other than consul-service's tag, a fragment) is an error rather than
// silently dropped.
func parseKeyURL(scheme, rest, whole string) (*Discover, error) {
	if strings.Contains(rest, "#") {
		return nil, fmt.Errorf("a fragment (#) is not allowed")
	}
	u, err := url.Parse(scheme + "://" + rest)
	if err != nil {
		return nil, fmt.Errorf("not a valid URL")
	}
	if u.User != nil {
		return nil, fmt.Errorf("credentials in the URL are not supported; set them in the discovery section of the file")
	}
	server := ""
	if u.Host != "" {
		if server, err = ParseHostPort(u.Host); err != nil {
			if scheme != "etcd" && u.Path == "" {
				return nil, fmt.Errorf("server: %w (for the address in the discovery section, write %s:///%s)", err, scheme, u.Host)
			}
			return nil, fmt.Errorf("server: %w", err)
		}
	}
	tag := ""
	if scheme == "consul-service" {
		q, err := url.ParseQuery(u.RawQuery)
		if err != nil {
			return nil, fmt.Errorf("bad query %q", u.RawQuery)
		}
		for k, v := range q {
			if k != "tag" || len(v) != 1 {
				return nil, fmt.Errorf("want at most one query parameter, tag, got %q", u.RawQuery)
			}
		}
		tag = q.Get("tag")
		if err := checkText(tag); err != nil {
			return nil, fmt.Errorf("tag: %w", err)
		}
	} else if u.RawQuery != "" || u.ForceQuery {
		return nil, fmt.Errorf("a query (?) is not allowed")
	}
	path := strings.TrimRight(u.Path, "/")
	switch scheme {
	case "etcd":
		if server == "" {
			return nil, fmt.Errorf("the etcd server is missing (or write {etcd: key} in the file, with discovery.etcd.endpoints)")
		}
		if path == "" {
			return nil, fmt.Errorf("the key is missing")
		}
		if err := checkKey(path); err != nil {
			return nil, err
		}
		return &Discover{Kind: KindEtcd, Name: path, Server: server}, nil
	case "consul":
		// Consul KV keys have no leading slash; /v1/kv//a is /v1/kv/a.
		path = strings.TrimLeft(path, "/")
		if path == "" {
			return nil, fmt.Errorf("the key is missing")
		}
		if err := checkKey(path); err != nil {
			return nil, err
		}
		return &Discover{Kind: KindConsulKV, Name: path, Server: server}, nil
	default:
		name := strings.TrimPrefix(path, "/")
		if name == "" {
			return nil, fmt.Errorf("the service name is missing")
		}
		if err := checkConsulService(name); err != nil {
			return nil, err
		}
		return &Discover{Kind: KindConsul, Name: name, Server: server, Tag: tag}, nil
	}
}

// checkKey accepts an etcd or Consul KV key.
func checkKey(k string) error {
	if strings.ContainsAny(k, "?#%") {
		return fmt.Errorf("want a key without '?', '#' or '%%', got %q", k)
	}
	if err := checkText(k); err != nil {
		return fmt.Errorf("key: %w", err)
	}
	return nil
}

// checkConsulService accepts a Consul service name, which travels in a URL
// path.
func checkConsulService(name string) error {
	if strings.ContainsAny(name, "/?#% ") || checkText(name) != nil {
		return fmt.Errorf("want a Consul service name (no '/', '?', '#', '%%', spaces or control characters), got %q", name)
	}
	return nil
}

// checkText refuses control characters, which would break the one line an
// error or `attache check` gives each backend.
func checkText(s string) error {
	for _, c := range s {
		if c < 0x20 || c == 0x7f {
			return fmt.Errorf("want no control characters, got %q", s)
		}
	}
	return nil
}

// dockerLabelValue checks the value of the attache.service label a docker
// backend selects containers by.
func dockerLabelValue(v string) error {
	if !serviceNameRE.MatchString(v) {
		return fmt.Errorf("want a label value of letters, digits, '.', '_' and '-' (at most 63, starting with a letter or digit), got %q", v)
	}
	return nil
}

// isNumeric reports whether s is made only of digits and dots, with at
// least one digit.
func isNumeric(s string) bool {
	return strings.Trim(s, "0123456789.") == "" && strings.ContainsAny(s, "0123456789")
}

// dnsName checks a DNS name to look up and returns it without a trailing
// dot. Its errors do not repeat the name when it is fine as a whole, since
// callers quote what they were given.
func dnsName(s string) (string, error) {
	name := strings.TrimSuffix(s, ".")
	if name == "" {
		return "", fmt.Errorf("want a DNS name, got an empty one")
	}
	if len(name) > 253 {
		return "", fmt.Errorf("want a DNS name of at most 253 characters, got %d", len(name))
	}
	if isNumeric(name) {
		return "", fmt.Errorf("want a DNS name, got %q, a number or IP address (a fixed address is written host:port)", s)
	}
	for label := range strings.SplitSeq(name, ".") {
		if label == "" || len(label) > 63 {
			return "", fmt.Errorf("want a DNS name (labels of 1-63 characters), got %q", s)
		}
		for _, c := range label {
			ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
			if !ok {
				return "", fmt.Errorf("want a DNS name (letters, digits, '-', '_'), got %q", s)
			}
		}
	}
	return name, nil
}
