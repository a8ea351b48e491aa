package link

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/attache/attache/internal/certs"
	"github.com/attache/attache/internal/testenv"
)

// TestMuxKillPooledConnection cuts one pooled connection (its TCP
// connection reset, as a host or path dying would) while many streams are
// open on several: only the streams on that connection fail, with a reset;
// the others carry on, and new streams get a working connection.
func TestMuxKillPooledConnection(t *testing.T) {
	p := newPKI(t, "fleet")
	srv := startServer(t, p.identity("host-b", nil, certs.Request{}), map[string]Target{"echo": echoTarget(t, "host-a")})
	relay := testenv.StartRelay(t, srv.addr)
	cl := readBy(t, &Client{Identity: p.identity("host-a", nil, certs.Request{}), Stats: NewStats()})
	defer cl.Close()

	// Enough streams for the pool to open a second connection (a
	// connection takes streamsPerSession before another is opened).
	var streams []net.Conn
	defer func() {
		for _, c := range streams {
			c.Close()
		}
	}()
	sessions := map[string]bool{}
	for i := 0; len(sessions) < 2; i++ {
		if i == 4*streamsPerSession {
			t.Fatalf("%d streams on %d pooled connections: the pool does not grow", i, len(sessions))
		}
		c, err := cl.Dial(ctxT(t), "echo", relay.Addr)
		if err != nil {
			t.Fatal(err)
		}
		roundTrip(t, c, fmt.Sprintf("stream %d", i))
		if testReader != nil {
			if _, ok := c.(*Stream).Loop(); !ok {
				t.Fatalf("stream %d: its session is not read by an event loop", i)
			}
		}
		streams = append(streams, c)
		sessions[c.LocalAddr().String()] = true
	}
	bySession := map[string][]net.Conn{}
	for _, c := range streams {
		bySession[c.LocalAddr().String()] = append(bySession[c.LocalAddr().String()], c)
	}
	if len(bySession) < 2 {
		t.Fatalf("streams on %d pooled connections, want at least 2", len(bySession))
	}
	var victim string
	for addr := range bySession {
		victim = addr
		break
	}
	if !relay.Cut(victim) {
		t.Fatalf("no relayed connection from %s (relayed: %v)", victim, relay.Clients())
	}
	for addr, cs := range bySession {
		for i, c := range cs {
			if addr != victim {
				roundTrip(t, c, fmt.Sprintf("survivor %d", i))
				continue
			}
			_ = c.SetDeadline(time.Now().Add(20 * time.Second))
			_, werr := io.WriteString(c, "after the cut")
			_, rerr := c.Read(make([]byte, 64))
			err := errors.Join(werr, rerr)
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("a stream of the cut connection: %v, want a reset", err)
			}
		}
	}
	t.Logf("cut 1 of %d pooled connections: %d streams failed with a reset, %d carried on",
		len(bySession), len(bySession[victim]), len(streams)-len(bySession[victim]))
	for i := range 20 {
		c, err := cl.Dial(ctxT(t), "echo", relay.Addr)
		if err != nil {
			t.Fatalf("new stream %d after the cut: %v", i, err)
		}
		if c.LocalAddr().String() == victim {
			t.Fatalf("new stream %d on the cut connection", i)
		}
		roundTrip(t, c, "new")
		c.Close()
	}
}

