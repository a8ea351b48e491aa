package link

import (
	"context"
	"io"
	"net"
	"runtime"
	"sync"
	"testing"

	"github.com/attache/attache/internal/certs"
	"github.com/attache/attache/internal/testenv"
)

// The link's own cost per byte and per message, in both modes, on real
// loopback sockets: a client dials a link server whose services are a sink
// (reads and drops) and an echo server. Compare the modes side by side:
//
//	go test -run '^$' -bench . ./internal/link
func benchLink(b *testing.B, perConn bool) (*Client, string) {
	b.Helper()
	p := newPKI(b, "fleet")
	sinkLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	testenv.Serve(b, sinkLn, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) })
	dialTo := func(addr string) Target {
		return Target{Allow: []string{AllowAny}, Handle: DialHandler(func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		})}
	}
	srv := startServer(b, p.identity("host-b", nil, certs.Request{}), map[string]Target{
		"sink": dialTo(sinkLn.Addr().String()), "echo": dialTo(testenv.Echo(b, "127.0.0.1:0"))})
	cl := &Client{Identity: p.identity("host-a", nil, certs.Request{}), PerConnection: perConn}
	b.Cleanup(func() { cl.Close() })
	return cl, srv.addr
}

func benchModes(b *testing.B, f func(b *testing.B, perConn bool)) {
	for _, m := range modes {
		b.Run(m.name, func(b *testing.B) { f(b, m.perConn) })
	}
}

// BenchmarkLinkBulk sends 1 MiB per iteration on one stream.
func BenchmarkLinkBulk(b *testing.B) {
	benchModes(b, func(b *testing.B, perConn bool) {
		cl, addr := benchLink(b, perConn)
		c, err := cl.Dial(b.Context(), "sink", addr)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		buf := make([]byte, 1<<20)
		b.SetBytes(int64(len(buf)))
		b.ResetTimer()
		for b.Loop() {
			if _, err := c.Write(buf); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkLinkRoundTrip is one small request and its echo per iteration,
// on 16 streams at once.
func BenchmarkLinkRoundTrip(b *testing.B) {
	benchModes(b, func(b *testing.B, perConn bool) {
		cl, addr := benchLink(b, perConn)
		const streams = 16
		conns := make(chan net.Conn, streams)
		for range streams {
			c, err := cl.Dial(b.Context(), "echo", addr)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			conns <- c
		}
		b.SetParallelism(streams / max(1, testingProcs()))
		var mu sync.Mutex
		b.RunParallel(func(pb *testing.PB) {
			mu.Lock()
			c := <-conns
			mu.Unlock()
			msg := []byte("GET key:000000000001\r\n")
			got := make([]byte, len(msg))
			for pb.Next() {
				if _, err := c.Write(msg); err != nil {
					b.Error(err)
					return
				}
				if _, err := io.ReadFull(c, got); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// BenchmarkLinkConnect opens a stream (a connection to the remote service)
// and closes it per iteration.
func BenchmarkLinkConnect(b *testing.B) {
	benchModes(b, func(b *testing.B, perConn bool) {
		cl, addr := benchLink(b, perConn)
		for b.Loop() {
			c, err := cl.Dial(b.Context(), "echo", addr)
			if err != nil {
				b.Fatal(err)
			}
			c.Close()
		}
	})
}

func testingProcs() int { return runtime.GOMAXPROCS(0) }
