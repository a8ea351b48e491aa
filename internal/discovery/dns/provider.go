// Package dns discovers backends by asking a DNS server for A/AAAA or SRV
// records, and asks again when the answer's TTL runs out.
//
// Typical usage:
//
//	p, err := dns.New(dns.Config{
//		Queries: []dns.Query{
//			{Service: "redis", Name: "redis.internal", Type: dns.A, Port: 6379},
//			{Service: "web", Name: "_http._tcp.web.internal", Type: dns.SRV},
//		},
//		Logger: log,
//	})
//	if err != nil {
//		return err // nothing was started
//	}
//	go p.Run(ctx, snapshots) // returns when ctx is done
//
// It talks DNS itself (github.com/miekg/dns) rather than through
// net.Resolver, because net.Resolver hides record TTLs and the re-query
// interval is derived from them. A server that fails (timeout, SERVFAIL,
// REFUSED, garbled reply) never empties a service: the query keeps its last
// good answer until the server answers again. An authoritative "no such
// name" or "no records" does empty it, because that is the truth.
package dns

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	"github.com/attache/attache/internal/backend"
	"github.com/attache/attache/internal/discovery"
)

// Type is what a Query asks for.
type Type string

const (
	// A asks for both A and AAAA records: every address is a backend at the
	// query's Port.
	A Type = "A"
	// SRV asks for SRV records: every record's target, resolved to its
	// addresses, is a backend at the record's port, with the record's
	// weight and priority.
	SRV Type = "SRV"
)

// Defaults for the zero values of Config's durations.
const (
	DefaultMinTTL  = time.Second
	DefaultMaxTTL  = 5 * time.Minute
	DefaultTimeout = 2 * time.Second
)

// resolvConf is where the default server is read from.
const resolvConf = "/etc/resolv.conf"

// Config configures a Provider. The zero value of every field but Queries
// means its default.
type Config struct {
	// Server is host:port of the DNS server to ask (a bare IP means port
	// 53). Empty means the first nameserver of /etc/resolv.conf.
	Server string
	// MinTTL is the floor of the re-query interval, so a TTL of 0 does not
	// make attache hammer the server. It is also the first retry delay
	// after a failure. Default 1s.
	MinTTL time.Duration
	// MaxTTL is the ceiling of the re-query interval, so a long TTL does
	// not hide a change for hours, and of the failure back-off. Default 5m.
	MaxTTL time.Duration
	// Timeout bounds each DNS exchange. Default 2s.
	Timeout time.Duration
	// Queries are the names to watch; at least one.
	Queries []Query
	// Logger receives failures, recoveries and skipped records; nil
	// discards them.
	Logger *slog.Logger
}

// Query is one DNS name whose answers are backends of one attache service.
// Several queries may name the same service: their endpoints are unioned.
type Query struct {
	// Service is the attache service the answers belong to.
	Service string
	// Name is the DNS name to ask for, taken as absolute ("redis.internal"
	// and "redis.internal." are the same; no search domains apply).
	Name string
	// Type is A (the default when empty) or SRV; case does not matter.
	Type Type
	// Port is the backend port for A queries (1-65535). It must be 0 for
	// SRV queries, whose records carry the port.
	Port int
}

// QueryStatus is what the admin API shows about one query.
type QueryStatus struct {
	Service string `json:"service"`
	Name    string `json:"name"`
	Type    Type   `json:"type"`
	// Endpoints is how many endpoints the query contributes now.
	Endpoints int `json:"endpoints"`
	// LastSuccess is when the server last answered (a negative answer
	// counts); zero until it has.
	LastSuccess time.Time `json:"last_success,omitzero"`
	// LastError is the latest failure of the current failure streak; empty
	// when the last exchange succeeded.
	LastError string `json:"last_error,omitempty"`
	// Failures is the length of the current failure streak.
	Failures int `json:"failures"`
	// Negative is "NXDOMAIN" or "NODATA" when the last answer said the name
	// has no records, else empty.
	Negative string `json:"negative,omitempty"`
	// Interval is the wait before the next query: the answer's TTL clamped
	// to [MinTTL, MaxTTL], or the back-off while failing.
	Interval time.Duration `json:"interval_ns"`
}

