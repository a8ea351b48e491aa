// Package h2mux carries many byte streams over one connection as HTTP/2
// CONNECT streams, the way Istio's ambient mesh tunnels TCP connections
// between nodes (HBONE): a stream opens with a HEADERS frame naming its
// target in :authority, the answer is a HEADERS frame with a :status, the
// bytes travel in DATA frames under HTTP/2's per-stream and per-connection
// flow control, END_STREAM is a half-close (a FIN) and RST_STREAM a reset.
//
// The frames, their encoding and HPACK are golang.org/x/net/http2's; the
// stream table, flow control and the byte-stream API are this package's,
// because net/http's server and transport are made for requests: a handler
// goroutine per stream, a request body that ends when the handler returns,
// no half-close towards the client. Here a stream is a net.Conn with
// CloseWrite, CloseRead and Reset, as a TCP socket is.
//
// One goroutine per session reads frames, or its caller's event loop does
// (Config.DrivenReads, reader.go), and never waits on a stream's
// reader: each stream's bytes wait in its own buffer, bounded by its
// window, and the connection-level window is given back as soon as bytes
// arrive, so a stalled stream never holds up the others. Frames are written
// into a batch that one flusher goroutine per session writes to the
// connection; writers of data wait while the batch is full (backpressure),
// frames the reader sends (window updates, ping answers) never wait.
package h2mux

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Defaults of Config.
const (
	// DefaultWindow is a stream's receive window: what one stream may have
	// in flight, enough to fill a fast link at a few milliseconds' round
	// trip, and what a stalled receiver makes its session hold for it.
	DefaultWindow = 1 << 20
	// DefaultKeepAlive is how often an idle session pings its peer.
	DefaultKeepAlive = 15 * time.Second
	// DefaultTimeout bounds the exchange of prefaces and settings.
	DefaultTimeout = 10 * time.Second
	// DefaultBacklog is how many streams wait for Accept at most.
	DefaultBacklog = 1024
)

const (
	// maxFrame is the largest DATA payload this side sends and accepts: a
	// bulk stream yields the connection to the others' frames at least
	// every 32 KiB, and a 32 KiB read fits one frame.
	maxFrame = 32 << 10
	// connWindow is the connection-level receive window. It is given back
	// as bytes arrive (the streams' windows bound what is held), so it
	// never runs out between two ends of this package.
	connWindow = 1 << 30
	// batchLimit is how many bytes of frames wait for the flusher before
	// writers of data wait for it. While the flusher writes one batch, the
	// writers fill the next: 1 MiB lets a bulk stream's event loop run a
	// millisecond ahead of the encryption, where 256 KiB left both ends
	// waiting on each other's wake-ups (iperf3 across a link: 4.9 against
	// 4.5 Gbit/s with one stream, 5.5 against 4.7 with four; bench/README).
	batchLimit = 1 << 20
	// idleBatch is the largest batch buffer a session keeps while it has
	// nothing to write: a larger one (a bulk stream's) is let go within a
	// keepalive period of the batch emptying (trim).
	idleBatch = 128 << 10
	// maxStreamID is the last stream identifier HTTP/2 allows.
	maxStreamID = math.MaxInt32
)

// Config tunes a session; the zero value uses the defaults.
type Config struct {
	// Window is each stream's receive window in bytes (DefaultWindow when
	// zero).
	Window uint32
	// KeepAlive is how often an idle session pings its peer; a session
	// that hears nothing for two periods is closed. Zero means
	// DefaultKeepAlive, negative no pings.
	KeepAlive time.Duration
	// Timeout bounds the exchange of prefaces (DefaultTimeout when zero).
	Timeout time.Duration
	// Backlog is how many opened streams may wait for Accept; more are
	// refused (DefaultBacklog when zero).
	Backlog int
	// WriteOut writes a batch of frames to the connection; nil means the
	// connection's Write. A caller may cork the socket around it.
	WriteOut func([]byte) error
	// DrivenReads starts no reader goroutine: once Client or Server
	// returned, the caller switches the connection's Read to never wait
	// (it returns an error that is syscall.EAGAIN when it has nothing)
	// and calls ReadReady whenever the connection may have bytes, from
	// one goroutine at a time (an event loop; see reader.go). The
	// opening (preface and settings) is read before, with Reads that
	// wait.
	DrivenReads bool
}

