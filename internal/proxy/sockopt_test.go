package proxy

import (
	"context"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func sockopt(t *testing.T, c net.Conn, level, opt int) int {
	t.Helper()
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var gerr error
	raw.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), level, opt) })
	if gerr != nil {
		t.Fatal(gerr)
	}
	return v
}

// TestKeepAliveInheritedFromListener checks that accepted sockets carry the
// keepalive settings put on the listener once, and TCP_NODELAY.
func TestKeepAliveInheritedFromListener(t *testing.T) {
	tests := []struct {
		name      string
		keepAlive time.Duration
		want      int // TCP_KEEPIDLE seconds; 0: keepalive off
	}{
		{"default", 0, 30},
		{"set", 17 * time.Second, 17},
		{"off", -1, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lc := ListenConfig(tt.keepAlive)
			ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			a, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			if got := sockopt(t, a, unix.IPPROTO_TCP, unix.TCP_NODELAY); got == 0 {
				t.Error("TCP_NODELAY off on the accepted socket")
			}
			on := sockopt(t, a, unix.SOL_SOCKET, unix.SO_KEEPALIVE)
			if tt.want == 0 {
				if on != 0 {
					t.Fatal("keepalive on, want off")
				}
				return
			}
			if on == 0 {
				t.Fatal("keepalive off on the accepted socket")
			}
			if got := sockopt(t, a, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE); got != tt.want {
				t.Errorf("TCP_KEEPIDLE = %d, want %d", got, tt.want)
			}
			if got := sockopt(t, a, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL); got != tt.want {
				t.Errorf("TCP_KEEPINTVL = %d, want %d", got, tt.want)
			}
			if got := sockopt(t, a, unix.IPPROTO_TCP, unix.TCP_KEEPCNT); got != keepAliveCount {
				t.Errorf("TCP_KEEPCNT = %d, want %d", got, keepAliveCount)
			}
		})
	}
}

func TestBackendDialerSetsKeepAlive(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, tt := range []struct {
		keepAlive time.Duration
		want      int
	}{{0, 30}, {5 * time.Second, 5}, {-1, 0}} {
		r := &Route{KeepAlive: tt.keepAlive}
		d := r.dialer(nil)
		c, err := d.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		on := sockopt(t, c, unix.SOL_SOCKET, unix.SO_KEEPALIVE)
		idle := sockopt(t, c, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
		nodelay := sockopt(t, c, unix.IPPROTO_TCP, unix.TCP_NODELAY)
		c.Close()
		if (on != 0) != (tt.want != 0) || (tt.want != 0 && idle != tt.want) || nodelay == 0 {
			t.Errorf("keepalive %v: SO_KEEPALIVE=%d TCP_KEEPIDLE=%d TCP_NODELAY=%d, want idle %d",
				tt.keepAlive, on, idle, nodelay, tt.want)
		}
	}
}
