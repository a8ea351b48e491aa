// Package discovery is how attache learns where its backends are. Each
// source of truth (DNS, etcd, Consul, Docker, the config file) is a Provider
// that sends full Snapshots; a Merger keeps the latest snapshot of every
// provider, unions them per service, drops results that did not change and
// hands the rest to the daemon, which rebuilds its routing table.
//
// Snapshots rather than deltas: merging snapshots is idempotent, an unchanged
// one is dropped with an equality check, and a lost message is repaired by the
// next one.
package discovery

import (
	"cmp"
	"context"
	"slices"
	"sync/atomic"

	"github.com/attache/attache/internal/backend"
)

// A Provider watches one source of truth and reports the services it knows.
//
// A provider's configuration is checked by its constructor (dns.New,
// etcd.New …) before anything starts, so a bad one never half-starts attache.
type Provider interface {
	// Name identifies the provider in logs, metrics and the admin API, e.g.
	// "dns" or "etcd 127.0.0.1:2379". Names are unique within one daemon.
	Name() string
	// Run sends a complete Snapshot whenever the source changes, and returns
	// when ctx is done. Transient errors (the source unreachable, a bad
	// record) are logged and retried inside Run with back-off, and the last
	// good snapshot stays in force; Run returns an error only when it cannot
	// go on at all. Every send selects on ctx.Done(). Run never closes out.
	Run(ctx context.Context, out chan<- Snapshot) error
}

// Snapshot is one provider's full view: attache service name → endpoints.
// It is never a delta. A service that the provider watches but which has no
// endpoints right now is present with an empty slice; a service missing from
// the map is one this provider knows nothing about.
type Snapshot struct {
	Provider string
	Services map[string][]backend.Endpoint
}

// Normalize sorts every service's endpoints by address and drops duplicate
// addresses (the first one wins), so that two snapshots with the same content
// compare equal whatever order the source listed them in.
func Normalize(eps []backend.Endpoint) []backend.Endpoint {
	out := slices.Clone(eps)
	slices.SortStableFunc(out, func(a, b backend.Endpoint) int { return cmp.Compare(a.Addr, b.Addr) })
	return slices.CompactFunc(out, func(a, b backend.Endpoint) bool { return a.Addr == b.Addr })
}

// Equal reports whether two endpoint lists are the same after Normalize.
func Equal(a, b []backend.Endpoint) bool {
	return slices.Equal(Normalize(a), Normalize(b))
}

// ErrorCounter is implemented by providers that count their failed contacts
// with their source (a query, a watch or a connection that failed), for the
// attache_discovery_errors_total metric.
type ErrorCounter interface {
	Errors() int64
}

// ErrorCount is an ErrorCounter for providers to embed.
type ErrorCount struct{ n atomic.Int64 }

// CountError counts one failed contact with the source.
func (c *ErrorCount) CountError() { c.n.Add(1) }

// Errors returns how many failed contacts were counted.
func (c *ErrorCount) Errors() int64 { return c.n.Load() }
