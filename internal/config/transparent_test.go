package config

import (
	"strings"
	"testing"
)

func TestTransparentFile(t *testing.T) {
	cfg, err := Load(Sources{FileData: []byte(`
transparent:
  listen: ":10000"
services:
  - name: redis
    listen: 127.0.0.1:6379
    backends: [10.0.0.5:6379]
`)})
	if err != nil {
		t.Fatal(err)
	}
	if want := (Transparent{Listen: ":10000", Origin: "config:3"}); cfg.Transparent != want {
		t.Errorf("Transparent = %+v, want %+v", cfg.Transparent, want)
	}
	// The flag beats the file.
	cfg, err = Load(Sources{Transparent: "127.0.0.1:10001", Forwards: []string{"6379=10.0.0.5:6379"},
		FileData: []byte("transparent: {listen: 10000}\n")})
	if err != nil {
		t.Fatal(err)
	}
	if want := (Transparent{Listen: "127.0.0.1:10001", Origin: "--transparent"}); cfg.Transparent != want {
		t.Errorf("Transparent = %+v, want %+v", cfg.Transparent, want)
	}
}

func TestTransparentErrors(t *testing.T) {
	for _, tc := range []struct {
		src  Sources
		want string
	}{
		{Sources{Transparent: "6379", Forwards: []string{"6379=h:1"}}, "transparent listener and service \"forward-6379\" both listen on port 6379"},
		{Sources{Transparent: "unix:///tmp/x", Forwards: []string{"6379=h:1"}}, "--transparent: want [host:]port (redirected connections are TCP)"},
		{Sources{Transparent: "0", Forwards: []string{"6379=h:1"}}, "--transparent: want a fixed port"},
		{Sources{Transparent: "x:y", Forwards: []string{"6379=h:1"}}, "--transparent:"},
		{Sources{FileData: []byte("transparent: {}\nservices: [{name: a, listen: 1, backends: [h:1]}]\n")}, "config:1: transparent: want listen"},
		{Sources{FileData: []byte("transparent: {listen: 1, port: 2}\nservices: [{name: a, listen: 3, backends: [h:1]}]\n")}, "port"},
	} {
		_, err := Load(tc.src)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Load(%+v) = %v, want an error with %q", tc.src, err, tc.want)
		}
	}
	// A UDP service may share the transparent port: redirected connections are TCP.
	if _, err := Load(Sources{Transparent: "5353", Forwards: []string{"5353/udp=h:53"}}); err != nil {
		t.Errorf("UDP service on the transparent port: %v", err)
	}
}

func TestSelectTransparent(t *testing.T) {
	services := []Service{
		{Name: "udp", Listen: ":6379", Protocol: ProtoUDP},
		{Name: "one", Listen: "127.0.0.1:6379"},
		{Name: "two", Listen: "127.0.0.2:6379"},
		{Name: "pg", Listen: ":5432"},
		{Name: "pg-local", Listen: "127.0.0.3:5432"},
	}
	for _, tc := range []struct {
		addr string
		port int
		want string
	}{
		{"127.0.0.2", 6379, "two"}, // the address selects among a port's services
		{"10.1.2.3", 6379, "one"},  // else the first on the port
		{"10.1.2.3", 5432, "pg"},   // a wildcard host beats the order
		{"127.0.0.3", 5432, "pg-local"},
		{"10.1.2.3", 11211, ""},
	} {
		got := ""
		if i := SelectTransparent(services, tc.addr, tc.port); i >= 0 {
			got = services[i].Name
		}
		if got != tc.want {
			t.Errorf("SelectTransparent(%s, %d) = %q, want %q", tc.addr, tc.port, got, tc.want)
		}
	}
}

