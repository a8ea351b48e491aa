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
	"sync"
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
	r.Dial = func(ctx context.Context, network, addr string, early []byte) (net.Conn, error) {
		var d tls.Dialer
		d.Config = cliConf
		c, err := d.DialContext(ctx, network, addr)
		if err == nil && len(early) > 0 {
			if _, err := c.Write(early); err != nil {
				c.Close()
				return nil, err
			}
		}
		return c, err
	}
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
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		if err == nil && len(early) > 0 {
			if _, err := c.Write(early); err != nil {
				c.Close()
				return nil, err
			}
		}
		return c, err
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
