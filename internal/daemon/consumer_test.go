package daemon

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/attache/attache/internal/discovery/docker"
	"github.com/attache/attache/internal/proxy"
	"github.com/attache/attache/internal/testenv"
)

// The per-consumer tests build consumers' routes the way the transparent
// listener does for a redirected connection (consumerRoute, with the
// caller docker.Callers found), and hand them connections accepted on
// loopback as the transparent listener hands its own (proxy.Handle). The
// redirect itself, iptables and the containers' source addresses are the
// e2e test's (test/e2e/transparent_test.go).

// startConsumerDaemon runs yaml, which has a per-consumer transparent
// listener, and returns the running daemon.
func startConsumerDaemon(t *testing.T, yaml string) *daemon {
	t.Helper()
	testenv.DockerAvailable(t)
	got := make(chan *daemon, 1)
	testHookDaemon = func(d *daemon) { got <- d }
	defer func() { testHookDaemon = nil }()
	startAdminDaemon(t, yaml)
	d := <-got
	if d.transp == nil || d.transp.callers == nil {
		t.Fatal("the configuration has no per-consumer transparent listener")
	}
	// Routes built before the events stream opens are dropped when it
	// does; wait, so the test's routes live until the test drops them.
	testenv.WaitFor(t, "the Docker events stream", d.transp.callers.Live)
	return d
}

// perConsumerYAML is a configuration with a per-consumer transparent
// listener on port, and a service on no port a test uses.
func perConsumerYAML(port int) string {
	return fmt.Sprintf(`transparent: {listen: "127.0.0.1:%d", per_consumer: true}
services:
  - name: other
    listen: 127.0.0.1:0
    backends: [127.0.0.1:1]
`, port)
}

// namedEcho is a backend that greets each connection with its name and a
// newline, then echoes.
func namedEcho(t *testing.T, name string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	testenv.Serve(t, ln, func(c net.Conn) {
		fmt.Fprintf(c, "%s\n", name)
		_, _ = io.Copy(c, c)
	})
	return ln.Addr().String()
}

// consumerConn is one connection handed to l as the transparent listener
// hands a redirected one; it returns the client side and the backend's
// greeting.
func consumerConn(t *testing.T, d *daemon, l *proxy.Listener) (net.Conn, *bufio.Reader, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	d.proxy.Handle(d.ctx, l, s, func(error) error { return nil })
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	r := bufio.NewReader(c)
	greet, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("through the consumer's route: %v", err)
	}
	return c, r, strings.TrimSpace(greet)
}

// greeting is the name of the backend a new connection through cr reaches.
func greeting(t *testing.T, d *daemon, cr *consumerRoute) string {
	t.Helper()
	c, _, name := consumerConn(t, d, cr.sv.l)
	c.Close()
	return name
}

func routeOf(t *testing.T, d *daemon, caller *docker.Caller, dst netip.AddrPort) *consumerRoute {
	t.Helper()
	cr := d.consumerRoute(d.transp, caller, dst, caller.Connect[int(dst.Port())])
	if cr.err != nil {
		t.Fatalf("container %s, port %d: %v", caller.Name, dst.Port(), cr.err)
	}
	return cr
}

// routeName is the name consumerRoute gives a caller's route.
func routeName(c *docker.Caller, port int) string {
	return fmt.Sprintf("%s@%.12s:%d", c.Name, c.ID, port)
}

// waitDone waits for every goroutine of a dropped route to return.
func waitDone(t *testing.T, cr *consumerRoute) {
	t.Helper()
	select {
	case <-cr.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("route %s: its providers and health checks still run 30s after it was dropped", cr.sv.svc.Name)
	}
}

// TestConsumerSRV: a consumer names an SRV name (srv:// and the bare
// form), served by a real DNS server; the route follows a change of the
// records, takes the port's service's settings, and its provider stops
// when the route is dropped the way a Docker event drops it.
func TestConsumerSRV(t *testing.T) {
	w := watchRoutes(t)
	a, b, static := namedEcho(t, "srv-a"), namedEcho(t, "srv-b"), namedEcho(t, "static")
	dns := testenv.StartDNS(t)
	dns.SetTTL(0)
	dns.SetA("who.test", "127.0.0.1")
	srv := func(addr string) {
		_, port, _ := splitPort(addr)
		dns.SetSRV("_who._tcp.test", testenv.SRV{Weight: 1, Port: port, Target: "who.test."})
	}
	srv(a)
	tport, sport := testenv.FreePort(t, "127.0.0.1"), testenv.FreePort(t, "127.0.0.1")
	d := startConsumerDaemon(t, fmt.Sprintf(`discovery:
  dns: {server: %q, min_ttl: 10ms, max_ttl: 100ms}
transparent: {listen: "127.0.0.1:%d", per_consumer: true}
services:
  - name: redis
    listen: 127.0.0.1:%d
    backends: [%s]
    balance: least_conn
    retries: 7
`, dns.Addr, tport, sport, static))
	dst := netip.AddrPortFrom(netip.MustParseAddr("203.0.113.7"), uint16(sport))
	for i, value := range []string{"srv://_who._tcp.test", "_who._tcp.test"} {
		t.Run(value, func(t *testing.T) {
			srv(a)
			caller := &docker.Caller{ID: strings.Repeat(string(rune('a'+i)), 64), Name: "web", Connect: map[int]string{sport: value}}
			name := routeName(caller, sport)
			cr := routeOf(t, d, caller, dst)
			if s := cr.sv.svc; s.Balance != "least_conn" || s.Retries != 7 {
				t.Errorf("route took balance %q, retries %d; want the port's service's least_conn, 7", s.Balance, s.Retries)
			}
			w.waitFor(t, name, a)
			if got := greeting(t, d, cr); got != "srv-a" {
				t.Fatalf("answered by %q, want srv-a", got)
			}
			srv(b)
			w.waitFor(t, name, b)
			if got := greeting(t, d, cr); got != "srv-b" {
				t.Fatalf("after the SRV change: answered by %q, want srv-b", got)
			}
			d.forgetCaller(d.transp, caller.ID) // what a Docker event about it does
			waitDone(t, cr)
			if again := d.consumerRoute(d.transp, caller, dst, value); again == cr {
				t.Errorf("the dropped route is still cached")
			}
		})
	}
}

