package proxy

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/attache/attache/internal/balance"
	"github.com/attache/attache/internal/proxyproto"
	"github.com/attache/attache/internal/testenv"
)

// headerEcho is a backend that wants a PROXY header: it answers with one
// line saying what the header carried, then echoes the rest of the stream,
// which proves no byte after the header was lost or reordered.
func headerEcho(t *testing.T, network, addr string) string {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Serve(t, ln, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(deadlineFor))
		h, err := proxyproto.Read(c)
		if err != nil {
			fmt.Fprintf(c, "error %v\n", err)
			return
		}
		fmt.Fprintf(c, "v%d src=%v dst=%v local=%v\n", h.Version, h.Source, h.Destination, h.Local)
		io.Copy(c, c)
		c.(interface{ CloseWrite() error }).CloseWrite()
	})
	if network == "unix" {
		return "unix://" + addr
	}
	return ln.Addr().String()
}

// exchange sends msg, half-closes and returns the whole reply.
func exchange(t *testing.T, c net.Conn, msg []byte) []byte {
	t.Helper()
	c.SetDeadline(time.Now().Add(deadlineFor))
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(msg)
		if err == nil {
			err = c.(interface{ CloseWrite() error }).CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading the reply: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("sending: %v", err)
	}
	return got
}

// TestSendProxy: the backend receives a header naming the client as the
// listener saw it, then the client's bytes, intact.
func TestSendProxy(t *testing.T) {
	for _, v := range []int{1, 2} {
		t.Run(fmt.Sprintf("v%d", v), func(t *testing.T) {
			be := headerEcho(t, "tcp", "127.0.0.1:0")
			l := start(t, &Proxy{}, &Route{Service: "pp", Backends: Addrs(be), SendProxy: v}, 0)
			c := dial(t, l.Addr().String())
			payload := make([]byte, 3*bufSize+11) // through the buffer and splice paths
			rand.Read(payload)
			got := exchange(t, c, payload)
			want := fmt.Sprintf("v%d src=%s dst=%s local=false\n", v, c.LocalAddr(), c.RemoteAddr())
			if !strings.HasPrefix(string(got), want) {
				t.Fatalf("backend saw %.100q, want %q", got, want)
			}
			if rest := got[len(want):]; sha256.Sum256(rest) != sha256.Sum256(payload) {
				t.Fatalf("echoed %d bytes after the header line, sent %d: contents differ", len(rest), len(payload))
			}
		})
	}
}

// TestSendProxyPerBackend: SendProxyFor overrides the route's version for
// one backend, including turning it off.
func TestSendProxyPerBackend(t *testing.T) {
	withHeader := headerEcho(t, "tcp", "127.0.0.1:0")
	plain := testenv.Echo(t, "127.0.0.1:0")
	r := &Route{Service: "pp", Backends: Addrs(withHeader), SendProxy: 0, SendProxyFor: map[string]int{withHeader: 2}}
	l := start(t, &Proxy{}, r, 0)
	if got := exchange(t, dial(t, l.Addr().String()), []byte("x")); !strings.HasPrefix(string(got), "v2 src=127.0.0.1:") {
		t.Fatalf("override to v2: backend saw %q", got)
	}
	r2 := &Route{Service: "pp", Backends: Addrs(plain), SendProxy: 1, SendProxyFor: map[string]int{plain: 0}}
	l2 := start(t, &Proxy{}, r2, 0)
	if got := exchange(t, dial(t, l2.Addr().String()), []byte("plain")); string(got) != "plain" {
		t.Fatalf("override to none: backend saw %q", got)
	}
}

