package proxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/attache/attache/internal/testenv"
	"golang.org/x/sys/unix"
)

// The event loop engine (loop.go) carries plain TCP connections; the other
// tests in this package run over it by default (and over goroutines with
// ATTACHE_LOOPS=-1, as `make unit` does too). These cover what is its own:
// no goroutine per connection, back-pressure, fairness between connections
// on one loop, and connections that leave it.

// loopProxy is a Proxy with n event loops, whatever ATTACHE_LOOPS says.
func loopProxy(n int) *Proxy { return &Proxy{Loops: n} }

func TestLoopHoldsNoGoroutinePerConnection(t *testing.T) {
	echo := testenv.Echo(t, "127.0.0.1:0")
	p := loopProxy(1)
	l := start(t, p, &Route{Service: "loop", Backends: Addrs(echo)}, 0)
	// A first connection starts the loop and the echo server's handlers
	// settle; then 100 more are opened and left idle.
	warm := dial(t, l.Addr().String())
	roundTrip(t, warm, []byte("warm"))
	before := runtime.NumGoroutine()
	const n = 100
	conns := make([]*net.TCPConn, n)
	for i := range conns {
		conns[i] = dial(t, l.Addr().String())
		roundTrip(t, conns[i], []byte{byte(i)})
	}
	// The echo server runs a goroutine per connection; the proxy must add
	// none (the goroutine engine adds two per connection).
	grown := runtime.NumGoroutine() - before
	if grown > n+n/10 {
		t.Fatalf("%d goroutines more for %d idle connections: the proxy holds goroutines per connection (the echo server accounts for %d)", grown, n, n)
	}
	if got := p.Active(); got != n+1 {
		t.Fatalf("Active = %d, want %d", got, n+1)
	}
	for i, c := range conns {
		roundTrip(t, c, []byte{byte(i), 'x'})
		c.Close()
	}
	testenv.WaitFor(t, "connections to close", func() bool { return p.Active() == 1 })
}

func TestLoopEngineOffUsesGoroutines(t *testing.T) {
	echo := testenv.Echo(t, "127.0.0.1:0")
	p := loopProxy(-1)
	l := start(t, p, &Route{Service: "goroutines", Backends: Addrs(echo)}, 0)
	c := dial(t, l.Addr().String())
	roundTrip(t, c, []byte("hello"))
	if got := len(p.eventLoops()); got != 0 {
		t.Fatalf("%d event loops with Loops -1", got)
	}
	// Counted by what they run, not by the total: the total also moves
	// with goroutines that are ending (the first connection's handler may
	// still be returning after its copy goroutines started).
	if got := copyGoroutines(); got != 2 {
		t.Fatalf("%d copy goroutines for one connection; want 2", got)
	}
	c2 := dial(t, l.Addr().String())
	roundTrip(t, c2, []byte("again"))
	if got := copyGoroutines(); got != 4 {
		t.Fatalf("%d copy goroutines for two connections; want 4", got)
	}
}

// copyGoroutines counts the goroutines running the goroutine engine's copy
// loops (one per direction of each connection).
func copyGoroutines() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "proxy.(*Proxy).clientToBackend(") || strings.Contains(g, "proxy.(*Proxy).backendToClient(") {
			n++
		}
	}
	return n
}

// TestLoopSlowReader: a client that stops reading while the backend sends
// makes the loop keep what the client cannot take and wait for it to drain,
// in both the buffer and the splice paths, without losing or reordering a
// byte, and without stalling the other direction.
func TestLoopSlowReader(t *testing.T) {
	for _, size := range []int{bufSize/2 + 3, 24 << 20} {
		payload := make([]byte, size)
		rand.Read(payload)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		// The backend sends the payload in small writes, then waits for the
		// client's "bye" before closing.
		testenv.Serve(t, ln, func(c net.Conn) {
			for b := payload; len(b) > 0; {
				n := min(len(b), 1500)
				if _, err := c.Write(b[:n]); err != nil {
					return
				}
				b = b[n:]
			}
			bye := make([]byte, 3)
			io.ReadFull(c, bye)
			if string(bye) == "bye" {
				c.(*net.TCPConn).CloseWrite()
			}
		})
		p := loopProxy(1)
		l := start(t, p, &Route{Service: "slow", Backends: Addrs(ln.Addr().String())}, 0)
		c := dial(t, l.Addr().String())
		c.SetDeadline(time.Now().Add(deadlineFor))
		// Read nothing until the proxy has written to the client: the
		// bytes then wait in socket buffers (and, for the big payload, in
		// the proxy, blocked on a full client socket).
		testenv.WaitFor(t, "bytes on their way to the client", func() bool {
			cs := p.Connections()
			return len(cs) == 1 && cs[0].BytesOut > 0
		})
		got := make([]byte, 0, size)
		buf := make([]byte, 4096)
		for len(got) < size {
			n, err := c.Read(buf)
			got = append(got, buf[:n]...)
			if err != nil {
				t.Fatalf("%d bytes: read after %d: %v", size, len(got), err)
			}
		}
		if _, err := c.Write([]byte("bye")); err != nil {
			t.Fatal(err)
		}
		if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
			t.Fatalf("after the payload: %d more bytes, %v; want EOF", len(rest), err)
		}
		if sha256.Sum256(got) != sha256.Sum256(payload) {
			t.Fatalf("%d bytes: contents differ", size)
		}
		c.Close()
	}
}

