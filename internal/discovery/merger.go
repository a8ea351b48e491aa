package discovery

import (
	"context"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/attache/attache/internal/backend"
)

// Merger keeps the latest snapshot of every provider and, when they change,
// hands the union per service to Apply. Bursts are coalesced: Apply runs once
// Debounce has passed without a new snapshot (or MaxDelay after the first
// one of a burst, so a chatty source cannot hold changes back forever).
type Merger struct {
	// Apply receives service → merged endpoints (normalized). It is called
	// from Run's goroutine only, never concurrently, and only when the
	// result differs from the one it last received.
	Apply func(map[string][]backend.Endpoint)
	// Debounce defaults to 50ms; MaxDelay to 1s.
	Debounce, MaxDelay time.Duration
	Logger             *slog.Logger
	// Seed, when set, is the starting point: provider → service →
	// endpoints, typically an earlier Merger's Snapshots, so that replacing
	// the providers on a reload does not empty the services of the ones
	// that have not reported yet. A provider's first snapshot replaces its
	// seed.
	Seed map[string]map[string][]backend.Endpoint
	// OnSnapshot, when set, hears of every snapshot received, changed or
	// not, by provider name (the daemon counts them in its metrics). It is
	// called from Run's goroutine and must not block.
	OnSnapshot func(provider string)

	mu     sync.Mutex
	latest map[string]map[string][]backend.Endpoint
}

// Snapshots returns a copy of the latest snapshot of every provider.
func (m *Merger) Snapshots() map[string]map[string][]backend.Endpoint {
	m.mu.Lock()
	defer m.mu.Unlock()
	return maps.Clone(m.latest)
}

// Run reads snapshots from in until ctx is done.
func (m *Merger) Run(ctx context.Context, in <-chan Snapshot) {
	debounce, maxDelay := m.Debounce, m.MaxDelay
	if debounce <= 0 {
		debounce = 50 * time.Millisecond
	}
	if maxDelay <= 0 {
		maxDelay = time.Second
	}
	m.mu.Lock()
	m.latest = maps.Clone(m.Seed)
	if m.latest == nil {
		m.latest = map[string]map[string][]backend.Endpoint{}
	}
	m.mu.Unlock()
	var applied map[string][]backend.Endpoint
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	pending := false
	var first time.Time
	for {
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case s := <-in:
			m.mu.Lock()
			m.latest[s.Provider] = s.Services
			m.mu.Unlock()
			if m.OnSnapshot != nil {
				m.OnSnapshot(s.Provider)
			}
			now := time.Now()
			if !pending {
				pending, first = true, now
			}
			wait := debounce
			if rest := maxDelay - now.Sub(first); rest < wait {
				wait = max(rest, 0)
			}
			timer.Reset(wait)
		case <-timer.C:
			pending = false
			m.mu.Lock()
			merged := Merge(m.latest)
			m.mu.Unlock()
			if applied != nil && sameServices(applied, merged) {
				continue
			}
			applied = merged
			if m.Logger != nil {
				m.Logger.Debug("discovery: backend set changed", "services", len(merged))
			}
			m.Apply(merged)
		}
	}
}

// Merge unions every provider's endpoints per service. Where two providers
// report one address, the first provider in name order wins (its weight and
// priority are kept), so the result does not depend on arrival order.
func Merge(byProvider map[string]map[string][]backend.Endpoint) map[string][]backend.Endpoint {
	out := map[string][]backend.Endpoint{}
	for _, name := range slices.Sorted(maps.Keys(byProvider)) {
		for svc, eps := range byProvider[name] {
			out[svc] = append(out[svc], eps...)
		}
	}
	for svc, eps := range out {
		out[svc] = Normalize(eps)
	}
	return out
}

func sameServices(a, b map[string][]backend.Endpoint) bool {
	if len(a) != len(b) {
		return false
	}
	for k, va := range a {
		vb, ok := b[k]
		if !ok || !slices.Equal(va, vb) {
			return false
		}
	}
	return true
}
