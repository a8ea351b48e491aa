package tlsclient

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/attache/attache/internal/certs"
	"github.com/attache/attache/internal/testenv"
)

// deadline bounds one handshake and read, so a broken case fails instead
// of hanging; it is not a performance claim.
const deadline = 30 * time.Second

// Every case is a real handshake with a crypto/tls server on loopback: what
// the client's Explain says names the failure the operator has to fix.
func TestExplainHandshakes(t *testing.T) {
	pki := testenv.NewPKI(t, "source-ca")
	rogue := testenv.NewPKI(t, "rogue-ca")
	serverCert, serverKey := pki.Issue(t, certs.Request{Name: "source.test", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	now := time.Now()
	oldCert, oldKey := pki.Issue(t, certs.Request{Name: "old.test", IPs: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-time.Hour)})
	clientCert, clientKey := pki.Issue(t, certs.Request{Name: "attache"})
	rogueCert, rogueKey := rogue.Issue(t, certs.Request{Name: "attache"})

	verifying := serveTLS(t, serverCert, serverKey, pki.CAFile)
	expired := serveTLS(t, oldCert, oldKey, "")
	plain := servePlain(t)

	tests := []struct {
		name  string
		addr  string
		files Files
		want  string // "" for success
	}{
		{"served", verifying, Files{CA: pki.CAFile, Cert: clientCert, Key: clientKey}, ""},
		{"served by name", verifying, Files{CA: pki.CAFile, Cert: clientCert, Key: clientKey, ServerName: "source.test"}, ""},
		{"unknown authority", verifying, Files{CA: rogue.CAFile, Cert: clientCert, Key: clientKey},
			"TLS: unknown authority: the server's certificate is not signed by a CA in the CA file"},
		{"system CAs only", verifying, Files{Cert: clientCert, Key: clientKey}, "TLS: unknown authority"},
		{"name mismatch", verifying, Files{CA: pki.CAFile, Cert: clientCert, Key: clientKey, ServerName: "other.test"},
			`TLS: name mismatch: the server's certificate is not valid for "other.test"`},
		{"expired", expired, Files{CA: pki.CAFile}, "TLS: certificate expired"},
		// Sent although the server names only the CA that did not sign it.
		{"client certificate from another CA", verifying, Files{CA: pki.CAFile, Cert: rogueCert, Key: rogueKey},
			"TLS: the server refused the client certificate (unknown certificate authority)"},
		{"no client certificate", verifying, Files{CA: pki.CAFile},
			"TLS: the server requires a client certificate and none is configured"},
		{"plain text", plain, Files{CA: pki.CAFile}, "TLS: not TLS: the server did not answer in TLS"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conf, err := tt.files.Config()
			if err != nil {
				t.Fatal(err)
			}
			err = Explain(roundTrip(t, tt.addr, conf))
			if tt.want == "" {
				if err != nil {
					t.Fatalf("round trip: %v", err)
				}
				return
			}
			if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
				t.Fatalf("error = %v\nwant it to start with %q", err, tt.want)
			}
			var te *Error
			if !errors.As(err, &te) || te.Err == nil {
				t.Fatalf("error %v is not an *Error wrapping the cause", err)
			}
		})
	}
}

