package testenv

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"testing"

	"github.com/attache/attache/internal/certs"
)

// EtcdTLSName is the DNS name in the certificate of StartEtcdTLS's member
// (with the address 127.0.0.1).
const EtcdTLSName = "etcd.test"

// EtcdTLS is how a member started by StartEtcdTLS serves its clients: over
// TLS, with a certificate from PKI, accepting only clients whose
// certificate is signed by PKI's CA (etcd's --client-cert-auth with
// --trusted-ca-file).
type EtcdTLS struct {
	// PKI signed the member's certificate and ClientCert.
	PKI *PKI
	// ClientCert and ClientKey are a client certificate the member
	// accepts.
	ClientCert, ClientKey string

	certFile, keyFile string // the member's
	clientCA          string // the CA file client certificates are checked against
}

// StartEtcdTLS starts an embedded etcd as StartEtcd does, but serving its
// clients over TLS that requires a client certificate: Endpoint is then
// reached with https://, TLS() says with what.
func StartEtcdTLS(t testing.TB) *Etcd {
	t.Helper()
	p := NewPKI(t, "etcd")
	tl := &EtcdTLS{PKI: p, clientCA: p.CAFile}
	tl.certFile, tl.keyFile = p.Issue(t, certs.Request{Name: EtcdTLSName, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	tl.ClientCert, tl.ClientKey = p.Issue(t, certs.Request{Name: "attache-etcd-client"})
	return startEtcd(t, tl)
}

// TLS is how the member serves its clients; nil for a plain member.
func (e *Etcd) TLS() *EtcdTLS { return e.tls }

// URL is the client URL, "http://127.0.0.1:port" or, over TLS,
// "https://127.0.0.1:port".
func (e *Etcd) URL() string { return e.clientURL.String() }

// clientConfig is the TLS configuration of the member's own test client.
func (tl *EtcdTLS) clientConfig(t testing.TB) *tls.Config {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(tl.ClientCert, tl.ClientKey)
	if err != nil {
		t.Fatalf("etcd: test client certificate: %v", err)
	}
	pem, err := os.ReadFile(tl.PKI.CAFile)
	if err != nil {
		t.Fatalf("etcd: test client CA: %v", err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, ServerName: EtcdTLSName, MinVersion: tls.VersionTLS12}
}
