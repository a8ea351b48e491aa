package docker

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/attache/attache/internal/backend"
	"github.com/attache/attache/internal/testenv"
	"github.com/attache/attache/internal/tlsclient"
)

// --- tests against the real engine behind TLS ---

// The docker CLI's variables are enough: DOCKER_HOST names a tcp://
// engine, DOCKER_TLS_VERIFY turns TLS on and DOCKER_CERT_PATH holds
// ca.pem, cert.pem and key.pem. Containers are listed and followed over the
// TLS connection, which the engine's front accepts only with the client
// certificate.
func TestTLSEngineFromEnvironment(t *testing.T) {
	front := testenv.StartDockerTLS(t)
	t.Setenv("DOCKER_HOST", "tcp://"+front.Addr)
	t.Setenv(EnvTLSVerify, "1")
	t.Setenv(EnvCertPath, front.CertPath)
	nw := testenv.NewDockerNetwork(t)
	svc := uniqueService("tls")
	c := testenv.RunContainer(t, testenv.ContainerSpec{
		Labels: map[string]string{DefaultLabel: svc, DefaultPortLabel: "7000"}, Network: nw.Name, Greet: true,
	})
	p, snaps, _ := startProvider(t, Config{Services: []string{svc}})
	ep := backend.Endpoint{Addr: net.JoinHostPort(c.IP(t, nw.Name), "7000")}
	nextServices(t, snaps, "sync over TLS", map[string][]backend.Endpoint{svc: {ep}})
	assertGreets(t, ep.Addr, c)
	if !strings.HasPrefix(p.eng.base, "https://") {
		t.Errorf("engine base %q, want https://", p.eng.base)
	}
	c.Stop(t)
	nextServices(t, snaps, "event over TLS", map[string][]backend.Endpoint{svc: {}})
}

// A client certificate signed by another CA is refused by the engine. The
// error names the engine and what failed, it is logged once however often
// the provider retries, and no snapshot is sent meanwhile: the last good
// one stays in force. Once the right certificate is back (read from disk
// at the next connection), the provider resynchronises, including a change
// made while it was refused.
func TestTLSWrongClientCertificate(t *testing.T) {
	t.Parallel()
	front := testenv.StartDockerTLS(t)
	svc, nw, c1, c2 := labelledPair(t, "tlsbad")
	ep1 := backend.Endpoint{Addr: net.JoinHostPort(c1.IP(t, nw.Name), "7000")}
	ep2 := backend.Endpoint{Addr: net.JoinHostPort(c2.IP(t, nw.Name), "7000")}

	dir := front.CertPath
	files := certPathFiles(dir)
	p, snaps, logs := startProvider(t, Config{Host: "tcp://" + front.Addr, TLS: files, Services: []string{svc}})
	nextServices(t, snaps, "sync with the right certificate", map[string][]backend.Endpoint{svc: {ep1, ep2}})
	waitFor(t, "connected", func() bool { return p.Status().Connected })

	// The certificate on disk is replaced by one from another CA, and the
	// engine's front restarts, so the provider has to connect again.
	good := readCertPath(t, dir)
	writeCertPath(t, dir, readCertPath(t, testenv.NewPKI(t, "rogue").CertPath(t, "attache-client")))
	front.Restart(t, front.PKI.CAFile)
	c1.Stop(t) // the provider, refused, does not see it yet
	base := p.Errors()
	waitFor(t, "three refused reconnections", func() bool { return p.Errors() >= base+3 })

	st := p.Status()
	wantErr := "docker GET /version on tcp://" + front.Addr + ": TLS: the server refused the client certificate"
	if st.Connected || !strings.Contains(st.LastError, wantErr) {
		t.Fatalf("status = %+v\nwant disconnected with an error containing %q", st, wantErr)
	}
	if n := warnings(t, logs, "refused the client certificate"); n != 1 {
		t.Errorf("the refusal was logged at warn %d times over %d failures, want once\n%s", n, p.Errors()-base, logs)
	}
	select {
	case s := <-snaps:
		t.Fatalf("a snapshot was sent while the engine refused the provider: %v", s.Services)
	default:
	}

	writeCertPath(t, dir, good)
	nextServices(t, snaps, "resync with the right certificate back", map[string][]backend.Endpoint{svc: {ep2}})
	waitFor(t, "connected again", func() bool { return p.Status().Connected })
}

