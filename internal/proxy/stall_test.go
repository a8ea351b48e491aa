package proxy

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/attache/attache/internal/testenv"
	"golang.org/x/sys/unix"
)

// These tests hold the client's connection open while its bytes cross the
// proxy: a FIN would make the event loop read on to the end and hide a
// direction that stopped moving. Each backend answers "ok" only once it
// has every byte, checksummed, so the client learns it over the same
// connection it keeps open.

// checksumServer accepts connections that each send size bytes and keep
// their side open; it answers "ok" once all of them came and match sum,
// "bad" if they differ.
func checksumServer(t *testing.T, size int, sum [32]byte) string {
	t.Helper()
	addr, _ := checksumServerAccepting(t, size, sum)
	return addr
}

// checksumServerAccepting is checksumServer that also tells, on the
// channel, each connection it accepted.
func checksumServerAccepting(t *testing.T, size int, sum [32]byte) (string, <-chan struct{}) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan struct{}, 16)
	testenv.Serve(t, ln, func(c net.Conn) {
		select {
		case accepted <- struct{}{}:
		default:
		}
		c.SetDeadline(time.Now().Add(deadlineFor))
		h := sha256.New()
		if _, err := io.CopyN(h, c, int64(size)); err != nil {
			return
		}
		answer := "bad"
		if bytes.Equal(h.Sum(nil), sum[:]) {
			answer = "ok!"
		}
		c.Write([]byte(answer))
		io.Copy(io.Discard, c) // until the client closes
	})
	return ln.Addr().String(), accepted
}

// awaitOK reads the backend's verdict on c, which is still open for
// writing: every byte went through without a FIN to push it.
func awaitOK(t *testing.T, c net.Conn, size int) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(deadlineFor))
	got := make([]byte, 3)
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("%d bytes sent on a connection held open: no answer from the backend: %v (the transfer stalled in the proxy)", size, err)
	}
	if string(got) != "ok!" {
		t.Fatalf("%d bytes sent: the backend's checksum differs", size)
	}
}

// drain closes the pool's idle pipes, so that the next get makes one.
func (pp *pipes) drain() {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	for _, p := range pp.free {
		unix.Close(p.r)
		unix.Close(p.w)
	}
	pp.free = nil
}

// withPipeSize makes the splice pipes made from now on ask for size
// bytes, as a user whose pipes the kernel keeps small gets, until the test
// ends. Pooled pipes of the old size are closed first.
func withPipeSize(t *testing.T, size int) {
	t.Helper()
	pipePool.drain()
	pipePool.mu.Lock()
	old := pipePool.size
	pipePool.size = size
	pipePool.mu.Unlock()
	t.Cleanup(func() {
		pipePool.drain()
		pipePool.mu.Lock()
		pipePool.size = old
		pipePool.mu.Unlock()
	})
}

// TestLoopSpliceSmallPipeHeldOpen: with pipes of one page, every splice
// is short though the socket holds more. A direction in splice mode (the
// first 32 KiB read fills the buffer) must read on until EAGAIN, not take
// a short splice to mean the socket is empty: the last bytes bring no new
// edge once the sender is done.
func TestLoopSpliceSmallPipeHeldOpen(t *testing.T) {
	withPipeSize(t, os.Getpagesize())
	const size = 8 << 20
	payload := make([]byte, size)
	rand.Read(payload)
	backend := checksumServer(t, size, sha256.Sum256(payload))
	p := loopProxy(1)
	l := start(t, p, &Route{Service: "small-pipe", Backends: Addrs(backend)}, 0)
	c := dial(t, l.Addr().String())
	c.SetWriteDeadline(time.Now().Add(deadlineFor))
	if _, err := c.Write(payload); err != nil {
		t.Fatalf("write: %v", err)
	}
	awaitOK(t, c, size)
	// The loop gives the pipe back just after its last splice out, which
	// may come after the backend read those bytes and answered: wait for
	// it. A direction that never spliced gives none back, and the wait
	// fails: the test would prove nothing.
	testenv.WaitFor(t, "a splice pipe back in the pool after the bulk transfer", func() bool { return pipePool.idle() > 0 })
}

// TestLoopSendfileSenderHeldOpen: a client that sends a file with
// sendfile(2), as nginx or Go's io.Copy from a file do, queues page-sized
// fragments that fill a pipe's slots long before its bytes; the proxy must
// still deliver the whole file while the client keeps the connection open.
func TestLoopSendfileSenderHeldOpen(t *testing.T) {
	const size = 24 << 20
	payload := make([]byte, size)
	rand.Read(payload)
	path := filepath.Join(t.TempDir(), "payload")
	if err := os.WriteFile(path, payload, 0o600); err != nil {
		t.Fatal(err)
	}
	backend := checksumServer(t, size, sha256.Sum256(payload))
	p := loopProxy(1)
	l := start(t, p, &Route{Service: "sendfile", Backends: Addrs(backend)}, 0)
	c := dial(t, l.Addr().String())
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c.SetWriteDeadline(time.Now().Add(deadlineFor))
	// *net.TCPConn.ReadFrom an *os.File is sendfile(2).
	if n, err := c.ReadFrom(f); err != nil || n != size {
		t.Fatalf("sendfile: %d bytes, %v", n, err)
	}
	awaitOK(t, c, size)
}

