// Command runner compares attache with socat, HAProxy and a naive Go proxy on
// loopback. Every contender fronts the same backends (iperf3, redis-server);
// "direct" is the client talking to the backend with no proxy. The rounds
// interleave the contenders, each measurement gets a freshly started proxy,
// and the report gives medians over the rounds and their ratio to direct.
//
// Typical usage, from the repository root (bench/run.sh does this):
//
//	bench/out/runner -rounds 3 -out bench/out/results.md
//
// The contenders are the table in proxies.go and the measurements the table
// in metrics.go; adding a row to either is all a new one needs.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type config struct {
	rounds   int
	duration int // iperf3 -t, seconds
	requests int // redis GET requests per run
	connects int // connections per redis -k 0 run
	// connectCap bounds one -k 0 run (see redisConnect).
	connectCap time.Duration
	// quietWait is how long to wait, before each measurement, for other
	// processes to stop using the CPU.
	quietWait time.Duration
	idle      int // idle connections held
	only      []string
	metrics   []string
	policies  []string // balancing policies, for the balanced metrics
	quick     bool
	basePort  int

	attache, naive, idleconns string
	udpload                   string // bench/udpload: the UDP metrics' echo server and client
	out, logDir               string
}

func parseFlags(args []string) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("runner", flag.ContinueOnError)
	fs.IntVar(&c.rounds, "rounds", 3, "rounds; each round runs every metric on every proxy")
	fs.IntVar(&c.duration, "duration", 5, "iperf3 test length in `seconds`")
	fs.IntVar(&c.requests, "requests", 1_000_000, "redis-benchmark GET requests per run")
	fs.IntVar(&c.connects, "connects", 20_000, "redis-benchmark -k 0 requests (= new connections) per run")
	fs.DurationVar(&c.connectCap, "connect-cap", 15*time.Second, "longest one -k 0 run may take; a slower proxy's rate is taken from the backend's connection count")
	fs.DurationVar(&c.quietWait, "quiet-wait", 0, "before each measurement, wait up to this `long` for other processes to use under 10% of a CPU (0: don't wait)")
	fs.IntVar(&c.idle, "idle", 3000, "idle connections held for the memory metric")
	only := fs.String("only", "", "comma-separated proxies to run (direct is always run: ratios need it)")
	ms := fs.String("metrics", "", "comma-separated metrics to run (default all)")
	pols := fs.String("policies", "", "comma-separated balancing policies the balance metrics run (default all)")
	fs.BoolVar(&c.quick, "quick", false, "smoke test: 1 round, 2 s iperf3, fewer requests and connections (explicit flags win)")
	fs.IntVar(&c.basePort, "base-port", 26000, "first of the 127.0.0.1 ports used (backends, then 100 per proxy)")
	fs.StringVar(&c.attache, "attache", "bench/out/attache", "attache `binary`")
	fs.StringVar(&c.naive, "naive", "bench/out/naiveproxy", "naiveproxy `binary`")
	fs.StringVar(&c.idleconns, "idleconns", "bench/out/idleconns", "idleconns `binary`")
	fs.StringVar(&c.udpload, "udpload", "bench/out/udpload", "udpload `binary`")
	fs.StringVar(&c.out, "out", "", "also write the Markdown report to this `file`")
	fs.StringVar(&c.logDir, "logs", "bench/out/logs", "`directory` for the child processes' logs and configs")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if c.quick {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		quick := map[string]func(){
			"rounds":      func() { c.rounds = 1 },
			"duration":    func() { c.duration = 2 },
			"requests":    func() { c.requests = 100_000 },
			"connects":    func() { c.connects = 5_000 },
			"connect-cap": func() { c.connectCap = 5 * time.Second },
			"idle":        func() { c.idle = 1000 },
		}
		for name, apply := range quick {
			if !set[name] {
				apply()
			}
		}
	}
	if c.connectCap <= 0 {
		return nil, errors.New("-connect-cap must be positive")
	}
	if c.rounds < 1 || c.duration < 1 || c.requests < 1 || c.connects < 1 || c.idle < 1 {
		return nil, errors.New("-rounds, -duration, -requests, -connects and -idle must be positive")
	}
	var err error
	if c.only, err = pick(*only, "proxy", proxyNames()); err != nil {
		return nil, err
	}
	if !slices.Contains(c.only, "direct") {
		c.only = append([]string{"direct"}, c.only...)
	}
	if c.metrics, err = pick(*ms, "metric", metricNames()); err != nil {
		return nil, err
	}
	if c.policies, err = pick(*pols, "policy", policyNames()); err != nil {
		return nil, err
	}
	return c, nil
}

