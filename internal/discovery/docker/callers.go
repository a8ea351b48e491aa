package docker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/attache/attache/internal/tlsclient"
)

// Callers finds which running container a connection comes from, by its
// source address on any of the container's networks (user-defined ones
// included), for transparent mode's per-consumer backends: the caller's
// BACKEND_<port> environment variable, or its attache.connect.<port>
// label, chooses where its connections to <port> go.
//
// Answers are cached only while the engine's event stream is open, and an
// event about a container (start, die, destroy, rename, update, a network
// connect or disconnect) drops what is cached for it, and every "no
// container has this address" answer: a container that starts, or
// changes its variables by being recreated, is seen on its next
// connection. Without the stream nothing is cached: every lookup asks
// the engine.
type Callers struct {
	eng *engine
	log *slog.Logger
	// OnInvalidate, when set before Run, hears of every invalidation: the
	// container whose answers were dropped, or "" when the whole cache
	// was (the events stream opened or broke). What the caller built on
	// an answer about that container is stale from then on. It is called
	// from Run's goroutine, without Callers' lock held.
	OnInvalidate func(id string)

	mu            sync.Mutex
	prefix        string // the API path prefix, once known
	live          bool   // the events stream is open: the cache may be trusted
	gen           uint64 // bumped by every invalidation; a lookup that saw another stores nothing
	byIP          map[netip.Addr]*Caller
	lookups, hits int64
}

// Caller is a container that connected through attache.
type Caller struct {
	ID   string
	Name string // without the leading "/"
	// Connect maps a destination port to the caller's choice of backend:
	// its BACKEND_<port> variable, else its attache.connect.<port> label.
	Connect map[int]string
}

// ConnectLabel prefixes the labels that choose a consumer's backends.
const ConnectLabel = "attache.connect."

