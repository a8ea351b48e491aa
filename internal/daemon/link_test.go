package daemon

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
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
	waitUntil(t, "health check over the link", func() bool {
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
	waitUntil(t, "not_allowed counted", func() bool {
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
	waitUntil(t, "host-x allowed after the reload", func() bool {
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
