// Package backend is the vocabulary shared by discovery, health, balancing
// and the data path: an Endpoint is an address a source of truth reports, a
// Backend is an Endpoint with the live state every configuration that uses it
// shares, and a Set is the immutable list a balancing policy picks from.
// It does no I/O.
package backend

import (
	"sync"
	"sync/atomic"
	"time"
)

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

// Backend is an immutable Endpoint plus a pointer to live state. When
// discovery changes an endpoint's weight or priority, WithEndpoint makes a
// new Backend that shares the old one's state, so connection counts and
// health carry over (the health Registry does this, keyed by service and
// address). Copying a Backend value copies the pointer, not the state.
//
// Make Backends with New or WithEndpoint: a Backend literal has no state and
// its methods panic.
//
// Health has two independent parts, and a backend is Healthy only when both
// agree: the verdict of the active checks (SetHealthy), and passive ejection
// after failed connections (ReportFailure / ReportSuccess).
type Backend struct {
	Endpoint
	st *state
}

// state is what every Backend for one (service, address) shares. The fields
// read by Healthy on every Pick are atomics; the passive-ejection writers,
// which run only when a dial fails or after one did, take mu so that the
// failure streak and the ejection deadline change together.
type state struct {
	active    atomic.Int64
	checkDown atomic.Bool // the active checks said down; false until one does
	// ejectedUntil is the unix-nano time passive ejection ends; 0 when the
	// backend is not ejected, so Healthy needs no clock in the common case.
	ejectedUntil atomic.Int64
	backoff      atomic.Pointer[Backoff]

	mu       sync.Mutex // serialises ReportFailure and ReportSuccess
	failures atomic.Int64

	// Totals for metrics, since the state was created.
	connections atomic.Int64 // dials that connected
	dialErrors  atomic.Int64 // dials that failed
	ejections   atomic.Int64 // passive ejections begun
}

// Backoff is how long passive ejection lasts: Base after the first failure
// of a streak, doubling with each further one, never more than Max.
type Backoff struct {
	// Base is the first ejection; 0 means 1s.
	Base time.Duration
	// Max caps the doubling; 0 means 30s. A Max below Base is read as Base.
	Max time.Duration
}

// DefaultBackoff is the ejection back-off of a Backend nobody configured.
var DefaultBackoff = Backoff{Base: time.Second, Max: 30 * time.Second}

func (b Backoff) base() time.Duration {
	if b.Base <= 0 {
		return DefaultBackoff.Base
	}
	return b.Base
}

func (b Backoff) max() time.Duration {
	m := b.Max
	if m <= 0 {
		m = DefaultBackoff.Max
	}
	return max(m, b.base())
}

// For is the ejection after the n-th consecutive failure (n ≥ 1).
func (b Backoff) For(n int64) time.Duration {
	d, limit := b.base(), b.max()
	for i := int64(1); i < n && d < limit; i++ {
		if d > limit/2 {
			return limit
		}
		d *= 2
	}
	return min(d, limit)
}

// New returns a Backend for e with fresh state: healthy, no connections, and
// the default ejection back-off.
func New(e Endpoint) *Backend {
	st := &state{}
	st.backoff.Store(&DefaultBackoff)
	return &Backend{Endpoint: e, st: st}
}

// WithEndpoint returns a Backend for e that shares b's live state. It is how
// a weight or priority change from discovery keeps the connection count and
// the health of the address.
func (b *Backend) WithEndpoint(e Endpoint) *Backend { return &Backend{Endpoint: e, st: b.st} }

// SharesState reports whether b and o count the same connections and health.
func (b *Backend) SharesState(o *Backend) bool { return o != nil && b.st == o.st }

// Healthy reports whether the backend may receive new connections: the
// active checks have not marked it down and it is not passively ejected.
// It is on the hot path of every Pick: two atomic loads, and a clock read
// only while an ejection is pending.
func (b *Backend) Healthy() bool {
	st := b.st
	if st.checkDown.Load() || st.ejectedUntil.Load() != 0 {
		return st.healthySlow()
	}
	return true
}

