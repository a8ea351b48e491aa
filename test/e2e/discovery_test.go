package e2e

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/attache/attache/internal/testenv"
)

// TestSRVDiscoveryBinary runs the built binary against a real DNS server
// (in this test process): an SRV backend is followed live, with no SIGHUP and
// no restart, and an SRV target that stops answering is failed over.
func TestSRVDiscoveryBinary(t *testing.T) {
	t.Parallel()
	one := nameServer(t, "one")
	twoLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	testenv.Serve(t, twoLn, func(c net.Conn) { _, _ = c.Write([]byte("two")) })
	two := twoLn.Addr().String()
	d := testenv.StartDNS(t)
	d.SetTTL(0)
	d.SetA("backend.test", "127.0.0.1")
	srv := func(addr string) testenv.SRV {
		_, port, _ := net.SplitHostPort(addr)
		p, _ := strconv.Atoi(port)
		return testenv.SRV{Priority: 0, Weight: 1, Port: uint16(p), Target: "backend.test."}
	}
	d.SetSRV("_svc._tcp.test", srv(one))
	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	file := filepath.Join(t.TempDir(), "attache.yaml")
	cfg := fmt.Sprintf(`discovery:
  dns: {server: %q, min_ttl: 50ms, max_ttl: 1s}
services:
  - name: svc
    listen: %s
    backends: [_svc._tcp.test]   # a bare name: SRV, as ambassadord read it
`, d.Addr, listen)
	if err := os.WriteFile(file, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	p := startAttache(t, nil, "-c", file)
	p.listenAddrs(t, 1)
	waitName := func(want string) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		got := ""
		for time.Now().Before(deadline) {
			if got = reachName(t, listen); got == want {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatalf("reached %q, want %q", got, want)
	}
	waitName("one")
	d.SetSRV("_svc._tcp.test", srv(two))
	waitName("two")
	// A lower priority tier is used only when the first one is down.
	backup := srv(one)
	backup.Priority = 10
	d.SetSRV("_svc._tcp.test", srv(two), backup)
	p.waitLog(t, regexp.MustCompile(`msg="backends changed" service=svc discovered=2`), 20*time.Second)
	waitName("two")
	// The first tier dies: connections fail over to the backup tier at
	// once (passive ejection), before any DNS change.
	twoLn.Close()
	for range 5 {
		if got := reachName(t, listen); got != "one" {
			t.Fatalf("with the first tier down reached %q, want the backup tier (one)", got)
		}
	}
	p.signal(t, 15) // SIGTERM
	if code := p.wait(t, 15*time.Second); code != 0 {
		t.Fatalf("exit %d after SIGTERM", code)
	}
}
