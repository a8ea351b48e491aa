package testenv

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// ConsulVersion is the Consul release the tests run against; scripts/consul.sh
// builds it (Debian ships no Consul, and `go install` refuses its go.mod).
const ConsulVersion = "1.14.11"

// consulNode is the agent's node name, fixed so tests do not depend on the
// machine's hostname.
const consulNode = "attache-test"

// Consul is a real `consul agent -dev` process on loopback ports. A dev agent
// keeps all state in memory: Restart gives an empty Consul on the same ports.
type Consul struct {
	bin     string
	ports   consulPorts
	logPath string
	hc      *http.Client

	// tls is set for an agent that also serves HTTPS (StartConsulTLS).
	tls *ServerTLS

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has been waited for
}

type consulPorts struct {
	http, dns, server, serfLAN, serfWAN, grpc, grpcTLS int
	https                                              int // 0: no HTTPS
}

// StartConsul starts a dev agent on free 127.0.0.1 ports and returns once it
// has a leader and its own node is registered. The binary is $ATTACHE_CONSUL,
// else the one scripts/consul.sh caches (built on first use, several
// minutes). The agent is stopped when the test ends; its output goes to a
// file whose tail is included in every failure.
func StartConsul(t testing.TB) *Consul {
	t.Helper()
	return startConsul(t, nil)
}

func startConsul(t testing.TB, tlsInfo *ServerTLS) *Consul {
	t.Helper()
	c := &Consul{
		tls:     tlsInfo,
		bin:     consulBinary(t),
		logPath: filepath.Join(t.TempDir(), "consul.log"),
		hc:      &http.Client{Timeout: 30 * time.Second},
	}
	t.Cleanup(func() {
		c.stop()
		c.hc.CloseIdleConnections()
	})
	// A port that was free when picked can be taken before the agent binds
	// it (another test's listener or outgoing connection). Seven ports make
	// that likely enough under parallel tests to retry with new ones.
	for attempt := 1; ; attempt++ {
		p := FreeTCPUDPPorts(t, 8)
		c.ports = consulPorts{p[0], p[1], p[2], p[3], p[4], p[5], p[6], 0}
		if c.tls != nil {
			c.ports.https = p[7]
		}
		err := c.start()
		if err == nil {
			return c
		}
		if !errors.Is(err, errConsulPortInUse) || attempt == 5 {
			c.fatalf(t, "%v", err)
		}
		t.Logf("consul agent attempt %d: %v; retrying on other ports", attempt, err)
	}
}

// Addr is the agent's HTTP API address, "127.0.0.1:port".
func (c *Consul) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(c.ports.http)) }

// DNSAddr is the agent's DNS interface (UDP and TCP), "127.0.0.1:port".
func (c *Consul) DNSAddr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(c.ports.dns)) }

// Stop stops the agent (SIGTERM, then SIGKILL if it lingers) and waits for it.
// Stopping a stopped agent does nothing.
func (c *Consul) Stop(t testing.TB) {
	t.Helper()
	c.stop()
}

// Restart stops the agent if it runs and starts a new dev agent on the same
// ports. The new agent is empty: whatever was registered before is gone.
func (c *Consul) Restart(t testing.TB) {
	t.Helper()
	c.stop()
	if err := c.start(); err != nil {
		c.fatalf(t, "restart: %v", err)
	}
}

// errConsulPortInUse marks an agent that exited because a port was taken.
var errConsulPortInUse = errors.New("a consul port is already in use")

