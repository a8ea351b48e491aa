package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// A route is one listener of a proxy and the backends it forwards to.
type route struct {
	listen   string     // 127.0.0.1:port
	backends []endpoint // exactly one unless policy is set
	// policy, when set, balances the connections over backends; only
	// contenders with balances set are given such a route.
	policy *policyDef
	// udp routes forward UDP; only the contenders of udpCapable get them.
	udp bool
}

// An endpoint is one backend server of a route.
type endpoint struct {
	addr   string // 127.0.0.1:port
	weight int    // 0: no weight given (every server counts the same)
}

// single is the route's only backend, for contenders that cannot balance.
func (r route) single() (string, error) {
	if len(r.backends) != 1 || r.policy != nil {
		return "", fmt.Errorf("route %s: this contender forwards to exactly one backend, got %d and policy %v",
			r.listen, len(r.backends), r.policy != nil)
	}
	return r.backends[0].addr, nil
}

// A proxyDef is one contender. start launches a fresh instance serving
// routes and returns the processes to measure and stop; it does not wait
// for readiness (the harness probes every route). A nil start means the
// client talks to the backend directly.
//
// balances marks the contenders that take part in the balancing metrics
// (routes with several backends and a policy); the others are skipped there.
//
// To add a contender, append here; to run it, nothing else changes.
type proxyDef struct {
	name     string
	about    string
	start    func(h *harness, logName string, routes []route) ([]*child, error)
	balances bool
}

var proxies = []proxyDef{
	// direct takes part in the balancing metrics as their baseline: the
	// client talks to the first of the backends.
	{name: "direct", about: "no proxy: the client connects to the backend", balances: true},
	{name: "socat", about: "socat -t 100000000 TCP4-LISTEN:P,bind=127.0.0.1,fork,reuseaddr TCP4:127.0.0.1:B (one process per route, a fork per connection); UDP: socat -T 60 UDP4-LISTEN:P,bind=127.0.0.1,fork,reuseaddr UDP4:127.0.0.1:B (a fork per client)", start: startSocat},
	{name: "haproxy", about: "haproxy -db, mode tcp, maxconn 8000 (balancing: a balance line, and weights on the servers for weighted); HAProxy has no UDP mode, so the UDP rows read n/a", start: haproxyStarter(false), balances: true},
	// haproxy-splice sits the balancing metrics out: splicing changes
	// nothing for small messages (the redis-get row has it level with
	// haproxy), and each contender there costs policies × rounds runs.
	{name: "haproxy-splice", about: "as haproxy, plus option splice-auto (and global maxpipes 1000, to fit the 20000 descriptor limit)", start: haproxyStarter(true)},
	{name: "naive", about: "bench/naiveproxy: two goroutines running io.Copy per connection", start: startNaive},
	{name: "attache", about: "attache --forward L=B --log-level warn --env-links=false (balancing: attache -c file.yaml, one service with the three backends and a balance policy; UDP: --forward L/udp=B)", start: startAttache, balances: true},
	// attache-observed is attache as operators run it: the same data path
	// with an access-log line per closed connection written to its log file
	// and the admin API scraped every second, so the two rows side by side
	// show what observability costs.
	// attache-transparent is the same service reached through an iptables
	// REDIRECT and the original-destination lookup (transparent mode).
	{name: "attache-transparent", about: "attache -c file.yaml with transparent.listen; the client's connections to 127.0.0.1:L are redirected there by an OUTPUT rule (attache iptables --uid <runner's uid> --apply), and the service of port L forwards to B", start: startAttacheTransparent},
	{name: "attache-observed", about: "as attache, with --log-level info (one access-log line per connection, to the log file) and --admin on a loopback port whose /metrics and /v1/services are fetched every second", start: startAttacheObserved},
}

func startSocat(h *harness, logName string, routes []route) ([]*child, error) {
	var procs []*child
	for i, r := range routes {
		be, err := r.single()
		if err != nil {
			for _, p := range procs {
				h.sup.stop(p)
			}
			return nil, err
		}
		// bind=127.0.0.1 is the one addition to the classic command line:
		// it keeps the relay off other interfaces and does not touch the
		// data path.
		_, lport, _ := strings.Cut(r.listen, ":")
		cmd := exec.Command("socat", "-t", "100000000",
			"TCP4-LISTEN:"+lport+",bind=127.0.0.1,fork,reuseaddr", "TCP4:"+be)
		if r.udp {
			cmd = socatUDP(lport, be)
		}
		c, err := h.sup.start(fmt.Sprintf("%s-%d", logName, i), cmd)
		if err != nil {
			for _, p := range procs {
				h.sup.stop(p)
			}
			return nil, err
		}
		procs = append(procs, c)
	}
	return procs, nil
}

