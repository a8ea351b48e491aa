// Package docker discovers backends from the containers a Docker engine
// runs. A container joins attache service S when it runs with the label
// attache.service=S; its address is its IP on one of its networks and its
// port comes from the attache.port label or, failing that, from its single
// exposed TCP port.
//
// Typical usage:
//
//	p, err := docker.New(docker.Config{Services: []string{"web"}, Logger: log})
//	if err != nil {
//		return err // bad configuration: nothing was started
//	}
//	go p.Run(ctx, snapshots) // full snapshots until ctx is done
//
// It follows the engine's event stream rather than polling: it subscribes
// to container and network events first, then lists the running containers,
// so nothing that happens between the two is missed; after that each event
// re-inspects the one container it is about. When the stream breaks (the
// engine restarts, the socket goes away) it keeps the last snapshot in force,
// reconnects with back-off and resynchronises from a full list, since events
// sent while it was away are lost.
package docker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/attache/attache/internal/backend"
	"github.com/attache/attache/internal/discovery"
	"github.com/attache/attache/internal/tlsclient"
)

// Defaults for Config fields left empty.
const (
	DefaultHost        = "unix:///var/run/docker.sock"
	DefaultLabel       = "attache.service"
	DefaultPortLabel   = "attache.port"
	DefaultWeightLabel = "attache.weight"
)

// Reconnect back-off: the first retry after a lost stream is quick, repeated
// failures (engine down) back off to a retry every 30 s.
const (
	minBackoff = time.Second
	maxBackoff = 30 * time.Second
)

// maxWeight caps the weight label, so that a typo like 10000000 cannot
// starve every other backend of a weighted policy.
const maxWeight = 10000

// Config says which engine to watch and how containers name their service.
// The zero value of every field but Services is usable.
type Config struct {
	// Host is the engine's address in DOCKER_HOST form: unix:///path or
	// tcp://host:port. Empty means the DOCKER_HOST environment variable,
	// else unix:///var/run/docker.sock.
	Host string
	// TLS, when set, is how a tcp:// engine is reached over TLS. nil means
	// the docker CLI's variables: DOCKER_TLS_VERIFY (or DOCKER_TLS) turns
	// TLS on with ca.pem, cert.pem and key.pem from DOCKER_CERT_PATH
	// (default ~/.docker), each used if it exists. The engine's
	// certificate is always checked.
	TLS *tlsclient.Files
	// Label is the container label whose value names the attache service,
	// default "attache.service".
	Label string
	// PortLabel is the label holding the backend port (1-65535), default
	// "attache.port". Without it the container's single exposed TCP port is
	// used; a container that exposes several and has no label is skipped.
	PortLabel string
	// WeightLabel is the label holding the endpoint's weight for weighted
	// policies (an integer from 1 to 10000), default "attache.weight".
	// Absent means the default weight.
	WeightLabel string
	// Network, if set, is the network (name or full ID) whose address is
	// used for containers attached to it. Otherwise, and for containers not
	// on it, the first of the container's networks by name that gives it an
	// address is used.
	Network string
	// Services are the attache services to report. Every snapshot holds
	// each of them, with no endpoints if no container serves it; containers
	// whose label names another service are ignored.
	Services []string
	// Logger receives skipped containers and stream errors; nil discards.
	Logger *slog.Logger
}

// Status is what the provider knows about its engine right now, for the
// admin API.
type Status struct {
	// Connected is true while the event stream is open and the state
	// listed since it opened has been sent (or was found unchanged).
	Connected bool
	// LastError is the last error that broke the connection, "" if none.
	LastError string
	// LastErrorAt is when LastError happened.
	LastErrorAt time.Time
	// Containers counts, per watched service, the running containers that
	// carry its label, skipped ones included.
	Containers map[string]int
	// Skipped counts, per watched service, the containers that carry its
	// label but could not be used (bad port label, no address …); the log
	// names each one.
	Skipped map[string]int
}

// Provider watches one Docker engine. It is safe for one Run at a time;
// Status may be called concurrently.
type Provider struct {
	discovery.ErrorCount // failed contacts with the source, for metrics

	cfg      Config
	eng      *engine
	log      *slog.Logger
	services map[string]bool

	mu     sync.Mutex
	status Status
}

var _ discovery.Provider = (*Provider)(nil)

