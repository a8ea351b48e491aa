package daemon

import (
	"runtime"
	"testing"

	"github.com/attache/attache/internal/config"
	"github.com/attache/attache/internal/testenv"
)

// /metrics serves attache_build_info with the version the daemon was
// given and the Go version, and the standard Go runtime and process
// collectors.
func TestMetricsBuildInfo(t *testing.T) {
	cfg := &config.Config{Services: []config.Service{service("s", "127.0.0.1:0", testenv.Echo(t, "127.0.0.1:0"))}}
	run := startRun(t, cfg, Options{Admin: "127.0.0.1:0", Version: "v1.2.3-test"})
	d := &adminDaemon{url: "http://" + run.Admin}
	fams := d.scrape(t)
	info := fams["attache_build_info"]
	if info == nil || len(info.Metric) != 1 || len(info.Metric[0].Label) != 2 {
		t.Fatalf("attache_build_info = %v, want one series with two labels", info)
	}
	if v := value(fams, "attache_build_info", map[string]string{"version": "v1.2.3-test", "goversion": runtime.Version()}); v != 1 {
		t.Errorf("attache_build_info{version=v1.2.3-test,goversion=%s} = %v, want 1; served %v", runtime.Version(), v, info)
	}
	// A daemon has goroutines, and open descriptors: its listeners.
	for _, name := range []string{"go_goroutines", "process_open_fds"} {
		if v := value(fams, name, nil); v <= 0 {
			t.Errorf("%s = %v, want it served and above 0", name, v)
		}
	}
}
