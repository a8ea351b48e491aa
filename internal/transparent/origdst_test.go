package transparent

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"testing"
	"time"

	"github.com/attache/attache/internal/testenv"
)

// needNetns makes a namespace with iptables, or fails the test: these
// tests are the proof that the kernel's answer is read right, so they
// never skip quietly.
func needNetns(t *testing.T) *testenv.Host {
	t.Helper()
	for _, tool := range []string{"iptables", "ip6tables"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed (apt-get install iptables): %v", tool, err)
		}
	}
	return testenv.NewHosts(t, "c").ByName["c"]
}

// accept dials addr from h and returns the accepted side.
func accept(t *testing.T, h *testenv.Host, ln net.Listener, addr string) *net.TCPConn {
	t.Helper()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() { c, err := ln.Accept(); ch <- res{c, err} }()
	c, err := h.Dial("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	r := <-ch
	if r.err != nil {
		t.Fatalf("accept: %v", r.err)
	}
	t.Cleanup(func() { r.c.Close() })
	return r.c.(*net.TCPConn)
}

func TestOriginalDst(t *testing.T) {
	h := needNetns(t)
	ln, err := h.Listen("tcp", ":0") // dual-stack, as attache's ":10000"
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := fmt.Sprint(ln.Addr().(*net.TCPAddr).Port)
	h.Run(t, "iptables", "-w", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "6379", "-j", "REDIRECT", "--to-ports", port)
	h.Run(t, "iptables", "-w", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "5432", "-j", "REDIRECT", "--to-ports", port)
	h.Run(t, "ip6tables", "-w", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "6379", "-j", "REDIRECT", "--to-ports", port)

	for _, tc := range []struct{ dial, want string }{
		{"127.0.0.1:6379", "127.0.0.1:6379"},
		{"127.0.0.9:5432", "127.0.0.9:5432"},
		{net.JoinHostPort(h.IP, "6379"), net.JoinHostPort(h.IP, "6379")},
		{"[::1]:6379", "[::1]:6379"},
	} {
		c := accept(t, h, ln, tc.dial)
		got, err := OriginalDst(c, c.LocalAddr())
		if err != nil {
			t.Fatalf("dial %s: OriginalDst: %v", tc.dial, err)
		}
		if got != netip.MustParseAddrPort(tc.want) {
			t.Errorf("dial %s: OriginalDst = %v, want %s (local %v)", tc.dial, got, tc.want, c.LocalAddr())
		}
	}

	// Not redirected: conntrack tracks the flow unchanged (the answer is
	// the listener's own address), or does not track it at all.
	c := accept(t, h, ln, "127.0.0.1:"+port)
	got, err := OriginalDst(c, c.LocalAddr())
	switch {
	case errors.Is(err, ErrNotTracked):
	case err != nil:
		t.Fatalf("direct connection: %v", err)
	case got != netip.MustParseAddrPort("127.0.0.1:"+port):
		t.Errorf("direct connection: OriginalDst = %v, want the listener's own 127.0.0.1:%s", got, port)
	}
}