// Provider watches DNS names and sends snapshots of their answers. It is
// built by New; Run may be called once at a time.
type Provider struct {
	discovery.ErrorCount // failed contacts with the source, for metrics

	res      resolver
	minTTL   time.Duration
	maxTTL   time.Duration
	queries  []Query
	services []string
	log      *slog.Logger
	running  atomic.Bool

	mu    sync.Mutex
	state []queryState // one per query, guarded by mu
}

// queryState is what the provider knows about one query between exchanges.
type queryState struct {
	answered    bool // answered or failed at least once
	endpoints   []backend.Endpoint
	lastSuccess time.Time
	lastErr     error
	failures    int
	negative    string
	interval    time.Duration
	skipped     map[string]bool // bad records of the last answer, logged once each
}

var _ discovery.Provider = (*Provider)(nil)

// New checks cfg and returns a Provider; nothing runs until Run.
func New(cfg Config) (*Provider, error) {
	p := &Provider{
		minTTL: cmp.Or(cfg.MinTTL, DefaultMinTTL),
		maxTTL: cmp.Or(cfg.MaxTTL, DefaultMaxTTL),
		log:    cfg.Logger,
	}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	p.log = p.log.With("provider", "dns")
	timeout := cmp.Or(cfg.Timeout, DefaultTimeout)
	switch {
	case cfg.MinTTL < 0:
		return nil, fmt.Errorf("dns: MinTTL %s is negative", cfg.MinTTL)
	case cfg.MaxTTL < 0:
		return nil, fmt.Errorf("dns: MaxTTL %s is negative", cfg.MaxTTL)
	case cfg.Timeout < 0:
		return nil, fmt.Errorf("dns: Timeout %s is negative", cfg.Timeout)
	case p.minTTL > p.maxTTL:
		return nil, fmt.Errorf("dns: MinTTL %s is above MaxTTL %s", p.minTTL, p.maxTTL)
	}
	server, err := serverAddr(cfg.Server, resolvConf)
	if err != nil {
		return nil, err
	}
	p.res = resolver{server: server, timeout: timeout}
	if len(cfg.Queries) == 0 {
		return nil, errors.New("dns: no queries: at least one name to watch is required")
	}
	seen := map[Query]int{}
	for i, q := range cfg.Queries {
		nq, err := checkQuery(q)
		if err != nil {
			return nil, fmt.Errorf("dns: queries[%d] (service %q, name %q): %w", i, q.Service, q.Name, err)
		}
		key := nq
		key.Name = strings.ToLower(key.Name)
		if j, dup := seen[key]; dup {
			return nil, fmt.Errorf("dns: queries[%d] (service %q, name %q): same as queries[%d]", i, q.Service, q.Name, j)
		}
		seen[key] = i
		p.queries = append(p.queries, nq)
		if !slices.Contains(p.services, nq.Service) {
			p.services = append(p.services, nq.Service)
		}
	}
	p.state = make([]queryState, len(p.queries))
	return p, nil
}

// checkQuery validates q and returns it with Name absolute and Type set.
func checkQuery(q Query) (Query, error) {
	if q.Service == "" {
		return q, errors.New("service is empty")
	}
	if q.Name == "" {
		return q, errors.New("name is empty")
	}
	q.Name = dns.Fqdn(q.Name)
	if _, ok := dns.IsDomainName(q.Name); !ok || q.Name == "." {
		return q, fmt.Errorf("name %q is not a valid domain name", q.Name)
	}
	q.Type = Type(strings.ToUpper(string(q.Type)))
	switch q.Type {
	case "", A:
		q.Type = A
		if q.Port == 0 {
			return q, errors.New("port is required for an A query")
		}
		if q.Port < 1 || q.Port > 65535 {
			return q, fmt.Errorf("port %d is out of range (want 1-65535)", q.Port)
		}
	case SRV:
		if q.Port != 0 {
			return q, fmt.Errorf("port %d is set on an SRV query (want 0: the records carry the port)", q.Port)
		}
	default:
		return q, fmt.Errorf("unknown type %q (want A or SRV)", q.Type)
	}
	return q, nil
}

