package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/attache/attache/internal/testenv"
)

// A Close from another goroutine (an abort: idle timeout, close_on_remove,
// a forced shutdown) while a handler's Write waits on a backend that does
// not read must not wait for that Write, which would hold it for the
// write's whole stall timeout: it cuts the stream (a reset, since the
// bytes will not all go), the Write returns an error, and the backend
// reads a reset, never a clean end of a truncated stream. Before Write
// stopped holding its mutex across poll(2), Close waited for the write to
// time out and the backend read an EOF.
func TestRawSockCloseDuringBlockedWrite(t *testing.T) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var err error
		// A small receive window, set before the handshake, so that a
		// peer that does not read stops the writer quickly.
		_ = c.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 4096) })
		return err
	}}
	cut := make(chan struct{})
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// The backend never reads: it reports what it read once the stream
	// ends.
	peerRead := make(chan error, 1)
	testenv.Serve(t, ln, func(c net.Conn) {
		<-cut
		_, err := io.Copy(io.Discard, c)
		peerRead <- err
	})

	lp, err := newLoop(func(string, ...any) {})
	if err != nil {
		t.Fatal(err)
	}
	defer lp.stop()
	rs, err := lp.connect(context.Background(), ln.Addr().(*net.TCPAddr).AddrPort(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.SetsockoptInt(rs.fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4096); err != nil {
		t.Fatal(err)
	}
	wrote := make(chan error, 1)
	go func() {
		_, err := rs.Write(make([]byte, 8<<20)) // far more than the buffers hold
		wrote <- err
	}()
	testenv.WaitFor(t, "the Write under way", func() bool {
		select {
		case err := <-wrote:
			t.Fatalf("Write returned before the backend read anything: %v", err)
		default:
		}
		rs.mu.Lock()
		defer rs.mu.Unlock()
		return rs.writing
	})
	if err := rs.Close(); err != nil {
		t.Fatalf("Close during a blocked Write: %v", err)
	}
	if err := <-wrote; err == nil {
		t.Fatal("Write of a stream cut by Close reported no error")
	}
	close(cut)
	if err := <-peerRead; !errors.Is(err, unix.ECONNRESET) {
		t.Fatalf("backend read the stream's end as %v; want a reset (ECONNRESET)", err)
	}
	rs.mu.Lock()
	left := rs.closeLeft
	rs.mu.Unlock()
	if !left {
		t.Fatal("Close did not leave the descriptor to the Write under way")
	}
	if _, err := rs.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write after Close: %v, want net.ErrClosed", err)
	}
}