// NewCallers returns Callers for the engine at host (DOCKER_HOST form; ""
// is $DOCKER_HOST, else the default socket), reached over TLS as
// Config.TLS says for the provider. Run must run for the cache to be used.
func NewCallers(host string, tlsFiles *tlsclient.Files, log *slog.Logger) (*Callers, error) {
	host = hostOrDefault(host)
	eng, err := dialEngine(host, tlsFiles)
	if err != nil {
		return nil, fmt.Errorf("per-consumer backends: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Callers{eng: eng, log: log.With("component", "callers", "host", host), byIP: map[netip.Addr]*Caller{}}, nil
}

// Run follows the engine's events until ctx is done, reconnecting with a
// back-off when the stream breaks.
func (c *Callers) Run(ctx context.Context) {
	defer c.eng.close()
	backoff := minBackoff
	var failures repeated
	for {
		opened, err := c.follow(ctx)
		c.setLive(false)
		c.notify("")
		if ctx.Err() != nil {
			return
		}
		if opened {
			backoff = minBackoff
		}
		c.log.Log(ctx, failures.level(err, opened), "docker: lost the engine's events; caller lookups are not cached until it is back",
			"error", err, "retry_in", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		if !opened {
			backoff = min(2*backoff, maxBackoff)
		}
	}
}

var callerEvents = map[string][]string{
	"type":  {"container", "network"},
	"event": {"start", "restart", "die", "stop", "kill", "destroy", "rename", "update", "connect", "disconnect"},
}

func (c *Callers) follow(ctx context.Context) (bool, error) {
	prefix, err := c.eng.apiPrefix(ctx)
	if err != nil {
		return false, err
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.eng.events(sctx, prefix, callerEvents)
	if err != nil {
		return false, err
	}
	defer stream.close()
	c.mu.Lock()
	c.prefix = prefix
	c.mu.Unlock()
	// Routes built before the stream opened may have missed an event:
	// drop them, then trust what is built from here on.
	c.notify("")
	c.setLive(true)
	for {
		ev, err := stream.next()
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return true, errors.New("the engine closed the events stream")
			}
			return true, fmt.Errorf("read events stream: %w", err)
		}
		id := ev.Actor.ID
		if ev.Type == "network" {
			id = ev.Actor.Attributes["container"]
		}
		c.invalidate(id)
		c.notify(id)
	}
}

func (c *Callers) notify(id string) {
	if c.OnInvalidate != nil {
		c.OnInvalidate(id)
	}
}

// setLive starts or stops trusting the cache; either way it starts empty.
func (c *Callers) setLive(live bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.live = live
	c.gen++
	clear(c.byIP)
}

// invalidate drops what is cached for container id, and every negative
// answer (the container may have just taken one of those addresses).
func (c *Callers) invalidate(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	for ip, cl := range c.byIP {
		if cl == nil || cl.ID == id {
			delete(c.byIP, ip)
		}
	}
}

// Lookup returns the running container with address ip, or nil when none
// has it (a process on the host, another machine).
func (c *Callers) Lookup(ctx context.Context, ip netip.Addr) (*Caller, error) {
	ip = ip.Unmap()
	c.mu.Lock()
	c.lookups++
	if cl, ok := c.byIP[ip]; ok && c.live {
		c.hits++
		c.mu.Unlock()
		return cl, nil
	}
	gen, live, prefix := c.gen, c.live, c.prefix
	c.mu.Unlock()
	if prefix == "" {
		p, err := c.eng.apiPrefix(ctx)
		if err != nil {
			return nil, err
		}
		prefix = p
	}
	cl, err := c.find(ctx, prefix, ip)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if live && c.live && c.gen == gen {
		c.byIP[ip] = cl
	}
	c.mu.Unlock()
	return cl, nil
}

// Live reports whether the engine's events stream is open, so answers
// are cached and invalidations reported.
func (c *Callers) Live() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.live
}

// Stats are the lookups asked and those the cache answered.
func (c *Callers) Stats() (lookups, hits int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lookups, c.hits
}

// listed is the part of GET /containers/json that carries the addresses.
type listed struct {
	ID              string `json:"Id"`
	NetworkSettings struct {
		Networks map[string]*endpointSettings
	}
}

// find lists the running containers, picks the one with ip on any network
// and inspects it for its variables and labels.
func (c *Callers) find(ctx context.Context, prefix string, ip netip.Addr) (*Caller, error) {
	var list []listed
	if err := c.eng.getJSON(ctx, prefix+"/containers/json", nil, &list); err != nil {
		return nil, fmt.Errorf("per-consumer backends: %w", err)
	}
	id := ""
	for _, l := range list {
		for _, n := range l.NetworkSettings.Networks {
			if n == nil {
				continue
			}
			for _, s := range []string{n.IPAddress, n.GlobalIPv6Address} {
				if a, err := netip.ParseAddr(s); err == nil && a.Unmap() == ip {
					id = l.ID
				}
			}
		}
	}
	if id == "" {
		return nil, nil
	}
	var cj struct {
		ID     string `json:"Id"`
		Name   string
		Config struct {
			Env    []string
			Labels map[string]string
		}
	}
	if err := c.eng.getJSON(ctx, prefix+"/containers/"+id+"/json", nil, &cj); err != nil {
		if errors.Is(err, errNotFound) {
			return nil, nil // gone between the list and now
		}
		return nil, fmt.Errorf("per-consumer backends: %w", err)
	}
	cl := &Caller{ID: cj.ID, Name: strings.TrimPrefix(cj.Name, "/"), Connect: map[int]string{}}
	for k, v := range cj.Config.Labels {
		if p, ok := portSuffix(k, ConnectLabel); ok && v != "" {
			cl.Connect[p] = v
		}
	}
	for _, kv := range cj.Config.Env { // the variable beats the label
		k, v, _ := strings.Cut(kv, "=")
		if p, ok := portSuffix(k, "BACKEND_"); ok && v != "" {
			cl.Connect[p] = v
		}
	}
	return cl, nil
}

// portSuffix reads the port after prefix in k ("BACKEND_6379").
func portSuffix(k, prefix string) (int, bool) {
	rest, ok := strings.CutPrefix(k, prefix)
	if !ok || rest == "" || len(rest) > 5 {
		return 0, false
	}
	p := 0
	for _, r := range rest {
		if r < '0' || r > '9' {
			return 0, false
		}
		p = p*10 + int(r-'0')
	}
	return p, p >= 1 && p <= 65535
}
