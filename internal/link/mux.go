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
	"time"

	"github.com/libp2p/go-yamux/v5"
)

// Multiplexed links ("attache/2"): a client keeps a few long-lived mutual-TLS
// connections per link server and opens each of its client connections as a
// yamux stream on one of them, so a new connection costs one stream frame
// and the server's status answer instead of a TLS handshake.
//
// yamux (libp2p's, the one IPFS runs on) and not HTTP/2 CONNECT: it has
// half-close in both directions (HTTP/2's Go server ends a stream's request
// side when the handler returns, so a backend that finishes its answer
// first would cut the client's upload), a reset with a code, per-stream
// flow control whose windows grow with the measured round trip, receive
// buffers taken from a pool only while they hold bytes (an idle stream
// holds none), and one write per frame. hashicorp/yamux, the original, has
// no reset and writes a frame's header and body separately (two TLS
// records per frame).

// ALPN2 is the application protocol of multiplexed links.
const ALPN2 = "attache/2"

// streamHeader opens every stream: the version byte, the service name's
// length, the name. The server answers with one status byte (statusOK, or
// a refusal, after which the stream ends).
const streamVersion byte = 1

// streamOpening is what a stream's opening frame carries: its header, then
// the client's early bytes.
func streamOpening(service string, early []byte) ([]byte, error) {
	if service == "" || len(service) > 255 {
		return nil, fmt.Errorf("link: service name %q must be 1 to 255 bytes", service)
	}
	b := make([]byte, 0, 2+len(service)+len(early))
	b = append(b, streamVersion, byte(len(service)))
	b = append(b, service...)
	return append(b, early...), nil
}

// readStreamHeader reads a stream's header and returns its service.
func readStreamHeader(r io.Reader) (string, error) {
	var h [2]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return "", fmt.Errorf("stream header: %w", err)
	}
	if h[0] != streamVersion {
		return "", fmt.Errorf("stream header version %d, want %d", h[0], streamVersion)
	}
	if h[1] == 0 {
		return "", errors.New("stream header names no service")
	}
	name := make([]byte, h[1])
	if _, err := io.ReadFull(r, name); err != nil {
		return "", fmt.Errorf("stream header: %w", err)
	}
	return string(name), nil
}

// Tuning of the multiplexed sessions.
const (
	// muxMessageSize bounds one frame, its 12-byte header included: a
	// bulk stream yields the connection to the others' frames at least
	// every 32 KiB, and the proxy's 32 KiB reads fit one frame each.
	muxMessageSize = 32<<10 + 12
	// muxMaxWindow bounds a stream's receive window (it starts at
	// muxInitialWindow and doubles while the round trip allows): enough
	// for one stream to fill a fast link, and what a stalled receiver can
	// make the session buffer for it.
	muxMaxWindow = 4 << 20
	// muxInitialWindow is the window a stream is given once open (the
	// protocol starts every stream at 256 KiB): what one stream may have
	// in flight before its receiver's first window update.
	muxInitialWindow = 1 << 20
	// muxKeepAlive is how often an idle session pings its peer, so a dead
	// peer or path is noticed and its session replaced.
	muxKeepAlive = 15 * time.Second
	// batchLimit is how many bytes of frames a session gathers before its
	// send loop waits for the connection.
	batchLimit = 256 << 10
	// directWrite is the size from which a frame is written at once when
	// the connection is idle, rather than copied for the flusher.
	directWrite = 16 << 10
)

func muxConfig(writeTimeout time.Duration) *yamux.Config {
	c := yamux.DefaultConfig()
	c.LogOutput = io.Discard // failures surface as errors of the streams and sessions
	c.KeepAliveInterval = muxKeepAlive
	c.ConnectionWriteTimeout = writeTimeout
	c.MaxStreamWindowSize = muxMaxWindow
	c.InitialStreamWindowSize = muxInitialWindow
	c.MaxMessageSize = muxMessageSize
	c.MaxIncomingStreams = 1 << 16
	c.AcceptBacklog = 1024
	// Small, so that a data frame's body (up to 32 KiB) is read from the
	// TLS connection straight into its buffer rather than copied through
	// this one: 12 % less memmove in BenchmarkLinkBulk. Frame headers and
	// small frames still come through it.
	c.ReadBufSize = 4 << 10
	return c
}

