package torture

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// profile is how hard a run pushes.
type profile struct {
	conns              int           // connections per wave, all at once
	sizes              sizes         // payload sizes
	pauseMin, pauseMax time.Duration // a stopping receiver's stops
	deadline           time.Duration // one connection's bound
	duration           time.Duration // waves go on this long; 0: one wave
}

func profileFromFlags() profile {
	p := profile{
		conns:    *connsFlag,
		sizes:    sizes{medium: 1 << 20, large: 6 << 20},
		pauseMin: time.Second, pauseMax: 2 * time.Second,
		deadline: *deadlineFlag,
	}
	if *durationFlag > 0 {
		p.sizes = sizes{medium: 2 << 20, large: 32 << 20}
		p.pauseMin, p.pauseMax = time.Second, 5*time.Second
		p.duration = *durationFlag
	}
	return p
}

// counters are a run's (or a topology's) figures.
type counters struct {
	transfers   atomic.Int64 // connections that did all their plan said
	failed      atomic.Int64 // connections that did not
	bytes       atomic.Int64 // payload bytes received and checked, both ways
	stalls      atomic.Int64 // connections still not done at their deadline
	corruptions atomic.Int64 // connections that received a wrong byte
	truncations atomic.Int64 // resets delivered as a clean EOF after lost bytes
	afterDump   atomic.Int64 // failures of connections whose proxies were SIGQUIT for a stall's diagnostics
	overtaken   atomic.Int64 // client resets that overtook the header (topology.resetOvertakes), matched by a backend reset
	dropped     atomic.Int64 // client resets after which no backend connection came at all (topology.resetOvertakes)
}

func (c *counters) String() string {
	s := fmt.Sprintf("transfers=%d failed=%d bytes=%d stalls=%d corruptions=%d truncations=%d",
		c.transfers.Load(), c.failed.Load(), c.bytes.Load(), c.stalls.Load(), c.corruptions.Load(), c.truncations.Load())
	if n := c.afterDump.Load(); n > 0 {
		s += fmt.Sprintf(" after_dump=%d", n)
	}
	if n := c.overtaken.Load(); n > 0 {
		s += fmt.Sprintf(" overtaken=%d", n)
	}
	if n := c.dropped.Load(); n > 0 {
		s += fmt.Sprintf(" dropped=%d", n)
	}
	return s
}

// runEnv is one run: the binary, the backends, the sessions and figures.
type runEnv struct {
	t        *testing.T
	bin      string
	dir      string
	seed     uint64
	prof     profile
	pkiOnce  sync.Once
	pki      string
	sessions sync.Map // plan id → *session
	total    counters
	reported atomic.Int64 // failures written out in full
	// openNow and openPeak count the client connections open.
	openNow, openPeak atomic.Int64
	// diagnosed counts the stalls diagnosed (diag_test.go).
	diagnosed atomic.Int64
	// backendPorts are the torture backends' TCP ports, which topologies
	// share: left out of ss filters.
	backendPorts []int
	stacks       sync.Once // the test's goroutine stacks, at the first stall
	// orphanResets counts backend connections reset before their header
	// came, for topologies where a reset may overtake it.
	orphanResets atomic.Int64
}

// takeOrphanReset takes one backend connection reset before its header,
// if there is one.
func (env *runEnv) takeOrphanReset() bool {
	for {
		n := env.orphanResets.Load()
		if n == 0 {
			return false
		}
		if env.orphanResets.CompareAndSwap(n, n-1) {
			return true
		}
	}
}

