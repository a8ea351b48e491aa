package meta

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/attache/attache/internal/certs"
	"github.com/attache/attache/internal/config"
	"github.com/attache/attache/internal/testenv"
)

// TestLinkMetricNames lints the link's metrics as a daemon with a link
// server serves them (TestMetricNames covers the rest).
func TestLinkMetricNames(t *testing.T) {
	lintServed(t, linkConfig(t), "attache_link_handshakes_total", "attache_link_refused_total", "attache_link_dial_errors_total",
		"attache_link_certificate_reloads_total", "attache_link_certificate_expiry_timestamp_seconds")
}

// linkConfig has a link server offering a service, made with real
// certificates.
func linkConfig(t *testing.T) *config.Config {
	t.Helper()
	dir := t.TempDir()
	if _, err := certs.Init(certs.InitOptions{Dir: dir}); err != nil {
		t.Fatal(err)
	}
	if _, err := certs.Issue(certs.IssueOptions{Dir: dir, Name: "host"}); err != nil {
		t.Fatal(err)
	}
	echo := testenv.Echo(t, "127.0.0.1:0")
	cfg, err := config.Load(config.Sources{File: "test.yaml", FileData: fmt.Appendf(nil, `link:
  listen: 127.0.0.1:0
  cert: %s
  key: %s
  ca: %s
  offer: {s: ["*"]}
services:
  - name: s
    listen: 127.0.0.1:0
    backends: [%q]
`, filepath.Join(dir, "host.crt"), filepath.Join(dir, "host.key"), filepath.Join(dir, "fleet-ca.crt"), echo)})
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}
