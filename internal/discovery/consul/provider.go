// Package consul discovers backends from a Consul agent with blocking
// queries: the passing instances of a Consul service
// (/v1/health/service/<name>?passing), or host:port values stored in Consul's
// KV store (the consul://host:port/key form).
//
// Typical usage:
//
//	p, err := consul.New(consul.Config{
//		Address: "127.0.0.1:8500",
//		Watches: []consul.Watch{
//			{Service: "db", Name: "postgres", Tag: "primary"},
//			{Service: "cache", KVKey: "attache/cache"},
//		},
//		Logger: logger,
//	})
//	if err != nil {
//		return err // bad configuration: nothing was started
//	}
//	go p.Run(ctx, snapshots) // full snapshots until ctx is done
//
// Each watch runs in its own goroutine, long-polling Consul; Run merges their
// answers and sends a snapshot only when the merged view changed. While Consul
// is unreachable the last good answer stays in force, and the watch retries
// with a growing back-off.
package consul

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/attache/attache/internal/backend"
	"github.com/attache/attache/internal/discovery"
	"github.com/attache/attache/internal/tlsclient"
)

// Config configures a Provider. The zero value of every field but Watches
// has a usable default.
type Config struct {
	// Address of the Consul agent's HTTP API: "host:port", "http://host:port"
	// or "https://host:port". Empty means $CONSUL_HTTP_ADDR, else
	// 127.0.0.1:8500, as the consul CLI does. Without a scheme it is
	// HTTPS when TLS is set or $CONSUL_HTTP_SSL is true.
	Address string
	// TLS, when set, is the CA, client certificate and server name the
	// agent is reached over HTTPS with; nil leaves them to the consul
	// CLI's variables CONSUL_CACERT, CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY
	// and CONSUL_TLS_SERVER_NAME (for an https:// agent). New reads the
	// files, so a missing or unreadable one is an error before anything
	// starts.
	TLS *tlsclient.Files
	// Token is sent as X-Consul-Token. Empty means $CONSUL_HTTP_TOKEN.
	Token string
	// Datacenter to query; empty means the agent's own.
	Datacenter string
	// Wait is how long one blocking query may hang before Consul answers
	// anyway (Consul caps it at 10 minutes). Zero means 5 minutes.
	Wait time.Duration
	// Watches lists what to discover; at least one is required.
	Watches []Watch
	// Logger receives query failures and malformed entries; nil discards.
	Logger *slog.Logger
}

// Watch maps one source in Consul to one attache service. Several watches may
// feed the same attache service; their endpoints are united.
type Watch struct {
	// Service is the attache service the endpoints belong to.
	Service string
	// Name is the Consul service name. Only instances whose checks all pass
	// (the ?passing filter) are reported, so a failing instance gets no
	// traffic.
	Name string
	// Tag, if set, keeps only instances carrying this tag (Name only).
	Tag string
	// KVKey, instead of Name, reads host:port endpoints from the KV store
	// (see ParseURL for the consul://host:port/key form). If keys exist
	// below KVKey ("KVKey/…"), each one's value is one endpoint; otherwise
	// the value of KVKey itself is a comma-separated list of endpoints.
	KVKey string
}

// WatchStatus is what a watch last saw, for the admin API.
type WatchStatus struct {
	// Service is the attache service, Source what is watched in Consul:
	// "service postgres", "service postgres tag primary" or "kv attache/cache".
	Service string
	Source  string
	// Index is the X-Consul-Index of the last good answer.
	Index uint64
	// Endpoints is how many usable endpoints the last good answer held.
	Endpoints int
	// Failures counts queries failed in a row; 0 when the last one worked.
	Failures int
	// LastError is the most recent failure, kept after a recovery so an
	// operator can see what happened; LastErrorAt is when it happened.
	LastError   string
	LastErrorAt time.Time
	// LastSuccessAt is when the last good answer arrived; zero if none yet.
	LastSuccessAt time.Time
}