// TestTorture drives hundreds of connections at once, each with a random
// plan, through every topology, and checks every byte. See the package
// doc for the dimensions, -torture.* flags for the profiles.
func TestTorture(t *testing.T) {
	seed := *seedFlag
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	prof := profileFromFlags()
	t.Logf("seed %d (rerun with -torture.seed=%d); binary %s", seed, seed, attacheBin)
	env := &runEnv{t: t, bin: attacheBin, dir: t.TempDir(), seed: seed, prof: prof}
	topos := env.topologies()
	if len(topos) == 0 {
		t.Fatalf("no topology matches -torture.only=%q", *onlyFlag)
	}
	start := time.Now()
	rng := rand.New(rand.NewPCG(seed, 1))
	id := uint64(0)
	for wave := 1; ; wave++ {
		// A topology whose processes were SIGQUIT for a stall's
		// diagnostics is out of the later waves; the others go on, so a
		// long run reports every kind of failure it meets.
		var live []*topology
		for _, topo := range topos {
			if !topo.dumped.Load() {
				live = append(live, topo)
			}
		}
		if len(live) == 0 {
			t.Logf("every topology stalled")
			break
		}
		n := env.wave(rng, live, &id)
		t.Logf("wave %d: %d connections; so far %v in %v", wave, n, &env.total, time.Since(start).Round(time.Second))
		if prof.duration == 0 || time.Since(start) >= prof.duration {
			break
		}
		if d, ok := t.Deadline(); ok && time.Until(d) < 2*prof.deadline {
			t.Logf("stopping before the test's -timeout")
			break
		}
	}
	for _, topo := range topos {
		t.Logf("  %-42s %v", topo.name, &topo.stats)
		for _, p := range topo.procs {
			switch {
			case topo.dumped.Load():
			case p.exited():
				t.Errorf("attache (%s) exited during the run:\n%s", p.name, p.stderr.String())
			case topo.stats.failed.Load() > 0:
				t.Logf("attache (%s) log, last lines:\n%s", p.name, tail(p.stderr.String(), 40))
			}
		}
	}
	t.Logf("torture figures: seed=%d transfers=%d bytes=%d duration=%v stalls=%d corruptions=%d truncations=%d failed=%d peak_open=%d",
		seed, env.total.transfers.Load(), env.total.bytes.Load(), time.Since(start).Round(time.Second),
		env.total.stalls.Load(), env.total.corruptions.Load(), env.total.truncations.Load(), env.total.failed.Load(),
		env.openPeak.Load())
	if t.Failed() {
		t.Logf("seed %d: rerun with -torture.seed=%d", seed, seed)
	}
}

