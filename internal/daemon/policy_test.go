package daemon

import (
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/attache/attache/internal/testenv"
)

// TestFirstPolicyFollowsListOrder: with balance: first, fixed backends are a
// failover list: every connection goes to the first listed while it is up,
// and to the next one when it dies.
func TestFirstPolicyFollowsListOrder(t *testing.T) {
	named := func(name string) (string, net.Listener) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		testenv.Serve(t, ln, func(c net.Conn) { _, _ = io.WriteString(c, name) })
		return ln.Addr().String(), ln
	}
	primary, primaryLn := named("primary")
	backup, _ := named("backup")
	addr, _ := startDaemon(t, fmt.Sprintf(`services:
  - name: s
    listen: 127.0.0.1:0
    backends: [%s, %s]
    balance: first
`, primary, backup))
	reach := func() string {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		b, _ := io.ReadAll(c)
		return string(b)
	}
	for i := range 20 {
		if got := reach(); got != "primary" {
			t.Fatalf("connection %d reached %q, want primary (the first listed)", i, got)
		}
	}
	primaryLn.Close()
	for i := range 5 {
		if got := reach(); got != "backup" {
			t.Fatalf("with the primary down, connection %d reached %q, want backup", i, got)
		}
	}
}
