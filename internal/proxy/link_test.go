package proxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/attache/attache/internal/certs"
	"github.com/attache/attache/internal/testenv"
)

// tlsPair is a server and a client TLS configuration that trust each other.
func tlsPair(t *testing.T) (server, client *tls.Config) {
	t.Helper()
	ca, err := certs.NewCA("test-ca", time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err := ca.Issue(certs.Request{Name: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	pair := tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}
	return &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{pair}},
		&tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool, ServerName: "localhost"}
}

// tlsExchange sends payload through c, half-closes, and checks the echo comes
// back whole, then EOF: half-close crossed every hop.
func tlsExchange(t *testing.T, c net.Conn, payload []byte) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(deadlineFor))
	go func() {
		_, _ = c.Write(payload)
		_ = c.(interface{ CloseWrite() error }).CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("got %d bytes back, want the %d sent", len(got), len(payload))
	}
}

// earlyDialer is a route dialer that dials with dial and sends the
// client's early bytes on the new connection, as a link dialer sends them
// with its opening.
func earlyDialer(dial func(ctx context.Context, network, addr string) (net.Conn, error)) DialFunc {
	return func(ctx context.Context, network, addr string, early []byte) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil || len(early) == 0 {
			return c, err
		}
		if _, err := c.Write(early); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}
}

// TestRouteDialTLS: a route whose Dial returns a *tls.Conn (as the link
// client does) carries bytes both ways and half-close, in bulk too.
func TestRouteDialTLS(t *testing.T) {
	srvConf, cliConf := tlsPair(t)
	echo := testenv.Echo(t, "127.0.0.1:0")
	// A TLS terminator in front of the echo server.
	ln, err := tls.Listen("tcp", "127.0.0.1:0", srvConf)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Serve(t, ln, func(c net.Conn) {
		b, err := net.Dial("tcp", echo)
		if err != nil {
			return
		}
		defer b.Close()
		done := make(chan struct{})
		go func() {
			_, _ = io.Copy(b, c)
			_ = b.(*net.TCPConn).CloseWrite()
			close(done)
		}()
		_, _ = io.Copy(c, b)
		_ = c.(*tls.Conn).CloseWrite()
		<-done
	})
	r := NewRoute("tls", ln.Addr().String())
	r.Dial = earlyDialer((&tls.Dialer{Config: cliConf}).DialContext)
	l := start(t, &Proxy{}, r, 0)
	for _, size := range []int{5, 3*bufSize + 7, 4 << 20} {
		payload := make([]byte, size)
		_, _ = rand.Read(payload)
		tlsExchange(t, dial(t, l.Addr().String()), payload)
	}
	waitStats(t, l, func(s *Stats) bool {
		return s.Active.Load() == 0 && s.BytesIn.Load() == s.BytesOut.Load() && s.BytesIn.Load() > 4<<20
	})
}

// TestHandleTLS: a TLS stream handed to Handle (as the link server does)
// goes to the listener's route, hears the dial's outcome first, and is
// counted on the listener.
func TestHandleTLS(t *testing.T) {
	srvConf, cliConf := tlsPair(t)
	echo := testenv.Echo(t, "127.0.0.1:0")
	p := &Proxy{}
	l := start(t, p, NewRoute("handed", echo), 0)
	down := start(t, p, &Route{Service: "down", Backends: Addrs("127.0.0.1:1"), ConnectTimeout: time.Second}, 0)

	ln, err := tls.Listen("tcp", "127.0.0.1:0", srvConf)
	if err != nil {
		t.Fatal(err)
	}
	readyErr := make(chan error, 10)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if err := c.(*tls.Conn).Handshake(); err != nil {
				c.Close()
				continue
			}
			var buf [1]byte
			_, _ = io.ReadFull(c, buf[:]) // which listener: 'h' or 'd'
			target := l
			if buf[0] == 'd' {
				target = down
			}
			p.Handle(context.Background(), target, c, func(err error) error {
				readyErr <- err
				return nil
			})
		}
	}()
	t.Cleanup(func() { ln.Close() })

	c, err := tls.Dial("tcp", ln.Addr().String(), cliConf)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = c.Write([]byte{'h'})
	payload := make([]byte, 2<<20)
	_, _ = rand.Read(payload)
	tlsExchange(t, c, payload)
	if err := <-readyErr; err != nil {
		t.Errorf("ready heard %v, want nil", err)
	}
	waitStats(t, l, func(s *Stats) bool {
		return s.Accepted.Load() == 1 && s.Active.Load() == 0 && s.BytesIn.Load() == int64(len(payload))
	})

	// A backend that is down: ready hears the error, the stream closes.
	c2, err := tls.Dial("tcp", ln.Addr().String(), cliConf)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	_, _ = c2.Write([]byte{'d'})
	if err := <-readyErr; err == nil {
		t.Errorf("ready heard nil for a backend that is down")
	}
	_ = c2.SetReadDeadline(time.Now().Add(deadlineFor))
	if _, err := c2.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && err == nil {
		t.Errorf("stream to a down backend: read %v, want it closed", err)
	}
	waitStats(t, down, func(s *Stats) bool { return s.Failed.Load() == 1 })
}