// Provider watches a Consul agent. It implements discovery.Provider.
type Provider struct {
	discovery.ErrorCount // failed contacts with the source, for metrics

	name    string
	client  *client
	wait    time.Duration
	log     *slog.Logger
	watches []*watcher
	running atomic.Bool

	// Retry pacing. Fields rather than constants so tests that stop and
	// restart Consul need not sit through a 30 s back-off.
	backoffMin, backoffMax time.Duration
	// minInterval spaces a watch's queries: Consul may answer a blocking
	// query early without a change (an unrelated write bumped the index), and
	// Consul's guide asks clients to rate-limit rather than spin.
	minInterval time.Duration
}

var _ discovery.Provider = (*Provider)(nil)

const (
	defaultAddress = "127.0.0.1:8500"
	defaultWait    = 5 * time.Minute
	maxWait        = 10 * time.Minute
)

// New checks cfg and returns a Provider; nothing is contacted until Run.
func New(cfg Config) (*Provider, error) {
	base, err := agentURL(cfg.Address, cfg.TLS, os.Getenv)
	if err != nil {
		return nil, err
	}
	token := cfg.Token
	if token == "" {
		token = os.Getenv("CONSUL_HTTP_TOKEN")
	}
	wait := cfg.Wait
	switch {
	case wait == 0:
		wait = defaultWait
	case wait < 0:
		return nil, fmt.Errorf("consul: wait %v is negative", wait)
	case wait > maxWait:
		return nil, fmt.Errorf("consul: wait %v is longer than Consul's limit of %v", wait, maxWait)
	}
	if len(cfg.Watches) == 0 {
		return nil, errors.New("consul: no watches configured")
	}
	watches := make([]*watcher, 0, len(cfg.Watches))
	for i, w := range cfg.Watches {
		nw, err := newWatcher(w)
		if err != nil {
			return nil, fmt.Errorf("consul: watch %d: %w", i, err)
		}
		watches = append(watches, nw)
	}

	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	name := nameOf(base)
	tr, err := transport(base, cfg.TLS, len(watches)+1)
	if err != nil {
		return nil, err
	}
	return &Provider{
		name: name,
		client: &client{
			base:  base,
			token: token,
			dc:    cfg.Datacenter,
			hc:    &http.Client{Transport: tr},
		},
		wait:        wait,
		log:         logger.With("provider", name),
		watches:     watches,
		backoffMin:  time.Second,
		backoffMax:  30 * time.Second,
		minInterval: 100 * time.Millisecond,
	}, nil
}

func newWatcher(w Watch) (*watcher, error) {
	w.Service = strings.TrimSpace(w.Service)
	w.Name = strings.TrimSpace(w.Name)
	w.Tag = strings.TrimSpace(w.Tag)
	w.KVKey = strings.Trim(strings.TrimSpace(w.KVKey), "/")
	var source string
	switch {
	case w.Service == "":
		return nil, errors.New("service is empty, want the attache service to feed")
	case w.Name != "" && w.KVKey != "":
		return nil, fmt.Errorf("service %q: both name %q and kv key %q set, want one", w.Service, w.Name, w.KVKey)
	case w.Name == "" && w.KVKey == "":
		return nil, fmt.Errorf("service %q: neither a Consul service name nor a kv key set", w.Service)
	case w.KVKey != "" && w.Tag != "":
		return nil, fmt.Errorf("service %q: tag %q only applies to a Consul service name, not to kv key %q", w.Service, w.Tag, w.KVKey)
	case strings.ContainsAny(w.Name, "/?#"):
		return nil, fmt.Errorf("service %q: Consul service name %q contains '/', '?' or '#'", w.Service, w.Name)
	case w.KVKey != "":
		source = "kv " + w.KVKey
	case w.Tag != "":
		source = "service " + w.Name + " tag " + w.Tag
	default:
		source = "service " + w.Name
	}
	return &watcher{w: w, st: WatchStatus{Service: w.Service, Source: source}}, nil
}

// Name is the name of the provider New makes for address and tlsFiles
// (Config.Address and Config.TLS): "consul host:port", or "consul
// https://host:port" over TLS, after the defaults New applies
// (CONSUL_HTTP_ADDR, then 127.0.0.1:8500; CONSUL_HTTP_SSL). Providers are
// told apart by name (the discovery merger keeps one snapshot per name,
// and metrics label by it); two addresses with one name reach one agent
// the same way, so the daemon keys its providers by it and gives the
// watches of both to one provider.
func Name(address string, tlsFiles *tlsclient.Files) (string, error) {
	base, err := agentURL(address, tlsFiles, os.Getenv)
	if err != nil {
		return "", err
	}
	return nameOf(base), nil
}

