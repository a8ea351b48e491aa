package e2e

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/attache/attache/internal/testenv"
)

// TestLinkMultiHost is the multi-host setup, on three hosts made
// of network namespaces (plus a hub running etcd):
//
//	A: a consumer and a client-side ambassador, backend attache://etcd/redis
//	B, C: a real redis-server each, behind a link server that registers
//	      itself in etcd under a lease
//
// Traffic flows from A to both B and C over mutual TLS; a capture on the
// LAN shows TLS and no Redis command or value in the clear; when B's cable
// is pulled, new connections from A keep working (through C) with no error,
// and when it is plugged back B serves again.
func TestLinkMultiHost(t *testing.T) {
	if why := testenv.NetnsAvailable(); why != "" {
		t.Fatalf("multi-host link test needs network namespaces: %s", why)
	}
	for _, tool := range []string{"redis-server", "tcpdump"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed (scripts/deps.sh installs it): %v", tool, err)
		}
	}
	hosts := testenv.NewHosts(t, "a", "b", "c")
	a, b, c := hosts.ByName["a"], hosts.ByName["b"], hosts.ByName["c"]
	dir := t.TempDir()

	// The fleet's certificates, made with the binary's own commands.
	mustRun(t, attacheBin, "certs", "init", "--dir", dir)
	for _, h := range []string{"host-a", "host-b", "host-c", "host-x"} {
		mustRun(t, attacheBin, "certs", "issue", h, "--dir", dir)
	}

	// etcd on the hub.
	etcdAddr := hosts.Hub.IP + ":2379"
	startEtcdIn(t, hosts.Hub, etcdAddr)

	// Redis on B and C, each knowing which host it is.
	for _, h := range []*testenv.Host{b, c} {
		startRedisIn(t, h)
		if got := redisVia(t, h, "127.0.0.1:6379", "SET host "+h.Name); got != "+OK" {
			t.Fatalf("SET host on %s: %q", h.Name, got)
		}
	}
	files := func(host string) string {
		return fmt.Sprintf("  cert: %s\n  key: %s\n  ca: %s\n", filepath.Join(dir, host+".crt"),
			filepath.Join(dir, host+".key"), filepath.Join(dir, "fleet-ca.crt"))
	}
	for _, h := range []*testenv.Host{b, c} {
		cfg := fmt.Sprintf(`discovery:
  etcd: {endpoints: [%s], dial_timeout: 2s}
link:
  listen: %s:7443
%s  offer:
    redis: [host-a]
  register: {advertise: "%s:7443", ttl: 3s}
services:
  - name: redis
    listen: 127.0.0.1:6380
    backends: [127.0.0.1:6379]
`, etcdAddr, h.IP, files("host-"+h.Name), h.IP)
		p := startAttacheIn(t, h, writeLinkFile(t, dir, "attache-"+h.Name+".yaml", cfg))
		p.waitLog(t, regexp.MustCompile(`msg="link services announced in etcd"`), startTimeout)
	}
	cfgA := fmt.Sprintf(`discovery:
  etcd: {endpoints: [%s], dial_timeout: 2s}
link:
%sservices:
  - name: redis
    listen: 127.0.0.1:6379
    backends: [attache://etcd/redis]
    connect_timeout: 1s
    retries: 2
    retry_timeout: 10s
    health_check: {interval: 300ms, timeout: 300ms, send: "PING\r\n", expect: "+PONG", rise: 1, fall: 1}
`, etcdAddr, files("host-a"))
	// The LAN carries TLS only: capture on the hub (every host's cable)
	// from before the first connection (so the handshakes of the pooled
	// link connections are in it) while values go back and forth.
	marker := randomHex(t)
	capture := filepath.Join(dir, "link.pcap")
	dump := hosts.Hub.Command("tcpdump", "-i", "any", "--immediate-mode", "-U", "-s", "0", "-w", capture, "tcp", "port", "7443")
	var dumpErr testenv.LogBuffer // written by the process while the test reads it
	dump.Stderr = &dumpErr
	if err := dump.Start(); err != nil {
		t.Fatalf("tcpdump: %v", err)
	}
	stopDump := func() {
		_ = dump.Process.Signal(syscall.SIGTERM)
		_ = dump.Wait()
	}
	t.Cleanup(stopDump)
	testenv.WaitFor(t, "tcpdump listening", func() bool { return strings.Contains(dumpErr.String(), "listening on any") })
	pa := startAttacheIn(t, a, writeLinkFile(t, dir, "attache-a.yaml", cfgA))
	pa.listenAddrs(t, 1)
	local := "127.0.0.1:6379"

	// Both link servers are found and used. Every connection must be
	// answered by B or C: anything else is an error a client would see.
	served := func(n int) map[string]int {
		t.Helper()
		seen := map[string]int{}
		for range n {
			got := redisVia(t, a, local, "GET host")
			if got != "b" && got != "c" {
				t.Fatalf("GET host through the link answered %q, want b or c", got)
			}
			seen[got]++
		}
		return seen
	}
	testenv.WaitFor(t, "A reaches both B and C", func() bool {
		s := served(10)
		return s["b"] > 0 && s["c"] > 0
	})

	for i := range 10 {
		key := fmt.Sprintf("secret-key-%s-%d", marker, i)
		if got := redisVia(t, a, local, "SET "+key+" plaintext-value-"+marker); got != "+OK" {
			t.Fatalf("SET through the link: %q", got)
		}
		// GET goes to either host: the value, or a miss on the other.
		if got := redisVia(t, a, local, "GET "+key); got != "plaintext-value-"+marker && got != "$-1" {
			t.Fatalf("GET through the link: %q", got)
		}
	}
	stopDump()
	pcap, err := os.ReadFile(capture)
	if err != nil {
		t.Fatal(err)
	}
	// The capture did see the link traffic: the SNI (the service name)
	// is the one thing in the clear...
	if !bytes.Contains(pcap, []byte("redis.attache")) {
		t.Fatalf("the capture (%d bytes) holds no link handshake; tcpdump said: %s", len(pcap), dumpErr.String())
	}
	// ...and no command, key or value is.
	for _, clear := range []string{marker, "SET", "GET", "PING", "plaintext-value", "secret-key"} {
		if bytes.Contains(pcap, []byte(clear)) {
			t.Errorf("the capture holds %q in the clear", clear)
		}
	}
	t.Logf("capture: %d bytes of link traffic, no plaintext", len(pcap))

	// Pull B's cable. New connections must all work, through C, with no
	// error, from the very first one.
	b.SetLink(false)
	for i := range 40 {
		if got := redisVia(t, a, local, "GET host"); got != "c" {
			t.Fatalf("connection %d after B went down was served by %q, want c", i, got)
		}
	}
	pa.waitLog(t, regexp.MustCompile(`backend failed its health checks.*addr=`+regexp.QuoteMeta(b.IP)), startTimeout)
	for i := range 20 {
		if got := redisVia(t, a, local, "GET host"); got != "c" {
			t.Fatalf("connection %d while B is down was served by %q, want c", i, got)
		}
	}
	// Plug it back: B registers again and serves again; no connection
	// fails meanwhile.
	b.SetLink(true)
	testenv.WaitFor(t, "B serves again", func() bool {
		s := served(10)
		return s["b"] > 0 && s["c"] > 0
	})

	// A host whose certificate is not allowed is refused, and B and C
	// say who and why.
	cfgX := fmt.Sprintf(`link:
%sservices:
  - name: redis
    listen: 127.0.0.1:6390
    backends: ["attache://%s:7443/redis", "attache://%s:7443/redis"]
    connect_timeout: 1s
`, files("host-x"), b.IP, c.IP)
	px := startAttacheIn(t, a, writeLinkFile(t, dir, "attache-x.yaml", cfgX))
	px.listenAddrs(t, 1)
	if got, err := redisTry(a, "127.0.0.1:6390", "PING"); err == nil {
		t.Errorf("host-x got through the link: %q", got)
	}
	px.waitLog(t, regexp.MustCompile(`no backend reachable.*not on the allow list`), startTimeout)
}