// TestLoopUrgentDataHeldOpen: a read(2) stops short at TCP's urgent mark
// with more bytes behind it, so a short read proves the socket empty only
// where no urgent data came (the loop learns that from EPOLLPRI). The loop
// is held busy while the client sends bytes, an urgent byte and more
// bytes, so that all of them wait in the socket for one read. The urgent
// byte itself is not part of the stream (no SO_OOBINLINE), as with any
// reader of the socket.
func TestLoopUrgentDataHeldOpen(t *testing.T) {
	before, after := bytes.Repeat([]byte("a"), 1000), bytes.Repeat([]byte("b"), 1000)
	want := append(append([]byte{}, before...), after...)
	backend := checksumServer(t, len(want), sha256.Sum256(want))
	p := loopProxy(1)
	l := start(t, p, &Route{Service: "urgent", Backends: Addrs(backend)}, 0)
	c := dial(t, l.Addr().String())
	// The connection is on the loop once the proxy has dialled the
	// backend and counts it.
	testenv.WaitFor(t, "the connection to start", func() bool {
		cs := p.Connections()
		return len(cs) == 1 && cs[0].Backend != ""
	})
	p.syncLoops()
	release := make(chan struct{})
	busy := make(chan struct{})
	p.eventLoops()[0].post(func() { close(busy); <-release })
	<-busy
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var sendErr error
	raw.Write(func(fd uintptr) bool {
		if sendErr = unix.Send(int(fd), before, 0); sendErr == nil {
			if sendErr = unix.Send(int(fd), []byte("U"), unix.MSG_OOB); sendErr == nil {
				sendErr = unix.Send(int(fd), after, 0)
			}
		}
		return true
	})
	if sendErr != nil {
		close(release)
		t.Fatal(sendErr)
	}
	// Every byte is in the proxy's socket before the loop reads it.
	proxySide := peerSocket(t, c.LocalAddr().String())
	testenv.WaitFor(t, "the bytes to reach the proxy's socket", func() bool {
		// SIOCINQ counts only up to the urgent mark: ask TCP_INFO.
		info, err := unix.GetsockoptTCPInfo(proxySide, unix.IPPROTO_TCP, unix.TCP_INFO)
		return err == nil && info.Bytes_received >= uint64(len(want)+1)
	})
	close(release)
	awaitOK(t, c, len(want))
}

// TestLoopHalfCloseBulkReplyNoPanic (issue 19 item 1): a client sends a
// request and shuts its write side; the backend reads to EOF, answers
// with more than the socket buffers hold, and closes. Moving the last
// reply bytes out can finish the pair in the middle of handling an event;
// the loop must not touch the pair afterwards. Any recovered panic is a
// failure: a recover is not what keeps the loop alive in normal traffic.
func TestLoopHalfCloseBulkReplyNoPanic(t *testing.T) {
	const replySize = 8 << 20
	reply := make([]byte, replySize)
	rand.Read(reply)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	testenv.Serve(t, ln, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(deadlineFor))
		if _, err := io.Copy(io.Discard, c); err != nil {
			return
		}
		c.Write(reply)
	})
	var logs testenv.LogBuffer
	p := &Proxy{Loops: 1, Logger: slog.New(slog.NewTextHandler(&logs, nil))}
	l := start(t, p, &Route{Service: "bulk-reply", Backends: Addrs(ln.Addr().String())}, 0)
	want := sha256.Sum256(reply)
	for i := range 20 {
		c := dial(t, l.Addr().String())
		c.SetDeadline(time.Now().Add(deadlineFor))
		if _, err := c.Write([]byte("GET /big\r\n")); err != nil {
			t.Fatal(err)
		}
		c.CloseWrite()
		h := sha256.New()
		n, err := io.Copy(h, c)
		if err != nil || n != replySize || !bytes.Equal(h.Sum(nil), want[:]) {
			t.Fatalf("connection %d: %d of %d reply bytes, %v (or they differ)", i, n, replySize, err)
		}
		c.Close()
	}
	testenv.WaitFor(t, "every connection to finish", func() bool { return len(p.Connections()) == 0 })
	if panics := logs.Lines("panic"); len(panics) > 0 {
		t.Fatalf("the proxy recovered from a panic:\n%s", strings.Join(panics, ""))
	}
}