func nameOf(base *url.URL) string {
	if base.Scheme == "https" {
		return "consul " + base.String()
	}
	return "consul " + base.Host
}

// Name is the provider's name: see the function Name.
func (p *Provider) Name() string { return p.name }

// Status returns what every watch last saw, in configuration order.
func (p *Provider) Status() []WatchStatus {
	out := make([]WatchStatus, len(p.watches))
	for i, w := range p.watches {
		out[i] = w.status()
	}
	return out
}

// update is one watch's new endpoint list, from its goroutine to Run.
type update struct {
	watch int
	eps   []backend.Endpoint
}

// Run starts one goroutine per watch and sends merged snapshots to out until
// ctx is done; then it stops the watches, waits for them and returns nil.
// Consul being unreachable is not an error: it is logged, retried and shown
// by Status. A Provider runs once at a time.
func (p *Provider) Run(ctx context.Context, out chan<- discovery.Snapshot) error {
	if !p.running.CompareAndSwap(false, true) {
		return fmt.Errorf("%s: Run called while already running", p.name)
	}
	defer p.running.Store(false)
	defer p.client.hc.CloseIdleConnections()

	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // runs before wg.Wait
	updates := make(chan update)
	for i, w := range p.watches {
		wg.Go(func() { p.watchLoop(ctx, i, w, updates) })
	}
	p.merge(ctx, updates, out)
	return nil
}

// merge is the one place snapshots are sent from. It keeps every watch's
// latest endpoints and offers out the newest merged view that differs from
// the last one sent; a view superseded while out was busy is never sent
// (the nil-channel idiom: sendCh is nil while there is nothing to send).
func (p *Provider) merge(ctx context.Context, updates <-chan update, out chan<- discovery.Snapshot) {
	current := make([][]backend.Endpoint, len(p.watches))
	known := make([]bool, len(p.watches))
	var (
		sent     map[string][]backend.Endpoint
		haveSent bool
		pending  discovery.Snapshot
		sendCh   chan<- discovery.Snapshot
	)
	for {
		select {
		case <-ctx.Done():
			return
		case u := <-updates:
			current[u.watch], known[u.watch] = u.eps, true
			services := p.services(current, known)
			if haveSent && sameServices(services, sent) {
				sendCh = nil
				continue
			}
			pending, sendCh = discovery.Snapshot{Provider: p.name, Services: services}, out
		case sendCh <- pending:
			sent, haveSent, sendCh = pending.Services, true, nil
		}
	}
}

// services unites the watches that have answered at least once. A watch
// that never answered leaves its service out of the map (unknown) rather
// than reporting it empty, so attache's start-up while Consul is down does
// not look like "no backends".
func (p *Provider) services(current [][]backend.Endpoint, known []bool) map[string][]backend.Endpoint {
	m := make(map[string][]backend.Endpoint)
	for i, w := range p.watches {
		if !known[i] {
			continue
		}
		m[w.w.Service] = append(m[w.w.Service], current[i]...)
	}
	for s, eps := range m {
		if eps == nil {
			eps = []backend.Endpoint{}
		}
		m[s] = discovery.Normalize(eps)
	}
	return m
}

func sameServices(a, b map[string][]backend.Endpoint) bool {
	if len(a) != len(b) {
		return false
	}
	for s, eps := range a {
		other, ok := b[s]
		if !ok || !discovery.Equal(eps, other) {
			return false
		}
	}
	return true
}

// watcher is one Watch plus its status, which Status reads concurrently.
type watcher struct {
	w  Watch
	mu sync.Mutex
	st WatchStatus
}

func (w *watcher) status() WatchStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.st
}

func (w *watcher) recordSuccess(index uint64, endpoints int) (recovered int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	recovered = w.st.Failures
	w.st.Index, w.st.Endpoints, w.st.Failures = index, endpoints, 0
	w.st.LastSuccessAt = time.Now()
	return recovered
}