// TestAcceptProxy: a header from a trusted peer becomes the client address:
// in the access log, and in the header sent onward.
func TestAcceptProxy(t *testing.T) {
	for _, v := range []int{1, 2} {
		t.Run(fmt.Sprintf("v%d", v), func(t *testing.T) {
			be := headerEcho(t, "tcp", "127.0.0.1:0")
			var logs testenv.LogBuffer
			p := &Proxy{AccessLog: slog.New(slog.NewTextHandler(&logs, nil))}
			ap := &AcceptProxy{Trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, Required: true}
			l := start(t, p, &Route{Service: "pp", Backends: Addrs(be), AcceptProxy: ap, SendProxy: 2}, 0)
			c := dial(t, l.Addr().String())
			in := proxyproto.Header{Version: v, Source: netip.MustParseAddrPort("203.0.113.7:4444"),
				Destination: netip.MustParseAddrPort("198.51.100.2:6379")}
			got := exchange(t, c, append(in.Append(nil), "after the header"...))
			want := "v2 src=203.0.113.7:4444 dst=198.51.100.2:6379 local=false\nafter the header"
			if string(got) != want {
				t.Fatalf("backend saw %q, want %q", got, want)
			}
			line := waitLine(t, &logs, "connection closed")
			if !strings.Contains(line, "client=203.0.113.7:4444") || !strings.Contains(line, "via="+c.LocalAddr().String()) {
				t.Fatalf("access log line %q: want client=203.0.113.7:4444 via=%s", line, c.LocalAddr())
			}
			if n := l.Stats.ProxyRejected.Load(); n != 0 {
				t.Fatalf("ProxyRejected = %d", n)
			}
		})
	}
}

// TestAcceptProxyLocal: a LOCAL or UNKNOWN header (a balancer's health
// check) is accepted and the socket's own address stands.
func TestAcceptProxyLocal(t *testing.T) {
	be := headerEcho(t, "tcp", "127.0.0.1:0")
	ap := &AcceptProxy{Trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, Required: true}
	l := start(t, &Proxy{}, &Route{Service: "pp", Backends: Addrs(be), AcceptProxy: ap, SendProxy: 1}, 0)
	for _, hdr := range [][]byte{proxyproto.Header{Version: 2, Local: true}.Append(nil), []byte("PROXY UNKNOWN\r\n")} {
		c := dial(t, l.Addr().String())
		got := exchange(t, c, hdr)
		if want := fmt.Sprintf("v1 src=%s dst=%s local=false\n", c.LocalAddr(), c.RemoteAddr()); string(got) != want {
			t.Fatalf("after %q: backend saw %q, want %q", hdr, got, want)
		}
	}
}

// TestAcceptProxyRejects: on a listener that requires a header, a
// malformed one, a missing one, silence and an untrusted peer each close
// the connection before any backend is dialled, with a warning naming the
// client, and are counted.
func TestAcceptProxyRejects(t *testing.T) {
	tests := []struct {
		name    string
		trusted string
		send    string
		log     string
	}{
		{"malformed", "127.0.0.0/8", "PROXY TCP4 1.2.3.4 5.6.7.8 1 70000\r\nPING\r\n", `malformed PROXY protocol header; closing the connection`},
		{"missing", "127.0.0.0/8", "PING\r\n", `missing PROXY protocol header`},
		{"silent", "127.0.0.0/8", "", `missing PROXY protocol header`},
		{"untrusted", "10.0.0.0/8", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nPING\r\n", `the peer is not in accept_proxy's trusted ranges`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs testenv.LogBuffer
			dialled := make(chan struct{}, 1)
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			testenv.Serve(t, ln, func(net.Conn) { dialled <- struct{}{} })
			ap := &AcceptProxy{Trusted: []netip.Prefix{netip.MustParsePrefix(tt.trusted)}, Required: true, Timeout: 300 * time.Millisecond}
			p := &Proxy{Logger: slog.New(slog.NewTextHandler(&logs, nil))}
			l := start(t, p, &Route{Service: "pp", Backends: Addrs(ln.Addr().String()), AcceptProxy: ap}, 0)
			c := dial(t, l.Addr().String())
			c.SetDeadline(time.Now().Add(deadlineFor))
			if tt.send != "" {
				c.Write([]byte(tt.send))
			}
			// Closed by attache, with nothing sent back.
			if b, err := io.ReadAll(c); err != nil && !errors.Is(err, syscall.ECONNRESET) || len(b) > 0 {
				t.Fatalf("read %q, %v; want the connection closed", b, err)
			}
			line := waitLine(t, &logs, tt.log)
			if !strings.Contains(line, "level=WARN") || !strings.Contains(line, "client="+c.LocalAddr().String()) {
				t.Fatalf("log line %q: want a warning naming client %s", line, c.LocalAddr())
			}
			if n := l.Stats.ProxyRejected.Load(); n != 1 {
				t.Fatalf("ProxyRejected = %d, want 1", n)
			}
			select {
			case <-dialled:
				t.Fatal("the backend was dialled for a rejected connection")
			default:
			}
		})
	}
}

