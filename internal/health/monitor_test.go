package health

import (
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/attache/attache/internal/backend"
	"github.com/attache/attache/internal/testenv"
)

func waitFor(t *testing.T, what string, cond func() bool) { t.Helper(); testenv.WaitFor(t, what, cond) }

// run starts m.Run and makes the test's end stop it and wait for it, so no
// probe goroutine outlives the test.
func run(t *testing.T, m *Monitor) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

func statusOf(m *Monitor, addr string) (Status, bool) {
	for _, s := range m.Status() {
		if s.Addr == addr {
			return s, true
		}
	}
	return Status{}, false
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// counter is a loopback server that counts the connections it accepted and
// answers each with handle; its listener can be closed and reopened on the
// same port.
type counter struct {
	t        *testing.T
	addr     string
	accepted atomic.Int64
	handle   func(net.Conn)

	mu sync.Mutex
	ln net.Listener
	wg sync.WaitGroup
}

func newCounter(t *testing.T, handle func(net.Conn)) *counter {
	c := &counter{t: t, addr: "127.0.0.1:0", handle: handle}
	c.open()
	t.Cleanup(c.close)
	return c
}

func (c *counter) open() {
	c.t.Helper()
	var ln net.Listener
	waitFor(c.t, "listening again on "+c.addr, func() bool {
		var err error
		ln, err = net.Listen("tcp", c.addr)
		return err == nil
	})
	if c.addr != ln.Addr().String() {
		c.addr = ln.Addr().String() // first open: the port is now known
	}
	c.mu.Lock()
	c.ln = ln
	c.mu.Unlock()
	c.wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			c.accepted.Add(1)
			c.wg.Go(func() {
				defer conn.Close()
				c.handle(conn)
			})
		}
	})
}

// close stops listening and waits for the handlers (which end when the
// probes close their side).
func (c *counter) close() {
	c.mu.Lock()
	if c.ln != nil {
		c.ln.Close()
		c.ln = nil
	}
	c.mu.Unlock()
	c.wg.Wait()
}

type change struct {
	healthy bool
	streak  int
}