// healthySlow is Healthy when the backend is down or ejected, kept out of
// line so that Healthy itself inlines into the policies' loops.
func (st *state) healthySlow() bool {
	if st.checkDown.Load() {
		return false
	}
	until := st.ejectedUntil.Load()
	if until == 0 {
		return true
	}
	if time.Now().UnixNano() < until {
		return false
	}
	// The ejection is over: clear it so later calls skip the clock. The
	// failure streak stays, so the next failure ejects for twice as long
	// unless a success resets it first. CompareAndSwap leaves a newer
	// ejection written meanwhile alone.
	st.ejectedUntil.CompareAndSwap(until, 0)
	return true
}

// SetHealthy records the verdict of the active checks.
func (b *Backend) SetHealthy(ok bool) { b.st.checkDown.Store(!ok) }

// CheckHealthy is the verdict of the active checks alone, ignoring passive
// ejection.
func (b *Backend) CheckHealthy() bool { return !b.st.checkDown.Load() }

// SetBackoff sets how long ReportFailure ejects the backend from now on. The
// health Registry calls it with the service's configured back-off.
func (b *Backend) SetBackoff(bo Backoff) {
	if cur := b.st.backoff.Load(); cur == nil || *cur != bo {
		b.st.backoff.Store(&bo)
	}
}

// ReportFailure records a failed connection to the backend (a refused or
// timed-out dial) at now and ejects it for the back-off of the current
// failure streak. It returns how long the backend is ejected for, or 0 when
// it was already ejected: failures of dials that started before an ejection
// are one outage, not several, and must not push the back-off to its maximum
// at once.
func (b *Backend) ReportFailure(now time.Time) time.Duration {
	st := b.st
	st.mu.Lock()
	defer st.mu.Unlock()
	nowNs := now.UnixNano()
	if until := st.ejectedUntil.Load(); until != 0 && nowNs < until {
		return 0
	}
	n := st.failures.Add(1)
	st.ejections.Add(1)
	d := st.backoff.Load().For(n)
	st.ejectedUntil.Store(nowNs + int64(d))
	return d
}

// ReportSuccess records a connection that worked: the failure streak starts
// over, and a pending ejection ends. It costs two atomic loads when there
// was no failure, so the proxy can call it after every dial.
func (b *Backend) ReportSuccess() {
	st := b.st
	if st.failures.Load() == 0 && st.ejectedUntil.Load() == 0 {
		return
	}
	st.mu.Lock()
	st.failures.Store(0)
	st.ejectedUntil.Store(0)
	st.mu.Unlock()
}

// Ejection reports the passive state: when the current ejection ends (the
// zero Time when the backend is not ejected at now) and the length of the
// failure streak.
func (b *Backend) Ejection(now time.Time) (until time.Time, failures int64) {
	failures = b.st.failures.Load()
	if u := b.st.ejectedUntil.Load(); u != 0 && now.UnixNano() < u {
		until = time.Unix(0, u)
	}
	return until, failures
}

// Active is the number of proxied connections open to the backend.
func (b *Backend) Active() int64 { return b.st.active.Load() }

// Acquire counts a connection opened to the backend; Release counts it closed.
func (b *Backend) Acquire() { b.st.active.Add(1) }

// Release counts a connection to the backend closed.
func (b *Backend) Release() { b.st.active.Add(-1) }

// CountDial counts the outcome of one dial to the backend, for metrics;
// passive health is ReportFailure's business, not this.
func (b *Backend) CountDial(ok bool) {
	if ok {
		b.st.connections.Add(1)
	} else {
		b.st.dialErrors.Add(1)
	}
}

// Totals are a backend's counters since its state was created (metrics).
type Totals struct {
	Connections int64 // dials that connected
	DialErrors  int64 // dials that failed
	Ejections   int64 // passive ejections begun
}

// Totals returns the backend's counters.
func (b *Backend) Totals() Totals {
	return Totals{Connections: b.st.connections.Load(), DialErrors: b.st.dialErrors.Load(), Ejections: b.st.ejections.Load()}
}

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
