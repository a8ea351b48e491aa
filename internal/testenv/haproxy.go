package testenv

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// HAProxy runs a real haproxy (Debian's package) in the foreground with
// the given configuration sections (frontends, backends, listens) after a
// fixed global and defaults block in TCP mode, and waits until every
// address in wait accepts connections. It is stopped when the test ends.
// Test configurations bind to 127.0.0.1 or ::1 ports from FreePort.
func HAProxy(t testing.TB, sections string, wait ...string) {
	t.Helper()
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		t.Fatalf("haproxy is not installed (apt-get install haproxy): %v", err)
	}
	cfg := `global
    nbthread 1
    log stderr format raw local0 notice

defaults
    mode tcp
    log global
    option dontlognull
    timeout connect 5s
    timeout client 30s
    timeout server 30s

` + sections
	path := filepath.Join(t.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "-c", "-f", path).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c: %v\n%s\nconfiguration:\n%s", err, out, cfg)
	}
	var out LogBuffer
	cmd := exec.Command(bin, "-db", "-f", path)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start haproxy: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("haproxy output:\n%s", out.String())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for _, addr := range wait {
		for {
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err == nil {
				c.Close()
				break
			}
			select {
			case <-exited:
				t.Fatalf("haproxy exited before listening on %s:\n%s", addr, out.String())
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("haproxy does not listen on %s: %v\n%s", addr, err, out.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}
