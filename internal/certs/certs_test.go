package certs

import (
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestInitIssue(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	ca, err := Init(InitOptions{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if ca != FilesFor(dir, DefaultCAName) {
		t.Errorf("CA files %v, want %v", ca, FilesFor(dir, DefaultCAName))
	}
	host, err := Issue(IssueOptions{Dir: dir, Name: "host-b", DNS: []string{"b.internal", "host-b"}, IPs: []net.IP{net.ParseIP("10.0.0.2")}, Days: 30})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{ca.Key, host.Key} {
		st, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", f, st.Mode().Perm())
		}
	}
	caCert := readCert(t, ca.Cert)
	if !caCert.IsCA || caCert.Subject.CommonName != DefaultCAName || !caCert.MaxPathLenZero {
		t.Errorf("CA certificate: IsCA %v, CN %q, MaxPathLenZero %v", caCert.IsCA, caCert.Subject.CommonName, caCert.MaxPathLenZero)
	}
	leaf := readCert(t, host.Cert)
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{usage}, DNSName: "b.internal"}); err != nil {
			t.Errorf("host certificate does not verify for usage %v: %v", usage, err)
		}
	}
	if want := []string{"host-b", "b.internal"}; !slices.Equal(leaf.DNSNames, want) {
		t.Errorf("DNS SANs %q, want %q (name first, no duplicate)", leaf.DNSNames, want)
	}
	if len(leaf.IPAddresses) != 1 || !leaf.IPAddresses[0].Equal(net.ParseIP("10.0.0.2")) {
		t.Errorf("IP SANs %v", leaf.IPAddresses)
	}
	if days := time.Until(leaf.NotAfter).Hours() / 24; days < 29 || days > 30 {
		t.Errorf("valid for %.1f more days, want 30", days)
	}
	if got := Names(leaf); !slices.Equal(got, []string{"host-b", "b.internal"}) {
		t.Errorf("Names = %q", got)
	}
	if _, err := ParseKey(mustRead(t, host.Key)); err != nil {
		t.Errorf("host key: %v", err)
	}

	// Existing files need --force.
	if _, err := Issue(IssueOptions{Dir: dir, Name: "host-b"}); err == nil || !strings.Contains(err.Error(), "already exists; use --force") {
		t.Errorf("re-issue without force: %v", err)
	}
	if _, err := Init(InitOptions{Dir: dir}); err == nil || !strings.Contains(err.Error(), "invalidates every certificate") {
		t.Errorf("re-init without force: %v", err)
	}
	again, err := Issue(IssueOptions{Dir: dir, Name: "host-b", Force: true})
	if err != nil {
		t.Fatal(err)
	}
	if readCert(t, again.Cert).SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		t.Errorf("--force kept the old certificate")
	}
}

func TestErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := Init(InitOptions{Dir: dir}); err != nil {
		t.Fatal(err)
	}
	other := t.TempDir()
	tests := []struct {
		name string
		run  func() error
		want string
	}{
		{"CA missing", func() error { _, err := Issue(IssueOptions{Dir: other, Name: "h"}); return err },
			"not found: create the CA first with `attache certs init --dir " + other + "`"},
		{"bad name", func() error { _, err := Issue(IssueOptions{Dir: dir, Name: "bad name"}); return err }, `name: want a DNS-style name`},
		{"empty name", func() error { _, err := Issue(IssueOptions{Dir: dir}); return err }, "want a name, got an empty one"},
		{"leading dash", func() error { _, err := Issue(IssueOptions{Dir: dir, Name: "-x"}); return err }, "DNS-style name"},
		{"bad DNS", func() error { _, err := Issue(IssueOptions{Dir: dir, Name: "h", DNS: []string{"a..b"}}); return err }, "DNS name:"},
		{"CA's own name", func() error { _, err := Issue(IssueOptions{Dir: dir, Name: DefaultCAName}); return err }, "the CA's own name"},
		{"negative days", func() error { _, err := Issue(IssueOptions{Dir: dir, Name: "h", Days: -1}); return err }, "days: want 1 or more"},
		{"outlives CA", func() error { _, err := Issue(IssueOptions{Dir: dir, Name: "h", Days: 5000}); return err }, "outlive its CA"},
		{"bad CA name", func() error { _, err := Init(InitOptions{Dir: other, Name: "a/b"}); return err }, "name: want a DNS-style name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.run()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v, want it to contain %q", err, tt.want)
			}
		})
	}
	// A CA key that does not match its certificate.
	b := t.TempDir()
	if _, err := Init(InitOptions{Dir: b}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, DefaultCAName+".key"), mustRead(t, filepath.Join(b, DefaultCAName+".key")), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Issue(IssueOptions{Dir: dir, Name: "h"}); err == nil || !strings.Contains(err.Error(), "does not belong to the certificate") {
		t.Errorf("mismatched CA key: %v", err)
	}
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	cs, err := ParseCerts(mustRead(t, path))
	if err != nil {
		t.Fatal(err)
	}
	return cs[0]
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
