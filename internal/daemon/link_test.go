package daemon

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/attache/attache/internal/certs"
	"github.com/attache/attache/internal/config"
	"github.com/attache/attache/internal/testenv"
)

// fleet makes a CA and host certificates in a temporary directory and
// returns the directory.
func fleet(t *testing.T, hosts ...string) string {
	t.Helper()
	dir := t.TempDir()
	if _, err := certs.Init(certs.InitOptions{Dir: dir}); err != nil {
		t.Fatal(err)
	}
	for _, h := range hosts {
		if _, err := certs.Issue(certs.IssueOptions{Dir: dir, Name: h}); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func linkFiles(dir, host string) string {
	return fmt.Sprintf("  cert: %s\n  key: %s\n  ca: %s\n", filepath.Join(dir, host+".crt"), filepath.Join(dir, host+".key"),
		filepath.Join(dir, certs.DefaultCAName+".crt"))
}

// redisCmd sends one inline command and returns the first reply line.
func redisCmd(t *testing.T, addr, cmd string) (string, error) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(c, cmd+"\r\n"); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// TestLinkBetweenDaemons runs a link server daemon in front of a real
// redis-server and two client daemons: the allowed one reaches redis
// through the link (health checks too), the other is refused until a reload
// of the server adds it to the allow list.
func TestLinkBetweenDaemons(t *testing.T) {
	dir := fleet(t, "host-a", "host-b", "host-x")
	redis := testenv.Redis(t)
	linkPort := testenv.FreePort(t, "127.0.0.1")
	serverYAML := func(allow string) string {
		return "link:\n" + linkFiles(dir, "host-b") + fmt.Sprintf("  listen: 127.0.0.1:%d\n  offer: {redis: [%s]}\n", linkPort, allow) +
			fmt.Sprintf("services:\n  - name: redis\n    listen: 127.0.0.1:0\n    backends: [%s]\n", redis)
	}
	b := startAdminDaemon(t, serverYAML("host-a"))
	clientYAML := func(host string) string {
		return "link:\n" + linkFiles(dir, host) + fmt.Sprintf(`services:
  - name: r
    listen: 127.0.0.1:0
    backends: [attache://127.0.0.1:%d/redis]
    retry_timeout: 1s
    health_check: {interval: 200ms, timeout: 200ms, send: "PING\r\n", expect: "+PONG", rise: 1, fall: 1}
`, linkPort)
	}
	a := startAdminDaemon(t, clientYAML("host-a"))
	x := startAdminDaemon(t, clientYAML("host-x"))

	aAddr := a.bound[0].Addr.String()
	if got, err := redisCmd(t, aAddr, "SET linked yes"); err != nil || got != "+OK" {
		t.Fatalf("SET through the link: %q, %v", got, err)
	}
	if got, err := redisCmd(t, aAddr, "GET linked"); err != nil || got != "$3" {
		t.Fatalf("GET through the link: %q, %v", got, err)
	}
	// Half-close across the link: the command, then EOF; the whole reply
	// comes back, then EOF.
	c, err := net.Dial("tcp", aAddr)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	_, _ = io.WriteString(c, "PING\r\nECHO half-closed\r\n")
	_ = c.(*net.TCPConn).CloseWrite()
	all, err := io.ReadAll(c)
	c.Close()
	if err != nil || string(all) != "+PONG\r\n$11\r\nhalf-closed\r\n" {
		t.Fatalf("after half-close: %q, %v", all, err)
	}

	// The health check goes over the link and passes.
	testenv.WaitFor(t, "health check over the link", func() bool {
		sv := a.services(t)["r"]
		return len(sv.Backends) == 1 && sv.Backends[0].Check == "passing"
	})
	fa := a.scrape(t)
	if v := value(fa, "attache_link_handshakes_total", map[string]string{"side": "client"}); v < 1 {
		t.Errorf("client handshakes %v, want at least 1", v)
	}

	// host-x is not on the allow list: its client sees the connection
	// closed, and the server counts and logs why.
	if got, err := redisCmd(t, x.bound[0].Addr.String(), "PING"); err == nil {
		t.Errorf("host-x reached redis through the link: %q", got)
	}
	testenv.WaitFor(t, "not_allowed counted", func() bool {
		return value(b.scrape(t), "attache_link_refused_total", map[string]string{"reason": "not_allowed"}) >= 1
	})
	fb := b.scrape(t)
	if v := value(fb, "attache_link_handshakes_total", map[string]string{"side": "server", "resumed": "false"}); v < 1 {
		t.Errorf("server handshakes %v, want at least 1", v)
	}
	if v := value(fb, "attache_proxy_connections_accepted_total", map[string]string{"service": "redis"}); v < 3 {
		t.Errorf("the link streams were not counted on service redis: accepted %v", v)
	}

	// A reload adds host-x: it gets through now, host-a still does.
	if err := b.reload(serverYAML("host-a, host-x")); err != nil {
		t.Fatalf("reload: %v", err)
	}
	testenv.WaitFor(t, "host-x allowed after the reload", func() bool {
		got, err := redisCmd(t, x.bound[0].Addr.String(), "PING")
		return err == nil && got == "+PONG"
	})
	if got, err := redisCmd(t, aAddr, "PING"); err != nil || got != "+PONG" {
		t.Fatalf("host-a after the reload: %q, %v", got, err)
	}
}

// TestLinkStartErrors: a missing certificate file or a link port in use
// stop the start, naming the cause, with nothing left listening.
func TestLinkStartErrors(t *testing.T) {
	dir := fleet(t, "host-b")
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	free := testenv.FreePort(t, "127.0.0.1")
	svc := fmt.Sprintf("services:\n  - name: s\n    listen: 127.0.0.1:%d\n    backends: [127.0.0.1:1]\n", free)
	tests := []struct {
		name, yaml, want string
	}{
		{"missing key file", "link:\n  cert: " + filepath.Join(dir, "host-b.crt") + "\n  key: " + filepath.Join(dir, "nope.key") +
			"\n  ca: " + filepath.Join(dir, "fleet-ca.crt") + "\n" + svc, "nope.key: no such file"},
		{"link port taken", "link:\n" + linkFiles(dir, "host-b") + "  listen: " + taken.Addr().String() + "\n  offer: {s: [a]}\n" + svc,
			"link server: listen " + taken.Addr().String()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := loadYAML(tt.yaml)
			if err != nil {
				t.Fatal(err)
			}
			err = Run(t.Context(), cfg, Options{})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Run = %v, want an error containing %q", err, tt.want)
			}
			ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", free))
			if err != nil {
				t.Fatalf("service port left open: %v", err)
			}
			ln.Close()
		})
	}
}

