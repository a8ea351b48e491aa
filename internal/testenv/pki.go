package testenv

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/attache/attache/internal/certs"
)

// PKI is a certificate authority made for one test, its certificate
// written to CAFile, for servers and clients that speak TLS with real
// certificates (made with crypto/x509 by internal/certs).
type PKI struct {
	CA     *certs.CA
	CAFile string // the CA's certificate, PEM
	dir    string
}

// NewPKI makes a CA named name, valid for a day, in a temporary directory.
func NewPKI(t testing.TB, name string) *PKI {
	t.Helper()
	ca, err := certs.NewCA(name, time.Now(), 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p := &PKI{CA: ca, CAFile: filepath.Join(dir, name+"-ca.pem"), dir: dir}
	writeFile(t, p.CAFile, certs.CertPEM(ca.Cert))
	return p
}

// Issue signs a certificate for req (usable by a TLS server and a TLS
// client) and writes it and its key next to the CA's; it returns the two
// paths.
func (p *PKI) Issue(t testing.TB, req certs.Request) (certFile, keyFile string) {
	t.Helper()
	cert, key, err := p.CA.Issue(req)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := certs.KeyPEM(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(p.dir, req.Name+".pem"), filepath.Join(p.dir, req.Name+"-key.pem")
	writeFile(t, certFile, certs.CertPEM(cert))
	writeFile(t, keyFile, keyPEM)
	return certFile, keyFile
}

func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}
