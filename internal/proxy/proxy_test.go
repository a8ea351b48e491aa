package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/attache/attache/internal/balance"
	"github.com/attache/attache/internal/demo"
	"github.com/attache/attache/internal/testenv"
	"golang.org/x/sys/unix"
)

// start serves route on a fresh loopback listener and returns the listener.
// The proxy is shut down (with no grace) when the test ends.
func start(t *testing.T, p *Proxy, r *Route, maxConns int) *Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serve(t, p, NewListener(ln, r, maxConns))
}

// serveOn serves r on ln, like start, for listeners other than TCP on
// 127.0.0.1 (IPv6, Unix sockets).
func serveOn(t *testing.T, p *Proxy, r *Route, ln net.Listener) *Listener {
	t.Helper()
	return serve(t, p, NewListener(ln, r, 0))
}

// serve runs p's accept loop on l until the test ends; then it checks that
// Serve returned no error and shuts the proxy down with no grace.
func serve(t *testing.T, p *Proxy, l *Listener) *Listener {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		expired, stop := context.WithTimeout(context.Background(), 0)
		defer stop()
		p.Shutdown(expired)
	})
	return l
}

func dial(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// engines are the two TCP engines every data-path test runs on.
var engines = []struct {
	name  string
	loops int
}{{"loops", 1}, {"goroutines", -1}}

// deadlineFor bounds a blocking test step so a bug fails the test instead of
// hanging it; it is not a performance threshold.
const deadlineFor = 20 * time.Second

func TestBytesIntactBothWays(t *testing.T) {
	echo := testenv.Echo(t, "127.0.0.1:0")
	l := start(t, &Proxy{}, &Route{Service: "echo", Backends: Addrs(echo), Retries: 3, Passive: true}, 0)

	// Sizes cover the buffer path (small), the switch to splice (a read
	// that fills the buffer) and long splice runs.
	for _, size := range []int{1, 100, bufSize - 1, bufSize, 3*bufSize + 7, 16 << 20} {
		t.Run(strconv.Itoa(size), func(t *testing.T) {
			payload := make([]byte, size)
			rand.Read(payload)
			c := dial(t, l.Addr().String())
			c.SetDeadline(time.Now().Add(deadlineFor))
			var got []byte
			var readErr error
			done := make(chan struct{})
			go func() {
				defer close(done)
				got, readErr = io.ReadAll(c)
			}()
			if _, err := c.Write(payload); err != nil {
				t.Fatal(err)
			}
			// Half-close: the echo server sees EOF, finishes echoing and
			// closes its side; the proxy must carry both.
			if err := c.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			<-done
			if readErr != nil {
				t.Fatal(readErr)
			}
			if sha256.Sum256(got) != sha256.Sum256(payload) {
				t.Fatalf("echoed %d bytes, sent %d: contents differ", len(got), len(payload))
			}
		})
	}
}

// TestHalfCloseClientFirst is the bug that made the classic image add
// `socat -t 100000000`: the client shuts its write side and must still get
// a reply the backend sends well after that.
func TestHalfCloseClientFirst(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	reply := bytes.Repeat([]byte("reply "), 100000)
	testenv.Serve(t, ln, func(c net.Conn) {
		req, _ := io.ReadAll(c) // until the client's FIN arrives through the proxy
		time.Sleep(700 * time.Millisecond)
		c.Write(append([]byte(fmt.Sprintf("got %d;", len(req))), reply...))
	})
	l := start(t, &Proxy{}, &Route{Service: "half", Backends: Addrs(ln.Addr().String()), Retries: 3, Passive: true}, 0)
	c := dial(t, l.Addr().String())
	c.SetDeadline(time.Now().Add(deadlineFor))
	c.Write([]byte("request"))
	c.CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	want := append([]byte("got 7;"), reply...)
	if !bytes.Equal(got, want) {
		t.Fatalf("got %d bytes, want %d", len(got), len(want))
	}
}

// TestHalfCloseBackendFirst: the backend finishes first and the client keeps
// sending; the client's later bytes still reach the backend.
func TestHalfCloseBackendFirst(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	received := make(chan []byte, 1)
	testenv.Serve(t, ln, func(c net.Conn) {
		c.Write([]byte("banner"))
		c.(*net.TCPConn).CloseWrite()
		b, _ := io.ReadAll(c)
		received <- b
	})
	l := start(t, &Proxy{}, &Route{Service: "half", Backends: Addrs(ln.Addr().String()), Retries: 3, Passive: true}, 0)
	c := dial(t, l.Addr().String())
	c.SetDeadline(time.Now().Add(deadlineFor))
	got, err := io.ReadAll(c) // EOF arrives after the banner
	if err != nil || string(got) != "banner" {
		t.Fatalf("read %q, %v; want banner then EOF", got, err)
	}
	if _, err := c.Write([]byte("late data")); err != nil {
		t.Fatal(err)
	}
	c.CloseWrite()
	select {
	case b := <-received:
		if string(b) != "late data" {
			t.Fatalf("backend received %q", b)
		}
	case <-time.After(deadlineFor):
		t.Fatal("backend never saw the client's data")
	}
}

func TestFailoverToNextBackend(t *testing.T) {
	for _, passive := range []bool{false, true} {
		t.Run(fmt.Sprintf("passive=%v", passive), func(t *testing.T) {
			echo := testenv.Echo(t, "127.0.0.1:0")
			dead := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t, "127.0.0.1"))
			l := start(t, &Proxy{}, &Route{Service: "fo", Backends: Addrs(dead, echo), Retries: 3, Passive: passive}, 0)
			for i := range 6 {
				c := dial(t, l.Addr().String())
				c.SetDeadline(time.Now().Add(deadlineFor))
				msg := fmt.Sprintf("hello %d", i)
				c.Write([]byte(msg))
				c.CloseWrite()
				got, err := io.ReadAll(c)
				if err != nil || string(got) != msg {
					t.Fatalf("connection %d: got %q, %v", i, got, err)
				}
			}
			n := l.Stats.DialErrors.Load()
			switch {
			case !passive && n < 3:
				t.Errorf("dial errors = %d, want at least 3 (without ejection round robin keeps landing on the dead backend)", n)
			case passive && (n < 1 || n >= 3):
				t.Errorf("dial errors = %d, want fewer than 3: the first failure ejects the dead backend", n)
			}
			if n := l.Stats.Failed.Load(); n != 0 {
				t.Errorf("failed connections = %d, want 0", n)
			}
			if n := l.Stats.Retried.Load(); n != l.Stats.DialErrors.Load() {
				t.Errorf("retried connections = %d, want one per dial error (%d)", n, l.Stats.DialErrors.Load())
			}
		})
	}
}

