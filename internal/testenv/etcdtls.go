package testenv

import (
	"crypto/tls"
	"testing"

	"go.etcd.io/etcd/client/pkg/v3/transport"
)

// EtcdTLSName is the DNS name in the certificate of StartEtcdTLS's member
// (with the address 127.0.0.1).
const EtcdTLSName = "etcd.test"

// StartEtcdTLS starts an embedded etcd as StartEtcd does, but serving its
// clients over TLS that requires a client certificate (etcd's
// --client-cert-auth with --trusted-ca-file): URL is https://, and TLS
// says with what.
func StartEtcdTLS(t testing.TB) *Etcd {
	t.Helper()
	return startEtcd(t, newServerTLS(t, "etcd", EtcdTLSName, "attache-etcd-client"))
}

// TLS is how the member serves its clients; nil for a plain member.
func (e *Etcd) TLS() *ServerTLS { return e.tls }

// URL is the client URL, "http://127.0.0.1:port" or, over TLS,
// "https://127.0.0.1:port".
func (e *Etcd) URL() string { return e.clientURL.String() }

// etcdClientTLS is the TLS configuration of the member's own test client,
// made by etcd's transport package as the member's own is.
func etcdClientTLS(t testing.TB, s *ServerTLS) *tls.Config {
	t.Helper()
	conf, err := transport.TLSInfo{
		CertFile: s.ClientCert, KeyFile: s.ClientKey,
		TrustedCAFile: s.PKI.CAFile, ServerName: s.Name,
	}.ClientConfig()
	if err != nil {
		t.Fatalf("etcd: test client TLS: %v", err)
	}
	return conf
}
