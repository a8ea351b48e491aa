package link

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/attache/attache/internal/certs"
	"github.com/attache/attache/internal/testenv"
)

// TestLinkCutIsNotAnEOF: a client that cuts its link stream (a TCP reset
// under a per-connection stream, a stream reset on a multiplexed link)
// while the server side is writing to it must never look, to the server
// side's reader, like a clean end: that reader would pass a FIN on and
// the service would take a cut stream for a complete one. On a
// per-connection link the reset's error often goes to the server's write,
// and the read sees the socket's EOF without TLS's close_notify.
func TestLinkCutIsNotAnEOF(t *testing.T) { forModes(t, testLinkCutIsNotAnEOF) }

func testLinkCutIsNotAnEOF(t *testing.T, perConn bool) {
	p := newPKI(t, "fleet")
	ends := make(chan error, 1)
	flood := Target{Allow: []string{"host-a"}, Handle: func(ctx context.Context, c net.Conn, ready func(error) error) {
		defer c.Close()
		if ready(nil) != nil {
			return
		}
		ends <- testenv.FloodUntilEnd(c)
	}}
	srv := startServer(t, p.identity("host-b", nil, certs.Request{}), map[string]Target{"flood": flood})
	cl := &Client{Identity: p.identity("host-a", nil, certs.Request{}), Stats: NewStats(), PerConnection: perConn}
	defer cl.Close()

	const rounds = 40
	for i := range rounds {
		c, err := cl.Dial(ctxT(t), "flood", srv.addr)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write([]byte("some bytes, then a reset")); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 64<<10)
		if _, err := io.ReadAtLeast(c, b, 32<<10); err != nil { // the server is writing
			t.Fatal(err)
		}
		cut(t, c)
		err = <-ends
		if err == nil || errors.Is(err, io.EOF) {
			t.Fatalf("round %d: the server read %v after the client cut its stream, want a reset", i, err)
		}
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("round %d: the server read %v, want ECONNRESET", i, err)
		}
	}
}

// cut ends a dialled stream abruptly: a reset.
func cut(t *testing.T, c net.Conn) {
	t.Helper()
	switch s := c.(type) {
	case *Stream:
		_ = s.Reset()
	case interface{ NetConn() net.Conn }:
		tc, ok := s.NetConn().(interface{ SetLinger(int) error })
		if !ok {
			t.Fatalf("%T is not over a TCP socket", s.NetConn())
		}
		_ = tc.SetLinger(0)
		_ = s.NetConn().Close()
	default:
		t.Fatalf("cannot cut a %T", c)
	}
}

// TestCorkedSocketWritesBySegment: while corked, a session's socket holds
// what TLS writes, up to a segment: small records wait for uncork and leave
// in one write, larger batches leave a segment at a time, and the peer
// reads every byte in order.
func TestCorkedSocketWritesBySegment(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	s, ok := wrapSocket(raw).(*linkSocket)
	if !ok {
		t.Fatalf("a TCP socket was not wrapped")
	}
	defer s.Close()
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(peer)
		got <- b
	}()

	var want bytes.Buffer
	write := func(b []byte) {
		t.Helper()
		if _, err := s.Write(b); err != nil {
			t.Fatal(err)
		}
		want.Write(b)
	}
	s.cork()
	for _, part := range []string{"first record, ", "second, ", "third"} {
		write([]byte(part))
	}
	if held := string(*s.held); held != "first record, second, third" {
		t.Fatalf("corked socket holds %q", held)
	}
	if err := s.uncork(); err != nil {
		t.Fatal(err)
	}
	if s.held != nil {
		t.Fatalf("uncork left %d bytes held", len(*s.held))
	}
	write([]byte(", then uncorked;"))

	// A batch of 20 records: the socket never holds a segment or more.
	s.cork()
	record := make([]byte, maxRecord+22)
	for i := range 20 {
		for j := range record {
			record[j] = byte(i*7 + j)
		}
		write(record)
		if len(*s.held) >= corkSegment {
			t.Fatalf("after record %d the corked socket holds %d bytes, want under %d", i, len(*s.held), corkSegment)
		}
	}
	if err := s.uncork(); err != nil {
		t.Fatal(err)
	}
	s.CloseWrite()
	if b := <-got; !bytes.Equal(b, want.Bytes()) {
		t.Fatalf("peer read %d bytes, want %d (first difference at %d)", len(b), want.Len(), testenv.FirstDiff(b, want.Bytes()))
	}
}

// TestLinkDialEarly: the client's first bytes go with the stream's opening
// and reach the backend once, before what follows; a refused stream
// returns the refusal, its early bytes dropped with it.
func TestLinkDialEarly(t *testing.T) { forModes(t, testLinkDialEarly) }

func testLinkDialEarly(t *testing.T, perConn bool) {
	p := newPKI(t, "fleet")
	srv := startServer(t, p.identity("host-b", nil, certs.Request{}), map[string]Target{"echo": echoTarget(t, "host-a")})
	cl := &Client{Identity: p.identity("host-a", nil, certs.Request{}), Stats: NewStats(), PerConnection: perConn}
	defer cl.Close()

	early := bytes.Repeat([]byte("early;"), 10<<10) // 60 KiB: more than one frame
	c, err := cl.DialEarly(ctxT(t), "echo", srv.addr, early)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	go func() {
		_, _ = c.Write([]byte("late"))
		_ = c.(interface{ CloseWrite() error }).CloseWrite()
	}()
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if want := append(early, "late"...); !bytes.Equal(got, want) {
		t.Fatalf("echoed %d bytes, want the %d early ones then 4 late ones, once and in order", len(got), len(early))
	}

	_, err = cl.DialEarly(ctxT(t), "nobody", srv.addr, []byte("dropped"))
	if perConn {
		// Refused in the handshake (the service is in the SNI), before
		// the early bytes could go.
		if err == nil {
			t.Fatal("dial of a service not offered succeeded")
		}
		return
	}
	var refused *RefusedError
	if !errors.As(err, &refused) || refused.Status != statusUnknown {
		t.Fatalf("dial of a service not offered: %v, want a refusal (unknown service)", err)
	}
}
