package daemon

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/attache/attache/internal/admin"
	"github.com/attache/attache/internal/config"
	"github.com/attache/attache/internal/testenv"
)

// adminDaemon is a daemon started from YAML with its admin API on port 0.
type adminDaemon struct {
	url    string // http://host:port of the admin API
	bound  []Bound
	reload func(yaml string) error
	// setNext sets the YAML the next reload (SIGHUP or POST) reads;
	// reloaded receives every reload's result.
	setNext  func(yaml string)
	reloaded chan error
}

func startAdminDaemon(t *testing.T, yaml string) *adminDaemon {
	t.Helper()
	return startAdminDaemonToken(t, yaml, "")
}

// startAdminDaemonToken starts a daemon whose admin API takes token for
// its mutating calls ("" turns them off).
func startAdminDaemonToken(t *testing.T, yaml, token string) *adminDaemon {
	t.Helper()
	load := func(y string) (*config.Config, error) {
		return config.Load(config.Sources{FileData: []byte(y), File: "test.yaml"})
	}
	cfg, err := load(yaml)
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	var (
		mu   sync.Mutex
		next string
	)
	reloadCh := make(chan os.Signal)
	results := make(chan error, 16)
	run := startRun(t, cfg, Options{
		Admin:  "127.0.0.1:0",
		Reload: reloadCh,
		Load: func() (*config.Config, error) {
			mu.Lock()
			defer mu.Unlock()
			return load(next)
		},
		Reloaded:   func(err error) { results <- err },
		AdminToken: token,
	})
	d := &adminDaemon{reloaded: results, setNext: func(y string) {
		mu.Lock()
		next = y
		mu.Unlock()
	}}
	d.url = "http://" + run.Admin
	d.bound = run.Bound
	t.Cleanup(func() {
		_ = run.Stop() // an error is reported by startRun's own cleanup
		// Stopped last, and closed: nothing answers on the admin port.
		if resp, err := http.Get(d.url + "/healthz"); err == nil {
			resp.Body.Close()
			t.Errorf("admin API still answers after Run returned")
		}
	})
	d.reload = func(y string) error {
		d.setNext(y)
		reloadCh <- syscall.SIGHUP
		return <-results
	}
	return d
}

// get fetches path and returns the status and body.
func (d *adminDaemon) get(t *testing.T, path string) (int, []byte) {
	t.Helper()
	return httpDo(t, http.MethodGet, d.url+path)
}

func httpDo(t *testing.T, method, url string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, url, err)
	}
	return resp.StatusCode, b
}

func (d *adminDaemon) services(t *testing.T) map[string]admin.Service {
	t.Helper()
	code, body := d.get(t, "/v1/services")
	if code != http.StatusOK {
		t.Fatalf("/v1/services: status %d: %s", code, body)
	}
	var v struct{ Services []admin.Service }
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("/v1/services: %v in %s", err, body)
	}
	out := map[string]admin.Service{}
	for _, s := range v.Services {
		out[s.Name] = s
	}
	return out
}

// scrape returns the metric families of /metrics.
func (d *adminDaemon) scrape(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	code, body := d.get(t, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: status %d: %s", code, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("/metrics: %v in\n%s", err, body)
	}
	return fams
}

// value is the value of the series of fam whose labels include want, or
// -1 when there is none.
func value(fams map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	f := fams[name]
	if f == nil {
		return -1
	}
next:
	for _, m := range f.Metric {
		have := map[string]string{}
		for _, l := range m.Label {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		}
	}
	return -1
}

