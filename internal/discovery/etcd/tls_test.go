package etcd

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/attache/attache/internal/certs"
	"github.com/attache/attache/internal/etcdclient"
	"github.com/attache/attache/internal/testenv"
	"github.com/attache/attache/internal/tlsclient"
)

// tlsFiles is a client's TLS settings for e, a member from StartEtcdTLS:
// its CA, the client certificate it accepts, and the name in its
// certificate.
func tlsFiles(e *testenv.Etcd) *tlsclient.Files {
	tl := e.TLS()
	return &tlsclient.Files{CA: tl.PKI.CAFile, Cert: tl.ClientCert, Key: tl.ClientKey, ServerName: testenv.EtcdTLSName}
}

// warnings counts the provider's warn lines that contain sub.
func (h *harness) warnings(sub string) int { return len(h.logs.Lines("level=WARN", sub)) }

// The tls settings reach a member that requires a client certificate:
// the keys are read and followed over TLS.
func TestTLSFromSettings(t *testing.T) {
	e := testenv.StartEtcdTLS(t)
	e.Put(t, "/svc/tls/a", "10.0.0.1:6379")
	cfg := oneWatch(e, "tls", "/svc/tls")
	cfg.TLS = tlsFiles(e)
	h := startProvider(t, cfg)
	h.expect("tls", "10.0.0.1:6379")
	e.Put(t, "/svc/tls/b", "10.0.0.2:6379")
	h.expect("tls", "10.0.0.1:6379", "10.0.0.2:6379")
}

// Without a tls section, etcdctl's variables and an https:// endpoint are
// enough, as for etcdctl itself. The member's certificate carries
// 127.0.0.1, which the endpoint names.
func TestTLSFromEtcdctlVariables(t *testing.T) {
	e := testenv.StartEtcdTLS(t)
	e.Put(t, "/svc/env/a", "10.0.0.3:6379")
	tl := e.TLS()
	t.Setenv(etcdclient.EnvCACert, tl.PKI.CAFile)
	t.Setenv(etcdclient.EnvCert, tl.ClientCert)
	t.Setenv(etcdclient.EnvKey, tl.ClientKey)
	if !strings.HasPrefix(e.URL(), "https://") {
		t.Fatalf("URL %q, want https://", e.URL())
	}
	h := startProvider(t, Config{Endpoints: []string{e.URL()}, Watches: []Watch{{Service: "env", Key: "/svc/env"}}})
	h.expect("env", "10.0.0.3:6379")
}

// Each way a TLS connection fails is refused, with an error that names
// what failed, logged once however often the provider retries, and no
// snapshot is sent.
func TestTLSRefused(t *testing.T) {
	e := testenv.StartEtcdTLS(t)
	e.Put(t, "/svc/no/a", "10.0.0.1:1")
	good := tlsFiles(e)
	rogue := testenv.NewPKI(t, "rogue")
	rogueCert, rogueKey := rogue.Issue(t, certs.Request{Name: "rogue-client"})

	otherCA := *good
	otherCA.Cert, otherCA.Key = rogueCert, rogueKey
	untrusted := *good
	untrusted.CA = rogue.CAFile
	otherName := *good
	otherName.ServerName = "wrong.test"
	noCert := *good
	noCert.Cert, noCert.Key = "", ""
	for _, tc := range []struct {
		name  string
		files *tlsclient.Files
		want  string
	}{
		{"client certificate from another CA", &otherCA, "TLS: the server refused the client certificate (unknown certificate authority)"},
		{"no client certificate", &noCert, "TLS: the server requires a client certificate and none is configured"},
		{"unknown authority", &untrusted, "TLS: unknown authority: the server's certificate is not signed by a CA in the CA file"},
		{"name mismatch", &otherName, "TLS: name mismatch: the server's certificate is not valid for"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := oneWatch(e, "no", "/svc/no")
			cfg.TLS = tc.files
			h := startProvider(t, cfg)
			base := h.p.Errors()
			waitFor(t, "three failed attempts", func() bool { return h.p.Errors() >= base+3 })
			if st := h.p.Status(); !strings.Contains(st.LastError, tc.want) || !strings.Contains(st.LastError, e.Endpoint()) {
				t.Fatalf("status error %q, want it to contain %q and the member's address %s", st.LastError, tc.want, e.Endpoint())
			}
			if n := h.warnings(tc.want); n != 1 {
				t.Errorf("logged at warn %d times over %d failures, want once\n%s", n, h.p.Errors()-base, h.logs)
			}
			select {
			case s := <-h.out:
				t.Fatalf("snapshot %v from a refused connection", s.Services)
			default:
			}
			h.stop()
		})
	}
}

// A TLS failure after a good answer keeps the old endpoints: once the
// client certificate on disk is replaced by one from another CA and the
// member restarts, the provider is refused, says so once, and sends
// nothing; with the right certificate back (read again at the next
// handshake) it resynchronises, a change made meanwhile included.
func TestTLSFailureKeepsLastEndpoints(t *testing.T) {
	e := testenv.StartEtcdTLS(t)
	e.Put(t, "/svc/keep/a", "10.0.0.1:1")
	files := *tlsFiles(e)
	dir := t.TempDir()
	files.Cert, files.Key = copyFile(t, files.Cert, dir), copyFile(t, files.Key, dir)
	cfg := oneWatch(e, "keep", "/svc/keep")
	cfg.TLS = &files
	h := startProvider(t, cfg)
	h.expect("keep", "10.0.0.1:1")

	good := [2][]byte{readFile(t, files.Cert), readFile(t, files.Key)}
	rogueCert, rogueKey := testenv.NewPKI(t, "rogue").Issue(t, certs.Request{Name: "rogue-client"})
	writeFile(t, files.Cert, readFile(t, rogueCert))
	writeFile(t, files.Key, readFile(t, rogueKey))
	e.Restart(t) // ends the connection: the provider dials again
	e.Put(t, "/svc/keep/b", "10.0.0.2:1")
	const want = "TLS: the server refused the client certificate"
	base := h.p.Errors()
	waitFor(t, "three refused attempts", func() bool {
		return h.p.Errors() >= base+3 && strings.Contains(h.p.Status().LastError, want)
	})
	if n := h.warnings(want); n != 1 {
		t.Errorf("the refusal was logged at warn %d times, want once\n%s", n, h.logs)
	}
	select {
	case s := <-h.out:
		t.Fatalf("snapshot %v while refused: the last endpoints must stay", s.Services)
	default:
	}

	writeFile(t, files.Cert, good[0])
	writeFile(t, files.Key, good[1])
	h.expect("keep", "10.0.0.1:1", "10.0.0.2:1")
}

func copyFile(t *testing.T, from, dir string) string {
	t.Helper()
	to := filepath.Join(dir, filepath.Base(from))
	writeFile(t, to, readFile(t, from))
	return to
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}
