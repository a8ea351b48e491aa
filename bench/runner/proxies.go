package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// A route is one listener of a proxy and the backend it forwards to.
type route struct {
	listen  string // 127.0.0.1:port
	backend string // 127.0.0.1:port
}

// A proxyDef is one contender. start launches a fresh instance serving
// routes and returns the processes to measure and stop; it does not wait
// for readiness (the harness probes every route). A nil start means the
// client talks to the backend directly.
//
// To add a contender, append here; to run it, nothing else changes.
type proxyDef struct {
	name  string
	about string
	start func(h *harness, logName string, routes []route) ([]*child, error)
}

var proxies = []proxyDef{
	{name: "direct", about: "no proxy: the client connects to the backend"},
	{name: "socat", about: "socat -t 100000000 TCP4-LISTEN:P,bind=127.0.0.1,fork,reuseaddr TCP4:127.0.0.1:B (one process per route, a fork per connection)", start: startSocat},
	{name: "haproxy", about: "haproxy -db, mode tcp, maxconn 8000", start: haproxyStarter(false)},
	{name: "haproxy-splice", about: "as haproxy, plus option splice-auto (and global maxpipes 1000, to fit the 20000 descriptor limit)", start: haproxyStarter(true)},
	{name: "naive", about: "bench/naiveproxy: two goroutines running io.Copy per connection", start: startNaive},
	{name: "attache", about: "attache --forward L=B --log-level warn --env-links=false", start: startAttache},
}

func startSocat(h *harness, logName string, routes []route) ([]*child, error) {
	var procs []*child
	for i, r := range routes {
		// bind=127.0.0.1 is the one addition to the classic command line:
		// it keeps the relay off other interfaces and does not touch the
		// data path.
		_, lport, _ := strings.Cut(r.listen, ":")
		cmd := exec.Command("socat", "-t", "100000000",
			"TCP4-LISTEN:"+lport+",bind=127.0.0.1,fork,reuseaddr", "TCP4:"+r.backend)
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
		fmt.Fprintf(&b, "\nbackend b%d\n    server s%d %s\n", i, i, r.backend)
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
		args = append(args, r.listen+"="+r.backend)
	}
	c, err := h.sup.start(logName, exec.Command(h.cfg.naive, args...))
	if err != nil {
		return nil, err
	}
	return []*child{c}, nil
}

func startAttache(h *harness, logName string, routes []route) ([]*child, error) {
	var args []string
	for _, r := range routes {
		args = append(args, "--forward", r.listen+"="+r.backend)
	}
	args = append(args, "--log-level", "warn", "--env-links=false")
	c, err := h.sup.start(logName, exec.Command(h.cfg.attache, args...))
	if err != nil {
		return nil, err
	}
	return []*child{c}, nil
}
