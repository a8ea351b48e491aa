package link

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"syscall"
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

// eofConn is the TCP socket under a link's TLS connection, noting whether
// a read reached its EOF.
type eofConn struct {
	*net.TCPConn
	eof      atomic.Bool // a read returned the socket's EOF
	readShut atomic.Bool // CloseRead was called: its EOF is ours, not the peer's
}

// watchEOF wraps raw for the TLS connection that runs over it, when it is
// a TCP socket (anything else is used as it is).
func watchEOF(raw net.Conn) net.Conn {
	if tc, ok := raw.(*net.TCPConn); ok {
		return &eofConn{TCPConn: tc}
	}
	return raw
}

func (c *eofConn) Read(b []byte) (int, error) {
	n, err := c.TCPConn.Read(b)
	if err == io.EOF && !c.readShut.Load() {
		c.eof.Store(true)
	}
	return n, err
}

// CloseRead shuts the read side; the EOF that follows is not a cut.
func (c *eofConn) CloseRead() error {
	c.readShut.Store(true)
	return c.TCPConn.CloseRead()
}

// tlsStream is a per-connection link stream: the TLS connection, whose
// Read turns an EOF that came without close_notify into ECONNRESET.
type tlsStream struct {
	*tls.Conn
	raw *eofConn // nil when the socket is not TCP
}

// newTLSStream makes tc, built over watchEOF's result, a stream.
func newTLSStream(tc *tls.Conn) *tlsStream {
	raw, _ := tc.NetConn().(*eofConn)
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