func TestNoBackendClosesClientAndKeepsServing(t *testing.T) {
	dead := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t, "127.0.0.1"))
	r := &Route{Service: "down", Backends: Addrs(dead), Retries: 3, Passive: true, RetryTimeout: 300 * time.Millisecond}
	l := start(t, &Proxy{}, r, 0)
	for range 3 {
		c := dial(t, l.Addr().String())
		c.SetDeadline(time.Now().Add(deadlineFor))
		n, err := c.Read(make([]byte, 1))
		if n != 0 || (err != io.EOF && !errors.Is(err, os.ErrDeadlineExceeded) && !isExpectedClose(err)) {
			t.Fatalf("read = %d, %v; want the connection closed", n, err)
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatal("client was left hanging")
		}
	}
	if got := l.Stats.Failed.Load(); got != 3 {
		t.Errorf("failed = %d, want 3", got)
	}
	// The listener still works once a backend exists.
	echo := testenv.Echo(t, "127.0.0.1:0")
	l.SetRoute(&Route{Service: "down", Backends: Addrs(echo), Retries: 3, Passive: true})
	c := dial(t, l.Addr().String())
	c.SetDeadline(time.Now().Add(deadlineFor))
	c.Write([]byte("up"))
	c.CloseWrite()
	if got, _ := io.ReadAll(c); string(got) != "up" {
		t.Fatalf("after SetRoute got %q", got)
	}
}