// topologies starts every path the run drives (those -torture.only
// keeps): each kind on both engines.
func (env *runEnv) topologies() []*topology {
	b := env.startBackends()
	env.backendPorts = []int{portOf(b.tcp), portOf(b.slow)}
	var only *regexp.Regexp
	if *onlyFlag != "" {
		only = regexp.MustCompile(*onlyFlag)
	}
	L, G := hop{engine: loops}, hop{engine: goroutines}
	Ls, Gs := hop{engine: loops, smallPipe: true}, hop{engine: goroutines, smallPipe: true}
	makers := []struct {
		name string
		make func(name string) *topology
	}{
		{"direct", func(n string) *topology { return &topology{name: n, env: env, entry: b.tcp} }},
		{"loops", func(n string) *topology { return env.chain(n, b.tcp, L) }},
		{"goroutines", func(n string) *topology { return env.chain(n, b.tcp, G) }},
		{"loops,loops", func(n string) *topology { return env.chain(n, b.tcp, L, L) }},
		{"loops,goroutines", func(n string) *topology { return env.chain(n, b.tcp, L, G) }},
		{"goroutines,loops", func(n string) *topology { return env.chain(n, b.tcp, G, L) }},
		{"loops,goroutines,loops", func(n string) *topology { return env.chain(n, b.tcp, L, G, L) }},
		{"goroutines,loops,goroutines", func(n string) *topology { return env.chain(n, b.tcp, G, L, G) }},
		{"loops-pipe4k,loops-pipe4k", func(n string) *topology { return env.chain(n, b.tcp, Ls, Ls) }},
		{"goroutines-pipe4k", func(n string) *topology { return env.chain(n, b.tcp, Gs) }},
		{"link-loops", func(n string) *topology { return env.link(n, b.tcp, L, "multiplexed") }},
		{"link-goroutines", func(n string) *topology { return env.link(n, b.tcp, G, "multiplexed") }},
		{"link-per-connection", func(n string) *topology { return env.link(n, b.tcp, L, "per_connection") }},
		{"proxy-protocol-loops", func(n string) *topology { return env.proxyProtocol(n, b.tcp, L) }},
		{"proxy-protocol-goroutines", func(n string) *topology { return env.proxyProtocol(n, b.tcp, G) }},
		// A Unix stream has no reset: a client's reset reaches a Unix
		// backend as an EOF, the best attache can do.
		{"unix-backend-loops", func(n string) *topology { return resetsAsFIN(env.chain(n, b.unix, L)) }},
		{"unix-backend-goroutines", func(n string) *topology { return resetsAsFIN(env.chain(n, b.unix, G)) }},
		{"slow-accept-loops", func(n string) *topology { return env.chain(n, b.slow, L) }},
		{"slow-accept-goroutines", func(n string) *topology { return env.chain(n, b.slow, G) }},
		{"haproxy-splice+loops", func(n string) *topology { return env.haproxyFront(env.chain(n, b.tcp, L)) }},
		{"haproxy-splice+goroutines", func(n string) *topology { return env.haproxyFront(env.chain(n, b.tcp, G)) }},
		{"socat+loops", func(n string) *topology { return env.socatFront(env.chain(n, b.tcp, L)) }},
		{"socat+goroutines", func(n string) *topology { return env.socatFront(env.chain(n, b.tcp, G)) }},
	}
	var topos []*topology
	for _, m := range makers {
		if only == nil || only.MatchString(m.name) {
			topos = append(topos, m.make(m.name))
		}
	}
	return topos
}

// wave runs the plans of one wave, all at once, and returns how many. The
// first plans of every wave cover each topology with each sender (a large
// transfer both ways, held open) and each shape; the rest are random.
func (env *runEnv) wave(rng *rand.Rand, topos []*topology, id *uint64) int {
	type job struct {
		topo *topology
		plan *plan
	}
	var jobs []job
	next := func() *plan {
		*id++
		return randomPlan(rng, env.seed, *id, env.prof.sizes)
	}
	for _, topo := range topos {
		for s := range numSenders {
			p := next()
			p.shape, p.upSend, p.downSend, p.rounds = shapeBoth, s, s, 0
			p.upRecv, p.downRecv = receiver(int(s)%int(numReceivers)), receiver(int(s+1)%int(numReceivers))
			// Past the 1 MiB splice pipe each way.
			p.up, p.down = 2<<20+rng.Int64N(2<<20), 2<<20+rng.Int64N(2<<20)
			p.fitWriteMax()
			jobs = append(jobs, job{topo, p})
		}
		for sh := range numShapes {
			p := next()
			p.shape = sh
			p.setSizes(rng, env.prof.sizes)
			jobs = append(jobs, job{topo, p})
		}
	}
	for len(jobs) < env.prof.conns {
		topo := topos[rng.IntN(len(topos))]
		jobs = append(jobs, job{topo, next()})
	}
	g := newGate(len(jobs))
	var wg sync.WaitGroup
	for _, j := range jobs {
		wg.Go(func() { env.runConn(j.topo, j.plan, g) })
	}
	wg.Wait()
	return len(jobs)
}

// gate holds every connection of a wave, once connected and its headers
// sent, until all of them are: so the whole wave is open at once.
type gate struct {
	left atomic.Int64
	open chan struct{}
}

func newGate(n int) *gate {
	g := &gate{open: make(chan struct{})}
	g.left.Store(int64(n))
	return g
}

// arrive counts one connection in (or out, when it failed early); the
// last one opens the gate.
func (g *gate) arrive() {
	if g.left.Add(-1) == 0 {
		close(g.open)
	}
}