// pick splits a comma list and checks each name, or returns all when empty.
func pick(list, what string, all []string) ([]string, error) {
	if strings.TrimSpace(list) == "" {
		return all, nil
	}
	var out []string
	for _, n := range strings.Split(list, ",") {
		n = strings.TrimSpace(n)
		if !slices.Contains(all, n) {
			return nil, fmt.Errorf("unknown %s %q (want one of %s)", what, n, strings.Join(all, ", "))
		}
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	// Keep table order, whatever order they were given in.
	slices.SortFunc(out, func(a, b string) int { return slices.Index(all, a) - slices.Index(all, b) })
	return out, nil
}

func proxyNames() []string {
	var n []string
	for _, p := range proxies {
		n = append(n, p.name)
	}
	return n
}

func metricNames() []string {
	var n []string
	for _, m := range metrics {
		n = append(n, m.name)
	}
	return n
}

// A backend is a server every proxy fronts. fresh, when set, starts a new
// instance for one measurement (iperf3 serves one test at a time, so a new
// server per test leaves no state behind) and returns its stop function.
// pool, when set, is several servers that balancing proxies spread over;
// addr is then the first of them, the one direct talks to.
type backend struct {
	addr  string
	pool  []string
	probe probe
	fresh func(ctx context.Context, h *harness) (stop func(), err error)
	// udp marks a UDP server: its readiness is probed with a datagram.
	udp bool
}

// servers are the addresses of every server behind the backend.
func (b *backend) servers() []string {
	if len(b.pool) > 0 {
		return b.pool
	}
	return []string{b.addr}
}

type harness struct {
	cfg      *config
	sup      *supervisor
	backends map[string]*backend
	logName  string // of the current measurement, for log files
}

func (h *harness) startBackends(ctx context.Context) error {
	redisPort := strconv.Itoa(h.cfg.basePort)
	h.backends = map[string]*backend{
		"redis":  {addr: "127.0.0.1:" + redisPort, probe: pingProbe},
		"iperf3": {addr: "127.0.0.1:" + strconv.Itoa(h.cfg.basePort+1), probe: eofProbe},
	}
	h.backends["iperf3"].fresh = func(ctx context.Context, h *harness) (func(), error) {
		be := h.backends["iperf3"]
		_, port, _ := strings.Cut(be.addr, ":")
		c, err := h.sup.start(h.logName+"-iperf3-server", exec.Command("iperf3", "-s", "-B", "127.0.0.1", "-p", port))
		if err != nil {
			return nil, err
		}
		if err := waitReady(ctx, be.addr, be.probe, []*child{c}, 10*time.Second); err != nil {
			h.sup.stop(c)
			return nil, err
		}
		return func() { h.sup.stop(c) }, nil
	}
	h.addUDPBackends() // udp.go
	// The balancing metrics' pool of redis-servers, the next ports up,
	// started only when one of them runs.
	if slices.ContainsFunc(metrics, func(m metricDef) bool { return m.balanced && slices.Contains(h.cfg.metrics, m.name) }) {
		pool := &backend{probe: pingProbe}
		for i := range poolSize {
			pool.pool = append(pool.pool, "127.0.0.1:"+strconv.Itoa(h.cfg.basePort+2+i))
		}
		pool.addr = pool.pool[0]
		h.backends["redis3"] = pool
	}
	for _, be := range h.backends {
		for _, addr := range be.servers() {
			if err := portFree(addr); err != nil {
				return err
			}
		}
	}
	start := func(logName, addr string) error {
		_, port, _ := strings.Cut(addr, ":")
		c, err := h.sup.start(logName, exec.Command("redis-server",
			"--port", port, "--save", "", "--appendonly", "no", "--bind", "127.0.0.1", "--maxclients", "10000"))
		if err != nil {
			return err
		}
		return waitReady(ctx, addr, pingProbe, []*child{c}, 10*time.Second)
	}
	if err := start("redis-server", "127.0.0.1:"+redisPort); err != nil {
		return err
	}
	if pool := h.backends["redis3"]; pool != nil {
		for i, addr := range pool.pool {
			if err := start(fmt.Sprintf("redis-server-pool%d", i+1), addr); err != nil {
				return err
			}
		}
	}
	return nil
}

// listenAddr gives every (proxy, backend) pair its own port.
func (h *harness) listenAddr(p *proxyDef, backendName string) string {
	pi := slices.IndexFunc(proxies, func(q proxyDef) bool { return q.name == p.name })
	bi := slices.Index(sortedKeys(h.backends), backendName)
	return "127.0.0.1:" + strconv.Itoa(h.cfg.basePort+100*(pi+1)+bi)
}

func sortedKeys[V any](m map[string]V) []string {
	var k []string
	for key := range m {
		k = append(k, key)
	}
	slices.Sort(k)
	return k
}

// measure runs m once against a fresh instance of p. pol is the balancing
// policy of a balanced metric, nil otherwise; the proxy then fronts every
// server of the backend's pool, and the sample gets the spread columns,
// from the servers' counters read just before and after the run.
func (h *harness) measure(ctx context.Context, m *metricDef, p *proxyDef, pol *policyDef) (sample, error) {
	be := h.backends[m.backend]
	if be.fresh != nil {
		stop, err := be.fresh(ctx, h)
		if err != nil {
			return sample{}, fmt.Errorf("backend %s: %w", m.backend, err)
		}
		defer stop()
	}
	t := target{addr: be.addr, backends: []string{be.addr}}
	if p.start != nil {
		listen := h.listenAddr(p, m.backend)
		if err := portFree(listen); err != nil {
			return sample{}, err
		}
		r := route{listen: listen, backends: []endpoint{{addr: be.addr}}}
		if pol != nil {
			r = route{listen: listen, backends: pol.endpoints(be.servers()), policy: pol}
		}
		procs, err := p.start(h, h.logName, m.routesFor(r))
		if err != nil {
			return sample{}, err
		}
		defer func() {
			for _, c := range procs {
				h.sup.stop(c)
			}
		}()
		ready := func() error { return waitReady(ctx, listen, be.probe, procs, 10*time.Second) }
		if be.udp {
			ready = func() error { return waitReadyUDP(ctx, listen, procs, 10*time.Second) }
		}
		if err := ready(); err != nil {
			return sample{}, err
		}
		t = target{addr: listen, backends: be.servers(), procs: procs}
	}
	if pol == nil || p.start == nil {
		return m.run(ctx, h, t)
	}
	before, err := readPool(ctx, t.backends)
	if err != nil {
		return sample{}, err
	}
	s, err := m.run(ctx, h, t)
	if err != nil {
		return s, err
	}
	after, err := readPool(ctx, t.backends)
	if err != nil {
		return sample{}, err
	}
	shares, err := spread(before, after)
	if err != nil {
		return sample{}, err
	}
	if s.values == nil {
		s.values = map[string]float64{}
	}
	for k, v := range shares {
		s.values[k] = v
	}
	return s, nil
}

// foreignLimit is the CPU use by other processes, in percent of one CPU,
// above which a measurement is flagged as disturbed.
const foreignLimit = 10

func main() { os.Exit(run()) }

func run() int {
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(os.Stderr, "runner:", err)
		return 2
	}
	for _, bin := range []string{cfg.attache, cfg.naive, cfg.idleconns, cfg.udpload} {
		if _, err := os.Stat(bin); err != nil {
			fmt.Fprintf(os.Stderr, "runner: %v (build it, or use bench/run.sh)\n", err)
			return 2
		}
	}
	if err := os.MkdirAll(cfg.logDir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "runner:", err)
		return 1
	}
	ctx, stopSignals := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stopSignals()

	h := &harness{cfg: cfg, sup: newSupervisor(cfg.logDir)}
	defer h.sup.stopAll()

	rep := newReport(cfg)
	rep.versions = versions(ctx, cfg)
	if err := h.startBackends(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "runner: backends:", err)
		return 1
	}
	for _, p := range proxies {
		if slices.Contains(cfg.only, p.name) && p.start != nil {
			for _, b := range sortedKeys(h.backends) {
				if err := portFree(h.listenAddr(&p, b)); err != nil {
					fmt.Fprintln(os.Stderr, "runner:", err)
					return 1
				}
			}
		}
	}

	rep.loadBefore = loadavg()
	started := time.Now()
	if slices.Contains(cfg.metrics, "idle") {
		if err := idleWarmup(ctx, h); err != nil {
			fmt.Fprintln(os.Stderr, "runner: idle warm-up:", err)
			return 1
		}
	}
	var chosen, balancers []*proxyDef
	for i := range proxies {
		if slices.Contains(cfg.only, proxies[i].name) {
			chosen = append(chosen, &proxies[i])
			if proxies[i].balances {
				balancers = append(balancers, &proxies[i])
			}
		}
	}
	// one measures m (under policy pol, if balanced) on p and records it;
	// false means the run was interrupted.
	one := func(r int, m *metricDef, pol *policyDef, p *proxyDef) bool {
		if m.udp && !udpCapable[p.name] {
			return true // no UDP (HAProxy, naive): the cell reads n/a
		}
		name, polName := m.name, ""
		if pol != nil {
			polName = pol.name
			name += "-" + pol.name
		}
		h.logName = fmt.Sprintf("r%d-%s-%s", r+1, name, p.name)
		if err := waitQuiet(ctx, cfg.quietWait); err != nil {
			return false
		}
		foreign := readForeignCPU()
		s, err := h.measure(ctx, m, p, pol)
		busy := foreign.busySince()
		rep.measured++
		if busy >= foreignLimit {
			rep.disturbed++
			s.note = strings.TrimPrefix(s.note+fmt.Sprintf("; other processes used %.0f%% of a CPU meanwhile", busy), "; ")
		}
		if ctx.Err() != nil {
			return false
		}
		rep.add(m, polName, p.name, r, s, err)
		fmt.Fprintf(os.Stderr, "[%s] round %d/%d %-13s %-14s %s\n",
			time.Since(started).Round(time.Second), r+1, cfg.rounds, name, p.name, brief(m, s, err))
		return true
	}