func (w *watcher) recordError(err error) (failures int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.st.Failures++
	w.st.LastError, w.st.LastErrorAt = err.Error(), time.Now()
	return w.st.Failures
}

// watchLoop runs one watch until ctx is done. A panic (a bug, not bad data)
// is logged with its stack and the watch starts over after a pause, rather
// than taking the daemon down or silently freezing this service.
func (p *Provider) watchLoop(ctx context.Context, i int, w *watcher, updates chan<- update) {
	for ctx.Err() == nil {
		func() {
			defer func() {
				if r := recover(); r != nil {
					p.log.Error("consul watch panicked; restarting it", "service", w.w.Service,
						"source", w.status().Source, "panic", r, "stack", string(debug.Stack()))
				}
			}()
			p.watch(ctx, i, w, updates)
		}()
		sleep(ctx, p.backoffMin)
	}
}

// watch long-polls one source following Consul's "Blocking Queries" guide.
func (p *Provider) watch(ctx context.Context, i int, w *watcher, updates chan<- update) {
	var (
		index     uint64 // 0: the next query does not block
		last      []backend.Endpoint
		reported  bool
		lastStart time.Time
	)
	source := w.status().Source
	var repeats discovery.Repeats
	for {
		if d := p.minInterval - time.Since(lastStart); d > 0 && !sleep(ctx, d) {
			return
		}
		lastStart = time.Now()
		eps, got, err := p.fetch(ctx, w, index)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			failures := w.recordError(err)
			p.CountError()
			delay := p.backoff(failures)
			p.log.Log(ctx, repeats.Level(err), "consul query failed; keeping the last answer", "service", w.w.Service,
				"source", source, "failures", failures, "retry_in", delay.Round(time.Millisecond), "err", err)
			// After a failure we may be talking to a different agent (a
			// restart, a failover) whose index is unrelated to ours: blocking
			// on the old index could hang for the whole wait before the
			// index-went-backwards rule noticed. Start over non-blocking.
			index = 0
			if !sleep(ctx, delay) {
				return
			}
			continue
		}
		index = nextIndex(index, got)
		repeats.Recovered()
		if failed := w.recordSuccess(got, len(eps)); failed > 0 {
			p.log.Info("consul query works again", "service", w.w.Service, "source", source,
				"after_failures", failed, "endpoints", len(eps))
		}
		if reported && discovery.Equal(eps, last) {
			continue // a wait timeout or a change that does not touch endpoints
		}
		last, reported = eps, true
		select {
		case updates <- update{watch: i, eps: eps}:
		case <-ctx.Done():
			return
		}
	}
}

// nextIndex applies the index rules of Consul's blocking-query guide to the
// X-Consul-Index just received.
func nextIndex(prev, got uint64) uint64 {
	switch {
	case got < prev:
		// The index went backwards: Consul's state was reset (a new agent,
		// a snapshot restore). Our index means nothing there; start over.
		return 0
	case got == 0:
		// Blocking on index 0 returns at once; treat it as 1 so the next
		// query really blocks instead of spinning.
		return 1
	default:
		return got
	}
}

// backoff is the pause after the n-th failure in a row: backoffMin doubling
// up to backoffMax, less up to a fifth at random so that many attache
// instances do not hammer a recovering agent in step.
func (p *Provider) backoff(n int) time.Duration {
	d := p.backoffMin
	for i := 1; i < n && d < p.backoffMax; i++ {
		d *= 2
	}
	d = min(d, p.backoffMax)
	return d - rand.N(d/5+1)
}

// jitteredWait is the wait sent with one blocking query: Config.Wait less up
// to 1/16 at random, so watches started together drift apart and never ask
// for more than configured (Consul adds its own wait/16 on top).
func (p *Provider) jitteredWait() time.Duration {
	return p.wait - rand.N(p.wait/16+1)
}