// dropTicks is how many 50 ms ticks a reset client's session waits, once
// its client end is done, for a backend connection or a backend reset (an
// orphan) before it counts as dropped before the backend. It only bounds
// how long a late backend connection is still checked against its
// session; on a slow machine more are let through unchecked, never failed.
const dropTicks = 20

// session finds a connection's session by its plan's id. A session
// that ended is nil with known true (its client gave up before the
// backend end began).
func (env *runEnv) session(id uint64) (s *session, known bool) {
	v, ok := env.sessions.Load(id)
	if !ok {
		return nil, false
	}
	return v.(*session), true
}

// runConn runs one connection: the client end here, the backend end in
// the backend's handler, a deadline over both.
func (env *runEnv) runConn(topo *topology, p *plan, g *gate) {
	s := newSession(context.Background(), p, topo)
	env.sessions.Store(p.id, s)
	defer env.sessions.Store(p.id, (*session)(nil))
	defer s.stop()
	stallDone := make(chan struct{})
	timer := time.AfterFunc(env.prof.deadline, func() {
		defer close(stallDone)
		env.stall(s)
	})
	clientErr := env.client(s, g)
	if clientErr != nil && !s.backendStarted.Load() {
		// Nothing reached the backend, and nothing will: the client's
		// error says what happened.
		s.stop()
	}
	var (
		backendErr error
		overtaken  <-chan time.Time
		idleTicks  int // overtaken ticks with no backend and no orphan reset
	)
	if clientErr == nil && s.plan.shape == shapeResetClient && topo.resetOvertakes {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		overtaken = tick.C
	}
wait:
	for {
		select {
		case backendErr = <-s.backendErr:
			break wait
		case <-overtaken:
			if s.backendStarted.Load() {
				continue
			}
			if !env.takeOrphanReset() {
				if idleTicks++; idleTicks < dropTicks {
					continue
				}
				// No backend connection came: the proxy read
				// nothing before the reset (a kernel drops a
				// socket's unread bytes when a reset arrives),
				// so it dialled nothing. A backend connection
				// that does come later finds its session gone
				// (serveBackend); one that is held open without
				// a byte is reported there.
				s.stop()
				topo.stats.dropped.Add(1)
				env.total.dropped.Add(1)
				break wait
			}
			// The client's reset overtook its header (see
			// topology.resetOvertakes); a backend connection ended
			// that way.
			s.stop()
			topo.stats.overtaken.Add(1)
			env.total.overtaken.Add(1)
			break wait
		case <-s.ctx.Done():
			backendErr = errors.New("the backend end never started")
			if s.backendStarted.Load() {
				// Given up: its sockets expired, so it is about to return.
				select {
				case backendErr = <-s.backendErr:
				case <-time.After(10 * time.Second):
					backendErr = errors.New("the backend end did not return after its sockets expired")
				}
			}
			break wait
		}
	}
	if !timer.Stop() {
		<-stallDone
	}
	env.account(s, clientErr, backendErr)
}

// client is the client end: dial, headers, the plan's part.
func (env *runEnv) client(s *session, g *gate) error {
	arrived := false
	defer func() {
		if !arrived {
			g.arrive()
		}
	}()
	c, err := net.DialTimeout("tcp", s.topo.entry, env.prof.deadline)
	if err != nil {
		return fmt.Errorf("client: dial %s: %w", s.topo.entry, err)
	}
	defer c.Close()
	tc := c.(*net.TCPConn)
	s.attach(tc)
	defer env.open(-1)
	env.open(1)
	hdr := s.plan.marshal()
	if s.topo.proxyHeader {
		hdr = append(proxyHeader(tc, s.plan.id%2 == 0), hdr...)
	}
	if _, err := tc.Write(hdr); err != nil {
		return fmt.Errorf("client: writing the header: %w", err)
	}
	arrived = true
	g.arrive()
	if err := s.wait(g.open, "the rest of the wave to connect"); err != nil {
		return fmt.Errorf("client: %w", err)
	}
	if err := s.run(clientEnd, tc); err != nil {
		return fmt.Errorf("client: %w", err)
	}
	return nil
}

