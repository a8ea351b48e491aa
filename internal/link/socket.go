package link

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// A per-connection link stream (attache/1) ends cleanly with TLS's
// close_notify, which the sending side's CloseWrite and Close send. A
// socket EOF without one means the stream was cut, and the usual cause is
// a reset the other ambassador sent because its own client reset: TCP
// hands a reset's error to only one system call, and when that call is the
// other direction's write, this direction's next read sees a plain EOF.
// crypto/tls reads an EOF at a record boundary as io.EOF either way, so
// the socket under it notes which it was, and the stream reports the cut
// as the reset it stands for. A proxy that took it for an EOF would pass a
// FIN on: a cut stream delivered as a complete one.

// linkSocket is the TCP socket under a link's TLS connection, noting whether
// a read reached its EOF. It can also be corked: crypto/tls writes every
// record (16 KiB of plaintext at most) with a system call of its own, and
// a multiplexed session's flusher corks the socket around each batch so
// that the batch's records leave a segment (corkSegment) at a time.
type linkSocket struct {
	*net.TCPConn
	eof      atomic.Bool // a read returned the socket's EOF
	readShut atomic.Bool // CloseRead was called: its EOF is ours, not the peer's
	// nonblock: an event loop reads the socket (readsOnLoop), so a Read
	// never waits; rc reaches the descriptor for it.
	nonblock atomic.Bool
	rc       syscall.RawConn

	wmu    sync.Mutex // orders writes: a corked batch, then what follows
	corked bool
	held   *[]byte // records written while corked (from heldPool)
}

// wrapSocket wraps raw for the TLS connection that runs over it, when it is
// a TCP socket (anything else is used as it is).
func wrapSocket(raw net.Conn) net.Conn {
	if tc, ok := raw.(*net.TCPConn); ok {
		return &linkSocket{TCPConn: tc}
	}
	return raw
}

func (c *linkSocket) Read(b []byte) (int, error) {
	var n int
	var err error
	if c.nonblock.Load() {
		n, err = c.readNow(b)
	} else {
		n, err = c.TCPConn.Read(b)
	}
	if err == io.EOF && !c.readShut.Load() {
		c.eof.Store(true)
	}
	return n, err
}

// errWouldBlock is what a Read that never waits returns when the socket
// has nothing: EAGAIN, as a temporary net.Error. crypto/tls returns a
// temporary error as it is and keeps a record read in part for the next
// Read, where any other error would fail the connection for good.
var errWouldBlock error = wouldBlock{}

type wouldBlock struct{}

func (wouldBlock) Error() string        { return "link socket: read would block" }
func (wouldBlock) Is(target error) bool { return target == syscall.EAGAIN }
func (wouldBlock) Timeout() bool        { return false }
func (wouldBlock) Temporary() bool      { return true }

// readNow reads what the socket holds, without waiting.
func (c *linkSocket) readNow(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	var n int
	var errno error
	err := c.rc.Read(func(fd uintptr) bool {
		for {
			n, errno = unix.Read(int(fd), b)
			if errno != unix.EINTR {
				return true // never wait in Go's poller: the loop waits
			}
		}
	})
	switch {
	case err != nil:
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
	case errno == unix.EAGAIN:
		return 0, errWouldBlock
	case errno != nil:
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("read", errno)}
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// readsOnLoop switches the socket to reads that never wait and returns
// its descriptor, for an event loop to watch.
func (c *linkSocket) readsOnLoop() (int, error) {
	rc, err := c.TCPConn.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	if err := rc.Control(func(d uintptr) { fd = int(d) }); err != nil {
		return -1, err
	}
	c.rc = rc
	c.nonblock.Store(true)
	return fd, nil
}

// readsOnGoroutine switches the socket back to reads that wait.
func (c *linkSocket) readsOnGoroutine() { c.nonblock.Store(false) }

// Write writes b, or holds it while the socket is corked.
func (c *linkSocket) Write(b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.corked {
		if c.held == nil {
			c.held = heldPool.Get().(*[]byte)
		}
		*c.held = append(*c.held, b...)
		if len(*c.held) >= corkSegment {
			// What is held goes out now: the peer decrypts these
			// records while this side seals the next.
			_, err := c.TCPConn.Write(*c.held)
			*c.held = (*c.held)[:0]
			if err != nil {
				return 0, err
			}
		}
		return len(b), nil
	}
	return c.TCPConn.Write(b)
}

// corkSegment is the most a corked socket holds before it writes: four
// records, one loopback segment. Holding a whole batch (up to a megabyte)
// until uncork left the peer idle while this side encrypted it, then this
// side idle while the peer decrypted; writing every 64 KiB overlaps the
// two (iperf3 across a link, one stream: 4.9 Gbit/s in 64 KiB segments of
// 1 MiB batches against 4.5 with 256 KiB batches held whole; bench/README).
const corkSegment = 64 << 10

// cork holds the writes that follow until uncork.
func (c *linkSocket) cork() {
	c.wmu.Lock()
	c.corked = true
	c.wmu.Unlock()
}

// uncork writes what was held, in one write, and lets later writes
// through.
func (c *linkSocket) uncork() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.corked = false
	if c.held == nil {
		return nil
	}
	_, err := c.TCPConn.Write(*c.held)
	if cap(*c.held) <= maxHeld {
		*c.held = (*c.held)[:0]
		heldPool.Put(c.held)
	}
	c.held = nil
	return err
}

// heldPool lends the buffers corked writes gather in: a socket holds one
// only between cork and uncork, so an idle link connection holds none.
var heldPool = sync.Pool{New: func() any { b := make([]byte, 0, maxHeld); return &b }}

// maxHeld is the most a corked socket holds: just under a segment, then a
// record and its TLS overhead. A larger buffer is not pooled again.
const maxHeld = corkSegment + maxRecord + 512

// CloseRead shuts the read side; the EOF that follows is not a cut.
func (c *linkSocket) CloseRead() error {
	c.readShut.Store(true)
	return c.TCPConn.CloseRead()
}

// tlsStream is a per-connection link stream: the TLS connection, whose
// Read turns an EOF that came without close_notify into ECONNRESET.
type tlsStream struct {
	*tls.Conn
	raw *linkSocket // nil when the socket is not TCP
}

// newTLSStream makes tc, built over wrapSocket's result, a stream.
func newTLSStream(tc *tls.Conn) *tlsStream {
	raw, _ := tc.NetConn().(*linkSocket)
	return &tlsStream{Conn: tc, raw: raw}
}

// errCut is the error of a stream whose socket ended without close_notify.
var errCut = errors.New("link connection ended without TLS close_notify")

func (s *tlsStream) Read(b []byte) (int, error) {
	n, err := s.Conn.Read(b)
	if err == io.EOF && s.raw != nil && s.raw.eof.Load() {
		err = fmt.Errorf("link stream: %w: %w", errCut, syscall.ECONNRESET)
	}
	return n, err
}
