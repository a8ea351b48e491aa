package health

import (
	"sync"

	"github.com/attache/attache/internal/backend"
)

// Registry owns the live state of every backend, keyed by (service,
// address), and is what makes connection counts and health survive reloads
// and discovery updates: each Resolve returns Backends that share state with
// the ones it returned before for the same service and address (caddy-l4's
// peer pool, without the reference counts, because Resolve always receives
// a service's complete list).
//
// It is safe for concurrent use. It is not on the hot path: it is called
// when a snapshot or a configuration changes, never per connection.
type Registry struct {
	mu       sync.Mutex
	fallback backend.Backoff
	services map[string]*service
}

type service struct {
	backoff  *backend.Backoff // nil: the registry's fallback
	backends map[string]*backend.Backend
}

// NewRegistry returns an empty Registry whose services eject failed backends
// with backoff unless SetBackoff says otherwise; the zero Backoff means 1s
// doubling up to 30s.
func NewRegistry(backoff backend.Backoff) *Registry {
	return &Registry{fallback: backoff, services: map[string]*service{}}
}

// SetBackoff sets service's passive-ejection back-off. It applies at once to
// the backends already resolved and to later ones.
func (r *Registry) SetBackoff(svc string, bo backend.Backoff) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.service(svc)
	s.backoff = &bo
	for _, b := range s.backends {
		b.SetBackoff(bo)
	}
}

// Resolve returns the Set for service's complete endpoint list eps, in the
// order given. The Backend for an address already resolved shares that
// address's state (the same *Backend when its Endpoint is unchanged); a new
// address starts healthy with no connections. State for addresses no longer
// listed is forgotten: connections in flight keep their *Backend and still
// Release it, but a later return of the address starts afresh. When eps
// lists an address twice, the first one wins.
func (r *Registry) Resolve(svc string, eps []backend.Endpoint) *backend.Set {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.service(svc)
	bo := r.fallback
	if s.backoff != nil {
		bo = *s.backoff
	}
	next := make(map[string]*backend.Backend, len(eps))
	list := make([]*backend.Backend, 0, len(eps))
	for _, e := range eps {
		if _, dup := next[e.Addr]; dup {
			continue
		}
		b, ok := s.backends[e.Addr]
		switch {
		case !ok:
			b = backend.New(e)
		case b.Endpoint != e:
			b = b.WithEndpoint(e)
		}
		b.SetBackoff(bo)
		next[e.Addr] = b
		list = append(list, b)
	}
	s.backends = next
	return backend.NewSet(list...)
}

// Forget drops everything known about service, for a service a reload
// removed. A later Resolve of it starts afresh.
func (r *Registry) Forget(svc string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.services, svc)
}

// Adopt makes b the state the next Resolve of service uses for b's
// address, unless the service already has one for it. The daemon uses it
// when a drained backend comes back: the connections still open to it must
// keep counting against it (least_conn, the admin view), and its health
// and ejection carry on where they were rather than starting afresh.
func (r *Registry) Adopt(svc string, b *backend.Backend) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.service(svc)
	if _, ok := s.backends[b.Addr]; !ok {
		s.backends[b.Addr] = b
	}
}

// Lookup returns the Backend last resolved for service and addr, or nil.
func (r *Registry) Lookup(svc, addr string) *backend.Backend {
	r.mu.Lock()
	defer r.mu.Unlock()
	if s, ok := r.services[svc]; ok {
		return s.backends[addr]
	}
	return nil
}

// service returns svc's entry, creating it; r.mu must be held.
func (r *Registry) service(svc string) *service {
	s, ok := r.services[svc]
	if !ok {
		s = &service{backends: map[string]*backend.Backend{}}
		r.services[svc] = s
	}
	return s
}
