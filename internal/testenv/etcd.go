package testenv

import (
	"context"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// etcdReadyTimeout bounds how long a start or restart may take before the
// test fails: a single member on loopback is normally ready well under a
// second, so this only trips on a server that will never come up.
const etcdReadyTimeout = 60 * time.Second

// Etcd is an embedded single-member etcd server on 127.0.0.1 with a data
// directory of its own. It keeps its ports and data directory across Stop and
// Restart, so a client (or a provider under test) that reconnects finds the
// same cluster, revisions included. StartEtcd registers a cleanup that stops
// it.
type Etcd struct {
	dir       string
	clientURL url.URL
	peerURL   url.URL

	logs lockedBuilder

	// tls is set for a member that serves its clients over TLS
	// (StartEtcdTLS); nil serves plain HTTP.
	tls *ServerTLS

	mu  sync.Mutex
	srv *embed.Etcd      // nil while stopped
	cli *clientv3.Client // used by Put and Delete; renewed by Restart
}

// StartEtcd starts an embedded etcd on two free loopback ports (client and
// peer) with a temporary data directory. Server errors are logged only if
// the test fails.
func StartEtcd(t testing.TB) *Etcd {
	t.Helper()
	return startEtcd(t, nil)
}

func startEtcd(t testing.TB, tlsInfo *ServerTLS) *Etcd {
	t.Helper()
	e := &Etcd{
		dir:       t.TempDir(),
		clientURL: url.URL{Scheme: "http", Host: freeLoopbackAddr(t)},
		peerURL:   url.URL{Scheme: "http", Host: freeLoopbackAddr(t)},
		tls:       tlsInfo,
	}
	if tlsInfo != nil {
		e.clientURL.Scheme = "https"
	}
	// Server errors are kept and shown only when the test fails: a clean
	// stop logs a few "server closed" errors that would be noise.
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("etcd %s server log (errors only):\n%s", e.clientURL.Host, e.logs.String())
		}
	})
	t.Cleanup(e.Stop)
	e.start(t)
	return e
}

// freeLoopbackAddr returns a 127.0.0.1 address whose port was free a moment
// ago. etcd needs its ports before it listens (they are written into the
// member's identity), so they cannot be ":0"; the small window in which
// another process could take the port is accepted for tests.
func freeLoopbackAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("etcd: find a free port: %v", err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatalf("etcd: release port %s: %v", addr, err)
	}
	return addr
}

func (e *Etcd) config() *embed.Config {
	cfg := embed.NewConfig()
	cfg.Name = "attache-test"
	cfg.Dir = e.dir
	cfg.ListenClientUrls = []url.URL{e.clientURL}
	cfg.AdvertiseClientUrls = []url.URL{e.clientURL}
	cfg.ListenPeerUrls = []url.URL{e.peerURL}
	cfg.AdvertisePeerUrls = []url.URL{e.peerURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	// Short ticks: a restarted single member elects itself after one
	// election timeout, and tests wait for that.
	cfg.TickMs = 10
	cfg.ElectionMs = 100
	cfg.EnableGRPCGateway = false
	// The data directory is thrown away after the test; fsync only slows
	// the 100-change tests down.
	cfg.UnsafeNoFsync = true
	// bcrypt's lowest cost: at the default, checking a password takes
	// seconds under the race detector on a loaded 2-core machine, longer
	// than a client's dial timeout (TestAuth failed in CI that way).
	cfg.BcryptCost = 4
	lg := zap.New(zapcore.NewCore(
		zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig()),
		zapcore.AddSync(&e.logs),
		zapcore.ErrorLevel,
	))
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(lg)
	if e.tls != nil {
		cfg.ClientTLSInfo = transport.TLSInfo{
			CertFile: e.tls.certFile, KeyFile: e.tls.keyFile,
			TrustedCAFile: e.tls.PKI.CAFile, ClientCertAuth: true,
		}
	}
	return cfg
}

func (e *Etcd) start(t testing.TB) {
	t.Helper()
	srv, err := embed.StartEtcd(e.config())
	if err != nil {
		t.Fatalf("etcd: start on %s (data %s): %v", e.clientURL.Host, e.dir, err)
	}
	select {
	case <-srv.Server.ReadyNotify():
	case err := <-srv.Err():
		srv.Close()
		t.Fatalf("etcd: server on %s failed before ready: %v", e.clientURL.Host, err)
	case <-time.After(etcdReadyTimeout):
		srv.Close()
		t.Fatalf("etcd: server on %s not ready after %v", e.clientURL.Host, etcdReadyTimeout)
	}
	cc := clientv3.Config{
		Endpoints:   []string{e.clientURL.Host},
		DialTimeout: 10 * time.Second,
		Logger:      zap.NewNop(),
	}
	if e.tls != nil {
		cc.TLS = etcdClientTLS(t, e.tls)
	}
	cli, err := clientv3.New(cc)
	if err != nil {
		srv.Close()
		t.Fatalf("etcd: test client for %s: %v", e.clientURL.Host, err)
	}
	e.mu.Lock()
	e.srv, e.cli = srv, cli
	e.mu.Unlock()
}

// Endpoint is the client address, "127.0.0.1:port", as an etcd client
// configuration takes it.
func (e *Etcd) Endpoint() string { return e.clientURL.Host }

func (e *Etcd) client(t testing.TB) *clientv3.Client {
	t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cli == nil {
		t.Fatalf("etcd: %s is stopped", e.clientURL.Host)
	}
	return e.cli
}

// Put writes key=value and fails the test if etcd does not accept it.
func (e *Etcd) Put(t testing.TB, key, value string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := e.client(t).Put(ctx, key, value); err != nil {
		t.Fatalf("etcd: put %q=%q: %v", key, value, err)
	}
}

// Delete removes key (not a prefix) and fails the test if etcd refuses.
// Deleting a key that does not exist is not an error.
func (e *Etcd) Delete(t testing.TB, key string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := e.client(t).Delete(ctx, key); err != nil {
		t.Fatalf("etcd: delete %q: %v", key, err)
	}
}

// Stop shuts the server down and waits until its listeners are closed.
// The data directory stays for Restart. Stopping a stopped server does
// nothing.
func (e *Etcd) Stop() {
	e.mu.Lock()
	srv, cli := e.srv, e.cli
	e.srv, e.cli = nil, nil
	e.mu.Unlock()
	if cli != nil {
		_ = cli.Close()
	}
	if srv != nil {
		srv.Close()
	}
}

// Restart stops the server if it runs and starts it again on the same ports
// with the same data directory, so keys and revisions survive. It returns
// once the member is ready to serve.
func (e *Etcd) Restart(t testing.TB) {
	t.Helper()
	e.Stop()
	e.start(t)
}

// lockedBuilder is a strings.Builder safe for the server's many goroutines.
type lockedBuilder struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuilder) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuilder) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
