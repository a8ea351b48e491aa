package h2mux

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"syscall"

	"golang.org/x/net/http2"
)

// How a session reads its frames. One parser serves two ways of reading:
//
//   - A reader goroutine per session (readLoop), over a connection whose
//     Read waits, as any net.Conn's does.
//   - An event loop (Config.DrivenReads): the connection's Read never
//     waits, it says syscall.EAGAIN when it has nothing, and whoever owns
//     the connection's readiness calls ReadReady when it may have bytes.
//     A stream's bytes then reach the loop that carries it in the same
//     turn that read them, with no goroutine between.
//
// The parser keeps its place between calls: a frame header read in part,
// a DATA payload read in part into the chunk that will carry it, or a
// control frame (with, for HEADERS, its CONTINUATIONs) gathered in part.
// Only a whole control frame goes to the read framer, so the framer never
// reads the connection itself and never sees an EAGAIN mid-frame.

// frameHeaderLen is the length of an HTTP/2 frame header (RFC 9113, 4.1).
const frameHeaderLen = 9

// maxHeaderBlock bounds a HEADERS frame and its CONTINUATIONs gathered
// before the framer decodes them: a block this large is far beyond
// MaxHeaderListSize, whatever its compression.
const maxHeaderBlock = 128 << 10

// readBudget is about how many bytes ReadReady reads before it lets the
// loop serve its other connections (it then reports more).
const readBudget = 256 << 10

// frameReader is the parser's place; only the session's reader (the
// goroutine, or the caller of ReadReady) touches it.
type frameReader struct {
	hdr  [frameHeaderLen]byte
	hdrN int // bytes of hdr read

	// A DATA frame whose payload is being read into chunk.
	inData           bool
	dataLen, dataGot int
	dataFlags        http2.Flags
	dataID           uint32
	chunk            *[]byte

	// A control frame being gathered whole in ctrl, up to ctrlNeed
	// bytes; inBlock: a HEADERS frame without END_HEADERS came, so the
	// next frame must be its CONTINUATION, gathered behind it.
	inCtrl   bool
	ctrlNeed int
	frameAt  int // where the frame being gathered starts in ctrl
	ctrl     []byte
	inBlock  bool
	blockID  uint32

	src prefixReader // the read framer's source: a whole frame
	err error        // driven: why reading ended for good
}

// prefixReader is the read framer's source: the frame the parser gathered
// (pre), then r, which the framer reaches only during the session's start
// (the peer's settings are read straight from the connection).
type prefixReader struct {
	pre []byte
	r   io.Reader
}

func (p *prefixReader) Read(b []byte) (int, error) {
	if len(p.pre) > 0 {
		n := copy(b, p.pre)
		p.pre = p.pre[n:]
		return n, nil
	}
	return p.r.Read(b)
}

// errPartialFrame is what the read framer's source says should the framer
// ever read past the frame it was given: a parser bug, which ends the
// session instead of reading the connection behind the parser's back.
var errPartialFrame = errors.New("h2mux: the read framer read past a whole frame")

type partialFrame struct{}

func (partialFrame) Read([]byte) (int, error) { return 0, errPartialFrame }

// readLoop reads and dispatches frames until the connection fails.
func (s *Session) readLoop() {
	for {
		if _, err := s.readFrames(-1); err != nil {
			s.closeWith(err)
			return
		}
	}
}

// ReadReady reads and dispatches the frames the connection holds now, for
// a session started with Config.DrivenReads; calls must not overlap. It
// returns when the connection's Read says EAGAIN, or with more set once
// it has read about readBudget bytes (call it again, the connection may
// hold more). An error means the session is over: it closes, and later
// calls return the same error.
func (s *Session) ReadReady() (more bool, err error) {
	if s.rd.err != nil {
		return false, s.rd.err
	}
	more, err = s.readFrames(readBudget)
	if err == nil || errors.Is(err, syscall.EAGAIN) {
		return more, nil
	}
	s.rd.err = err
	// Not on the caller's goroutine: closing writes TLS's close_notify,
	// which may wait for the peer, and an event loop must not.
	go s.closeWith(err)
	return false, err
}

// ReadOnGoroutine starts the reader goroutine of a session started with
// Config.DrivenReads, whose caller can no longer drive its reads (an event
// loop that stops before the session does): the reader goes on from where
// ReadReady left off. The connection's Read must wait again, and ReadReady
// must not be called any more.
func (s *Session) ReadOnGoroutine() {
	if s.rd.err != nil {
		return // over: its close is on its way
	}
	go s.readLoop()
}

// readFrames reads and dispatches frames until the connection's Read
// fails (EAGAIN included), or, when budget is not negative, until about
// budget bytes were read (more is then set).
func (s *Session) readFrames(budget int) (more bool, err error) {
	r := &s.rd
	read := 0
	for {
		if budget >= 0 && read >= budget {
			return true, nil
		}
		var n int
		switch {
		case r.inData:
			if r.dataGot < r.dataLen {
				n, err = s.conn.Read((*r.chunk)[r.dataGot:r.dataLen])
				r.dataGot += n
			}
			if r.dataGot == r.dataLen {
				r.inData = false
				if ferr := s.endData(); ferr != nil {
					return false, ferr
				}
			}
		case r.inCtrl:
			if have := len(r.ctrl); have < r.ctrlNeed {
				n, err = s.conn.Read(r.ctrl[have:r.ctrlNeed])
				r.ctrl = r.ctrl[:have+n]
			}
			if len(r.ctrl) == r.ctrlNeed {
				r.inCtrl = false
				if ferr := s.endCtrl(); ferr != nil {
					return false, ferr
				}
			}
		default:
			n, err = s.conn.Read(r.hdr[r.hdrN:])
			r.hdrN += n
			if r.hdrN == frameHeaderLen {
				r.hdrN = 0
				if ferr := s.startFrame(); ferr != nil {
					return false, ferr
				}
			}
		}
		read += n
		if err != nil {
			return false, err
		}
	}
}