// haproxyConfig is the whole configuration of one HAProxy instance.
func haproxyConfig(splice bool, routes []route) string {
	var b strings.Builder
	b.WriteString("global\n    maxconn 8000\n")
	if splice {
		// HAProxy sizes its descriptor needs as 2*maxconn + 2*maxpipes + a
		// few, with maxpipes = maxconn/4 by default: 20017, just over this
		// machine's hard limit of 20000, and it refuses to start. A pipe is
		// held only while bytes are in flight, so 1000 is far more than any
		// metric here uses (iperf3 -P 4 needs 8).
		b.WriteString("    maxpipes 1000\n")
	}
	b.WriteString("\n")
	b.WriteString("defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 1h\n    timeout server 1h\n")
	if splice {
		b.WriteString("    option splice-auto\n")
	}
	for i, r := range routes {
		fmt.Fprintf(&b, "\nfrontend f%d\n    bind %s\n    default_backend b%d\n", i, r.listen, i)
		fmt.Fprintf(&b, "\nbackend b%d\n", i)
		if r.policy == nil && len(r.backends) == 1 {
			fmt.Fprintf(&b, "    server s%d %s\n", i, r.backends[0].addr)
			continue
		}
		if r.policy != nil {
			fmt.Fprintf(&b, "    balance %s\n", r.policy.haproxy)
		}
		// No maxconn on the servers: with balance first, HAProxy then
		// sends everything to the first server, which is failover order.
		for j, e := range r.backends {
			fmt.Fprintf(&b, "    server s%d-%d %s", i, j+1, e.addr)
			if e.weight > 0 {
				fmt.Fprintf(&b, " weight %d", e.weight)
			}
			b.WriteString("\n")
		}
	}
	return b.String()
}

func haproxyStarter(splice bool) func(*harness, string, []route) ([]*child, error) {
	return func(h *harness, logName string, routes []route) ([]*child, error) {
		cfg := filepath.Join(h.cfg.logDir, logName+".cfg")
		if err := os.WriteFile(cfg, []byte(haproxyConfig(splice, routes)), 0o644); err != nil {
			return nil, err
		}
		c, err := h.sup.start(logName, exec.Command("haproxy", "-db", "-f", cfg))
		if err != nil {
			return nil, err
		}
		return []*child{c}, nil
	}
}

func startNaive(h *harness, logName string, routes []route) ([]*child, error) {
	var args []string
	for _, r := range routes {
		be, err := r.single()
		if err != nil {
			return nil, err
		}
		args = append(args, r.listen+"="+be)
	}
	c, err := h.sup.start(logName, exec.Command(h.cfg.naive, args...))
	if err != nil {
		return nil, err
	}
	return []*child{c}, nil
}

// startAttache forwards plain routes with --forward, as an ambassador is
// usually run, and balanced routes through a config file (the only place a
// policy and weights can be set).
func startAttache(h *harness, logName string, routes []route) ([]*child, error) {
	return runAttache(h, logName, routes, "--log-level", "warn")
}

// startAttacheObserved runs attache with its access log and admin API on,
// and a scraper that reads the API every second until attache exits.
func startAttacheObserved(h *harness, logName string, routes []route) ([]*child, error) {
	adminAddr, err := freeLoopbackAddr()
	if err != nil {
		return nil, err
	}
	procs, err := runAttache(h, logName, routes, "--log-level", "info", "--access-log", "--admin", adminAddr)
	if err != nil {
		return nil, err
	}
	go scrapeUntilDone(procs[0], "http://"+adminAddr)
	return procs, nil
}

// scrapeUntilDone fetches base's /metrics and /v1/services every second,
// as a Prometheus server and an open status page would, until c exits.
func scrapeUntilDone(c *child, base string) {
	client := &http.Client{Timeout: 5 * time.Second}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		for _, path := range []string{"/metrics", "/v1/services"} {
			if resp, err := client.Get(base + path); err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}
		select {
		case <-c.done:
			return
		case <-tick.C:
		}
	}
}

// freeLoopbackAddr returns a 127.0.0.1 address with a port nothing listens
// on now.
func freeLoopbackAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func runAttache(h *harness, logName string, routes []route, extra ...string) ([]*child, error) {
	var args, plain []string
	var balanced []route
	for _, r := range routes {
		switch {
		case r.udp:
			plain = append(plain, "--forward", r.listen+"/udp="+r.backends[0].addr)
		case r.policy == nil && len(r.backends) == 1:
			plain = append(plain, "--forward", r.listen+"="+r.backends[0].addr)
		default:
			balanced = append(balanced, r)
		}
	}
	if len(balanced) > 0 {
		cfg := filepath.Join(h.cfg.logDir, logName+".yaml")
		if err := os.WriteFile(cfg, []byte(attacheConfig(balanced)), 0o644); err != nil {
			return nil, err
		}
		args = append(args, "-c", cfg)
	}
	args = append(args, plain...)
	args = append(args, extra...)
	args = append(args, "--env-links=false")
	c, err := h.sup.start(logName, exec.Command(h.cfg.attache, args...))
	if err != nil {
		return nil, err
	}
	return []*child{c}, nil
}

// attacheConfig is a config file with one service per route: its backends
// as {addr, weight} entries and the route's policy.
func attacheConfig(routes []route) string {
	var b strings.Builder
	b.WriteString("services:\n")
	for i, r := range routes {
		fmt.Fprintf(&b, "  - name: bench-%d\n    listen: %s\n    backends:\n", i, r.listen)
		for _, e := range r.backends {
			if e.weight > 0 {
				fmt.Fprintf(&b, "      - {addr: %s, weight: %d}\n", e.addr, e.weight)
			} else {
				fmt.Fprintf(&b, "      - %s\n", e.addr)
			}
		}
		if r.policy != nil {
			fmt.Fprintf(&b, "    balance: %s\n", r.policy.name)
		}
	}
	return b.String()
}
