// Package certs makes the small certificate authority a fleet of attache
// hosts shares for their mutual-TLS links, and the host certificates it
// signs. It is what `attache certs init` and `attache certs issue` run.
//
// Typical usage:
//
//	ca, err := certs.Init(certs.InitOptions{Dir: "/etc/attache"})            // fleet-ca.crt, fleet-ca.key
//	files, err := certs.Issue(certs.IssueOptions{Dir: "/etc/attache", Name: "host-b",
//		DNS: []string{"host-b.internal"}})                                  // host-b.crt, host-b.key
//
// Keys are ECDSA P-256: every TLS stack the benchmarks compare against
// (OpenSSL in socat and HAProxy) speaks it, and it is fast to sign and verify.
// Key files are written 0600, certificates 0644, each through a temporary
// file renamed into place, so a reader never sees half a file (attache
// reloads certificates when they change on disk).
package certs

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// Defaults.
const (
	DefaultCAName = "fleet-ca"
	// DefaultCADays is the CA's validity: long, since replacing it means
	// re-issuing every host certificate.
	DefaultCADays = 3650
	// DefaultDays is a host certificate's validity. Rotation costs nothing
	// (attache reloads the files), so a year is a sane default.
	DefaultDays = 365
	// clockSkew backdates NotBefore so a host whose clock is a little
	// behind accepts a certificate issued a moment ago.
	clockSkew = 5 * time.Minute
)

// Organization is the O of every subject this package writes.
const Organization = "attache"

// nameRE is what a CA or host name may be: a DNS name (labels of letters,
// digits, '-' and '_'), since a host name also goes into the certificate's
// DNS SAN and into the link servers' allow lists.
var nameRE = regexp.MustCompile(`^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*$`)

// CheckName reports whether s can name a CA or a host certificate.
func CheckName(s string) error {
	if s == "" {
		return errors.New("want a name, got an empty one")
	}
	if len(s) > 253 || !nameRE.MatchString(s) {
		return fmt.Errorf("want a DNS-style name (letters, digits, '-', '_', dot-separated labels), got %q", s)
	}
	return nil
}

