package main

import (
	"bufio"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// A column is one number a metric reports.
type column struct {
	key    string
	title  string
	better string // "higher" or "lower"
	digits int    // decimals printed
	// proxyOnly columns describe the proxy's own processes; direct has none.
	proxyOnly bool
	// diff adds proxy - direct next to the ratio (memory, where the
	// difference is what the proxy costs).
	diff bool
}

// A target is what a metric runs against: the address the client uses,
// the backend servers behind it (one for direct) and, unless it is direct,
// the proxy's processes.
type target struct {
	addr     string
	backends []string
	procs    []*child
}

// A sample is one metric's result for one proxy in one round.
type sample struct {
	values map[string]float64
	note   string // partial result, e.g. fewer connections held than asked
}

// A metricDef is one measurement. backend names an entry of harness.backends:
// every proxy fronts exactly that backend while the metric runs.
//
// A balanced metric runs once per balancing policy (-policies), on the
// contenders that can balance, over a backend with a pool of servers; the
// harness adds the spread columns (see spreadColumns) and the report gives
// it a section of its own. Its first column is the headline number, unit
// its unit.
//
// To add a metric or a scenario, append here.
type metricDef struct {
	name     string
	title    string
	backend  string
	columns  []column
	run      func(ctx context.Context, h *harness, t target) (sample, error)
	balanced bool
	unit     string
	// udp metrics run on the contenders that forward UDP (udp.go), which
	// are given a UDP route; tcpToo adds a TCP route on the same port.
	udp, tcpToo bool
}

var metrics = []metricDef{
	{
		name: "iperf3-1", title: "iperf3, 1 stream", backend: "iperf3",
		columns: []column{{key: "gbps", title: "iperf3 1 stream (Gbit/s)", better: "higher", digits: 2}},
		run:     iperfRun(1),
	},
	{
		name: "iperf3-4", title: "iperf3, 4 streams", backend: "iperf3",
		columns: []column{{key: "gbps", title: "iperf3 4 streams (Gbit/s)", better: "higher", digits: 2}},
		run:     iperfRun(4),
	},
	{
		name: "redis-get", title: "redis GET, 50 clients, pipeline 16", backend: "redis",
		columns: []column{
			{key: "rps", title: "GET -c 50 -P 16 (req/s)", better: "higher", digits: 0},
			{key: "p99", title: "GET -c 50 -P 16 p99 (ms)", better: "lower", digits: 3},
			{key: "cpu", title: "GET: proxy CPU (µs/request)", better: "lower", digits: 2, proxyOnly: true},
		},
		run: redisGet,
	},
	{
		name: "idle", title: "idle connections", backend: "redis",
		columns: []column{
			{key: "pss", title: "idle: proxy PSS (KiB/conn)", better: "lower", digits: 1, proxyOnly: true},
			{key: "rss", title: "idle: proxy RSS (KiB/conn)", better: "lower", digits: 1, proxyOnly: true},
			{key: "machine", title: "idle: machine used, others excluded (KiB/conn)", better: "lower", digits: 1, diff: true},
			{key: "fds", title: "idle: proxy fds per conn", better: "lower", digits: 2, proxyOnly: true},
		},
		run: idleRun,
	},
	{
		name: "redis-connect", title: "new connections, redis PING -k 0", backend: "redis",
		columns: []column{
			{key: "cps", title: "new connections (conn/s)", better: "higher", digits: 0},
			{key: "p99", title: "new connection + PING p99 (ms)", better: "lower", digits: 3},
			{key: "cpu", title: "new connection: proxy CPU (µs/conn)", better: "lower", digits: 1, proxyOnly: true},
		},
		run: redisConnect,
	},
	{
		name: "balance", title: "3 redis-server backends, GET -c 50 -P 16", backend: "redis3", balanced: true, unit: "req/s",
		columns: append([]column{{key: "rps", title: "GET -c 50 -P 16 (req/s)", better: "higher", digits: 0}}, spreadColumns()...),
		run:     redisGet,
	},
	{
		name: "balance-connect", title: "3 redis-server backends, new connections (PING -c 50 -k 0)", backend: "redis3", balanced: true, unit: "conn/s",
		columns: append([]column{{key: "cps", title: "new connections (conn/s)", better: "higher", digits: 0}}, spreadColumns()...),
		run:     redisConnect,
	},
}

func iperfRun(streams int) func(context.Context, *harness, target) (sample, error) {
	return func(ctx context.Context, h *harness, t target) (sample, error) {
		host, port, _ := strings.Cut(t.addr, ":")
		ctx, cancel := context.WithTimeout(ctx, time.Duration(h.cfg.duration+30)*time.Second)
		defer cancel()
		out, err := output(ctx, "iperf3", "-c", host, "-p", port,
			"-t", strconv.Itoa(h.cfg.duration), "-P", strconv.Itoa(streams), "-J")
		bps, perr := parseIperf(out)
		if perr != nil {
			if err != nil {
				return sample{}, fmt.Errorf("%w (%v)", perr, err)
			}
			return sample{}, perr
		}
		return sample{values: map[string]float64{"gbps": bps / 1e9}}, nil
	}
}

// parseIperf returns end.sum_received.bits_per_second from iperf3 -J.
func parseIperf(out []byte) (float64, error) {
	var r struct {
		Error string `json:"error"`
		End   struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return 0, fmt.Errorf("iperf3 JSON: %w", err)
	}
	if r.Error != "" {
		return 0, fmt.Errorf("iperf3: %s", r.Error)
	}
	if r.End.SumReceived.BitsPerSecond <= 0 {
		return 0, fmt.Errorf("iperf3: no sum_received.bits_per_second")
	}
	return r.End.SumReceived.BitsPerSecond, nil
}

func redisBench(ctx context.Context, addr, test string, args ...string) (rps, p99 float64, err error) {
	host, port, _ := strings.Cut(addr, ":")
	// socat, the slowest, needs about 15 s for 1M pipelined GETs; a proxy
	// that stalls should fail the cell, not hold the run.
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	full := append([]string{"-h", host, "-p", port, "-t", strings.ToLower(test)}, args...)
	full = append(full, "--csv")
	out, err := output(ctx, "redis-benchmark", full...)
	if err != nil {
		return 0, 0, err
	}
	return parseRedisCSV(out, test)
}

// parseRedisCSV picks the rps and p99_latency_ms columns of the row for
// test from redis-benchmark --csv (Redis 7 layout).
func parseRedisCSV(out []byte, test string) (rps, p99 float64, err error) {
	rows, err := csv.NewReader(strings.NewReader(string(out))).ReadAll()
	if err != nil {
		return 0, 0, fmt.Errorf("redis-benchmark CSV: %w", err)
	}
	if len(rows) < 2 {
		return 0, 0, fmt.Errorf("redis-benchmark CSV: no rows in %q", out)
	}
	col := map[string]int{}
	for i, name := range rows[0] {
		col[name] = i
	}
	ri, ok1 := col["rps"]
	pi, ok2 := col["p99_latency_ms"]
	if !ok1 || !ok2 {
		return 0, 0, fmt.Errorf("redis-benchmark CSV: header %v lacks rps or p99_latency_ms", rows[0])
	}
	for _, row := range rows[1:] {
		if len(row) <= max(ri, pi) || !strings.EqualFold(row[0], test) {
			continue
		}
		rps, err1 := strconv.ParseFloat(row[ri], 64)
		p99, err2 := strconv.ParseFloat(row[pi], 64)
		if err1 != nil || err2 != nil {
			return 0, 0, fmt.Errorf("redis-benchmark CSV: bad numbers in %v", row)
		}
		return rps, p99, nil
	}
	return 0, 0, fmt.Errorf("redis-benchmark CSV: no %s row in %q", test, out)
}

func redisGet(ctx context.Context, h *harness, t target) (sample, error) {
	cpu := startCPU(t)
	rps, p99, err := redisBench(ctx, t.addr, "GET", "-c", "50", "-P", "16", "-n", strconv.Itoa(h.cfg.requests))
	if err != nil {
		return sample{}, err
	}
	s := sample{values: map[string]float64{"rps": rps, "p99": p99}}
	cpu.per(s, float64(h.cfg.requests))
	return s, nil
}

// cpuReading is the proxy tree's CPU time at the start of a measurement.
// Requests or connections per second depend on the whole machine: on 2
// cores the client and the backend share the CPUs with the proxy, so a
// proxy 10 % cheaper gains only about half of that in rate. CPU time per
// operation is the proxy's own cost. It drifts with the machine from one
// round to the next as rates do, so compare it round by round (the
// report's "against haproxy" table). It counts what the kernel does in
// the proxy's context too (its system calls and, on loopback, the packets
// it sends being received).
type cpuReading struct {
	roots []int
	at    float64
}

func startCPU(t target) cpuReading {
	r := cpuReading{roots: t.pids()}
	if len(r.roots) > 0 {
		r.at = treeCPU(r.roots)
	}
	return r
}

// per sets s.values["cpu"] to the CPU time used since the reading, in
// microseconds per operation; direct has no proxy and gets none.
func (r cpuReading) per(s sample, ops float64) {
	if len(r.roots) == 0 || ops <= 0 {
		return
	}
	s.values["cpu"] = (treeCPU(r.roots) - r.at) / ops * 1e6
}

// pids returns the proxy's process ids (none for direct).
func (t target) pids() []int {
	var roots []int
	for _, c := range t.procs {
		roots = append(roots, c.pid())
	}
	return roots
}

// redisConnect measures connection set-up: with -k 0 redis-benchmark opens a
// new connection for every request, so requests/s is connections/s.
//
// A run is capped at cfg.connectCap: the classic socat line manages about ten
// connections a second here (a listen backlog of 5 overflows under 50
// clients, and SYNs are retried after 1 s, 3 s ...), so 20 000 connections
// would take half an hour. A capped run is stopped and its rate is taken
// from the backend's total_connections_received over the elapsed time; it
// has no p99.
func redisConnect(ctx context.Context, h *harness, t target) (sample, error) {
	before, err := connectionsReceived(ctx, t.backends)
	if err != nil {
		return sample{}, err
	}
	start := time.Now()
	cpu := startCPU(t)
	capped, cancel := context.WithTimeout(ctx, h.cfg.connectCap)
	defer cancel()
	rps, p99, err := redisBench(capped, t.addr, "PING_MBULK", "-c", "50", "-k", "0", "-n", strconv.Itoa(h.cfg.connects))
	if err == nil {
		s := sample{values: map[string]float64{"cps": rps, "p99": p99}}
		cpu.per(s, float64(h.cfg.connects))
		return s, nil
	}
	if ctx.Err() != nil || capped.Err() == nil {
		return sample{}, err
	}
	elapsed := time.Since(start).Seconds()
	after, serr := connectionsReceived(ctx, t.backends)
	if serr != nil {
		return sample{}, serr
	}
	n := after - before
	s := sample{
		values: map[string]float64{"cps": n / elapsed},
		note: fmt.Sprintf("capped at %v: %.0f of %d connections reached the backend; rate from the backend's count, no p99",
			h.cfg.connectCap, n, h.cfg.connects),
	}
	cpu.per(s, n)
	return s, nil
}

// connectionsReceived sums total_connections_received over the servers.
func connectionsReceived(ctx context.Context, servers []string) (float64, error) {
	total := 0.0
	for _, addr := range servers {
		info, err := redisInfo(ctx, addr)
		if err != nil {
			return 0, fmt.Errorf("INFO stats of %s: %w", addr, err)
		}
		n, err := infoField(info, "total_connections_received")
		if err != nil {
			return 0, fmt.Errorf("INFO stats of %s: %w", addr, err)
		}
		total += n
	}
	return total, nil
}

// redisInfo returns the INFO stats reply of a Redis server.
func redisInfo(ctx context.Context, addr string) (string, error) {
	var d net.Dialer
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "INFO stats\r\n"); err != nil {
		return "", err
	}
	r := bufio.NewReader(c)
	head, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	size, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(head, "$")))
	if err != nil {
		return "", fmt.Errorf("INFO: unexpected reply %q", head)
	}
	body := make([]byte, size)
	if _, err := io.ReadFull(r, body); err != nil {
		return "", err
	}
	return string(body), nil
}

