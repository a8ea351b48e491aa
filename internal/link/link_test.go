package link

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/attache/attache/internal/certs"
	"github.com/attache/attache/internal/testenv"
)

// pki is a CA with a directory to write host identities into.
type pki struct {
	t   testing.TB
	ca  *certs.CA
	dir string
}

func newPKI(t testing.TB, name string) *pki {
	t.Helper()
	ca, err := certs.NewCA(name, time.Now(), 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "ca.crt"), certs.CertPEM(ca.Cert), 0o644); err != nil {
		t.Fatal(err)
	}
	return &pki{t: t, ca: ca, dir: dir}
}

// files writes a certificate for name signed by p's CA and returns the
// files of that identity, trusting p's CA and trust's, if not nil.
func (p *pki) files(name string, trust *pki, req certs.Request) Files {
	p.t.Helper()
	req.Name = name
	cert, key, err := p.ca.Issue(req)
	if err != nil {
		p.t.Fatal(err)
	}
	dir := p.t.TempDir()
	f := Files{Cert: filepath.Join(dir, name+".crt"), Key: filepath.Join(dir, name+".key"), CA: filepath.Join(p.dir, "ca.crt")}
	if trust != nil {
		// Trust trust's CA as well as the issuer's (a bundle, as during
		// a CA rotation): the host accepts trust's servers but its own
		// certificate is signed by p.
		f.CA = filepath.Join(dir, "bundle.crt")
		bundle := append(certs.CertPEM(p.ca.Cert), certs.CertPEM(trust.ca.Cert)...)
		if err := os.WriteFile(f.CA, bundle, 0o644); err != nil {
			p.t.Fatal(err)
		}
	}
	writeIdentity(p.t, f, cert.Raw, key)
	return f
}

// writeIdentity writes a key then its certificate, each renamed into
// place, as `attache certs issue` does.
func writeIdentity(t testing.TB, f Files, der []byte, key crypto.Signer) {
	t.Helper()
	kp, err := certs.KeyPEM(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := certs.WriteFileAtomic(f.Key, kp, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := certs.WriteFileAtomic(f.Cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
}

func (p *pki) pool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(p.ca.Cert)
	return pool
}

func (p *pki) identity(name string, trust *pki, req certs.Request) *Identity {
	p.t.Helper()
	id, err := NewIdentity(p.files(name, trust, req), nil, NewStats())
	if err != nil {
		p.t.Fatal(err)
	}
	return id
}

// linkServer runs a Server on loopback whose services are given by
// targets, and returns its address, stats and log.
type linkServer struct {
	addr  string
	stats *Stats
	log   *testenv.LogBuffer
	srv   *Server
}

func startServer(t testing.TB, id *Identity, targets map[string]Target) *linkServer {
	return startServerTimeout(t, id, targets, 2*time.Second)
}

func startServerTimeout(t testing.TB, id *Identity, targets map[string]Target, hsTimeout time.Duration) *linkServer {
	return startServerWith(t, id, targets, func(s *Server) { s.HandshakeTimeout = hsTimeout })
}

// startServerWith starts a link server set up by opt.
func startServerWith(t testing.TB, id *Identity, targets map[string]Target, opt func(*Server)) *linkServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ls := &linkServer{addr: ln.Addr().String(), stats: NewStats(), log: &testenv.LogBuffer{}}
	ls.srv = &Server{
		Identity: id,
		Lookup: func(s string) (Target, bool) {
			tg, ok := targets[s]
			return tg, ok
		},
		HandshakeTimeout: 2 * time.Second,
		Logger:           slog.New(slog.NewTextHandler(ls.log, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Stats:            ls.stats,
	}
	if testReader != nil {
		ls.srv.Reader = testReader(t)
	}
	opt(ls.srv)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ls.srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		ls.srv.Close()
		if t.Failed() {
			t.Logf("link server log:\n%s", ls.log)
		}
	})
	return ls
}

// echoTarget is a Target whose streams go to a real TCP echo server.
func echoTarget(t testing.TB, allow ...string) Target {
	addr := testenv.Echo(t, "127.0.0.1:0")
	return Target{Allow: allow, Handle: DialHandler(func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	})}
}

