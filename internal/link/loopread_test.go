package link

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/attache/attache/internal/certs"
	"github.com/attache/attache/internal/loophint"
	"github.com/attache/attache/internal/proxy"
)

// testReader, when set, gives the link servers and clients of the mux
// tests event loops to read their sessions on (TestMuxOnEventLoops): a
// proxy of their own each, as on two hosts.
var testReader func(t testing.TB) loophint.Reader

// readBy sets c's Reader when the test runs on event loops.
func readBy(t testing.TB, c *Client) *Client {
	if testReader != nil {
		c.Reader = testReader(t)
	}
	return c
}

// loopReader is a proxy whose event loops read sessions, shut down with
// the test.
func loopReader(t testing.TB) loophint.Reader {
	px := &proxy.Proxy{Loops: 2}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		px.Shutdown(ctx)
	})
	return px
}

// TestMuxOnEventLoops runs the multiplexed links' tests with the sessions
// read by a proxy's event loops instead of a goroutine each: a pooled
// connection that dies, bulk and interactive streams sharing one, a server
// that goes away, certificate rotation, the spread over sessions.
func TestMuxOnEventLoops(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    func(*testing.T)
	}{
		{"KillPooledConnection", TestMuxKillPooledConnection},
		{"BulkDoesNotStarveInteractive", TestMuxBulkDoesNotStarveInteractive},
		{"ServerShutdown", TestMuxServerShutdown},
		{"ClientCertificateRotation", TestMuxClientCertificateRotation},
		{"SpreadsOverSessions", TestMuxSpreadsOverSessions},
		{"LoopsStopBeforeTheSessions", testLoopsStopBeforeTheSessions},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testReader = loopReader
			defer func() { testReader = nil }()
			tc.f(t)
		})
	}
}

// testLoopsStopBeforeTheSessions stops the event loops of both ends while
// their sessions carry streams: the sessions go on, read by goroutines of
// their own, the open streams keep working and new ones open on the same
// pooled connections.
func testLoopsStopBeforeTheSessions(t *testing.T) {
	p := newPKI(t, "fleet")
	var readers []*proxy.Proxy
	testReader = func(t testing.TB) loophint.Reader {
		px := &proxy.Proxy{Loops: 2}
		readers = append(readers, px)
		return px
	}
	srv := startServer(t, p.identity("host-b", nil, certs.Request{}), map[string]Target{"echo": echoTarget(t, "host-a")})
	cl := readBy(t, &Client{Identity: p.identity("host-a", nil, certs.Request{}), Stats: NewStats(), Sessions: 2})
	defer cl.Close()
	var streams []net.Conn
	pooled := map[string]bool{}
	for i := range 8 {
		c, err := cl.Dial(ctxT(t), "echo", srv.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, ok := c.(*Stream).Loop(); !ok {
			t.Fatalf("stream %d: its session is not read by an event loop", i)
		}
		roundTrip(t, c, fmt.Sprintf("before %d", i))
		streams = append(streams, c)
		pooled[c.LocalAddr().String()] = true
	}
	for _, px := range readers {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		px.Shutdown(ctx)
		cancel()
	}
	for i, c := range streams {
		roundTrip(t, c, fmt.Sprintf("after %d", i))
	}
	for i := range 8 {
		c, err := cl.Dial(ctxT(t), "echo", srv.addr)
		if err != nil {
			t.Fatalf("new stream %d after the loops stopped: %v", i, err)
		}
		if !pooled[c.LocalAddr().String()] {
			t.Fatalf("new stream %d on a new connection %s: the pooled ones %v died with the loops", i, c.LocalAddr(), pooled)
		}
		roundTrip(t, c, fmt.Sprintf("new %d", i))
		c.Close()
	}
}
