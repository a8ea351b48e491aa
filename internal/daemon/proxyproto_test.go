package daemon

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/attache/attache/internal/admin"
	"github.com/attache/attache/internal/config"
	"github.com/attache/attache/internal/testenv"
)

// whoFrontend is an HAProxy frontend that requires a PROXY header
// (accept-proxy: a connection without one is refused) and answers every
// HTTP request with the client address the header gave it.
func whoFrontend(port int) string {
	return fmt.Sprintf(`
frontend who
    mode http
    bind 127.0.0.1:%d accept-proxy
    http-request return status 200 content-type text/plain lf-string "src=%%[src] src_port=%%[src_port] dst=%%[dst] dst_port=%%[dst_port] end"
`, port)
}

// askWho sends an HTTP request from the local address from (nil: any) to
// addr and returns what an HAProxy who frontend at the end of the chain
// answered, and the client's own address.
func askWho(t *testing.T, network, from, addr string) (body string, client *net.TCPAddr) {
	t.Helper()
	d := net.Dialer{Timeout: 10 * time.Second}
	if from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	c, err := d.Dial(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.0\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading the reply: %v (got %q)", err, resp)
	}
	if !strings.HasPrefix(string(resp), "HTTP/1.1 200 ") {
		t.Fatalf("reply %q, want a 200", resp)
	}
	_, body, _ = strings.Cut(string(resp), "\r\n\r\n")
	return body, c.LocalAddr().(*net.TCPAddr)
}

func boundAddr(t *testing.T, d *adminDaemon, service string) string {
	t.Helper()
	for _, b := range d.bound {
		if b.Service == service {
			return b.Addr.String()
		}
	}
	t.Fatalf("service %s is not bound: %+v", service, d.bound)
	return ""
}

// TestSendProxyToHAProxy: attache sends v1 and v2 headers to a real HAProxy
// that requires them, which reports the client's own address and port (an
// IPv4 client from 127.0.0.2, and an IPv6 one), and health checks reach it
// with a LOCAL header where a plain check is refused.
func TestSendProxyToHAProxy(t *testing.T) {
	who := testenv.FreePort(t, "127.0.0.1")
	testenv.HAProxy(t, whoFrontend(who), fmt.Sprintf("127.0.0.1:%d", who))
	backend := fmt.Sprintf("127.0.0.1:%d", who)
	check := `{interval: 500ms, timeout: 500ms, rise: 1, fall: 1, send: "GET / HTTP/1.0\r\n\r\n", expect: "src="}`
	// Distinct listen addresses: the daemon tells services apart by them.
	p := testenv.FreePorts(t, "127.0.0.1", 3)
	d := startAdminDaemon(t, fmt.Sprintf(`services:
  - {name: v1, listen: "127.0.0.1:%[3]d", send_proxy: v1, backends: ["%[1]s"], health_check: %[2]s}
  - {name: v2, listen: "127.0.0.1:%[4]d", send_proxy: v2, backends: ["%[1]s"], health_check: %[2]s}
  - {name: v6, listen: "[::1]:0", backends: [{addr: "%[1]s", send_proxy: v2}], health_check: %[2]s}
  - {name: plain, listen: "127.0.0.1:%[5]d", backends: ["%[1]s"], health_check: %[2]s}
`, backend, check, p[0], p[1], p[2]))
	for _, tt := range []struct{ service, network, from, src string }{
		{"v1", "tcp4", "127.0.0.2", "127.0.0.2"},
		{"v2", "tcp4", "127.0.0.2", "127.0.0.2"},
		{"v6", "tcp6", "", "::1"},
	} {
		t.Run(tt.service, func(t *testing.T) {
			addr := boundAddr(t, d, tt.service)
			body, client := askWho(t, tt.network, tt.from, addr)
			_, port, _ := net.SplitHostPort(addr)
			want := fmt.Sprintf("src=%s src_port=%d dst=%s dst_port=%s end", tt.src, client.Port, tt.src, port)
			if tt.from != "" {
				want = fmt.Sprintf("src=%s src_port=%d dst=127.0.0.1 dst_port=%s end", tt.src, client.Port, port)
			}
			if body != want {
				t.Fatalf("HAProxy saw %q, want %q", body, want)
			}
		})
	}
	// Each check is a full HTTP exchange with HAProxy, so passing checks
	// prove the LOCAL header was accepted; the plain service's checks are
	// refused for want of a header.
	testenv.WaitFor(t, "checks passing with a header and failing without", func() bool {
		svcs := d.services(t)
		for _, name := range []string{"v1", "v2", "v6"} {
			b := svcs[name].Backends[0]
			if b.Check != admin.CheckPassing || b.LastCheck.IsZero() || b.LastError != "" {
				return false
			}
		}
		return svcs["plain"].Backends[0].Check == admin.CheckFailing
	})
}