// TestLoopFairness: on a single loop, a bulk stream that never pauses must
// not starve a request/response connection beside it.
func TestLoopFairness(t *testing.T) {
	sink, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	testenv.Serve(t, sink, func(c net.Conn) { io.Copy(io.Discard, c) })
	echo := testenv.Echo(t, "127.0.0.1:0")
	p := loopProxy(1)
	bulk := start(t, p, &Route{Service: "bulk", Backends: Addrs(sink.Addr().String())}, 0)
	chat := start(t, p, &Route{Service: "chat", Backends: Addrs(echo)}, 0)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var sent atomic.Int64
	go func() {
		c, err := net.Dial("tcp", bulk.Addr().String())
		if err != nil {
			return
		}
		defer c.Close()
		chunk := make([]byte, 1<<20)
		for ctx.Err() == nil {
			n, err := c.Write(chunk)
			sent.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	testenv.WaitFor(t, "the bulk stream to flow", func() bool { return sent.Load() > 64<<20 })
	c := dial(t, chat.Addr().String())
	c.SetDeadline(time.Now().Add(deadlineFor))
	for i := range 200 {
		roundTrip(t, c, []byte{byte(i), 1, 2, 3})
	}
	if before := sent.Load(); before == 0 {
		t.Fatal("the bulk stream stopped")
	}
	mark := sent.Load()
	testenv.WaitFor(t, "the bulk stream to keep flowing", func() bool { return sent.Load() > mark+16<<20 })
}

// TestLoopUnixBackendFromTCPClient: a TCP client whose backend is a Unix
// socket leaves the loop for the copy goroutines, bytes intact.
func TestLoopUnixBackendFromTCPClient(t *testing.T) {
	be := unixEcho(t)
	l := start(t, loopProxy(1), &Route{Service: "tcp-to-unix", Backends: Addrs("unix://" + be)}, 0)
	for _, size := range []int{7, 8 << 20} {
		payload := make([]byte, size)
		rand.Read(payload)
		c := dial(t, l.Addr().String())
		got := exchange(t, c, payload)
		c.Close()
		if !bytes.Equal(got, payload) {
			t.Fatalf("%d bytes: echoed %d, contents differ", size, len(got))
		}
	}
}

// TestLoopDialErrors: refused and timed-out connects on the loop are
// errors the dial loop retries past, as with the net package's dialer.
func TestLoopDialErrors(t *testing.T) {
	echo := testenv.Echo(t, "127.0.0.1:0")
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close() // refused from now on
	p := loopProxy(1)
	r := &Route{Service: "retry", Backends: Addrs(deadAddr, echo), Retries: 1, Passive: true}
	l := start(t, p, r, 0)
	for i := range 4 {
		c := dial(t, l.Addr().String())
		roundTrip(t, c, []byte{byte(i)})
		c.Close()
	}
	if got := l.Stats.DialErrors.Load(); got == 0 {
		t.Fatal("no dial error counted for the refused backend")
	}
	if got := l.Stats.Failed.Load(); got != 0 {
		t.Fatalf("%d connections failed; the retry should have reached the live backend", got)
	}
}

// roundTrip writes b to c and reads the same bytes back.
func roundTrip(t *testing.T, c net.Conn, b []byte) {
	t.Helper()
	c.SetDeadline(time.Now().Add(deadlineFor))
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(b))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, b) {
		t.Fatalf("echoed %q, sent %q", got, b)
	}
}

// peerSocket finds, among this process's descriptors, the TCP socket
// connected to peer: the proxy runs in the test process, so its sockets
// are here too.
func peerSocket(t *testing.T, peer string) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		sa, err := unix.Getpeername(fd)
		if in4, ok := sa.(*unix.SockaddrInet4); err == nil && ok &&
			netip.AddrPortFrom(netip.AddrFrom4(in4.Addr), uint16(in4.Port)).String() == peer {
			return fd
		}
	}
	t.Fatalf("no socket connected to %s", peer)
	return -1
}

