// Package balance chooses the backend for each new connection. Every policy
// is safe for concurrent use, takes no lock and allocates nothing on the hot
// path; each skips unhealthy backends and returns nil when none is usable.
// Retrying another backend after a failed dial is the proxy's job: it marks
// the backend (passive health) and calls Pick again.
//
// Typical usage:
//
//	p, err := balance.New("least_conn")
//	b := p.Pick(set, clientAddr)
package balance

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync/atomic"

	"github.com/attache/attache/internal/backend"
)

// Policy chooses a usable backend from set for a client, or nil if there is
// none.
type Policy interface {
	Pick(set *backend.Set, from netip.AddrPort) *backend.Backend
}

// Names lists the policies New knows, for error messages and docs.
var Names = []string{"round_robin", "least_conn", "random", "source_hash", "weighted", "first"}

// New returns the policy called name.
func New(name string) (Policy, error) {
	switch name {
	case "round_robin", "":
		return &RoundRobin{}, nil
	case "least_conn":
		return LeastConn{}, nil
	case "random":
		return TwoChoices{}, nil
	case "source_hash":
		return NewSourceHash(), nil
	case "weighted":
		return Weighted{}, nil
	case "first":
		return First{}, nil
	}
	return nil, fmt.Errorf("unknown balancing policy %q (want one of %v)", name, Names)
}

var (
	_ Policy = (*RoundRobin)(nil)
	_ Policy = LeastConn{}
	_ Policy = TwoChoices{}
	_ Policy = (*SourceHash)(nil)
	_ Policy = Weighted{}
	_ Policy = First{}
)

// RoundRobin hands out healthy backends in turn.
type RoundRobin struct{ next atomic.Uint64 }

func (p *RoundRobin) Pick(set *backend.Set, _ netip.AddrPort) *backend.Backend {
	n := set.Len()
	if n == 0 {
		return nil
	}
	start := int(p.next.Add(1) % uint64(n))
	for i := range n {
		if b := set.At((start + i) % n); b.Healthy() {
			return b
		}
	}
	return nil
}

// LeastConn picks the healthy backend with the fewest open connections,
// weighted (connections per unit of weight); ties go to the earliest.
type LeastConn struct{}

func (LeastConn) Pick(set *backend.Set, _ netip.AddrPort) *backend.Backend {
	var best *backend.Backend
	for i := range set.Len() {
		b := set.At(i)
		if !b.Healthy() {
			continue
		}
		// a/wa < c/wc  ⇔  a*wc < c*wa, without division.
		if best == nil || b.Active()*int64(best.EffectiveWeight()) < best.Active()*int64(b.EffectiveWeight()) {
			best = b
		}
	}
	return best
}

// TwoChoices draws two healthy backends at random and takes the one with
// fewer open connections: near least-connections balance without scanning
// the set or herding every client onto the same backend.
type TwoChoices struct{}

func (TwoChoices) Pick(set *backend.Set, _ netip.AddrPort) *backend.Backend {
	n := set.Len()
	if n == 0 {
		return nil
	}
	a := randomHealthy(set, rand.IntN(n))
	if a == nil {
		return nil
	}
	b := randomHealthy(set, rand.IntN(n))
	if b != nil && b.Active() < a.Active() {
		return b
	}
	return a
}

// randomHealthy returns the first healthy backend at or after i.
func randomHealthy(set *backend.Set, i int) *backend.Backend {
	n := set.Len()
	for k := range n {
		if b := set.At((i + k) % n); b.Healthy() {
			return b
		}
	}
	return nil
}

// SourceHash keeps a client on one backend (sticky sessions without state):
// rendezvous hashing of the client address with each backend address, so
// adding or removing a backend only moves the clients of that backend. The
// hash is fixed (FNV-1a, then a 64-bit finalizer), not seeded per process:
// a client keeps its backend across restarts and upgrades, and two
// ambassadors in front of the same backends agree.
type SourceHash struct{}

// NewSourceHash returns a SourceHash.
func NewSourceHash() *SourceHash { return &SourceHash{} }

func (p *SourceHash) Pick(set *backend.Set, from netip.AddrPort) *backend.Backend {
	ip := from.Addr().As16()
	const offset, prime = 14695981039346656037, 1099511628211
	client := uint64(offset)
	for _, c := range ip {
		client = (client ^ uint64(c)) * prime
	}
	var best *backend.Backend
	var bestScore uint64
	for i := range set.Len() {
		b := set.At(i)
		if !b.Healthy() {
			continue
		}
		h := client
		for j := 0; j < len(b.Addr); j++ {
			h = (h ^ uint64(b.Addr[j])) * prime
		}
		if s := mix64(h); best == nil || s > bestScore {
			best, bestScore = b, s
		}
	}
	return best
}

// mix64 is the splitmix64 finalizer: FNV's low bits alone mix poorly.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// Weighted picks at random in proportion to each healthy backend's weight.
type Weighted struct{}

func (Weighted) Pick(set *backend.Set, _ netip.AddrPort) *backend.Backend {
	total := 0
	for i := range set.Len() {
		if b := set.At(i); b.Healthy() {
			total += b.EffectiveWeight()
		}
	}
	if total == 0 {
		return nil
	}
	r := rand.IntN(total)
	for i := range set.Len() {
		b := set.At(i)
		if !b.Healthy() {
			continue
		}
		if r -= b.EffectiveWeight(); r < 0 {
			return b
		}
	}
	return nil
}

// First is failover order: the first healthy backend of the lowest priority
// tier; within that tier, backends share connections by weight (DNS SRV
// semantics).
type First struct{}

func (First) Pick(set *backend.Set, _ netip.AddrPort) *backend.Backend {
	tier, found := 0, false
	for i := range set.Len() {
		if b := set.At(i); b.Healthy() && (!found || b.Priority < tier) {
			tier, found = b.Priority, true
		}
	}
	if !found {
		return nil
	}
	total := 0
	for i := range set.Len() {
		if b := set.At(i); b.Healthy() && b.Priority == tier {
			total += b.EffectiveWeight()
		}
	}
	r := rand.IntN(total)
	for i := range set.Len() {
		b := set.At(i)
		if !b.Healthy() || b.Priority != tier {
			continue
		}
		if r -= b.EffectiveWeight(); r < 0 {
			return b
		}
	}
	return nil
}
