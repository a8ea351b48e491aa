// Package etcd discovers backends from keys in an etcd v3 cluster and keeps
// following them with a watch.
//
// # Keys
//
// Each Watch maps one etcd key K to one attache service:
//
//   - Every key under K + "/" holds one endpoint (at any depth: K/a and
//     K/a/b both count). Only the values matter; the key names are free,
//     e.g. the host name of the registering instance.
//   - If there is no key under K + "/", the value of K itself is read as a
//     comma-separated list of endpoints ("10.0.0.1:6379,10.0.0.2:6379"), or
//     as one JSON endpoint. This is ambassadord's etcd://host:port/path
//     behaviour: the values of the children if the path has children,
//     otherwise the value at the path. When children exist, the value of K
//     is ignored.
//   - If neither exists, the service has no endpoints (and is still
//     reported, with an empty list).
//
// A service watched through several keys has the union of their endpoints.
//
// Keys next to K that merely start with the same bytes (K + "-cache/x")
// belong to another service and are ignored.
//
// # Values
//
// A value is either plain "host:port" or a JSON object
//
//	{"addr":"host:port","weight":2,"priority":0}
//
// where weight (0 means 1) and priority (lower is preferred) are optional,
// both 0-65535, and any other field is an error. The host is an IP address
// (IPv6 in brackets: "[2001:db8::1]:80") or a DNS name resolved at dial
// time; the port is 1-65535. A malformed value is logged with its key and
// skipped; the other endpoints of the service stay.
//
// # Following changes
//
// Run reads the watched keys, then watches them from the revision after
// that read, so no change is missed or applied twice. If the watch fails
// (etcd unreachable, the member lost its leader, the revision was
// compacted), Run keeps the last snapshot in force, backs off (1 s doubling
// to 30 s), reads everything again and watches from the new revision.
//
// Typical usage:
//
//	p, err := etcd.New(etcd.Config{
//		Endpoints: []string{"127.0.0.1:2379"},
//		Watches:   []etcd.Watch{{Service: "redis", Key: "/attache/services/redis"}},
//		Logger:    logger,
//	})
//	if err != nil {
//		return err // the config is wrong; nothing was started
//	}
//	go p.Run(ctx, snapshots)
package etcd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/url"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/connectivity"

	"github.com/attache/attache/internal/backend"
	"github.com/attache/attache/internal/discovery"
	"github.com/attache/attache/internal/etcdclient"
	"github.com/attache/attache/internal/tlsclient"
)

const (
	defaultDialTimeout = 5 * time.Second
	defaultMinBackoff  = time.Second
	defaultMaxBackoff  = 30 * time.Second
	// keepAliveTime makes a connection that died silently (a partition
	// without a RST) show up as a failure within about two keepalive
	// periods. etcd refuses pings more often than every 5 s by default.
	keepAliveTime = 10 * time.Second
)

// Config configures a Provider. The zero value is not valid: Endpoints and
// Watches are required.
type Config struct {
	// Endpoints are the etcd members' client addresses, "127.0.0.1:2379" or
	// "http://127.0.0.1:2379" ("https://" uses TLS: see TLS). The client
	// balances across them and fails over.
	Endpoints []string
	// Username and Password authenticate to etcd when it has auth enabled.
	// Give both or neither.
	Username, Password string
	// TLS, when set, reaches the members over TLS with these files (see
	// etcdclient.Config.TLS); nil leaves TLS to etcdctl's variables
	// ETCDCTL_CACERT, ETCDCTL_CERT and ETCDCTL_KEY, and without them to
	// the endpoints' scheme. New reads the files, so a missing or
	// unreadable one is an error before anything starts.
	TLS *tlsclient.Files
	// DialTimeout bounds connecting and each full read of the watched keys.
	// Zero means 5 s.
	DialTimeout time.Duration
	// Watches lists the keys to follow. A service may have several: its
	// endpoints are the union of theirs.
	Watches []Watch
	// Logger receives malformed values and connection trouble; nil
	// discards.
	Logger *slog.Logger
}

// Watch maps one etcd key to one attache service (see the package doc for
// how the key and its children are read).
type Watch struct {
	// Service is the attache service the endpoints belong to.
	Service string
	// Key is the etcd key, e.g. "/attache/services/redis", without a
	// trailing "/".
	Key string
}

// Status is what the admin API shows about a provider.
type Status struct {
	// Connected is true while a watch is established, false before the
	// first read, during an outage and after Run returned.
	Connected bool `json:"connected"`
	// LastError is the most recent failure (reading, watching or the
	// connection dropping), empty if there was none; it is kept after
	// recovery so an operator can see what happened.
	LastError     string    `json:"last_error,omitempty"`
	LastErrorTime time.Time `json:"last_error_time,omitzero"`
	// Revision is the newest etcd revision the provider has applied.
	Revision int64 `json:"revision"`
	// Endpoints counts the endpoints per service in the last snapshot sent.
	Endpoints map[string]int `json:"endpoints"`
}