// TestAcceptProxyBehindHAProxy: a client reaches attache through a real
// HAProxy that sends send-proxy or send-proxy-v2; attache takes the
// client's address from the header and passes it on to a second HAProxy,
// which reports the original client. A client that connects to attache
// directly, from outside the trusted range, is refused and counted.
func TestAcceptProxyBehindHAProxy(t *testing.T) {
	ports := testenv.FreePorts(t, "127.0.0.1", 5)
	who, lbV1, lbV2, attV1, attV2 := ports[0], ports[1], ports[2], ports[3], ports[4]
	d := startAdminDaemon(t, fmt.Sprintf(`services:
  - name: from-v1
    listen: 127.0.0.1:%[2]d
    accept_proxy: {trusted: [127.0.0.1]}
    send_proxy: v2
    backends: [127.0.0.1:%[1]d]
  - name: from-v2
    listen: 127.0.0.1:%[3]d
    accept_proxy: {trusted: [127.0.0.1/32]}
    send_proxy: v1
    backends: [127.0.0.1:%[1]d]
`, who, attV1, attV2))
	testenv.HAProxy(t, whoFrontend(who)+fmt.Sprintf(`
listen lb-v1
    bind 127.0.0.1:%d
    server attache 127.0.0.1:%d send-proxy

listen lb-v2
    bind 127.0.0.1:%d
    server attache 127.0.0.1:%d send-proxy-v2
`, lbV1, attV1, lbV2, attV2), fmt.Sprintf("127.0.0.1:%d", who))
	for _, tt := range []struct {
		name string
		lb   int
	}{{"from-v1", lbV1}, {"from-v2", lbV2}} {
		t.Run(tt.name, func(t *testing.T) {
			body, client := askWho(t, "tcp4", "127.0.0.2", fmt.Sprintf("127.0.0.1:%d", tt.lb))
			want := fmt.Sprintf("src=127.0.0.2 src_port=%d dst=127.0.0.1 dst_port=%d end", client.Port, tt.lb)
			if body != want {
				t.Fatalf("the far end saw %q, want %q", body, want)
			}
		})
	}
	// Straight to attache from 127.0.0.3: not a trusted load balancer.
	dl := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.3")}, Timeout: 10 * time.Second}
	c, err := dl.Dial("tcp4", fmt.Sprintf("127.0.0.1:%d", attV1))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	io.WriteString(c, "PROXY TCP4 6.6.6.6 127.0.0.1 1 2\r\nGET / HTTP/1.0\r\n\r\n")
	if b, err := io.ReadAll(c); len(b) > 0 || err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("untrusted client read %q, %v; want the connection closed", b, err)
	}
	testenv.WaitFor(t, "the refusal counted", func() bool {
		return value(d.scrape(t), "attache_proxy_protocol_rejected_total", map[string]string{"service": "from-v1"}) == 1 &&
			d.services(t)["from-v1"].Connections.ProxyRejected == 1
	})
	if n := value(d.scrape(t), "attache_proxy_protocol_rejected_total", map[string]string{"service": "from-v2"}); n != 0 {
		t.Fatalf("from-v2 rejected %v connections, want 0", n)
	}
}