func TestIdleTimeoutClosesOnlyIdleConnections(t *testing.T) {
	echo := testenv.Echo(t, "127.0.0.1:0")
	const idle = 300 * time.Millisecond
	l := start(t, &Proxy{}, &Route{Service: "idle", Backends: Addrs(echo), Retries: 3, Passive: true, IdleTimeout: idle}, 0)

	busy := dial(t, l.Addr().String())
	quiet := dial(t, l.Addr().String())
	quiet.SetDeadline(time.Now().Add(deadlineFor))
	quietClosed := make(chan error, 1)
	go func() {
		_, err := quiet.Read(make([]byte, 1))
		quietClosed <- err
	}()
	// Keep the busy one talking for several idle periods.
	buf := make([]byte, 4)
	for i := range 12 {
		busy.SetDeadline(time.Now().Add(deadlineFor))
		if _, err := busy.Write([]byte("ping")); err != nil {
			t.Fatalf("busy write %d: %v", i, err)
		}
		if _, err := io.ReadFull(busy, buf); err != nil {
			t.Fatalf("busy connection was closed while active (round %d): %v", i, err)
		}
		time.Sleep(idle / 3)
	}
	select {
	case err := <-quietClosed:
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatal("idle connection was not closed")
		}
	case <-time.After(deadlineFor):
		t.Fatal("idle connection was not closed")
	}
}

func TestConnectionLimitQueuesInBacklog(t *testing.T) {
	echo := testenv.Echo(t, "127.0.0.1:0")
	l := start(t, &Proxy{}, &Route{Service: "lim", Backends: Addrs(echo), Retries: 3, Passive: true}, 1)
	first := dial(t, l.Addr().String())
	first.SetDeadline(time.Now().Add(deadlineFor))
	first.Write([]byte("a"))
	io.ReadFull(first, make([]byte, 1))

	// The kernel completes the second handshake (backlog), but attache does
	// not accept it while the first is open: nothing is echoed.
	second := dial(t, l.Addr().String())
	second.Write([]byte("b"))
	second.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, err := second.Read(make([]byte, 1)); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("second connection was served past the limit: n=%d err=%v", n, err)
	}
	if l.Stats.Limited.Load() == 0 {
		t.Error("limit not counted")
	}
	first.Close()
	second.SetReadDeadline(time.Now().Add(deadlineFor))
	b := make([]byte, 1)
	if _, err := io.ReadFull(second, b); err != nil || b[0] != 'b' {
		t.Fatalf("second connection not served after the first closed: %q %v", b, err)
	}
}

func TestShutdownDrainsThenForces(t *testing.T) {
	echo := testenv.Echo(t, "127.0.0.1:0")
	p := &Proxy{}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	l := NewListener(ln, &Route{Service: "drain", Backends: Addrs(echo), Retries: 3, Passive: true}, 0)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- p.Serve(ctx, l) }()

	a := dial(t, l.Addr().String())
	b := dial(t, l.Addr().String())
	for _, c := range []*net.TCPConn{a, b} {
		c.SetDeadline(time.Now().Add(deadlineFor))
		c.Write([]byte("x"))
		io.ReadFull(c, make([]byte, 1))
	}
	cancel()
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	if _, err := net.DialTimeout("tcp", l.Addr().String(), time.Second); err == nil {
		t.Fatal("listener still accepts after Serve returned")
	}
	grace, stop := context.WithCancel(context.Background())
	result := make(chan int, 1)
	go func() { result <- p.Shutdown(grace) }()
	// Open connections keep working during the grace period.
	a.Write([]byte("y"))
	if _, err := io.ReadFull(a, make([]byte, 1)); err != nil {
		t.Fatalf("open connection broken during drain: %v", err)
	}
	a.Close()
	select {
	case n := <-result:
		t.Fatalf("Shutdown returned (%d forced) while b was still open", n)
	case <-time.After(200 * time.Millisecond):
	}
	stop() // grace over
	if n := <-result; n != 1 {
		t.Fatalf("forced = %d, want 1", n)
	}
	if _, err := b.Read(make([]byte, 1)); err == nil {
		t.Fatal("b still open after forced shutdown")
	}
	if p.Active() != 0 {
		t.Fatalf("active = %d after shutdown", p.Active())
	}
}