// fetch runs one query for w and returns its usable endpoints and index.
func (p *Provider) fetch(ctx context.Context, w *watcher, index uint64) ([]backend.Endpoint, uint64, error) {
	q := url.Values{}
	var path string
	if w.w.KVKey != "" {
		path = "/v1/kv/" + w.w.KVKey
		q.Set("recurse", "true")
	} else {
		path = "/v1/health/service/" + w.w.Name
		q.Set("passing", "true")
		if w.w.Tag != "" {
			q.Set("tag", w.w.Tag)
		}
	}
	r, err := p.client.get(ctx, path, q, index, p.jitteredWait())
	if err != nil {
		return nil, 0, err
	}
	if w.w.KVKey != "" {
		entries, err := decodeKV(r)
		if err != nil {
			return nil, 0, fmt.Errorf("kv %s: %w", w.w.KVKey, err)
		}
		return p.kvEndpoints(w.w, entries), r.index, nil
	}
	entries, err := decodeHealth(r.body)
	if err != nil {
		return nil, 0, fmt.Errorf("service %s: %w", w.w.Name, err)
	}
	return p.healthEndpoints(w.w, entries), r.index, nil
}

// healthEndpoints turns passing instances into endpoints: the service's own
// address, else its node's, with the service port and passing weight.
func (p *Provider) healthEndpoints(w Watch, entries []healthEntry) []backend.Endpoint {
	eps := make([]backend.Endpoint, 0, len(entries))
	for _, e := range entries {
		s := e.Service
		host := strings.Trim(s.Address, "[]")
		if host == "" {
			host = strings.Trim(e.Node.Address, "[]")
		}
		if host == "" || s.Port <= 0 || s.Port > 65535 {
			p.log.Warn("skipping malformed Consul instance: want an address and a port in 1-65535",
				"service", w.Service, "consul_service", w.Name, "instance", s.ID, "node", e.Node.Node,
				"address", host, "port", s.Port)
			continue
		}
		weight := 1
		if s.Weights != nil && s.Weights.Passing > 0 {
			weight = s.Weights.Passing
		}
		eps = append(eps, backend.Endpoint{Addr: net.JoinHostPort(host, strconv.Itoa(s.Port)), Weight: weight})
	}
	return discovery.Normalize(eps)
}

// kvEndpoints reads endpoints under w.KVKey. A recurse query on a key also
// returns its siblings that share the prefix ("cache" finds "cache2/x"), so
// only the key itself and keys below "key/" count.
func (p *Provider) kvEndpoints(w Watch, entries []kvEntry) []backend.Endpoint {
	prefix := w.KVKey + "/"
	var (
		eps      []backend.Endpoint
		children bool
		own      []byte
	)
	for _, e := range entries {
		switch {
		case e.Key == w.KVKey:
			own = e.Value
		case strings.HasPrefix(e.Key, prefix):
			if strings.HasSuffix(e.Key, "/") && len(bytes.TrimSpace(e.Value)) == 0 {
				continue // a folder marker, not an endpoint
			}
			children = true
			ep, err := parseHostPort(string(e.Value))
			if err != nil {
				p.log.Warn("skipping malformed Consul KV value", "service", w.Service, "key", e.Key, "err", err)
				continue
			}
			eps = append(eps, ep)
		}
	}
	if !children {
		for part := range strings.SplitSeq(string(own), ",") {
			if strings.TrimSpace(part) == "" {
				continue // "a:1, b:2," or an empty value
			}
			ep, err := parseHostPort(part)
			if err != nil {
				p.log.Warn("skipping malformed Consul KV value", "service", w.Service, "key", w.KVKey, "err", err)
				continue
			}
			eps = append(eps, ep)
		}
	}
	return discovery.Normalize(eps)
}

// parseHostPort checks one "host:port" value from the KV store.
func parseHostPort(v string) (backend.Endpoint, error) {
	v = strings.TrimSpace(v)
	host, port, err := net.SplitHostPort(v)
	if err != nil {
		return backend.Endpoint{}, fmt.Errorf("value %q: want host:port: %w", v, err)
	}
	n, err := strconv.Atoi(port)
	if host == "" || err != nil || n < 1 || n > 65535 {
		return backend.Endpoint{}, fmt.Errorf("value %q: want host:port with a host and a port in 1-65535", v)
	}
	return backend.Endpoint{Addr: net.JoinHostPort(host, port), Weight: 1}, nil
}

// sleep waits d or until ctx is done; it reports whether d passed.
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
