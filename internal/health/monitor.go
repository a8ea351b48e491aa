package health

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/attache/attache/internal/backend"
)

// Spec is how one service's backends are checked. Zero fields take the
// defaults named below, so the zero Spec is usable.
type Spec struct {
	// Interval is the pause between the end of one probe of a backend and
	// the start of the next; 0 means 5s.
	Interval time.Duration
	// Timeout bounds one probe; 0 means 2s, or Interval when that is
	// shorter.
	Timeout time.Duration
	// Rise is how many consecutive passed probes bring a down backend back;
	// 0 means 2.
	Rise int
	// Fall is how many consecutive failed probes take a healthy backend
	// down; 0 means 3.
	Fall int
}

func (s Spec) interval() time.Duration {
	if s.Interval <= 0 {
		return 5 * time.Second
	}
	return s.Interval
}

func (s Spec) timeout() time.Duration {
	if s.Timeout <= 0 {
		return min(2*time.Second, s.interval())
	}
	return s.Timeout
}

func (s Spec) rise() int { return cmp.Or(max(s.Rise, 0), 2) }
func (s Spec) fall() int { return cmp.Or(max(s.Fall, 0), 3) }

// Status is what a Monitor knows about one backend, for the admin API.
type Status struct {
	Addr string `json:"addr"`
	// Healthy is the verdict of the active checks.
	Healthy bool `json:"healthy"`
	// LastError is why the last probe failed; empty when it passed or none
	// ran yet.
	LastError string `json:"last_error,omitempty"`
	// LastCheck is when the last probe ended; zero before the first.
	LastCheck time.Time `json:"last_check"`
	// Streak counts consecutive results like the last one: positive for
	// passes, negative for failures (Tracker.Streak).
	Streak int `json:"streak"`
	// EjectedUntil is when passive ejection ends; zero when not ejected.
	EjectedUntil time.Time `json:"ejected_until"`
	// PassiveFailures is the streak of failed connections reported by the
	// data path.
	PassiveFailures int64 `json:"passive_failures"`
	// Active is the number of proxied connections open to the backend.
	Active int64 `json:"active"`
}

// Monitor runs the active checks of one service: one probe loop per backend
// address, each with at most one probe in flight, started at a random point
// of the first interval so that the probes of many backends do not fire
// together. Verdict changes are written to the Backend (SetHealthy), so the
// balancing policies see them on their next Pick.
//
// Run owns every goroutine; Update may be called before, during and after
// Run, from any goroutine.
type Monitor struct {
	// OnChange, when set, is called from the backend's probe loop each time
	// the verdict for addr changes (the daemon uses it to close connections
	// to a failed backend). It delays that backend's next probe while it
	// runs, so it should not block. Set it before Run.
	OnChange func(addr string, healthy bool)

	service string
	spec    Spec
	checker Checker
	log     *slog.Logger

	mu      sync.Mutex
	ctx     context.Context // Run's, while it runs
	ran     bool
	stopped bool
	probes  map[string]*probe
	// retired are probe loops told to stop whose goroutine may not have
	// returned yet; a loop started again for the same address waits for
	// the old one, to keep one probe in flight per backend even then.
	retired map[string]*probe
	wg      sync.WaitGroup
}

// probe is one address's loop. Its tracker belongs to the loop goroutine;
// status is the copy Status reads.
type probe struct {
	addr    string
	backend atomic.Pointer[backend.Backend]
	kick    chan struct{}
	cancel  context.CancelFunc // nil until the loop starts
	done    chan struct{}      // closed when the loop returns
	prev    <-chan struct{}    // the done of an earlier loop for addr, or nil

	mu     sync.Mutex
	status Status
}

// NewMonitor returns a Monitor for service that probes with checker. A nil
// logger discards.
func NewMonitor(service string, spec Spec, checker Checker, logger *slog.Logger) *Monitor {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Monitor{
		service: service,
		spec:    spec,
		checker: checker,
		log:     logger.With("service", service),
		probes:  map[string]*probe{},
		retired: map[string]*probe{},
	}
}

// Update makes the Monitor probe exactly the backends of set: it starts a
// loop for each new address and stops the loops of addresses that left.
// Loops of addresses that stay keep running with their streaks; they switch
// to the Backend value in set, so a weight change from discovery is seen.
func (m *Monitor) Update(set *backend.Set) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopped {
		return
	}
	for addr, p := range m.retired {
		select {
		case <-p.done:
			delete(m.retired, addr)
		default:
		}
	}
	keep := make(map[string]bool, set.Len())
	for i := range set.Len() {
		b := set.At(i)
		if keep[b.Addr] {
			continue
		}
		keep[b.Addr] = true
		if p, ok := m.probes[b.Addr]; ok && p.backend.Load().SharesState(b) {
			p.backend.Store(b)
			continue
		} else if ok {
			// Same address, different state (forgotten and resolved
			// again): start over from the new state's verdict.
			m.retire(p)
		}
		p := &probe{addr: b.Addr, kick: make(chan struct{}, 1), done: make(chan struct{})}
		p.backend.Store(b)
		p.status = Status{Addr: b.Addr, Healthy: b.CheckHealthy()}
		if old, ok := m.retired[b.Addr]; ok {
			p.prev = old.done
			delete(m.retired, b.Addr)
		}
		m.probes[b.Addr] = p
		if m.ctx != nil {
			m.start(p)
		}
	}
	for addr, p := range m.probes {
		if !keep[addr] {
			m.retire(p)
		}
	}
}