func (c *Config) window() uint32 {
	if c.Window == 0 || c.Window > maxStreamID {
		return DefaultWindow
	}
	return c.Window
}

// Errors a session and its streams return. Those of streams wrap the error
// a socket would return in their place (ECONNRESET, EPIPE,
// os.ErrDeadlineExceeded), so code written for sockets reads them right.
var (
	// ErrSessionClosed is why a session's streams failed when it closed.
	ErrSessionClosed = errors.New("h2mux: session closed")
	// ErrGoingAway is returned by Open once the peer said it takes no
	// more streams, and by a stream the peer did not take because of it.
	ErrGoingAway = errors.New("h2mux: peer is going away")
	// ErrExhausted is returned by Open once the session used up its
	// stream identifiers: open the stream on a new session.
	ErrExhausted = errors.New("h2mux: session has no stream identifiers left")
	// ErrRefused is returned for a stream the peer refused before it
	// processed it (REFUSED_STREAM): it can be opened again elsewhere.
	ErrRefused = errors.New("h2mux: stream refused by peer")
)

// Session is one connection carrying streams: a client opens them, a server
// accepts them.
type Session struct {
	conn     net.Conn
	client   bool
	cfg      Config
	window   uint32 // our streams' receive window
	writeOut func([]byte) error

	// The reader's parser (reader.go) and the framer it hands whole
	// control frames to.
	rfr *http2.Framer
	rd  frameReader

	// wmu orders frames: it guards the write framer, the HPACK encoder and
	// the batch.
	wmu     sync.Mutex
	more    sync.Cond // the flusher waits for frames
	room    sync.Cond // writers of data wait for the batch to drain
	batch   []byte
	spare   []byte
	wfr     *http2.Framer
	enc     *hpack.Encoder
	hbuf    bytes.Buffer
	werr    error
	closing bool
	flushed chan struct{}

	mu         sync.Mutex
	streams    map[uint32]*Stream
	nextID     uint32 // client: the next stream's identifier
	lastPeer   uint32 // server: the last stream the peer opened
	peerWindow int64  // the peer's initial stream window
	peerFrame  int    // the largest frame the peer takes
	connSend   int64  // connection-level send window
	connWait   chan struct{}
	connUnack  uint32 // bytes received and not yet given back
	// roomWait are streams whose TryWrite waits for the batch to drain
	// or the connection's window to grow (under wmu).
	roomWait  []*Stream
	goingAway bool  // server: GoAway was called
	goneAway  bool  // client: the peer sent GOAWAY
	err       error // why the session closed

	accept    chan *Stream
	done      chan struct{}
	closeOnce sync.Once
	frames    atomic.Uint64 // frames read, for the keepalive
}

// Client starts the client side of a session over conn: it sends the
// preface and its settings and waits for the server's.
func Client(conn net.Conn, cfg Config) (*Session, error) {
	return start(newSession(conn, true, cfg), nil)
}

// Server starts the server side of a session over conn: it sends its
// settings and waits for the client's preface and settings.
func Server(conn net.Conn, cfg Config) (*Session, error) {
	s := newSession(conn, false, cfg)
	return start(s, s.readPreface)
}

// start sends this side's opening (a client's preface, then the settings),
// reads the peer's (readPreface first, for a server) and starts the
// session's goroutines; a session that fails to start is closed.
func start(s *Session, readPreface func() error) (*Session, error) {
	s.wmu.Lock()
	if s.client {
		s.batch = append(s.batch, http2.ClientPreface...)
	}
	s.writeSettingsLocked()
	s.wmu.Unlock()
	go s.flush()
	for _, read := range []func() error{readPreface, s.readSettings} {
		if read == nil {
			continue
		}
		if err := read(); err != nil {
			s.closeWith(err)
			return nil, err
		}
	}
	// From now on the parser gives the framer whole frames.
	s.rd.src.r = partialFrame{}
	if !s.cfg.DrivenReads {
		go s.readLoop()
	}
	go s.keepAlive()
	return s, nil
}