// proxyHeader is a PROXY protocol header (v1 text or v2 binary) naming
// c's own addresses.
func proxyHeader(c *net.TCPConn, v2 bool) []byte {
	src, dst := c.LocalAddr().(*net.TCPAddr), c.RemoteAddr().(*net.TCPAddr)
	if !v2 {
		return fmt.Appendf(nil, "PROXY TCP4 %s %s %d %d\r\n", src.IP, dst.IP, src.Port, dst.Port)
	}
	h := []byte("\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c")
	h = append(h, src.IP.To4()...)
	h = append(h, dst.IP.To4()...)
	return append(h, byte(src.Port>>8), byte(src.Port), byte(dst.Port>>8), byte(dst.Port))
}

// account adds a finished connection to the figures and reports a
// failure.
func (env *runEnv) account(s *session, clientErr, backendErr error) {
	var got int64
	s.mu.Lock()
	for _, pr := range s.progress {
		if pr.in != nil {
			got += pr.in.got.Load()
		}
	}
	s.mu.Unlock()
	for _, c := range []*counters{&env.total, &s.topo.stats} {
		c.bytes.Add(got)
	}
	err := errors.Join(clientErr, backendErr)
	if err == nil {
		env.total.transfers.Add(1)
		s.topo.stats.transfers.Add(1)
		return
	}
	var bad *corruption
	kind := "error"
	switch {
	case s.stalled.Load():
		kind = "stall"
	case s.topo.dumped.Load():
		kind = "after-dump"
	case errors.As(err, &bad):
		kind = "corruption"
	case errors.Is(err, errTruncated):
		kind = "truncation"
	}
	for _, c := range []*counters{&env.total, &s.topo.stats} {
		c.failed.Add(1)
		switch kind {
		case "stall":
			c.stalls.Add(1)
		case "corruption":
			c.corruptions.Add(1)
		case "truncation":
			c.truncations.Add(1)
		case "after-dump":
			c.afterDump.Add(1)
		}
	}
	if kind == "after-dump" {
		return // its proxies were killed for a stall's diagnostics, reported already
	}
	if env.reported.Add(1) > 30 {
		env.t.Fail() // the figures at the end count the rest
		return
	}
	env.t.Errorf("%s (seed %d) on %s, %v\n  %s\n  %s", kind, env.seed, s.topo.name, s.plan, s.progressLine(),
		strings.ReplaceAll(err.Error(), "\n", "\n  "))
}

// progressLine says how far each end got.
func (s *session) progressLine() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b strings.Builder
	for e, pr := range s.progress {
		if pr.out == nil {
			fmt.Fprintf(&b, "%s: never started; ", end(e))
			continue
		}
		fmt.Fprintf(&b, "%s: sent %d of %d, received %d of %d; ", end(e),
			pr.out.sent.Load(), pr.out.total, pr.in.got.Load(), pr.in.v.want)
	}
	fmt.Fprintf(&b, "local ports %v", s.ports)
	return b.String()
}

// open adds d to the open connections and keeps the peak.
func (env *runEnv) open(d int64) {
	n := env.openNow.Add(d)
	for {
		peak := env.openPeak.Load()
		if n <= peak || env.openPeak.CompareAndSwap(peak, n) {
			return
		}
	}
}

// pause draws how long a stopping receiver stops.
func (env *runEnv) pause(rng *rand.Rand) time.Duration {
	return env.prof.pauseMin + time.Duration(rng.Int64N(int64(env.prof.pauseMax-env.prof.pauseMin)))
}

// protocolError reports a backend connection that is no session's.
func (env *runEnv) protocolError(err error) {
	env.t.Errorf("seed %d: %v", env.seed, err)
}

// tail returns the last n lines of text.
func tail(text string, n int) string {
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("... %d lines before", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}