// CA is a certificate authority that can sign host certificates.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// NewCA makes a self-signed CA named name, valid from now for validity.
func NewCA(name string, now time.Time, validity time.Duration) (*CA, error) {
	if err := CheckName(name); err != nil {
		return nil, fmt.Errorf("CA name: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	skid, err := keyID(key.Public())
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name, Organization: []string{Organization}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		// The CA signs host certificates only, never another CA.
		MaxPathLen:     0,
		MaxPathLenZero: true,
		SubjectKeyId:   skid,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("sign CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse CA certificate: %w", err)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// Request describes a host certificate.
type Request struct {
	// Name is the host's name: the subject CN and the first DNS SAN, and
	// what link servers' allow lists name.
	Name string
	// DNS and IPs are further SANs.
	DNS []string
	IPs []net.IP
	// NotBefore and NotAfter bound the validity; zero NotBefore is now
	// (less a few minutes of clock skew), zero NotAfter is NotBefore plus
	// DefaultDays, or the CA's own expiry if that comes first.
	NotBefore, NotAfter time.Time
}

// Issue signs a certificate for req, usable both as a TLS server and a TLS
// client certificate (a link server is one, the ambassador that dials it
// the other). It returns the certificate and the new private key.
func (ca *CA) Issue(req Request) (*x509.Certificate, crypto.Signer, error) {
	if err := CheckName(req.Name); err != nil {
		return nil, nil, fmt.Errorf("name: %w", err)
	}
	dns := []string{req.Name}
	for _, d := range req.DNS {
		if err := CheckName(d); err != nil {
			return nil, nil, fmt.Errorf("DNS name: %w", err)
		}
		if !containsFold(dns, d) {
			dns = append(dns, d)
		}
	}
	nb, na := req.NotBefore, req.NotAfter
	if nb.IsZero() {
		nb = time.Now().Add(-clockSkew)
	}
	if na.IsZero() {
		na = nb.Add(clockSkew + DefaultDays*24*time.Hour)
		if na.After(ca.Cert.NotAfter) {
			na = ca.Cert.NotAfter
		}
	}
	if !na.After(nb) {
		return nil, nil, fmt.Errorf("validity: not after %s is not later than not before %s", na.Format(time.RFC3339), nb.Format(time.RFC3339))
	}
	if na.After(ca.Cert.NotAfter) {
		return nil, nil, fmt.Errorf("validity: the certificate would outlive its CA (CA expires %s)", ca.Cert.NotAfter.Format(time.RFC3339))
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:   serial,
		Subject:        pkix.Name{CommonName: req.Name, Organization: []string{Organization}},
		NotBefore:      nb,
		NotAfter:       na,
		KeyUsage:       x509.KeyUsageDigitalSignature,
		ExtKeyUsage:    []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:       dns,
		IPAddresses:    req.IPs,
		AuthorityKeyId: ca.Cert.SubjectKeyId,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("sign certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("parse certificate: %w", err)
	}
	return cert, key, nil
}

func containsFold(list []string, s string) bool {
	for _, x := range list {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}

func newSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil // never 0
}

// keyID is the SHA-1 of the public key, as RFC 5280 §4.2.1.2 suggests.
func keyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("marshal public key: %w", err)
	}
	sum := sha1.Sum(der)
	return sum[:], nil
}

// CertPEM encodes a certificate.
func CertPEM(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

// KeyPEM encodes a private key as PKCS #8.
func KeyPEM(k crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("marshal private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// Files are the two files of a certificate.
type Files struct {
	Cert, Key string
}

// FilesFor are the paths of name's certificate and key in dir.
func FilesFor(dir, name string) Files {
	return Files{Cert: filepath.Join(dir, name+".crt"), Key: filepath.Join(dir, name+".key")}
}

// InitOptions are `attache certs init`'s.
type InitOptions struct {
	Dir  string // default "."
	Name string // default DefaultCAName
	Days int    // default DefaultCADays
	// Force replaces existing files; without it an existing file is an
	// error, since replacing a CA invalidates every certificate it signed.
	Force bool
}

// Init creates a CA in dir and writes its certificate and key.
func Init(o InitOptions) (Files, error) {
	if o.Dir == "" {
		o.Dir = "."
	}
	if o.Name == "" {
		o.Name = DefaultCAName
	}
	if o.Days == 0 {
		o.Days = DefaultCADays
	}
	if o.Days < 1 {
		return Files{}, fmt.Errorf("days: want 1 or more, got %d", o.Days)
	}
	if err := CheckName(o.Name); err != nil {
		return Files{}, fmt.Errorf("name: %w", err)
	}
	f := FilesFor(o.Dir, o.Name)
	if err := checkFree(f, o.Force, "(replacing a CA invalidates every certificate it signed)"); err != nil {
		return Files{}, err
	}
	ca, err := NewCA(o.Name, time.Now(), time.Duration(o.Days)*24*time.Hour)
	if err != nil {
		return Files{}, err
	}
	if err := writePair(f, ca.Cert, ca.Key); err != nil {
		return Files{}, err
	}
	return f, nil
}

// IssueOptions are `attache certs issue`'s.
type IssueOptions struct {
	Dir    string // where the CA is and the new files go; default "."
	CAName string // default DefaultCAName
	Name   string
	DNS    []string
	IPs    []net.IP
	Days   int // default DefaultDays
	Force  bool
}

// Issue signs a host certificate with the CA in dir and writes it there.
func Issue(o IssueOptions) (Files, error) {
	if o.Dir == "" {
		o.Dir = "."
	}
	if o.CAName == "" {
		o.CAName = DefaultCAName
	}
	if o.Days == 0 {
		o.Days = DefaultDays
	}
	if o.Days < 1 {
		return Files{}, fmt.Errorf("days: want 1 or more, got %d", o.Days)
	}
	if err := CheckName(o.Name); err != nil {
		return Files{}, fmt.Errorf("name: %w", err)
	}
	if o.Name == o.CAName {
		return Files{}, fmt.Errorf("name: %q is the CA's own name; pick another", o.Name)
	}
	caFiles := FilesFor(o.Dir, o.CAName)
	ca, err := LoadCA(caFiles)
	if err != nil {
		return Files{}, err
	}
	f := FilesFor(o.Dir, o.Name)
	if err := checkFree(f, o.Force, ""); err != nil {
		return Files{}, err
	}
	now := time.Now()
	cert, key, err := ca.Issue(Request{Name: o.Name, DNS: o.DNS, IPs: o.IPs,
		NotBefore: now.Add(-clockSkew), NotAfter: now.Add(time.Duration(o.Days) * 24 * time.Hour)})
	if err != nil {
		return Files{}, err
	}
	if err := writePair(f, cert, key); err != nil {
		return Files{}, err
	}
	return f, nil
}

// LoadCA reads a CA's certificate and key and checks they belong together.
func LoadCA(f Files) (*CA, error) {
	certPEM, err := os.ReadFile(f.Cert)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("CA certificate %s not found: create the CA first with `attache certs init --dir %s`",
			f.Cert, filepath.Dir(f.Cert))
	}
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(f.Key)
	if err != nil {
		return nil, fmt.Errorf("CA key: %w", err)
	}
	certs, err := ParseCerts(certPEM)
	if err != nil {
		return nil, fmt.Errorf("CA certificate %s: %w", f.Cert, err)
	}
	cert := certs[0]
	if !cert.IsCA {
		return nil, fmt.Errorf("CA certificate %s: not a CA certificate", f.Cert)
	}
	key, err := ParseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("CA key %s: %w", f.Key, err)
	}
	if !publicKeysEqual(cert.PublicKey, key.Public()) {
		return nil, fmt.Errorf("CA key %s does not belong to the certificate %s", f.Key, f.Cert)
	}
	if time.Now().After(cert.NotAfter) {
		return nil, fmt.Errorf("CA certificate %s expired on %s", f.Cert, cert.NotAfter.Format(time.RFC3339))
	}
	return &CA{Cert: cert, Key: key}, nil
}

// ParseCerts reads every CERTIFICATE block of a PEM file; there must be at
// least one, and nothing else.
func ParseCerts(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("want CERTIFICATE PEM blocks, got %q", b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate: %w", err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM CERTIFICATE block found")
	}
	return out, nil
}

// ParseKey reads a PEM private key (PKCS #8, or the older EC and PKCS #1
// forms other tools write).
func ParseKey(data []byte) (crypto.Signer, error) {
	b, _ := pem.Decode(data)
	if b == nil {
		return nil, errors.New("no PEM block found")
	}
	var (
		k   any
		err error
	)
	switch b.Type {
	case "PRIVATE KEY":
		k, err = x509.ParsePKCS8PrivateKey(b.Bytes)
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(b.Bytes)
	case "RSA PRIVATE KEY":
		k, err = x509.ParsePKCS1PrivateKey(b.Bytes)
	default:
		return nil, fmt.Errorf("want a PRIVATE KEY PEM block, got %q", b.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("parse private key: %w", err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("unsupported private key type %T", k)
	}
	return s, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	e, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && e.Equal(b)
}

func checkFree(f Files, force bool, why string) error {
	if force {
		return nil
	}
	for _, p := range []string{f.Cert, f.Key} {
		if _, err := os.Lstat(p); err == nil {
			msg := fmt.Sprintf("%s already exists; use --force to replace it", p)
			if why != "" {
				msg += " " + why
			}
			return errors.New(msg)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// writePair writes the key first, then the certificate: a process that
// reloads when the certificate changes then finds its key in place.
func writePair(f Files, cert *x509.Certificate, key crypto.Signer) error {
	kp, err := KeyPEM(key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(f.Key), 0o755); err != nil {
		return fmt.Errorf("create directory: %w", err)
	}
	if err := WriteFileAtomic(f.Key, kp, 0o600); err != nil {
		return err
	}
	return WriteFileAtomic(f.Cert, CertPEM(cert), 0o644)
}

// WriteFileAtomic writes data to a temporary file in path's directory with
// mode perm, then renames it over path.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // after a successful rename there is nothing to remove
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// Names are the identities a certificate claims: its subject CN and DNS
// SANs, without duplicates. Allow lists match against these.
func Names(c *x509.Certificate) []string {
	var out []string
	if c.Subject.CommonName != "" {
		out = append(out, c.Subject.CommonName)
	}
	for _, d := range c.DNSNames {
		if !containsFold(out, d) {
			out = append(out, d)
		}
	}
	return out
}
