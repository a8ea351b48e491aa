package proxy

import (
	"io"
	"net"
	"testing"

	"github.com/attache/attache/internal/testenv"
)

// Benchmarks of the data path on loopback. They report what one proxied
// connection costs; bench/ compares the whole binary with socat and HAProxy.

// sink accepts connections and discards what it reads.
func sink(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	testenv.Serve(b, ln, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) })
	return ln.Addr().String()
}

func serveB(b *testing.B, r *Route) *Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	p := &Proxy{}
	l := NewListener(ln, r, 0)
	done := make(chan struct{})
	go func() { defer close(done); _ = p.Serve(b.Context(), l) }()
	b.Cleanup(func() { l.Close(); <-done })
	return l
}

// naive is the reference the copy engine must beat: two io.Copy calls per
// connection (splicing, with pipes held for the connection's life).
func naive(b *testing.B, backend string) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	testenv.Serve(b, ln, func(c net.Conn) {
		bc, err := net.Dial("tcp", backend)
		if err != nil {
			return
		}
		defer bc.Close()
		done := make(chan struct{})
		go func() { io.Copy(bc, c); bc.(*net.TCPConn).CloseWrite(); close(done) }()
		io.Copy(c, bc)
		<-done
	})
	return ln.Addr().String()
}

// via puts the named proxy in front of addr.
func via(b *testing.B, name, addr string) string {
	switch name {
	case "attache":
		return serveB(b, NewRoute("s", addr)).Addr().String()
	case "iocopy":
		return naive(b, addr)
	}
	return addr
}

var proxies = []string{"direct", "iocopy", "attache"}

// BenchmarkStream measures bulk throughput through one connection
// (the splice path).
func BenchmarkStream(b *testing.B) {
	for _, name := range proxies {
		b.Run(name, func(b *testing.B) {
			addr := via(b, name, sink(b))
			c, err := net.Dial("tcp", addr)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			chunk := make([]byte, 256<<10)
			b.SetBytes(int64(len(chunk)))
			for b.Loop() {
				if _, err := c.Write(chunk); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkRoundTrip measures small request/response latency (the buffer
// path).
func BenchmarkRoundTrip(b *testing.B) {
	for _, name := range proxies {
		b.Run(name, func(b *testing.B) {
			addr := via(b, name, testenv.Echo(b, "127.0.0.1:0"))
			c, err := net.Dial("tcp", addr)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			msg := make([]byte, 64)
			buf := make([]byte, 64)
			for b.Loop() {
				if _, err := c.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkConnect measures a new connection through the proxy: accept,
// dial the backend, one byte each way, close.
func BenchmarkConnect(b *testing.B) {
	for _, name := range proxies {
		b.Run(name, func(b *testing.B) {
			addr := via(b, name, testenv.Echo(b, "127.0.0.1:0"))
			buf := make([]byte, 1)
			for b.Loop() {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					b.Fatal(err)
				}
				c.Write(buf)
				if _, err := io.ReadFull(c, buf); err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
		})
	}
}
