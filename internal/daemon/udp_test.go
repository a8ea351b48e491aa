package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/attache/attache/internal/config"
	"github.com/attache/attache/internal/testenv"
)

// lookupA asks server for name's A records over network ("udp" or
// "tcp"), retrying a lost UDP datagram, and returns the addresses sorted.
func lookupA(server, network, name string) ([]string, error) {
	c := &dns.Client{Net: network, Timeout: 2 * time.Second}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	var err error
	for range 10 {
		var r *dns.Msg
		r, _, err = c.Exchange(m, server)
		if err != nil {
			continue
		}
		if r.Id != m.Id || len(r.Question) != 1 || r.Question[0].Name != dns.Fqdn(name) {
			return nil, fmt.Errorf("asked %s, got an answer to %v", name, r.Question)
		}
		var out []string
		for _, rr := range r.Answer {
			if a, ok := rr.(*dns.A); ok {
				out = append(out, a.A.String())
			}
		}
		slices.Sort(out)
		return out, nil
	}
	return nil, err
}

// TestUDPDNSThroughAttache: a real DNS server behind a TCP and a UDP
// service on the same port; many resolvers at once, each asking its own
// name over UDP, get their own answers; TCP works beside it; the admin API
// and the metrics count the UDP sessions.
func TestUDPDNSThroughAttache(t *testing.T) {
	srv := testenv.StartDNS(t)
	const names = 30
	for i := range names {
		srv.SetA(fmt.Sprintf("host%d.test", i), fmt.Sprintf("10.0.%d.%d", i/250, i%250+1))
	}
	port := testenv.FreeTCPUDPPort(t)
	d := startAdminDaemon(t, fmt.Sprintf(`services:
  - {name: dns-tcp, listen: "127.0.0.1:%[1]d", backends: [%[2]q]}
  - {name: dns, protocol: udp, listen: "127.0.0.1:%[1]d", backends: [%[2]q], udp_idle_timeout: 1m}
`, port, srv.Addr))
	if len(d.bound) != 2 || d.bound[0].Service != "dns-tcp" || d.bound[1].Service != "dns" {
		t.Fatalf("bound %v, want dns-tcp then dns, in service order", d.bound)
	}
	if _, ok := d.bound[1].Addr.(*net.UDPAddr); !ok {
		t.Fatalf("the udp service is bound to %T", d.bound[1].Addr)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)

	var wg sync.WaitGroup
	errs := make(chan error, names)
	for i := range names {
		wg.Go(func() {
			name := fmt.Sprintf("host%d.test", i)
			got, err := lookupA(addr, "udp", name)
			want := []string{fmt.Sprintf("10.0.%d.%d", i/250, i%250+1)}
			if err != nil || !slices.Equal(got, want) {
				errs <- fmt.Errorf("%s over udp: %v, %v; want %v", name, got, err, want)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got, err := lookupA(addr, "tcp", "host1.test"); err != nil || !slices.Equal(got, []string{"10.0.0.2"}) {
		t.Errorf("over tcp on the same port: %v, %v", got, err)
	}
	if n := srv.TCPQueries("host1.test."); n != 1 {
		t.Errorf("the DNS server saw %d TCP queries, want 1", n)
	}

	// Every lookup came from a socket of its own: a session each, at
	// least (a resent query reuses its socket, so its session).
	s := d.services(t)["dns"]
	if s.Protocol != "udp" || s.UDP == nil {
		t.Fatalf("admin view of the udp service: %+v", s)
	}
	if s.Connections.Accepted != names || s.UDP.PacketsIn < names || s.UDP.MaxSessions != config.DefaultMaxSessions {
		t.Errorf("sessions %d, datagrams in %d, max %d; want %d sessions, >= %d datagrams, %d max",
			s.Connections.Accepted, s.UDP.PacketsIn, s.UDP.MaxSessions, names, names, config.DefaultMaxSessions)
	}
	if s.Connections.Active != names || s.Backends[0].Active != names {
		t.Errorf("active sessions %d, on the backend %d; want %d (idle ones last a minute)",
			s.Connections.Active, s.Backends[0].Active, names)
	}
	if tcp := d.services(t)["dns-tcp"]; tcp.Protocol != "tcp" || tcp.Connections.Accepted != 1 {
		t.Errorf("admin view of the tcp service: protocol %q, accepted %d", tcp.Protocol, tcp.Connections.Accepted)
	}
	fams := d.scrape(t)
	for _, m := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"attache_udp_sessions_created_total", map[string]string{"service": "dns"}, names},
		{"attache_udp_sessions_active", map[string]string{"service": "dns"}, names},
		{"attache_udp_sessions_max", map[string]string{"service": "dns"}, config.DefaultMaxSessions},
		{"attache_proxy_connections_accepted_total", map[string]string{"service": "dns"}, names},
		{"attache_udp_datagrams_dropped_total", map[string]string{"service": "dns", "reason": "table_full"}, 0},
	} {
		if got := value(fams, m.name, m.labels); got != m.want {
			t.Errorf("%s%v = %v, want %v", m.name, m.labels, got, m.want)
		}
	}
	if got := value(fams, "attache_udp_datagrams_total", map[string]string{"service": "dns", "direction": "out"}); got < names {
		t.Errorf("datagrams out %v, want at least %d", got, names)
	}
}

// TestUDPLinkVariable: DNS_PORT_<p>_UDP=udp://host:port, through config.Load
// and the daemon, end to end.
func TestUDPLinkVariable(t *testing.T) {
	srv := testenv.StartDNS(t)
	srv.SetA("db.test", "10.9.8.7")
	port := testenv.FreeTCPUDPPort(t)
	cfg, err := config.Load(config.Sources{Env: []string{
		fmt.Sprintf("DNS_PORT_%d_UDP=udp://%s", port, srv.Addr),
		"DNS_NAME=/app/dns",
	}})
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Services) != 1 || !cfg.Services[0].IsUDP() || cfg.Services[0].Name != fmt.Sprintf("dns-%d-udp", port) {
		t.Fatalf("services %+v", cfg.Services)
	}
	d := startRun(t, cfg, Options{})
	got, err := lookupA(fmt.Sprintf("127.0.0.1:%d", port), "udp", "db.test")
	if err != nil || !slices.Equal(got, []string{"10.9.8.7"}) {
		t.Errorf("lookup through the link variable's service: %v, %v", got, err)
	}
	if err := d.Stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	// The port is closed again: a new socket can take it without
	// SO_REUSEPORT.
	pc, err := net.ListenPacket("udp4", fmt.Sprintf("0.0.0.0:%d", port))
	if err != nil {
		t.Fatalf("udp port still held after Run returned: %v", err)
	}
	pc.Close()
}

// udpPeer is a UDP client of the daemon.
type udpPeer struct{ *net.UDPConn }

func dialUDP(t *testing.T, addr net.Addr) udpPeer {
	t.Helper()
	c, err := net.DialUDP("udp4", nil, addr.(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return udpPeer{c}
}

// ask sends msg until a reply ending in it arrives (20 s at most) and
// returns the reply; replies to its earlier messages are skipped.
func (c udpPeer) ask(t *testing.T, msg string) string {
	t.Helper()
	got, err := testenv.Exchange(c, msg, func(reply string) (bool, error) {
		return strings.HasSuffix(reply, ":"+msg), nil
	})
	if err != nil {
		t.Fatalf("ask %q: %v", msg, err)
	}
	return got
}

// TestUDPDiscoveryAndHealth: a UDP service fed by DNS SRV discovery with a
// datagram health check. A session moves when its backend leaves
// discovery, and when its backend stops answering the check; a drained
// backend keeps its session and takes no new one.
func TestUDPDiscoveryAndHealth(t *testing.T) {
	w := watchRoutes(t)
	verdicts := make(chan string, 64)
	testHookHealth = func(service, addr string, healthy bool) { verdicts <- fmt.Sprintf("%s %s %v", service, addr, healthy) }
	t.Cleanup(func() { testHookHealth = nil })
	a := testenv.StartUDPEcho(t, "127.0.0.1:0", "A:")
	b := testenv.StartUDPEcho(t, "127.0.0.1:0", "B:")
	srv := testenv.StartDNS(t)
	srv.SetTTL(0)
	srv.SetA("echo.test", "127.0.0.1")
	setSRV := func(backends ...*testenv.UDPEcho) {
		var recs []testenv.SRV
		for _, e := range backends {
			_, port, _ := splitPort(e.Addr)
			recs = append(recs, testenv.SRV{Weight: 1, Port: port, Target: "echo.test."})
		}
		srv.SetSRV("_echo._udp.test", recs...)
	}
	setSRV(a, b)
	d := startAdminDaemonToken(t, fmt.Sprintf(`discovery:
  dns: {server: %q, min_ttl: 10ms, max_ttl: 100ms}
services:
  - name: echo
    protocol: udp
    listen: 127.0.0.1:0
    balance: round_robin
    backends: [srv://_echo._udp.test]
    health_check: {send: ping, expect: "ping", interval: 50ms, timeout: 40ms, rise: 1, fall: 1}
`, srv.Addr), testToken)
	w.waitFor(t, "echo", a.Addr, b.Addr)
	addr := d.bound[0].Addr

	c := dialUDP(t, addr)
	first := c.ask(t, "one")[:1] // "A" or "B"
	on, other := a, b
	if first == "B" {
		on, other = b, a
	}
	// Discovery drops the session's backend: the next datagram moves it.
	setSRV(other)
	w.waitFor(t, "echo", other.Addr)
	if got := c.ask(t, "two"); got != other.Prefix+"two" {
		t.Fatalf("after discovery dropped %s: %q", on.Addr, got)
	}
	setSRV(a, b)
	w.waitFor(t, "echo", a.Addr, b.Addr)

	// The session's backend (now other) stops answering: its check fails
	// and the session moves back.
	other.SetSilent(true)
	waitVerdict(t, verdicts, fmt.Sprintf("echo %s false", other.Addr))
	if got := c.ask(t, "three"); got != on.Prefix+"three" {
		t.Fatalf("after %s failed its check: %q", other.Addr, got)
	}
	other.SetSilent(false)
	waitVerdict(t, verdicts, fmt.Sprintf("echo %s true", other.Addr))

	// Drain the backend the session is on: it stays there, new clients go
	// to the other.
	code, _, body := d.call(t, http.MethodPost, "/v1/services/echo/backends/"+on.Addr+"/drain", testToken, "")
	if code != http.StatusOK {
		t.Fatalf("drain: %d %s", code, body)
	}
	for i := range 4 {
		if got := dialUDP(t, addr).ask(t, fmt.Sprint("new", i)); !strings.HasPrefix(got, other.Prefix) {
			t.Errorf("a new client went to %q while %s drains", got, on.Addr)
		}
	}
	if got := c.ask(t, "four"); got != on.Prefix+"four" {
		t.Errorf("the session on the drained backend moved: %q", got)
	}
	s := d.services(t)["echo"]
	var drained bool
	for _, be := range s.Backends {
		if be.Addr == on.Addr {
			drained = be.Draining && be.Active == 1
		}
	}
	if !drained {
		t.Errorf("admin view while draining: %+v", s.Backends)
	}
	if s.UDP.Moved != 2 {
		t.Errorf("moved %d sessions, want 2", s.UDP.Moved)
	}
}

func waitVerdict(t *testing.T, verdicts <-chan string, want string) {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case v := <-verdicts:
			if v == want {
				return
			}
		case <-timeout:
			t.Fatalf("no health verdict %q", want)
		}
	}
}

// TestUDPReload: a reload keeps a UDP service's socket and sessions, adds
// and removes UDP services, and applies new settings.
func TestUDPReload(t *testing.T) {
	echo := testenv.StartUDPEcho(t, "127.0.0.1:0", "e:")
	ports := []int{testenv.FreeTCPUDPPort(t), testenv.FreeTCPUDPPort(t)}
	svc := func(name string, port int, extra string) string {
		return fmt.Sprintf("  - {name: %s, protocol: udp, listen: \"127.0.0.1:%d\", backends: [%q]%s}\n", name, port, echo.Addr, extra)
	}
	d := startAdminDaemon(t, "services:\n"+svc("kept", ports[0], ""))
	c := dialUDP(t, d.bound[0].Addr)
	c.ask(t, "before")
	if err := d.reload("services:\n" + svc("kept", ports[0], ", max_sessions: 5") + svc("added", ports[1], "")); err != nil {
		t.Fatal(err)
	}
	c.ask(t, "after")
	ss := d.services(t)
	if k := ss["kept"]; k.Connections.Accepted != 1 || k.UDP.MaxSessions != 5 {
		t.Errorf("kept service after the reload: %d sessions created (want 1: the session carried on), max %d (want 5)",
			k.Connections.Accepted, k.UDP.MaxSessions)
	}
	added := dialUDP(t, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: ports[1]})
	added.ask(t, "hello")
	// Removing a service closes its socket.
	if err := d.reload("services:\n" + svc("added", ports[1], "")); err != nil {
		t.Fatal(err)
	}
	if _, ok := d.services(t)["kept"]; ok {
		t.Error("removed service still listed")
	}
	testenv.WaitFor(t, "the removed service's port to close", func() bool {
		pc, err := net.ListenPacket("udp4", fmt.Sprintf("127.0.0.1:%d", ports[0]))
		if err == nil {
			pc.Close()
		}
		return err == nil
	})
	added.ask(t, "still")

	// A reload whose new UDP port is taken changes nothing.
	taken, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	bad := "services:\n" + svc("added", ports[1], "") + fmt.Sprintf("  - {name: x, protocol: udp, listen: %q, backends: [%q]}\n", taken.LocalAddr().String(), echo.Addr)
	if err := d.reload(bad); err == nil || !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("reload onto a taken port: %v", err)
	}
	if _, ok := d.services(t)["x"]; ok {
		t.Error("the failed reload added its service")
	}
	added.ask(t, "unchanged")
}

