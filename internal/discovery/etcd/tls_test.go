package etcd

import (
	"strings"
	"testing"

	"github.com/attache/attache/internal/etcdclient"
	"github.com/attache/attache/internal/testenv"
	"github.com/attache/attache/internal/tlsclient"
)

// warnings counts the provider's warn lines that contain sub (its quotes
// escaped, as the text handler writes them).
func (h *harness) warnings(sub string) int {
	return len(h.logs.Lines("level=WARN", strings.ReplaceAll(sub, `"`, `\"`)))
}

// The tls settings reach a member that requires a client certificate:
// the keys are read and followed over TLS.
func TestTLSFromSettings(t *testing.T) {
	e := testenv.StartEtcdTLS(t)
	e.Put(t, "/svc/tls/a", "10.0.0.1:6379")
	cfg := oneWatch(e, "tls", "/svc/tls")
	cfg.TLS = new(tlsclient.Files(e.TLS().ClientFiles()))
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
	for _, tc := range e.TLS().RefusedClients(t) {
		t.Run(tc.Name, func(t *testing.T) {
			cfg := oneWatch(e, "no", "/svc/no")
			cfg.TLS = new(tlsclient.Files(tc.Files))
			h := startProvider(t, cfg)
			base := h.p.Errors()
			waitFor(t, "three failed attempts", func() bool { return h.p.Errors() >= base+3 })
			t.Logf("refused: %s", h.p.Status().LastError)
			if st := h.p.Status(); !strings.Contains(st.LastError, tc.Want) || !strings.Contains(st.LastError, e.Endpoint()) {
				t.Fatalf("status error %q, want it to contain %q and the member's address %s", st.LastError, tc.Want, e.Endpoint())
			}
			if n := h.warnings(tc.Want); n != 1 {
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
	files := tlsclient.Files(e.TLS().ClientFiles())
	cert := e.TLS().SwappableClientCert(t)
	files.Cert, files.Key = cert.Cert, cert.Key
	cfg := oneWatch(e, "keep", "/svc/keep")
	cfg.TLS = &files
	h := startProvider(t, cfg)
	h.expect("keep", "10.0.0.1:1")

	cert.Rogue(t)
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

	cert.Restore(t)
	h.expect("keep", "10.0.0.1:1", "10.0.0.2:1")
}
