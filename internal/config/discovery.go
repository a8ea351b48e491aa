package config

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Discovery says how to reach each source of truth. Every field is optional:
// the providers have sensible defaults (the system resolver, Consul at
// CONSUL_HTTP_ADDR or 127.0.0.1:8500, Docker at DOCKER_HOST or its socket),
// except etcd, which needs endpoints here or in an etcd:// URL.
type Discovery struct {
	DNS    DNSDiscovery
	Etcd   EtcdDiscovery
	Consul ConsulDiscovery
	Docker DockerDiscovery
}

// DNSDiscovery configures dns and srv backends.
type DNSDiscovery struct {
	// Server is the host:port of the DNS server to ask; "" uses the first
	// nameserver of /etc/resolv.conf.
	Server string
	// MinTTL and MaxTTL clamp the re-query interval taken from record TTLs.
	MinTTL, MaxTTL time.Duration
	Timeout        time.Duration
}

// EtcdDiscovery configures etcd backends.
type EtcdDiscovery struct {
	Endpoints          []string
	Username, Password string
	DialTimeout        time.Duration
	// TLS, when set, is how the members are reached over TLS (endpoints
	// host:port or https://); nil leaves it to etcdctl's variables
	// ETCDCTL_CACERT, ETCDCTL_CERT and ETCDCTL_KEY, and to https://
	// endpoints. Link registration uses it too.
	TLS *ClientTLS
}

// ConsulDiscovery configures consul and consul_kv backends.
type ConsulDiscovery struct {
	Address, Token, Datacenter string
	// TLS, when set, is how the agent is reached over HTTPS (the address
	// host:port or https://, as are the consul:// URLs' hosts); nil leaves
	// it to the consul CLI's variables (CONSUL_HTTP_SSL, CONSUL_CACERT,
	// CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY, CONSUL_TLS_SERVER_NAME) and
	// to an https:// address.
	TLS *ClientTLS
}

// DockerDiscovery configures docker backends.
type DockerDiscovery struct {
	Host, Label, PortLabel, Network string
	// TLS, when set, is how a tcp:// engine is reached over TLS; nil leaves
	// it to DOCKER_TLS_VERIFY and DOCKER_CERT_PATH, as the docker CLI does.
	TLS *ClientTLS
}

// Policies are the balancing policy names a service may give. (The balance
// package implements them; config does not import it so that it stays free
// of data-path code.)
var Policies = []string{"round_robin", "least_conn", "random", "source_hash", "weighted", "first"}

func (p *fileParser) discovery(n *yaml.Node) Discovery {
	var d Discovery
	p.fields(n, "discovery", map[string]func(*yaml.Node){
		"dns": func(v *yaml.Node) {
			p.fields(v, "discovery.dns", map[string]func(*yaml.Node){
				"server": func(v *yaml.Node) {
					if s, ok := p.scalar(v, "server"); ok {
						addr, err := ParseHostPort(s)
						if err != nil {
							p.errorf(v, "server", "%v", err)
						}
						d.DNS.Server = addr
					}
				},
				"min_ttl": func(v *yaml.Node) { d.DNS.MinTTL = p.duration(v, "min_ttl", false) },
				"max_ttl": func(v *yaml.Node) { d.DNS.MaxTTL = p.duration(v, "max_ttl", false) },
				"timeout": func(v *yaml.Node) { d.DNS.Timeout = p.duration(v, "timeout", false) },
			})
			if d.DNS.MinTTL > 0 && d.DNS.MaxTTL > 0 && d.DNS.MinTTL > d.DNS.MaxTTL {
				p.errorf(keyNode(v, "min_ttl"), "min_ttl", "%s is more than max_ttl %s", d.DNS.MinTTL, d.DNS.MaxTTL)
			}
		},
		"etcd": func(v *yaml.Node) {
			p.fields(v, "discovery.etcd", map[string]func(*yaml.Node){
				"endpoints":    func(v *yaml.Node) { d.Etcd.Endpoints = p.addrList(v, "endpoints") },
				"username":     func(v *yaml.Node) { d.Etcd.Username, _ = p.scalar(v, "username") },
				"password":     func(v *yaml.Node) { d.Etcd.Password, _ = p.scalar(v, "password") },
				"dial_timeout": func(v *yaml.Node) { d.Etcd.DialTimeout = p.duration(v, "dial_timeout", false) },
				"tls":          func(v *yaml.Node) { d.Etcd.TLS = p.clientTLS(v, "discovery.etcd.tls") },
			})
			if tn := keyNode(deref(v), "tls"); tn != nil {
				for _, ep := range d.Etcd.Endpoints {
					if strings.HasPrefix(ep, "http://") {
						p.errorf(tn, "tls", "endpoint %s is plain http://: write https:// or host:port to reach it over TLS", ep)
					}
				}
			}
		},
		"consul": func(v *yaml.Node) {
			p.fields(v, "discovery.consul", map[string]func(*yaml.Node){
				"address":    func(v *yaml.Node) { d.Consul.Address = p.serverAddr(v, "address") },
				"token":      func(v *yaml.Node) { d.Consul.Token, _ = p.scalar(v, "token") },
				"datacenter": func(v *yaml.Node) { d.Consul.Datacenter, _ = p.scalar(v, "datacenter") },
				"tls":        func(v *yaml.Node) { d.Consul.TLS = p.clientTLS(v, "discovery.consul.tls") },
			})
			if tn := keyNode(deref(v), "tls"); tn != nil && strings.HasPrefix(d.Consul.Address, "http://") {
				p.errorf(tn, "tls", "the agent at %s is plain http://: write https:// or host:port to reach it over TLS", d.Consul.Address)
			}
		},
		"docker": func(v *yaml.Node) {
			p.fields(v, "discovery.docker", map[string]func(*yaml.Node){
				"host":       func(v *yaml.Node) { d.Docker.Host = p.dockerHost(v) },
				"label":      func(v *yaml.Node) { d.Docker.Label, _ = p.scalar(v, "label") },
				"port_label": func(v *yaml.Node) { d.Docker.PortLabel, _ = p.scalar(v, "port_label") },
				"network":    func(v *yaml.Node) { d.Docker.Network, _ = p.scalar(v, "network") },
				"tls":        func(v *yaml.Node) { d.Docker.TLS = p.clientTLS(v, "discovery.docker.tls") },
			})
			if tn := keyNode(deref(v), "tls"); tn != nil && strings.HasPrefix(d.Docker.Host, "unix://") {
				p.errorf(tn, "tls", "the engine at %s is a unix socket: TLS is for tcp:// hosts", d.Docker.Host)
			}
		},
	})
	return d
}

