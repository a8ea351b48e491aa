package proxyproto

import (
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// peekSize is the first peek: enough for any version 1 header and for a
// version 2 header with AF_UNIX addresses and no TLVs. A longer version 2
// header (TLVs) is peeked again with the size it announces.
const peekSize = v2Fixed + v2UnixAddrs

// Read reads the PROXY header c starts with and consumes exactly its bytes:
// the application data after it stays unread in the socket, so the caller
// goes on using c itself (no buffered reader in between, and splice still
// works). c must be a stream socket that is a syscall.Conn (*net.TCPConn,
// *net.UnixConn).
//
// Read waits until the header is complete, the peer closes, or c's read
// deadline passes, which the caller sets: without one, a client that sends
// nothing holds the goroutine forever. It returns an error that is
// ErrNoHeader, having consumed nothing, when the first bytes are not a
// PROXY header, and when the peer sent nothing at all before the deadline
// or its shutdown (also os.ErrDeadlineExceeded or io.EOF then); another
// error names what is wrong with the header, or how the connection ended
// before the header did.
func Read(c net.Conn) (Header, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return Header{}, fmt.Errorf("proxyproto: %T is not a socket", c)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return Header{}, fmt.Errorf("proxyproto: %w", err)
	}
	p := peeker{rc: rc, buf: make([]byte, peekSize)}
	for {
		n, err := p.more()
		if err != nil {
			return Header{}, err
		}
		h, size, err := Parse(p.buf[:n])
		switch {
		case errors.Is(err, ErrIncomplete):
			if n >= v2Fixed && hasPrefix(p.buf, v2Signature) && v2Total(p.buf) > len(p.buf) {
				// Parse has checked the length against MaxV2Len.
				p.buf = append(p.buf, make([]byte, v2Total(p.buf)-len(p.buf))...)
			}
			if n == len(p.buf) { // cannot happen: the buffer fits any header Parse accepts
				return Header{}, fmt.Errorf("proxyproto: no complete header in the first %d bytes", n)
			}
			continue
		case err != nil:
			return Header{}, err
		}
		// The header's bytes are in the socket's receive queue already:
		// this read returns them at once and takes nothing after them.
		if _, err := io.ReadFull(c, p.buf[:size]); err != nil {
			return Header{}, fmt.Errorf("proxyproto: reading the %d-byte header: %w", size, err)
		}
		return h, nil
	}
}

// peeker looks at a socket's pending bytes without taking them.
type peeker struct {
	rc   syscall.RawConn
	buf  []byte
	seen int // bytes the last peek returned

	n   int
	err error
	eof bool
}

// more waits until the socket holds more bytes than the last call saw and
// returns how many it holds (up to len(buf)). A peer that shuts down
// before the header is complete is an error, and so is the deadline.
func (p *peeker) more() (int, error) {
	p.n, p.err, p.eof = 0, nil, false
	if err := p.rc.Read(p.peek); err != nil {
		var oe *net.OpError
		if errors.As(err, &oe) && oe.Err != nil {
			err = oe.Err // the caller names the connection
		}
		switch {
		case errors.Is(err, net.ErrClosed):
			return 0, fmt.Errorf("proxyproto: %w", err)
		case p.seen == 0:
			return 0, fmt.Errorf("%w: nothing received: %w", ErrNoHeader, err)
		}
		return 0, fmt.Errorf("proxyproto: waiting for the rest of the header after %d bytes: %w", p.seen, err)
	}
	switch {
	case p.err != nil:
		return 0, fmt.Errorf("proxyproto: %w", p.err)
	case p.eof && p.seen == 0:
		return 0, fmt.Errorf("%w: the peer closed its side without sending anything: %w", ErrNoHeader, io.EOF)
	case p.eof:
		return 0, fmt.Errorf("proxyproto: the peer closed the connection after %d bytes of a header: %w", p.seen, io.ErrUnexpectedEOF)
	}
	p.seen = p.n
	return p.n, nil
}

// peek is the RawConn.Read callback. The socket may already hold part of a
// header; returning false then parks until the poller reports new bytes
// (Go's poller is edge-triggered: each arrival wakes it), so a header that
// arrives in pieces costs one wake per piece, not a spin.
func (p *peeker) peek(fd uintptr) bool {
	var (
		n   int
		err error
	)
	for {
		n, _, err = unix.Recvfrom(int(fd), p.buf, unix.MSG_PEEK)
		if err != unix.EINTR {
			break
		}
	}
	switch {
	case err == unix.EAGAIN:
		return false
	case err != nil:
		p.err = err
		return true
	case n == 0:
		p.eof = true
		return true
	case n > p.seen || n == len(p.buf):
		p.n = n
		return true
	}
	// Nothing new since the last look. A peer that shut down its side
	// will send no more: its FIN does not show in a peek while bytes are
	// queued, but poll reports it.
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLRDHUP}}
	if k, _ := unix.Poll(fds, 0); k > 0 && fds[0].Revents&(unix.POLLRDHUP|unix.POLLHUP|unix.POLLERR) != 0 {
		p.eof = true
		return true
	}
	return false
}