func newSession(conn net.Conn, client bool, cfg Config) *Session {
	s := &Session{
		conn:       conn,
		client:     client,
		cfg:        cfg,
		window:     cfg.window(),
		writeOut:   cfg.WriteOut,
		streams:    map[uint32]*Stream{},
		nextID:     1,
		peerWindow: 65535,
		peerFrame:  16384,
		connSend:   65535,
		connWait:   make(chan struct{}),
		flushed:    make(chan struct{}),
		done:       make(chan struct{}),
	}
	if s.writeOut == nil {
		s.writeOut = func(b []byte) error { _, err := conn.Write(b); return err }
	}
	backlog := cfg.Backlog
	if backlog <= 0 {
		backlog = DefaultBacklog
	}
	if !client {
		s.accept = make(chan *Stream, backlog)
	}
	s.more.L, s.room.L = &s.wmu, &s.wmu
	s.wfr = http2.NewFramer(batchWriter{s}, nil)
	s.enc = hpack.NewEncoder(&s.hbuf)
	s.rd.src.r = conn
	s.rfr = http2.NewFramer(nil, &s.rd.src)
	s.rfr.SetMaxReadFrameSize(maxFrame)
	s.rfr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	s.rfr.MaxHeaderListSize = 16 << 10
	s.rfr.SetReuseFrames()
	return s
}

// appendData appends a DATA frame to dst, byte for byte as the write
// framer's WriteData writes it (TestAppendDataMatchesFramer), without the
// framer's own copy of the payload: the hot path's bytes are copied once,
// into the batch.
func appendData(dst []byte, id uint32, end bool, b []byte) []byte {
	var flags byte
	if end {
		flags = byte(http2.FlagDataEndStream)
	}
	n := len(b)
	dst = append(dst, byte(n>>16), byte(n>>8), byte(n), byte(http2.FrameData), flags,
		byte(id>>24)&0x7f, byte(id>>16), byte(id>>8), byte(id))
	return append(dst, b...)
}

// batchWriter is the write framer's writer: it appends to the batch, under
// wmu.
type batchWriter struct{ s *Session }

func (w batchWriter) Write(b []byte) (int, error) {
	w.s.batch = append(w.s.batch, b...)
	return len(b), nil
}

func (s *Session) writeSettingsLocked() {
	_ = s.wfr.WriteSettings(
		http2.Setting{ID: http2.SettingEnablePush, Val: 0},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: s.window},
		http2.Setting{ID: http2.SettingMaxFrameSize, Val: maxFrame},
		http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 1 << 20},
	)
	_ = s.wfr.WriteWindowUpdate(0, connWindow-65535)
	s.more.Signal()
}

func (s *Session) timeout() time.Duration {
	if s.cfg.Timeout > 0 {
		return s.cfg.Timeout
	}
	return DefaultTimeout
}

func (s *Session) readPreface() error {
	_ = s.conn.SetReadDeadline(time.Now().Add(s.timeout()))
	defer s.conn.SetReadDeadline(time.Time{})
	var p [len(http2.ClientPreface)]byte
	if _, err := io.ReadFull(s.conn, p[:]); err != nil {
		return fmt.Errorf("h2mux: reading the client preface: %w", err)
	}
	if string(p[:]) != http2.ClientPreface {
		return errors.New("h2mux: the peer did not send the HTTP/2 client preface")
	}
	return nil
}

// readSettings reads the peer's first frame, which must be its settings.
func (s *Session) readSettings() error {
	_ = s.conn.SetReadDeadline(time.Now().Add(s.timeout()))
	defer s.conn.SetReadDeadline(time.Time{})
	f, err := s.rfr.ReadFrame()
	if err != nil {
		return fmt.Errorf("h2mux: reading the peer's settings: %w", err)
	}
	sf, ok := f.(*http2.SettingsFrame)
	if !ok || sf.IsAck() {
		return fmt.Errorf("h2mux: the peer's first frame is %v, want SETTINGS", f.Header().Type)
	}
	return s.applySettings(sf)
}

