package testenv

import (
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/attache/attache/internal/certs"
)

// ServerTLS is how a server started for a test (StartEtcdTLS,
// StartConsulTLS) serves TLS: with a certificate from PKI for Name and
// 127.0.0.1, accepting only clients whose certificate PKI's CA signed.
type ServerTLS struct {
	// PKI signed the server's certificate and ClientCert.
	PKI *PKI
	// Name is the DNS name in the server's certificate.
	Name string
	// ClientCert and ClientKey are a client certificate the server
	// accepts.
	ClientCert, ClientKey string

	certFile, keyFile string // the server's
}

// newServerTLS makes a CA named ca, a server certificate for name and
// 127.0.0.1, and a client certificate named client.
func newServerTLS(t testing.TB, ca, name, client string) *ServerTLS {
	t.Helper()
	s := &ServerTLS{PKI: NewPKI(t, ca), Name: name}
	s.certFile, s.keyFile = s.PKI.Issue(t, certs.Request{Name: name, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	s.ClientCert, s.ClientKey = s.PKI.Issue(t, certs.Request{Name: client})
	return s
}

// ClientFiles are the TLS settings of a client the server accepts: its
// CA, the client certificate and the name in the server's certificate.
// The fields are tlsclient.Files's, so that tlsclient.Files(f) converts
// (testenv cannot import tlsclient, whose tests import testenv).
type ClientFiles struct {
	CA         string
	Cert, Key  string
	ServerName string
}

// ClientFiles are the settings of a client the server accepts.
func (s *ServerTLS) ClientFiles() ClientFiles {
	return ClientFiles{CA: s.PKI.CAFile, Cert: s.ClientCert, Key: s.ClientKey, ServerName: s.Name}
}

// SwappableCert is a client certificate and key in files of their own,
// which a test replaces to change what a client sends at its next
// handshake (clients read them at every handshake).
type SwappableCert struct {
	Cert, Key string
	good      [2][]byte
}

// SwappableClientCert copies the server's accepted client certificate and
// key to a directory of the test's.
func (s *ServerTLS) SwappableClientCert(t testing.TB) *SwappableCert {
	t.Helper()
	dir := t.TempDir()
	c := &SwappableCert{Cert: filepath.Join(dir, "cert.pem"), Key: filepath.Join(dir, "key.pem")}
	for i, from := range []string{s.ClientCert, s.ClientKey} {
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		c.good[i] = b
	}
	c.Restore(t)
	return c
}

// Rogue replaces the files with a certificate and key from another CA,
// which the server refuses.
func (c *SwappableCert) Rogue(t testing.TB) {
	t.Helper()
	cert, key := NewPKI(t, "rogue").Issue(t, certs.Request{Name: "rogue-client"})
	for from, to := range map[string]string{cert: c.Cert, key: c.Key} {
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, to, b)
	}
}

// Restore puts the accepted certificate and key back.
func (c *SwappableCert) Restore(t testing.TB) {
	t.Helper()
	writeFile(t, c.Cert, c.good[0])
	writeFile(t, c.Key, c.good[1])
}

// RefusedClient is a client's TLS settings that the server, or the client
// itself, refuses, and the words attache's error must use for it.
type RefusedClient struct {
	Name  string
	Files ClientFiles
	Want  string
}

// RefusedClients are the ways a TLS connection to the server fails: a
// client certificate from another CA, none, a CA that did not sign the
// server's certificate (unknown authority), and a server name the
// certificate does not carry.
func (s *ServerTLS) RefusedClients(t testing.TB) []RefusedClient {
	t.Helper()
	good := s.ClientFiles()
	rogue := NewPKI(t, "rogue")
	otherCA, noCert, untrusted, otherName := good, good, good, good
	otherCA.Cert, otherCA.Key = rogue.Issue(t, certs.Request{Name: "rogue-client"})
	noCert.Cert, noCert.Key = "", ""
	untrusted.CA = rogue.CAFile
	otherName.ServerName = "wrong.test"
	return []RefusedClient{
		{"client certificate from another CA", otherCA, "TLS: the server refused the client certificate (unknown certificate authority)"},
		{"no client certificate", noCert, "TLS: the server requires a client certificate and none is configured"},
		{"unknown authority", untrusted, "TLS: unknown authority: the server's certificate is not signed by a CA in the CA file"},
		{"name mismatch", otherName, `TLS: name mismatch: the server's certificate is not valid for "wrong.test"`},
	}
}