func loadYAML(y string) (*config.Config, error) {
	return config.Load(config.Sources{FileData: []byte(y), File: "test.yaml"})
}

// speakFirst is a backend that writes a greeting, half-closes, and then
// reads until EOF: it hands over what it read after its own EOF.
func speakFirst(t *testing.T, greeting string) (string, <-chan string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 4)
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(20 * time.Second))
				_, _ = io.WriteString(c, greeting)
				_ = c.(*net.TCPConn).CloseWrite()
				b, err := io.ReadAll(c)
				if err != nil {
					b = append(b, "; error: "+err.Error()...)
				}
				got <- string(b)
			})
		}
	})
	return ln.Addr().String(), got
}

// TestLinkForwardingAcrossDaemons: the forwarding features a plain backend
// has hold across a link, on the daemons' own data path: half-close from
// the backend's side, the idle timeout of either ambassador, an active
// health check that probes the remote service (not the link port), TLS
// session resumption, and link servers found through DNS SRV.
func TestLinkForwardingAcrossDaemons(t *testing.T) {
	dir := fleet(t, "host-a", "host-b")
	echo := testenv.Echo(t, "127.0.0.1:0")
	greeter, heard := speakFirst(t, "hello, then EOF\n")
	dead := testenv.FreePort(t, "127.0.0.1")
	linkPort := testenv.FreePort(t, "127.0.0.1")
	b := startAdminDaemon(t, "link:\n"+linkFiles(dir, "host-b")+fmt.Sprintf(`  listen: 127.0.0.1:%d
  offer: {greeter: [host-a], echo: [host-a], slow: [host-a], dead: [host-a]}
services:
  - {name: greeter, listen: "127.0.0.1:0", backends: [%s]}
  - {name: echo, listen: "127.0.0.1:0", backends: [%s]}
  - {name: slow, listen: "127.0.0.1:0", backends: [%s], idle_timeout: 300ms}
  - {name: dead, listen: "127.0.0.1:0", backends: ["127.0.0.1:%d"]}
`, linkPort, greeter, echo, echo, dead))

	dnsSrv := testenv.StartDNS(t)
	dnsSrv.SetTTL(0)
	dnsSrv.SetA("linkhost.test", "127.0.0.1")
	dnsSrv.SetSRV("_link._tcp.test", testenv.SRV{Weight: 1, Port: uint16(linkPort), Target: "linkhost.test."})
	link := fmt.Sprintf("attache://127.0.0.1:%d/", linkPort)
	tcpCheck := "{interval: 300ms, timeout: 300ms, rise: 1, fall: 1}"
	a := startAdminDaemon(t, "link:\n"+linkFiles(dir, "host-a")+fmt.Sprintf(`discovery:
  dns: {server: %q, min_ttl: 10ms, max_ttl: 50ms}
services:
  - {name: g, listen: "127.0.0.1:0", backends: [%sgreeter]}
  - {name: e, listen: "127.0.0.1:0", backends: [%secho], idle_timeout: 300ms, health_check: %s}
  - {name: s, listen: "127.0.0.1:0", backends: [%sslow]}
  - {name: d, listen: "127.0.0.1:0", backends: [%sdead], retry_timeout: 1s, health_check: %s}
  - {name: v, listen: "127.0.0.1:0", backends: [attache://_link._tcp.test/echo]}
`, dnsSrv.Addr, link, link, tcpCheck, link, link, tcpCheck))
	addr := map[string]string{}
	for _, bd := range a.bound {
		addr[bd.Service] = bd.Addr.String()
	}
	dial := func(t *testing.T, service string) net.Conn {
		t.Helper()
		c, err := net.Dial("tcp", addr[service])
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		return c
	}
	roundTrip := func(t *testing.T, c net.Conn, msg string) {
		t.Helper()
		if _, err := io.WriteString(c, msg); err != nil {
			t.Fatalf("write: %v", err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
			t.Fatalf("echo across the link: %q, %v; want %q", got, err, msg)
		}
	}

	t.Run("half-close from the backend", func(t *testing.T) {
		c := dial(t, "g")
		defer c.Close()
		// The backend's EOF reaches the client while the client's side
		// stays open...
		first, err := io.ReadAll(c)
		if err != nil || string(first) != "hello, then EOF\n" {
			t.Fatalf("greeting then EOF: %q, %v", first, err)
		}
		// ...and what the client sends after it still reaches the
		// backend, followed by the client's own EOF.
		if _, err := io.WriteString(c, "still talking"); err != nil {
			t.Fatalf("write after the backend's EOF: %v", err)
		}
		_ = c.(*net.TCPConn).CloseWrite()
		select {
		case got := <-heard:
			if got != "still talking" {
				t.Fatalf("the backend read %q after its EOF, want %q", got, "still talking")
			}
		case <-time.After(20 * time.Second):
			t.Fatal("the backend never saw the client's bytes and EOF")
		}
	})

	t.Run("idle timeout", func(t *testing.T) {
		// e has the idle timeout on this side of the link, slow on the
		// link server's side: either closes the client's connection.
		for _, service := range []string{"e", "s"} {
			c := dial(t, service)
			roundTrip(t, c, "busy")
			n, err := c.Read(make([]byte, 1))
			c.Close()
			if n != 0 || err != io.EOF {
				t.Errorf("service %s: an idle connection read %d bytes, %v; want the ambassadors to close it (EOF)", service, n, err)
			}
		}
	})

	t.Run("health check probes the remote service", func(t *testing.T) {
		// Both checks dial the same link port; only the one whose remote
		// backend is up passes.
		testenv.WaitFor(t, "e passing and d failing", func() bool {
			sv := a.services(t)
			e, d := sv["e"].Backends, sv["d"].Backends
			return len(e) == 1 && e[0].Check == "passing" && len(d) == 1 && d[0].Check == "failing"
		})
		if v := value(b.scrape(t), "attache_link_refused_total", map[string]string{"reason": "no_backend"}); v < 1 {
			t.Errorf("the link server counted %v no_backend refusals, want at least one (d's checks)", v)
		}
	})

	t.Run("streams share the pooled connections", func(t *testing.T) {
		client := map[string]string{"side": "client"}
		before := value(a.scrape(t), "attache_link_streams_opened_total", client)
		for range 3 {
			c := dial(t, "s")
			roundTrip(t, c, "pooled")
			c.Close()
		}
		if v := value(a.scrape(t), "attache_link_streams_opened_total", client); v < before+3 {
			t.Errorf("client streams opened went from %v to %v, want at least 3 more", before, v)
		}
		// Every stream so far (these, the other subtests', the health
		// checks') went over the pooled TLS connections to the one link
		// server: one per CPU, the second dialled in the background once
		// streams share the first.
		want := float64(min(runtime.GOMAXPROCS(0), 4))
		testenv.WaitFor(t, "the pooled connections", func() bool {
			return value(a.scrape(t), "attache_link_sessions_opened_total", client) >= want
		})
		m := a.scrape(t)
		if v := value(m, "attache_link_sessions_opened_total", client); v != want {
			t.Errorf("client opened %v pooled connections, want %v", v, want)
		}
		full := value(m, "attache_link_handshakes_total", map[string]string{"side": "client", "resumed": "false"})
		resumed := value(m, "attache_link_handshakes_total", map[string]string{"side": "client", "resumed": "true"})
		if full+resumed != want {
			t.Errorf("client TLS handshakes %v, want %v", full+resumed, want)
		}
		server := map[string]string{"side": "server"}
		testenv.WaitFor(t, "the link server's side of them", func() bool {
			return value(b.scrape(t), "attache_link_sessions", server) >= want
		})
		if v := value(b.scrape(t), "attache_link_sessions", server); v != want {
			t.Errorf("the link server has %v pooled connections open, want %v", v, want)
		}
	})

	t.Run("link server found through DNS SRV", func(t *testing.T) {
		var c net.Conn
		testenv.WaitFor(t, "v served through the SRV-discovered link server", func() bool {
			cc := dial(t, "v")
			if _, err := io.WriteString(cc, "srv"); err != nil {
				cc.Close()
				return false
			}
			got := make([]byte, 3)
			if _, err := io.ReadFull(cc, got); err != nil || string(got) != "srv" {
				cc.Close()
				return false
			}
			c = cc
			return true
		})
		roundTrip(t, c, "found by SRV")
		c.Close()
	})
}
