package proxy

import (
	"bytes"
	"io"
	"testing"
	"time"

	"github.com/attache/attache/internal/testenv"
)

// TestLiveBytes: an open connection's bytes show in ListenersBytes and
// Connections as they flow, in both the buffer and the
// splice path, only under its own listener, and the listener's totals
// never go down when the connection closes.
func TestLiveBytes(t *testing.T) {
	echo := testenv.Echo(t, "127.0.0.1:0")
	p := &Proxy{}
	l := start(t, p, &Route{Service: "echo", Backends: Addrs(echo)}, 0)
	quiet := start(t, p, &Route{Service: "quiet", Backends: Addrs(echo)}, 0)
	c := dial(t, l.Addr().String())
	c.SetDeadline(time.Now().Add(deadlineFor))
	bytesOf := func() Bytes { return p.ListenersBytes([]*Listener{l})[l] }

	var sent int64
	for _, size := range []int{10, 3 * bufSize} { // a small message, then a bulk one (splice)
		msg := bytes.Repeat([]byte{'x'}, size)
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, size)); err != nil {
			t.Fatal(err)
		}
		sent += int64(size)
		// The echo is back, so both directions have moved the bytes; the
		// copy loop counts a chunk just after writing it, so the count
		// may trail the client's read by a moment.
		deadline := time.Now().Add(deadlineFor)
		for {
			b := bytesOf()
			if b == (Bytes{sent, sent}) {
				break
			}
			if b.In > sent || b.Out > sent || time.Now().After(deadline) {
				t.Fatalf("after %d bytes each way: ListenersBytes = %+v", sent, b)
			}
			time.Sleep(time.Millisecond)
		}
		if got := p.ListenersBytes([]*Listener{l, quiet}); len(got) != 2 || got[l] != (Bytes{sent, sent}) || got[quiet] != (Bytes{}) {
			t.Fatalf("after %d bytes each way: ListenersBytes = %v", sent, got)
		}
		cs := p.Connections()
		if len(cs) != 1 || cs[0].BytesIn != sent || cs[0].BytesOut != sent || cs[0].Backend != echo ||
			cs[0].Client != c.LocalAddr().String() || cs[0].Service != "echo" || cs[0].ID != 1 || cs[0].Listener != l {
			t.Fatalf("Connections = %+v, want one to %s with %d bytes each way", cs, echo, sent)
		}
	}
	if l.Stats.BytesIn.Load() != 0 {
		t.Fatalf("listener totals count an open connection: %d", l.Stats.BytesIn.Load())
	}

	c.CloseWrite()
	io.ReadAll(c)
	c.Close()
	deadline := time.Now().Add(deadlineFor)
	for len(p.Connections()) > 0 && time.Now().Before(deadline) {
		if b := bytesOf(); b != (Bytes{sent, sent}) {
			t.Fatalf("while closing: ListenersBytes = %+v, want %d each way throughout", b, sent)
		}
		time.Sleep(time.Millisecond)
	}
	if b := bytesOf(); b != (Bytes{sent, sent}) || l.Stats.BytesIn.Load() != sent {
		t.Fatalf("closed: ListenersBytes = %+v, totals %d; want %d", b, l.Stats.BytesIn.Load(), sent)
	}
}