// batchWriter gathers the frames yamux writes one at a time into larger
// writes on the TLS connection: yamux's send loop writes each frame with a
// Write of its own, which on a *tls.Conn is a record and a system call per
// frame. Write copies the frame and returns; a flusher goroutine writes
// whatever gathered while its previous write was in flight, in one Write.
// Under light load that is one frame per write, as before; under many
// small frames (requests of many streams) it is many frames per record.
// A write error is returned by the next Write.
type batchWriter struct {
	net.Conn // reads, deadlines and addresses pass through

	mu      sync.Mutex
	more    sync.Cond // the flusher waits for bytes
	room    sync.Cond // writers wait for the buffer to drain
	buf     []byte
	spare   []byte
	err     error
	writing bool // a write to the connection is in flight
	closing bool
	done    chan struct{} // the flusher has returned
	// sock is the TLS connection's socket, corked around each write so
	// that a batch of many records leaves in one system call; nil when
	// not over TCP.
	sock *linkSocket
}

// writeOut writes b to the connection: the only place that does.
func (w *batchWriter) writeOut(b []byte) error {
	if w.sock == nil || len(b) <= maxRecord {
		_, err := w.Conn.Write(b)
		return err
	}
	w.sock.cork()
	_, err := w.Conn.Write(b)
	if uerr := w.sock.uncork(); err == nil {
		err = uerr
	}
	return err
}

// maxRecord is the most plaintext one TLS record carries: a write that
// fits is one record, and one system call without corking.
const maxRecord = 16 << 10

func newBatchWriter(c net.Conn) *batchWriter {
	w := &batchWriter{Conn: c, done: make(chan struct{})}
	if tc, ok := c.(*tls.Conn); ok {
		w.sock, _ = tc.NetConn().(*linkSocket)
	}
	w.more.L, w.room.L = &w.mu, &w.mu
	go w.flush()
	return w
}

func (w *batchWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	for w.err == nil && len(w.buf) >= batchLimit {
		w.room.Wait()
	}
	if err := w.err; err != nil {
		w.mu.Unlock()
		return 0, err
	}
	if len(p) >= directWrite && len(w.buf) == 0 && !w.writing {
		// A large frame with nothing before it and the connection
		// idle: written at once, without a copy or a hand-off (bulk
		// transfers). Frames that come meanwhile gather for the
		// flusher.
		w.writing = true
		w.mu.Unlock()
		err := w.writeOut(p)
		w.mu.Lock()
		w.writing = false
		if err != nil && w.err == nil {
			w.err = err
		}
		if len(w.buf) > 0 || w.closing {
			w.more.Signal() // the flusher waited for this write
		}
		err = w.err
		w.mu.Unlock()
		if err != nil {
			return 0, err
		}
		return len(p), nil
	}
	w.buf = append(w.buf, p...)
	w.more.Signal()
	w.mu.Unlock()
	return len(p), nil
}

func (w *batchWriter) flush() {
	defer close(w.done)
	w.mu.Lock()
	for {
		// Never beside a direct write (Write's), closing or not: two
		// writers would interleave records on the connection.
		for w.err == nil && (w.writing || len(w.buf) == 0 && !w.closing) {
			w.more.Wait()
		}
		if w.err != nil || len(w.buf) == 0 {
			w.mu.Unlock()
			return
		}
		out := w.buf
		w.buf, w.spare = w.spare[:0], nil
		w.writing = true
		w.mu.Unlock()
		err := w.writeOut(out)
		w.mu.Lock()
		w.writing = false
		if cap(out) <= 4*batchLimit {
			w.spare = out[:0]
		}
		if err != nil && w.err == nil {
			w.err = err
		}
		w.room.Broadcast()
	}
}