// serverAddr returns the host:port to ask: server itself (a bare IP gets
// port 53), or the first nameserver of the resolv.conf at path.
func serverAddr(server, path string) (string, error) {
	if server == "" {
		cc, err := dns.ClientConfigFromFile(path)
		if err != nil {
			return "", fmt.Errorf("dns: no Server given and %s is unusable: %w", path, err)
		}
		if len(cc.Servers) == 0 {
			return "", fmt.Errorf("dns: no Server given and %s lists no nameserver", path)
		}
		return net.JoinHostPort(cc.Servers[0], cc.Port), nil
	}
	host, port, err := net.SplitHostPort(server)
	if err != nil {
		if net.ParseIP(server) != nil {
			return net.JoinHostPort(server, "53"), nil
		}
		return "", fmt.Errorf("dns: Server %q: want host:port or an IP address: %w", server, err)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", fmt.Errorf("dns: Server %q: port %q is not 1-65535", server, port)
	}
	if host == "" {
		return "", fmt.Errorf("dns: Server %q has no host", server)
	}
	return server, nil
}

// Name identifies the provider in logs, metrics and the admin API.
func (p *Provider) Name() string { return "dns" }

// Server is the host:port the provider asks.
func (p *Provider) Server() string { return p.res.server }

// Run watches every query until ctx is done, then returns nil. The first
// snapshot goes out once every query has been answered or has failed once;
// later ones only when the endpoints changed. Each query runs in its own
// goroutine, so a name whose server does not answer does not delay the
// others.
func (p *Provider) Run(ctx context.Context, out chan<- discovery.Snapshot) error {
	if !p.running.CompareAndSwap(false, true) {
		return errors.New("dns: Run is already running")
	}
	defer p.running.Store(false)
	p.log.Info("dns discovery started", "server", p.res.server, "queries", len(p.queries))

	// notify is a coalescing doorbell: watchers ring it after each update
	// and the loop below reads the latest state, so a slow reader of out
	// never holds up the queries and never gets a stale snapshot.
	notify := make(chan struct{}, 1)
	var wg sync.WaitGroup
	defer wg.Wait()
	for i := range p.queries {
		wg.Go(func() { p.watch(ctx, i, notify) })
	}

	var last map[string][]backend.Endpoint
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-notify:
		}
		services, ready := p.snapshot()
		if !ready || (last != nil && maps.EqualFunc(last, services, slices.Equal)) {
			continue
		}
		select {
		case out <- discovery.Snapshot{Provider: p.Name(), Services: services}:
			last = services
		case <-ctx.Done():
			return nil
		}
	}
}

// snapshot builds the service map from the current state; ready is false
// until every query has been answered or has failed once.
func (p *Provider) snapshot() (services map[string][]backend.Endpoint, ready bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	all := map[string][]backend.Endpoint{}
	for i, st := range p.state {
		if !st.answered {
			return nil, false
		}
		svc := p.queries[i].Service
		all[svc] = append(all[svc], st.endpoints...)
	}
	services = make(map[string][]backend.Endpoint, len(p.services))
	for _, svc := range p.services {
		eps := all[svc]
		// Sorting on every field first makes Normalize's "first address
		// wins" pick the same endpoint whatever order the server listed
		// the records in (the lowest priority, then the lowest weight).
		slices.SortFunc(eps, func(a, b backend.Endpoint) int {
			return cmp.Or(cmp.Compare(a.Addr, b.Addr), cmp.Compare(a.Priority, b.Priority), cmp.Compare(a.Weight, b.Weight))
		})
		eps = discovery.Normalize(eps)
		if eps == nil {
			eps = []backend.Endpoint{}
		}
		services[svc] = eps
	}
	return services, true
}

