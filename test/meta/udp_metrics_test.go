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
	lintServed(t, cfg, "attache_udp_sessions_active", "attache_udp_sessions_max", "attache_udp_sessions_created_total",
		"attache_udp_sessions_ended_total", "attache_udp_datagrams_total", "attache_udp_bytes_total", "attache_udp_datagrams_dropped_total")
}
