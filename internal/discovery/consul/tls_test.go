package consul

import (
	"strings"
	"testing"

	"github.com/attache/attache/internal/backend"
	"github.com/attache/attache/internal/testenv"
	"github.com/attache/attache/internal/tlsclient"
)

// warnings counts the provider's warn lines that contain sub (its quotes
// escaped, as the text handler writes them).
func (h *harness) warnings(sub string) int {
	return len(h.logs.Lines("level=WARN", strings.ReplaceAll(sub, `"`, `\"`)))
}

// The tls settings reach the agent's HTTPS port, which requires a client
// certificate: a host:port address is HTTPS because TLS is set, and the
// service and KV watches answer over it.
func TestTLSFromSettings(t *testing.T) {
	t.Parallel()
	c := testenv.StartConsulTLS(t)
	c.Register(t, "web-1", "web", "10.0.0.1", 80)
	c.KVPut(t, "attache/tls", "10.0.0.9:6379")
	h := startConfig(t, Config{Address: c.HTTPSAddr(), TLS: new(tlsclient.Files(c.TLS().ClientFiles())), Watches: []Watch{
		{Service: "web", Name: "web"}, {Service: "kv", KVKey: "attache/tls"}}})
	if want := "consul https://" + c.HTTPSAddr(); h.p.Name() != want {
		t.Errorf("Name() = %q, want %q", h.p.Name(), want)
	}
	h.waitFor(t, map[string][]backend.Endpoint{"web": endpoints("10.0.0.1:80"), "kv": endpoints("10.0.0.9:6379")})
	c.Register(t, "web-2", "web", "10.0.0.2", 80)
	h.waitFor(t, map[string][]backend.Endpoint{"web": endpoints("10.0.0.1:80", "10.0.0.2:80"), "kv": endpoints("10.0.0.9:6379")})
}

// Without a tls section the consul CLI's variables are enough:
// CONSUL_HTTP_ADDR (no scheme) with CONSUL_HTTP_SSL=true, and the CA,
// client certificate and server name from theirs.
func TestTLSFromConsulVariables(t *testing.T) {
	c := testenv.StartConsulTLS(t)
	c.Register(t, "db-1", "db", "10.0.0.3", 5432)
	tl := c.TLS()
	t.Setenv(EnvAddr, c.HTTPSAddr())
	t.Setenv(EnvSSL, "true")
	t.Setenv(EnvCACert, tl.PKI.CAFile)
	t.Setenv(EnvClientCert, tl.ClientCert)
	t.Setenv(EnvClientKey, tl.ClientKey)
	t.Setenv(EnvTLSServerName, testenv.ConsulTLSName)
	h := start(t, "", Watch{Service: "db", Name: "db"})
	h.waitFor(t, map[string][]backend.Endpoint{"db": endpoints("10.0.0.3:5432")})
}

// Each way the TLS connection fails is refused with an error that names
// the agent and what failed, logged once however often the watch retries;
// no snapshot is sent.
func TestTLSRefused(t *testing.T) {
	t.Parallel()
	c := testenv.StartConsulTLS(t)
	c.Register(t, "web-1", "web", "10.0.0.1", 80)
	for _, tc := range c.TLS().RefusedClients(t) {
		t.Run(tc.Name, func(t *testing.T) {
			h := startConfig(t, Config{Address: c.HTTPSAddr(), TLS: new(tlsclient.Files(tc.Files)), Watches: []Watch{{Service: "web", Name: "web"}}})
			h.waitStatus(t, "three failures", func(st []WatchStatus) bool { return st[0].Failures >= 3 })
			st := h.p.Status()[0]
			t.Logf("refused: %s", st.LastError)
			if want := "on https://" + c.HTTPSAddr() + ": " + tc.Want; !strings.Contains(st.LastError, want) {
				t.Fatalf("status error %q, want it to contain %q", st.LastError, want)
			}
			if n := h.warnings(tc.Want); n != 1 {
				t.Errorf("logged at warn %d times over %d failures, want once\n%s", n, st.Failures, h.logs)
			}
			select {
			case s := <-h.out:
				t.Fatalf("snapshot %v from a refused connection", s.Services)
			default:
			}
		})
	}
}

