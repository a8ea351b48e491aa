package health

import (
	"context"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/attache/attache/internal/testenv"
)

// TestCheckUnixSocket: both checkers reach a unix:///path backend.
func TestCheckUnixSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "redis.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Serve(t, ln, func(c net.Conn) {
		buf := make([]byte, 6)
		if _, err := io.ReadFull(c, buf); err == nil && string(buf) == "PING\r\n" {
			io.WriteString(c, "+PONG\r\n")
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	addr := "unix://" + path
	if err := (TCP{}).Check(ctx, addr); err != nil {
		t.Fatalf("TCP check: %v", err)
	}
	if err := (SendExpect{Send: []byte("PING\r\n"), Expect: []byte("+PONG")}).Check(ctx, addr); err != nil {
		t.Fatalf("send/expect check: %v", err)
	}
	ln.Close()
	if err := (TCP{}).Check(ctx, addr); err == nil || !strings.Contains(err.Error(), "connect:") {
		t.Fatalf("TCP check of a closed socket: %v, want a connect error", err)
	}
}