// The client certificate is read at every handshake: one renewed on disk
// is sent on the next connection by the same configuration.
func TestClientCertificateRenewed(t *testing.T) {
	pki := testenv.NewPKI(t, "renew-ca")
	rogue := testenv.NewPKI(t, "other-ca")
	serverCert, serverKey := pki.Issue(t, certs.Request{Name: "source.test", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	addr := serveTLS(t, serverCert, serverKey, pki.CAFile)
	goodCert, goodKey := pki.Issue(t, certs.Request{Name: "good"})
	badCert, badKey := rogue.Issue(t, certs.Request{Name: "bad"})
	dir := t.TempDir()
	f := Files{CA: pki.CAFile, Cert: filepath.Join(dir, "cert.pem"), Key: filepath.Join(dir, "key.pem")}
	install := func(cert, key string) {
		for from, to := range map[string]string{cert: f.Cert, key: f.Key} {
			data, err := os.ReadFile(from)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(to, data, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	install(badCert, badKey)
	conf, err := f.Config()
	if err != nil {
		t.Fatal(err)
	}
	if err := Explain(roundTrip(t, addr, conf)); err == nil || !strings.Contains(err.Error(), "refused the client certificate") {
		t.Fatalf("with the other CA's certificate: %v, want it refused", err)
	}
	install(goodCert, goodKey)
	if err := roundTrip(t, addr, conf); err != nil {
		t.Fatalf("with the renewed certificate: %v", err)
	}
}

// A connection from Dial whose certificate the server refused reports the
// refusal on the write that fails, which is where an HTTP client sees it
// when the server's reset beats its first request. Every write is retried
// until one fails, so the test does not depend on when the reset comes.
func TestDialReportsAlertOnWrite(t *testing.T) {
	pki := testenv.NewPKI(t, "dial-ca")
	rogue := testenv.NewPKI(t, "dial-rogue")
	serverCert, serverKey := pki.Issue(t, certs.Request{Name: "source.test", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	addr := serveTLS(t, serverCert, serverKey, pki.CAFile)
	dial := (&net.Dialer{Timeout: deadline}).DialContext
	config := func(f Files) *tls.Config {
		conf, err := f.Config()
		if err != nil {
			t.Fatal(err)
		}
		return conf
	}

	goodCert, goodKey := pki.Issue(t, certs.Request{Name: "good"})
	c, err := Dial(t.Context(), dial, config(Files{CA: pki.CAFile, Cert: goodCert, Key: goodKey}), "tcp", addr)
	if err != nil {
		t.Fatalf("Dial with the server name taken from the address: %v", err)
	}
	_ = c.SetDeadline(time.Now().Add(deadline))
	buf := make([]byte, 5)
	if _, err := io.WriteString(c, "ping\n"); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping\n" {
		t.Fatalf("echo %q, %v", buf, err)
	}
	c.Close()

	badCert, badKey := rogue.Issue(t, certs.Request{Name: "bad"})
	for range 5 {
		c, err := Dial(t.Context(), dial, config(Files{CA: pki.CAFile, Cert: badCert, Key: badKey}), "tcp", addr)
		if err != nil {
			t.Fatalf("Dial: %v (the refusal comes after the client's side of the handshake)", err)
		}
		_ = c.SetDeadline(time.Now().Add(deadline))
		for err == nil {
			_, err = io.WriteString(c, "ping\n")
		}
		c.Close()
		if got := Explain(err); !strings.HasPrefix(got.Error(), "TLS: the server refused the client certificate (unknown certificate authority)") {
			t.Fatalf("failed write: %v, want the server's alert", got)
		}
	}
}

// Errors that are not about TLS pass through untouched.
func TestExplainOther(t *testing.T) {
	if Explain(nil) != nil {
		t.Fatal("Explain(nil) is not nil")
	}
	_, dialErr := net.Dial("tcp", "127.0.0.1:1")
	for _, err := range []error{io.EOF, dialErr} {
		if got := Explain(err); got != err {
			t.Errorf("Explain(%v) = %v, want it unchanged", err, got)
		}
	}
}

func TestConfigErrors(t *testing.T) {
	pki := testenv.NewPKI(t, "files-ca")
	cert, key := pki.Issue(t, certs.Request{Name: "attache"})
	otherCert, _ := pki.Issue(t, certs.Request{Name: "other"})
	notPEM := filepath.Join(t.TempDir(), "ca.txt")
	if err := os.WriteFile(notPEM, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		files Files
		want  string
	}{
		{"cert without key", Files{Cert: cert}, "needs both cert and key"},
		{"key without cert", Files{Key: key}, "needs both cert and key"},
		{"missing CA file", Files{CA: "/nonexistent/ca.pem"}, "tls: CA file: open /nonexistent/ca.pem"},
		{"CA file without a certificate", Files{CA: notPEM}, "tls: CA file " + notPEM + ": no PEM certificate in it"},
		{"key of another certificate", Files{Cert: otherCert, Key: key}, "tls: client certificate " + otherCert + " with key " + key},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.files.Config()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Config() error = %v, want it to contain %q", err, tt.want)
			}
		})
	}
	conf, err := Files{CA: pki.CAFile, Cert: cert, Key: key, ServerName: "x.test"}.Config()
	if err != nil {
		t.Fatal(err)
	}
	if conf.RootCAs == nil || conf.GetClientCertificate == nil || conf.ServerName != "x.test" {
		t.Fatalf("Config() = roots %v, client certificate %v, server name %q", conf.RootCAs, conf.GetClientCertificate != nil, conf.ServerName)
	}
	if conf, err := (Files{}).Config(); err != nil || conf.RootCAs != nil || conf.GetClientCertificate != nil {
		t.Fatalf("zero Files: Config() = %+v, %v; want the system's CAs and no certificate", conf, err)
	}
}

// roundTrip dials addr with conf, writes a line and reads the echo: with
// TLS 1.3 a server that refuses the client's certificate says so after the
// client's side of the handshake is done, on the first read.
func roundTrip(t *testing.T, addr string, conf *tls.Config) error {
	t.Helper()
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: deadline}, Config: conf}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(deadline))
	if _, err := io.WriteString(c, "ping\n"); err != nil {
		return err
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != "ping\n" {
		t.Fatalf("echo = %q", buf)
	}
	return nil
}

// serveTLS runs a TLS echo server on loopback with the certificate in
// certFile and keyFile. With clientCA it requires client certificates
// signed by that CA.
func serveTLS(t *testing.T, certFile, keyFile, clientCA string) string {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	conf := &tls.Config{Certificates: []tls.Certificate{cert}}
	if clientCA != "" {
		pem, err := os.ReadFile(clientCA)
		if err != nil {
			t.Fatal(err)
		}
		conf.ClientCAs = x509.NewCertPool()
		conf.ClientCAs.AppendCertsFromPEM(pem)
		conf.ClientAuth = tls.RequireAndVerifyClientCert
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", conf)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Serve(t, ln, func(c net.Conn) {
		_ = c.SetDeadline(time.Now().Add(deadline))
		_, _ = io.Copy(c, c)
	})
	return ln.Addr().String()
}

// servePlain answers every connection in plain HTTP, as a Docker engine's
// unencrypted port does.
func servePlain(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	testenv.Serve(t, ln, func(c net.Conn) {
		_, _ = io.WriteString(c, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
	})
	return ln.Addr().String()
}