// start launches the agent on c.ports and waits until it is ready.
func (c *Consul) start() error {
	f, err := os.OpenFile(c.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("consul log file: %w", err)
	}
	args := []string{"agent", "-dev", "-node", consulNode,
		"-bind", "127.0.0.1", "-client", "127.0.0.1",
		"-http-port", strconv.Itoa(c.ports.http),
		"-dns-port", strconv.Itoa(c.ports.dns),
		"-server-port", strconv.Itoa(c.ports.server),
		"-serf-lan-port", strconv.Itoa(c.ports.serfLAN),
		"-serf-wan-port", strconv.Itoa(c.ports.serfWAN),
		"-grpc-port", strconv.Itoa(c.ports.grpc),
		// A dev server listens for gRPC TLS on 8503 unless told otherwise,
		// which would clash between two agents.
		"-grpc-tls-port", strconv.Itoa(c.ports.grpcTLS),
		"-log-level", "info",
		"-hcl", "disable_update_check = true",
	}
	if c.tls != nil {
		args = append(args, "-hcl", consulHCL(c.tls, c.ports.https))
	}
	start, _ := f.Seek(0, io.SeekEnd)
	fmt.Fprintf(f, "=== testenv: %s %s\n", c.bin, strings.Join(args, " "))
	cmd := exec.Command(c.bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	// If the test binary dies (a -timeout panic), take the agent with it
	// rather than leave it holding ports.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	err = cmd.Start()
	f.Close() // the child holds its own descriptor
	if err != nil {
		return fmt.Errorf("start consul %s: %w", c.bin, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	c.mu.Lock()
	c.cmd, c.exited = cmd, exited
	c.mu.Unlock()
	err = c.waitReady(exited)
	if err != nil && c.exitedWithPortInUse(exited, start) {
		c.stop()
		return fmt.Errorf("%w: %v", errConsulPortInUse, err)
	}
	return err
}

// exitedWithPortInUse reports whether the agent has exited and its output
// since offset from says a bind failed.
func (c *Consul) exitedWithPortInUse(exited <-chan struct{}, from int64) bool {
	select {
	case <-exited:
	default:
		return false
	}
	b, err := os.ReadFile(c.logPath)
	if err != nil || int64(len(b)) < from {
		return false
	}
	return bytes.Contains(b[from:], []byte("address already in use"))
}

// waitReady polls until the agent reports a leader and its own node's
// serfHealth check passes, so a service registered next is immediately
// visible to ?passing health queries.
func (c *Consul) waitReady(exited <-chan struct{}) error {
	deadline := time.Now().Add(60 * time.Second)
	var last error
	for {
		select {
		case <-exited:
			return fmt.Errorf("consul agent exited before it was ready (last check: %v)", last)
		default:
		}
		if last = c.ready(); last == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("consul agent on %s not ready after 60s: %v", c.Addr(), last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (c *Consul) ready() error {
	body, status, err := c.request(http.MethodGet, "/v1/status/leader", nil)
	if err != nil {
		return err
	}
	var leader string
	if status != http.StatusOK || json.Unmarshal(body, &leader) != nil || leader == "" {
		return fmt.Errorf("no leader yet: %d %s", status, bytes.TrimSpace(body))
	}
	body, status, err = c.request(http.MethodGet, "/v1/health/node/"+consulNode, nil)
	if err != nil {
		return err
	}
	var checks []struct{ CheckID, Status string }
	if status != http.StatusOK || json.Unmarshal(body, &checks) != nil {
		return fmt.Errorf("node health: %d %s", status, bytes.TrimSpace(body))
	}
	for _, ch := range checks {
		if ch.CheckID == "serfHealth" && ch.Status == "passing" {
			return nil
		}
	}
	return fmt.Errorf("node %s has no passing serfHealth yet: %s", consulNode, bytes.TrimSpace(body))
}

func (c *Consul) stop() {
	c.mu.Lock()
	cmd, exited := c.cmd, c.exited
	c.cmd, c.exited = nil, nil
	c.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(15 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
	}
}

// ConsulOption adjusts a service registration.
type ConsulOption func(*consulService)

type consulService struct {
	ID      string
	Name    string
	Address string
	Port    int
	Tags    []string        `json:",omitempty"`
	Weights *consulWeights  `json:",omitempty"`
	Check   *consulTTLCheck `json:",omitempty"`
}

type consulWeights struct{ Passing, Warning int }

type consulTTLCheck struct{ CheckID, Name, TTL, Status string }

// ConsulTags sets the instance's tags.
func ConsulTags(tags ...string) ConsulOption {
	return func(s *consulService) { s.Tags = tags }
}

// ConsulWeight sets the instance's passing weight.
func ConsulWeight(passing int) ConsulOption {
	return func(s *consulService) { s.Weights = &consulWeights{Passing: passing, Warning: 1} }
}

// ConsulTTL gives the instance a TTL check, passing at first, with the ID
// ConsulTTLCheckID(id); SetCheck then turns the instance critical or passing.
// The TTL is an hour, so it never expires by itself during a test.
func ConsulTTL() ConsulOption {
	return func(s *consulService) {
		s.Check = &consulTTLCheck{CheckID: ConsulTTLCheckID(s.ID), Name: "testenv ttl", TTL: "1h", Status: "passing"}
	}
}

// ConsulTTLCheckID is the ID of the TTL check ConsulTTL adds to service id.
func ConsulTTLCheckID(serviceID string) string { return "ttl:" + serviceID }

// Register registers instance id of Consul service name at addr:port with the
// agent. An empty addr makes Consul use the node's address.
func (c *Consul) Register(t testing.TB, id, name, addr string, port int, opts ...ConsulOption) {
	t.Helper()
	s := consulService{ID: id, Name: name, Address: addr, Port: port}
	for _, o := range opts {
		o(&s)
	}
	body, err := json.Marshal(s)
	if err != nil {
		t.Fatalf("encode consul registration of %s: %v", id, err)
	}
	c.mustDo(t, http.MethodPut, "/v1/agent/service/register", body)
}

// Deregister removes instance id from the agent.
func (c *Consul) Deregister(t testing.TB, id string) {
	t.Helper()
	c.mustDo(t, http.MethodPut, "/v1/agent/service/deregister/"+id, nil)
}

// SetCheck sets TTL check checkID to passing or critical.
func (c *Consul) SetCheck(t testing.TB, checkID string, passing bool) {
	t.Helper()
	status := "critical"
	if passing {
		status = "passing"
	}
	body, _ := json.Marshal(struct{ Status, Output string }{status, "set by testenv"})
	c.mustDo(t, http.MethodPut, "/v1/agent/check/update/"+checkID, body)
}

// KVPut stores value at key.
func (c *Consul) KVPut(t testing.TB, key, value string) {
	t.Helper()
	c.mustDo(t, http.MethodPut, "/v1/kv/"+strings.TrimPrefix(key, "/"), []byte(value))
}

// KVDelete deletes key (not the keys below it).
func (c *Consul) KVDelete(t testing.TB, key string) {
	t.Helper()
	c.mustDo(t, http.MethodDelete, "/v1/kv/"+strings.TrimPrefix(key, "/"), nil)
}

func (c *Consul) mustDo(t testing.TB, method, path string, body []byte) {
	t.Helper()
	resp, status, err := c.request(method, path, body)
	if err != nil {
		c.fatalf(t, "consul %s %s: %v", method, path, err)
	}
	if status != http.StatusOK {
		c.fatalf(t, "consul %s %s: status %d: %s", method, path, status, bytes.TrimSpace(resp))
	}
}

func (c *Consul) request(method, path string, body []byte) ([]byte, int, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://"+c.Addr()+path, rd)
	if err != nil {
		return nil, 0, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return b, resp.StatusCode, err
}

// fatalf fails the test with the tail of the agent's output appended.
func (c *Consul) fatalf(t testing.TB, format string, args ...any) {
	t.Helper()
	t.Fatalf(format+"\n--- consul output (%s), last lines:\n%s", append(args, c.logPath, c.LogTail(40))...)
}

// LogTail returns the last n lines the agent (all its restarts) wrote.
func (c *Consul) LogTail(n int) string {
	f, err := os.Open(c.logPath)
	if err != nil {
		return fmt.Sprintf("(no output: %v)", err)
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}

var consulBuild sync.Mutex

// consulBinary finds the consul binary, building it with scripts/consul.sh
// if it is not cached yet.
func consulBinary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("ATTACHE_CONSUL"); p != "" {
		if !isExecutable(p) {
			t.Fatalf("ATTACHE_CONSUL=%s is not an executable file", p)
		}
		return p
	}
	cache := os.Getenv("ATTACHE_CACHE")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			t.Fatalf("no ATTACHE_CACHE and no home directory for the consul cache: %v", err)
		}
		cache = filepath.Join(home, ".cache", "attache")
	}
	bin := filepath.Join(cache, "consul-"+ConsulVersion, "consul")
	consulBuild.Lock()
	defer consulBuild.Unlock()
	if isExecutable(bin) {
		return bin
	}
	root, err := repoRoot()
	if err != nil {
		t.Fatalf("consul binary %s missing and the build script cannot be found: %v", bin, err)
	}
	script := filepath.Join(root, "scripts", "consul.sh")
	t.Logf("consul binary %s missing; building it with %s (first time: several minutes)", bin, script)
	var stderr bytes.Buffer
	cmd := exec.Command("bash", script)
	cmd.Env = append(os.Environ(), "ATTACHE_CACHE="+cache)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v\n%s", script, err, tailString(stderr.String(), 40))
	}
	if got := strings.TrimSpace(string(out)); got != bin || !isExecutable(bin) {
		t.Fatalf("%s printed %q, want the executable %s\n%s", script, got, bin, tailString(stderr.String(), 40))
	}
	return bin
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// repoRoot walks up from the working directory (a package directory under
// go test) to the directory holding go.mod.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

func tailString(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