// startFrame begins the frame whose header was read: a DATA frame's
// payload goes straight into a chunk that its stream may keep, any other
// frame is gathered whole for the read framer.
func (s *Session) startFrame() error {
	r := &s.rd
	h := r.hdr
	length := int(h[0])<<16 | int(h[1])<<8 | int(h[2])
	typ := http2.FrameType(h[3])
	id := binary.BigEndian.Uint32(h[5:]) & (1<<31 - 1)
	if length > maxFrame {
		return http2.ErrFrameTooLarge
	}
	if r.inBlock && (typ != http2.FrameContinuation || id != r.blockID) {
		return fmt.Errorf("h2mux: %v frame where stream %d's CONTINUATION was due: %w", typ, r.blockID, http2.ConnectionError(http2.ErrCodeProtocol))
	}
	if typ == http2.FrameData {
		// What the read framer would check (RFC 9113, 6.1): a stream.
		if id == 0 {
			return fmt.Errorf("h2mux: DATA frame on stream 0: %w", http2.ConnectionError(http2.ErrCodeProtocol))
		}
		if r.chunk == nil {
			r.chunk = chunkPool.Get().(*[]byte)
		}
		r.inData, r.dataLen, r.dataGot, r.dataFlags, r.dataID = true, length, 0, http2.Flags(h[4]), id
		return nil
	}
	if len(r.ctrl)+frameHeaderLen+length > maxHeaderBlock {
		return fmt.Errorf("h2mux: a header block beyond %d bytes: %w", maxHeaderBlock, http2.ConnectionError(http2.ErrCodeProtocol))
	}
	r.frameAt = len(r.ctrl)
	r.ctrl = append(r.ctrl, h[:]...)
	r.ctrlNeed = len(r.ctrl) + length
	r.ctrl = growTo(r.ctrl, r.ctrlNeed)
	r.inCtrl = true
	return nil
}

// growTo makes room for n bytes in b, keeping its length.
func growTo(b []byte, n int) []byte {
	if cap(b) >= n {
		return b
	}
	nb := make([]byte, len(b), max(n, 2*cap(b), 256))
	copy(nb, b)
	return nb
}

// endCtrl hands a whole control frame to the read framer, unless it is a
// HEADERS frame (or CONTINUATION) whose block goes on in the next frame:
// the framer reads a header block's frames in one call, so they are
// gathered first.
func (s *Session) endCtrl() error {
	r := &s.rd
	h := r.ctrl[r.frameAt : r.frameAt+frameHeaderLen]
	typ, flags := http2.FrameType(h[3]), http2.Flags(h[4])
	if (typ == http2.FrameHeaders || typ == http2.FrameContinuation) && !flags.Has(http2.FlagHeadersEndHeaders) {
		r.inBlock, r.blockID = true, binary.BigEndian.Uint32(h[5:])&(1<<31-1)
		return nil
	}
	r.inBlock = false
	r.src.pre = r.ctrl
	f, err := s.rfr.ReadFrame()
	r.src.pre = nil
	if cap(r.ctrl) > maxKeptCtrl {
		r.ctrl = nil // a rare large frame: not kept for the session's life
	} else {
		r.ctrl = r.ctrl[:0]
	}
	if err != nil {
		var se http2.StreamError
		if errors.As(err, &se) {
			// One stream's frame was malformed: reset it, the
			// session goes on.
			s.resetStream(se.StreamID, se.Code, fmt.Errorf("h2mux: %w", se))
			return nil
		}
		return err
	}
	s.frames.Add(1)
	return s.dispatch(f)
}

// maxKeptCtrl is the largest buffer for control frames a session keeps
// between frames.
const maxKeptCtrl = 4 << 10

// endData gives a DATA frame's payload to its stream: its bytes were
// copied once on their way in, by the connection's Read, and a stream
// keeps a full chunk as it is. It checks what the read framer would (RFC
// 9113, 6.1): the padding.
func (s *Session) endData() error {
	r := &s.rd
	length, flags, id := r.dataLen, r.dataFlags, r.dataID
	s.frames.Add(1)
	buf := *r.chunk
	c := chunk{buf: r.chunk, end: length}
	if flags.Has(http2.FlagDataPadded) {
		if length < 1 || int(buf[0]) > length-1 {
			return fmt.Errorf("h2mux: DATA frame's padding exceeds it: %w", http2.ConnectionError(http2.ErrCodeProtocol))
		}
		c.off, c.end = 1, length-int(buf[0])
	}
	// The connection's window is given back at once: the stream's
	// window bounds what it holds.
	if length > 0 {
		s.mu.Lock()
		s.connUnack += uint32(length)
		give := uint32(0)
		if s.connUnack >= connWindow/4 {
			give, s.connUnack = s.connUnack, 0
		}
		s.mu.Unlock()
		if give > 0 {
			s.control(func(fr *http2.Framer) error { return fr.WriteWindowUpdate(0, give) })
		}
	}
	st := s.lookup(id)
	if st == nil {
		// A stream this side reset or finished: what the peer sent
		// before it heard is dropped (RFC 9113, 5.4.2).
		return nil
	}
	if st.deliver(c, flags.Has(http2.FlagDataEndStream), uint32(length-(c.end-c.off))) {
		r.chunk = nil // the stream keeps it
	}
	return nil
}
