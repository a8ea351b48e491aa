package meta

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/attache/attache/internal/config"
	"github.com/attache/attache/internal/daemon"
	"github.com/attache/attache/internal/testenv"
)

// TestMetricNames scrapes a real daemon whose configuration makes every
// kind of series appear (a service with a backend and a discovery
// provider), and lints what it serves with promlint, plus the project's
// own rule: every name is attache_<subsystem>_<name>.
func TestMetricNames(t *testing.T) {
	lintServed(t, servicesConfig(t), "attache_proxy_connections_accepted_total", "attache_backend_healthy",
		"attache_reload_total", "attache_discovery_up", "attache_proxy_dial_duration_seconds",
		"attache_discovery_errors_total", "attache_access_log_dropped_total", "attache_build_info",
		"go_goroutines", "process_open_fds")
}

// servicesConfig has a service with a fixed backend and a DNS one, so that
// the proxy, backend and discovery series appear.
func servicesConfig(t *testing.T) *config.Config {
	t.Helper()
	echo := testenv.Echo(t, "127.0.0.1:0")
	dns := testenv.StartDNS(t)
	dns.SetA("echo.test", "127.0.0.1")
	cfg, err := config.Load(config.Sources{File: "test.yaml", FileData: fmt.Appendf(nil, `discovery:
  dns: {server: %q}
services:
  - name: s
    listen: 127.0.0.1:0
    backends: [%q, "dns://echo.test:1"]
`, dns.Addr, echo)})
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestMetricsDocumented: the metrics table of docs/admin-and-metrics.md
// names exactly the attache_* metrics that daemons configured to show
// every kind of series (services, UDP, a link server, a transparent
// listener) serve.
func TestMetricsDocumented(t *testing.T) {
	served := map[string]bool{}
	for _, cfg := range []*config.Config{servicesConfig(t), udpConfig(t), linkConfig(t), transparentConfig(t)} {
		for n := range servedNames(t, cfg) {
			served[n] = true
		}
	}
	doc, err := readPage("docs/admin-and-metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	row := regexp.MustCompile("(?m)^\\| `attache_[^|]*\\|")
	name := regexp.MustCompile("`(attache_[a-z0-9_]+)`")
	for _, r := range row.FindAllString(doc, -1) {
		for _, m := range name.FindAllStringSubmatch(r, -1) {
			documented[m[1]] = true
		}
	}
	for n := range served {
		if !standard(n) && !documented[n] {
			t.Errorf("metric %s is served but not in the table of docs/admin-and-metrics.md", n)
		}
	}
	for n := range documented {
		if !served[n] {
			t.Errorf("docs/admin-and-metrics.md lists %s, which no daemon served", n)
		}
	}
}

// standard reports whether name comes from client_golang's Go runtime
// (go_*) or process (process_*) collector: named by the Prometheus
// conventions every exporter shares, not by attache's rule. promlint still
// checks them.
func standard(name string) bool {
	return strings.HasPrefix(name, "go_") || strings.HasPrefix(name, "process_")
}

// scrape runs a daemon with cfg and returns what its /metrics serves.
func scrape(t *testing.T, cfg *config.Config) []byte {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	adminAddr := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() {
		done <- daemon.Run(ctx, cfg, daemon.Options{Admin: "127.0.0.1:0", AdminReady: func(a net.Addr) { adminAddr <- a }})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	var url string
	select {
	case a := <-adminAddr:
		url = "http://" + a.String() + "/metrics"
	case err := <-done:
		t.Fatalf("Run: %v", err)
	}
	// Every provider has reported once the daemon is ready, so the
	// series of discovery are there to see.
	ready := strings.TrimSuffix(url, "metrics") + "readyz"
	testenv.WaitFor(t, "the daemon to be ready", func() bool {
		resp, err := http.Get(ready)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
	}
	return body
}

var typeRE = regexp.MustCompile(`(?m)^# TYPE (\S+)`)

// servedNames is the set of metric names a daemon with cfg serves.
func servedNames(t *testing.T, cfg *config.Config) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	for _, m := range typeRE.FindAllSubmatch(scrape(t, cfg), -1) {
		out[string(m[1])] = true
	}
	return out
}

// lintServed runs a daemon with cfg, scrapes its /metrics, lints what it
// serves with promlint plus the project's own rule (every name is
// attache_<subsystem>_<name>, but for the standard collectors'), and checks that each of want was served, so
// a lint that passes is known to have covered them.
func lintServed(t *testing.T, cfg *config.Config, want ...string) {
	t.Helper()
	body := scrape(t, cfg)
	problems, err := promlint.New(strings.NewReader(string(body))).Lint()
	if err != nil {
		t.Fatalf("promlint: %v", err)
	}
	for _, p := range problems {
		t.Errorf("metric %s: %s", p.Metric, p.Text)
	}
	names := regexp.MustCompile(`(?m)^# TYPE (\S+)`).FindAllStringSubmatch(string(body), -1)
	if len(names) == 0 {
		t.Fatalf("no metrics served:\n%s", body)
	}
	shape := regexp.MustCompile(`^attache_[a-z]+_[a-z0-9_]+$`)
	seen := map[string]bool{}
	for _, n := range names {
		seen[n[1]] = true
		if standard(n[1]) {
			continue
		}
		if !shape.MatchString(n[1]) {
			t.Errorf("metric %s is not named attache_<subsystem>_<name>_<unit>", n[1])
		}
	}
	for _, w := range want {
		if !seen[w] {
			t.Errorf("metric %s not served; the lint did not cover it", w)
		}
	}
}

// TestAdminEndpointsDocumented: every route the admin API registers
// (internal/admin's ServeMux patterns) has its row in the endpoint table
// of docs/admin-and-metrics.md, and every row is a registered route.
func TestAdminEndpointsDocumented(t *testing.T) {
	src, err := os.ReadFile(filepath.Join(repoRoot(), "internal", "admin", "admin.go"))
	if err != nil {
		t.Fatal(err)
	}
	routes := map[string]bool{}
	for _, m := range regexp.MustCompile(`Handle(?:Func)?\("((?:GET|POST|PUT|DELETE) /[^"]*)"`).FindAllSubmatch(src, -1) {
		routes[strings.Replace(string(m[1]), "{$}", "", 1)] = true
	}
	if len(routes) < 10 {
		t.Fatalf("found only %d admin routes: %v", len(routes), routes)
	}
	doc, err := readPage("docs/admin-and-metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	for _, m := range regexp.MustCompile("(?m)^\\| `((?:GET|POST|PUT|DELETE) /[^`]*)`").FindAllStringSubmatch(doc, -1) {
		documented[m[1]] = true
	}
	for r := range routes {
		if !documented[r] {
			t.Errorf("admin route %q is not in the table of docs/admin-and-metrics.md", r)
		}
	}
	for d := range documented {
		if !routes[d] {
			t.Errorf("docs/admin-and-metrics.md documents %q, which internal/admin does not register", d)
		}
	}
}