// TestResolvesAtEachConnection changes the DNS answer between connections;
// attache must follow it without a restart.
func TestResolvesAtEachConnection(t *testing.T) {
	// Two echo-like servers on one port, on two loopback addresses, each
	// saying who it is.
	var port int
	var lns []net.Listener
	for attempt := 0; attempt < 20 && lns == nil; attempt++ {
		a, err := net.Listen("tcp", "127.0.0.2:0")
		if err != nil {
			t.Fatal(err)
		}
		port = a.Addr().(*net.TCPAddr).Port
		b, err := net.Listen("tcp", fmt.Sprintf("127.0.0.3:%d", port))
		if err != nil {
			a.Close()
			continue
		}
		lns = []net.Listener{a, b}
	}
	if lns == nil {
		t.Fatal("could not bind one port on 127.0.0.2 and 127.0.0.3")
	}
	for _, ln := range lns {
		name := ln.Addr().(*net.TCPAddr).IP.String()
		testenv.Serve(t, ln, func(c net.Conn) { io.WriteString(c, name) })
	}
	d := testenv.StartDNS(t)
	d.SetA("backend.test", "127.0.0.2")
	p := &Proxy{Resolver: d.Resolver()}
	l := start(t, p, &Route{Service: "dns", Backends: Addrs(fmt.Sprintf("backend.test:%d", port)), Retries: 3, Passive: true}, 0)
	who := func() string {
		c := dial(t, l.Addr().String())
		c.SetDeadline(time.Now().Add(deadlineFor))
		b, _ := io.ReadAll(c)
		return string(b)
	}
	if got := who(); got != "127.0.0.2" {
		t.Fatalf("first connection reached %q, want 127.0.0.2", got)
	}
	d.SetA("backend.test", "127.0.0.3")
	if got := who(); got != "127.0.0.3" {
		t.Fatalf("after the DNS change reached %q, want 127.0.0.3", got)
	}
}