// An engine whose certificate does not carry the name attache checks, and
// one signed by a CA attache does not trust, are refused by attache, each
// error saying which.
func TestTLSEngineCertificateRefused(t *testing.T) {
	t.Parallel()
	front := testenv.StartDockerTLS(t)
	client := *certPathFiles(front.CertPath)
	svc := uniqueService("tlsname")

	byName := client
	byName.ServerName = testenv.DockerTLSName
	_, snaps, _ := startProvider(t, Config{Host: "tcp://" + front.Addr, TLS: &byName, Services: []string{svc}})
	nextServices(t, snaps, "the engine checked by its DNS name", map[string][]backend.Endpoint{svc: {}})

	otherName := client
	otherName.ServerName = "wrong.test"
	untrusted := client
	untrusted.CA = testenv.NewPKI(t, "untrusted").CAFile
	for _, tc := range []struct {
		files *tlsclient.Files
		want  string
	}{
		{&otherName, `TLS: name mismatch: the server's certificate is not valid for "wrong.test"`},
		{&untrusted, "TLS: unknown authority: the server's certificate is not signed by a CA in the CA file"},
	} {
		p, _, logs := startProvider(t, Config{Host: "tcp://" + front.Addr, TLS: tc.files, Services: []string{svc}})
		want := "docker GET /version on tcp://" + front.Addr + ": " + tc.want
		waitFor(t, "an error: "+tc.want, func() bool { return strings.Contains(p.Status().LastError, want) })
		waitFor(t, "the error in the log", func() bool { return warnings(t, logs, tc.want) == 1 })
	}
}

// Transparent mode's caller lookups reach the engine over TLS the same way
// (here from the file's settings), and follow its events there.
func TestTLSCallers(t *testing.T) {
	t.Parallel()
	front := testenv.StartDockerTLS(t)
	nw := testenv.NewDockerNetwork(t)
	c := testenv.RunContainer(t, testenv.ContainerSpec{Network: nw.ID, Env: []string{"BACKEND_6379=10.0.0.5:6379"}})
	callers := runCallers(t, "tcp://"+front.Addr, certPathFiles(front.CertPath))

	cl, err := callers.Lookup(t.Context(), netip.MustParseAddr(c.IP(t, nw.Name)))
	if err != nil || cl == nil || cl.ID != c.ID || cl.Connect[6379] != "10.0.0.5:6379" {
		t.Fatalf("Lookup over TLS = %+v, %v; want container %s choosing 10.0.0.5:6379", cl, err, c.Name)
	}
	waitFor(t, "the events stream over TLS", callers.Live)
}

// --- tests without the engine ---

