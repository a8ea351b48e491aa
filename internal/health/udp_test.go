package health

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/attache/attache/internal/testenv"
)

func TestUDP(t *testing.T) {
	echo := testenv.StartUDPEcho(t, "127.0.0.1:0", "pong:")
	ok := UDP{Send: []byte("ping"), Expect: []byte("pong:ping")}
	if err := ok.Check(checkCtx(t), echo.Addr); err != nil {
		t.Fatalf("check of an answering server: %v", err)
	}
	if err := (UDP{Send: []byte("ping")}).Check(checkCtx(t), echo.Addr); err != nil {
		t.Fatalf("check without expect (any reply passes): %v", err)
	}
	err := UDP{Send: []byte("ping"), Expect: []byte("+PONG")}.Check(checkCtx(t), echo.Addr)
	if err == nil || !strings.Contains(err.Error(), `expected "+PONG", got "pong:ping"`) {
		t.Fatalf("check with the wrong reply: %v", err)
	}

	gone := testenv.StartUDPEcho(t, "127.0.0.1:0", "")
	gone.Close()
	err = ok.Check(checkCtx(t), gone.Addr)
	if err == nil || !strings.Contains(err.Error(), "port closed") {
		t.Fatalf("check of a closed port: %v", err)
	}

	// A server that reads and never answers: the probe's deadline ends it.
	silent, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	err = ok.Check(ctx, silent.LocalAddr().String())
	if err == nil || !strings.Contains(err.Error(), "timed out") {
		t.Fatalf("check of a silent server: %v", err)
	}
}

func TestUDPResolvesWithItsResolver(t *testing.T) {
	echo := testenv.StartUDPEcho(t, "127.0.0.1:0", "")
	dns := testenv.StartDNS(t)
	dns.SetA("echo.test", "127.0.0.1")
	_, port, _ := net.SplitHostPort(echo.Addr)
	c := UDP{Send: []byte("hi"), Expect: []byte("hi"), Resolver: dns.Resolver()}
	if err := c.Check(checkCtx(t), "echo.test:"+port); err != nil {
		t.Fatal(err)
	}
	if dns.Queries("echo.test.") == 0 {
		t.Error("the name was not resolved through the resolver given")
	}
}