// TestConsumerEtcdContainer: a real container's BACKEND_<port> variable
// names an etcd key (a real embedded etcd); a change of the key moves new
// connections to the new backend while one opened before carries on, and
// removing the container (a real Docker event) drops the route and stops
// its etcd watch.
func TestConsumerEtcdContainer(t *testing.T) {
	w := watchRoutes(t)
	a, b := namedEcho(t, "etcd-a"), namedEcho(t, "etcd-b")
	e := testenv.StartEtcd(t)
	e.Put(t, "/consumers/web/a", a)
	tport := testenv.FreePort(t, "127.0.0.1")
	d := startConsumerDaemon(t, perConsumerYAML(tport))
	network := testenv.NewDockerNetwork(t)
	c := testenv.RunContainer(t, testenv.ContainerSpec{Network: network.ID,
		Env: []string{fmt.Sprintf("BACKEND_6379=etcd://%s/consumers/web", e.Endpoint())}})
	ip := netip.MustParseAddr(c.IP(t, network.Name))
	caller, err := d.transp.callers.Lookup(t.Context(), ip)
	if err != nil || caller == nil {
		t.Fatalf("lookup of container %s at %s: %v, %v", c.Name, ip, caller, err)
	}
	dst := netip.MustParseAddrPort("198.51.100.2:6379")
	cr := routeOf(t, d, caller, dst)
	name := routeName(caller, 6379)
	w.waitFor(t, name, a)
	old, oldR, got := consumerConn(t, d, cr.sv.l)
	if got != "etcd-a" {
		t.Fatalf("answered by %q, want etcd-a", got)
	}

	e.Put(t, "/consumers/web/b", b)
	e.Delete(t, "/consumers/web/a")
	w.waitFor(t, name, b)
	if got := greeting(t, d, cr); got != "etcd-b" {
		t.Fatalf("after the etcd change: answered by %q, want etcd-b", got)
	}
	if _, err := io.WriteString(old, "still here\n"); err != nil {
		t.Fatal(err)
	}
	if echo, err := oldR.ReadString('\n'); err != nil || echo != "still here\n" {
		t.Fatalf("the connection opened before the change: echo %q, %v", echo, err)
	}
	if d.registry.Lookup(name, b) == nil {
		t.Fatalf("the registry has no state for %s of %s", b, name)
	}

	if cr.ctx.Err() != nil {
		t.Fatal("the route was dropped before its container changed")
	}
	c.Remove(t) // the engine reports it: die, destroy
	waitDone(t, cr)
	if d.registry.Lookup(name, b) != nil {
		t.Errorf("the registry still holds %s of the dropped route %s", b, name)
	}
	if n := d.transp.consumerRoutes(); n != 0 {
		t.Errorf("%d consumer routes cached after the container was removed, want 0", n)
	}
	// Dropped, the route still serves the connection it had.
	if _, err := io.WriteString(old, "after\n"); err != nil {
		t.Fatal(err)
	}
	if echo, err := oldR.ReadString('\n'); err != nil || echo != "after\n" {
		t.Fatalf("the connection opened before the drop: echo %q, %v", echo, err)
	}
}

