package proxy

import (
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"runtime"
	"testing"

	"github.com/attache/attache/internal/h2mux"
	"github.com/attache/attache/internal/testenv"
)

// streamRelays sets up both ambassadors of a multiplexed link in one
// process, without TLS: a client-side proxy whose route dials HTTP/2
// streams (as link.Client does), over one real TCP connection, to a
// server-side proxy that takes each stream with Handle (as link.Server
// does) and dials the echo server for it. It returns the client-side
// listener and the server-side one (for its counters).
func streamRelays(t *testing.T, loops int) (front, back *Listener) {
	t.Helper()
	echo := testenv.Echo(t, "127.0.0.1:0")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pb := &Proxy{Loops: loops}
	back = start(t, pb, NewRoute("echo", echo), 0)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	serverDone := make(chan struct{})
	go func() {
		defer close(serverDone)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		ss, err := h2mux.Server(c, h2mux.Config{})
		if err != nil {
			return
		}
		t.Cleanup(func() { ss.Close() })
		for {
			st, err := ss.Accept()
			if err != nil {
				return
			}
			go pb.Handle(ctx, back, st, func(err error) error {
				if err != nil {
					return st.Respond(502)
				}
				return st.Respond(200)
			})
		}
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	cs, err := h2mux.Client(conn, h2mux.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close(); ln.Close(); <-serverDone })
	r := NewRoute("echo", "link-server:1")
	r.DialLoopStreams = true
	r.Dial = func(ctx context.Context, _, _ string, early []byte) (net.Conn, error) {
		st, err := cs.Open("echo")
		if err != nil {
			return nil, err
		}
		if len(early) > 0 {
			if _, err := st.Write(early); err != nil {
				st.Reset()
				return nil, err
			}
		}
		code, err := st.Response(ctx)
		if err != nil || code != 200 {
			st.Reset()
			return nil, fmt.Errorf("stream answered %d: %v", code, err)
		}
		return st, nil
	}
	front = start(t, &Proxy{Loops: loops}, r, 0)
	return front, back
}

// TestStreamRelays carries connections over multiplexed streams through
// both relays on each engine: bytes and half-close in each direction, in
// bulk too; then holds connections idle and counts the goroutines they
// cost the relays. On the event loops a link stream is carried like a
// socket, so an idle connection holds none (the goroutine engine: four,
// two per relay).
func TestStreamRelays(t *testing.T) {
	for _, e := range engines {
		t.Run(e.name, func(t *testing.T) {
			front, back := streamRelays(t, e.loops)
			for _, size := range []int{1, 100, 3*bufSize + 7, 4 << 20} {
				payload := make([]byte, size)
				rand.Read(payload)
				tlsExchange(t, dial(t, front.Addr().String()), payload)
			}
			// The backend speaks first and ends first: the answer and the
			// half-close cross back while the client has not ended.
			waitStats(t, front, func(s *Stats) bool { return s.Active.Load() == 0 })
			waitStats(t, back, func(s *Stats) bool { return s.Active.Load() == 0 })

			const idle = 200
			before := runtime.NumGoroutine()
			conns := make([]net.Conn, idle)
			for i := range conns {
				conns[i] = dial(t, front.Addr().String())
				roundTrip(t, conns[i], fmt.Appendf(nil, "hello %d", i))
			}
			waitStats(t, back, func(s *Stats) bool { return s.Active.Load() == idle })
			// The echo server holds a goroutine per connection; the
			// rest are the relays'.
			grown := runtime.NumGoroutine() - before - idle
			t.Logf("%d idle connections over streams: %d more goroutines in the relays", idle, grown)
			if e.loops > 0 && grown > idle/10 {
				t.Fatalf("%d idle connections over streams cost the relays %d goroutines: the loops do not carry them", idle, grown)
			}
			if e.loops < 0 && grown < 2*idle {
				t.Fatalf("%d idle connections on the goroutine engine cost the relays only %d goroutines: what carries them?", idle, grown)
			}
			// Still alive after idling.
			for i, c := range conns {
				roundTrip(t, c, fmt.Appendf(nil, "again %d", i))
				c.Close()
			}
			waitStats(t, back, func(s *Stats) bool { return s.Active.Load() == 0 })
		})
	}
}
