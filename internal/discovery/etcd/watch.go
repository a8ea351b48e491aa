package etcd

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/attache/attache/internal/backend"
	"github.com/attache/attache/internal/discovery"
)

// state is Run's view of the watched keys and of what it last sent. Only
// Run's own goroutine touches it; the watch goroutines hand their events
// over a channel, so applying them needs no lock and keeps etcd's order.
type state struct {
	p    *Provider
	keys []*keyState // one per Watch, in the same order; nil before the first read
	last map[string][]backend.Endpoint
	sent bool
}

// keyState holds one watched key K: its own value and its children's.
type keyState struct {
	w Watch
	// rev is the newest revision applied: the read's, then each event's.
	// Events at or below it are already in the state and are skipped.
	rev      int64
	self     *selfValue // nil while K does not exist
	children map[string]childValue
}

type selfValue struct {
	raw    string
	eps    []backend.Endpoint
	errs   []error
	logged bool // errs were logged; they are only when the value is in use
}

type childValue struct {
	raw string
	ep  backend.Endpoint
	err error
}

// watchItem is one watch response, or the error that ended the watch,
// handed from a watch goroutine to Run's goroutine.
type watchItem struct {
	idx    int
	events []*clientv3.Event
	rev    int64
	err    error
}

func newState(p *Provider) *state { return &state{p: p} }

// rangeEnd is the end of the range [K, K+"0"): it holds K itself and
// everything under K+"/" ('0' is the byte after '/'), and only a few
// unrelated keys like K+"-x" that inScope filters out. One range per watch
// keeps the read and the watch of a key at a single revision.
func rangeEnd(key string) string { return key + "0" }

func inScope(watched, key string) bool {
	return key == watched || strings.HasPrefix(key, watched+"/")
}

// session reads every watched key, sends the resulting snapshot (if it
// differs from the last one sent) and follows the changes until the watch
// or the connection fails or ctx ends. established reports whether the
// read succeeded. On return every goroutine the session started has ended.
func (s *state) session(ctx context.Context, cli *clientv3.Client, out chan<- discovery.Snapshot) (established bool, err error) {
	sctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()

	fresh := make([]*keyState, len(s.p.watches))
	var rev int64
	for i, w := range s.p.watches {
		rctx, rcancel := context.WithTimeout(sctx, s.p.dialTimeout)
		resp, err := cli.Get(rctx, w.Key, clientv3.WithRange(rangeEnd(w.Key)))
		rcancel()
		if err != nil {
			return false, fmt.Errorf("read %q for service %q: %w", w.Key, w.Service, err)
		}
		var prev *keyState
		if s.keys != nil {
			prev = s.keys[i]
		}
		ks := &keyState{w: w, rev: resp.Header.Revision, children: map[string]childValue{}}
		for _, kv := range resp.Kvs {
			if key := string(kv.Key); inScope(w.Key, key) {
				ks.put(s.p.log, key, string(kv.Value), prev)
			}
		}
		fresh[i] = ks
		rev = max(rev, resp.Header.Revision)
	}
	s.keys = fresh
	s.p.setConnected(true)
	s.p.noteRevision(rev)
	s.p.log.Info("etcd keys read; watching for changes", "revision", rev)

	// The connection monitor starts first, right after a read proved the
	// connection Ready, so an outage from here on is seen. The watches are
	// opened in their own goroutines because clientv3's Watch blocks until
	// the server has accepted the watch, which while etcd is down means
	// until it is back.
	lost := make(chan error, 1)
	wg.Go(func() { watchConn(sctx, cli.ActiveConnection(), lost) })
	items := make(chan watchItem)
	// WithRequireLeader makes a member cut off from its cluster end the
	// watch with "no leader" instead of serving a frozen view forever.
	wctx := clientv3.WithRequireLeader(sctx)
	for i, ks := range s.keys {
		key, from := ks.w.Key, ks.rev+1
		wg.Go(func() {
			wch := cli.Watch(wctx, key, clientv3.WithRange(rangeEnd(key)), clientv3.WithRev(from))
			forward(sctx, i, key, wch, items)
		})
	}
	if err := s.publish(sctx, out); err != nil {
		return true, err
	}

	for {
		select {
		case <-sctx.Done():
			return true, sctx.Err()
		case err := <-lost:
			return true, err
		case it := <-items:
			if it.err != nil {
				return true, it.err
			}
			s.apply(it)
			if err := s.publish(sctx, out); err != nil {
				return true, err
			}
		}
	}
}