func (s *Session) applySettings(sf *http2.SettingsFrame) error {
	err := sf.ForeachSetting(func(st http2.Setting) error {
		if err := st.Valid(); err != nil {
			return err
		}
		switch st.ID {
		case http2.SettingInitialWindowSize:
			s.mu.Lock()
			delta := int64(st.Val) - s.peerWindow
			s.peerWindow = int64(st.Val)
			open := make([]*Stream, 0, len(s.streams))
			for _, st := range s.streams {
				open = append(open, st)
			}
			s.mu.Unlock()
			for _, st := range open { // not under s.mu: st.mu comes first
				st.addSendWindow(delta)
			}
		case http2.SettingMaxFrameSize:
			s.mu.Lock()
			s.peerFrame = int(min(st.Val, maxFrame))
			s.mu.Unlock()
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("h2mux: peer's settings: %w", err)
	}
	s.control(func(fr *http2.Framer) error { return fr.WriteSettingsAck() })
	return nil
}

// control writes a frame that must not wait for the batch to drain: the
// reader's answers, resets, window updates.
func (s *Session) control(write func(*http2.Framer) error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.werr != nil || s.closing {
		return
	}
	_ = write(s.wfr)
	s.more.Signal()
}

// writeData writes one DATA frame, waiting while the batch is full.
func (s *Session) writeData(id uint32, end bool, b []byte) error {
	return s.writeFrame(id, end, b, true)
}

// writeEnd writes END_STREAM: one small frame, which does not wait for
// the batch to drain.
func (s *Session) writeEnd(id uint32) error {
	return s.writeFrame(id, true, nil, false)
}

func (s *Session) writeFrame(id uint32, end bool, b []byte, wait bool) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	for wait && s.werr == nil && !s.closing && len(s.batch) >= batchLimit {
		s.room.Wait()
	}
	if s.werr != nil {
		return s.werr
	}
	if s.closing {
		return ErrSessionClosed
	}
	s.batch = appendData(s.batch, id, end, b)
	s.more.Signal()
	return nil
}

// tryWrite writes what of b st's window, the connection's window and the
// batch take now (see Stream.TryWrite).
func (s *Session) tryWrite(st *Stream, b []byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	total := 0
	for len(b) > 0 {
		n, err := s.reserveLocked(st, len(b))
		if err != nil {
			return total, err
		}
		s.batch = appendData(s.batch, st.id, false, b[:n])
		s.more.Signal()
		total += n
		b = b[n:]
	}
	return total, nil
}

// tryReadFrom has read put up to a frame of st's bytes straight into the
// batch, behind the frame's header (see Stream.TryReadFrom).
func (s *Session) tryReadFrom(st *Stream, read func([]byte) int) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	n, err := s.reserveLocked(st, maxFrame)
	if err != nil {
		return 0, err
	}
	at := len(s.batch)
	s.batch = slices.Grow(s.batch, frameHeaderLen+n)[:at+frameHeaderLen+n]
	got := min(max(read(s.batch[at+frameHeaderLen:]), 0), n)
	if got < n {
		// The windows give back what the read did not fill.
		st.mu.Lock()
		s.mu.Lock()
		s.connSend += int64(n - got)
		st.sendWin += int64(n - got)
		s.mu.Unlock()
		st.mu.Unlock()
	}
	if got == 0 {
		s.batch = s.batch[:at]
		return 0, nil
	}
	s.batch = appendData(s.batch[:at], st.id, false, nil)
	s.batch = s.batch[:at+frameHeaderLen+got]
	s.batch[at], s.batch[at+1], s.batch[at+2] = byte(got>>16), byte(got>>8), byte(got)
	s.more.Signal()
	return got, nil
}

