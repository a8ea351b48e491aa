package link

import (
	"crypto/tls"
	"sync"
	"sync/atomic"
	"time"

	"github.com/attache/attache/internal/h2mux"
	"github.com/attache/attache/internal/loophint"
)

// Multiplexed links ("attache/h2"): a client keeps a few long-lived
// mutual-TLS connections per link server and opens each of its client
// connections as a stream on one of them, so a new connection costs one
// stream frame and the server's answer instead of a TLS handshake.
//
// The streams are HTTP/2 CONNECT streams (package h2mux), as Istio's ambient
// mesh tunnels connections between nodes (HBONE): the stream's HEADERS
// name the service in :authority, the server answers with a :status once
// it has connected to the backend (or refuses), DATA frames carry the
// bytes under per-stream flow control, END_STREAM is a half-close and
// RST_STREAM a reset. An earlier version ran on libp2p's yamux; its
// blocking streams (a goroutine parked per stream and direction, a send
// loop between every writer and the connection) cost more per idle stream
// and per request than this package's own stream table.

// ALPN2 is the application protocol of multiplexed links.
const ALPN2 = "attache/h2"

// Tuning of the multiplexed sessions.
const (
	// muxWindow is a stream's receive window: what one stream may have
	// in flight, and what a stalled receiver can make the session buffer
	// for it. 1 MiB left a bulk stream waiting for window updates even on
	// the loopback (6.2 against 8.0 Gbit/s, bench/README.md).
	muxWindow = 4 << 20
	// muxKeepAlive is how often an idle session pings its peer, so a dead
	// peer or path is noticed and its session replaced.
	muxKeepAlive = 15 * time.Second
)

// Answers (HTTP statuses) of a link server to a stream, for the status
// bytes of attache/1.
var (
	statusToHTTP = map[byte]int{
		statusOK:         200,
		statusNotAllowed: 403,
		statusUnknown:    404,
		statusNoBackend:  502,
		statusExpired:    401,
		statusGoingAway:  503,
	}
	httpToStatus = invert(statusToHTTP)
)

func invert(m map[byte]int) map[int]byte {
	r := make(map[int]byte, len(m))
	for b, code := range m {
		r[code] = b
	}
	return r
}

// statusUnknownAnswer stands for an HTTP status this version does not know.
const statusUnknownAnswer byte = 255

func muxConfig(timeout time.Duration, tc *tls.Conn, reader loophint.Reader) h2mux.Config {
	_, isSocket := tc.NetConn().(*linkSocket)
	return h2mux.Config{
		Window:      muxWindow,
		KeepAlive:   muxKeepAlive,
		Timeout:     timeout,
		Backlog:     1024,
		WriteOut:    corkedWrites(tc),
		DrivenReads: reader != nil && isSocket,
	}
}

// readSession starts the reads of a session set up with muxConfig: on one
// of reader's event loops when it has one, where a frame's bytes reach the
// streams the same loop carries in the turn that read them, else on the
// session's own goroutine. It returns the loop's index, or -1.
func readSession(reader loophint.Reader, mux *h2mux.Session, tc *tls.Conn) int {
	sock, _ := tc.NetConn().(*linkSocket)
	if reader == nil || sock == nil {
		return -1 // not driven: h2mux started its reader
	}
	fd, err := sock.readsOnLoop()
	if err == nil {
		detach := func() {
			sock.readsOnGoroutine()
			mux.ReadOnGoroutine()
		}
		if loop, ok := reader.ReadSession(fd, mux.ReadReady, detach, mux.Done()); ok {
			return loop
		}
	}
	sock.readsOnGoroutine()
	mux.ReadOnGoroutine()
	return -1
}

// corkedWrites writes a session's batches to tc: a batch of more than one
// TLS record goes out corked, a system call per four records
// (corkSegment), where crypto/tls would write each 16 KiB record with a
// system call of its own. Each write is counted as in progress
// (loophint.BeginWrite) while it lasts.
func corkedWrites(tc *tls.Conn) func([]byte) error {
	sock, _ := tc.NetConn().(*linkSocket)
	return func(b []byte) error {
		loophint.BeginWrite() // event loops give their P back meanwhile
		defer loophint.EndWrite()
		if sock == nil || len(b) <= maxRecord {
			_, err := tc.Write(b)
			return err
		}
		sock.cork()
		_, err := tc.Write(b)
		if uerr := sock.uncork(); err == nil {
			err = uerr
		}
		return err
	}
}

// maxRecord is the most plaintext one TLS record carries: a write that
// fits is one record, and one system call without corking.
const maxRecord = 16 << 10

// Stream is one client connection carried on a multiplexed link: a
// net.Conn with CloseWrite (the peer reads EOF and may still write),
// CloseRead and Reset, which the proxy uses to end it as it would a socket.
type Stream struct {
	*h2mux.Stream
	counted atomic.Bool // opened: counted in the open streams
	once    sync.Once
	stats   *Stats
	side    int
	release func()    // tells the session the stream ended
	tls     *tls.Conn // the pooled connection it travels on
	goAway  func()    // server side: takes the session out of service
	loop    int       // the event loop reading its session, or -1
}

func newStream(s *h2mux.Stream, tc *tls.Conn, stats *Stats, side int, release func(), loop int) *Stream {
	return &Stream{Stream: s, tls: tc, stats: stats, side: side, release: release, loop: loop}
}

// Loop is the index of the event loop that reads the stream's session
// (see loophint), if one does: the loop that should carry the stream.
func (s *Stream) Loop() (int, bool) { return s.loop, s.loop >= 0 }

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

// WaitRead blocks until the stream has bytes to read or ends, without a
// buffer (the copy takes one only once there is something to copy). It
// returns nil when Read would return bytes, else Read's error.
func (s *Stream) WaitRead() error {
	_, err := s.Read(nil)
	return err
}

// answer sends the link server's answer to the stream.
func (s *Stream) answer(status byte) error {
	return s.Respond(statusToHTTP[status])
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
