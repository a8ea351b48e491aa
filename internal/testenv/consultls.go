package testenv

import (
	"fmt"
	"net"
	"strconv"
	"testing"
)

// ConsulTLSName is the DNS name in the certificate of StartConsulTLS's
// agent (with the address 127.0.0.1).
const ConsulTLSName = "consul.test"

// StartConsulTLS starts a dev agent as StartConsul does that also serves
// its HTTP API over HTTPS on HTTPSAddr, requiring a client certificate
// (Consul's tls.https verify_incoming). The plain HTTP port stays, for
// the helpers (Register, KVPut …).
func StartConsulTLS(t testing.TB) *Consul {
	t.Helper()
	return startConsul(t, newServerTLS(t, "consul", ConsulTLSName, "attache-consul-client"))
}

// TLS is how the agent serves HTTPS; nil for a plain agent.
func (c *Consul) TLS() *ServerTLS { return c.tls }

// HTTPSAddr is the agent's HTTPS API address, "127.0.0.1:port"; "" for a
// plain agent.
func (c *Consul) HTTPSAddr() string {
	if c.ports.https == 0 {
		return ""
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(c.ports.https))
}

// consulHCL is the agent configuration of the HTTPS interface on port
// (Consul 1.12+ syntax: a tls.https stanza leaves the internal RPC
// untouched).
func consulHCL(s *ServerTLS, port int) string {
	return fmt.Sprintf(`ports { https = %d }
tls {
  https {
    ca_file = %q
    cert_file = %q
    key_file = %q
    verify_incoming = true
  }
}`, port, s.PKI.CAFile, s.certFile, s.keyFile)
}