// Provider follows etcd keys and sends discovery snapshots. Create it with
// New; Run it once.
type Provider struct {
	discovery.ErrorCount // failed contacts with the source, for metrics

	name        string
	endpoints   []string
	username    string
	password    string
	tls         *tlsclient.Files
	dialTimeout time.Duration
	watches     []Watch
	log         *slog.Logger

	// minBackoff and maxBackoff bound the wait between attempts after a
	// failure; tests shorten them.
	minBackoff, maxBackoff time.Duration

	mu     sync.Mutex
	status Status
}

var _ discovery.Provider = (*Provider)(nil)

// New checks cfg and returns a Provider; nothing connects until Run.
func New(cfg Config) (*Provider, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("etcd: no endpoints: want at least one host:port")
	}
	for _, ep := range cfg.Endpoints {
		if err := checkEndpoint(ep); err != nil {
			return nil, fmt.Errorf("etcd: endpoint %q: %w", ep, err)
		}
	}
	if (cfg.Username == "") != (cfg.Password == "") {
		// The client would silently skip authentication with only one of
		// them, and every read would then fail with "permission denied".
		return nil, errors.New("etcd: username and password must be given together")
	}
	if cfg.DialTimeout < 0 {
		return nil, fmt.Errorf("etcd: dial timeout %v is negative", cfg.DialTimeout)
	}
	if err := etcdclient.Check(etcdclient.Config{Endpoints: cfg.Endpoints, TLS: cfg.TLS}); err != nil {
		return nil, fmt.Errorf("etcd %s: %w", strings.Join(cfg.Endpoints, ","), err)
	}
	if len(cfg.Watches) == 0 {
		return nil, errors.New("etcd: no watches: want at least one service and key")
	}
	seen := make(map[Watch]int, len(cfg.Watches))
	for i, w := range cfg.Watches {
		if err := checkWatch(w); err != nil {
			return nil, fmt.Errorf("etcd: watch %d: %w", i+1, err)
		}
		if j, dup := seen[w]; dup {
			return nil, fmt.Errorf("etcd: watch %d: service %q already watches key %q (watch %d)", i+1, w.Service, w.Key, j)
		}
		seen[w] = i + 1
	}
	p := &Provider{
		name:        Name(cfg.Endpoints),
		endpoints:   append([]string(nil), cfg.Endpoints...),
		username:    cfg.Username,
		password:    cfg.Password,
		tls:         cfg.TLS,
		dialTimeout: cfg.DialTimeout,
		watches:     append([]Watch(nil), cfg.Watches...),
		log:         cfg.Logger,
		minBackoff:  defaultMinBackoff,
		maxBackoff:  defaultMaxBackoff,
	}
	if p.dialTimeout == 0 {
		p.dialTimeout = defaultDialTimeout
	}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	p.log = p.log.With("provider", p.name)
	return p, nil
}

// checkEndpoint accepts "host:port" and "http(s)://host:port", the forms
// the etcd client understands without further options.
func checkEndpoint(ep string) error {
	hostport := ep
	if strings.Contains(ep, "://") {
		u, err := url.Parse(ep)
		if err != nil {
			return err
		}
		if u.Scheme != "http" && u.Scheme != "https" {
			return fmt.Errorf("scheme %q: want http, https or none", u.Scheme)
		}
		if u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
			return errors.New("want scheme://host:port with no user, path or query")
		}
		hostport = u.Host
	}
	_, err := parseAddr(hostport)
	return err
}

func checkWatch(w Watch) error {
	switch {
	case w.Service == "":
		return fmt.Errorf("key %q: empty service name", w.Key)
	case w.Key == "":
		return fmt.Errorf("service %q: empty key", w.Service)
	case strings.HasSuffix(w.Key, "/"):
		return fmt.Errorf("service %q: key %q ends with \"/\"; give the key itself, its children are found under key/", w.Service, w.Key)
	}
	return nil
}

// ParseURL splits ambassadord's "etcd://host:port/path" form into the etcd
// endpoint ("host:port", port 2379 if omitted) and the key ("/path", a
// trailing "/" removed). Credentials, queries and fragments are refused:
// they have their own config fields.
func ParseURL(s string) (endpoint, key string, err error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", "", fmt.Errorf("etcd URL %q: %w", s, err)
	}
	switch {
	case u.Scheme != "etcd":
		return "", "", fmt.Errorf("etcd URL %q: scheme %q: want etcd://host:port/path", s, u.Scheme)
	case u.Opaque != "" || u.Host == "":
		return "", "", fmt.Errorf("etcd URL %q: no host: want etcd://host:port/path", s)
	case u.User != nil:
		return "", "", fmt.Errorf("etcd URL %q: credentials in the URL are not supported; use the username and password settings", s)
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return "", "", fmt.Errorf("etcd URL %q: unexpected query or fragment", s)
	}
	hostport := u.Host
	if u.Port() == "" && !strings.HasSuffix(hostport, ":") {
		hostport += ":2379"
	}
	endpoint, err = parseAddr(hostport)
	if err != nil {
		return "", "", fmt.Errorf("etcd URL %q: %w", s, err)
	}
	key = strings.TrimRight(u.Path, "/")
	if key == "" {
		return "", "", fmt.Errorf("etcd URL %q: no key path: want etcd://host:port/path", s)
	}
	return endpoint, key, nil
}

