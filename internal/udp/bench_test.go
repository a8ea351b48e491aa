package udp

import (
	"net"
	"testing"

	"github.com/attache/attache/internal/testenv"
)

// BenchmarkRoundTrip is one client's request/response through the proxy
// on loopback: a datagram out, its echo back.
func BenchmarkRoundTrip(b *testing.B) {
	echo := testenv.StartUDPEcho(b, "127.0.0.1:0", "")
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	l := NewListener(pc, &Route{Service: "bench", Backends: set(echo.Addr)})
	done := make(chan error, 1)
	go func() { done <- l.Serve(b.Context()) }()
	b.Cleanup(func() {
		l.Close()
		<-done
	})
	c, err := net.DialUDP("udp4", nil, l.Addr().(*net.UDPAddr))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	msg, buf := make([]byte, 64), make([]byte, 128)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := c.Read(buf); err != nil {
			b.Fatal(err)
		}
	}
}