// Close ends the flusher (after it has written what is gathered, unless
// the connection fails) and closes the connection.
func (w *batchWriter) Close() error {
	w.mu.Lock()
	// What is gathered is still written: the flusher stops on an empty
	// buffer once closing (or sooner if the connection fails).
	w.closing = true
	w.more.Signal()
	w.mu.Unlock()
	select {
	case <-w.done:
	case <-time.After(time.Second):
	}
	w.mu.Lock()
	if w.err == nil {
		w.err = net.ErrClosed
	}
	w.room.Broadcast()
	w.mu.Unlock()
	return w.Conn.Close()
}

// Stream is one client connection carried on a multiplexed link: a
// net.Conn with CloseWrite (the peer reads EOF and may still write),
// CloseRead and Reset, which the proxy uses to end it as it would a socket.
type Stream struct {
	*yamux.Stream
	// readShut is set by CloseRead: the reads it ends return EOF, as a
	// socket shut for reading does, not yamux's reset error.
	readShut atomic.Bool
	counted  atomic.Bool // opened: counted in the open streams
	once     sync.Once
	stats    *Stats
	side     int
	release  func()    // tells the session the stream ended
	tls      *tls.Conn // the pooled connection it travels on
	goAway   func()    // server side: takes the session out of service
}

func newStream(s *yamux.Stream, tc *tls.Conn, stats *Stats, side int, release func()) *Stream {
	return &Stream{Stream: s, tls: tc, stats: stats, side: side, release: release}
}

// ConnectionState is the TLS state of the pooled connection the stream
// travels on: the peer's certificate, whether the session was resumed.
func (s *Stream) ConnectionState() tls.ConnectionState { return s.tls.ConnectionState() }

// opened counts the stream among the open ones once the server said OK.
func (s *Stream) opened() {
	s.counted.Store(true)
	s.stats.streamOpened(s.side)
}

func (s *Stream) done() {
	s.once.Do(func() {
		if s.counted.Load() {
			s.stats.streamClosed(s.side)
		}
		s.release()
	})
}

// Read reads the stream; after CloseRead it returns EOF.
func (s *Stream) Read(b []byte) (int, error) {
	n, err := s.Stream.Read(b)
	if err != nil && s.readShut.Load() && errors.Is(err, yamux.ErrStreamReset) {
		err = io.EOF
	}
	return n, socketError(err)
}

// Write writes to the stream.
func (s *Stream) Write(b []byte) (int, error) {
	n, err := s.Stream.Write(b)
	return n, socketError(err)
}

// socketError adds to a stream's error the one a socket would give in its
// place, so that code written for sockets reads it right: a stream reset
// by the peer, or whose connection died, is ECONNRESET; a write after
// CloseWrite EPIPE; a deadline os.ErrDeadlineExceeded.
func socketError(err error) error {
	switch {
	case err == nil, err == io.EOF:
		return err
	case errors.Is(err, yamux.ErrTimeout):
		return fmt.Errorf("link stream: %w: %w", err, os.ErrDeadlineExceeded)
	case errors.Is(err, yamux.ErrStreamClosed):
		return fmt.Errorf("link stream: %w: %w", err, syscall.EPIPE)
	}
	return fmt.Errorf("link stream: %w: %w", err, syscall.ECONNRESET)
}

// WaitRead blocks until the stream has bytes to read or ends, without a
// buffer (the copy takes one only once there is something to copy). It
// returns nil when Read would return bytes, else Read's error.
func (s *Stream) WaitRead() error {
	_, err := s.Read(nil)
	return err
}

// CloseRead ends the reading side: later and blocked reads return EOF.
// The peer is not told (as with a socket, its writes are dropped).
func (s *Stream) CloseRead() error {
	s.readShut.Store(true)
	return s.Stream.CloseRead()
}

// Close ends both sides, sending the peer an EOF.
func (s *Stream) Close() error {
	err := s.Stream.Close()
	s.done()
	return err
}

// Reset ends both sides at once; the peer's reads and writes fail, as
// after a TCP reset.
func (s *Stream) Reset() error {
	err := s.Stream.Reset()
	s.done()
	return err
}