rounds:
	for r := range cfg.rounds {
		order := rotate(chosen, r)
		for mi := range metrics {
			m := &metrics[mi]
			if !slices.Contains(cfg.metrics, m.name) {
				continue
			}
			if !m.balanced {
				for _, p := range order {
					if !one(r, m, nil, p) {
						rep.interrupted = true
						break rounds
					}
				}
				continue
			}
			// Each policy runs on every balancing contender before the
			// next policy; the order rotates with the policy too, so
			// attache does not always follow HAProxy.
			for pi, name := range cfg.policies {
				for _, p := range rotate(balancers, r+pi) {
					if !one(r, m, policyByName(name), p) {
						rep.interrupted = true
						break rounds
					}
				}
			}
		}
	}
	rep.elapsed = time.Since(started)
	rep.loadAfter = loadavg()

	md := rep.markdown()
	fmt.Print(md)
	if cfg.out != "" {
		if err := os.WriteFile(cfg.out, []byte(md), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "runner:", err)
			return 1
		}
	}
	if rep.interrupted {
		return 130
	}
	return 0
}

// rotate starts round r at the r-th contender, so no proxy always runs
// first (on a cold machine) or right after the same neighbour.
func rotate[T any](s []T, r int) []T {
	if len(s) == 0 {
		return nil
	}
	r %= len(s)
	return append(append([]T(nil), s[r:]...), s[:r]...)
}