// reserveLocked takes up to want bytes of st's window and the
// connection's for a write into the batch, at most a frame; wmu is held.
// When the windows or the batch have no room it arms st's notify for when
// they do and returns syscall.EAGAIN.
func (s *Session) reserveLocked(st *Stream, want int) (int, error) {
	if s.werr != nil {
		return 0, st.failure(s.werr)
	}
	if s.closing {
		return 0, ErrSessionClosed
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	switch {
	case st.err != nil:
		return 0, st.err
	case st.sentEnd || st.closed:
		return 0, fmt.Errorf("h2mux: write after close: %w", syscall.EPIPE)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	n := min(int64(min(want, s.peerFrame)), st.sendWin, s.connSend)
	full := len(s.batch) >= batchLimit
	if n <= 0 || full {
		st.wantWrite = true
		if full || s.connSend <= 0 {
			s.roomWait = append(s.roomWait, st)
		}
		return 0, syscall.EAGAIN
	}
	s.connSend -= n
	st.sendWin -= n
	return int(n), nil
}

// wakeRoomWait tells the streams whose TryWrite waited for room that there
// is some; wmu is held.
func (s *Session) wakeRoomWaitLocked() {
	if len(s.roomWait) == 0 {
		return
	}
	waiting := s.roomWait
	s.roomWait = nil
	// Not under wmu: a notify function may write at once.
	s.wmu.Unlock()
	for _, st := range waiting {
		st.writable()
	}
	s.wmu.Lock()
}

// flush writes the batch to the connection whenever it has frames.
func (s *Session) flush() {
	defer close(s.flushed)
	s.wmu.Lock()
	for {
		for s.werr == nil && len(s.batch) == 0 && !s.closing {
			s.more.Wait()
		}
		if s.werr != nil || len(s.batch) == 0 {
			s.wmu.Unlock()
			return
		}
		out := s.batch
		s.batch, s.spare = s.spare[:0], nil
		s.wmu.Unlock()
		err := s.writeOut(out)
		s.wmu.Lock()
		if cap(out) <= 2*batchLimit {
			s.spare = out[:0]
		}
		if err != nil && s.werr == nil {
			s.werr = fmt.Errorf("h2mux: writing to the connection: %w", err)
			s.wmu.Unlock()
			s.closeWith(err)
			s.wmu.Lock()
		}
		s.room.Broadcast()
		s.wakeRoomWaitLocked()
	}
}

// trim lets go of batch buffers larger than idleBatch while the batch is
// empty. The keepalive calls it each period (a session whose keepalive is
// off keeps them): a session that carried a bulk
// stream would otherwise keep two megabytes for as long as it lives, and
// trimming whenever the flusher finds the batch empty would have a bulk
// stream grow its batch again from nothing, frame by frame, many times a
// second (iperf3 across a link fell from 5 to 1.5 Gbit/s).
func (s *Session) trim() {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if len(s.batch) > 0 {
		return
	}
	if cap(s.spare) > idleBatch {
		s.spare = nil
	}
	if cap(s.batch) > idleBatch {
		s.batch = nil
	}
}

func (s *Session) dispatch(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		return s.onHeaders(f)
	case *http2.RSTStreamFrame:
		err := streamResetError(f.ErrCode)
		if f.ErrCode == http2.ErrCodeRefusedStream {
			err = ErrRefused
		}
		if st := s.lookup(f.StreamID); st != nil {
			st.peerReset(err)
		}
	case *http2.WindowUpdateFrame:
		if f.StreamID == 0 {
			s.mu.Lock()
			s.connSend += int64(f.Increment)
			close(s.connWait)
			s.connWait = make(chan struct{})
			s.mu.Unlock()
			s.wmu.Lock()
			s.wakeRoomWaitLocked()
			s.wmu.Unlock()
		} else if st := s.lookup(f.StreamID); st != nil {
			st.addSendWindow(int64(f.Increment))
		}
	case *http2.SettingsFrame:
		if !f.IsAck() {
			return s.applySettings(f)
		}
	case *http2.PingFrame:
		if !f.IsAck() {
			data := f.Data
			s.control(func(fr *http2.Framer) error { return fr.WritePing(true, data) })
		}
	case *http2.GoAwayFrame:
		s.onGoAway(f.LastStreamID)
	}
	return nil
}

func (s *Session) lookup(id uint32) *Stream {
	s.mu.Lock()
	st := s.streams[id]
	s.mu.Unlock()
	return st
}

func (s *Session) onHeaders(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	if s.client {
		st := s.lookup(id)
		if st == nil {
			return nil
		}
		status, err := strconv.Atoi(f.PseudoValue("status"))
		if err != nil {
			s.resetStream(id, http2.ErrCodeProtocol, errors.New("h2mux: response without a valid :status"))
			return nil
		}
		st.responded(status, f.StreamEnded())
		return nil
	}
	s.mu.Lock()
	if id%2 == 0 || id <= s.lastPeer {
		s.mu.Unlock()
		return fmt.Errorf("h2mux: the client opened stream %d out of order", id)
	}
	s.lastPeer = id
	if s.goingAway || s.err != nil {
		s.mu.Unlock()
		s.control(func(fr *http2.Framer) error { return fr.WriteRSTStream(id, http2.ErrCodeRefusedStream) })
		return nil
	}
	if f.PseudoValue("method") != "CONNECT" || f.PseudoValue("authority") == "" {
		s.mu.Unlock()
		s.control(func(fr *http2.Framer) error { return fr.WriteRSTStream(id, http2.ErrCodeProtocol) })
		return nil
	}
	st := s.newStreamLocked(id, f.PseudoValue("authority"))
	s.mu.Unlock()
	if f.StreamEnded() {
		st.deliver(chunk{}, true, 0)
	}
	select {
	case s.accept <- st:
	default:
		s.resetStream(id, http2.ErrCodeRefusedStream, ErrRefused)
	}
	return nil
}

func (s *Session) onGoAway(last uint32) {
	s.mu.Lock()
	s.goneAway = true
	var gone []*Stream
	for id, st := range s.streams {
		if id > last {
			gone = append(gone, st)
		}
	}
	s.mu.Unlock()
	for _, st := range gone {
		st.peerReset(ErrGoingAway)
	}
}

// newStreamLocked adds a stream to the table; s.mu is held.
func (s *Session) newStreamLocked(id uint32, authority string) *Stream {
	st := &Stream{
		s:         s,
		id:        id,
		authority: authority,
		sendWin:   s.peerWindow,
		rwake:     make(chan struct{}, 1),
		wwake:     make(chan struct{}, 1),
	}
	if s.client {
		st.response = make(chan struct{})
	}
	s.streams[id] = st
	return st
}

// forget takes a stream out of the table: no frame of its own is expected.
func (s *Session) forget(id uint32) {
	s.mu.Lock()
	delete(s.streams, id)
	s.mu.Unlock()
}

// resetStream resets a stream from this side with code; err is what its
// reads and writes return from now on.
func (s *Session) resetStream(id uint32, code http2.ErrCode, err error) {
	if st := s.lookup(id); st != nil {
		st.fail(err)
	}
	s.forget(id)
	s.control(func(fr *http2.Framer) error { return fr.WriteRSTStream(id, code) })
}

// Open opens a stream to authority. It returns once the opening frame is
// written, without waiting for the peer's answer (Stream.Response): bytes
// written at once travel right behind it.
func (s *Session) Open(authority string) (*Stream, error) {
	if !s.client {
		return nil, errors.New("h2mux: only a client opens streams")
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.mu.Lock()
	switch {
	case s.err != nil:
		err := s.err
		s.mu.Unlock()
		return nil, err
	case s.goneAway:
		s.mu.Unlock()
		return nil, ErrGoingAway
	case s.nextID > maxStreamID:
		s.mu.Unlock()
		return nil, ErrExhausted
	}
	id := s.nextID
	s.nextID += 2
	st := s.newStreamLocked(id, authority)
	s.mu.Unlock()
	if s.werr != nil {
		s.forget(id)
		return nil, s.werr
	}
	s.hbuf.Reset()
	_ = s.enc.WriteField(hpack.HeaderField{Name: ":method", Value: "CONNECT"})
	_ = s.enc.WriteField(hpack.HeaderField{Name: ":authority", Value: authority})
	if err := s.wfr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: s.hbuf.Bytes(), EndHeaders: true}); err != nil {
		s.forget(id)
		return nil, fmt.Errorf("h2mux: opening a stream: %w", err)
	}
	s.more.Signal()
	return st, nil
}

