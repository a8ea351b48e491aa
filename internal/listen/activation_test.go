package listen

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/attache/attache/internal/sdnotify"
)

// passedOf duplicates a real socket the way systemd passes one: a
// descriptor number and a file, under a name.
func passedOf(t *testing.T, sock syscall.Conn, name string) sdnotify.Passed {
	t.Helper()
	f, err := Dup(sock)
	if err != nil {
		t.Fatal(err)
	}
	// Fd leaves the socket in blocking mode; taking it as a listener
	// (net.FileListener) makes it non-blocking again, as with systemd's.
	return sdnotify.Passed{Name: name, FD: int(f.Fd()), File: f}
}

// TestActivated: passed sockets go to the configured listeners by address
// (TCP, UDP, Unix) or by name (a listener configured on port 0), and what
// is taken is the very socket passed: the test's own copy is closed first,
// and traffic still arrives.
func TestActivated(t *testing.T) {
	tcpLn, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	udpConn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "app.sock")
	unixLn, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	unixLn.(*net.UnixListener).SetUnlinkOnClose(false)
	adminLn, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	passed := []sdnotify.Passed{
		passedOf(t, tcpLn.(*net.TCPListener), "attache.socket"),
		passedOf(t, udpConn.(*net.UDPConn), "attache.socket"),
		passedOf(t, unixLn.(*net.UnixListener), "attache.socket"),
		passedOf(t, adminLn.(*net.TCPListener), "admin"),
	}
	tcpAddr, udpAddr, adminAddr := tcpLn.Addr().String(), udpConn.LocalAddr().String(), adminLn.Addr().String()
	for _, c := range []interface{ Close() error }{tcpLn, udpConn, unixLn, adminLn} {
		c.Close() // the passed duplicates keep the sockets open
	}
	want := []Want{
		{Name: "web", Network: "tcp", Addr: tcpAddr},
		{Name: "dns", Network: "udp", Addr: udpAddr},
		{Name: "app", Network: "unix", Addr: path},
		{Name: "admin", Network: "tcp", Addr: "127.0.0.1:0"},
		{Name: "unpassed", Network: "tcp", Addr: "127.0.0.1:1"},
	}
	in, err := Activated(t.Context(), passed, want)
	if err != nil {
		t.Fatalf("Activated: %v", err)
	}
	defer in.Close()
	if in.IsUpgrade() {
		t.Fatal("IsUpgrade() is true for socket activation")
	}

	web := in.Take(KindService, "tcp4", tcpAddr)
	if web == nil || web.Addr().String() != tcpAddr {
		t.Fatalf("Take(web) = %v, want the passed listener on %s", web, tcpAddr)
	}
	defer web.Close()
	acceptOne(t, web, "tcp", tcpAddr)

	app := in.Take(KindService, "unix", path)
	if app == nil {
		t.Fatal("Take(app) = nil, want the passed Unix listener")
	}
	acceptOne(t, app, "unix", path)
	app.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("closing an activated Unix listener removed %s (systemd owns it): %v", path, err)
	}

	admin, err := in.Listen(t.Context(), net.ListenConfig{}, KindAdmin, "tcp", "127.0.0.1:0")
	if err != nil || admin.Addr().String() != adminAddr {
		t.Fatalf("Listen(admin on port 0) = %v, %v; want the socket named admin, on %s", admin, err, adminAddr)
	}
	defer admin.Close()

	dns := in.TakePacket("udp4", udpAddr)
	if dns == nil {
		t.Fatal("TakePacket(dns) = nil")
	}
	defer dns.Close()
	sender, err := net.Dial("udp4", udpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer sender.Close()
	if _, err := sender.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	_ = dns.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, _, err := dns.ReadFrom(buf); err != nil || string(buf[:n]) != "ping" {
		t.Fatalf("read from the activated UDP socket: %q, %v", buf[:n], err)
	}

	if ln := in.Take(KindService, "tcp4", "127.0.0.1:1"); ln != nil {
		t.Fatalf("Take(unpassed) = %v, want nil (opened as usual)", ln.Addr())
	}
	if unused, err := in.Ready(); err != nil || len(unused) != 0 {
		t.Fatalf("Ready() = %v, %v; want nothing unused", unused, err)
	}
}

func acceptOne(t *testing.T, ln net.Listener, network, addr string) {
	t.Helper()
	c, err := net.DialTimeout(network, addr, 10*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	got, err := ln.Accept()
	if err != nil {
		t.Fatalf("accept on the activated %s listener: %v", addr, err)
	}
	got.Close()
}

// TestActivatedUnmatched: a passed socket that no listener wants is an
// error naming its descriptor, name and address, and every passed socket
// is closed (the port is no longer held by this process).
func TestActivatedUnmatched(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	good := passedOf(t, ln.(*net.TCPListener), "web")
	stray, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	bad := passedOf(t, stray.(*net.TCPListener), "stray")
	ln.Close()
	stray.Close()
	_, err = Activated(t.Context(), []sdnotify.Passed{good, bad}, []Want{{Name: "web", Network: "tcp", Addr: addr}})
	if err == nil {
		t.Fatal("Activated accepted a socket no listener wants")
	}
	for _, want := range []string{"socket activation: ", "(stray)", stray.Addr().String(), "matches no configured listener", "web tcp " + addr} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	// Both sockets are closed: nothing listens on their ports any more.
	for _, a := range []string{addr, stray.Addr().String()} {
		if c, err := net.DialTimeout("tcp4", a, 10*time.Second); err == nil {
			c.Close()
			t.Errorf("%s still accepts connections after Activated failed", a)
		}
	}
}

func TestAddrMatches(t *testing.T) {
	tests := []struct {
		local      net.Addr
		configured string
		want       bool
	}{
		{&net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 6379}, "127.0.0.1:6379", true},
		{&net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 6379}, "127.0.0.1:6380", false},
		{&net.TCPAddr{IP: net.ParseIP("127.0.0.2"), Port: 6379}, "127.0.0.1:6379", false},
		{&net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 6379}, "localhost:6379", true},
		{&net.TCPAddr{IP: net.IPv6unspecified, Port: 6379}, ":6379", true},
		{&net.TCPAddr{IP: net.IPv6unspecified, Port: 6379}, "0.0.0.0:6379", true},
		{&net.TCPAddr{IP: net.IPv4zero, Port: 6379}, "[::]:6379", true},
		{&net.TCPAddr{IP: net.IPv4zero, Port: 6379}, "127.0.0.1:6379", false},
		{&net.TCPAddr{IP: net.IPv6loopback, Port: 53}, "[::1]:53", true},
		{&net.UDPAddr{IP: net.ParseIP("127.0.0.1"), Port: 53}, "127.0.0.1:53", true},
		{&net.UnixAddr{Name: "/run/app.sock", Net: "unix"}, "/run/app.sock", true},
		{&net.UnixAddr{Name: "/run/app.sock", Net: "unix"}, "/run/other.sock", false},
		{&net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 6379}, "no-port", false},
	}
	for _, tt := range tests {
		if got := addrMatches(context.Background(), tt.local, tt.configured); got != tt.want {
			t.Errorf("addrMatches(%v, %q) = %v, want %v", tt.local, tt.configured, got, tt.want)
		}
	}
}