// TestMuxBulkDoesNotStarveInteractive shares one pooled connection between
// a bulk upload whose receiver stopped reading, a bulk upload as fast as
// the link goes, and interactive streams doing request/response round
// trips: per-stream flow control stops the stalled stream alone, and the
// interactive streams keep answering. Their latency, with and without the
// bulk streams, is logged (not asserted: machines here are noisy).
func TestMuxBulkDoesNotStarveInteractive(t *testing.T) {
	p := newPKI(t, "fleet")
	// A backend that accepts and never reads: its stream's window fills.
	stalled, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	testenv.Serve(t, stalled, func(net.Conn) { <-release })
	t.Cleanup(func() { close(release) }) // runs before Serve's cleanup
	sinkLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	testenv.Serve(t, sinkLn, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) })
	sink := sinkLn.Addr().String()
	dialTo := func(addr string) Target {
		return Target{Allow: []string{AllowAny}, Handle: DialHandler(func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		})}
	}
	srv := startServer(t, p.identity("host-b", nil, certs.Request{}), map[string]Target{
		"echo": echoTarget(t, AllowAny), "stalled": dialTo(stalled.Addr().String()), "sink": dialTo(sink),
	})
	cl := readBy(t, &Client{Identity: p.identity("host-a", nil, certs.Request{}), Stats: NewStats(), Sessions: 1})
	defer cl.Close()

	const interactive, rounds = 8, 200
	measure := func() []time.Duration {
		var (
			mu  sync.Mutex
			all []time.Duration
			wg  sync.WaitGroup
		)
		for i := range interactive {
			c, err := cl.Dial(ctxT(t), "echo", srv.addr)
			if err != nil {
				t.Fatal(err)
			}
			wg.Go(func() {
				defer c.Close()
				msg := fmt.Sprintf("request %d", i)
				buf := make([]byte, len(msg))
				for range rounds {
					start := time.Now()
					// A bound on a hang, not a performance threshold.
					_ = c.SetDeadline(start.Add(20 * time.Second))
					if _, err := io.WriteString(c, msg); err != nil {
						t.Errorf("interactive write: %v", err)
						return
					}
					if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
						t.Errorf("interactive read: %q, %v", buf, err)
						return
					}
					d := time.Since(start)
					mu.Lock()
					all = append(all, d)
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
		return all
	}
	quantile := func(d []time.Duration, q float64) time.Duration {
		if len(d) == 0 {
			return 0
		}
		return d[int(q*float64(len(d)-1))]
	}
	quiet := measure()

	// The stalled upload: it writes until its window is full, then blocks.
	stuck, err := cl.Dial(ctxT(t), "stalled", srv.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer stuck.Close()
	var stuckWritten atomic.Int64
	chunk := make([]byte, 256<<10)
	go func() {
		for {
			n, err := stuck.Write(chunk)
			stuckWritten.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	// The flowing upload, for as long as the interactive streams run.
	bulk, err := cl.Dial(ctxT(t), "sink", srv.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer bulk.Close()
	var bulkWritten atomic.Int64
	bulkDone := make(chan struct{})
	go func() {
		defer close(bulkDone)
		for {
			n, err := bulk.Write(chunk)
			bulkWritten.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	// The stalled stream has filled what the path holds for it (its
	// window, the backend's socket buffers) and is blocked.
	waitFor(t, "the stalled upload blocked", func() bool {
		before := stuckWritten.Load()
		time.Sleep(100 * time.Millisecond)
		return before > 0 && stuckWritten.Load() == before
	})
	if got := cl.Stats.sessionsOpened[sideClient].Load(); got != 1 {
		t.Fatalf("%d pooled connections, want the streams to share 1", got)
	}
	busyBulkBefore := bulkWritten.Load()
	busy := measure()
	busyBulk := bulkWritten.Load() - busyBulkBefore
	stuckAt := stuckWritten.Load()
	bulk.Close()
	<-bulkDone
	if busyBulk == 0 {
		t.Errorf("the flowing upload moved no bytes while the interactive streams ran")
	}
	if n := stuckWritten.Load(); n != stuckAt {
		t.Errorf("the stalled upload went on writing (%d then %d bytes): its receiver reads nothing", stuckAt, n)
	}
	if len(busy) != interactive*rounds {
		t.Fatalf("%d interactive round trips answered, want %d", len(busy), interactive*rounds)
	}
	t.Logf("interactive round trips alone: p50 %v p99 %v; beside a stalled and a flowing upload (%d MiB moved meanwhile, %d KiB stuck): p50 %v p99 %v",
		quantile(quiet, 0.5), quantile(quiet, 0.99), busyBulk>>20, stuckAt>>10, quantile(busy, 0.5), quantile(busy, 0.99))
}

// TestMuxFallsBackToAttache1 dials a link server that speaks attache/1
// only (an attache from before multiplexing): the client gives its streams
// connections of their own, and keeps doing so for that server.
func TestMuxFallsBackToAttache1(t *testing.T) {
	p := newPKI(t, "fleet")
	srv := startServerWith(t, p.identity("host-b", nil, certs.Request{}), map[string]Target{"echo": echoTarget(t, "host-a")},
		func(s *Server) { s.legacyOnly = true })
	cl := readBy(t, &Client{Identity: p.identity("host-a", nil, certs.Request{}), Stats: NewStats()})
	defer cl.Close()
	for i := range 3 {
		c, err := cl.Dial(ctxT(t), "echo", srv.addr)
		if err != nil {
			t.Fatal(err)
		}
		if cs := connState(t, c); cs.NegotiatedProtocol != ALPN {
			t.Fatalf("dial %d: ALPN %q, want %s", i, cs.NegotiatedProtocol, ALPN)
		}
		roundTrip(t, c, "old server")
		c.Close()
	}
	if _, opened := cl.Stats.Sessions("client"); opened != 0 {
		t.Errorf("%d pooled connections opened to an attache/1 server, want 0", opened)
	}
	// One handshake offered attache/h2 and was answered attache/1; the
	// three dials then had connections of their own.
	if total, _ := cl.Stats.ClientHandshakes(); total != 3 {
		t.Errorf("client handshakes %d, want 3", total)
	}
}

// TestMuxServerShutdown stops a link server with a stream open: the stream
// carries on until it ends, the pooled connection then closes, and the
// client's next dial does not reuse the connection the server said go
// away on. Started again, the server is reached on a new connection.
func TestMuxServerShutdown(t *testing.T) {
	p := newPKI(t, "fleet")
	id := p.identity("host-b", nil, certs.Request{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	stats := NewStats()
	echo := echoTarget(t, AllowAny)
	srv := &Server{Identity: id, Stats: stats, Lookup: func(s string) (Target, bool) {
		// Streams outlive the server's context (Serve's), as the
		// daemon's handed-off streams do: Close ends them.
		return Target{Allow: echo.Allow, Handle: func(_ context.Context, c net.Conn, ready func(error) error) {
			echo.Handle(context.Background(), c, ready)
		}}, s == "echo"
	}}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()
	defer srv.Close()
	cl := readBy(t, &Client{Identity: p.identity("host-a", nil, certs.Request{}), Stats: NewStats()})
	defer cl.Close()

	open, err := cl.Dial(ctxT(t), "echo", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, open, "before the shutdown")
	cancel()
	if err := <-served; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	roundTrip(t, open, "after the shutdown, same stream")
	if n, _ := stats.Sessions("server"); n != 1 {
		t.Errorf("server sessions open %d while a stream is, want 1", n)
	}
	if _, err := cl.Dial(ctxT(t), "echo", ln.Addr().String()); err == nil {
		t.Fatalf("a new stream reached a server that stopped")
	} else {
		t.Logf("dial after the shutdown: %v", err)
	}
	open.Close()
	waitFor(t, "the server's pooled connection closed after its last stream", func() bool {
		n, _ := stats.Sessions("server")
		return n == 0
	})
	waitFor(t, "the client's pooled connection closed", func() bool {
		n, _ := cl.Stats.Sessions("client")
		return n == 0
	})

	// The link server starts again on the same address: the client's
	// next stream reaches it on a new pooled connection.
	ln2, err := net.Listen("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	go func() { _ = srv.Serve(ctx2, ln2) }()
	c, err := cl.Dial(ctxT(t), "echo", ln.Addr().String())
	if err != nil {
		t.Fatalf("dial after the link server restarted: %v", err)
	}
	roundTrip(t, c, "after the restart")
	c.Close()
}

// TestMuxClientCertificateRotation reloads the client's certificate: the
// next stream travels on a new pooled connection (the server sees the new
// certificate), while a stream open on the old one carries on, and the old
// connection closes with its last stream.
func TestMuxClientCertificateRotation(t *testing.T) {
	p := newPKI(t, "fleet")
	var seen sync.Map // serial numbers of the client certificates the server saw
	target := echoTarget(t, AllowAny)
	srv := startServer(t, p.identity("host-b", nil, certs.Request{}), map[string]Target{"echo": {Allow: target.Allow,
		Handle: func(ctx context.Context, c net.Conn, ready func(error) error) {
			seen.Store(connState(t, c).PeerCertificates[0].SerialNumber.String(), true)
			target.Handle(ctx, c, ready)
		}}})
	f := p.files("host-a", nil, certs.Request{})
	id, err := NewIdentity(f, nil, NewStats())
	if err != nil {
		t.Fatal(err)
	}
	cl := readBy(t, &Client{Identity: id, Stats: NewStats()})
	defer cl.Close()
	old, err := cl.Dial(ctxT(t), "echo", srv.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	roundTrip(t, old, "old certificate")

	cert, key, err := p.ca.Issue(certs.Request{Name: "host-a", DNS: []string{"host-a.rotated"}})
	if err != nil {
		t.Fatal(err)
	}
	writeIdentity(t, f, cert.Raw, key)
	waitFor(t, "the client's new certificate loaded", func() bool { ok, _ := id.Reload(); return ok || id.Generation() > 0 })

	c, err := cl.Dial(ctxT(t), "echo", srv.addr)
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, c, "new certificate")
	c.Close()
	if _, ok := seen.Load(cert.SerialNumber.String()); !ok {
		t.Errorf("the server never saw the rotated client certificate")
	}
	if _, opened := cl.Stats.Sessions("client"); opened != 2 {
		t.Errorf("%d pooled connections opened, want 2 (one per certificate)", opened)
	}
	roundTrip(t, old, "the old stream carries on")
	old.Close()
	waitFor(t, "the old pooled connection closed with its last stream", func() bool {
		n, _ := cl.Stats.Sessions("client")
		return n == 1
	})
}

// TestAnswerStatuses checks that every answer of attache/1 has an HTTP
// status of its own on multiplexed links, and reads back as itself.
func TestAnswerStatuses(t *testing.T) {
	seen := map[int]bool{}
	for _, status := range []byte{statusOK, statusNotAllowed, statusUnknown, statusNoBackend, statusExpired, statusGoingAway} {
		code, ok := statusToHTTP[status]
		if !ok || seen[code] {
			t.Fatalf("status %d: HTTP status %d missing or shared", status, code)
		}
		seen[code] = true
		if back := httpToStatus[code]; back != status {
			t.Fatalf("HTTP status %d reads back as %d, want %d", code, back, status)
		}
	}
	if _, ok := httpToStatus[418]; ok {
		t.Fatal("an HTTP status no server sends maps to an answer")
	}
}

// TestMuxSpreadsOverSessions checks that a link server gets Sessions pooled
// connections once it carries streams, and that new streams go to the least
// loaded one: bulk streams then encrypt on as many goroutines (and CPUs).
func TestMuxSpreadsOverSessions(t *testing.T) {
	p := newPKI(t, "fleet")
	srv := startServer(t, p.identity("host-b", nil, certs.Request{}), map[string]Target{"echo": echoTarget(t, "host-a")})
	cl := readBy(t, &Client{Identity: p.identity("host-a", nil, certs.Request{}), Stats: NewStats(), Sessions: 2})
	defer cl.Close()
	dial := func(i int) net.Conn {
		c, err := cl.Dial(ctxT(t), "echo", srv.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		roundTrip(t, c, fmt.Sprintf("stream %d", i))
		return c
	}
	first := dial(0)
	// The second stream goes on the first connection while the second
	// connection is dialled in the background.
	dial(1)
	waitFor(t, "a second pooled connection", func() bool {
		p := cl.streamPool()
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.peers[srv.addr].sessions) == 2
	})
	a, b := dial(2), dial(3)
	for _, c := range []net.Conn{a, b} {
		if c.LocalAddr().String() == first.LocalAddr().String() {
			t.Fatal("a stream went to the connection carrying two while the other carried fewer")
		}
	}
}