// TestUDPAllListenersOrNone: a UDP port that is taken fails Run, and the
// TCP listener opened before it is closed again.
func TestUDPAllListenersOrNone(t *testing.T) {
	taken, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	free := testenv.FreePort(t, "127.0.0.1")
	u := service("u", taken.LocalAddr().String(), "127.0.0.1:1")
	u.Protocol = config.ProtoUDP
	cfg := &config.Config{Services: []config.Service{service("a", fmt.Sprintf("127.0.0.1:%d", free), "127.0.0.1:1"), u}}
	err = Run(context.Background(), cfg, Options{})
	var le *ListenError
	if !errors.As(err, &le) || le.Service.Name != "u" || !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("Run = %v; want a ListenError for service u with EADDRINUSE", err)
	}
	testenv.RequireClosed(t, fmt.Sprintf("127.0.0.1:%d", free)) // service a's
}

func TestUDPNetwork(t *testing.T) {
	for addr, want := range map[string]string{
		"0.0.0.0:53": "udp4", "127.0.0.1:1": "udp4", "[::1]:1": "udp6", "[::]:1": "udp", ":53": "udp", "localhost:53": "udp",
	} {
		if got := udpNetwork(addr); got != want {
			t.Errorf("udpNetwork(%q) = %q, want %q", addr, got, want)
		}
	}
}