// modes are the two ways a client carries streams; tests of behaviour
// both must have run once per mode.
var modes = []struct {
	name    string
	perConn bool
}{{"multiplexed", false}, {"per-connection", true}}

func forModes(t *testing.T, f func(t *testing.T, perConn bool)) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) { f(t, m.perConn) })
	}
}

// connState is the TLS state a dialled stream travels on.
func connState(t *testing.T, c net.Conn) tls.ConnectionState {
	t.Helper()
	cs, ok := c.(interface{ ConnectionState() tls.ConnectionState })
	if !ok {
		t.Fatalf("%T has no TLS state", c)
	}
	return cs.ConnectionState()
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// roundTrip writes msg on c and reads it back (an echo behind the link).
func roundTrip(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatalf("write: %v", err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read: %v", err)
	}
	if string(got) != msg {
		t.Fatalf("echo: got %q, want %q", got, msg)
	}
}

func TestLinkStreamHalfCloseAndResumption(t *testing.T) {
	forModes(t, testLinkStreamHalfClose)
}

func testLinkStreamHalfClose(t *testing.T, perConn bool) {
	p := newPKI(t, "fleet")
	srv := startServer(t, p.identity("host-b", nil, certs.Request{}), map[string]Target{"echo": echoTarget(t, "host-a")})
	cl := &Client{Identity: p.identity("host-a", nil, certs.Request{}), Stats: NewStats(), PerConnection: perConn, Sessions: 1}
	defer cl.Close()

	c, err := cl.Dial(ctxT(t), "echo", srv.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	want := ALPN2
	if perConn {
		want = ALPN
	}
	if cs := connState(t, c); cs.Version != tls.VersionTLS13 || cs.NegotiatedProtocol != want {
		t.Fatalf("version %x, ALPN %q: want TLS 1.3 and %s", cs.Version, cs.NegotiatedProtocol, want)
	}
	roundTrip(t, c, "hello over the link")

	// Half-close: the client stops sending; everything it sent must still
	// come back, then EOF (the echo server half-closes after its EOF).
	big := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB, more than the socket buffers
	go func() {
		_, _ = c.Write(big)
		_ = c.(interface{ CloseWrite() error }).CloseWrite()
	}()
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read after half-close: %v", err)
	}
	if !bytes.Equal(got, big) {
		t.Fatalf("after half-close got %d bytes back, want the %d sent", len(got), len(big))
	}

	c2, err := cl.Dial(ctxT(t), "echo", srv.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	roundTrip(t, c2, "again")
	if !perConn {
		// Both streams on one pooled connection: one handshake.
		if total, _ := cl.Stats.ClientHandshakes(); total != 1 {
			t.Errorf("client handshakes %d, want 1 (one pooled connection)", total)
		}
		if total, _ := srv.stats.ServerHandshakes(); total != 1 {
			t.Errorf("server handshakes %d, want 1", total)
		}
		if _, opened := cl.Stats.Streams("client"); opened != 2 {
			t.Errorf("client streams opened %d, want 2", opened)
		}
		if _, opened := srv.stats.Streams("server"); opened != 2 {
			t.Errorf("server streams opened %d, want 2", opened)
		}
		return
	}
	// A second connection resumes the TLS session.
	if !connState(t, c2).DidResume {
		t.Errorf("second dial did not resume the TLS session")
	}
	if total, resumed := cl.Stats.ClientHandshakes(); total != 2 || resumed != 1 {
		t.Errorf("client handshakes %d (resumed %d), want 2 (1)", total, resumed)
	}
	if total, resumed := srv.stats.ServerHandshakes(); total != 2 || resumed != 1 {
		t.Errorf("server handshakes %d (resumed %d), want 2 (1)", total, resumed)
	}
}

// TestLinkRefusals sends every kind of unwelcome client at one server and
// checks each is refused, logged with who and why, and counted, and that a
// good client is served after each.
func TestLinkRefusals(t *testing.T) { forModes(t, testLinkRefusals) }

func testLinkRefusals(t *testing.T, perConn bool) {
	p := newPKI(t, "fleet")
	other := newPKI(t, "other-fleet")
	srv := startServer(t, p.identity("host-b", nil, certs.Request{}), map[string]Target{
		"echo":   echoTarget(t, "host-a"),
		"secret": echoTarget(t, "host-z"),
		"down": {Allow: []string{AllowAny}, Handle: DialHandler(func(context.Context) (net.Conn, error) {
			return nil, errors.New("connection refused (test)")
		})},
	})
	good := &Client{Identity: p.identity("host-a", nil, certs.Request{}), PerConnection: perConn}
	defer good.Close()
	now := time.Now()
	tests := []struct {
		name   string
		reason string
		who    string // what the log line must name
		try    func(t *testing.T) error
	}{
		{"other CA", ReasonUnknownCA, "intruder", func(t *testing.T) error {
			// Trusts the fleet's CA (so it accepts the server) but is
			// signed by another one.
			cl := &Client{Identity: other.identity("intruder", p, certs.Request{}), PerConnection: perConn}
			defer cl.Close()
			return dialAndRead(t, cl, "echo", srv.addr)
		}},
		{"expired certificate", ReasonExpired, "old-host", func(t *testing.T) error {
			cl := &Client{Identity: p.identity("old-host", nil, certs.Request{NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-time.Hour)}), PerConnection: perConn}
			defer cl.Close()
			return dialAndRead(t, cl, "echo", srv.addr)
		}},
		{"not allowed", ReasonNotAllowed, "host-a", func(t *testing.T) error {
			return dialAndRead(t, good, "secret", srv.addr)
		}},
		{"unknown service", ReasonUnknownService, "nope", func(t *testing.T) error {
			return dialAndRead(t, good, "nope", srv.addr)
		}},
		{"no backend", ReasonNoBackend, "host-a", func(t *testing.T) error {
			return dialAndRead(t, good, "down", srv.addr)
		}},
		{"plain TCP", ReasonNotTLS, "PING", func(t *testing.T) error {
			return rawExchange(t, srv.addr, []byte("PING\r\n"))
		}},
		{"garbage", ReasonHandshake, "127.0.0.1", func(t *testing.T) error {
			// A TLS record header then random bytes: past the record
			// check, into the handshake parser.
			junk := make([]byte, 300)
			_, _ = rand.Read(junk)
			return rawExchange(t, srv.addr, append([]byte{0x16, 0x03, 0x01, 0x01, 0x00, 0x01}, junk...))
		}},
		{"random bytes", ReasonNotTLS, "127.0.0.1", func(t *testing.T) error {
			junk := make([]byte, 300)
			_, _ = rand.Read(junk)
			junk[0] = 0xff
			return rawExchange(t, srv.addr, junk)
		}},
		{"no client certificate", ReasonNoCertificate, "127.0.0.1", func(t *testing.T) error {
			return tlsExchange(t, srv.addr, &tls.Config{InsecureSkipVerify: true, ServerName: ServerName("echo"), NextProtos: []string{ALPN}})
		}},
		{"TLS 1.2 only", ReasonHandshake, "127.0.0.1", func(t *testing.T) error {
			return tlsExchange(t, srv.addr, &tls.Config{InsecureSkipVerify: true, ServerName: ServerName("echo"), NextProtos: []string{ALPN},
				MaxVersion: tls.VersionTLS12, Certificates: []tls.Certificate{*good.Identity.Certificate()}})
		}},
		{"no attache/1", ReasonHandshake, "attache/1", func(t *testing.T) error {
			return tlsExchange(t, srv.addr, &tls.Config{InsecureSkipVerify: true, ServerName: ServerName("echo"),
				Certificates: []tls.Certificate{*good.Identity.Certificate()}})
		}},
		{"no service in SNI", ReasonNoService, "127.0.0.1", func(t *testing.T) error {
			return tlsExchange(t, srv.addr, &tls.Config{InsecureSkipVerify: true, ServerName: "echo.example", NextProtos: []string{ALPN},
				Certificates: []tls.Certificate{*good.Identity.Certificate()}})
		}},
		{"client refuses the server", ReasonPeerRejected, "127.0.0.1", func(t *testing.T) error {
			// A fleet certificate, but trusting only another CA.
			return tlsExchange(t, srv.addr, &tls.Config{ServerName: ServerName("echo"), NextProtos: []string{ALPN},
				RootCAs: other.pool(), Certificates: []tls.Certificate{*good.Identity.Certificate()}})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := srv.stats.Refused(tt.reason)
			if err := tt.try(t); err == nil {
				t.Fatalf("the link server served it")
			} else {
				t.Logf("client saw: %v", err)
			}
			waitFor(t, "refusal counted as "+tt.reason, func() bool { return srv.stats.Refused(tt.reason) == before+1 })
			// The server counts a refusal after logging it, so the line is
			// already there once the count moved.
			if lines := srv.log.Lines("link connection refused", "reason="+tt.reason, tt.who); len(lines) == 0 {
				t.Errorf("no log line naming reason %s and %q:\n%s", tt.reason, tt.who, srv.log)
			}
			// The server keeps serving.
			c, err := good.Dial(ctxT(t), "echo", srv.addr)
			if err != nil {
				t.Fatalf("good client after %s: %v", tt.name, err)
			}
			roundTrip(t, c, "still here")
			c.Close()
		})
	}
	// Every refusal was counted once, under its own reason.
	var total int64
	for _, r := range Reasons {
		total += srv.stats.Refused(r)
	}
	if total != int64(len(tests)) {
		t.Errorf("%d refusals counted, want %d", total, len(tests))
	}
}

// dialAndRead dials through the link and, when the dial succeeds, reads:
// a TLS 1.3 server refuses a client certificate after the client's
// handshake is done, so the refusal shows up on the dial's status read.
func dialAndRead(t *testing.T, cl *Client, service, addr string) error {
	c, err := cl.Dial(ctxT(t), service, addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = c.Read(make([]byte, 1))
	if err == nil {
		return nil
	}
	return err
}

// rawExchange sends b on a plain TCP connection and waits for the server
// to close it; it returns nil if the server sent anything that could be
// a served stream (it never should).
func rawExchange(t *testing.T, addr string, b []byte) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = c.Write(b)
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil && !errors.Is(err, io.EOF) && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("waiting for the server to close: %v", err)
	}
	if bytes.Contains(got, []byte("PING")) {
		return nil
	}
	return errors.New("closed by the server")
}