// infoField finds "field:value" in an INFO reply.
func infoField(info, field string) (float64, error) {
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), field+":"); ok {
			return strconv.ParseFloat(v, 64)
		}
	}
	return 0, fmt.Errorf("INFO: no %s", field)
}

// snapshot is one reading of the proxy tree and the machine.
type snapshot struct {
	tree    usage
	machine float64
}

func takeSnapshot(t target) (snapshot, error) {
	roots := t.pids()
	m, err := machineUsedKiB()
	if err != nil {
		return snapshot{}, err
	}
	// Take out other processes' memory: on a shared machine a test binary
	// exiting between the two readings would otherwise swing the figure by
	// more than the 3000 connections cost.
	s := snapshot{machine: m - foreignPssKiB()}
	if len(roots) > 0 {
		s.tree = treeUsage(roots)
	}
	return s, nil
}

// idleWarmup holds cfg.idle connections straight to the backend once before
// the rounds. Redis's allocator keeps what it grew for its first clients, so
// without this the first contender measured would pay for the backend's
// growth in the machine-wide figure and the others would not.
func idleWarmup(ctx context.Context, h *harness) error {
	h.logName = "warmup"
	be := h.backends["redis"]
	_, err := idleRun(ctx, h, target{addr: be.addr, backends: []string{be.addr}})
	return err
}