// TestUnixSocketsRedis: a Unix socket listener in front of a real
// redis-server on its Unix socket, with a PING health check over it; a
// stale socket file at the listen path is replaced, and the file is
// removed when the daemon stops.
func TestUnixSocketsRedis(t *testing.T) {
	dir := t.TempDir()
	redisSock := filepath.Join(dir, "redis.sock")
	startUnixRedis(t, redisSock)
	front := filepath.Join(dir, "front.sock")
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: front, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close() // a socket file nobody listens on, as a crash leaves it
	// Cleanups run last first: this one after the daemon has stopped.
	t.Cleanup(func() {
		if _, err := os.Lstat(front); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the listen socket file after stop: %v, want it removed", err)
		}
	})
	d := startAdminDaemon(t, fmt.Sprintf(`services:
  - name: redis
    listen: unix://%s
    backends: ["unix://%s"]
    health_check: {interval: 100ms, rise: 1, fall: 1, send: "PING\r\n", expect: "+PONG"}
`, front, redisSock))
	if got := boundAddr(t, d, "redis"); got != front {
		t.Fatalf("bound %q, want %q", got, front)
	}
	for i := range 3 {
		c, err := net.Dial("unix", front)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(20 * time.Second))
		fmt.Fprintf(c, "SET k%d v%d\r\nGET k%d\r\n", i, i, i)
		r := bufio.NewReader(c)
		for _, want := range []string{"+OK\r\n", "$2\r\n", fmt.Sprintf("v%d\r\n", i)} {
			if line, err := r.ReadString('\n'); err != nil || line != want {
				t.Fatalf("reply line %q, %v; want %q", line, err, want)
			}
		}
		c.Close()
	}
	testenv.WaitFor(t, "a passing PING check over the Unix socket", func() bool {
		b := d.services(t)["redis"].Backends[0]
		return b.Addr == "unix://"+redisSock && b.Check == admin.CheckPassing && !b.LastCheck.IsZero() && b.LastError == ""
	})
}

// startUnixRedis starts a real redis-server that listens only on a Unix
// socket at path.
func startUnixRedis(t *testing.T, path string) {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server is not installed: %v", err)
	}
	cmd := exec.Command(bin, "--port", "0", "--unixsocket", path, "--unixsocketperm", "700",
		"--save", "", "--appendonly", "no", "--dir", filepath.Dir(path))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	testenv.WaitFor(t, "redis-server on "+path, func() bool {
		c, err := net.Dial("unix", path)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
}

// TestIPv6EndToEnd: a listener on [::1] to a backend on [::1], and the
// link-variable contract with a bracketed IPv6 literal: the variable's
// listener (IPv4, as the contract says) forwards to the IPv6 backend.
func TestIPv6EndToEnd(t *testing.T) {
	echo := testenv.Echo(t, "[::1]:0")
	port := testenv.FreePort(t, "0.0.0.0")
	env := []string{fmt.Sprintf("ECHO_PORT_%d_TCP=tcp://[0:0::1]:%s", port, portOf(echo))}
	cfg, err := config.Load(config.Sources{Env: env, File: "test.yaml", FileData: []byte(fmt.Sprintf(`services:
  - {name: v6, listen: "[::1]:0", backends: ["%s"]}
`, echo))})
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Services[1].Backends[0].Addr; got != echo {
		t.Fatalf("the link variable's backend is %q, want the canonical %q", got, echo)
	}
	bound := startRun(t, cfg, Options{}).Bound
	if a := bound[0].Addr.(*net.TCPAddr); a.IP.String() != "::1" {
		t.Fatalf("v6 listens on %s, want [::1]", a)
	}
	for _, tt := range []struct{ network, addr string }{
		{"tcp6", bound[0].Addr.String()},
		{"tcp4", fmt.Sprintf("127.0.0.1:%d", port)},
	} {
		c, err := net.DialTimeout(tt.network, tt.addr, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(20 * time.Second))
		io.WriteString(c, "over "+tt.network)
		c.(*net.TCPConn).CloseWrite()
		got, _ := io.ReadAll(c)
		c.Close()
		if string(got) != "over "+tt.network {
			t.Fatalf("%s via %s: echoed %q", tt.network, tt.addr, got)
		}
	}
}

func portOf(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}