// TestRealRedis sends commands, pipelined batches and large values to a real
// redis-server through attache.
func TestRealRedis(t *testing.T) {
	redis := testenv.Redis(t)
	l := start(t, &Proxy{}, &Route{Service: "redis", Backends: Addrs(redis), Retries: 3, Passive: true}, 0)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Go(func() {
			c, err := net.DialTimeout("tcp", l.Addr().String(), 5*time.Second)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(deadlineFor))
			r := bufio.NewReader(c)
			big := make([]byte, 200000)
			rand.Read(big)
			val := fmt.Sprintf("%x", big)
			key := fmt.Sprintf("k%d", w)
			// A pipeline of 500 commands written at once.
			var buf bytes.Buffer
			demo.WriteCommand(&buf, "SET", key, val)
			for i := range 499 {
				demo.WriteCommand(&buf, "ECHO", strconv.Itoa(i))
			}
			if _, err := c.Write(buf.Bytes()); err != nil {
				errs <- err
				return
			}
			for i := range 500 {
				got, err := demo.ReadReply(r)
				if err != nil {
					errs <- fmt.Errorf("reply %d: %w", i, err)
					return
				}
				want := "OK"
				if i > 0 {
					want = strconv.Quote(strconv.Itoa(i - 1))
				}
				if got != want {
					errs <- fmt.Errorf("reply %d = %q, want %q", i, got, want)
					return
				}
			}
			demo.WriteCommand(c, "GET", key)
			got, err := demo.ReadReply(r)
			if err != nil || got != strconv.Quote(val) {
				errs <- fmt.Errorf("GET %s: %d bytes, %v", key, len(got), err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestIdleConnectionsHoldNoPipe checks the property the copy engine exists
// for: once a bulk transfer is over, an idle connection holds its two
// sockets and nothing else — no splice pipe.
func TestIdleConnectionsHoldNoPipe(t *testing.T) {
	echo := testenv.Echo(t, "127.0.0.1:0")
	l := start(t, &Proxy{}, &Route{Service: "idle", Backends: Addrs(echo), Retries: 3, Passive: true}, 0)
	const n = 20
	before := countPipes(t) - 2*pipePool.idle()
	payload := make([]byte, 4<<20)
	var conns []*net.TCPConn
	for range n {
		c := dial(t, l.Addr().String())
		c.SetDeadline(time.Now().Add(deadlineFor))
		go c.Write(payload)
		if _, err := io.ReadFull(c, make([]byte, len(payload))); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	if pipePool.idle() == 0 {
		t.Fatal("no pipe went back to the pool: the splice path was not used")
	}
	pipesOpen := countPipes(t) - before
	// Every pipe still open is an idle one in the pool, none is held by the
	// 20 idle connections.
	if pipesOpen != 2*pipePool.idle() {
		t.Fatalf("%d pipe descriptors open, pool holds %d pipes: idle connections hold pipes",
			pipesOpen, pipePool.idle())
	}
	// The idle connections are still alive and carry bytes again.
	for i, c := range conns {
		c.Write([]byte{byte(i)})
		b := make([]byte, 1)
		if _, err := io.ReadFull(c, b); err != nil || b[0] != byte(i) {
			t.Fatalf("idle connection %d: %v", i, err)
		}
	}
}

func countPipes(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range entries {
		target, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err == nil && len(target) > 5 && target[:5] == "pipe:" {
			n++
		}
	}
	return n
}

// flakyListener returns temporary accept errors, as a process out of file
// descriptors would see (EMFILE), before handing out real connections.
type flakyListener struct {
	net.Listener
	mu    sync.Mutex
	fails int
}

func (f *flakyListener) Accept() (net.Conn, error) {
	f.mu.Lock()
	if f.fails > 0 {
		f.fails--
		f.mu.Unlock()
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", errEMFILE)}
	}
	f.mu.Unlock()
	return f.Listener.Accept()
}

func TestAcceptErrorsBackOffAndRecover(t *testing.T) {
	echo := testenv.Echo(t, "127.0.0.1:0")
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	fl := &flakyListener{Listener: ln, fails: 5}
	p := &Proxy{}
	l := NewListener(fl, &Route{Service: "emfile", Backends: Addrs(echo), Retries: 3, Passive: true}, 0)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Serve(ctx, l) }()
	c := dial(t, l.Addr().String())
	c.SetDeadline(time.Now().Add(deadlineFor))
	c.Write([]byte("ok"))
	c.CloseWrite()
	if got, _ := io.ReadAll(c); string(got) != "ok" {
		t.Fatalf("got %q after accept errors", got)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	p.Shutdown(context.Background())
}

var errEMFILE = unix.EMFILE

// TestEjectedBackendStillTriedWhenAlone: passive ejection must not turn a
// blip of the only backend into an outage as long as the ejection lasts.
// When every backend is ejected, one is tried anyway, and a dial that works
// ends its ejection.
func TestEjectedBackendStillTriedWhenAlone(t *testing.T) {
	port := testenv.FreePort(t, "127.0.0.1")
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	r := &Route{Service: "blip", Backends: Addrs(addr), Retries: 0, Passive: true, RetryTimeout: 200 * time.Millisecond}
	l := start(t, &Proxy{}, r, 0)
	c := dial(t, l.Addr().String())
	c.SetDeadline(time.Now().Add(deadlineFor))
	if n, _ := c.Read(make([]byte, 1)); n != 0 {
		t.Fatal("read data from a dead backend")
	}
	b := r.Backends.At(0)
	if b.Healthy() {
		t.Fatal("the failed dial did not eject the backend")
	}
	testenv.Echo(t, addr) // the backend comes back, still ejected
	c = dial(t, l.Addr().String())
	c.SetDeadline(time.Now().Add(deadlineFor))
	c.Write([]byte("back"))
	c.CloseWrite()
	if got, err := io.ReadAll(c); string(got) != "back" {
		t.Fatalf("got %q, %v; want the ejected but working backend to be tried", got, err)
	}
	if !b.Healthy() {
		t.Error("a working dial did not end the ejection")
	}
}

// TestLeastConnBurstSpreads: clients arriving together are spread by
// least_conn, because a connection counts against its backend from the
// moment it is picked, not once its dial succeeded.
func TestLeastConnBurstSpreads(t *testing.T) {
	const backends, clients = 3, 30
	d := testenv.StartDNS(t)
	d.SetA("burst.test", "127.0.0.1")
	addrs := make([]string, backends)
	for i := range addrs {
		_, port, _ := net.SplitHostPort(testenv.Echo(t, "127.0.0.1:0"))
		addrs[i] = "burst.test:" + port
	}
	// Every dial starts with a lookup, and concurrent lookups of one name
	// share one query: hold it until every client has been assigned a
	// backend, so the burst is a real one however fast loopback connects.
	release := make(chan struct{})
	inner := d.Resolver()
	resolver := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		<-release
		return inner.Dial(ctx, network, addr)
	}}
	r := &Route{Service: "lc", Backends: Addrs(addrs...), Policy: balance.LeastConn{}, Passive: true}
	l := start(t, &Proxy{Resolver: resolver}, r, 0)
	go func() {
		defer close(release)
		// Safety net against a hang (a regression leaves the counts at 0),
		// not a measurement.
		deadline := time.Now().Add(2 * time.Second)
		for time.Now().Before(deadline) {
			var sum int64
			for i := range backends {
				sum += r.Backends.At(i).Active()
			}
			if sum == clients {
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	var wg sync.WaitGroup
	conns := make([]*net.TCPConn, clients)
	for i := range conns {
		wg.Go(func() {
			c := dial(t, l.Addr().String())
			c.SetDeadline(time.Now().Add(deadlineFor))
			// A round trip proves the backend connection exists.
			c.Write([]byte("x"))
			if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
				t.Errorf("client %d: %v", i, err)
			}
			conns[i] = c
		})
	}
	wg.Wait()
	counts := make([]int64, backends)
	for i := range backends {
		counts[i] = r.Backends.At(i).Active()
	}
	for i, n := range counts {
		if n < clients/backends/2 {
			t.Errorf("backend %d holds %d of %d connections (all: %v); want them spread", i, n, clients, counts)
		}
	}
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
}

// TestAccessLog: one info line per closed connection on the access logger,
// with the client, service, backend, duration, bytes each way and the
// close reason, on either engine: "eof" for a connection that ends
// normally, the daemon's reason for one it closes (CloseBackend).
func TestAccessLog(t *testing.T) {
	for _, engine := range engines {
		t.Run(engine.name, func(t *testing.T) {
			echo := testenv.Echo(t, "127.0.0.1:0")
			var buf testenv.LogBuffer
			p := &Proxy{AccessLog: slog.New(slog.NewJSONHandler(&buf, nil)), Loops: engine.loops}
			l := start(t, p, NewRoute("acc", echo), 0)

			// One that ends normally, the client half-closing first.
			c := dial(t, l.Addr().String())
			c.SetDeadline(time.Now().Add(deadlineFor))
			c.Write([]byte("hello"))
			c.CloseWrite()
			if got, _ := io.ReadAll(c); string(got) != "hello" {
				t.Fatalf("echo: %q", got)
			}
			c.Close()
			line := accessLine(t, &buf, 1)
			checkAccessLine(t, line, c, echo, 5, 5, "eof")

			// One the daemon closes while it is open, carried by the
			// engine under test.
			c = dial(t, l.Addr().String())
			c.SetDeadline(time.Now().Add(deadlineFor))
			roundTrip(t, c, []byte("hi there"))
			if got := carriedByLoop(p); got != (engine.loops > 0) {
				t.Fatalf("connection carried by an event loop: %v, want %v", got, engine.loops > 0)
			}
			if n := p.CloseBackend(l, echo, "backend removed"); n != 1 {
				t.Fatalf("CloseBackend closed %d connections, want 1", n)
			}
			checkAccessLine(t, accessLine(t, &buf, 2), c, echo, 8, 8, "backend removed")
		})
	}
}

// accessLine waits for the n-th line of buf and returns it, decoded.
func accessLine(t *testing.T, buf *testenv.LogBuffer, n int) map[string]any {
	t.Helper()
	deadline := time.Now().Add(deadlineFor)
	for len(buf.Lines("connection closed")) < n {
		if time.Now().After(deadline) {
			t.Fatalf("waited for access line %d; log so far:\n%s", n, buf.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	lines := buf.Lines("")
	if len(lines) != n {
		t.Fatalf("want %d log lines, got:\n%s", n, buf.String())
	}
	var line map[string]any
	if err := json.Unmarshal([]byte(lines[n-1]), &line); err != nil {
		t.Fatalf("want a JSON line, got %q: %v", lines[n-1], err)
	}
	return line
}

func checkAccessLine(t *testing.T, line map[string]any, c *net.TCPConn, backend string, in, out int, reason string) {
	t.Helper()
	want := map[string]any{"level": "INFO", "msg": "connection closed", "service": "acc", "backend": backend,
		"client": c.LocalAddr().String(), "bytes_in": float64(in), "bytes_out": float64(out), "reason": reason}
	for k, v := range want {
		if line[k] != v {
			t.Errorf("%s = %v, want %v (line %v)", k, line[k], v, line)
		}
	}
	// slog's JSON handler writes a duration as nanoseconds.
	if d, ok := line["duration"].(float64); !ok || d <= 0 {
		t.Errorf("duration = %v, want a positive number of nanoseconds (line %v)", line["duration"], line)
	}
}

// carriedByLoop reports whether p's open connections are all carried by
// an event loop (and there is at least one).
func carriedByLoop(p *Proxy) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.conns) == 0 {
		return false
	}
	for c := range p.conns {
		c.mu.Lock()
		cs, ok := c.client.(*rawSock)
		c.mu.Unlock()
		if !ok {
			return false
		}
		cs.mu.Lock()
		owned := cs.state == rawOwned
		cs.mu.Unlock()
		if !owned {
			return false
		}
	}
	return true
}