func TestMonitorFallAndRise(t *testing.T) {
	srv := newCounter(t, holdUntilClosed)
	addr := srv.addr
	reg := NewRegistry(backend.Backoff{})
	set := reg.Resolve("svc", eps(addr))
	b := set.At(0)

	m := NewMonitor("svc", Spec{Interval: 10 * time.Millisecond, Timeout: 5 * time.Second, Rise: 2, Fall: 3}, TCP{}, testLogger(t))
	changes := make(chan change, 10)
	m.OnChange = func(got string, healthy bool) {
		st, _ := statusOf(m, got)
		if got != addr || st.Healthy != healthy {
			t.Errorf("OnChange(%s, %v) with status %+v", got, healthy, st)
		}
		changes <- change{healthy, st.Streak}
	}
	m.Update(set)
	run(t, m)

	waitFor(t, "a first passed check", func() bool {
		st, _ := statusOf(m, srv.addr)
		return st.Streak >= 1
	})
	if !b.Healthy() {
		t.Fatal("backend down while its checks pass")
	}

	srv.close()
	select {
	case c := <-changes:
		if c.healthy || c.streak != -3 {
			t.Fatalf("after closing the listener: change %+v; want down after exactly 3 failures", c)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("backend never went down after its listener closed")
	}
	if b.Healthy() || b.CheckHealthy() {
		t.Fatal("verdict not written to the Backend")
	}
	if st, _ := statusOf(m, srv.addr); !strings.Contains(st.LastError, "connect") {
		t.Fatalf("last error %q; want the connect error", st.LastError)
	}

	srv.open()
	select {
	case c := <-changes:
		if !c.healthy || c.streak != 2 {
			t.Fatalf("after reopening: change %+v; want up after exactly 2 passes", c)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("backend never came back after its listener reopened")
	}
	if !b.Healthy() {
		t.Fatal("backend still down after passing its checks")
	}
	if st, _ := statusOf(m, srv.addr); st.LastError != "" || st.LastCheck.IsZero() {
		t.Fatalf("status after recovery %+v; want no error and a check time", st)
	}
}

func TestMonitorRedis(t *testing.T) {
	good := testenv.Redis(t)
	bad := newCounter(t, replyOnLine("-ERR this is not redis\r\n")).addr
	reg := NewRegistry(backend.Backoff{})
	set := reg.Resolve("redis", eps(good, bad))
	m := NewMonitor("redis", Spec{Interval: 10 * time.Millisecond, Timeout: 5 * time.Second, Rise: 1, Fall: 2}, ping, testLogger(t))
	m.Update(set)
	run(t, m)

	waitFor(t, "the impostor to fail its checks", func() bool { return !reg.Lookup("redis", bad).Healthy() })
	st, _ := statusOf(m, bad)
	if want := `expected "+PONG", got "-ERR this is not redis\r\n"`; !strings.Contains(st.LastError, want) {
		t.Fatalf("impostor's last error %q; want it to contain %s", st.LastError, want)
	}
	waitFor(t, "redis-server to pass 3 checks in a row", func() bool {
		st, _ := statusOf(m, good)
		return st.Streak >= 3
	})
	if st, _ := statusOf(m, good); !st.Healthy || st.LastError != "" || !reg.Lookup("redis", good).Healthy() {
		t.Fatalf("redis-server status %+v; want healthy", st)
	}
}

// A backend that holds the probe's connection must never see a second probe
// while the first is in flight, however short the interval and however many
// immediate checks are asked for.
func TestMonitorOneProbeInFlight(t *testing.T) {
	release := make(chan struct{})
	held := newCounter(t, func(c net.Conn) {
		select {
		case <-release:
		case <-t.Context().Done():
		}
		_, _ = io.WriteString(c, "+PONG\r\n")
		holdUntilClosed(c)
	})
	// A fast backend in the same Monitor shows the loops are turning.
	fast := newCounter(t, replyOnLine("+PONG\r\n"))

	reg := NewRegistry(backend.Backoff{})
	m := NewMonitor("svc", Spec{Interval: 10 * time.Millisecond, Timeout: time.Minute}, ping, testLogger(t))
	m.Update(reg.Resolve("svc", eps(held.addr, fast.addr)))
	run(t, m)

	waitFor(t, "the first probe of the held backend", func() bool { return held.accepted.Load() == 1 })
	waitFor(t, "20 probes of the fast backend", func() bool {
		m.CheckNow(held.addr)
		return fast.accepted.Load() >= 20
	})
	if n := held.accepted.Load(); n != 1 {
		t.Fatalf("held backend saw %d probes while the first was in flight; want 1", n)
	}

	close(release)
	waitFor(t, "the held backend's probes to resume", func() bool { return held.accepted.Load() >= 3 })
	if st, _ := statusOf(m, held.addr); !st.Healthy {
		t.Fatalf("held backend status %+v; want healthy", st)
	}
}

// blockingChecker ignores its context until released, like a badly written
// checker would, and records how many of its calls overlap.
type blockingChecker struct {
	release  chan struct{}
	calls    atomic.Int64
	inFlight atomic.Int64
	maxSeen  atomic.Int64
}

func (c *blockingChecker) Check(_ context.Context, _ string) error {
	c.calls.Add(1)
	n := c.inFlight.Add(1)
	defer c.inFlight.Add(-1)
	for {
		m := c.maxSeen.Load()
		if n <= m || c.maxSeen.CompareAndSwap(m, n) {
			break
		}
	}
	<-c.release
	return nil
}

// Removing an address and adding it back while its probe is stuck must not
// start a second probe beside the stuck one.
func TestMonitorReAddWaitsForOldProbe(t *testing.T) {
	c := &blockingChecker{release: make(chan struct{})}
	reg := NewRegistry(backend.Backoff{})
	m := NewMonitor("svc", Spec{Interval: 10 * time.Millisecond}, c, testLogger(t))
	with := reg.Resolve("svc", eps("stuck:1"))
	m.Update(with)
	run(t, m)
	t.Cleanup(func() { close(c.release) }) // runs before Run's cleanup waits

	waitFor(t, "the stuck probe", func() bool { return c.calls.Load() == 1 })
	m.Update(backend.NewSet())
	m.Update(with)
	m.CheckNow("stuck:1")

	// Other addresses keep being probed meanwhile, so the loops do turn.
	other := &blockingChecker{release: make(chan struct{})}
	close(other.release)
	m2 := NewMonitor("svc2", Spec{Interval: 10 * time.Millisecond}, other, nil)
	m2.Update(reg.Resolve("svc2", eps("x:1")))
	run(t, m2)
	waitFor(t, "10 probes elsewhere", func() bool { return other.calls.Load() >= 10 })
	if n, mx := c.calls.Load(), c.maxSeen.Load(); n != 1 || mx != 1 {
		t.Fatalf("stuck address: %d calls, %d at once; want 1, 1", n, mx)
	}
}

func TestMonitorUpdateKeepsLoops(t *testing.T) {
	a := newCounter(t, holdUntilClosed)
	b := newCounter(t, holdUntilClosed)
	c := newCounter(t, holdUntilClosed)
	// Dials are counted where they start: a server's accept count lags
	// behind the probe that connected.
	var (
		mu    sync.Mutex
		dials = map[string]int{}
	)
	dialed := func(addr string) int {
		mu.Lock()
		defer mu.Unlock()
		return dials[addr]
	}
	check := TCP{Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		mu.Lock()
		dials[addr]++
		mu.Unlock()
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}}
	reg := NewRegistry(backend.Backoff{})
	m := NewMonitor("svc", Spec{Interval: 10 * time.Millisecond, Rise: 1, Fall: 1}, check, testLogger(t))
	m.Update(reg.Resolve("svc", eps(a.addr, b.addr)))
	run(t, m)

	waitFor(t, "3 passes of a and b", func() bool {
		sa, _ := statusOf(m, a.addr)
		sb, _ := statusOf(m, b.addr)
		return sa.Streak >= 3 && sb.Streak >= 3
	})
	m.mu.Lock()
	pa, pb := m.probes[a.addr], m.probes[b.addr]
	m.mu.Unlock()
	before, _ := statusOf(m, a.addr)

	// a stays with a new weight, b leaves, c arrives.
	m.Update(reg.Resolve("svc", []backend.Endpoint{{Addr: a.addr, Weight: 4}, {Addr: c.addr}}))

	m.mu.Lock()
	same := m.probes[a.addr] == pa
	m.mu.Unlock()
	if !same {
		t.Fatal("the loop of an address that stayed was restarted")
	}
	if w := pa.backend.Load().Weight; w != 4 {
		t.Fatalf("loop of a still holds weight %d; want the new 4", w)
	}
	if after, _ := statusOf(m, a.addr); after.Streak < before.Streak {
		t.Fatalf("a's streak went from %d to %d across Update; want it kept", before.Streak, after.Streak)
	}
	if _, ok := statusOf(m, b.addr); ok {
		t.Fatal("b still reported after it left")
	}
	select {
	case <-pb.done:
	case <-time.After(15 * time.Second):
		t.Fatal("b's probe loop did not stop")
	}
	probedB := dialed(b.addr)
	waitFor(t, "c to pass and a to go on", func() bool {
		sa, _ := statusOf(m, a.addr)
		sc, _ := statusOf(m, c.addr)
		return sc.Streak >= 3 && sa.Streak >= before.Streak+5
	})
	if n := dialed(b.addr); n != probedB {
		t.Fatalf("b probed %d more times after its loop stopped", n-probedB)
	}
}

// The verdict lives in the Backend's shared state: a Monitor built again
// (as on a reload) starts from it instead of from "healthy".
func TestMonitorStartsFromKnownVerdict(t *testing.T) {
	srv := newCounter(t, holdUntilClosed)
	reg := NewRegistry(backend.Backoff{})
	set := reg.Resolve("svc", eps(srv.addr))
	set.At(0).SetHealthy(false) // what an earlier Monitor concluded

	m := NewMonitor("svc", Spec{Interval: 10 * time.Millisecond, Rise: 3, Fall: 1}, TCP{}, nil)
	if st, _ := statusOf(m, srv.addr); st.Addr != "" {
		t.Fatalf("status before Update: %+v", st)
	}
	changes := make(chan change, 10)
	m.OnChange = func(addr string, healthy bool) {
		st, _ := statusOf(m, addr)
		changes <- change{healthy, st.Streak}
	}
	m.Update(set)
	if st, _ := statusOf(m, srv.addr); st.Healthy {
		t.Fatal("status before the first probe ignores the known verdict")
	}
	run(t, m)
	select {
	case c := <-changes:
		if !c.healthy || c.streak != 3 {
			t.Fatalf("first change %+v; want up after exactly 3 passes (rise), not healthy from the start", c)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("backend never came up")
	}
	if !reg.Lookup("svc", srv.addr).Healthy() {
		t.Fatal("backend still down")
	}
}

func TestMonitorStatusShowsPassiveState(t *testing.T) {
	reg := NewRegistry(backend.Backoff{Base: time.Hour})
	set := reg.Resolve("svc", eps("a:1"))
	m := NewMonitor("svc", Spec{}, TCP{}, nil)
	m.Update(set)
	b := set.At(0)
	b.Acquire()
	now := time.Now()
	b.ReportFailure(now)
	st, ok := statusOf(m, "a:1")
	if !ok || st.Active != 1 || st.PassiveFailures != 1 || !st.EjectedUntil.Equal(time.Unix(0, now.Add(time.Hour).UnixNano())) {
		t.Fatalf("status %+v; want 1 active, 1 passive failure, ejected for an hour", st)
	}
	if !st.Healthy {
		t.Fatal("passive ejection reported as an active-check verdict")
	}
}

func TestMonitorLifecycle(t *testing.T) {
	srv := newCounter(t, holdUntilClosed)
	reg := NewRegistry(backend.Backoff{})
	m := NewMonitor("svc", Spec{Interval: 10 * time.Millisecond}, TCP{}, nil)
	m.Update(reg.Resolve("svc", eps(srv.addr))) // before Run: started by Run

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	waitFor(t, "probes started by Run", func() bool { return srv.accepted.Load() >= 2 })
	if err := m.Run(ctx); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Fatalf("second Run: %v; want an error", err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	m.mu.Lock()
	for addr, p := range m.probes {
		select {
		case <-p.done:
		default:
			t.Errorf("loop of %s still running after Run returned", addr)
		}
	}
	m.mu.Unlock()

	// After Run, Update changes nothing and starts nothing.
	m.Update(reg.Resolve("svc", eps(srv.addr, "other:1")))
	if st := m.Status(); len(st) != 1 || st[0].Addr != srv.addr {
		t.Fatalf("Update after Run changed the probes: %+v", st)
	}
}