// TestAcceptProxyOptional: without required, a trusted peer may send a
// header or not, and an untrusted peer's header is not believed: it
// reaches the backend as data.
func TestAcceptProxyOptional(t *testing.T) {
	echo := testenv.Echo(t, "127.0.0.1:0")
	hdr := "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"
	for _, tt := range []struct {
		name, trusted, send, want string
	}{
		{"trusted with a header", "127.0.0.0/8", hdr + "data", "data"},
		{"trusted without", "127.0.0.0/8", "data", "data"},
		{"untrusted", "192.0.2.0/24", hdr + "data", hdr + "data"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ap := &AcceptProxy{Trusted: []netip.Prefix{netip.MustParsePrefix(tt.trusted)}}
			l := start(t, &Proxy{}, &Route{Service: "pp", Backends: Addrs(echo), AcceptProxy: ap}, 0)
			if got := exchange(t, dial(t, l.Addr().String()), []byte(tt.send)); string(got) != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
	// A trusted client that waits for the server to speak first is served
	// once the header timeout passes.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	testenv.Serve(t, ln, func(c net.Conn) { io.WriteString(c, "220 banner\r\n") })
	ap := &AcceptProxy{Trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, Timeout: 100 * time.Millisecond}
	l := start(t, &Proxy{}, &Route{Service: "smtp", Backends: Addrs(ln.Addr().String()), AcceptProxy: ap}, 0)
	c := dial(t, l.Addr().String())
	c.SetDeadline(time.Now().Add(deadlineFor))
	if line, err := bufio.NewReader(c).ReadString('\n'); err != nil || line != "220 banner\r\n" {
		t.Fatalf("server-first banner: %q, %v", line, err)
	}
}

func waitLine(t *testing.T, logs *testenv.LogBuffer, sub string) string {
	t.Helper()
	deadline := time.Now().Add(deadlineFor)
	for {
		if lines := logs.Lines(sub); len(lines) > 0 {
			return lines[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log line with %q in:\n%s", sub, logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestUnixSockets: a Unix socket listener in front of a Unix socket
// backend, bulk bytes both ways and half-close, then the listener's file is
// gone once it closed.
func TestUnixSockets(t *testing.T) {
	dir := t.TempDir()
	be := unixEcho(t)
	front := filepath.Join(dir, "front.sock")
	ln, err := ListenUnix(context.Background(), front)
	if err != nil {
		t.Fatal(err)
	}
	var logs testenv.LogBuffer
	p := &Proxy{AccessLog: slog.New(slog.NewTextHandler(&logs, nil))}
	l := serveOn(t, p, &Route{Service: "unix", Backends: Addrs("unix://" + be), Retries: 1}, ln)
	for _, size := range []int{5, 16 << 20} {
		c, err := net.Dial("unix", front)
		if err != nil {
			t.Fatal(err)
		}
		payload := make([]byte, size)
		rand.Read(payload)
		got := exchange(t, c, payload)
		c.Close()
		if sha256.Sum256(got) != sha256.Sum256(payload) {
			t.Fatalf("%d bytes: echoed %d bytes, contents differ", size, len(got))
		}
	}
	line := waitLine(t, &logs, "connection closed")
	if !strings.Contains(line, "client=unix://"+front) || !strings.Contains(line, "backend=unix://"+be) {
		t.Fatalf("access log %q: want the client and backend sockets named", line)
	}
	l.Close()
	if _, err := os.Lstat(front); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket file after close: %v, want it removed", err)
	}
}

// unixEcho serves an echo on a Unix socket (plain copies, so that the
// proxy's own splice is what gets tested) and returns its path.
func unixEcho(t *testing.T) string {
	t.Helper()
	be := filepath.Join(t.TempDir(), "backend.sock")
	bln, err := net.Listen("unix", be)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Serve(t, bln, func(c net.Conn) {
		io.Copy(struct{ io.Writer }{c}, struct{ io.Reader }{c})
		c.(*net.UnixConn).CloseWrite()
	})
	return be
}

// TestUnixSocketPeerSendsUnknown: a client on a Unix socket has no IP, so
// the header sent onward says UNKNOWN (v1) or UNSPEC (v2).
func TestUnixSocketPeerSendsUnknown(t *testing.T) {
	be := headerEcho(t, "tcp", "127.0.0.1:0")
	front := filepath.Join(t.TempDir(), "front.sock")
	ln, err := ListenUnix(context.Background(), front)
	if err != nil {
		t.Fatal(err)
	}
	serveOn(t, &Proxy{}, &Route{Service: "unix", Backends: Addrs(be), SendProxy: 2}, ln)
	c, err := net.Dial("unix", front)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := exchange(t, c, []byte("x")); string(got) != "v2 src=invalid AddrPort dst=invalid AddrPort local=false\nx" {
		t.Fatalf("backend saw %q", got)
	}
}

func TestListenUnixStaleFile(t *testing.T) {
	dir := t.TempDir()

	// A socket left behind by a process that died: removed, then bound.
	stale := filepath.Join(dir, "stale.sock")
	old, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	old.SetUnlinkOnClose(false)
	old.Close()
	ln, err := ListenUnix(context.Background(), stale)
	if err != nil {
		t.Fatalf("over a stale socket: %v", err)
	}
	ln.Close()

	// A live socket is left alone.
	live := filepath.Join(dir, "live.sock")
	other, err := net.Listen("unix", live)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if ln, err := ListenUnix(context.Background(), live); !errors.Is(err, syscall.EADDRINUSE) {
		if ln != nil {
			ln.Close()
		}
		t.Fatalf("over a live socket: %v, want EADDRINUSE", err)
	}
	if c, err := net.Dial("unix", live); err != nil {
		t.Fatalf("the live socket no longer answers: %v", err)
	} else {
		c.Close()
	}

	// Any other file is never removed.
	file := filepath.Join(dir, "data")
	os.WriteFile(file, []byte("keep"), 0o600)
	if _, err := ListenUnix(context.Background(), file); err == nil || !strings.Contains(err.Error(), "is not a socket") {
		t.Fatalf("over a regular file: %v", err)
	}
	if b, _ := os.ReadFile(file); string(b) != "keep" {
		t.Fatal("the regular file was touched")
	}
}

// TestIPv6 listens on [::1] and forwards to [::1], sending the client's
// IPv6 address in a PROXY header.
func TestIPv6(t *testing.T) {
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	be := headerEcho(t, "tcp6", "[::1]:0")
	l := serveOn(t, &Proxy{}, &Route{Service: "v6", Backends: Addrs(be), SendProxy: 1}, ln)
	c, err := net.Dial("tcp6", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got := exchange(t, c, []byte("over IPv6"))
	if want := fmt.Sprintf("v1 src=%s dst=%s local=false\nover IPv6", c.LocalAddr(), c.RemoteAddr()); string(got) != want {
		t.Fatalf("backend saw %q, want %q", got, want)
	}
}

// TestAcceptProxySourceHash: source_hash balances on the address the
// header gives, not on the load balancer's: one client sticks to one
// backend whichever connection from the balancer carries it, and clients
// spread over the backends.
func TestAcceptProxySourceHash(t *testing.T) {
	var addrs []string
	for i := range 4 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		testenv.Serve(t, ln, func(c net.Conn) { fmt.Fprintf(c, "%d", i) })
		addrs = append(addrs, ln.Addr().String())
	}
	ap := &AcceptProxy{Trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, Required: true}
	l := start(t, &Proxy{}, &Route{Service: "sh", Backends: Addrs(addrs...), Policy: &balance.SourceHash{}, AcceptProxy: ap}, 0)
	backendOf := func(client string) string {
		c := dial(t, l.Addr().String())
		h := proxyproto.Header{Version: 2, Source: netip.MustParseAddrPort(client), Destination: netip.MustParseAddrPort("10.0.0.1:6379")}
		return string(exchange(t, c, h.Append(nil)))
	}
	seen := map[string]bool{}
	for i := range 32 {
		client := fmt.Sprintf("198.51.100.%d:1000", i)
		first := backendOf(client)
		for range 3 {
			if got := backendOf(client); got != first {
				t.Fatalf("client %s went to backend %s, then %s", client, first, got)
			}
		}
		seen[first] = true
	}
	if len(seen) < 2 {
		t.Fatalf("32 clients all went to backends %v: the balancer's address was hashed, not the clients'", seen)
	}
}