// New checks cfg and returns a provider that has not contacted the engine
// yet: an engine that is down at start-up is retried by Run like one that
// goes away later.
func New(cfg Config) (*Provider, error) {
	cfg.Host = hostOrDefault(cfg.Host)
	cfg.Label = cmp.Or(cfg.Label, DefaultLabel)
	cfg.PortLabel = cmp.Or(cfg.PortLabel, DefaultPortLabel)
	cfg.WeightLabel = cmp.Or(cfg.WeightLabel, DefaultWeightLabel)
	if cfg.Label == cfg.PortLabel || cfg.Label == cfg.WeightLabel || cfg.PortLabel == cfg.WeightLabel {
		return nil, fmt.Errorf("docker discovery: labels must differ: service %q, port %q, weight %q",
			cfg.Label, cfg.PortLabel, cfg.WeightLabel)
	}
	if len(cfg.Services) == 0 {
		return nil, errors.New("docker discovery: no services to watch")
	}
	services := map[string]bool{}
	for _, s := range cfg.Services {
		if strings.TrimSpace(s) == "" {
			return nil, fmt.Errorf("docker discovery: empty service name in %q", cfg.Services)
		}
		services[s] = true
	}
	cfg.Services = slices.Sorted(maps.Keys(services))
	eng, err := dialEngine(cfg.Host, cfg.TLS)
	if err != nil {
		return nil, fmt.Errorf("docker discovery: %w", err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Provider{
		cfg:      cfg,
		eng:      eng,
		log:      log.With("provider", "docker", "host", cfg.Host),
		services: services,
	}, nil
}

// Name is "docker".
func (p *Provider) Name() string { return "docker" }

// Status returns a copy of the provider's current status.
func (p *Provider) Status() Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.status
	s.Containers = maps.Clone(s.Containers)
	s.Skipped = maps.Clone(s.Skipped)
	return s
}

// Run follows the engine until ctx is done, sending a full snapshot after
// the first listing and after every change. It returns nil when ctx is done;
// engine errors are logged and retried, never returned.
func (p *Provider) Run(ctx context.Context, out chan<- discovery.Snapshot) error {
	defer p.eng.close()
	w := &watch{p: p, out: out, tracked: map[string]tracked{}}
	backoff := minBackoff
	var failures repeated
	for {
		synced, err := w.session(ctx)
		if ctx.Err() != nil {
			p.setConnected(false, nil)
			return nil
		}
		p.setConnected(false, err)
		if synced {
			// The stream worked before it broke: retry quickly.
			backoff = minBackoff
		}
		p.log.Log(ctx, failures.level(err, synced), "docker: lost the engine; keeping the last snapshot and reconnecting",
			"err", err, "retry_in", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			p.setConnected(false, nil)
			return nil
		case <-t.C:
		}
		if !synced {
			backoff = min(2*backoff, maxBackoff)
		}
	}
}

func (p *Provider) setConnected(ok bool, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.status.Connected = ok
	if err != nil {
		p.CountError()
		p.status.LastError = err.Error()
		p.status.LastErrorAt = time.Now()
	}
}

// tracked is a running container labelled for a watched service.
type tracked struct {
	name    string
	service string
	ep      backend.Endpoint // valid when skip is ""
	skip    string           // why the container cannot be used
}

// watch is the state of one Run: the containers it knows and the last
// snapshot it sent. It is owned by Run's goroutine.
type watch struct {
	p       *Provider
	out     chan<- discovery.Snapshot
	tracked map[string]tracked // by container ID
	last    map[string][]backend.Endpoint
	sent    bool
}

// eventFilters select the events that can change a container's endpoint:
// it starts or stops running, is paused, renamed (for the log), or joins or
// leaves a network (its address). The engine ORs the values of a key and
// ANDs the keys, so network destroy events get through too and are dropped
// in relevant.
var eventFilters = map[string][]string{
	"type":  {"container", "network"},
	"event": {"start", "restart", "die", "stop", "kill", "destroy", "pause", "unpause", "rename", "update", "connect", "disconnect"},
}

// session subscribes to events, resynchronises from a full list and then
// follows the stream until it fails or ctx is done. synced reports whether
// it got as far as sending the resynchronised state.
func (w *watch) session(ctx context.Context) (synced bool, err error) {
	eng := w.p.eng
	prefix, err := eng.apiPrefix(ctx)
	if err != nil {
		return false, err
	}
	streamCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Subscribe first: whatever changes while the list below runs is then
	// waiting on the stream, and re-inspecting is idempotent.
	stream, err := eng.events(streamCtx, prefix, eventFilters)
	if err != nil {
		return false, err
	}
	defer stream.close()
	if err := w.resync(ctx, prefix); err != nil {
		return false, err
	}
	// Connected before the snapshot goes out: whoever got it and asks for
	// the status must see the stream it came from.
	w.p.setConnected(true, nil)
	if err := w.publish(ctx); err != nil {
		return true, err
	}
	w.p.log.Info("docker: watching the engine", "api", strings.TrimPrefix(prefix, "/"), "containers", len(w.tracked))
	for {
		ev, err := stream.next()
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return true, errors.New("docker: the engine closed the events stream")
			}
			return true, fmt.Errorf("docker: read events stream: %w", err)
		}
		id, ok := w.relevant(ev)
		if !ok {
			continue
		}
		if err := w.refresh(ctx, prefix, id); err != nil {
			return true, err
		}
		if err := w.publish(ctx); err != nil {
			return true, err
		}
	}
}

