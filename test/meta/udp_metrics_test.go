package meta

import (
	"fmt"
	"testing"

	"github.com/attache/attache/internal/config"
	"github.com/attache/attache/internal/testenv"
)

// TestUDPMetricNames lints the UDP metrics as a daemon with a UDP service
// serves them (TestMetricNames covers the rest).
func TestUDPMetricNames(t *testing.T) {
	lintServed(t, udpConfig(t), "attache_udp_sessions_active", "attache_udp_sessions_max", "attache_udp_sessions_created_total",
		"attache_udp_sessions_ended_total", "attache_udp_datagrams_total", "attache_udp_bytes_total", "attache_udp_datagrams_dropped_total")
}

func udpConfig(t *testing.T) *config.Config {
	t.Helper()
	echo := testenv.StartUDPEcho(t, "127.0.0.1:0", "")
	cfg, err := config.Load(config.Sources{File: "test.yaml", FileData: fmt.Appendf(nil, `services:
  - name: u
    protocol: udp
    listen: 127.0.0.1:0
    backends: [%q]
`, echo.Addr)})
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestTransparentMetricNames lints the transparent listener's metrics, the
// per-consumer ones included (their lookups go to the real Docker engine).
func TestTransparentMetricNames(t *testing.T) {
	lintServed(t, transparentConfig(t), "attache_transparent_connections_total", "attache_transparent_caller_lookups_total",
		"attache_transparent_caller_cache_hits_total", "attache_transparent_consumer_routes", "attache_transparent_consumer_bad_values_total")
}

func transparentConfig(t *testing.T) *config.Config {
	t.Helper()
	testenv.DockerAvailable(t)
	echo := testenv.Echo(t, "127.0.0.1:0")
	cfg, err := config.Load(config.Sources{File: "test.yaml", FileData: fmt.Appendf(nil, `discovery:
  docker: {host: "unix://%s"}
transparent:
  listen: 127.0.0.1:%d
  per_consumer: true
services:
  - name: s
    listen: 127.0.0.1:0
    backends: [%q]
`, testenv.DockerSocket(t), testenv.FreePort(t, "127.0.0.1"), echo)})
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}
