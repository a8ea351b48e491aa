package tlsclient

import (
	"fmt"
	"net"
	"sync"
)

// Recorder keeps the last TLS failure of the connections made through it,
// for clients that pass failures on only as text (gRPC words a refused
// handshake as "connection error: desc = …", with the x509 error and the
// server's alert flattened into a string). A failure counts until a
// connection made later reads a first byte from its server, which proves
// that the server accepted it. The zero value is ready to use.
type Recorder struct {
	mu   sync.Mutex
	last error // *Error, or nil
	gen  uint64
}

// Note records err, the failure of a handshake with addr, when Explain
// puts it into words; other errors (a refused TCP connection) are not
// about TLS and are left to the caller's own error.
func (r *Recorder) Note(addr string, err error) {
	e, ok := Explain(err).(*Error)
	if !ok {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gen++
	r.last = &Error{What: e.What, Err: fmt.Errorf("%s: %w", addr, e.Err)}
}

// Last is the failure recorded since the last connection that worked, or
// nil.
func (r *Recorder) Last() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.last
}

// Conn wraps c, the client side of a TLS connection to addr whose
// handshake is done: the server's alert, if it refuses the client's
// certificate after the handshake (TLS 1.3 does), is recorded, and the
// first byte read clears what was recorded before c was made.
func (r *Recorder) Conn(c net.Conn, addr string) net.Conn {
	r.mu.Lock()
	defer r.mu.Unlock()
	return &recordingConn{Conn: c, r: r, addr: addr, gen: r.gen}
}

// recordingConn reports its alerts and its first read to a Recorder.
type recordingConn struct {
	net.Conn
	r    *Recorder
	addr string
	gen  uint64 // the recorder's generation when the connection was made
	read bool   // a byte was read; only the reading goroutine touches it
}

func (c *recordingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 && !c.read {
		c.read = true
		c.r.mu.Lock()
		// Only a failure older than this connection is cleared: one
		// recorded since came from another connection and still holds.
		if c.r.gen == c.gen {
			c.r.last = nil
		}
		c.r.mu.Unlock()
	}
	if err != nil && isRemoteAlert(err) {
		c.r.Note(c.addr, err)
	}
	return n, err
}

func (c *recordingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if err != nil && isRemoteAlert(err) {
		c.r.Note(c.addr, err)
	}
	return n, err
}