// respond sends a stream's answer.
func (s *Session) respond(id uint32, status int, end bool) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.werr != nil {
		return s.werr
	}
	s.hbuf.Reset()
	_ = s.enc.WriteField(hpack.HeaderField{Name: ":status", Value: strconv.Itoa(status)})
	if err := s.wfr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: s.hbuf.Bytes(), EndHeaders: true, EndStream: end}); err != nil {
		return err
	}
	s.more.Signal()
	return nil
}

// Accept returns the next stream the client opened.
func (s *Session) Accept() (*Stream, error) {
	if s.client {
		return nil, errors.New("h2mux: only a server accepts streams")
	}
	select {
	case st := <-s.accept:
		return st, nil
	case <-s.done:
		return nil, s.Err()
	}
}

// GoAway tells the client that this server takes no more streams: the
// streams it opened so far go on, later ones are refused (the client opens
// them elsewhere).
func (s *Session) GoAway() {
	s.mu.Lock()
	if s.goingAway || s.client {
		s.mu.Unlock()
		return
	}
	s.goingAway = true
	last := s.lastPeer
	s.mu.Unlock()
	s.control(func(fr *http2.Framer) error { return fr.WriteGoAway(last, http2.ErrCodeNo, nil) })
}

// GoneAway reports whether the peer said it takes no more streams.
func (s *Session) GoneAway() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.goneAway
}