func waitStats(t *testing.T, l *Listener, cond func(*Stats) bool) {
	t.Helper()
	deadline := time.Now().Add(deadlineFor)
	for !cond(&l.Stats) {
		if time.Now().After(deadline) {
			s := &l.Stats
			t.Fatalf("listener stats never matched: accepted %d active %d failed %d in %d out %d",
				s.Accepted.Load(), s.Active.Load(), s.Failed.Load(), s.BytesIn.Load(), s.BytesOut.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRouteDialEarly: a client's first bytes, read before the dial, go to
// the route's dialer with its opening; a dial that fails passes them on
// whole to the next attempt, and the backend gets them exactly once,
// before what the client sends later.
func TestRouteDialEarly(t *testing.T) {
	echo := testenv.Echo(t, "127.0.0.1:0")
	var (
		mu                     sync.Mutex
		attempts, sawEarly     int
		refusedEarly, retained int // refusals given early bytes; dials after one given them again
		lastRefusedEarly       bool
	)
	r := NewRoute("early", "127.0.0.1:1", echo)
	r.Retries = 1
	r.Dial = func(ctx context.Context, network, addr string, early []byte) (net.Conn, error) {
		mu.Lock()
		attempts++
		if len(early) > 0 {
			sawEarly++
			if string(early) != "first bytes;" {
				mu.Unlock()
				return nil, fmt.Errorf("early bytes %q, want the client's first write", early)
			}
		}
		if addr != echo {
			if len(early) > 0 {
				refusedEarly++
				lastRefusedEarly = true
			}
			mu.Unlock()
			return nil, errors.New("refused, as a link server without a backend refuses")
		}
		if lastRefusedEarly && len(early) > 0 {
			retained++
		}
		lastRefusedEarly = false
		mu.Unlock()
		return earlyDialer((&net.Dialer{}).DialContext)(ctx, network, addr, early)
	}
	r.Passive = false // round robin: every other connection tries the refusing one first
	l := start(t, &Proxy{}, r, 0)
	for i := 0; i < 50; i++ {
		c := dial(t, l.Addr().String())
		_ = c.SetDeadline(time.Now().Add(deadlineFor))
		if _, err := c.Write([]byte("first bytes;")); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len("first bytes;"))
		if _, err := io.ReadFull(c, got); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		if _, err := c.Write([]byte("then more")); err != nil {
			t.Fatal(err)
		}
		_ = c.CloseWrite()
		rest, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		if all := string(got) + string(rest); all != "first bytes;then more" {
			t.Fatalf("connection %d: echoed %q, want each byte once, in order", i, all)
		}
		c.Close()
	}
	mu.Lock()
	defer mu.Unlock()
	if sawEarly == 0 || refusedEarly == 0 {
		t.Errorf("of %d dials, %d were given early bytes and %d refusals were: the early path was not exercised", attempts, sawEarly, refusedEarly)
	}
	if retained != refusedEarly {
		t.Errorf("%d refused dials were given early bytes, and %d of the dials after them: the next attempt must get them whole", refusedEarly, retained)
	}
	t.Logf("%d of %d dials were given the client's first bytes (%d refused)", sawEarly, attempts, refusedEarly)
}

// TestRouteDialEarlyKeepsResets: a client that sends and resets at once
// has its reset taken by the early read or by the copy after it, never
// turned into a clean end: a backend that was dialled reads an error, not
// an EOF.
func TestRouteDialEarlyKeepsResets(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ends := make(chan error, 64)
	var dialled atomic.Int32
	testenv.Serve(t, ln, func(c net.Conn) {
		dialled.Add(1)
		_ = c.SetReadDeadline(time.Now().Add(deadlineFor))
		_, err := io.Copy(io.Discard, c)
		ends <- err // nil: a clean EOF
	})
	r := NewRoute("early-reset", ln.Addr().String())
	r.Dial = earlyDialer((&net.Dialer{}).DialContext)
	l := start(t, &Proxy{}, r, 0)
	const rounds = 40
	for range rounds {
		c := dial(t, l.Addr().String())
		if _, err := c.Write([]byte("a request, then a reset")); err != nil {
			t.Fatal(err)
		}
		_ = c.SetLinger(0)
		c.Close()
	}
	waitStats(t, l, func(s *Stats) bool { return s.Active.Load() == 0 && s.Accepted.Load() == rounds })
	// Every backend connection was dialled by now; each one's reader
	// reports how its stream ended.
	n := int(dialled.Load())
	for i := range n {
		select {
		case err := <-ends:
			if err == nil {
				t.Fatalf("backend connection %d of %d read a clean end of a stream its client reset", i+1, n)
			}
		case <-time.After(deadlineFor):
			t.Fatalf("%d of %d backend connections did not end", n-i, n)
		}
	}
	t.Logf("%d of %d resets reached a dialled backend as errors; the early read took the rest", n, rounds)
}

// TestRouteDialEarlyAfterProxyHeader: on a route that sends a PROXY
// header, the client's early bytes do not go with the dialer's opening,
// which would put them before the header, but after it.
func TestRouteDialEarlyAfterProxyHeader(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 1)
	testenv.Serve(t, ln, func(c net.Conn) {
		_ = c.SetReadDeadline(time.Now().Add(deadlineFor))
		b, _ := io.ReadAll(c)
		got <- string(b)
	})
	r := NewRoute("early-pp", ln.Addr().String())
	r.SendProxy = 1
	var gaveEarly atomic.Bool
	r.Dial = func(ctx context.Context, network, addr string, early []byte) (net.Conn, error) {
		if len(early) > 0 {
			gaveEarly.Store(true)
		}
		return earlyDialer((&net.Dialer{}).DialContext)(ctx, network, addr, early)
	}
	l := start(t, &Proxy{}, r, 0)
	c := dial(t, l.Addr().String())
	if _, err := c.Write([]byte("first bytes")); err != nil {
		t.Fatal(err)
	}
	_ = c.CloseWrite()
	select {
	case b := <-got:
		if !strings.HasPrefix(b, "PROXY TCP4 ") || !strings.HasSuffix(b, "\r\nfirst bytes") {
			t.Fatalf("backend read %q, want the PROXY header, then the client's bytes", b)
		}
	case <-time.After(deadlineFor):
		t.Fatal("the backend connection did not end")
	}
	if gaveEarly.Load() {
		t.Error("the dialer was given early bytes on a route that sends a PROXY header")
	}
}

// TestUnansweredLinkClientResetsTheBackend: when a handed-off connection's
// ready fails (the link client's stream broke before it heard that the
// backend connected), the backend connection ends with a reset, not the
// FIN of a clean, empty connection.
func TestUnansweredLinkClientResetsTheBackend(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ends := make(chan error, 1)
	testenv.Serve(t, ln, func(c net.Conn) {
		_ = c.SetReadDeadline(time.Now().Add(deadlineFor))
		_, err := io.ReadAll(c)
		ends <- err
	})
	p := &Proxy{}
	l := start(t, p, NewRoute("unanswered", ln.Addr().String()), 0)
	// The handed-off connection: a TCP socket standing for the link
	// stream, whose far end never reads or writes.
	front, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer front.Close()
	far := dial(t, front.Addr().String())
	defer far.Close()
	near, err := front.Accept()
	if err != nil {
		t.Fatal(err)
	}
	p.Handle(context.Background(), l, near, func(error) error {
		return errors.New("the link client's stream was reset")
	})
	select {
	case err := <-ends:
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("the backend's read ended with %v, want a reset (ECONNRESET)", err)
		}
	case <-time.After(deadlineFor):
		t.Fatal("the backend connection did not end")
	}
}