func brief(m *metricDef, s sample, err error) string {
	if err != nil {
		return "FAILED: " + strings.ReplaceAll(err.Error(), "\n", " | ")
	}
	var parts []string
	for _, c := range m.columns {
		if v, ok := s.values[c.key]; ok {
			parts = append(parts, c.key+"="+strconv.FormatFloat(v, 'f', c.digits, 64))
		}
	}
	if s.note != "" {
		parts = append(parts, "("+s.note+")")
	}
	return strings.Join(parts, " ")
}

// versions records the first line that names a version for each tool.
func versions(ctx context.Context, cfg *config) [][2]string {
	abs := func(p string) string {
		if a, err := filepath.Abs(p); err == nil {
			return a
		}
		return p
	}
	tools := [][]string{
		{"go", "version"},
		{abs(cfg.attache), "version"},
		{"socat", "-V"},
		{"haproxy", "-v"},
		{"redis-benchmark", "--version"},
		{"redis-server", "--version"},
		{"iperf3", "--version"},
	}
	var out [][2]string
	for _, t := range tools {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		b, err := exec.CommandContext(ctx, t[0], t[1:]...).CombinedOutput()
		cancel()
		line := "unknown"
		if err == nil {
			lines := strings.Split(strings.TrimSpace(string(b)), "\n")
			line = lines[0]
			// socat -V opens with an author line; its version is on the next.
			for _, l := range lines {
				if strings.Contains(l, "version") {
					line = l
					break
				}
			}
		}
		out = append(out, [2]string{filepath.Base(t[0]), strings.TrimSpace(line)})
	}
	return out
}

// hostInfo describes the machine in one line.
func hostInfo() string {
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	mem, _ := kibField("/proc/meminfo", "MemTotal:")
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	return fmt.Sprintf("Linux %s, %d CPUs (%s), %.1f GiB RAM",
		strings.TrimSpace(string(kernel)), runtime.NumCPU(), model, mem/1024/1024)
}

// loadavg is the first three fields of /proc/loadavg. Read before the rounds,
// when only the backends run, a 1-minute load near or above the core count
// means someone else is using the machine and the numbers are suspect. Read
// after, it includes the harness's own load.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// waitQuiet samples other processes' CPU use in 1 s steps until it is under
// foreignLimit or limit has passed. It only delays; a measurement that still
// runs disturbed is flagged by the caller.
func waitQuiet(ctx context.Context, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		f := readForeignCPU()
		if err := sleep(ctx, time.Second); err != nil {
			return err
		}
		if f.busySince() < foreignLimit {
			return nil
		}
	}
	return ctx.Err()
}
