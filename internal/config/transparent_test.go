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
