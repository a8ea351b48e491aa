package e2e

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/attache/attache/internal/testenv"
)

// TestUpgradeLinkServerUnderLoad upgrades a link server five times while a
// client-side attache carries short connections and rolling streams to it
// over a multiplexed link. Each old process takes its pooled connections
// out of service: the streams open on them run to their end there, and a
// new stream is opened again, on a new connection, to the new process,
// before the client sees anything.
//
// What is asserted: not one connection fails or is corrupted, not one
// stream breaks, each old process exits 0 once its streams are over, the
// client logs no warning, and the client opened a new pooled connection
// after each upgrade.
func TestUpgradeLinkServerUnderLoad(t *testing.T) {
	t.Parallel()
	const upgrades = 5
	dir := t.TempDir()
	mustRun(t, attacheBin, "certs", "init", "--dir", dir)
	for _, h := range []string{"host-a", "host-b"} {
		mustRun(t, attacheBin, "certs", "issue", h, "--dir", dir)
	}
	files := func(host string) string {
		return fmt.Sprintf("  cert: %s\n  key: %s\n  ca: %s\n", filepath.Join(dir, host+".crt"),
			filepath.Join(dir, host+".key"), filepath.Join(dir, "fleet-ca.crt"))
	}
	linkAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	server := writeLinkFile(t, dir, "server.yaml", fmt.Sprintf(`link:
  listen: %s
%s  offer:
    echo: [host-a]
services:
  - name: echo
    listen: 127.0.0.1:0
    backends: [%s]
`, linkAddr, files("host-b"), echoServer(t)))
	client := writeLinkFile(t, dir, "client.yaml", fmt.Sprintf(`link:
%sservices:
  - name: echo
    listen: 127.0.0.1:0
    backends: ["attache://%s/echo"]
`, files("host-a"), linkAddr))

	pidFile := filepath.Join(dir, "server.pid")
	c := startChain(t, attacheBin, "-c", server, "--pid-file", pidFile, "--grace", "60s", "--access-log=false")
	c.waitLog(regexp.MustCompile(`msg="link server listening"`), startTimeout)
	pc := startAttache(t, nil, "-c", client, "--access-log=false", "--admin", "127.0.0.1:0")
	addr := pc.listenAddrs(t, 1)[0]
	adminAddr := pc.waitLog(t, adminListeningRE, startTimeout)[1]

	traffic := testenv.StartTraffic(t, addr, 4, 0)
	streams := startRollingStreams(t, addr, 3)
	traffic.AwaitProgress(20)
	for i := range upgrades {
		old := c.current()
		if err := syscall.Kill(old.pid, syscall.SIGUSR2); err != nil {
			t.Fatalf("upgrade %d: SIGUSR2 to pid %d: %v", i+1, old.pid, err)
		}
		c.adopt(awaitPIDFile(t, pidFile, old.pid, startTimeout))
		if code := old.waitExit(t, 2*time.Minute); code != 0 {
			t.Fatalf("upgrade %d: old link server pid %d exited %d, want 0", i+1, old.pid, code)
		}
		traffic.AwaitProgress(20)
	}
	res := traffic.Stop()
	streams.stop()
	t.Logf("after %d link server upgrades: %v; streams ok=%d broken=%d", upgrades, res, streams.ok.Load(), streams.broken.Load())
	if res.ShortFailed != 0 || res.StreamFailed != 0 {
		t.Errorf("connections failed or corrupted: %v", res)
	}
	if n := streams.broken.Load(); n != 0 {
		t.Errorf("%d streams broke: %q", n, streams.errs)
	}
	if streams.ok.Load() == 0 {
		t.Error("no stream completed")
	}
	for _, line := range strings.Split(pc.stderr.String(), "\n") {
		if strings.Contains(line, "level=ERROR") || strings.Contains(line, "level=WARN") {
			t.Errorf("client log: %s", line)
		}
	}
	metrics := httpGet(t, "http://"+adminAddr+"/metrics")
	m := regexp.MustCompile(`(?m)^attache_link_sessions_opened_total\{side="client"\} (\d+)`).FindStringSubmatch(metrics)
	if m == nil {
		t.Fatalf("no attache_link_sessions_opened_total in the client's metrics")
	}
	if n, _ := strconv.Atoi(m[1]); n < upgrades+1 {
		t.Errorf("the client opened %d pooled connections over %d upgrades, want at least %d (one per process)", n, upgrades, upgrades+1)
	}
}