// relevant returns the container an event is about, if it may change the
// snapshot: one already tracked, or one whose label names a watched service.
// Network events carry the container ID but not its labels; a container
// connecting before it starts is inspected on its start event instead.
func (w *watch) relevant(ev event) (string, bool) {
	var id string
	switch ev.Type {
	case "container":
		id = ev.Actor.ID
		if w.p.services[ev.Actor.Attributes[w.p.cfg.Label]] {
			return id, true
		}
	case "network":
		if ev.Action != "connect" && ev.Action != "disconnect" {
			return "", false
		}
		id = ev.Actor.Attributes["container"]
	default:
		return "", false
	}
	_, ok := w.tracked[id]
	return id, ok && id != ""
}

// resync replaces what the watch knows with a fresh list of the running
// containers that carry the service label.
func (w *watch) resync(ctx context.Context, prefix string) error {
	list, err := w.p.eng.list(ctx, prefix, map[string][]string{
		"label":  {w.p.cfg.Label},
		"status": {"running"},
	})
	if err != nil {
		return err
	}
	seen := map[string]bool{}
	for _, c := range list {
		seen[c.ID] = true
		if err := w.refresh(ctx, prefix, c.ID); err != nil {
			return err
		}
	}
	for id := range w.tracked {
		if !seen[id] {
			w.forget(id)
		}
	}
	return nil
}

// refresh inspects one container and updates what the watch knows of it.
func (w *watch) refresh(ctx context.Context, prefix, id string) error {
	c, err := w.p.eng.inspect(ctx, prefix, id)
	if errors.Is(err, errNotFound) {
		w.forget(id)
		return nil
	}
	if err != nil {
		return err
	}
	t, ok := w.p.classify(c)
	if !ok {
		w.forget(id)
		return nil
	}
	w.set(id, t)
	return nil
}

// classify turns an inspected container into its tracked state; ok is false
// for containers the provider does not watch (not running, paused,
// restarting, or labelled for another service).
func (p *Provider) classify(c containerJSON) (tracked, bool) {
	service := c.Config.Labels[p.cfg.Label]
	if !c.State.Running || c.State.Paused || c.State.Restarting || !p.services[service] {
		return tracked{}, false
	}
	t := tracked{name: strings.TrimPrefix(c.Name, "/"), service: service}
	ep, err := p.endpoint(c)
	if err != nil {
		t.skip = err.Error()
	} else {
		t.ep = ep
	}
	return t, true
}

func (w *watch) set(id string, t tracked) {
	prev, had := w.tracked[id]
	w.tracked[id] = t
	switch {
	case t.skip != "" && (!had || prev.skip != t.skip):
		// Logged once per container and reason, not on every event.
		w.p.log.Warn("docker: container skipped", "container", t.name, "id", shortID(id),
			"service", t.service, "reason", t.skip)
	case t.skip == "" && (!had || prev.ep != t.ep || prev.skip != ""):
		w.p.log.Debug("docker: container endpoint", "container", t.name, "id", shortID(id),
			"service", t.service, "addr", t.ep.Addr, "weight", t.ep.Weight)
	}
	w.updateStatus()
}

func (w *watch) forget(id string) {
	t, had := w.tracked[id]
	if !had {
		return
	}
	delete(w.tracked, id)
	w.p.log.Debug("docker: container gone", "container", t.name, "id", shortID(id), "service", t.service)
	w.updateStatus()
}

func (w *watch) updateStatus() {
	containers, skipped := map[string]int{}, map[string]int{}
	for _, s := range w.p.cfg.Services {
		containers[s], skipped[s] = 0, 0
	}
	for _, t := range w.tracked {
		containers[t.service]++
		if t.skip != "" {
			skipped[t.service]++
		}
	}
	w.p.mu.Lock()
	w.p.status.Containers, w.p.status.Skipped = containers, skipped
	w.p.mu.Unlock()
}