// watch asks query i over and over until ctx is done, recording each
// result and ringing notify.
func (p *Provider) watch(ctx context.Context, i int, notify chan<- struct{}) {
	q := p.queries[i]
	log := p.log.With("service", q.Service, "name", q.Name, "type", string(q.Type))
	for {
		ans, err := p.lookup(ctx, q, log)
		if ctx.Err() != nil {
			return
		}
		wait := p.record(i, ans, err, log)
		select {
		case notify <- struct{}{}:
		default:
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// lookup asks the server about q once. A panic (a bug, or a reply that
// trips one in the DNS library) becomes a failed lookup, so the query is
// retried with back-off instead of dying silently or taking attache down.
func (p *Provider) lookup(ctx context.Context, q Query, log *slog.Logger) (ans answer, err error) {
	defer func() {
		if r := recover(); r != nil {
			log.Error("dns lookup panicked", "panic", r, "stack", string(debug.Stack()))
			err = fmt.Errorf("lookup panicked: %v", r)
		}
	}()
	if q.Type == SRV {
		return p.res.srv(ctx, q.Name)
	}
	return p.res.addrs(ctx, q.Name, q.Port)
}

// record stores the result of one exchange for query i, logs what changed,
// and returns how long to wait before the next one.
func (p *Provider) record(i int, ans answer, err error, log *slog.Logger) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := &p.state[i]
	st.answered = true
	if err != nil {
		p.CountError()
		st.failures++
		st.lastErr = err
		st.interval = p.backoff(st.failures)
		if st.failures == 1 {
			log.Warn("dns query failed; keeping the last good answer until the server answers again",
				"err", err, "endpoints", len(st.endpoints), "retry_in", st.interval)
		}
		return st.interval
	}
	if st.failures > 0 {
		log.Info("dns query recovered", "failures", st.failures, "endpoints", len(ans.endpoints))
	}
	st.failures, st.lastErr = 0, nil
	st.lastSuccess = time.Now()
	st.endpoints = ans.endpoints
	if ans.negative != "" && ans.negative != st.negative {
		log.Warn("dns name has no usable records; the query contributes no endpoints", "answer", ans.negative)
	}
	st.negative = ans.negative
	skipped := map[string]bool{}
	for _, s := range ans.skipped {
		if !st.skipped[s.record] {
			log.Warn("skipping bad SRV record", "record", s.record, "reason", s.reason)
		}
		skipped[s.record] = true
	}
	st.skipped = skipped
	st.interval = p.clamp(ans.ttl)
	return st.interval
}

// clamp bounds a TTL to [minTTL, maxTTL].
func (p *Provider) clamp(ttl time.Duration) time.Duration {
	return min(max(ttl, p.minTTL), p.maxTTL)
}

// backoff is the retry delay after n consecutive failures: minTTL doubled
// per failure, up to maxTTL.
func (p *Provider) backoff(n int) time.Duration {
	d := p.minTTL
	for range n - 1 {
		if d >= p.maxTTL/2 {
			return p.maxTTL
		}
		d *= 2
	}
	return min(d, p.maxTTL)
}

// Status reports every query's state, in configuration order.
func (p *Provider) Status() []QueryStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]QueryStatus, len(p.queries))
	for i, q := range p.queries {
		st := p.state[i]
		out[i] = QueryStatus{
			Service:     q.Service,
			Name:        q.Name,
			Type:        q.Type,
			Endpoints:   len(st.endpoints),
			LastSuccess: st.lastSuccess,
			Failures:    st.failures,
			Negative:    st.negative,
			Interval:    st.interval,
		}
		if st.lastErr != nil {
			out[i].LastError = st.lastErr.Error()
		}
	}
	return out
}
