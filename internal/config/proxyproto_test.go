package config

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseFileProxyProtocol(t *testing.T) {
	in := `services:
  - name: behind-lb
    listen: 6379
    accept_proxy:
      trusted: [10.0.0.0/8, 192.168.1.10, "2001:db8::/32"]
      timeout: 2s
    send_proxy: v2
    backends:
      - 10.0.0.5:6379
      - {addr: 10.0.0.6:6379, send_proxy: v1}
      - {addr: 10.0.0.7:6379, send_proxy: off, weight: 2}
      - {url: "unix:///run/redis.sock", send_proxy: V1}
      - {dns: redis.internal:6379}
  - name: optional
    listen: unix:///run/attache//front.sock
    accept_proxy: {required: false}
    backends: ["unix:///run/app.sock"]
`
	f, err := ParseFile("f.yaml", []byte(in))
	if err != nil {
		t.Fatal(err)
	}
	s := f.Services[0]
	wantAP := &AcceptProxy{Required: true, Timeout: 2 * time.Second, Trusted: []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.168.1.10/32"), netip.MustParsePrefix("2001:db8::/32")}}
	if !reflect.DeepEqual(s.AcceptProxy, wantAP) || s.SendProxy != 2 {
		t.Fatalf("accept_proxy %+v, send_proxy %d; want %+v, 2", s.AcceptProxy, s.SendProxy, wantAP)
	}
	var got []int
	for _, b := range s.Backends {
		got = append(got, s.SendProxyVersion(b))
	}
	if want := []int{2, 1, 0, 1, 2}; !reflect.DeepEqual(got, want) {
		t.Fatalf("versions sent per backend: %v, want %v", got, want)
	}
	if b := s.Backends[2].String(); b != "10.0.0.7:6379 (weight 2, send_proxy off)" {
		t.Errorf("String = %q", b)
	}
	if b := s.Backends[3]; b.Addr != "unix:///run/redis.sock" || b.String() != "unix:///run/redis.sock (send_proxy v1)" {
		t.Errorf("unix backend %+v, printed %q", b, b.String())
	}
	o := f.Services[1]
	if o.Listen != "unix:///run/attache/front.sock" || o.AcceptProxy == nil || o.AcceptProxy.Required ||
		o.AcceptProxy.Timeout != DefaultProxyHeaderTimeout || o.Backends[0].Addr != "unix:///run/app.sock" {
		t.Fatalf("second service %+v, accept_proxy %+v", o, o.AcceptProxy)
	}
	cfg := &Config{Services: f.Services}
	if errs := Validate(cfg); len(errs) != 0 {
		t.Fatalf("Validate: %v", errs)
	}
}

func TestParseFileProxyProtocolErrors(t *testing.T) {
	tests := []struct {
		name string
		in   string // service keys after name, listen and backends
		errs []string
	}{
		{"send_proxy bad", "send_proxy: yes", []string{`f.yaml:5: send_proxy: want v1, v2 or off, got "yes"`}},
		{"send_proxy a number", "send_proxy: 2", []string{`f.yaml:5: send_proxy: want v1, v2 or off, got "2"`}},
		{"accept_proxy a scalar", "accept_proxy: true", []string{`f.yaml:5: accept_proxy: want a mapping of keys, got "true"`}},
		{"unknown key", "accept_proxy: {trusted: [10.0.0.0/8], trust: x}",
			[]string{`f.yaml:5: trust: unknown key in accept_proxy (want one of: required, timeout, trusted)`}},
		{"trusted a scalar", "accept_proxy: {trusted: 10.0.0.0/8}",
			[]string{`f.yaml:5: trusted: want a list of address ranges such as [10.0.0.0/8, "2001:db8::/32"], got "10.0.0.0/8"`}},
		{"trusted bad range", "accept_proxy:\n      trusted:\n        - 10.0.0.0/8\n        - 10.0.0.0/33",
			[]string{`f.yaml:8: trusted: want an address range such as 10.0.0.0/8 or 2001:db8::/32, got "10.0.0.0/33"`}},
		{"trusted host bits", "accept_proxy: {trusted: [10.1.2.3/8]}", []string{`f.yaml:5: trusted: range "10.1.2.3/8" has host bits set; want 10.0.0.0/8`}},
		{"trusted a name", "accept_proxy: {trusted: [lb.internal]}", []string{`trusted: want an address range such as 10.0.0.0/8 or an IP address, got "lb.internal"`}},
		{"required not a bool", "accept_proxy: {trusted: [10.0.0.0/8], required: maybe}", []string{`f.yaml:5: required:`}},
		{"timeout zero", "accept_proxy: {trusted: [10.0.0.0/8], timeout: 0s}", []string{`f.yaml:5: timeout: want a duration such as 500ms, 10s or 1h (greater than zero), got "0s"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := "services:\n  - name: s\n    listen: 1\n    backends: [x:1]\n    " + tt.in + "\n"
			_, err := ParseFile("f.yaml", []byte(in))
			checkErrors(t, err, tt.errs)
		})
	}
}

func TestParseFileBackendSendProxyErrors(t *testing.T) {
	tests := []struct {
		name, backend string
		errs          []string
	}{
		{"on srv", "{srv: x, send_proxy: v2}", []string{"f.yaml:5: send_proxy: only a fixed addr takes its own send_proxy; discovered backends follow the service's"}},
		{"on a discovery url", "{url: 'dns://x:1', send_proxy: v1}", []string{"send_proxy: only a fixed addr takes its own send_proxy"}},
		{"bad value", "{addr: x:1, send_proxy: v3}", []string{`f.yaml:5: send_proxy: want v1, v2 or off, got "v3"`}},
		{"unix relative", "'unix://run/x.sock'", []string{`f.yaml:5: backend: want unix:///absolute/path (three slashes), got "unix://run/x.sock"`}},
		{"unix root", "{addr: 'unix:///'}", []string{`f.yaml:5: addr: want a socket file path after unix://, got "unix:///"`}},
		{"unix too long", "'unix:///" + strings.Repeat("a", 107) + "'", []string{`is 108 bytes long; the kernel takes at most 107`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := "services:\n  - name: s\n    listen: 1\n    backends:\n      - " + tt.backend + "\n"
			_, err := ParseFile("f.yaml", []byte(in))
			checkErrors(t, err, tt.errs)
		})
	}
}

func TestValidateProxyProtocol(t *testing.T) {
	svc := func(name, listen string) Service {
		return Service{Name: name, Listen: listen, Backends: []Backend{{Addr: "x:1"}}, Origin: "f.yaml:" + name}
	}
	noTrust := svc("1", ":1")
	noTrust.AcceptProxy = &AcceptProxy{Required: true, Timeout: time.Second}
	unixNoTrust := svc("2", "unix:///run/a.sock")
	unixNoTrust.AcceptProxy = &AcceptProxy{Required: true, Timeout: time.Second}
	sameSocket := svc("3", "unix:///run/a.sock")
	badVersion := svc("4", ":4")
	badVersion.SendProxy = 3
	badVersion.Backends[0].SendProxy = -2
	discovered := svc("5", ":5")
	discovered.Backends = []Backend{{Discover: &Discover{Kind: KindSRV, Name: "x"}, SendProxy: 1}}
	errs := Validate(&Config{Services: []Service{noTrust, unixNoTrust, sameSocket, badVersion, discovered}})
	checkErrors(t, errs, []string{
		`f.yaml:1: service "1": accept_proxy: trusted: want the address ranges the load balancers connect from (0.0.0.0/0 and ::/0 trust everyone)`,
		`f.yaml:2 and f.yaml:3: both listen on unix:///run/a.sock`,
		`f.yaml:4: service "4": send_proxy 3: want 1, 2, or -1 for off`,
		`f.yaml:4: service "4": backend x:1: send_proxy -2: want 1, 2, or -1 for off`,
		`f.yaml:5: service "5": backend srv://x: only a fixed address takes its own send_proxy`,
	})
}

func TestParseUnixAddr(t *testing.T) {
	for in, want := range map[string]string{
		"unix:///run/a.sock":     "unix:///run/a.sock",
		"unix:///run//x/../a.sk": "unix:///run/a.sk",
		"unix:///tmp/a/":         "unix:///tmp/a",
	} {
		got, err := ParseUnixAddr(in)
		if err != nil || got != want {
			t.Errorf("ParseUnixAddr(%q) = %q, %v; want %q", in, got, err, want)
		}
		if again, _ := ParseUnixAddr(got); again != got {
			t.Errorf("canonical %q parses to %q", got, again)
		}
		if l, err := ParseListen(in); err != nil || l != want {
			t.Errorf("ParseListen(%q) = %q, %v", in, l, err)
		}
		if b, err := ParseBackend(in); err != nil || b.Addr != want || b.Discover != nil {
			t.Errorf("ParseBackend(%q) = %+v, %v", in, b, err)
		}
	}
	for _, in := range []string{"unix://", "unix://a", "unix:///", "unix:///a\x00b", "unix:///" + strings.Repeat("x", 200)} {
		if got, err := ParseUnixAddr(in); err == nil {
			t.Errorf("ParseUnixAddr(%q) = %q, want an error", in, got)
		}
	}
}

func TestParseForwardUnix(t *testing.T) {
	s, err := ParseForward("6379=unix:///run/redis.sock")
	if err != nil || s.Backends[0].Addr != "unix:///run/redis.sock" {
		t.Fatalf("ParseForward = %+v, %v", s, err)
	}
	s, err = ParseForward("unix:///run/front.sock=redis:6379")
	if err != nil || s.Listen != "unix:///run/front.sock" || s.Name != "forward-unix" {
		t.Fatalf("ParseForward = %+v, %v", s, err)
	}
}