// dockerHost reads the Docker engine's address, as DOCKER_HOST gives it.
func (p *fileParser) dockerHost(v *yaml.Node) string {
	s, ok := p.scalar(v, "host")
	if !ok {
		return ""
	}
	const want = "want unix:///path/to/docker.sock or tcp://host:port"
	if path, ok := strings.CutPrefix(s, "unix://"); ok {
		if !strings.HasPrefix(path, "/") || checkText(path) != nil {
			p.errorf(v, "host", "%s, got %q", want, s)
		}
		return s
	}
	if addr, ok := strings.CutPrefix(s, "tcp://"); ok {
		if _, err := ParseHostPort(addr); err != nil {
			p.errorf(v, "host", "%s, got %q: %v", want, s, err)
		}
		return s
	}
	p.errorf(v, "host", "%s, got %q", want, s)
	return s
}

// serverAddr reads host:port, optionally after http://.
func (p *fileParser) serverAddr(v *yaml.Node, key string) string {
	s, ok := p.scalar(v, key)
	if !ok {
		return ""
	}
	bare := strings.TrimPrefix(strings.TrimPrefix(s, "http://"), "https://")
	if _, err := ParseHostPort(bare); err != nil {
		p.errorf(v, key, "%v", err)
	}
	return s
}

func (p *fileParser) addrList(v *yaml.Node, key string) []string {
	v = deref(v)
	if v.Kind != yaml.SequenceNode {
		return []string{p.serverAddr(v, key)}
	}
	var out []string
	for _, n := range v.Content {
		out = append(out, p.serverAddr(deref(n), key))
	}
	if len(out) == 0 {
		p.errorf(v, key, "empty: want at least one host:port")
	}
	return out
}

func (p *fileParser) balance(v *yaml.Node) string {
	s, ok := p.scalar(v, "balance")
	if !ok {
		return ""
	}
	if !slices.Contains(Policies, s) {
		p.errorf(v, "balance", "want one of %s, got %q", strings.Join(Policies, ", "), s)
		return ""
	}
	return s
}

func (p *fileParser) healthCheck(v *yaml.Node) *HealthCheck {
	hc := DefaultHealthCheck
	if v.Kind == yaml.ScalarNode {
		// health_check: tcp (connect only, default timings)
		if v.Tag != "!!null" && v.Value == "tcp" {
			return &hc
		}
		p.errorf(v, "health_check", "want tcp or a mapping (interval, timeout, rise, fall, send, expect), got %s", describe(v))
		return nil
	}
	timeoutSet := false
	p.fields(v, "health_check", map[string]func(*yaml.Node){
		"interval": func(n *yaml.Node) { hc.Interval = p.duration(n, "interval", false) },
		"timeout":  func(n *yaml.Node) { hc.Timeout, timeoutSet = p.duration(n, "timeout", false), true },
		"rise":     func(n *yaml.Node) { hc.Rise = p.positive(n, "rise") },
		"fall":     func(n *yaml.Node) { hc.Fall = p.positive(n, "fall") },
		"send":     func(n *yaml.Node) { hc.Send, _ = p.scalar(n, "send") },
		"expect":   func(n *yaml.Node) { hc.Expect, _ = p.scalar(n, "expect") },
	})
	if hc.Send != "" && hc.Expect == "" {
		p.errorf(v, "expect", "missing: send without expect checks nothing beyond a connect; give the reply to expect")
	}
	if hc.Interval > 0 && hc.Timeout > hc.Interval {
		if !timeoutSet {
			// The default timeout must not turn a short interval, which
			// the operator did ask for, into an error.
			hc.Timeout = hc.Interval
		} else {
			p.errorf(keyNode(v, "timeout"), "timeout", "%s is longer than the interval %s", hc.Timeout, hc.Interval)
		}
	}
	return &hc
}

func (p *fileParser) positive(v *yaml.Node, key string) int {
	s, ok := p.scalar(v, key)
	if !ok {
		return 0
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		p.errorf(v, key, "want a whole number 1 or more, got %q", s)
		return 0
	}
	return n
}

func (p *fileParser) boolean(v *yaml.Node, key string) bool {
	s, ok := p.scalar(v, key)
	if !ok {
		return false
	}
	switch strings.ToLower(s) {
	case "true", "yes", "on":
		return true
	case "false", "no", "off":
		return false
	}
	p.errorf(v, key, "want true or false, got %q", s)
	return false
}

// describeDiscovery is a one-line summary of a Discover entry's source for
// error messages.
func describeDiscovery(d *Discover) string { return fmt.Sprintf("%s backend %s", d.Kind, d) }