// idleRun opens cfg.idle connections through the target with bench/idleconns
// and reports what holding them costs, per connection held.
func idleRun(ctx context.Context, h *harness, t target) (sample, error) {
	const settle = 2 * time.Second
	if err := sleep(ctx, settle); err != nil {
		return sample{}, err
	}
	if err := waitTimeWait(ctx, 30_000, 65*time.Second); err != nil {
		return sample{}, err
	}
	before, err := takeSnapshot(t)
	if err != nil {
		return sample{}, err
	}

	// Four at a time: socat's listen backlog is 5, and the time to open the
	// connections is not what this metric measures.
	cmd := exec.Command(h.cfg.idleconns, "-addr", t.addr, "-n", strconv.Itoa(h.cfg.idle), "-parallel", "4")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return sample{}, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return sample{}, err
	}
	c, err := h.sup.start(h.logName+"-idleconns", cmd)
	if err != nil {
		return sample{}, err
	}
	defer h.sup.stop(c)
	defer stdin.Close()

	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "ready ") {
				line <- sc.Text()
				break
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
		close(line)
	}()
	var ready string
	select {
	case <-ctx.Done():
		return sample{}, ctx.Err()
	case <-time.After(5 * time.Minute):
		return sample{}, fmt.Errorf("idleconns: no ready line after 5m")
	case l, ok := <-line:
		if !ok {
			return sample{}, fmt.Errorf("idleconns exited without a ready line\n%s", c.logTail())
		}
		ready = l
	}
	held, failed, firstErr := parseReady(ready)
	if held == 0 {
		return sample{}, fmt.Errorf("idleconns held no connection: %s", ready)
	}
	if err := sleep(ctx, settle); err != nil {
		return sample{}, err
	}
	after, err := takeSnapshot(t)
	if err != nil {
		return sample{}, err
	}

	n := float64(held)
	s := sample{values: map[string]float64{"machine": (after.machine - before.machine) / n}}
	if len(t.procs) > 0 {
		s.values["pss"] = (after.tree.pssKiB - before.tree.pssKiB) / n
		s.values["rss"] = (after.tree.rssKiB - before.tree.rssKiB) / n
		s.values["fds"] = float64(after.tree.fds-before.tree.fds) / n
	}
	if failed > 0 {
		s.note = fmt.Sprintf("held %d of %d connections (%d failed: %s)", held, h.cfg.idle, failed, firstErr)
	}
	return s, nil
}

// parseReady reads "ready held=N failed=M [error=\"...\"]".
func parseReady(line string) (held, failed int, firstErr string) {
	rest := strings.TrimPrefix(line, "ready ")
	if i := strings.Index(rest, " error="); i >= 0 {
		firstErr, _ = strconv.Unquote(rest[i+len(" error="):])
		rest = rest[:i]
	}
	for _, f := range strings.Fields(rest) {
		k, v, _ := strings.Cut(f, "=")
		n, _ := strconv.Atoi(v)
		switch k {
		case "held":
			held = n
		case "failed":
			failed = n
		}
	}
	return held, failed, firstErr
}

// waitTimeWait waits, up to limit, until fewer than max sockets are in
// TIME_WAIT. Sockets left by an earlier test expire 60 s after they closed
// and give their memory back; if that happened between the two readings it
// would be subtracted from the idle connections' cost.
func waitTimeWait(ctx context.Context, max int, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		tw, err := timeWaitSockets()
		if err != nil || tw < max {
			return nil
		}
		if err := sleep(ctx, time.Second); err != nil {
			return err
		}
	}
	return nil
}
