package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/attache/attache/internal/config"
	"github.com/attache/attache/internal/testenv"
)

func service(name, listen, backend string) config.Service {
	return config.Service{Name: name, Listen: listen, Backends: []config.Backend{{Addr: backend}},
		ConnectTimeout: time.Second, Origin: "test " + name}
}

// TestAllListenersOrNone: when the second port is taken, Run fails naming
// it, and the first port it had opened is closed again.
func TestAllListenersOrNone(t *testing.T) {
	free := testenv.FreePort(t, "127.0.0.1")
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	cfg := &config.Config{Services: []config.Service{
		service("a", fmt.Sprintf("127.0.0.1:%d", free), "127.0.0.1:1"),
		service("b", taken.Addr().String(), "127.0.0.1:1"),
	}}
	err = Run(context.Background(), cfg, Options{})
	var le *ListenError
	if !errors.As(err, &le) || le.Service.Name != "b" || !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("Run = %v; want a ListenError for service b with EADDRINUSE", err)
	}
	if want := taken.Addr().String(); !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not name the port %s", err, want)
	}
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", free))
	if err != nil {
		t.Fatalf("service a's port was left open: %v", err)
	}
	ln.Close()
}

// TestRunServesUntilCancelled runs two services, checks both forward, and
// that cancelling stops them and closes the ports.
func TestRunServesUntilCancelled(t *testing.T) {
	echo := testenv.Echo(t, "127.0.0.1:0")
	cfg := &config.Config{Services: []config.Service{
		service("one", "127.0.0.1:0", echo),
		service("two", "127.0.0.1:0", echo),
	}}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan []Bound, 1)
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, Options{Ready: func(b []Bound) { ready <- b }}) }()
	var bound []Bound
	select {
	case bound = <-ready:
	case err := <-done:
		t.Fatal(err)
	}
	for _, b := range bound {
		c, err := net.Dial("tcp", b.Addr.String())
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, b.Service)
		c.(*net.TCPConn).CloseWrite()
		got, _ := io.ReadAll(c)
		c.Close()
		if string(got) != b.Service {
			t.Errorf("%s: got %q", b.Service, got)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	for _, b := range bound {
		if c, err := net.Dial("tcp", b.Addr.String()); err == nil {
			c.Close()
			t.Errorf("%s still listening after Run returned", b.Service)
		}
	}
}

func TestListenNetwork(t *testing.T) {
	for addr, want := range map[string]string{
		"0.0.0.0:6379":   "tcp4",
		"127.0.0.1:1":    "tcp4",
		"[::1]:1":        "tcp6",
		"[::]:1":         "tcp",
		":6379":          "tcp",
		"localhost:6379": "tcp",
	} {
		if got := listenNetwork(addr); got != want {
			t.Errorf("listenNetwork(%q) = %q, want %q", addr, got, want)
		}
	}
}