func TestTransparentPerConsumer(t *testing.T) {
	// Per-consumer backends need no service: the consumers name them.
	cfg, err := Load(Sources{FileData: []byte("transparent: {listen: 10000, per_consumer: true}\n")})
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.Transparent.PerConsumer || cfg.Transparent.Listen != ":10000" {
		t.Errorf("Transparent = %+v", cfg.Transparent)
	}
	cfg, err = Load(Sources{Transparent: "10000", PerConsumer: true})
	if err != nil || !cfg.Transparent.PerConsumer {
		t.Errorf("flags: %+v, %v", cfg.Transparent, err)
	}
	if _, err := Load(Sources{PerConsumer: true, Forwards: []string{"1=h:1"}}); err == nil || !strings.Contains(err.Error(), "--per-consumer: needs --transparent") {
		t.Errorf("--per-consumer alone: %v", err)
	}
	if _, err := Load(Sources{FileData: []byte("transparent: {listen: 10000, per_consumer: maybe}\n")}); err == nil || !strings.Contains(err.Error(), "per_consumer") {
		t.Errorf("per_consumer: maybe: %v", err)
	}
}

// TestConsumerService: a consumer's value takes every backend form, with
// the settings of the port's service or the built-in defaults.
func TestConsumerService(t *testing.T) {
	cfg := &Config{Discovery: Discovery{Etcd: EtcdDiscovery{Endpoints: []string{"10.0.0.3:2379"}}}}
	_, err := ConsumerService("web:6379", "10.0.0.5:6379,{etcd: k}", nil, cfg)
	if err == nil || !strings.Contains(err.Error(), "want a comma-separated list of host:port") {
		t.Fatalf("a value with a file-only form: %v", err)
	}
	s, err := ConsumerService("web:6379", "10.0.0.5:6379, srv://_redis._tcp.example,redis.example,dns://r.example:6379,etcd://10.0.0.3:2379/k,consul:///kv,consul-service:///pg?tag=a,docker://db", nil, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, b := range s.Backends {
		got = append(got, b.String())
	}
	want := "10.0.0.5:6379 srv://_redis._tcp.example srv://redis.example dns://r.example:6379 etcd://10.0.0.3:2379/k consul:///kv consul-service:///pg?tag=a docker://db"
	if strings.Join(got, " ") != want {
		t.Errorf("backends %q, want %q", strings.Join(got, " "), want)
	}
	if s.Name != "web:6379" || s.Listen != "" || s.Balance != "round_robin" || s.Retries != BuiltinDefaults.Retries ||
		s.ConnectTimeout != BuiltinDefaults.ConnectTimeout || s.RetryTimeout != s.ConnectTimeout {
		t.Errorf("without a service on the port: %+v, want the built-in defaults", s)
	}
	base := &Service{Name: "redis", Listen: ":6379", Balance: "first", Retries: 9, HealthCheck: &HealthCheck{Send: "PING"},
		Backends: []Backend{{Addr: "10.9.9.9:1"}}}
	s, err = ConsumerService("web:6379", "attache://10.0.0.9:7443/redis", base, &Config{Link: Link{Cert: "c", Key: "k", CA: "a", Origin: "f:1"}})
	if err != nil {
		t.Fatal(err)
	}
	if s.Balance != "first" || s.Retries != 9 || s.HealthCheck == nil || len(s.Backends) != 1 || s.Backends[0].Link != "redis" || s.Name != "web:6379" {
		t.Errorf("with the port's service: %+v", s)
	}
}

func TestTransparentTProxy(t *testing.T) {
	cfg, err := Load(Sources{FileData: []byte("transparent: {listen: \":10000\", tproxy: true}\nservices: [{name: r, listen: \":6379\", backends: [\"a:1\"]}]\n"), File: "f.yaml"})
	if err != nil || !cfg.Transparent.TProxy {
		t.Fatalf("tproxy: true: %+v, %v", cfg.Transparent, err)
	}
	cfg, err = Load(Sources{Transparent: "10000", TProxy: true, Forwards: []string{"1=h:1"}})
	if err != nil || !cfg.Transparent.TProxy {
		t.Fatalf("--tproxy: %+v, %v", cfg.Transparent, err)
	}
	if _, err := Load(Sources{TProxy: true, Forwards: []string{"1=h:1"}}); err == nil || !strings.Contains(err.Error(), "--tproxy: needs --transparent") {
		t.Errorf("--tproxy without --transparent: %v", err)
	}
}
