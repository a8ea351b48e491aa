package daemon

import (
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/attache/attache/internal/testenv"
)

// churnChanges is how many times each churn test changes the backend set.
const churnChanges = 100

// routeWatcher records the latest route of every service, through the
// daemon's test hook, so a test can wait for a change to be in force.
type routeWatcher struct {
	mu     sync.Mutex
	cond   *sync.Cond
	routes map[string][]string
}

func watchRoutes(t *testing.T) *routeWatcher {
	w := &routeWatcher{routes: map[string][]string{}}
	w.cond = sync.NewCond(&w.mu)
	testHookRebuilt = func(service string, addrs []string) {
		w.mu.Lock()
		w.routes[service] = slices.Sorted(slices.Values(addrs))
		w.cond.Broadcast()
		w.mu.Unlock()
	}
	t.Cleanup(func() { testHookRebuilt = nil })
	return w
}

// waitFor blocks until service's route is exactly addrs.
func (w *routeWatcher) waitFor(t *testing.T, service string, addrs ...string) {
	t.Helper()
	want := slices.Sorted(slices.Values(addrs))
	deadline := time.AfterFunc(30*time.Second, func() {
		w.mu.Lock()
		w.cond.Broadcast()
		w.mu.Unlock()
	})
	defer deadline.Stop()
	start := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	for !slices.Equal(w.routes[service], want) {
		if time.Since(start) > 30*time.Second {
			t.Fatalf("service %s: route is %v, want %v", service, w.routes[service], want)
		}
		w.cond.Wait()
	}
}

// startDaemon runs cfg (YAML) until the test ends and returns the bound
// address of the first service and a function that reloads with new YAML.
// It is startAdminDaemon's harness; the churn tests only need these two.
func startDaemon(t *testing.T, yaml string) (addr string, reload func(yaml string) error) {
	t.Helper()
	d := startAdminDaemon(t, yaml)
	return d.bound[0].Addr.String(), d.reload
}

// echoPool starts n echo backends on 127.0.0.1.
func echoPool(t *testing.T, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = testenv.Echo(t, "127.0.0.1:0")
	}
	return out
}

// pairAt is the i-th backend set of a churn: two neighbours of the pool,
// so every change adds one backend and removes another while one stays.
func pairAt(pool []string, i int) []string {
	return []string{pool[i%len(pool)], pool[(i+1)%len(pool)]}
}

func checkTraffic(t *testing.T, r testenv.TrafficResult) {
	t.Helper()
	t.Logf("traffic: %s", r)
	if r.ShortFailed != 0 || r.StreamFailed != 0 {
		t.Errorf("traffic broke during the churn: %s", r)
	}
	if r.ShortOK == 0 || r.StreamBytes == 0 {
		t.Errorf("no traffic flowed: %s", r)
	}
}

// TestChurnStaticReload changes a service's backends 100 times by SIGHUP
// reloads under load: no new connection fails, no established one drops,
// every byte arrives intact.
func TestChurnStaticReload(t *testing.T) {
	w := watchRoutes(t)
	pool := echoPool(t, 4)
	file := func(backends []string) string {
		return fmt.Sprintf("services:\n  - name: s\n    listen: 127.0.0.1:0\n    backends: [%s, %s]\n", backends[0], backends[1])
	}
	addr, reload := startDaemon(t, file(pairAt(pool, 0)))
	w.waitFor(t, "s", pairAt(pool, 0)...)
	tr := testenv.StartTraffic(t, addr, 4, 4)
	for i := 1; i <= churnChanges; i++ {
		if err := reload(file(pairAt(pool, i))); err != nil {
			t.Fatalf("reload %d: %v", i, err)
		}
		w.waitFor(t, "s", pairAt(pool, i)...)
		tr.AwaitProgress(4)
	}
	checkTraffic(t, tr.Stop())
}

// TestChurnDNS changes a service's SRV records 100 times under load.
func TestChurnDNS(t *testing.T) {
	w := watchRoutes(t)
	pool := echoPool(t, 4)
	d := testenv.StartDNS(t)
	d.SetTTL(0) // re-query at the floor
	d.SetA("echo.test", "127.0.0.1")
	set := func(backends []string) {
		var recs []testenv.SRV
		for _, b := range backends {
			_, port, _ := splitPort(b)
			recs = append(recs, testenv.SRV{Priority: 0, Weight: 1, Port: port, Target: "echo.test."})
		}
		d.SetSRV("_echo._tcp.test", recs...)
	}
	set(pairAt(pool, 0))
	addr, _ := startDaemon(t, fmt.Sprintf(`discovery:
  dns: {server: %q, min_ttl: 10ms, max_ttl: 100ms}
services:
  - name: s
    listen: 127.0.0.1:0
    backends: [srv://_echo._tcp.test]
`, d.Addr))
	w.waitFor(t, "s", pairAt(pool, 0)...)
	tr := testenv.StartTraffic(t, addr, 4, 4)
	for i := 1; i <= churnChanges; i++ {
		set(pairAt(pool, i))
		w.waitFor(t, "s", pairAt(pool, i)...)
		tr.AwaitProgress(4)
	}
	checkTraffic(t, tr.Stop())
}

func splitPort(hostport string) (string, uint16, error) {
	for i := len(hostport) - 1; i >= 0; i-- {
		if hostport[i] == ':' {
			p, err := strconv.Atoi(hostport[i+1:])
			return hostport[:i], uint16(p), err
		}
	}
	return "", 0, fmt.Errorf("no port in %q", hostport)
}

// TestDNSOutageKeepsLastSet: while the DNS server fails, traffic carries on
// to the last known backends; when it recovers, a change made meanwhile is
// picked up without a restart.
func TestDNSOutageKeepsLastSet(t *testing.T) {
	w := watchRoutes(t)
	pool := echoPool(t, 3)
	d := testenv.StartDNS(t)
	d.SetTTL(0)
	d.SetA("echo.test", "127.0.0.1")
	set := func(backends ...string) {
		var recs []testenv.SRV
		for _, b := range backends {
			_, port, _ := splitPort(b)
			recs = append(recs, testenv.SRV{Priority: 0, Weight: 1, Port: port, Target: "echo.test."})
		}
		d.SetSRV("_echo._tcp.test", recs...)
	}
	set(pool[0], pool[1])
	addr, _ := startDaemon(t, fmt.Sprintf(`discovery:
  dns: {server: %q, min_ttl: 10ms, max_ttl: 50ms, timeout: 50ms}
services:
  - name: s
    listen: 127.0.0.1:0
    backends: [srv://_echo._tcp.test]
`, d.Addr))
	w.waitFor(t, "s", pool[0], pool[1])
	tr := testenv.StartTraffic(t, addr, 4, 2)
	for _, f := range []testenv.Failure{testenv.FailServFail, testenv.FailDrop, testenv.FailRefused} {
		d.Fail("", f)
		before := d.Queries("_echo._tcp.test")
		set(pool[2]) // not visible while the server fails
		for d.Queries("_echo._tcp.test") < before+3 {
			tr.AwaitProgress(1)
		}
		tr.AwaitProgress(20)
		w.waitFor(t, "s", pool[0], pool[1]) // still the last good answer
		d.Fail("", testenv.FailNone)
		w.waitFor(t, "s", pool[2])
		set(pool[0], pool[1])
		w.waitFor(t, "s", pool[0], pool[1])
	}
	checkTraffic(t, tr.Stop())
}
