// Package backend is the vocabulary shared by discovery, health, balancing
// and the data path: an Endpoint is an address a source of truth reports, a
// Backend is an Endpoint with the live state every configuration that uses it
// shares, and a Set is the immutable list a balancing policy picks from.
// It does no I/O.
package backend

import "sync/atomic"

// Endpoint is one address a service can be reached at, as discovery reports
// it.
type Endpoint struct {
	// Addr is host:port; hostnames are resolved at dial time.
	Addr string
	// Weight biases weighted policies; 0 means 1.
	Weight int
	// Priority orders failover tiers (DNS SRV priority): lower is preferred,
	// and the first-available policy only uses a higher tier when every
	// backend of the lower ones is down.
	Priority int
}

// EffectiveWeight is Weight with 0 read as 1.
func (e Endpoint) EffectiveWeight() int {
	if e.Weight <= 0 {
		return 1
	}
	return e.Weight
}

// Backend is an Endpoint plus live state. It is shared by pointer across
// configurations and snapshots (keyed by address), so health and connection
// counts survive reloads. A new Backend is healthy until a check says
// otherwise.
type Backend struct {
	Endpoint
	active    atomic.Int64
	unhealthy atomic.Bool
}

// New returns a healthy Backend for e.
func New(e Endpoint) *Backend { return &Backend{Endpoint: e} }

// Healthy reports whether the backend may receive new connections.
func (b *Backend) Healthy() bool { return !b.unhealthy.Load() }

// SetHealthy records a health verdict.
func (b *Backend) SetHealthy(ok bool) { b.unhealthy.Store(!ok) }

// Active is the number of proxied connections open to the backend.
func (b *Backend) Active() int64 { return b.active.Load() }

// Acquire counts a connection opened to the backend; Release counts it closed.
func (b *Backend) Acquire() { b.active.Add(1) }

// Release counts a connection to the backend closed.
func (b *Backend) Release() { b.active.Add(-1) }

// Set is an immutable list of backends in the order discovery gave them.
type Set struct {
	backends []*Backend
}

// NewSet returns a Set of bs; the slice is copied.
func NewSet(bs ...*Backend) *Set {
	return &Set{backends: append([]*Backend(nil), bs...)}
}

// Len is the number of backends, healthy or not.
func (s *Set) Len() int {
	if s == nil {
		return 0
	}
	return len(s.backends)
}

// At returns the i-th backend.
func (s *Set) At(i int) *Backend { return s.backends[i] }
