package config

import (
	"net"
	"strings"

	"go.yaml.in/yaml/v3"
)

// ClientTLS is how attache dials a source of truth over TLS (a tls section
// such as discovery.docker.tls). Its fields match tlsclient.Files, which
// reads them.
type ClientTLS struct {
	// CA is the PEM file of the authorities the server's certificate must
	// be signed by; "" means the system's.
	CA string
	// Cert and Key are the client certificate and its key, for a server
	// that checks its clients. Both or neither.
	Cert, Key string
	// ServerName is the name the server's certificate must be valid for;
	// "" means the host attache dials.
	ServerName string
}

// clientTLS reads a tls section: {ca, cert, key, server_name}, every key
// optional but cert and key going together. where names the section in
// errors, e.g. "discovery.docker.tls".
func (p *fileParser) clientTLS(n *yaml.Node, where string) *ClientTLS {
	t := &ClientTLS{}
	p.fields(n, where, map[string]func(*yaml.Node){
		"ca":   func(v *yaml.Node) { t.CA = p.pemFile(v, "ca") },
		"cert": func(v *yaml.Node) { t.Cert = p.pemFile(v, "cert") },
		"key":  func(v *yaml.Node) { t.Key = p.pemFile(v, "key") },
		"server_name": func(v *yaml.Node) {
			s, ok := p.scalar(v, "server_name")
			if !ok {
				return
			}
			_, err := dnsName(s)
			if (err != nil && net.ParseIP(s) == nil) || strings.HasSuffix(s, ".") {
				p.errorf(v, "server_name", "want the DNS name or IP address the server's certificate carries, got %q", s)
				return
			}
			t.ServerName = s
		},
	})
	if n = deref(n); n.Kind == yaml.MappingNode && hasKey(n, "cert") != hasKey(n, "key") {
		p.errorf(n, where, "cert and key go together: give both (the client certificate and its key) or neither")
	}
	return t
}

// pemFile reads the path of a PEM file.
func (p *fileParser) pemFile(v *yaml.Node, key string) string {
	s, ok := p.scalar(v, key)
	if !ok {
		return ""
	}
	if s == "" || checkText(s) != nil {
		p.errorf(v, key, "want the path of a PEM file, got %q", s)
		return ""
	}
	return s
}