func mustRun(t *testing.T, bin string, args ...string) {
	t.Helper()
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", bin, strings.Join(args, " "), err, out)
	}
}

func writeLinkFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func randomHex(t *testing.T) string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b[:])
}

// startAttacheIn runs the built binary inside h with a config file, as
// startAttache does on this host.
func startAttacheIn(t *testing.T, h *testenv.Host, config string, args ...string) *proc {
	t.Helper()
	p := &proc{stdout: new(testenv.LogBuffer), stderr: new(testenv.LogBuffer), done: make(chan struct{})}
	p.cmd = h.Command(attacheBin, append([]string{"-c", config, "--access-log=false"}, args...)...)
	p.cmd.Env = []string{}
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start attache in %s: %v", h.Name, err)
	}
	go func() {
		p.code = exitCode(p.cmd.Wait())
		close(p.done)
	}()
	t.Cleanup(func() {
		if !p.exited() {
			p.signal(t, syscall.SIGTERM)
			select {
			case <-p.done:
			case <-time.After(exitTimeout):
				_ = p.cmd.Process.Kill()
				<-p.done
			}
		}
		if t.Failed() {
			t.Logf("attache on host %s:\n%s", h.Name, p.stderr)
		}
	})
	return p
}

// startEtcdIn runs testenv's etcd server command inside h.
func startEtcdIn(t *testing.T, h *testenv.Host, addr string) {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "etcdserver")
	build := exec.Command("go", "build", "-o", bin, "github.com/attache/attache/internal/testenv/etcdserver")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build etcdserver: %v\n%s", err, out)
	}
	cmd := h.Command(bin, "-client", addr, "-peer", "127.0.0.1:2380", "-dir", t.TempDir())
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr testenv.LogBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(exitTimeout):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	ready := make(chan bool, 1)
	go func() {
		line, _ := bufio.NewReader(out).ReadString('\n')
		ready <- strings.TrimSpace(line) == "ready"
		_, _ = io.Copy(io.Discard, out)
	}()
	select {
	case ok := <-ready:
		if !ok {
			t.Fatalf("etcd in %s did not start: %s", h.Name, stderr.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("etcd in %s not ready: %s", h.Name, stderr.String())
	}
}

// startRedisIn runs redis-server on 127.0.0.1:6379 inside h.
func startRedisIn(t *testing.T, h *testenv.Host) {
	t.Helper()
	cmd := h.Command("redis-server", "--port", "6379", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", t.TempDir())
	if err := cmd.Start(); err != nil {
		t.Fatalf("redis-server in %s: %v", h.Name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	testenv.WaitFor(t, "redis-server in "+h.Name, func() bool {
		got, err := redisTry(h, "127.0.0.1:6379", "PING")
		return err == nil && got == "+PONG"
	})
}

// redisTry sends one inline command from inside h on a new connection
// and returns the reply's first line (for a bulk string, the line after
// the length when it is short).
func redisTry(h *testenv.Host, addr, cmd string) (string, error) {
	c, err := h.Dial("tcp", addr, ioTimeout)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := io.WriteString(c, cmd+"\r\n"); err != nil {
		return "", err
	}
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimSpace(line)
	if strings.HasPrefix(line, "$") && line != "$-1" {
		// A bulk string: return the value.
		v, err := r.ReadString('\n')
		return strings.TrimSpace(v), err
	}
	return line, nil
}

// redisVia is redisTry that fails the test on a connection error: from A,
// every such error is one a client would have seen.
func redisVia(t *testing.T, h *testenv.Host, addr, cmd string) string {
	t.Helper()
	got, err := redisTry(h, addr, cmd)
	if err != nil {
		t.Fatalf("%s from host %s to %s: %v", strings.Fields(cmd)[0], h.Name, addr, err)
	}
	return got
}