// Name is the name of the provider New makes for endpoints: "etcd " and
// the endpoints as the user wrote them, comma-separated. Providers are told
// apart by name (the discovery merger keeps one snapshot per name, and
// metrics label by it), so the name says everything that makes one cluster
// connection differ from another; the daemon keys its providers by it and
// gives the watches of two entries that name the same endpoints to one
// provider.
func Name(endpoints []string) string { return "etcd " + strings.Join(endpoints, ",") }

// Name is the provider's name: see the function Name.
func (p *Provider) Name() string { return p.name }

// Status returns a copy of the provider's current state.
func (p *Provider) Status() Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.status
	s.Endpoints = maps.Clone(s.Endpoints)
	return s
}

func (p *Provider) recordError(err error) {
	p.CountError()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.status.Connected = false
	p.status.LastError = err.Error()
	p.status.LastErrorTime = time.Now()
}

func (p *Provider) setConnected(ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.status.Connected = ok
}

func (p *Provider) noteRevision(rev int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.status.Revision = max(p.status.Revision, rev)
}

func (p *Provider) noteSent(services map[string][]backend.Endpoint) {
	counts := make(map[string]int, len(services))
	for s, eps := range services {
		counts[s] = len(eps)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.status.Endpoints = counts
}

// Run connects, sends the first snapshot once the keys are read, then one
// snapshot per change, until ctx is done. etcd being unreachable or refusing
// is never fatal: Run logs it, keeps the last snapshot in force and tries
// again. The snapshots' maps and slices are not touched after sending. Run
// returns nil once ctx is done, after closing its client and ending every
// goroutine it started.
func (p *Provider) Run(ctx context.Context, out chan<- discovery.Snapshot) error {
	defer p.setConnected(false)
	cli, err := p.connect(ctx)
	if err != nil {
		return nil // only ctx ends connect
	}
	defer func() {
		if err := cli.Close(); err != nil && !errors.Is(err, context.Canceled) {
			p.log.Debug("closing etcd client", "err", err)
		}
	}()
	st := newState(p)
	wait := p.minBackoff
	var repeats discovery.Repeats
	for {
		established, err := st.session(ctx, cli.Client, out)
		if ctx.Err() != nil {
			return nil
		}
		if established {
			// The last session got as far as a full read, so this is a new
			// failure rather than the same one again: start waiting short.
			wait = p.minBackoff
			repeats.Recovered()
		}
		err = cli.Explain(err)
		p.recordError(err)
		p.log.Log(ctx, repeats.Level(err), "etcd watch interrupted; keeping the last endpoints", "err", err, "retry_in", wait)
		if !sleep(ctx, wait) {
			return nil
		}
		wait = min(2*wait, p.maxBackoff)
	}
}

// connect creates the client, retrying with back-off: without credentials
// that cannot fail on a valid config, but with credentials the client
// authenticates at once and etcd may be down.
func (p *Provider) connect(ctx context.Context) (*etcdclient.Client, error) {
	wait := p.minBackoff
	var repeats discovery.Repeats
	for {
		cli, err := etcdclient.New(ctx, etcdclient.Config{
			Endpoints:   p.endpoints,
			Username:    p.username,
			Password:    p.password,
			TLS:         p.tls,
			DialTimeout: p.dialTimeout,
			KeepAlive:   keepAliveTime,
			// gRPC's default reconnect back-off grows to 120 s; cap it at
			// ours so a restarted etcd is found as soon as Run retries.
			Backoff: backoff.Config{BaseDelay: p.minBackoff, Multiplier: 1.6, Jitter: 0.2, MaxDelay: p.maxBackoff},
		})
		if err == nil {
			return cli, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		// err names the endpoints ("etcd client for …").
		p.recordError(err)
		p.log.Log(ctx, repeats.Level(err), "etcd client", "err", err, "retry_in", wait)
		if !sleep(ctx, wait) {
			return nil, ctx.Err()
		}
		wait = min(2*wait, p.maxBackoff)
	}
}

// sleep waits d or until ctx is done, and reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// watchConn reports on lost when the client's connection, once Ready, stops
// being Ready. The etcd client would quietly resume a broken watch on its
// own, but then neither Status nor the log would show the outage, and a
// member restored from a backup could hand back a different history; a
// fresh read after reconnecting is the simple, certain way.
func watchConn(ctx context.Context, conn *grpc.ClientConn, lost chan<- error) {
	ready := false
	for {
		s := conn.GetState()
		switch s {
		case connectivity.Ready:
			ready = true
		case connectivity.TransientFailure, connectivity.Shutdown:
			lost <- fmt.Errorf("connection to etcd lost (gRPC state %v)", s)
			return
		default: // Idle or Connecting: lost only if we had been Ready
			if ready {
				lost <- fmt.Errorf("connection to etcd lost (gRPC state %v)", s)
				return
			}
		}
		if !conn.WaitForStateChange(ctx, s) {
			return
		}
	}
}