// TestAdminEndpointsAndMetrics sends known traffic through a real daemon
// and checks that the JSON state and the metrics count exactly that.
func TestAdminEndpointsAndMetrics(t *testing.T) {
	echo := testenv.Echo(t, "127.0.0.1:0")
	d := startAdminDaemon(t, fmt.Sprintf(`services:
  - name: web
    listen: 127.0.0.1:0
    backends: [{addr: %q, weight: 3}]
    health_check: {interval: 50ms}
`, echo))
	addr := d.bound[0].Addr.String()

	if code, body := d.get(t, "/healthz"); code != http.StatusOK {
		t.Errorf("/healthz: %d %s", code, body)
	}
	if code, body := d.get(t, "/readyz"); code != http.StatusOK {
		t.Errorf("/readyz with no discovery: %d %s, want 200", code, body)
	}
	if code, body := d.get(t, "/v1/discovery"); code != http.StatusOK || !strings.Contains(string(body), `"providers": []`) {
		t.Errorf("/v1/discovery without providers: %d %s", code, body)
	}

	// N connections, each sending size bytes and reading the echo back.
	const n, size = 7, 3000
	payload := bytes.Repeat([]byte("0123456789"), size/10)
	for i := range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(30 * time.Second))
		c.Write(payload)
		c.(*net.TCPConn).CloseWrite()
		got, err := io.ReadAll(c)
		c.Close()
		if err != nil || !bytes.Equal(got, payload) {
			t.Fatalf("connection %d: echoed %d bytes (%v), want %d", i, len(got), err, size)
		}
	}
	// One more held open, with 5 bytes each way so far.
	held, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	held.SetDeadline(time.Now().Add(30 * time.Second))
	io.WriteString(held, "hello")
	if _, err := io.ReadFull(held, make([]byte, 5)); err != nil {
		t.Fatal(err)
	}

	// The counters of finished connections land when they end; wait for
	// them rather than guessing how long that takes.
	var web admin.Service
	testenv.WaitFor(t, "the finished connections to be counted and the health check to pass", func() bool {
		web = d.services(t)["web"]
		// The held connection's 5 bytes count while it is open.
		return web.Connections.BytesIn == n*size+5 && web.Connections.BytesOut == n*size+5 && web.Connections.Accepted == n+1 &&
			len(web.Backends) == 1 && web.Backends[0].Active == 1 && !web.Backends[0].LastCheck.IsZero()
	})
	if web.Listen != addr || web.Balance == "" {
		t.Errorf("service: listen %q balance %q, want listen %q and a policy", web.Listen, web.Balance, addr)
	}
	c := web.Connections
	if c.Active != 1 || c.BytesOut != n*size+5 || c.Failed != 0 || c.DialErrors != 0 {
		t.Errorf("counters %+v: want active 1, bytes_out %d, no failures", c, n*size+5)
	}
	b := web.Backends[0]
	if b.Addr != echo || b.Weight != 3 || !b.Healthy || b.Check != admin.CheckPassing || b.LastError != "" || !b.EjectedUntil.IsZero() {
		t.Errorf("backend %+v: want %s weight 3 healthy, check passing, not ejected", b, echo)
	}

	fams := d.scrape(t)
	svc := map[string]string{"service": "web"}
	for _, tc := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"attache_proxy_connections_accepted_total", svc, n + 1},
		{"attache_proxy_connections_active", svc, 1},
		{"attache_proxy_connections_failed_total", svc, 0},
		{"attache_proxy_dial_errors_total", svc, 0},
		{"attache_proxy_bytes_total", map[string]string{"service": "web", "direction": "in"}, n*size + 5},
		{"attache_proxy_bytes_total", map[string]string{"service": "web", "direction": "out"}, n*size + 5},
		{"attache_backend_active_connections", map[string]string{"service": "web", "backend": echo}, 1},
		{"attache_backend_healthy", map[string]string{"service": "web", "backend": echo}, 1},
		{"attache_backend_connections_total", map[string]string{"service": "web", "backend": echo}, n + 1},
		{"attache_backend_dial_errors_total", map[string]string{"service": "web", "backend": echo}, 0},
		{"attache_backend_ejections_total", map[string]string{"service": "web", "backend": echo}, 0},
		{"attache_proxy_connections_no_backend_total", svc, 0},
		{"attache_proxy_connections_retried_total", svc, 0},
		{"attache_proxy_connection_limit_waits_total", svc, 0},
		{"attache_proxy_dial_duration_seconds", svc, n + 1}, // the sample count
		{"attache_reload_total", map[string]string{"result": "success"}, 0},
		{"attache_reload_total", map[string]string{"result": "failure"}, 0},
	} {
		if got := value(fams, tc.name, tc.labels); got != tc.want {
			t.Errorf("%s%v = %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}

	// /v1/connections lists the held one with its bytes so far.
	code, body := d.get(t, "/v1/connections")
	var list struct {
		Connections []admin.Connection
		Total       int
		Truncated   bool
	}
	if err := json.Unmarshal(body, &list); code != http.StatusOK || err != nil {
		t.Fatalf("/v1/connections: %d %s (%v)", code, body, err)
	}
	if len(list.Connections) != 1 || list.Total != 1 || list.Truncated {
		t.Fatalf("/v1/connections: %s, want the held connection alone", body)
	}
	if lc := list.Connections[0]; lc.Service != "web" || lc.Listen != addr || lc.Client != held.LocalAddr().String() ||
		lc.Backend != echo || lc.BytesIn != 5 || lc.BytesOut != 5 || lc.ID != n+1 || lc.Start.IsZero() {
		t.Errorf("/v1/connections entry %+v: want web, %s → %s, 5 bytes each way, id %d", lc, held.LocalAddr(), echo, n+1)
	}

	// The held connection ends: its 5 bytes each way stay counted, once.
	held.(*net.TCPConn).CloseWrite()
	io.ReadAll(held)
	held.Close()
	testenv.WaitFor(t, "the held connection to be counted", func() bool {
		f := d.scrape(t)
		return value(f, "attache_proxy_connections_active", svc) == 0 &&
			value(f, "attache_backend_active_connections", map[string]string{"service": "web", "backend": echo}) == 0 &&
			value(f, "attache_proxy_bytes_total", map[string]string{"service": "web", "direction": "out"}) == n*size+5
	})

	// Reloads are counted by result.
	if err := d.reload("services: [{name: bad, listen: 127.0.0.1:0, backends: [nowhere]}]\nbogus: 1\n"); err == nil {
		t.Fatal("reload of a bad config succeeded")
	}
	if err := d.reload(fmt.Sprintf("services: [{name: web2, listen: 127.0.0.1:0, backends: [%q]}]\n", echo)); err != nil {
		t.Fatalf("reload: %v", err)
	}
	fams = d.scrape(t)
	if s, f := value(fams, "attache_reload_total", map[string]string{"result": "success"}),
		value(fams, "attache_reload_total", map[string]string{"result": "failure"}); s != 1 || f != 1 {
		t.Errorf("attache_reload_total: success %v failure %v, want 1 and 1", s, f)
	}
	if got := d.services(t); len(got) != 1 || got["web2"].Backends[0].Check != admin.CheckOff {
		t.Errorf("services after reload: %+v, want web2 alone, without checks", got)
	}
}

// TestAdminErrorsAreJSON: unknown paths and wrong methods answer JSON
// errors that carry their status.
func TestAdminErrorsAreJSON(t *testing.T) {
	echo := testenv.Echo(t, "127.0.0.1:0")
	d := startAdminDaemon(t, fmt.Sprintf("services: [{name: s, listen: 127.0.0.1:0, backends: [%q]}]\n", echo))
	for _, tc := range []struct {
		method, path string
		code         int
		want         string
	}{
		{http.MethodGet, "/nope", http.StatusNotFound, "no such endpoint: /nope"},
		{http.MethodGet, "/v1/services/extra", http.StatusNotFound, "no such endpoint"},
		{http.MethodPost, "/v1/services", http.StatusMethodNotAllowed, "use GET"},
	} {
		code, body := httpDo(t, tc.method, d.url+tc.path)
		var v struct{ Error string }
		if err := json.Unmarshal(body, &v); err != nil {
			t.Errorf("%s %s: not JSON (%v): %s", tc.method, tc.path, err, body)
			continue
		}
		if code != tc.code || !strings.Contains(v.Error, tc.want) {
			t.Errorf("%s %s = %d %q, want %d with %q", tc.method, tc.path, code, v.Error, tc.code, tc.want)
		}
	}
}

// TestAdminReadyWaitsForDiscovery: /readyz says 503, naming the provider,
// until the DNS provider has sent its first snapshot, then 200; the
// discovered backend then shows in /v1/services and /v1/discovery.
func TestAdminReadyWaitsForDiscovery(t *testing.T) {
	echo := testenv.Echo(t, "127.0.0.1:0")
	_, port, err := splitPort(echo)
	if err != nil {
		t.Fatal(err)
	}
	dnsSrv := testenv.StartDNS(t)
	dnsSrv.SetTTL(0)
	dnsSrv.SetA("echo.test", "127.0.0.1")
	dnsSrv.SetSRV("_echo._tcp.test", testenv.SRV{Weight: 1, Port: port, Target: "echo.test."})
	dnsSrv.Fail("", testenv.FailDrop)
	// The first query gets no reply; the provider reports only once it
	// timed out (3s), which leaves a window to see the 503 in.
	d := startAdminDaemon(t, fmt.Sprintf(`discovery:
  dns: {server: %q, min_ttl: 10ms, max_ttl: 50ms, timeout: 3s}
services:
  - name: s
    listen: 127.0.0.1:0
    backends: [srv://_echo._tcp.test]
`, dnsSrv.Addr))

	// No timing assumption: the 503 is required only when the provider's
	// status, read before and after, shows no exchange has finished.
	unanswered := func() bool {
		ps := discoveryOf(t, d)
		return len(ps) == 1 && !ps[0].Reported
	}
	if !unanswered() {
		t.Fatal("the DNS provider reported before its first query could time out")
	}
	code, body := d.get(t, "/readyz")
	if !unanswered() {
		t.Errorf("the DNS provider's 3s timeout passed before /readyz was read twice; cannot check the 503 (got %d %s)", code, body)
	} else {
		var v struct {
			Ready bool
			Error string
		}
		json.Unmarshal(body, &v)
		if code != http.StatusServiceUnavailable || v.Ready || !strings.Contains(v.Error, `discovery provider "dns"`) {
			t.Errorf("/readyz before discovery = %d %s, want 503 naming provider dns", code, body)
		}
	}
	if value(d.scrape(t), "attache_discovery_ready", map[string]string{"provider": "dns"}) != 0 && unanswered() {
		t.Error("attache_discovery_ready is 1 before the provider reported")
	}

	// The query that is dropped must have been sent before the failure
	// is lifted (on a loaded machine the provider may not have asked yet).
	testenv.WaitFor(t, "the provider's first query", func() bool {
		return dnsSrv.Queries("_echo._tcp.test") > 0
	})
	dnsSrv.Fail("", testenv.FailNone)
	testenv.WaitFor(t, "/readyz to say 200", func() bool {
		code, _ := d.get(t, "/readyz")
		return code == http.StatusOK
	})
	testenv.WaitFor(t, "the discovered backend in /v1/services", func() bool {
		s := d.services(t)["s"]
		return len(s.Backends) == 1 && s.Backends[0].Addr == "127.0.0.1:"+fmt.Sprint(port)
	})
	s := d.services(t)["s"]
	if len(s.Discovery) != 1 || !strings.Contains(s.Discovery[0], "_echo._tcp.test") {
		t.Errorf("service discovery entries %q, want the srv entry", s.Discovery)
	}
	testenv.WaitFor(t, "the dns provider to be up", func() bool {
		ps := discoveryOf(t, d)
		return len(ps) == 1 && ps[0].Up && ps[0].Name == "dns"
	})
	fams := d.scrape(t)
	for _, name := range []string{"attache_discovery_ready", "attache_discovery_up"} {
		if got := value(fams, name, map[string]string{"provider": "dns"}); got != 1 {
			t.Errorf("%s{provider=dns} = %v, want 1", name, got)
		}
	}
	// The dropped first query is one failed contact; the answers since are
	// snapshots (at least the one that made the service ready).
	dnsLabel := map[string]string{"provider": "dns"}
	if got := value(fams, "attache_discovery_errors_total", dnsLabel); got < 1 {
		t.Errorf("attache_discovery_errors_total{provider=dns} = %v, want at least 1 (the dropped query)", got)
	}
	if got := value(fams, "attache_discovery_updates_total", dnsLabel); got < 1 {
		t.Errorf("attache_discovery_updates_total{provider=dns} = %v, want at least 1", got)
	}
	_, body = d.get(t, "/v1/discovery")
	if !strings.Contains(string(body), `"name": "_echo._tcp.test`) {
		t.Errorf("/v1/discovery lacks the query's status: %s", body)
	}
}

func discoveryOf(t *testing.T, d *adminDaemon) []admin.Provider {
	t.Helper()
	code, body := d.get(t, "/v1/discovery")
	if code != http.StatusOK {
		t.Fatalf("/v1/discovery: %d %s", code, body)
	}
	var v struct{ Providers []admin.Provider }
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("/v1/discovery: %v in %s", err, body)
	}
	return v.Providers
}

// TestAdminPortTaken: a taken admin port fails Run before any service
// listener is left open.
func TestAdminPortTaken(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	free := testenv.FreePort(t, "127.0.0.1")
	cfg := &config.Config{Services: []config.Service{service("a", fmt.Sprintf("127.0.0.1:%d", free), "127.0.0.1:1")}}
	err = Run(context.Background(), cfg, Options{Admin: taken.Addr().String()})
	if !errors.Is(err, syscall.EADDRINUSE) || !strings.Contains(err.Error(), "admin") {
		t.Fatalf("Run = %v; want an admin EADDRINUSE error", err)
	}
	testenv.RequireClosed(t, fmt.Sprintf("127.0.0.1:%d", free)) // the service's
}

// TestAdminFailureMetrics: failed dials, retries, ejections and refused
// connections are counted where they happened, per service and backend.
func TestAdminFailureMetrics(t *testing.T) {
	echo := testenv.Echo(t, "127.0.0.1:0")
	dead := deadAddr(t)
	d := startAdminDaemon(t, fmt.Sprintf(`services:
  - name: web
    listen: 127.0.0.1:0
    balance: first
    backends: [%q, %q]
    eject_time: 1h
  - name: none
    listen: 127.0.0.2:0 # the daemon keys listeners by configured address
    backends: [%q]
    retries: 1
    retry_timeout: 200ms
`, dead, echo, dead))
	ports := map[string]string{}
	for _, b := range d.bound {
		ports[b.Service] = b.Addr.String()
	}
	// web: the first connection tries the dead backend first (balance
	// first), fails over to the echo server and ejects the dead one; the
	// next ones go straight to the echo server.
	const n = 3
	for range n {
		c, err := net.Dial("tcp", ports["web"])
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(30 * time.Second))
		echoOnce(t, c, "x")
		c.Close()
	}
	// none: its only backend is dead, so the client is closed unanswered.
	c, err := net.Dial("tcp", ports["none"])
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if b, _ := io.ReadAll(c); len(b) != 0 {
		t.Errorf("service none answered %q through a dead backend", b)
	}
	c.Close()

	web, none := map[string]string{"service": "web"}, map[string]string{"service": "none"}
	var fams map[string]*dto.MetricFamily
	testenv.WaitFor(t, "the refused connection to be counted", func() bool {
		fams = d.scrape(t)
		return value(fams, "attache_proxy_connections_failed_total", none) == 1
	})
	for _, tc := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"attache_proxy_connections_retried_total", web, 1},
		{"attache_proxy_dial_errors_total", web, 1},
		{"attache_proxy_connections_failed_total", web, 0},
		{"attache_proxy_dial_duration_seconds", web, n},
		{"attache_backend_dial_errors_total", map[string]string{"service": "web", "backend": dead}, 1},
		{"attache_backend_ejections_total", map[string]string{"service": "web", "backend": dead}, 1},
		{"attache_backend_connections_total", map[string]string{"service": "web", "backend": dead}, 0},
		{"attache_backend_connections_total", map[string]string{"service": "web", "backend": echo}, n},
		{"attache_backend_healthy", map[string]string{"service": "web", "backend": dead}, 0},
		{"attache_proxy_dial_errors_total", none, 2}, // one retry
		{"attache_backend_dial_errors_total", map[string]string{"service": "none", "backend": dead}, 2},
		{"attache_proxy_connections_no_backend_total", none, 0}, // it had one; it failed
		{"attache_proxy_dial_duration_seconds", none, 0},
	} {
		if got := value(fams, tc.name, tc.labels); got != tc.want {
			t.Errorf("%s%v = %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}
	var svc admin.Service = d.services(t)["web"]
	for _, b := range svc.Backends {
		if b.Addr == dead && (b.DialErrors != 1 || b.Ejections != 1 || b.EjectedUntil.IsZero()) {
			t.Errorf("dead backend in /v1/services: %+v, want 1 dial error, 1 ejection, ejected", b)
		}
	}
}

// deadAddr returns a loopback address where nothing listens: a port the
// kernel gave out and that was closed again.
func deadAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// TestAdminConnectionsQuery: /v1/connections filters by service and
// bounds the listing, saying how many matched; bad queries are 4xx.
func TestAdminConnectionsQuery(t *testing.T) {
	echo := testenv.Echo(t, "127.0.0.1:0")
	d := startAdminDaemon(t, fmt.Sprintf(`services:
  - {name: web, listen: 127.0.0.1:0, backends: [%q]}
  - {name: other, listen: 127.0.0.2:0, backends: [%q]}
`, echo, echo))
	for _, b := range d.bound {
		k := 1
		if b.Service == "web" {
			k = 3
		}
		for range k {
			c, err := net.Dial("tcp", b.Addr.String())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			c.SetDeadline(time.Now().Add(30 * time.Second))
			echoOnce(t, c, "hi") // dialled and counted
		}
	}
	type listing struct {
		Connections []admin.Connection
		Total       int
		Truncated   bool
	}
	get := func(query string) (int, listing, string) {
		code, body := d.get(t, "/v1/connections"+query)
		var l listing
		json.Unmarshal(body, &l)
		return code, l, string(body)
	}
	if code, l, body := get(""); code != http.StatusOK || l.Total != 4 || len(l.Connections) != 4 || l.Truncated {
		t.Errorf("all: %d %s, want 4 connections", code, body)
	} else if !slices.IsSortedFunc(l.Connections, func(a, b admin.Connection) int { return cmp.Compare(a.ID, b.ID) }) {
		t.Errorf("all: %s, want oldest first", body)
	}
	if code, l, body := get("?service=web&limit=2"); code != http.StatusOK || l.Total != 3 || len(l.Connections) != 2 || !l.Truncated ||
		l.Connections[0].Service != "web" || l.Connections[1].Service != "web" {
		t.Errorf("web, limit 2: %d %s, want 2 of 3 web connections, truncated", code, body)
	}
	// The copy loops count a chunk just after writing it: poll for it.
	testenv.WaitFor(t, "the other service's connection to show 2 bytes each way", func() bool {
		code, l, _ := get("?service=other&limit=0")
		return code == http.StatusOK && l.Total == 1 && len(l.Connections) == 1 &&
			l.Connections[0].BytesIn == 2 && l.Connections[0].BytesOut == 2
	})
	for _, tc := range []struct {
		query string
		code  int
		want  string
	}{
		{"?service=nope", http.StatusNotFound, `no service \"nope\"`},
		{"?limit=-1", http.StatusBadRequest, "limit: want a whole number"},
		{"?limit=lots", http.StatusBadRequest, `got \"lots\"`},
	} {
		if code, _, body := get(tc.query); code != tc.code || !strings.Contains(body, tc.want) {
			t.Errorf("%s: %d %s, want %d with %q", tc.query, code, body, tc.code, tc.want)
		}
	}
}
