package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/attache/attache/internal/testenv"
)

// TestTransparentNetns is transparent mode with real iptables rules, in
// network namespaces standing for a Docker host: the consumers c1 and c2
// route through the hub (their gateway, as a container's bridge is), where
// attache runs with --transparent and `attache iptables --apply` installs
// the PREROUTING rules for the consumers' network. A consumer connects to
// an address that exists nowhere, on the port of a service, and gets the
// reply of that service's backend; a port redirected to attache with no
// service behind it, and a connection straight to the transparent
// listener, are refused and counted; stopping `attache iptables`
// removes every rule it installed.
func TestTransparentNetns(t *testing.T) { transparentNetns(t, false) }

// TestTransparentTProxyNetns is TestTransparentNetns with TPROXY: attache
// runs with transparent.tproxy (an IP_TRANSPARENT listener) and `attache
// iptables --tproxy` installs mangle-table TPROXY rules and the ip rule
// and local route they need; the packets keep their destination, and
// the original destination is the accepted connection's local address.
// The kernel must have TPROXY (xt_TPROXY, nf_tproxy): without it the
// rules fail to install, and the test fails saying so.
func TestTransparentTProxyNetns(t *testing.T) { transparentNetns(t, true) }

func transparentNetns(t *testing.T, tproxy bool) {
	if why := testenv.NetnsAvailable(); why != "" {
		t.Fatalf("network namespaces: %s", why)
	}
	hosts := testenv.NewHosts(t, "c1", "c2")
	hub := hosts.Hub
	for _, c := range []*testenv.Host{hosts.ByName["c1"], hosts.ByName["c2"]} {
		c.Run(t, "ip", "route", "add", "default", "via", hub.IP)
	}
	hub.Run(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	if _, err := os.Stat("/proc/sys/net/bridge/bridge-nf-call-iptables"); err == nil && tproxy {
		// The consumers reach the hub through a bridge, as containers do:
		// where br_netfilter hands bridged frames to iptables (Docker
		// loads it), PREROUTING runs on the bridge, and the IP layer
		// then drops the socket TPROXY assigned. The hub turns that off
		// for its own namespace, as a TPROXY host must (README).
		hub.Run(t, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0")
	}

	// Two backends in the hub, each naming itself before echoing.
	for _, b := range []struct{ name, addr string }{{"redis-backend", "127.0.0.1:7001"}, {"pg-backend", "127.0.0.1:7002"}} {
		ln, err := hub.Listen("tcp", b.addr)
		if err != nil {
			t.Fatal(err)
		}
		testenv.Serve(t, ln, func(c net.Conn) {
			fmt.Fprintf(c, "%s\n", b.name)
			_, _ = io.Copy(struct{ io.Writer }{c}, struct{ io.Reader }{c})
		})
	}
	cfg := filepath.Join(t.TempDir(), "attache.yaml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, `
transparent:
  listen: ":10000"
  tproxy: %t
services:
  - name: redis
    listen: 127.0.0.1:6379
    backends: [127.0.0.1:7001]
  - name: pg
    listen: 127.0.0.1:5432
    backends: [127.0.0.1:7002]
`, tproxy), 0o600); err != nil {
		t.Fatal(err)
	}
	a := startAttacheIn(t, hub, cfg, "--admin", "127.0.0.1:9901")
	a.waitLog(t, regexp.MustCompile(`msg="transparent listener"`), startTimeout)

	subnet := hub.IP[:strings.LastIndex(hub.IP, ".")] + ".0/24"
	args := []string{"iptables", "--netns", hub.NS, "--source", subnet, "--ports", "6379,5432,11211", "--apply"}
	table, target := "nat", "-A ATTACHE -p tcp -m tcp --dport 6379 -j REDIRECT --to-ports 10000"
	if tproxy {
		args = append(args, "--tproxy")
		table, target = "mangle", "-A ATTACHE -p tcp -m tcp --dport 6379 -j TPROXY --on-port 10000 --on-ip 0.0.0.0 --tproxy-mark 0x1/0x1"
	}
	rules := startAttache(t, []string{"PATH=" + os.Getenv("PATH")}, args...)
	waitOutput(t, rules, "# installed")
	installed := hub.Run(t, "iptables", "-w", "-t", table, "-S")
	for _, want := range []string{"-A PREROUTING -s " + subnet + " -p tcp -j ATTACHE", target} {
		if !strings.Contains(installed, want) {
			t.Fatalf("iptables -t %s -S in the hub lacks %q:\n%s", table, want, installed)
		}
	}
	if tproxy {
		if r := hub.Run(t, "ip", "rule", "show"); !strings.Contains(r, "fwmark 0x1/0x1 lookup 100") {
			t.Fatalf("ip rule in the hub lacks the TPROXY mark's rule:\n%s", r)
		}
		if r := hub.Run(t, "ip", "route", "show", "table", "100"); !strings.Contains(r, "local default dev lo") {
			t.Fatalf("routing table 100 in the hub lacks the local default route:\n%s", r)
		}
	}

	// Addresses that exist nowhere: only the redirect can answer.
	for _, tc := range []struct{ from, dst, want string }{
		{"c1", "203.0.113.7:6379", "redis-backend"},
		{"c2", "198.51.100.9:6379", "redis-backend"},
		{"c1", "203.0.113.7:5432", "pg-backend"},
	} {
		if got := transparentHello(t, hosts.ByName[tc.from], tc.dst); got != tc.want {
			t.Errorf("%s → %s: answered by %q, want %q", tc.from, tc.dst, got, tc.want)
		}
	}
	// Redirected, but no service listens on 11211: refused, counted.
	c, err := hosts.ByName["c1"].Dial("tcp", "203.0.113.7:11211", ioTimeout)
	if err != nil {
		t.Fatalf("dial :11211: %v", err)
	}
	_ = c.SetReadDeadline(time.Now().Add(ioTimeout))
	if n, err := c.Read(make([]byte, 1)); err == nil {
		t.Errorf("a connection to a port with no service read %d bytes; want it closed", n)
	}
	c.Close()
	// Straight to the transparent listener, not redirected: refused, counted.
	c, err = hosts.ByName["c2"].Dial("tcp", net.JoinHostPort(hub.IP, "10000"), ioTimeout)
	if err != nil {
		t.Fatalf("dial the transparent listener: %v", err)
	}
	_ = c.SetReadDeadline(time.Now().Add(ioTimeout))
	if n, err := c.Read(make([]byte, 1)); err == nil {
		t.Errorf("a connection not redirected read %d bytes; want it closed", n)
	}
	c.Close()
	metrics := adminGet(t, hub, "127.0.0.1:9901", "/metrics")
	for _, want := range []string{`attache_transparent_connections_total{result="routed"} 3`,
		`attache_transparent_connections_total{result="no_service"} 1`,
		`attache_transparent_connections_total{result="not_redirected"} 1`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %q:\n%s", want, grepLines(metrics, "attache_transparent"))
		}
	}

	// Stopping `attache iptables` removes exactly its rules, even when the
	// signal comes twice (a supervisor's stop, then its stop-all at exit).
	rules.signal(t, syscall.SIGTERM)
	rules.signal(t, syscall.SIGTERM)
	if code := rules.wait(t, exitTimeout); code != 0 {
		t.Fatalf("attache iptables exited %d", code)
	}
	if after := hub.Run(t, "iptables", "-w", "-t", table, "-S"); strings.Contains(after, "ATTACHE") {
		t.Errorf("rules left after attache iptables exited:\n%s", after)
	}
	if after := hub.Run(t, "ip6tables", "-w", "-t", table, "-S"); strings.Contains(after, "ATTACHE") {
		t.Errorf("ip6tables rules left after attache iptables exited:\n%s", after)
	}
	if after := hub.Run(t, "ip", "rule", "show"); strings.Contains(after, "fwmark") {
		t.Errorf("ip rule left after attache iptables exited:\n%s", after)
	}
}

// transparentHello connects from h to dst, sends a line and returns the
// name the backend answered with, after checking the echo.
func transparentHello(t *testing.T, h *testenv.Host, dst string) string {
	t.Helper()
	c, err := h.Dial("tcp", dst, ioTimeout)
	if err != nil {
		t.Fatalf("from %s: dial %s: %v", h.Name, dst, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := io.WriteString(c, "hello\n"); err != nil {
		t.Fatalf("from %s: write to %s: %v", h.Name, dst, err)
	}
	r := bufio.NewReader(c)
	name, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("from %s: read from %s: %v", h.Name, dst, err)
	}
	if echo, err := r.ReadString('\n'); err != nil || echo != "hello\n" {
		t.Fatalf("from %s: echo from %s = %q, %v", h.Name, dst, echo, err)
	}
	return strings.TrimSpace(name)
}

// waitOutput waits until p's stdout contains s.
func waitOutput(t *testing.T, p *proc, s string) {
	t.Helper()
	err := p.stdout.Await(p.done, startTimeout, func(text string) bool { return strings.Contains(text, s) })
	p.failWait(t, err, fmt.Sprintf("printing %q", s), startTimeout)
}

// adminGet fetches path from an admin API listening inside h.
func adminGet(t *testing.T, h *testenv.Host, addr, path string) string {
	t.Helper()
	client := &http.Client{Timeout: ioTimeout, Transport: &http.Transport{
		DialContext: func(_ context.Context, network, addr string) (net.Conn, error) {
			return h.Dial(network, addr, ioTimeout)
		}}}
	resp, err := client.Get("http://" + addr + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return string(body)
}

func grepLines(s, sub string) string {
	var out []string
	for line := range strings.SplitSeq(s, "\n") {
		if strings.Contains(line, sub) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// TestTransparentPerConsumerDocker is the per-consumer contract with real
// containers on a user-defined network: each consumer connects to an
// address that exists nowhere on port 6379, the rules `attache iptables`
// installs for the network send it to attache on this host, and attache
// picks the backend from the consumer's own BACKEND_6379 variable (or its
// attache.connect.6379 label); a consumer that names none gets the port's
// configured service. The rules live in a chain of their own, jumped to for
// the test network's subnet only, and are removed at the end.
func TestTransparentPerConsumerDocker(t *testing.T) {
	testenv.DockerAvailable(t)
	named := func(name string) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		testenv.Serve(t, ln, func(c net.Conn) {
			fmt.Fprintf(c, "%s\n", name)
			_, _ = io.Copy(struct{ io.Writer }{c}, struct{ io.Reader }{c})
		})
		return ln.Addr().String()
	}
	backendA, backendB, static, pg := named("backend-a"), named("backend-b"), named("static-redis"), named("pg-backend")
	// Discovered choices: an SRV name on a real DNS server, an etcd key
	// on a real etcd.
	srvBackend, etcdA, etcdB := named("srv-backend"), named("etcd-a"), named("etcd-b")
	dns := testenv.StartDNS(t)
	dns.SetA("redis-host.test", "127.0.0.1")
	_, srvPort, _ := net.SplitHostPort(srvBackend)
	dns.SetSRV("_redis._tcp.test", testenv.SRV{Weight: 1, Port: uint16(mustAtoi(t, srvPort)), Target: "redis-host.test."})
	etcd := testenv.StartEtcd(t)
	etcd.Put(t, "/consumers/c5/a", etcdA)

	// The services listen on this host, on the ports the consumers ask
	// for, at a loopback address nothing else uses.
	port, adminPort := freePort(t), freePort(t)
	cfg := filepath.Join(t.TempDir(), "attache.yaml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, `
discovery:
  dns: {server: %q, min_ttl: 10ms, max_ttl: 100ms}
transparent:
  listen: ":%d"
  per_consumer: true
services:
  - name: redis
    listen: 127.36.79.1:6379
    backends: [%s]
  - name: pg
    listen: 127.36.79.1:5432
    backends: [%s]
`, dns.Addr, port, static, pg), 0o600); err != nil {
		t.Fatal(err)
	}
	env := []string{"PATH=" + os.Getenv("PATH")}
	if h := os.Getenv("DOCKER_HOST"); h != "" {
		env = append(env, "DOCKER_HOST="+h)
	}
	a := startAttache(t, env, "-c", cfg, "--admin", "127.0.0.1:"+itoa(adminPort))
	a.waitLog(t, regexp.MustCompile(`msg="transparent listener".*per_consumer=true`), startTimeout)

	network := testenv.NewDockerNetwork(t)
	subnet := strings.Fields(network.Subnet(t))[0]
	chain := fmt.Sprintf("AT%d", port)
	rules := startAttache(t, env, "iptables", "--transparent", itoa(port), "--source", subnet,
		"--ports", "6379,5432", "--chain", chain, "--apply")
	t.Cleanup(func() {
		if !rules.exited() {
			rules.signal(t, syscall.SIGTERM)
			rules.wait(t, exitTimeout)
		}
	})
	waitOutput(t, rules, "# installed")

	c1 := testenv.RunContainer(t, testenv.ContainerSpec{Network: network.ID, Env: []string{"BACKEND_6379=" + backendA}})
	c2 := testenv.RunContainer(t, testenv.ContainerSpec{Network: network.ID, Labels: map[string]string{"attache.connect.6379": backendB}})
	c3 := testenv.RunContainer(t, testenv.ContainerSpec{Network: network.ID})
	hello := func(c testenv.DockerContainer, dst string) string {
		t.Helper()
		conn, err := testenv.DialIn(fmt.Sprintf("/proc/%d/ns/net", c.PID(t)), "tcp", dst, ioTimeout)
		if err != nil {
			t.Fatalf("from container %s: dial %s: %v", c.Name, dst, err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(ioTimeout))
		if _, err := io.WriteString(conn, "hello\n"); err != nil {
			t.Fatalf("from container %s: write: %v", c.Name, err)
		}
		r := bufio.NewReader(conn)
		name, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("from container %s: %s: read: %v", c.Name, dst, err)
		}
		if echo, err := r.ReadString('\n'); err != nil || echo != "hello\n" {
			t.Fatalf("from container %s: echo = %q, %v", c.Name, echo, err)
		}
		return strings.TrimSpace(name)
	}
	for _, tc := range []struct {
		c         testenv.DockerContainer
		dst, want string
	}{
		{c1, "203.0.113.7:6379", "backend-a"},    // its variable
		{c2, "203.0.113.7:6379", "backend-b"},    // its label
		{c3, "203.0.113.7:6379", "static-redis"}, // neither: the port's service
		{c1, "198.51.100.2:5432", "pg-backend"},  // no variable for that port
		{c1, "198.51.100.2:6379", "backend-a"},   // again: from the cache
	} {
		if got := hello(tc.c, tc.dst); got != tc.want {
			t.Errorf("container %s → %s: answered by %q, want %q", tc.c.Name, tc.dst, got, tc.want)
		}
	}
	metrics := httpGet(t, "http://127.0.0.1:"+itoa(adminPort)+"/metrics")
	for _, want := range []string{`attache_transparent_connections_total{result="consumer"} 3`,
		`attache_transparent_connections_total{result="routed"} 2`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %q:\n%s", want, grepLines(metrics, "attache_transparent"))
		}
	}
	if !regexp.MustCompile(`attache_transparent_caller_cache_hits_total [1-9]`).MatchString(metrics) {
		t.Errorf("no caller lookup was answered from the cache:\n%s", grepLines(metrics, "attache_transparent"))
	}

	// Every backend form a service takes: an SRV name, an etcd key
	// (followed live: a change moves the next connections), and a
	// malformed value, refused, logged and counted.
	c4 := testenv.RunContainer(t, testenv.ContainerSpec{Network: network.ID, Env: []string{"BACKEND_6379=srv://_redis._tcp.test"}})
	c5 := testenv.RunContainer(t, testenv.ContainerSpec{Network: network.ID,
		Labels: map[string]string{"attache.connect.6379": "etcd://" + etcd.Endpoint() + "/consumers/c5"}})
	c6 := testenv.RunContainer(t, testenv.ContainerSpec{Network: network.ID, Env: []string{"BACKEND_6379=10.1.2.3"}})
	if got := hello(c4, "203.0.113.7:6379"); got != "srv-backend" {
		t.Errorf("container %s (SRV) answered by %q, want srv-backend", c4.Name, got)
	}
	if got := hello(c5, "203.0.113.7:6379"); got != "etcd-a" {
		t.Errorf("container %s (etcd) answered by %q, want etcd-a", c5.Name, got)
	}
	etcd.Put(t, "/consumers/c5/b", etcdB)
	etcd.Delete(t, "/consumers/c5/a")
	a.waitLog(t, regexp.MustCompile(`msg="per-consumer backends changed" .*container=`+c5.Name+` .*backends=\[`+regexp.QuoteMeta(etcdB)+`\]`), startTimeout)
	if got := hello(c5, "203.0.113.7:6379"); got != "etcd-b" {
		t.Errorf("container %s after the etcd change: answered by %q, want etcd-b", c5.Name, got)
	}
	if conn, err := testenv.DialIn(fmt.Sprintf("/proc/%d/ns/net", c6.PID(t)), "tcp", "203.0.113.7:6379", ioTimeout); err == nil {
		_ = conn.SetDeadline(time.Now().Add(ioTimeout))
		if n, err := conn.Read(make([]byte, 1)); err == nil {
			t.Errorf("container %s with a malformed BACKEND_6379: read %d bytes, want the connection refused", c6.Name, n)
		}
		conn.Close()
	}
	a.waitLog(t, regexp.MustCompile(`msg="per-consumer backends: malformed value.*container=`+c6.Name+` port=6379 value=10\.1\.2\.3 .*an IP address without a port`), startTimeout)
	metrics = httpGet(t, "http://127.0.0.1:"+itoa(adminPort)+"/metrics")
	for _, want := range []string{`attache_transparent_connections_total{result="bad_value"} 1`,
		`attache_transparent_consumer_bad_values_total 1`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %q:\n%s", want, grepLines(metrics, "attache_transparent"))
		}
	}

	rules.signal(t, syscall.SIGTERM)
	if code := rules.wait(t, exitTimeout); code != 0 {
		t.Fatalf("attache iptables exited %d", code)
	}
	out, _, _, err := runCmd(context.Background(), ioTimeout, "iptables", "-w", "-t", "nat", "-S")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, chain) {
		t.Errorf("chain %s left after attache iptables exited:\n%s", chain, grepLines(out, chain))
	}
}

func mustAtoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	client := &http.Client{Timeout: ioTimeout}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return string(body)
}