// NumStreams is how many streams the session's table holds.
func (s *Session) NumStreams() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.streams)
}

// Done is closed once the session has closed.
func (s *Session) Done() <-chan struct{} { return s.done }

// IsClosed reports whether the session has closed.
func (s *Session) IsClosed() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// Err is why the session closed, or nil.
func (s *Session) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// LocalAddr and RemoteAddr are the connection's.
func (s *Session) LocalAddr() net.Addr  { return s.conn.LocalAddr() }
func (s *Session) RemoteAddr() net.Addr { return s.conn.RemoteAddr() }

// Close closes the session: what is written so far goes out (bounded by a
// second), then the connection closes and every open stream fails.
func (s *Session) Close() error {
	s.wmu.Lock()
	if s.werr == nil && !s.closing {
		_ = s.wfr.WriteGoAway(0, http2.ErrCodeNo, nil)
	}
	s.closing = true
	s.more.Signal()
	s.room.Broadcast()
	s.wmu.Unlock()
	select {
	case <-s.flushed:
	case <-time.After(time.Second):
	}
	s.closeWith(ErrSessionClosed)
	return nil
}

// closeWith closes the connection and fails every stream with err.
func (s *Session) closeWith(err error) {
	s.closeOnce.Do(func() {
		if !errors.Is(err, ErrSessionClosed) {
			err = fmt.Errorf("%w: %w", ErrSessionClosed, err)
		}
		s.mu.Lock()
		s.err = err
		all := s.streams
		s.streams = map[uint32]*Stream{}
		close(s.connWait)
		s.connWait = make(chan struct{})
		s.mu.Unlock()
		s.wmu.Lock()
		if s.werr == nil {
			s.werr = err
		}
		s.more.Signal()
		s.room.Broadcast()
		s.wmu.Unlock()
		_ = s.conn.Close()
		for _, st := range all {
			st.fail(err)
		}
		close(s.done)
	})
}

// keepAlive pings an idle peer, and closes the session when two periods
// pass without a frame from it. Each period it also trims the batch
// buffers.
func (s *Session) keepAlive() {
	period := s.cfg.KeepAlive
	if period == 0 {
		period = DefaultKeepAlive
	}
	if period < 0 {
		return
	}
	t := time.NewTicker(period)
	defer t.Stop()
	seen, pinged := s.frames.Load(), false
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
		}
		s.trim()
		now := s.frames.Load()
		switch {
		case now != seen:
			seen, pinged = now, false
		case pinged:
			s.closeWith(errors.New("h2mux: the peer did not answer a ping"))
			return
		default:
			pinged = true
			s.control(func(fr *http2.Framer) error { return fr.WritePing(false, [8]byte{'a', 't', 't', 'a', 'c', 'h', 'e'}) })
		}
	}
}

// streamResetError is what a stream the peer reset with code returns: a
// reset, as a socket whose peer reset it.
func streamResetError(code http2.ErrCode) error {
	return fmt.Errorf("h2mux: stream reset by peer (%v): %w", code, syscall.ECONNRESET)
}