func sockoptFD(t *testing.T, fd, level, opt int) int {
	t.Helper()
	v, err := unix.GetsockoptInt(fd, level, opt)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestLoopSocketOptions: a connection the loop accepted has TCP_NODELAY
// (inherited from the listening socket, not set per connection), and the
// backend socket the loop dialled gets TCP keepalive once the connection
// has lasted keepAliveAfter, with the route's period; a route with
// keepalive off never gets it. Both routes share one loop, the one with
// keepalive off connected first: once the other's keepalive is on, the
// loop's sweep has passed the time the first one's would have come.
func TestLoopSocketOptions(t *testing.T) {
	p := loopProxy(1)
	echoOff, echoOn := testenv.Echo(t, "127.0.0.1:0"), testenv.Echo(t, "127.0.0.1:0")
	lOff := start(t, p, &Route{Service: "off", Backends: Addrs(echoOff), KeepAlive: -1}, 0)
	lOn := start(t, p, &Route{Service: "on", Backends: Addrs(echoOn), KeepAlive: 7 * time.Second}, 0)
	cOff := dial(t, lOff.Addr().String())
	roundTrip(t, cOff, []byte("first"))
	cOn := dial(t, lOn.Addr().String())
	roundTrip(t, cOn, []byte("second"))
	if !carriedByLoop(p) {
		t.Fatal("the connections are not on the loop")
	}
	for _, c := range []net.Conn{cOff, cOn} {
		if v := sockoptFD(t, peerSocket(t, c.LocalAddr().String()), unix.IPPROTO_TCP, unix.TCP_NODELAY); v == 0 {
			t.Errorf("accepted socket for %s: TCP_NODELAY off", c.LocalAddr())
		}
	}
	off, on := peerSocket(t, echoOff), peerSocket(t, echoOn)
	for _, fd := range []int{off, on} {
		if sockoptFD(t, fd, unix.IPPROTO_TCP, unix.TCP_NODELAY) == 0 {
			t.Errorf("dialled socket %d: TCP_NODELAY off", fd)
		}
		if sockoptFD(t, fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE) != 0 {
			t.Fatal("keepalive on a dialled socket at once; want it once the connection lasts")
		}
	}
	testenv.WaitFor(t, "keepalive on the dialled socket", func() bool { return sockoptFD(t, on, unix.SOL_SOCKET, unix.SO_KEEPALIVE) != 0 })
	if idle, intvl := sockoptFD(t, on, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE), sockoptFD(t, on, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL); idle != 7 || intvl != 7 {
		t.Errorf("TCP_KEEPIDLE %d, TCP_KEEPINTVL %d, want 7", idle, intvl)
	}
	if sockoptFD(t, off, unix.SOL_SOCKET, unix.SO_KEEPALIVE) != 0 {
		t.Error("keepalive on with the route's keepalive off")
	}
	roundTrip(t, cOff, []byte("after"))
	roundTrip(t, cOn, []byte("after"))
}

// TestLoopIPv6: the loop accepts on and dials IPv6 addresses (its socket
// addresses are built by hand), and the connection's addresses read back
// as sent.
func TestLoopIPv6(t *testing.T) {
	echo := testenv.Echo(t, "[::1]:0")
	p := loopProxy(1)
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	l := NewListener(ln, &Route{Service: "v6", Backends: Addrs(echo)}, 0)
	done := make(chan error, 1)
	go func() { done <- p.Serve(t.Context(), l) }()
	t.Cleanup(func() { l.Close(); <-done })
	c := dial(t, l.Addr().String())
	roundTrip(t, c, []byte("over IPv6"))
	if !carriedByLoop(p) {
		t.Fatal("the connection is not on the loop")
	}
	cs := p.Connections()
	if len(cs) != 1 || cs[0].Client != c.LocalAddr().String() || cs[0].Backend != echo {
		t.Fatalf("connections %+v, want one from %s to %s", cs, c.LocalAddr(), echo)
	}
}

// TestLoopServeClosedWhileStarting: a listener closed while Serve is still
// registering it with the loops (a shutdown right after start) ends Serve
// with nil, as any close does, not with the EBADF of the registration
// that lost the race.
func TestLoopServeClosedWhileStarting(t *testing.T) {
	p := loopProxy(2)
	defer p.stopLoops()
	echo := testenv.Echo(t, "127.0.0.1:0")
	for i := range 300 {
		_, stop := serveLoopback(t, p, &Route{Service: "s", Backends: Addrs(echo)})
		if i%2 == 0 {
			runtime.Gosched()
		}
		if err := stop(); err != nil {
			t.Fatalf("round %d: Serve after a close: %v", i, err)
		}
	}
}

// TestLoopHandOff: idle loops take accepted connections in turn,
// whichever loop epoll woke for them (left to epoll, one loop takes them
// all).
func TestLoopHandOff(t *testing.T) {
	echo := testenv.Echo(t, "127.0.0.1:0")
	p := loopProxy(2)
	l := start(t, p, &Route{Service: "s", Backends: Addrs(echo)}, 0)
	const n = 20
	for i := range n {
		// Each connection finds both loops waiting for events.
		testenv.WaitFor(t, "both loops to wait for events", func() bool {
			all := p.eventLoops()
			return p.Active() == 0 && all[0].polling.Load() && all[1].polling.Load()
		})
		c := dial(t, l.Addr().String())
		roundTrip(t, c, []byte{byte(i)})
		c.Close()
	}
	testenv.WaitFor(t, "connections to close", func() bool { return p.Active() == 0 })
	// Dealt by id, each loop takes half. A loop that epoll woke as well
	// (EPOLLEXCLUSIVE wakes one waiter or more) is briefly not waiting, and
	// keeps what it would have been handed: allow for a few. Left to
	// epoll, the first loop takes all 20.
	for i, lp := range p.eventLoops() {
		if got := lp.begun.Load(); got < n/4 {
			t.Errorf("loop %d began %d of %d connections, want about half", i, got, n)
		}
	}
}

// TestLoopHandOffKeepsWhenBusy: a connection is not handed to a loop that
// is busy (here: stuck in a posted function); the loop that accepted it
// serves it.
func TestLoopHandOffKeepsWhenBusy(t *testing.T) {
	echo := testenv.Echo(t, "127.0.0.1:0")
	p := loopProxy(2)
	l := start(t, p, &Route{Service: "s", Backends: Addrs(echo)}, 0)
	busy, free := p.eventLoops()[0], p.eventLoops()[1]
	release, stuck := make(chan struct{}), make(chan struct{})
	busy.post(func() {
		close(stuck)
		<-release
	})
	<-stuck
	defer close(release)
	const n = 6
	for i := range n {
		c := dial(t, l.Addr().String())
		roundTrip(t, c, []byte{byte(i)})
		c.Close()
	}
	if got := free.begun.Load(); got != n {
		t.Errorf("the free loop began %d of %d connections (the busy one %d), want all", got, n, busy.begun.Load())
	}
}

// TestLoopHandOffDuringShutdown: a connection on its way from the loop
// that accepted it to the loop it goes to, when a shutdown (or an
// upgrade's drain) begins, is served to its end like any other: every
// accepted connection gets its whole echo.
func TestLoopHandOffDuringShutdown(t *testing.T) {
	echo := testenv.Echo(t, "127.0.0.1:0")
	for round := range 20 {
		p := loopProxy(2)
		l, stopServe := serveLoopback(t, p, &Route{Service: "s", Backends: Addrs(echo)})

		var served atomic.Int64
		stop := make(chan struct{})
		clients := make(chan struct{})
		const workers = 8
		for w := range workers {
			go func() {
				defer func() { clients <- struct{}{} }()
				msg := []byte("hand-off " + strconv.Itoa(w))
				for {
					select {
					case <-stop:
						return
					default:
					}
					c, err := net.DialTimeout("tcp", l.Addr().String(), deadlineFor)
					if err != nil {
						return // the listener closed
					}
					c.SetDeadline(time.Now().Add(deadlineFor))
					_, werr := c.Write(msg)
					c.(*net.TCPConn).CloseWrite()
					got, rerr := io.ReadAll(c)
					c.Close()
					if werr == nil && rerr == nil && bytes.Equal(got, msg) {
						served.Add(1)
					}
				}
			}()
		}
		testenv.WaitFor(t, "connections to flow", func() bool { return served.Load() >= 50 })
		if err := stopServe(); err != nil {
			t.Fatalf("round %d: Serve: %v", round, err)
		}
		grace, stopGrace := context.WithTimeout(context.Background(), deadlineFor)
		forced := p.Shutdown(grace)
		stopGrace()
		close(stop)
		for range workers {
			<-clients
		}
		if forced != 0 {
			t.Fatalf("round %d: shutdown force-closed %d connections", round, forced)
		}
		if acc := l.Stats.Accepted.Load(); served.Load() != acc {
			t.Fatalf("round %d: %d connections accepted, %d served to their end", round, acc, served.Load())
		}
	}
}

// serveLoopback serves r on a fresh loopback listener; stop ends Serve and
// returns its error. Unlike start, the caller decides when it stops.
func serveLoopback(t *testing.T, p *Proxy, r *Route) (l *Listener, stop func() error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l = NewListener(ln, r, 0)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Serve(ctx, l) }()
	return l, func() error {
		cancel()
		return <-done
	}
}