// tlsExchange makes a TLS handshake with conf (TLS 1.2 allowed) and reads
// the status byte; it returns nil only if the stream was accepted.
func tlsExchange(t *testing.T, addr string, conf *tls.Config) error {
	c, err := tls.Dial("tcp", addr, conf)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return err
	}
	if b[0] != statusOK {
		return errors.New("refused by status")
	}
	return nil
}

func waitFor(t *testing.T, what string, cond func() bool) { t.Helper(); testenv.WaitFor(t, what, cond) }

func TestLinkHandshakeTimeout(t *testing.T) {
	p := newPKI(t, "fleet")
	srv := startServerTimeout(t, p.identity("host-b", nil, certs.Request{}), map[string]Target{"echo": echoTarget(t, AllowAny)}, 200*time.Millisecond)
	c, err := net.Dial("tcp", srv.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Send nothing: the server must give up and close.
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.ReadAll(c); err != nil {
		t.Fatalf("waiting for the server to close: %v", err)
	}
	waitFor(t, "timeout counted", func() bool { return srv.stats.Refused(ReasonTimeout) == 1 })
}

// TestLinkCertificateRotation replaces the server's certificate on disk
// while a stream is open: the stream carries on, new connections get the
// new certificate, and a broken file keeps the previous one.
func TestLinkCertificateRotation(t *testing.T) { forModes(t, testLinkCertificateRotation) }

func testLinkCertificateRotation(t *testing.T, perConn bool) {
	p := newPKI(t, "fleet")
	logs := &testenv.LogBuffer{}
	f := p.files("host-b", nil, certs.Request{})
	id, err := NewIdentity(f, slog.New(slog.NewTextHandler(logs, nil)), NewStats())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { id.Watch(ctx, 20*time.Millisecond) })
	defer func() { cancel(); wg.Wait() }()
	srv := startServer(t, id, map[string]Target{"echo": echoTarget(t, AllowAny)})
	cl := &Client{Identity: p.identity("host-a", nil, certs.Request{}), PerConnection: perConn}
	defer cl.Close()

	open, err := cl.Dial(ctxT(t), "echo", srv.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	roundTrip(t, open, "before rotation")
	firstSerial := connState(t, open).PeerCertificates[0].SerialNumber

	// A new certificate for the same host, written as a tool would:
	// the key, then the certificate, each renamed into place.
	cert, key, err := p.ca.Issue(certs.Request{Name: "host-b", DNS: []string{"host-b.rotated"}})
	if err != nil {
		t.Fatal(err)
	}
	writeIdentity(t, f, cert.Raw, key)
	waitFor(t, "the new certificate in use", func() bool { ok, _ := id.Stats().Reloads(); return ok == 1 })

	roundTrip(t, open, "after rotation, same stream")
	// A fresh client: a resumed session would show the certificate of the
	// session it resumes.
	fresh := func() *Client {
		c := &Client{Identity: cl.Identity, PerConnection: perConn}
		t.Cleanup(func() { c.Close() })
		return c
	}
	c, err := fresh().Dial(ctxT(t), "echo", srv.addr)
	if err != nil {
		t.Fatal(err)
	}
	got := connState(t, c).PeerCertificates[0]
	c.Close()
	if got.SerialNumber.Cmp(firstSerial) == 0 || !strings.Contains(strings.Join(got.DNSNames, ","), "host-b.rotated") {
		t.Errorf("new connection got certificate %v %v, want the rotated one", got.SerialNumber, got.DNSNames)
	}

	// A broken certificate file: the rotated certificate stays in use.
	// (The rotation itself may have counted a failure: a reload between
	// the key's write and the certificate's sees a pair that does not
	// match, and keeps the old one until the certificate arrives.)
	_, failedBefore := id.Stats().Reloads()
	if err := certs.WriteFileAtomic(f.Cert, []byte("-----BEGIN CERTIFICATE-----\nnot base64\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the failed reload counted", func() bool { _, failed := id.Stats().Reloads(); return failed == failedBefore+1 })
	if lines := logs.Lines("link certificate reload failed", f.Cert); len(lines) == 0 {
		t.Errorf("no log line for the failed reload:\n%s", logs)
	}
	c, err = fresh().Dial(ctxT(t), "echo", srv.addr)
	if err != nil {
		t.Fatalf("dial after a broken certificate file: %v", err)
	}
	if got := connState(t, c).PeerCertificates[0]; got.SerialNumber.Cmp(cert.SerialNumber) != 0 {
		t.Errorf("after a failed reload the server presents serial %v, want %v", got.SerialNumber, cert.SerialNumber)
	}
	roundTrip(t, c, "served with the previous certificate")
	c.Close()
	roundTrip(t, open, "the first stream still works")
	if _, failed := id.Stats().Reloads(); failed != failedBefore+1 {
		t.Errorf("the same broken file was counted %d times, want once", failed-failedBefore)
	}
}