// engineTLS follows the docker CLI: the variables turn TLS on for tcp://
// hosts only, each file of DOCKER_CERT_PATH is used when it exists, and the
// configuration, when it says anything, wins.
func TestEngineTLS(t *testing.T) {
	full := t.TempDir()
	for _, f := range []string{"ca.pem", "cert.pem", "key.pem"} {
		touch(t, filepath.Join(full, f))
	}
	caOnly := t.TempDir()
	touch(t, filepath.Join(caOnly, "ca.pem"))
	certOnly := t.TempDir()
	touch(t, filepath.Join(certOnly, "cert.pem"))
	home := t.TempDir()
	touch(t, filepath.Join(home, ".docker", "ca.pem"))
	t.Setenv("HOME", home)
	conf := &tlsclient.Files{CA: "/etc/ca.pem", ServerName: "engine"}

	tests := []struct {
		name    string
		host    string
		conf    *tlsclient.Files
		env     map[string]string
		want    *tlsclient.Files
		wantErr string
	}{
		{"no variables", "tcp://h:2376", nil, nil, nil, ""},
		{"verify", "tcp://h:2376", nil, map[string]string{EnvTLSVerify: "1", EnvCertPath: full},
			&tlsclient.Files{CA: filepath.Join(full, "ca.pem"), Cert: filepath.Join(full, "cert.pem"), Key: filepath.Join(full, "key.pem")}, ""},
		{"DOCKER_TLS is verified too", "tcp://h:2376", nil, map[string]string{EnvTLS: "1", EnvCertPath: caOnly},
			&tlsclient.Files{CA: filepath.Join(caOnly, "ca.pem")}, ""},
		{"default cert path", "tcp://h:2376", nil, map[string]string{EnvTLSVerify: "1"},
			&tlsclient.Files{CA: filepath.Join(home, ".docker", "ca.pem")}, ""},
		{"cert without key", "tcp://h:2376", nil, map[string]string{EnvTLSVerify: "1", EnvCertPath: certOnly},
			nil, "cert.pem and key.pem go together, found only cert.pem"},
		{"variables ignored for a unix socket", "unix:///var/run/docker.sock", nil, map[string]string{EnvTLSVerify: "1", EnvCertPath: full}, nil, ""},
		{"configuration wins", "tcp://h:2376", conf, map[string]string{EnvTLSVerify: "1", EnvCertPath: full}, conf, ""},
		{"configuration for a unix socket", "unix:///var/run/docker.sock", conf, nil, nil, "TLS is for tcp:// hosts"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := engineTLS(tt.host, tt.conf, func(k string) string { return tt.env[k] })
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("engineTLS = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

// With TLS a tcp:// host without a port is the engine's TLS port, 2376;
// missing files are an error of New, before anything runs.
func TestNewTLS(t *testing.T) {
	pki := testenv.NewPKI(t, "new")
	p, err := New(Config{Host: "tcp://engine.test", TLS: &tlsclient.Files{CA: pki.CAFile}, Services: []string{"s"}})
	if err != nil {
		t.Fatal(err)
	}
	if p.eng.base != "https://engine.test:2376" {
		t.Errorf("base = %q, want https://engine.test:2376", p.eng.base)
	}
	_, err = New(Config{Host: "tcp://engine.test:2376", TLS: &tlsclient.Files{CA: "/nonexistent/ca.pem"}, Services: []string{"s"}})
	if err == nil || !strings.Contains(err.Error(), "docker discovery: docker host \"tcp://engine.test:2376\": tls: CA file: open /nonexistent/ca.pem") {
		t.Errorf("New with a missing CA file: %v", err)
	}
	_, err = NewCallers("tcp://engine.test:2376", &tlsclient.Files{Cert: "/nonexistent/cert.pem", Key: "/nonexistent/key.pem"}, nil)
	if err == nil || !strings.Contains(err.Error(), "tls: client certificate /nonexistent/cert.pem") {
		t.Errorf("NewCallers with a missing certificate: %v", err)
	}
}

// --- helpers ---

// warnings counts the warn records in logs whose err or error field
// contains sub.
func warnings(t *testing.T, logs *testenv.LogBuffer, sub string) int {
	t.Helper()
	n := 0
	for line := range strings.Lines(logs.String()) {
		var rec struct{ Level, Err, Error string }
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if rec.Level == "WARN" && strings.Contains(rec.Err+rec.Error, sub) {
			n++
		}
	}
	return n
}

// certPathFiles names the files of a DOCKER_CERT_PATH directory.
func certPathFiles(dir string) *tlsclient.Files {
	return &tlsclient.Files{CA: filepath.Join(dir, "ca.pem"), Cert: filepath.Join(dir, "cert.pem"), Key: filepath.Join(dir, "key.pem")}
}

// readCertPath and writeCertPath read and write a DOCKER_CERT_PATH's
// client certificate and key.
func readCertPath(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	m := map[string][]byte{}
	for _, f := range []string{"cert.pem", "key.pem"} {
		data, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		m[f] = data
	}
	return m
}

func writeCertPath(t *testing.T, dir string, files map[string][]byte) {
	t.Helper()
	for f, data := range files {
		if err := os.WriteFile(filepath.Join(dir, f), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func touch(t *testing.T, path string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
}

// A failure that repeats is logged at warn once, then at debug, until the
// connection works again; TLS failures repeat when what failed is the same,
// however net/http words them.
func TestRepeatedFailures(t *testing.T) {
	refused := func(detail string) error {
		return fmt.Errorf("docker GET /version: %w", &tlsclient.Error{What: "the server refused the client certificate", Err: errors.New(detail)})
	}
	var r repeated
	steps := []struct {
		err  error
		ok   bool
		want slog.Level
	}{
		{errors.New("connection refused"), false, slog.LevelWarn},
		{errors.New("connection refused"), false, slog.LevelDebug},
		{refused("remote error"), false, slog.LevelWarn},
		{refused("readLoopPeekFailLocked: remote error"), false, slog.LevelDebug},
		{refused("remote error"), true, slog.LevelWarn}, // it had worked in between
		{errors.New("connection refused"), false, slog.LevelWarn},
	}
	for i, s := range steps {
		if got := r.level(s.err, s.ok); got != s.want {
			t.Errorf("step %d (%v, worked %v): level %v, want %v", i, s.err, s.ok, got, s.want)
		}
	}
}
