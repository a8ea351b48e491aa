package config

import (
	"strings"
	"testing"
	"time"
)

func TestParseForwardProtocol(t *testing.T) {
	tests := []struct {
		in, name, listen, proto, err string
	}{
		{in: "53/udp=10.0.0.2:53", name: "forward-53-udp", listen: ":53", proto: ProtoUDP},
		{in: "127.0.0.1:53/UDP=10.0.0.2:53", name: "forward-53-udp", listen: "127.0.0.1:53", proto: ProtoUDP},
		{in: "[::1]:53/udp=[2001:db8::2]:53", name: "forward-53-udp", listen: "[::1]:53", proto: ProtoUDP},
		{in: "80/tcp=web:8080", name: "forward-80", listen: ":80"},
		{in: "0/udp=h:1", name: "forward-0-udp", listen: ":0", proto: ProtoUDP},
		// A Unix socket path is never split: this is a socket file named udp.
		{in: "unix:///run/dir/udp=h:1", name: "forward-unix", listen: "unix:///run/dir/udp"},
		{in: "53/udp/udp=h:53", err: `listen side: want one /udp or /tcp after the port, got "53/udp/udp"`},
		{in: "53/sctp=h:53", err: `listen side: want a port number 0-65535 (0: any free port), got "53/sctp"`},
		{in: "53/udp=unix:///run/dns.sock", err: "target side: backend unix:///run/dns.sock: a udp service forwards to host:port, not to a Unix socket"},
		{in: "53/udp=attache://peer:7443/dns", err: "target side: backend attache://peer:7443/dns: attache:// links are mutual-TLS TCP streams"},
		{in: "53/udp=h:0", err: "target side: "},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			s, err := ParseForward(tt.in)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want it to contain %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s.Name != tt.name || s.Listen != tt.listen || s.Protocol != tt.proto || s.Origin != "--forward "+tt.in {
				t.Errorf("got name %q listen %q protocol %q origin %q; want %q %q %q", s.Name, s.Listen, s.Protocol, s.Origin, tt.name, tt.listen, tt.proto)
			}
		})
	}
}

// Validate checks a Config built by code as the file parser checks a file.
func TestValidateUDP(t *testing.T) {
	udp := func(mod func(*Service)) Service {
		s := Service{Name: "dns", Protocol: ProtoUDP, Listen: ":53", Backends: []Backend{{Addr: "10.0.0.2:53"}}, Origin: "code"}
		mod(&s)
		return s
	}
	tests := []struct {
		name string
		svc  Service
		err  string
	}{
		{"unknown protocol", udp(func(s *Service) { s.Protocol = "sctp" }), `code: service "dns": protocol "sctp": want tcp or udp`},
		{"unix listen", udp(func(s *Service) { s.Listen = "unix:///run/x.sock" }), "a udp service listens on host:port, not on a Unix socket"},
		{"link backend", udp(func(s *Service) { s.Backends[0].Link = "dns" }), "attache:// links are mutual-TLS TCP streams"},
		{"proxy protocol", udp(func(s *Service) { s.SendProxy = 2 }), "the PROXY protocol is for TCP services only"},
		{"connect-only check", udp(func(s *Service) { s.HealthCheck = &HealthCheck{Interval: time.Second} }), "health_check: a udp service's check sends a datagram"},
		{"udp settings on tcp", udp(func(s *Service) { s.Protocol = ""; s.MaxSessions = 3 }), "max_sessions and udp_idle_timeout are for udp services only"},
		{"negative", udp(func(s *Service) { s.UDPIdleTimeout = -1 }), "must be positive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			errs := Validate(&Config{Services: []Service{tt.svc}})
			if !strings.Contains(errs.Error(), tt.err) {
				t.Fatalf("errors %v, want one containing %q", errs, tt.err)
			}
		})
	}
	ok := Validate(&Config{Services: []Service{
		udp(func(*Service) {}),
		{Name: "dns-tcp", Listen: ":53", Backends: []Backend{{Addr: "10.0.0.2:53"}}, Origin: "code"},
	}})
	if len(ok) != 0 {
		t.Errorf("a TCP and a UDP service on one port: %v", ok)
	}
}

func TestLoadUDPDefaults(t *testing.T) {
	cfg, err := Load(Sources{Forwards: []string{"53/udp=10.0.0.2:53", "54/udp=10.0.0.2:53"},
		FileData: []byte("defaults: {max_sessions: 7}\nservices:\n  - {name: x, listen: 1, protocol: udp, backends: [h:1], udp_idle_timeout: 3s}\n")})
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]Service{}
	for _, s := range cfg.Services {
		byName[s.Name] = s
	}
	if s := byName["x"]; s.UDPIdleTimeout != 3*time.Second || s.MaxSessions != 7 {
		t.Errorf("file service: idle %v, max %d; want 3s and the defaults' 7", s.UDPIdleTimeout, s.MaxSessions)
	}
	if s := byName["forward-53-udp"]; s.UDPIdleTimeout != DefaultUDPIdleTimeout || s.MaxSessions != 7 || s.KeepAlive != 0 {
		t.Errorf("forward: idle %v, max %d, keepalive %v; want %v, 7, 0", s.UDPIdleTimeout, s.MaxSessions, s.KeepAlive, DefaultUDPIdleTimeout)
	}
}