// forward hands the responses of one watch to the session until the watch
// ends (with an error item) or ctx does.
func forward(ctx context.Context, idx int, key string, wch clientv3.WatchChan, items chan<- watchItem) {
	for {
		var it watchItem
		select {
		case <-ctx.Done():
			return
		case resp, ok := <-wch:
			switch {
			case !ok:
				it.err = fmt.Errorf("watch %q: closed by the client", key)
			case resp.Err() != nil:
				// ErrCompacted, "no leader", a cancelled watch: all are
				// repaired the same way, by reading everything again.
				it.err = fmt.Errorf("watch %q: %w", key, resp.Err())
			default:
				it = watchItem{idx: idx, events: resp.Events, rev: resp.Header.Revision}
			}
		}
		select {
		case items <- it:
		case <-ctx.Done():
			return
		}
		if it.err != nil {
			return
		}
	}
}

// apply updates one key's state from a watch response.
func (s *state) apply(it watchItem) {
	ks := s.keys[it.idx]
	applied := ks.rev
	for _, ev := range it.events {
		if ev.Kv.ModRevision <= applied {
			continue
		}
		key := string(ev.Kv.Key)
		if !inScope(ks.w.Key, key) {
			continue
		}
		switch ev.Type {
		case clientv3.EventTypePut:
			ks.put(s.p.log, key, string(ev.Kv.Value), nil)
		case clientv3.EventTypeDelete:
			ks.remove(key)
		}
		ks.rev = max(ks.rev, ev.Kv.ModRevision)
	}
	s.p.noteRevision(it.rev)
}

// put records key=raw. A value that did not change is not parsed (or
// logged) again; prev, the state before a re-read, counts as unchanged
// too, so a reconnect does not repeat every warning.
func (ks *keyState) put(log *slog.Logger, key, raw string, prev *keyState) {
	if key == ks.w.Key {
		switch {
		case ks.self != nil && ks.self.raw == raw:
		case prev != nil && prev.self != nil && prev.self.raw == raw:
			ks.self = prev.self
		default:
			eps, errs := ParseList(raw)
			ks.self = &selfValue{raw: raw, eps: eps, errs: errs}
		}
		return
	}
	if old, ok := ks.children[key]; ok && old.raw == raw {
		return
	}
	if prev != nil {
		if old, ok := prev.children[key]; ok && old.raw == raw {
			ks.children[key] = old
			return
		}
	}
	ep, err := ParseValue(raw)
	if err != nil {
		log.Warn("etcd: malformed endpoint value skipped", "service", ks.w.Service, "key", key, "value", clip(raw), "err", err)
	}
	ks.children[key] = childValue{raw: raw, ep: ep, err: err}
}

func (ks *keyState) remove(key string) {
	if key == ks.w.Key {
		ks.self = nil
		return
	}
	delete(ks.children, key)
}

// endpoints applies the key rules: the children if there are any, else the
// list in K's own value. Errors in K's value are logged here, the first
// time the value is used, since with children present it is ignored.
func (ks *keyState) endpoints(log *slog.Logger) []backend.Endpoint {
	var eps []backend.Endpoint
	switch {
	case len(ks.children) > 0:
		for _, c := range ks.children {
			if c.err == nil {
				eps = append(eps, c.ep)
			}
		}
	case ks.self != nil:
		if !ks.self.logged {
			for _, err := range ks.self.errs {
				log.Warn("etcd: malformed endpoint in list skipped", "service", ks.w.Service, "key", ks.w.Key, "value", clip(ks.self.raw), "err", err)
			}
			ks.self.logged = true
		}
		eps = ks.self.eps
	}
	eps = discovery.Normalize(eps)
	if eps == nil {
		eps = []backend.Endpoint{}
	}
	return eps
}

// publish sends the current snapshot unless it equals the last one sent.
func (s *state) publish(ctx context.Context, out chan<- discovery.Snapshot) error {
	services := make(map[string][]backend.Endpoint, len(s.keys))
	for _, ks := range s.keys {
		services[ks.w.Service] = append(services[ks.w.Service], ks.endpoints(s.p.log)...)
	}
	for svc, eps := range services { // a service may have several keys
		if eps = discovery.Normalize(eps); eps == nil {
			eps = []backend.Endpoint{}
		}
		services[svc] = eps
	}
	if s.sent && maps.EqualFunc(services, s.last, slices.Equal) {
		return nil
	}
	select {
	case out <- discovery.Snapshot{Provider: s.p.name, Services: services}:
	case <-ctx.Done():
		return ctx.Err()
	}
	s.last, s.sent = services, true
	s.p.noteSent(services)
	return nil
}

// clip shortens a value for a log line; etcd allows values of megabytes.
func clip(v string) string {
	const limit = 200
	if len(v) <= limit {
		return v
	}
	return v[:limit] + "…"
}
