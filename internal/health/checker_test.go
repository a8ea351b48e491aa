package health

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/attache/attache/internal/testenv"
)

// serve starts a real TCP server on loopback running handle per connection
// and returns its address; it stops with the test.
func serve(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	testenv.Serve(t, ln, handle)
	return ln.Addr().String()
}

// closedAddr is a loopback address where nothing listens.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// replyOnLine reads one line and answers reply, then closes.
func replyOnLine(reply string) func(net.Conn) {
	return func(c net.Conn) {
		if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
			return
		}
		_, _ = io.WriteString(c, reply)
	}
}

// holdUntilClosed reads until the client goes away, answering nothing.
func holdUntilClosed(c net.Conn) { _, _ = io.Copy(io.Discard, c) }

var ping = SendExpect{Send: []byte("PING\r\n"), Expect: []byte("+PONG")}

func checkCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestTCP(t *testing.T) {
	up := serve(t, holdUntilClosed)
	if err := (TCP{}).Check(checkCtx(t), up); err != nil {
		t.Fatalf("TCP check of a listening server: %v", err)
	}
	err := (TCP{}).Check(checkCtx(t), closedAddr(t))
	if err == nil || !strings.Contains(err.Error(), "connect") || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("TCP check of a closed port: %v; want a refused connect", err)
	}
}

// The Dial seam is what an mTLS link plugs into: it must be asked for the
// backend's address, and the check must use the connection it returns.
func TestTCPUsesDialSeam(t *testing.T) {
	up := serve(t, holdUntilClosed)
	var asked []string
	c := TCP{Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		asked = append(asked, network+" "+addr)
		var d net.Dialer
		return d.DialContext(ctx, network, up) // a link would dial its peer ambassador
	}}
	if err := c.Check(checkCtx(t), "service-b.internal:6379"); err != nil {
		t.Fatalf("check through the seam: %v", err)
	}
	if len(asked) != 1 || asked[0] != "tcp service-b.internal:6379" {
		t.Fatalf("seam asked for %q; want one tcp dial of service-b.internal:6379", asked)
	}
	failing := TCP{Dial: func(context.Context, string, string) (net.Conn, error) { return nil, errors.New("no link") }}
	if err := failing.Check(checkCtx(t), "x:1"); err == nil || !strings.Contains(err.Error(), "no link") {
		t.Fatalf("seam error lost: %v", err)
	}
}

func TestSendExpectRedis(t *testing.T) {
	addr := testenv.Redis(t)
	if err := ping.Check(checkCtx(t), addr); err != nil {
		t.Fatalf("PING against redis-server: %v", err)
	}
	// QUIT makes redis close the connection after answering, so the
	// check ends on what was read, not on a deadline.
	wrong := SendExpect{Send: []byte("PING\r\nQUIT\r\n"), Expect: []byte("+PANG")}
	err := wrong.Check(checkCtx(t), addr)
	if err == nil || !strings.Contains(err.Error(), `expected "+PANG", got "+PONG\r\n+OK\r\n" before the backend closed the connection`) {
		t.Fatalf("wrong expectation against redis: %v; want it to quote both", err)
	}
}

func shortCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestSendExpectFailures(t *testing.T) {
	long := strings.Repeat("x", 1000)
	tests := []struct {
		name   string
		handle func(net.Conn)
		check  SendExpect
		ctx    func(t *testing.T) context.Context
		want   []string // substrings of the error
	}{
		{
			name:   "wrong answer then close",
			handle: replyOnLine("-ERR unknown command\r\n"),
			check:  ping,
			want:   []string{`expected "+PONG", got "-ERR unknown command\r\n"`, "closed the connection"},
		},
		{
			name:   "closes without answering",
			handle: replyOnLine(""),
			check:  ping,
			want:   []string{`expected "+PONG", got ""`, "closed the connection"},
		},
		{
			name:   "long answer is truncated",
			handle: replyOnLine(long),
			check:  ping,
			want:   []string{`got "` + strings.Repeat("x", quoteLimit) + `"… (1000 bytes)`},
		},
		{
			name:   "silence until the deadline",
			handle: holdUntilClosed,
			// The deadline must end the read, not a connect or a write
			// slowed down by a busy machine: this dial ignores it, and
			// nothing is sent.
			check: SendExpect{Expect: ping.Expect, Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(context.WithoutCancel(ctx), network, addr)
			}},
			ctx:  func(t *testing.T) context.Context { return shortCtx(t, 50*time.Millisecond) },
			want: []string{`expected "+PONG", got ""`, "timed out"},
		},
		{
			name: "answer too long to search",
			handle: func(c net.Conn) {
				buf := []byte(strings.Repeat("y", 8192))
				for {
					if _, err := c.Write(buf); err != nil {
						return
					}
				}
			},
			check: SendExpect{Expect: []byte("+PONG")},
			want:  []string{"within the first 65536 bytes", `got "yyyy`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := serve(t, tt.handle)
			ctx := checkCtx(t)
			if tt.ctx != nil {
				ctx = tt.ctx(t)
			}
			err := tt.check.Check(ctx, addr)
			if err == nil {
				t.Fatal("check passed; want a failure")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
	if err := ping.Check(checkCtx(t), closedAddr(t)); err == nil || !strings.Contains(err.Error(), "connect") {
		t.Fatalf("closed port: %v; want a connect error", err)
	}
}

func TestSendExpectPasses(t *testing.T) {
	tests := []struct {
		name   string
		handle func(net.Conn)
		check  SendExpect
	}{
		{
			name:   "expected text inside a longer answer",
			handle: replyOnLine("hello +PONG and more\r\n"),
			check:  ping,
		},
		{
			name: "answer in pieces",
			handle: func(c net.Conn) {
				if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
					return
				}
				for _, piece := range []string{"+", "PO", "NG", "\r\n"} {
					if _, err := io.WriteString(c, piece); err != nil {
						return
					}
				}
				holdUntilClosed(c)
			},
			check: ping,
		},
		{
			name:   "banner with nothing sent",
			handle: func(c net.Conn) { _, _ = io.WriteString(c, "220 mail ready\r\n"); holdUntilClosed(c) },
			check:  SendExpect{Expect: []byte("220 ")},
		},
		{
			name:   "send only",
			handle: holdUntilClosed,
			check:  SendExpect{Send: []byte("hello\n")},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.check.Check(checkCtx(t), serve(t, tt.handle)); err != nil {
				t.Fatalf("check failed: %v", err)
			}
		})
	}
}

// Without a deadline, cancelling the context must still end a probe that a
// silent backend holds.
func TestSendExpectCancel(t *testing.T) {
	accepted := make(chan struct{})
	addr := serve(t, func(c net.Conn) {
		close(accepted)
		holdUntilClosed(c)
	})
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() { errc <- ping.Check(ctx, addr) }()
	<-accepted
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled check returned %v; want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("cancelled check did not return")
	}
}