// A TLS failure after a good answer keeps it: the client certificate on
// disk is replaced by one from another CA and the agent restarts (new
// connections), so the watch is refused and sends nothing; with the right
// certificate back (read at the next handshake) it answers again.
func TestTLSFailureKeepsLastAnswer(t *testing.T) {
	t.Parallel()
	c := testenv.StartConsulTLS(t)
	c.Register(t, "web-1", "web", "10.0.0.1", 80)
	files := tlsclient.Files(c.TLS().ClientFiles())
	cert := c.TLS().SwappableClientCert(t)
	files.Cert, files.Key = cert.Cert, cert.Key
	h := startConfig(t, Config{Address: c.HTTPSAddr(), TLS: &files, Watches: []Watch{{Service: "web", Name: "web"}}})
	h.waitFor(t, map[string][]backend.Endpoint{"web": endpoints("10.0.0.1:80")})

	cert.Rogue(t)
	c.Restart(t) // an empty agent: the watch must connect again
	c.Register(t, "web-2", "web", "10.0.0.2", 80)
	const want = "TLS: the server refused the client certificate"
	h.waitStatus(t, "three refusals", func(st []WatchStatus) bool {
		return st[0].Failures >= 3 && strings.Contains(st[0].LastError, want)
	})
	if n := h.warnings(want); n != 1 {
		t.Errorf("the refusal was logged at warn %d times, want once\n%s", n, h.logs)
	}
	select {
	case s := <-h.out:
		t.Fatalf("snapshot %v while refused: the last answer must stay", s.Services)
	default:
	}

	cert.Restore(t)
	h.waitFor(t, map[string][]backend.Endpoint{"web": endpoints("10.0.0.2:80")})
}

// A TLS file that cannot be read stops New, naming the file.
func TestTLSBadFile(t *testing.T) {
	_, err := New(Config{Address: "127.0.0.1:8501", TLS: &tlsclient.Files{CA: "/nonexistent/ca.pem"},
		Watches: []Watch{{Service: "web", Name: "web"}}})
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/ca.pem") || !strings.Contains(err.Error(), "CA file") {
		t.Fatalf("New with a missing CA file: %v, want an error naming the CA file", err)
	}
	_, err = New(Config{Address: "http://127.0.0.1:8500", TLS: &tlsclient.Files{},
		Watches: []Watch{{Service: "web", Name: "web"}}})
	if err == nil || !strings.Contains(err.Error(), "plain http://") {
		t.Fatalf("New with http:// and TLS: %v, want an error", err)
	}
}

// Whether an address is HTTPS, as the provider's name shows: its scheme,
// else a tls section, else CONSUL_HTTP_SSL; CONSUL_HTTP_ADDR when the
// address is empty. consul:// URLs give a bare host:port, so they follow
// the section.
func TestTLSAddressScheme(t *testing.T) {
	tests := []struct {
		addr, envAddr, envSSL string
		tls                   *tlsclient.Files
		want                  string // the name, or an error's text
	}{
		{addr: "127.0.0.1:8500", want: "consul 127.0.0.1:8500"},
		{addr: "127.0.0.1:8501", tls: &tlsclient.Files{}, want: "consul https://127.0.0.1:8501"},
		{addr: "127.0.0.1:8501", envSSL: "true", want: "consul https://127.0.0.1:8501"},
		{addr: "127.0.0.1:8500", envSSL: "false", want: "consul 127.0.0.1:8500"},
		{addr: "https://consul:8501", want: "consul https://consul:8501"},
		{envAddr: "https://consul:8501", want: "consul https://consul:8501"},
		{envAddr: "consul:8501", envSSL: "1", want: "consul https://consul:8501"},
		{addr: "127.0.0.1:8500", envSSL: "yes please", want: `CONSUL_HTTP_SSL="yes please": want true or false`},
		{addr: "http://consul:8500", tls: &tlsclient.Files{}, want: "address http://consul:8500 is plain http://, but TLS settings are given"},
	}
	for _, tt := range tests {
		t.Setenv(EnvAddr, tt.envAddr)
		t.Setenv(EnvSSL, tt.envSSL)
		name, err := Name(tt.addr, tt.tls)
		got := name
		if err != nil {
			got = err.Error()
		}
		if !strings.Contains(got, tt.want) || err == nil && got != tt.want {
			t.Errorf("Name(%q, tls %v) with %s=%q %s=%q: %q, %v; want %q", tt.addr, tt.tls != nil, EnvAddr, tt.envAddr, EnvSSL, tt.envSSL, name, err, tt.want)
		}
	}
}