// TestConsumerLink: a consumer names a service of another attache over a
// link (attache://host:port/service); the client daemon dials it with its
// link identity.
func TestConsumerLink(t *testing.T) {
	dir := fleet(t, "host-a", "host-b")
	linkPort := testenv.FreePort(t, "127.0.0.1")
	startAdminDaemon(t, "link:\n"+linkFiles(dir, "host-b")+fmt.Sprintf("  listen: 127.0.0.1:%d\n  offer: {who: [host-a]}\n", linkPort)+
		fmt.Sprintf("services:\n  - name: who\n    listen: 127.0.0.1:0\n    backends: [%s]\n", namedEcho(t, "over-the-link")))
	tport := testenv.FreePort(t, "127.0.0.1")
	d := startConsumerDaemon(t, "link:\n"+linkFiles(dir, "host-a")+perConsumerYAML(tport))
	caller := &docker.Caller{ID: strings.Repeat("ab", 32), Name: "linked", Connect: map[int]string{6379: fmt.Sprintf("attache://127.0.0.1:%d/who", linkPort)}}
	cr := routeOf(t, d, caller, netip.MustParseAddrPort("198.51.100.2:6379"))
	if got := greeting(t, d, cr); got != "over-the-link" {
		t.Fatalf("answered by %q, want over-the-link", got)
	}
}

// TestConsumerBadValues: a malformed value is refused with an error that
// names the container, the port, the value and what was expected; it is
// counted once and cached until the container changes.
func TestConsumerBadValues(t *testing.T) {
	tport := testenv.FreePort(t, "127.0.0.1")
	d := startConsumerDaemon(t, perConsumerYAML(tport))
	tests := []struct{ value, want string }{
		{"10.0.0.1", "an IP address without a port"},
		{"etcd://127.0.0.1:2379", "the key is missing"},
		{"etcd:///key", "the etcd server is missing"},
		{"a.test:1, a.test:1", "lists backend a.test:1 twice"},
		{"a.test:1,,b.test:2", "empty value"},
		{"ftp://x", `unknown backend scheme "ftp"`},
		{"attache://127.0.0.1:7443/svc", "needs a link section"},
		{"a.test:1,attache://127.0.0.1:7443/svc", "mixes attache:// link backends and plain ones"},
	}
	for i, tc := range tests {
		caller := &docker.Caller{ID: fmt.Sprintf("%012d", i) + strings.Repeat("0", 52), Name: fmt.Sprintf("bad%d", i), Connect: map[int]string{6379: tc.value}}
		dst := netip.MustParseAddrPort("198.51.100.2:6379")
		cr := d.consumerRoute(d.transp, caller, dst, tc.value)
		if cr.err == nil {
			t.Errorf("value %q: accepted", tc.value)
			continue
		}
		msg := cr.err.Error()
		for _, want := range []string{"container " + caller.Name, "port 6379", fmt.Sprintf("%q", tc.value), tc.want} {
			if !strings.Contains(msg, want) {
				t.Errorf("value %q: error %q lacks %q", tc.value, msg, want)
			}
		}
		if !isBadConsumerValue(cr.err) {
			t.Errorf("value %q: error %v is not a badConsumerValue", tc.value, cr.err)
		}
		if again := d.consumerRoute(d.transp, caller, dst, tc.value); again != cr {
			t.Errorf("value %q: the refusal was not cached", tc.value)
		}
	}
	if got := d.transp.badValues.Load(); got != int64(len(tests)) {
		t.Errorf("bad values counted %d, want %d (each once)", got, len(tests))
	}
	if n := d.transp.consumerRoutes(); n != 0 {
		t.Errorf("%d routes for malformed values", n)
	}
}

// TestConsumerCacheBound: past maxConsumerRoutes the cache starts over,
// and the providers of the routes it held stop.
func TestConsumerCacheBound(t *testing.T) {
	dns := testenv.StartDNS(t)
	dns.SetA("who.test", "127.0.0.1")
	dns.SetSRV("_who._tcp.test", testenv.SRV{Weight: 1, Port: 1, Target: "who.test."})
	tport := testenv.FreePort(t, "127.0.0.1")
	d := startConsumerDaemon(t, fmt.Sprintf("discovery:\n  dns: {server: %q}\n", dns.Addr)+perConsumerYAML(tport))
	dst := netip.MustParseAddrPort("198.51.100.2:6379")
	caller := func(i int) *docker.Caller {
		return &docker.Caller{ID: fmt.Sprintf("%012x", i) + strings.Repeat("0", 52), Name: fmt.Sprintf("c%d", i)}
	}
	first := d.consumerRoute(d.transp, caller(0), dst, "srv://_who._tcp.test")
	if first.err != nil {
		t.Fatal(first.err)
	}
	for i := 1; i < maxConsumerRoutes; i++ {
		if cr := d.consumerRoute(d.transp, caller(i), dst, "127.0.0.1:1"); cr.err != nil {
			t.Fatal(cr.err)
		}
	}
	if first.ctx.Err() != nil || d.transp.consumerRoutes() != maxConsumerRoutes {
		t.Fatalf("%d routes cached, want %d with the first still running", d.transp.consumerRoutes(), maxConsumerRoutes)
	}
	d.consumerRoute(d.transp, caller(maxConsumerRoutes), dst, "127.0.0.1:1")
	waitDone(t, first)
	if n := d.transp.consumerRoutes(); n != 1 {
		t.Errorf("%d routes cached after the cache started over, want 1", n)
	}
}
