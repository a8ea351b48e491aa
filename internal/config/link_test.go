package config

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseLinkBackend(t *testing.T) {
	tests := []struct {
		in   string
		want Backend
		str  string
	}{
		{"attache://10.0.0.2:7443/redis", Backend{Addr: "10.0.0.2:7443", Link: "redis"}, "attache://10.0.0.2:7443/redis"},
		{"ATTACHE://host-b.internal:7443/redis", Backend{Addr: "host-b.internal:7443", Link: "redis"}, "attache://host-b.internal:7443/redis"},
		{"attache://[2001:db8::2]:7443/pg", Backend{Addr: "[2001:db8::2]:7443", Link: "pg"}, "attache://[2001:db8::2]:7443/pg"},
		{"attache://_attache._tcp.example/redis", Backend{Link: "redis", Discover: &Discover{Kind: KindSRV, Name: "_attache._tcp.example"}}, "attache://_attache._tcp.example/redis"},
		{"attache://etcd/redis", Backend{Link: "redis", Discover: &Discover{Kind: KindEtcd, Name: "/attache/links/redis"}}, "attache://etcd/redis"},
	}
	for _, tt := range tests {
		got, err := ParseBackend(tt.in)
		if err != nil {
			t.Errorf("ParseBackend(%q): %v", tt.in, err)
			continue
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("ParseBackend(%q) = %s, want %s", tt.in, dump(got), dump(tt.want))
		}
		if got.String() != tt.str {
			t.Errorf("ParseBackend(%q).String() = %q, want %q", tt.in, got.String(), tt.str)
		}
	}
	errs := []struct{ in, want string }{
		{"attache://10.0.0.2:7443", "the service is missing"},
		{"attache://10.0.0.2:7443/", "the service is missing"},
		{"attache:///redis", "the link server is missing"},
		{"attache://10.0.0.2/redis", "an IP address needs the link port"},
		{"attache://10.0.0.2:0/redis", "want a port number 1-65535"},
		{"attache://host:7443/re dis", `want a service name (letters, digits`},
		{"attache://host:7443/a/b", `want a service name`},
		{"attache://bad_name!/redis", "want a DNS name"},
	}
	for _, tt := range errs {
		_, err := ParseBackend(tt.in)
		if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "attache://host:port/service") {
			t.Errorf("ParseBackend(%q) error %v, want one naming the forms and %q", tt.in, err, tt.want)
		}
	}
}

const linkServerFile = `discovery:
  etcd: {endpoints: [127.0.0.1:2379]}
link:
  listen: 0.0.0.0:7443
  cert: /etc/attache/host-b.crt
  key: /etc/attache/host-b.key
  ca: /etc/attache/fleet-ca.crt
  handshake_timeout: 3s
  offer:
    redis: [host-a, host-c]
    pg: {allow: ["*"]}
  register:
    advertise: 10.0.0.2:7443
    ttl: 5s
services:
  - name: redis
    listen: 127.0.0.1:6380
    backends: [127.0.0.1:6379]
  - name: pg
    listen: 127.0.0.1:5433
    backends: [127.0.0.1:5432]
  - name: remote
    listen: 127.0.0.1:7000
    backends:
      - attache://10.0.0.3:7443/redis
      - {addr: 10.0.0.4:7443, link: redis, weight: 2}
      - {srv: _attache._tcp.corp, link: redis}
      - {url: "attache://etcd/redis"}
`

func TestLoadLink(t *testing.T) {
	cfg, err := Load(Sources{File: "f.yaml", FileData: []byte(linkServerFile)})
	if err != nil {
		t.Fatal(err)
	}
	want := Link{
		Listen: "0.0.0.0:7443", Cert: "/etc/attache/host-b.crt", Key: "/etc/attache/host-b.key", CA: "/etc/attache/fleet-ca.crt",
		HandshakeTimeout: 3 * time.Second,
		Offer: []LinkOffer{
			{Service: "redis", Allow: []string{"host-a", "host-c"}, Origin: "f.yaml:10"},
			{Service: "pg", Allow: []string{"*"}, Origin: "f.yaml:11"},
		},
		Register: &LinkRegister{Advertise: "10.0.0.2:7443", Prefix: DefaultLinkPrefix, TTL: 5 * time.Second},
		Origin:   "f.yaml:4",
	}
	if !reflect.DeepEqual(cfg.Link, want) {
		t.Errorf("link:\n got %+v\nwant %+v", cfg.Link, want)
	}
	var got []string
	for _, b := range cfg.Services[2].Backends {
		got = append(got, b.String())
	}
	wantB := []string{"attache://10.0.0.3:7443/redis", "attache://10.0.0.4:7443/redis (weight 2)", "attache://_attache._tcp.corp/redis",
		"attache://etcd/redis"}
	if !reflect.DeepEqual(got, wantB) {
		t.Errorf("backends %q, want %q", got, wantB)
	}
}

