package udp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/attache/attache/internal/backend"
	"github.com/attache/attache/internal/balance"
	"github.com/attache/attache/internal/testenv"
)

// serve runs a Listener on a fresh loopback socket until the test ends;
// setup, if given, configures it before it serves.
func serve(t *testing.T, r *Route, setup ...func(*Listener)) *Listener {
	t.Helper()
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	l := NewListener(pc, r)
	for _, f := range setup {
		f(l)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return l
}

func set(addrs ...string) *backend.Set {
	bs := make([]*backend.Backend, len(addrs))
	for i, a := range addrs {
		bs[i] = backend.New(backend.Endpoint{Addr: a})
	}
	return backend.NewSet(bs...)
}

// peer is one UDP client socket talking to the proxy, and what it sent.
type peer struct {
	*net.UDPConn
	sent []string
}

func client(t *testing.T, addr net.Addr) *peer {
	t.Helper()
	c, err := net.DialUDP("udp4", nil, addr.(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &peer{UDPConn: c}
}

// exchange sends msg and returns the first reply that ends with it,
// resending every half second (UDP may drop a datagram on a busy machine)
// for up to 20 s. A late reply to something this peer sent before is
// skipped; any other reply is returned as an error at once: on a client's
// own socket it can only be another client's.
func (c *peer) exchange(msg string) (string, error) {
	earlier := c.sent
	c.sent = append(c.sent, msg)
	stale := func(reply string) bool {
		for _, m := range earlier {
			if strings.HasSuffix(reply, m) {
				return true
			}
		}
		return false
	}
	return testenv.Exchange(c, msg, func(got string) (bool, error) {
		switch {
		case strings.HasSuffix(got, msg):
			return true, nil
		case stale(got):
			return false, nil // a late reply to an earlier resend of ours
		}
		return true, fmt.Errorf("sent %q, got %q", msg, got)
	})
}

// poll waits up to 20 s for cond.
func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testenv.WaitFor(t, what, cond)
}

func TestManyClientsRepliesNeverCrossed(t *testing.T) {
	echo := testenv.StartUDPEcho(t, "127.0.0.1:0", "echo:")
	l := serve(t, &Route{Service: "echo", Backends: set(echo.Addr)})
	const clients, msgs = 40, 25
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := range clients {
		c := client(t, l.Addr())
		wg.Go(func() {
			for m := range msgs {
				msg := fmt.Sprintf("client-%03d-msg-%03d", i, m)
				got, err := c.exchange(msg)
				if err != nil {
					errs <- fmt.Errorf("client %d: %w", i, err)
					return
				}
				if got != "echo:"+msg {
					errs <- fmt.Errorf("client %d: sent %q, got %q", i, msg, got)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// A reply is counted just after it is sent, so the client may see it first.
	poll(t, "every datagram to be counted", func() bool {
		c := l.Counters()
		return c.PacketsIn >= clients*msgs && c.PacketsOut >= clients*msgs
	})
	c := l.Counters()
	if c.Created != clients || c.Active != clients {
		t.Errorf("sessions created %d, active %d; want %d each (one per client)", c.Created, c.Active, clients)
	}
	// Each session has its own upstream socket, so the backend sees one
	// source per client: that is what keeps replies apart.
	if got := echo.Peers(); got != clients {
		t.Errorf("backend saw %d source addresses, want %d", got, clients)
	}
	if c.BytesIn != c.PacketsIn*int64(len("client-000-msg-000")) {
		t.Errorf("bytes in %d for %d datagrams of %d bytes", c.BytesIn, c.PacketsIn, len("client-000-msg-000"))
	}
	b := l.Route().Backends.At(0)
	if b.Active() != clients {
		t.Errorf("backend counts %d active sessions, want %d (least_conn and the admin API read it)", b.Active(), clients)
	}
}

func TestLargeDatagram(t *testing.T) {
	echo := testenv.StartUDPEcho(t, "127.0.0.1:0", "")
	l := serve(t, &Route{Service: "echo", Backends: set(echo.Addr)})
	c := client(t, l.Addr())
	msg := strings.Repeat("0123456789abcdef", 4000) // 64000 bytes
	got, err := c.exchange(msg)
	if err != nil {
		t.Fatal(err)
	}
	if got != msg {
		t.Fatalf("a %d-byte datagram came back as %d bytes", len(msg), len(got))
	}
	if _, err := c.exchange(""); err != nil { // an empty datagram is a datagram too
		t.Fatal(err)
	}
}

func TestSessionTableBoundedUnderFlood(t *testing.T) {
	echo := testenv.StartUDPEcho(t, "127.0.0.1:0", "echo:")
	const max = 10
	l := serve(t, &Route{Service: "echo", Backends: set(echo.Addr), MaxSessions: max, IdleTimeout: time.Hour})
	var existing []*peer
	for i := range 3 {
		c := client(t, l.Addr())
		if _, err := c.exchange(fmt.Sprintf("existing-%d", i)); err != nil {
			t.Fatal(err)
		}
		existing = append(existing, c)
	}
	// The flood: 200 clients, each a new socket, one datagram each, sent
	// in batches that the proxy is let to take in before the next (the
	// test is about the table, not the kernel's socket buffer).
	const flood, batch = 200, 20
	for i := 0; i < flood; i += batch {
		for j := i; j < i+batch; j++ {
			if _, err := client(t, l.Addr()).Write([]byte("flood")); err != nil {
				t.Fatal(err)
			}
		}
		want := int64(3 + i + batch)
		poll(t, "the proxy to take in the batch", func() bool {
			c := l.Counters()
			return c.Created+c.TableFull >= want
		})
		if n := l.Sessions(); n > max {
			t.Fatalf("%d sessions open, more than max_sessions %d", n, max)
		}
	}
	c := l.Counters()
	if c.Created != max || c.Active != max {
		t.Errorf("created %d sessions, %d active; want exactly max_sessions %d", c.Created, c.Active, max)
	}
	if c.TableFull != 3+flood-max {
		t.Errorf("table-full drops %d, want %d", c.TableFull, 3+flood-max)
	}
	// The sessions that were there keep working.
	for i, ec := range existing {
		if _, err := ec.exchange(fmt.Sprintf("still-%d", i)); err != nil {
			t.Errorf("existing client %d after the flood: %v", i, err)
		}
	}
	if got := echo.Peers(); got != max {
		t.Errorf("backend saw %d sources, want %d", got, max)
	}
}

func TestIdleSessionsExpire(t *testing.T) {
	echo := testenv.StartUDPEcho(t, "127.0.0.1:0", "")
	r := &Route{Service: "echo", Backends: set(echo.Addr), IdleTimeout: 150 * time.Millisecond}
	l := serve(t, r)
	var cs []*peer
	for i := range 5 {
		c := client(t, l.Addr())
		if _, err := c.exchange(fmt.Sprintf("hello-%d", i)); err != nil {
			t.Fatal(err)
		}
		cs = append(cs, c)
	}
	b := r.Backends.At(0)
	poll(t, "every idle session to expire", func() bool { return l.Sessions() == 0 })
	poll(t, "the expired sessions to release the backend", func() bool { return b.Active() == 0 })
	c := l.Counters()
	if c.Expired != 5 || c.Active != 0 {
		t.Errorf("expired %d, active %d; want 5 and 0", c.Expired, c.Active)
	}
	// A client that comes back gets a new session, to the same backend.
	if _, err := cs[0].exchange("again"); err != nil {
		t.Fatal(err)
	}
	if c := l.Counters(); c.Created != 6 {
		t.Errorf("created %d sessions, want 6", c.Created)
	}
	// The counters of expired sessions stay counted. (The reply is
	// counted just after it is sent, so the client may see it first.)
	poll(t, "six datagrams each way to be counted", func() bool {
		c := l.Counters()
		return c.PacketsIn >= 6 && c.PacketsOut >= 6
	})
}

func TestActiveSessionIsNotExpired(t *testing.T) {
	echo := testenv.StartUDPEcho(t, "127.0.0.1:0", "")
	l := serve(t, &Route{Service: "echo", Backends: set(echo.Addr), IdleTimeout: 300 * time.Millisecond})
	c := client(t, l.Addr())
	// Traffic for four idle timeouts, a datagram every tenth of one.
	for i := range 40 {
		if _, err := c.exchange(fmt.Sprintf("keepalive-%d", i)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(30 * time.Millisecond)
	}
	// On a loaded machine a pause may exceed the timeout; what matters is
	// that a session with traffic is not ended on a timer from its start.
	if c := l.Counters(); c.Created > 1+c.Expired || c.Created >= 40 {
		t.Errorf("created %d sessions (%d expired) for one busy client", c.Created, c.Expired)
	}
}

func TestRouteChangeMovesSessions(t *testing.T) {
	a := testenv.StartUDPEcho(t, "127.0.0.1:0", "A:")
	b := testenv.StartUDPEcho(t, "127.0.0.1:0", "B:")
	l := serve(t, &Route{Service: "ab", Backends: set(a.Addr)})
	c := client(t, l.Addr())
	if got, err := c.exchange("one"); err != nil || got != "A:one" {
		t.Fatalf("first exchange: %q, %v", got, err)
	}
	// Discovery replaces A with B: the session moves at its next datagram.
	l.SetRoute(&Route{Service: "ab", Backends: set(b.Addr)})
	if got, err := c.exchange("two"); err != nil || got != "B:two" {
		t.Fatalf("after the route change: %q, %v", got, err)
	}
	if m := l.Counters().Moved; m != 1 {
		t.Errorf("moved %d sessions, want 1", m)
	}

	// A health change: with A and B listed, the session on B moves to A
	// when B fails its checks, and stays on A when B comes back.
	// First picks A, the lower tier, while it is healthy.
	both := backend.NewSet(backend.New(backend.Endpoint{Addr: a.Addr}), backend.New(backend.Endpoint{Addr: b.Addr, Priority: 1}))
	l.SetRoute(&Route{Service: "ab", Backends: both, Policy: balance.First{}})
	if got, err := c.exchange("three"); err != nil || got != "A:three" {
		// B is no longer the same backend state (a new Set), so the
		// session moved to the first one.
		t.Fatalf("after listing both: %q, %v", got, err)
	}
	both.At(0).SetHealthy(false)
	if got, err := c.exchange("four"); err != nil || got != "B:four" {
		t.Fatalf("after A failed: %q, %v", got, err)
	}
	both.At(0).SetHealthy(true)
	if got, err := c.exchange("five"); err != nil || got != "B:five" {
		t.Fatalf("after A recovered: %q, %v (a healthy session stays where it is)", got, err)
	}
	// With every backend down and the session's one still listed, the
	// session stays rather than dropping the traffic.
	both.At(1).SetHealthy(false)
	both.At(0).SetHealthy(false)
	if got, err := c.exchange("six"); err != nil || got != "B:six" {
		t.Fatalf("with everything down: %q, %v", got, err)
	}
	if l.Sessions() != 1 {
		t.Errorf("%d sessions, want 1", l.Sessions())
	}
	poll(t, "moved sessions to release their backends", func() bool {
		return both.At(0).Active() == 0 && both.At(1).Active() == 1
	})
}

func TestClosedPortMovesToAnotherBackend(t *testing.T) {
	good := testenv.StartUDPEcho(t, "127.0.0.1:0", "good:")
	gone := testenv.StartUDPEcho(t, "127.0.0.1:0", "gone:")
	gone.Close() // nothing listens there now: ICMP port unreachable
	refusedCalls := make(chan string, 10)
	// A fresh round robin picks index 1 first.
	bs := set(good.Addr, gone.Addr)
	l := serve(t, &Route{Service: "r", Backends: bs, Passive: true,
		OnRefused: func(b *backend.Backend) { refusedCalls <- b.Addr }})
	c := client(t, l.Addr())
	got, err := c.exchange("ping")
	if err != nil || got != "good:ping" {
		t.Fatalf("got %q, %v", got, err)
	}
	if r := l.Counters().Refused; r != 1 {
		t.Errorf("refused %d, want 1", r)
	}
	select {
	case addr := <-refusedCalls:
		if addr != gone.Addr {
			t.Errorf("OnRefused for %s, want %s", addr, gone.Addr)
		}
	default:
		t.Error("OnRefused was not called")
	}
	if bs.At(1).Healthy() {
		t.Error("the closed backend is not ejected")
	}
	if bs.At(1).Totals().Ejections != 1 {
		t.Errorf("ejections %d, want 1", bs.At(1).Totals().Ejections)
	}
}

func TestNoBackendDrops(t *testing.T) {
	l := serve(t, &Route{Service: "empty", Backends: set()})
	c := client(t, l.Addr())
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	poll(t, "the drop to be counted", func() bool { return l.Counters().NoBackend == 1 })
	if l.Sessions() != 0 {
		t.Errorf("%d sessions without a backend", l.Sessions())
	}
}

func TestHostnameBackendQueuesWhileResolving(t *testing.T) {
	echo := testenv.StartUDPEcho(t, "127.0.0.1:0", "")
	dns := testenv.StartDNS(t)
	dns.SetA("echo.test", "127.0.0.1")
	_, port, _ := net.SplitHostPort(echo.Addr)
	l := serve(t, &Route{Service: "named", Backends: set("echo.test:" + port)},
		func(l *Listener) { l.Resolver = dns.Resolver() })
	c := client(t, l.Addr())
	// Several datagrams at once: those after the first wait for the name
	// to resolve, then go out in order.
	for i := range 5 {
		if _, err := c.Write(fmt.Appendf(nil, "q%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, 100)
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
	for i := range 5 {
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("reply %d: %v", i, err)
		}
		if got, want := string(buf[:n]), fmt.Sprintf("q%d", i); got != want {
			t.Errorf("reply %d: %q, want %q", i, got, want)
		}
	}
	if dns.Queries("echo.test.") == 0 {
		t.Error("the backend name was not resolved through the resolver given")
	}
}

func TestServeEndsSessionsOnShutdown(t *testing.T) {
	echo := testenv.StartUDPEcho(t, "127.0.0.1:0", "")
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	r := &Route{Service: "echo", Backends: set(echo.Addr)}
	l := NewListener(pc, r)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Serve(ctx) }()
	for i := range 3 {
		if _, err := client(t, l.Addr()).exchange(fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Serve did not return")
	}
	if n := l.Sessions(); n != 0 {
		t.Errorf("%d sessions left after Serve returned", n)
	}
	if a := r.Backends.At(0).Active(); a != 0 {
		t.Errorf("backend still counts %d sessions", a)
	}
	if _, err := pc.WriteToUDPAddrPort([]byte("x"), pc.LocalAddr().(*net.UDPAddr).AddrPort()); !errors.Is(err, net.ErrClosed) {
		t.Errorf("listening socket not closed: write gave %v", err)
	}
}

func TestForwardDoesNotAllocate(t *testing.T) {
	// A backend that never answers, so nothing else runs meanwhile.
	sink, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	go func() {
		// AllocsPerRun counts every goroutine's allocations: this reader
		// must make none (ReadFrom would allocate an address each time).
		buf := make([]byte, maxDatagram)
		for {
			if _, _, err := sink.ReadFromUDPAddrPort(buf); err != nil {
				return
			}
		}
	}()
	l := serve(t, &Route{Service: "sink", Backends: set(sink.LocalAddr().String())})
	c := client(t, l.Addr())
	if _, err := c.Write([]byte("open")); err != nil {
		t.Fatal(err)
	}
	poll(t, "the session to open", func() bool { return l.Counters().PacketsIn == 1 })
	from := c.LocalAddr().(*net.UDPAddr).AddrPort()
	p := bytes.Repeat([]byte("x"), 512)
	// The read loop's work for a datagram of an open session: table
	// lookup, health check, send.
	if n := testing.AllocsPerRun(200, func() { l.handle(p, from) }); n != 0 {
		t.Errorf("%v allocations per forwarded datagram, want 0", n)
	}
}

func TestDrainingBackendKeepsItsSessions(t *testing.T) {
	a := testenv.StartUDPEcho(t, "127.0.0.1:0", "A:")
	b := testenv.StartUDPEcho(t, "127.0.0.1:0", "B:")
	bs := set(a.Addr, b.Addr)
	l := serve(t, &Route{Service: "d", Backends: backend.NewSet(bs.At(0)), Policy: balance.First{}})
	old := client(t, l.Addr())
	if got, err := old.exchange("one"); err != nil || got != "A:one" {
		t.Fatalf("%q, %v", got, err)
	}
	// A is drained: out of rotation, its session stays.
	l.SetRoute(&Route{Service: "d", Backends: backend.NewSet(bs.At(1)), Draining: []*backend.Backend{bs.At(0)}})
	if got, err := old.exchange("two"); err != nil || got != "A:two" {
		t.Fatalf("the session on the drained backend: %q, %v", got, err)
	}
	if got, err := client(t, l.Addr()).exchange("new"); err != nil || got != "B:new" {
		t.Fatalf("a new client while A drains: %q, %v", got, err)
	}
	// Removed for good: the session moves.
	l.SetRoute(&Route{Service: "d", Backends: backend.NewSet(bs.At(1))})
	if got, err := old.exchange("three"); err != nil || got != "B:three" {
		t.Fatalf("after A left: %q, %v", got, err)
	}
}

func TestIPv6AndDualStack(t *testing.T) {
	echo := testenv.StartUDPEcho(t, "127.0.0.1:0", "")
	echo6 := testenv.StartUDPEcho(t, "[::1]:0", "")
	for _, tt := range []struct{ name, listen, client, backend string }{
		{"ipv6", "[::1]:0", "udp6", echo6.Addr},
		// An IPv4 client of a dual-stack socket arrives as ::ffff:a.b.c.d;
		// its replies must go back to it all the same.
		{"dual-stack", "[::]:0", "udp4", echo.Addr},
	} {
		t.Run(tt.name, func(t *testing.T) {
			pc, err := net.ListenPacket("udp", tt.listen)
			if err != nil {
				t.Fatal(err)
			}
			l := NewListener(pc.(*net.UDPConn), &Route{Service: tt.name, Backends: set(tt.backend)})
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- l.Serve(ctx) }()
			defer func() {
				cancel()
				<-done
			}()
			port := l.Addr().(*net.UDPAddr).Port
			to := &net.UDPAddr{IP: net.IPv6loopback, Port: port}
			if tt.client == "udp4" {
				to.IP = net.IPv4(127, 0, 0, 1)
			}
			c, err := net.DialUDP(tt.client, nil, to)
			if err != nil {
				t.Fatal(err)
			}
			p := &peer{UDPConn: c}
			defer c.Close()
			if got, err := p.exchange("hello"); err != nil || got != "hello" {
				t.Fatalf("%q, %v", got, err)
			}
			l.mu.Lock()
			for from := range l.sessions {
				if from.Addr().Is4In6() {
					t.Errorf("session keyed by a mapped address %s; want it unmapped", from)
				}
			}
			l.mu.Unlock()
		})
	}
}

// TestUnreachableBackendReasonSaysItOnce: a session whose backend cannot
// be dialled on any retry ends with one reason line that says the failure
// once, with the count of dials, not the same error on a line per retry.
func TestUnreachableBackendReasonSaysItOnce(t *testing.T) {
	dns := testenv.StartDNS(t) // knows no name: every lookup fails alike
	var logs testenv.LogBuffer
	l := serve(t, &Route{Service: "gone", Backends: set("missing.test:53"), Retries: 3}, func(l *Listener) {
		l.Resolver = dns.Resolver()
		l.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	c := client(t, l.Addr())
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	poll(t, "the session to end", func() bool { return len(logs.Lines("udp session closed")) == 1 })
	line := logs.Lines("udp session closed")[0]
	if !strings.Contains(line, "no backend reachable: missing.test:53: ") || !strings.Contains(line, " (4 dials)") ||
		strings.Count(line, "missing.test:53: ") != 1 || strings.Contains(line, `\n`) {
		t.Errorf("the reason should say the failure once, with its count (4 dials), on one line:\n%s", line)
	}
}