// TestUDPDNSHealthCheck: the README's DNS health check (a query for the
// root's SOA record, written with YAML escapes) passes against a real DNS
// server; one expecting another query id fails and says why.
func TestUDPDNSHealthCheck(t *testing.T) {
	srv := testenv.StartDNS(t)
	const query = `"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x06\x00\x01"`
	d := startAdminDaemon(t, fmt.Sprintf(`services:
  - name: good
    protocol: udp
    listen: 127.0.0.1:0
    backends: [%[1]q]
    health_check: {send: %[2]s, expect: "\x12\x34", interval: 50ms, timeout: 40ms, rise: 1, fall: 1}
  - name: bad
    protocol: udp
    listen: 127.0.0.1:0
    backends: [%[1]q]
    health_check: {send: %[2]s, expect: "\x56\x78", interval: 50ms, timeout: 40ms, rise: 1, fall: 1}
`, srv.Addr, query))
	testenv.WaitFor(t, "both checks to run", func() bool {
		ss := d.services(t)
		if len(ss["good"].Backends) == 0 || len(ss["bad"].Backends) == 0 {
			t.Fatalf("services: %+v", ss)
		}
		return !ss["good"].Backends[0].LastCheck.IsZero() && ss["bad"].Backends[0].Check == "failing"
	})
	ss := d.services(t)
	if g := ss["good"].Backends[0]; g.Check != "passing" || g.LastError != "" || !g.Healthy {
		t.Errorf("the README's DNS check: %+v", g)
	}
	if b := ss["bad"].Backends[0]; b.Healthy || !strings.Contains(b.LastError, `expected "Vx"`) {
		t.Errorf("a check expecting another id: %+v", b)
	}
	if srv.Queries(".") == 0 {
		t.Error("the DNS server saw no query for the root")
	}
}
