package daemon

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/attache/attache/internal/config"
	"github.com/attache/attache/internal/testenv"
)

// echoes reports whether a connection to addr echoes msg back.
func echoes(addr, msg string) bool {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return false
	}
	got := make([]byte, len(msg))
	_, err = io.ReadFull(c, got)
	return err == nil && string(got) == msg
}

// discovery.etcd.tls in the file reaches a member that requires a client
// certificate: a connection to the service ends at the backend stored in
// etcd.
func TestEtcdDiscoveryOverTLS(t *testing.T) {
	e := testenv.StartEtcdTLS(t)
	backend := testenv.Echo(t, "127.0.0.1:0")
	e.Put(t, "/svc/echo/a", backend)
	tl := e.TLS()
	addr, _ := startDaemon(t, fmt.Sprintf(`discovery:
  etcd:
    endpoints: [%s]
    tls: {ca: %s, cert: %s, key: %s, server_name: %s}
services:
  - name: s
    listen: 127.0.0.1:0
    backends: [{etcd: /svc/echo}]
`, e.URL(), tl.PKI.CAFile, tl.ClientCert, tl.ClientKey, testenv.EtcdTLSName))
	testenv.WaitFor(t, "an echo through attache from the etcd backend", func() bool { return echoes(addr, "over etcd TLS") })
}

// discovery.consul.tls in the file reaches the agent's HTTPS port, which
// requires a client certificate; the consul-service URL without a host
// uses the section's address.
func TestConsulDiscoveryOverTLS(t *testing.T) {
	c := testenv.StartConsulTLS(t)
	backend := testenv.Echo(t, "127.0.0.1:0")
	host, port, _ := net.SplitHostPort(backend)
	var p int
	fmt.Sscan(port, &p)
	c.Register(t, "echo-1", "echo", host, p)
	tl := c.TLS()
	addr, _ := startDaemon(t, fmt.Sprintf(`discovery:
  consul:
    address: %s
    tls: {ca: %s, cert: %s, key: %s, server_name: %s}
services:
  - name: s
    listen: 127.0.0.1:0
    backends: ["consul-service:///echo"]
`, c.HTTPSAddr(), tl.PKI.CAFile, tl.ClientCert, tl.ClientKey, testenv.ConsulTLSName))
	testenv.WaitFor(t, "an echo through attache from the Consul backend", func() bool { return echoes(addr, "over Consul TLS") })
}

// A TLS file that cannot be read stops the start with an error naming
// the section and the file, before any listener opens.
func TestSourceTLSFileErrorStopsStart(t *testing.T) {
	for _, tc := range []struct{ name, yaml, want string }{
		{"etcd", `discovery:
  etcd: {endpoints: [127.0.0.1:2379], tls: {ca: /nonexistent/etcd-ca.pem}}
services:
  - {name: s, listen: "127.0.0.1:0", backends: [{etcd: /svc/x}]}
`, "discovery.etcd.tls: tls: CA file: open /nonexistent/etcd-ca.pem"},
		{"consul", `discovery:
  consul: {address: 127.0.0.1:8501, tls: {ca: /nonexistent/consul-ca.pem}}
services:
  - {name: s, listen: "127.0.0.1:0", backends: ["consul-service:///x"]}
`, "discovery.consul.tls: tls: CA file: open /nonexistent/consul-ca.pem"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := config.Load(config.Sources{FileData: []byte(tc.yaml), File: "test.yaml"})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			ready := false
			err = Run(ctx, cfg, Options{Ready: func([]Bound) { ready = true }})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Run = %v, want an error containing %q", err, tc.want)
			}
			if ready {
				t.Errorf("the daemon served its listeners before failing")
			}
		})
	}
}