// retire stops p's loop; m.mu must be held.
func (m *Monitor) retire(p *probe) {
	delete(m.probes, p.addr)
	if p.cancel == nil {
		return // never started
	}
	p.cancel()
	m.retired[p.addr] = p
}

// start launches p's loop under Run's context; m.mu must be held.
func (m *Monitor) start(p *probe) {
	ctx, cancel := context.WithCancel(m.ctx)
	p.cancel = cancel
	m.wg.Go(func() { m.probeLoop(ctx, p) })
}

// CheckNow asks for an immediate probe of addr, for example after the data
// path failed to connect to it (a passive failure). Requests coalesce: while
// one is pending, more are dropped. It never blocks and ignores unknown
// addresses.
func (m *Monitor) CheckNow(addr string) {
	m.mu.Lock()
	p := m.probes[addr]
	m.mu.Unlock()
	if p == nil {
		return
	}
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// Run probes until ctx is done, then stops every loop and waits for them.
// It returns an error only if called twice.
func (m *Monitor) Run(ctx context.Context) error {
	m.mu.Lock()
	if m.ran {
		m.mu.Unlock()
		return fmt.Errorf("health monitor for %q: Run called twice", m.service)
	}
	m.ran = true
	m.ctx = ctx
	for _, p := range m.probes {
		m.start(p)
	}
	m.mu.Unlock()

	<-ctx.Done()

	m.mu.Lock()
	m.stopped = true
	m.ctx = nil
	m.mu.Unlock()
	m.wg.Wait()
	return nil
}

// Status returns what the Monitor knows about each backend, sorted by
// address.
func (m *Monitor) Status() []Status {
	m.mu.Lock()
	probes := make([]*probe, 0, len(m.probes))
	for _, p := range m.probes {
		probes = append(probes, p)
	}
	m.mu.Unlock()
	now := time.Now()
	out := make([]Status, 0, len(probes))
	for _, p := range probes {
		p.mu.Lock()
		st := p.status
		p.mu.Unlock()
		b := p.backend.Load()
		st.EjectedUntil, st.PassiveFailures = b.Ejection(now)
		st.Active = b.Active()
		out = append(out, st)
	}
	slices.SortFunc(out, func(a, b Status) int { return cmp.Compare(a.Addr, b.Addr) })
	return out
}

// probeLoop probes p's backend until ctx is done. Probes run one after the
// other, Interval apart from the end of one to the start of the next, so a
// slow backend is never probed twice at once and probes never pile up.
func (m *Monitor) probeLoop(ctx context.Context, p *probe) {
	defer close(p.done)
	if p.prev != nil {
		select {
		case <-p.prev:
		case <-ctx.Done():
			return
		}
	}
	tr := NewTracker(m.spec.rise(), m.spec.fall(), p.backend.Load().CheckHealthy())
	interval := m.spec.interval()
	timer := time.NewTimer(rand.N(interval))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-p.kick:
		}
		m.probeOnce(ctx, p, &tr)
		timer.Reset(interval)
	}
}

// probeOnce runs one probe and records its result. A probe cut short
// because the loop is stopping records nothing: that is not the backend's
// fault.
func (m *Monitor) probeOnce(ctx context.Context, p *probe, tr *Tracker) {
	defer func() {
		if r := recover(); r != nil {
			m.log.Error("health probe panicked", "addr", p.addr, "panic", r, "stack", string(debug.Stack()))
		}
	}()
	cctx, cancel := context.WithTimeout(ctx, m.spec.timeout())
	err := m.checker.Check(cctx, p.addr)
	cancel()
	if ctx.Err() != nil {
		return
	}
	changed, healthy := tr.Record(err == nil)
	b := p.backend.Load()
	if b.CheckHealthy() != healthy {
		b.SetHealthy(healthy)
	}
	p.mu.Lock()
	p.status.Healthy = healthy
	p.status.LastCheck = time.Now()
	p.status.Streak = tr.Streak()
	p.status.LastError = ""
	if err != nil {
		p.status.LastError = err.Error()
	}
	p.mu.Unlock()

	switch {
	case changed && healthy:
		m.log.Info("backend passed its health checks, sending it traffic again", "addr", p.addr, "passes", tr.Streak())
	case changed:
		m.log.Warn("backend failed its health checks, taking it out of rotation", "addr", p.addr, "error", err, "failures", -tr.Streak())
	case err != nil:
		m.log.Debug("health check failed", "addr", p.addr, "error", err, "failures", -tr.Streak())
	}
	if changed && m.OnChange != nil {
		m.OnChange(p.addr, healthy)
	}
}