// snapshot builds the services map from what the watch knows.
func (w *watch) snapshot() map[string][]backend.Endpoint {
	m := make(map[string][]backend.Endpoint, len(w.p.cfg.Services))
	for _, s := range w.p.cfg.Services {
		m[s] = []backend.Endpoint{}
	}
	for _, t := range w.tracked {
		if t.skip == "" {
			m[t.service] = append(m[t.service], t.ep)
		}
	}
	for s, eps := range m {
		if len(eps) > 0 {
			m[s] = discovery.Normalize(eps)
		}
	}
	return m
}

// publish sends the snapshot unless it equals the last one sent.
func (w *watch) publish(ctx context.Context) error {
	snap := w.snapshot()
	if w.sent && maps.EqualFunc(snap, w.last, discovery.Equal) {
		return nil
	}
	select {
	case w.out <- discovery.Snapshot{Provider: w.p.Name(), Services: snap}:
		w.last, w.sent = snap, true
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// endpoint works out where a container serves: its address (see pickIP),
// its port (the port label, else its single exposed TCP port) and its
// weight label. The error says why the container cannot be used.
func (p *Provider) endpoint(c containerJSON) (backend.Endpoint, error) {
	labels := c.Config.Labels
	var port int
	if v, ok := labels[p.cfg.PortLabel]; ok {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < 1 || n > 65535 {
			return backend.Endpoint{}, fmt.Errorf("label %s=%q: want a port number from 1 to 65535", p.cfg.PortLabel, v)
		}
		port = n
	} else {
		ports := exposedTCP(c.Config.ExposedPorts)
		switch len(ports) {
		case 0:
			return backend.Endpoint{}, fmt.Errorf("no port: set label %s or expose one TCP port", p.cfg.PortLabel)
		case 1:
			port = ports[0]
		default:
			return backend.Endpoint{}, fmt.Errorf("exposes TCP ports %v and has no %s label saying which to use", ports, p.cfg.PortLabel)
		}
	}
	weight := 0
	if v, ok := labels[p.cfg.WeightLabel]; ok {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < 1 || n > maxWeight {
			return backend.Endpoint{}, fmt.Errorf("label %s=%q: want an integer from 1 to %d", p.cfg.WeightLabel, v, maxWeight)
		}
		weight = n
	}
	ip := pickIP(c, p.cfg.Network)
	if ip == "" {
		return backend.Endpoint{}, errors.New("no IP address on any network (network mode host or none?)")
	}
	return backend.Endpoint{Addr: net.JoinHostPort(ip, strconv.Itoa(port)), Weight: weight}, nil
}

// exposedTCP returns the sorted TCP ports of ExposedPorts ("7000/tcp";
// a key without a protocol is TCP, as Docker reads it).
func exposedTCP(exposed map[string]struct{}) []int {
	var ports []int
	for k := range exposed {
		num, proto, _ := strings.Cut(k, "/")
		if proto != "" && proto != "tcp" {
			continue
		}
		if n, err := strconv.Atoi(num); err == nil && n >= 1 && n <= 65535 {
			ports = append(ports, n)
		}
	}
	slices.Sort(ports)
	return slices.Compact(ports)
}

// pickIP chooses the container's address: on the preferred network (by name
// or ID) if it is attached there, else on the first of its networks by name
// that gives it one, else the legacy top-level address. Sorting by name
// makes the choice stable across inspections, whatever order the engine's
// JSON map comes in.
func pickIP(c containerJSON, prefer string) string {
	nets := c.NetworkSettings.Networks
	if prefer != "" {
		for name, n := range nets {
			if n != nil && (name == prefer || n.NetworkID == prefer) {
				if ip := n.ip(); ip != "" {
					return ip
				}
			}
		}
	}
	for _, name := range slices.Sorted(maps.Keys(nets)) {
		if n := nets[name]; n != nil {
			if ip := n.ip(); ip != "" {
				return ip
			}
		}
	}
	return cmp.Or(c.NetworkSettings.IPAddress, c.NetworkSettings.GlobalIPv6Address)
}

// ip prefers IPv4, which every engine sets; IPv6 only when it is the only one.
func (n *endpointSettings) ip() string { return cmp.Or(n.IPAddress, n.GlobalIPv6Address) }

func shortID(id string) string { return id[:min(12, len(id))] }