func TestLinkErrors(t *testing.T) {
	svc := "services:\n  - name: redis\n    listen: 127.0.0.1:6380\n    backends: [127.0.0.1:6379]\n"
	files := "  cert: c.crt\n  key: c.key\n  ca: ca.crt\n"
	tests := []struct {
		name string
		in   string
		errs []string
	}{
		{"missing files", "link:\n  listen: 7443\n  offer: {redis: [a]}\n" + svc,
			[]string{"f.yaml:2: link: missing cert, key, ca: a link needs this host's certificate"}},
		{"unknown key", "link:\n" + files + "  lsten: 7443\n" + svc,
			[]string{"f.yaml:5: lsten: unknown key in link (want one of: ca, cert, handshake_timeout, key, listen, mode, offer, register)"}},
		{"offer without listen", "link:\n" + files + "  offer: {redis: [a]}\n" + svc,
			[]string{"f.yaml:5: offer: only a link server takes offer: set link.listen too"}},
		{"listen without offer", "link:\n" + files + "  listen: 7443\n" + svc,
			[]string{"f.yaml:2: offer: missing: a link server (link.listen) must offer at least one service"}},
		{"unknown offered service", "link:\n" + files + "  listen: 7443\n  offer:\n    redis: [a]\n    rediss: [a]\n" + svc,
			[]string{`f.yaml:8: offer: no service named "rediss" in this configuration (want one of: redis)`}},
		{"empty allow list", "link:\n" + files + "  listen: 7443\n  offer: {redis: []}\n" + svc,
			[]string{`f.yaml:6: allow: empty for service "redis": nobody could reach it`}},
		{"bad allow name", "link:\n" + files + "  listen: 7443\n  offer: {redis: [host a]}\n" + svc,
			[]string{`f.yaml:6: allow: want a certificate name (as ` + "`attache certs issue NAME`" + ` gave it) or "*", got "host a"`}},
		{"offer mapping without allow", "link:\n" + files + "  listen: 7443\n  offer: {redis: {alow: [a]}}\n" + svc,
			[]string{"f.yaml:6: alow: unknown key in offer.redis (want one of: allow)", `allow: missing for service "redis"`}},
		{"link port clash", "link:\n" + files + "  listen: 6380\n  offer: {redis: [a]}\n" + svc,
			[]string{`link.listen :6380 and service "redis" (127.0.0.1:6380) both listen on port 6380`}},
		{"unix link listen", "link:\n" + files + "  listen: unix:///tmp/l.sock\n  offer: {redis: [a]}\n" + svc,
			[]string{`f.yaml:5: listen: want [host:]port (the link is TCP)`}},
		{"register without etcd", "link:\n" + files + "  listen: 7443\n  offer: {redis: [a]}\n  register: {advertise: 10.0.0.2:7443}\n" + svc,
			[]string{"f.yaml:2: link.register needs discovery.etcd.endpoints"}},
		{"register without advertise", "discovery: {etcd: {endpoints: [e:1]}}\nlink:\n" + files + "  listen: 7443\n  offer: {redis: [a]}\n  register: {ttl: 1s}\n" + svc,
			[]string{"f.yaml:8: ttl: want 2s or more", "f.yaml:8: advertise: missing in link.register"}},
		{"link backend without link section", "services:\n  - name: r\n    listen: 1\n    backends: [attache://h:7443/redis]\n",
			[]string{`f.yaml:2: service "r" has attache:// backends: the file needs a link section with cert, key and ca`}},
		{"mixed backends", "link:\n" + files + "services:\n  - name: r\n    listen: 1\n    backends: [attache://h:7443/redis, h:6379]\n",
			[]string{`f.yaml:6: service "r" mixes attache:// link backends and plain ones`}},
		{"two remote services", "link:\n" + files + "services:\n  - name: r\n    listen: 1\n    backends: [attache://h:7443/redis, attache://i:7443/pg]\n",
			[]string{`service "r": its link backends name two remote services, "redis" and "pg"`}},
		{"the same link backend twice", "discovery: {etcd: {endpoints: [e:1]}}\nlink:\n" + files + "services:\n  - name: r\n    listen: 1\n    backends: [attache://etcd/redis, {etcd: /attache/links/redis, link: redis}]\n",
			[]string{`f.yaml:7: service "r" lists backend etcd:/attache/links/redis twice`}},
		{"link twice", "link:\n" + files + "services:\n  - name: r\n    listen: 1\n    backends: [{url: attache://h:7443/redis, link: pg}]\n",
			[]string{`f.yaml:8: link: the url already names the remote service (redis); drop one`}},
		{"bad link key", "link:\n" + files + "services:\n  - name: r\n    listen: 1\n    backends: [{addr: h:7443, link: re/dis}]\n",
			[]string{`f.yaml:8: link: want a service name`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load(Sources{File: "f.yaml", FileData: []byte(tt.in)})
			checkErrors(t, err, tt.errs)
		})
	}
}
