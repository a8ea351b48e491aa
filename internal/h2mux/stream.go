package h2mux

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/http2"
)

// Stream is one byte stream of a session: a net.Conn with CloseWrite (the
// peer reads EOF and may still write), CloseRead and Reset, which behave as
// they do on a TCP socket.
type Stream struct {
	s         *Session
	id        uint32
	authority string

	wmu sync.Mutex // one writer at a time: frames keep their order

	mu       sync.Mutex
	recv     recvBuf
	recvEnd  bool   // the peer sent END_STREAM
	readShut bool   // CloseRead: reads return EOF, arrivals are dropped
	unacked  uint32 // bytes taken by the reader, not yet given back
	sendWin  int64
	sentEnd  bool // END_STREAM sent
	closed   bool // Close or Reset was called
	// notify is called, once per arming, when a TryRead or TryWrite
	// that could not go on (wantRead, wantWrite) may succeed.
	notify    func()
	wantRead  bool
	wantWrite bool
	err       error // the stream failed: reads and writes return it
	status    int
	// response is closed when the answer came (client) or the stream
	// failed before it did.
	response chan struct{}
	answered bool
	// rwake and wwake wake a blocked reader or writer (capacity 1).
	rwake, wwake chan struct{}
	rdl, wdl     time.Time
	rtimer       *time.Timer
	wtimer       *time.Timer
}

var errDeadline = fmt.Errorf("h2mux: i/o timeout: %w", os.ErrDeadlineExceeded)

func wake(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// Authority is what the stream was opened to (its :authority).
func (st *Stream) Authority() string { return st.authority }

// ID is the stream's HTTP/2 identifier.
func (st *Stream) ID() uint32 { return st.id }

// deliver takes a DATA frame's payload, c (or END_STREAM), on the reader's
// goroutine, and reports whether it kept c's buffer (else the caller keeps
// it). pad is the frame's padding, given back at once.
func (st *Stream) deliver(c chunk, end bool, pad uint32) (kept bool) {
	n := c.end - c.off
	st.mu.Lock()
	if st.err != nil || st.recvEnd {
		err := st.errOr(errors.New("h2mux: data after the end of the stream"))
		st.mu.Unlock()
		if n > 0 || end {
			// Bytes after the end, or for a stream that failed
			// here: the peer hears that it is gone.
			st.s.resetStream(st.id, http2.ErrCodeStreamClosed, err)
		}
		return false
	}
	give := pad
	switch {
	case st.readShut || st.closed:
		if st.closed && n > 0 {
			// Closed with the peer still sending: as a closed
			// socket, answered with a reset.
			st.mu.Unlock()
			st.s.resetStream(st.id, http2.ErrCodeStreamClosed, net.ErrClosed)
			return false
		}
		give += uint32(n) // dropped: the window goes back
	default:
		if st.recv.len()+int(st.unacked)+n > int(st.s.window) {
			st.mu.Unlock()
			st.s.resetStream(st.id, http2.ErrCodeFlowControl, errors.New("h2mux: the peer overran the stream's window"))
			return false
		}
		if kept = n >= chunkSize/2 && !st.recv.hasRoom(n); kept {
			// A bulk frame: its buffer joins the stream as it is,
			// no copy.
			st.recv.take(c)
		} else if n > 0 {
			st.recv.write((*c.buf)[c.off:c.end])
		}
	}
	if end {
		st.recvEnd = true
	}
	done := st.recvEnd && st.sentEnd
	f := st.armedLocked(true, false)
	st.mu.Unlock()
	wake(st.rwake)
	if f != nil {
		f()
	}
	if give > 0 && !end {
		st.giveWindow(give)
	}
	if done {
		st.s.forget(st.id)
	}
	return kept
}

// errOr is the stream's error if it failed, else err; st.mu is held.
func (st *Stream) errOr(err error) error {
	if st.err != nil {
		return st.err
	}
	return err
}

// failure is errOr taking st.mu.
func (st *Stream) failure(err error) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.errOr(err)
}

// responded records the answer to a stream this client opened.
func (st *Stream) responded(status int, end bool) {
	st.mu.Lock()
	if !st.answered {
		st.answered, st.status = true, status
		close(st.response)
	}
	st.mu.Unlock()
	if end {
		st.deliver(chunk{}, true, 0)
	}
}

// addSendWindow grows (or, after a settings change, shrinks) the window.
func (st *Stream) addSendWindow(n int64) {
	st.mu.Lock()
	st.sendWin += n
	f := st.armedLocked(false, st.sendWin > 0)
	st.mu.Unlock()
	wake(st.wwake)
	if f != nil {
		f()
	}
}

// armedLocked disarms and returns the notify function when a TryRead
// (read) or a TryWrite (write) waits for what just happened; st.mu is
// held, and the caller calls it after unlocking.
func (st *Stream) armedLocked(read, write bool) func() {
	if (read && st.wantRead) || (write && st.wantWrite) {
		st.wantRead, st.wantWrite = false, false
		return st.notify
	}
	return nil
}

// writable tells a TryWrite waiting for the session's batch or the
// connection's window that it may go on.
func (st *Stream) writable() {
	st.mu.Lock()
	f := st.armedLocked(false, true)
	st.mu.Unlock()
	if f != nil {
		f()
	}
}

// peerReset ends the stream after the peer's RST_STREAM (or GOAWAY).
func (st *Stream) peerReset(err error) {
	st.fail(err)
	st.s.forget(st.id)
}

// fail makes every read and write return err from now on; the bytes not
// read yet are dropped, as after a TCP reset.
func (st *Stream) fail(err error) {
	st.mu.Lock()
	if st.err == nil {
		if err != net.ErrClosed && !errors.Is(err, syscall.ECONNRESET) {
			err = fmt.Errorf("%w: %w", err, syscall.ECONNRESET)
		}
		st.err = err
	}
	st.recv.reset()
	if st.response != nil && !st.answered {
		st.answered = true
		close(st.response)
	}
	f := st.armedLocked(true, true)
	st.mu.Unlock()
	wake(st.rwake)
	wake(st.wwake)
	if f != nil {
		f()
	}
}

// Response waits for the answer to a stream this client opened: the
// :status the server sent, or why none came.
func (st *Stream) Response(ctx context.Context) (int, error) {
	if st.response == nil {
		return 0, errors.New("h2mux: only a client's stream has a response")
	}
	select {
	case <-st.response:
	case <-ctx.Done():
		return 0, context.Cause(ctx)
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.status == 0 {
		return 0, st.errOr(ErrSessionClosed)
	}
	return st.status, nil
}

// Respond sends the server's answer to a stream. A status outside 2xx ends
// the stream: what the client sent is dropped.
func (st *Stream) Respond(status int) error {
	ok := status >= 200 && status < 300
	if err := st.s.respond(st.id, status, !ok); err != nil {
		return err
	}
	if !ok {
		st.fail(net.ErrClosed)
		st.s.forget(st.id)
		// The answer is complete: the client stops sending (RFC 9113,
		// 8.1).
		st.s.control(func(fr *http2.Framer) error { return fr.WriteRSTStream(st.id, http2.ErrCodeNo) })
	}
	return nil
}

// Read reads the stream's bytes; io.EOF once the peer closed its side and
// everything was read. With an empty b it waits until a read would return
// bytes or an error, and returns nil or that error.
func (st *Stream) Read(b []byte) (int, error) {
	for {
		st.mu.Lock()
		switch {
		case st.readShut:
			st.mu.Unlock()
			return 0, io.EOF
		case st.recv.len() > 0:
			if len(b) == 0 {
				st.mu.Unlock()
				return 0, nil
			}
			return st.readLocked(b), nil
		case st.err != nil:
			err := st.err
			st.mu.Unlock()
			return 0, err
		case st.recvEnd:
			st.mu.Unlock()
			return 0, io.EOF
		case !st.rdl.IsZero() && !time.Now().Before(st.rdl):
			st.mu.Unlock()
			return 0, errDeadline
		}
		st.mu.Unlock()
		<-st.rwake
	}
}

// Write writes b in frames as the windows allow; it returns once they are
// in the session's batch.
func (st *Stream) Write(b []byte) (int, error) {
	st.wmu.Lock()
	defer st.wmu.Unlock()
	total := 0
	for len(b) > 0 {
		n, err := st.take(len(b))
		if err != nil {
			return total, err
		}
		if err := st.s.writeData(st.id, false, b[:n]); err != nil {
			st.fail(err)
			return total, st.failure(err)
		}
		total += n
		b = b[n:]
	}
	return total, nil
}

// take waits until the stream and the connection let it send, and takes up
// to want bytes of both windows.
func (st *Stream) take(want int) (int, error) {
	s := st.s
	for {
		st.mu.Lock()
		switch {
		case st.err != nil:
			err := st.err
			st.mu.Unlock()
			return 0, err
		case st.sentEnd || st.closed:
			st.mu.Unlock()
			return 0, fmt.Errorf("h2mux: write after close: %w", syscall.EPIPE)
		case !st.wdl.IsZero() && !time.Now().Before(st.wdl):
			st.mu.Unlock()
			return 0, errDeadline
		}
		if st.sendWin <= 0 {
			st.mu.Unlock()
			<-st.wwake
			continue
		}
		s.mu.Lock()
		n := int64(min(want, s.peerFrame))
		n = min(n, st.sendWin, s.connSend)
		if n <= 0 {
			wait := s.connWait
			s.mu.Unlock()
			st.mu.Unlock()
			select {
			case <-wait:
			case <-st.wwake:
			}
			continue
		}
		s.connSend -= n
		st.sendWin -= n
		s.mu.Unlock()
		st.mu.Unlock()
		return int(n), nil
	}
}

// CloseWrite sends END_STREAM: the peer reads EOF and may still write.
func (st *Stream) CloseWrite() error {
	st.wmu.Lock()
	defer st.wmu.Unlock()
	st.mu.Lock()
	if st.err != nil {
		err := st.err
		st.mu.Unlock()
		return err
	}
	if st.sentEnd {
		st.mu.Unlock()
		return nil
	}
	st.sentEnd = true
	done := st.recvEnd
	st.mu.Unlock()
	if err := st.s.writeEnd(st.id); err != nil {
		return err
	}
	if done {
		st.s.forget(st.id)
	}
	return nil
}

// CloseRead ends the reading side: later and blocked reads return EOF, what
// the peer sends is dropped (its window given back, so it never waits).
func (st *Stream) CloseRead() error {
	st.mu.Lock()
	st.readShut = true
	give := uint32(st.recv.reset()) + st.unacked
	st.unacked = 0
	end := st.recvEnd || st.err != nil
	f := st.armedLocked(true, false)
	st.mu.Unlock()
	wake(st.rwake)
	if f != nil {
		f()
	}
	if give > 0 && !end {
		st.giveWindow(give)
	}
	return nil
}

// Close ends both sides as closing a socket does: the peer reads EOF, or,
// when bytes it sent were left unread here, its stream is reset.
func (st *Stream) Close() error {
	st.mu.Lock()
	if st.closed {
		st.mu.Unlock()
		return nil
	}
	unread := st.recv.len() > 0
	st.mu.Unlock()
	// Bytes left unread here, or a write still under way (waiting for
	// the window: its bytes will not all go): the peer must not take
	// what it got for the whole stream.
	if unread || !st.wmu.TryLock() {
		return st.Reset()
	}
	st.wmu.Unlock()
	err := st.CloseWrite()
	st.mu.Lock()
	st.closed = true
	done := st.recvEnd || st.err != nil
	st.mu.Unlock()
	wake(st.rwake)
	wake(st.wwake)
	if done {
		st.s.forget(st.id)
	}
	if err != nil && errors.Is(err, syscall.ECONNRESET) {
		return nil // closing a stream that was reset is not an error
	}
	return err
}

// Reset ends both sides at once: the peer's reads and writes fail, as after
// a TCP reset.
func (st *Stream) Reset() error {
	st.mu.Lock()
	already := st.closed && st.err != nil
	st.closed = true
	st.mu.Unlock()
	if already {
		return nil
	}
	st.s.resetStream(st.id, http2.ErrCodeConnect, net.ErrClosed)
	return nil
}

// SetDeadline sets both deadlines.
func (st *Stream) SetDeadline(t time.Time) error {
	_ = st.SetReadDeadline(t)
	return st.SetWriteDeadline(t)
}

// SetReadDeadline bounds blocked and later reads.
func (st *Stream) SetReadDeadline(t time.Time) error {
	st.mu.Lock()
	st.rdl = t
	st.rtimer = setTimer(st.rtimer, t, st.rwake)
	st.mu.Unlock()
	wake(st.rwake)
	return nil
}

// SetWriteDeadline bounds blocked and later writes.
func (st *Stream) SetWriteDeadline(t time.Time) error {
	st.mu.Lock()
	st.wdl = t
	st.wtimer = setTimer(st.wtimer, t, st.wwake)
	st.mu.Unlock()
	wake(st.wwake)
	return nil
}

// setTimer arms a timer that wakes c at t (or stops it for a zero t).
func setTimer(tm *time.Timer, t time.Time, c chan struct{}) *time.Timer {
	if t.IsZero() {
		if tm != nil {
			tm.Stop()
		}
		return tm
	}
	d := time.Until(t)
	if tm == nil {
		return time.AfterFunc(d, func() { wake(c) })
	}
	tm.Reset(d)
	return tm
}

// LocalAddr and RemoteAddr are the session connection's.
func (st *Stream) LocalAddr() net.Addr  { return st.s.LocalAddr() }
func (st *Stream) RemoteAddr() net.Addr { return st.s.RemoteAddr() }

// readLocked takes buffered bytes into b and unlocks st.mu; it gives the
// window back once a quarter of it was read.
func (st *Stream) readLocked(b []byte) int {
	n := st.recv.read(b)
	st.consumedLocked(n)
	return n
}

// consumedLocked counts n bytes taken by the reader and unlocks st.mu; it
// gives the window back once a quarter of it was taken.
func (st *Stream) consumedLocked(n int) {
	st.unacked += uint32(n)
	give := uint32(0)
	if st.unacked >= st.s.window/4 && !st.recvEnd {
		give, st.unacked = st.unacked, 0
	}
	st.mu.Unlock()
	if give > 0 {
		st.giveWindow(give)
	}
}

// SetNotify sets the function called when a TryRead or a TryWrite that
// returned EAGAIN may go on (bytes, an end or an error came; the window or
// the session's batch has room). It is called at most once per EAGAIN, from
// the session's goroutines or whichever goroutine changed the stream, and
// must not block: an event loop posts itself a turn.
func (st *Stream) SetNotify(f func()) {
	st.mu.Lock()
	st.notify = f
	st.mu.Unlock()
}

// TryRead is Read without waiting: syscall.EAGAIN when nothing is there
// yet, and then the notify function is called once something is. A read
// that empties the buffer arms it too (or calls it at once when the end
// came already), so that after a short read the caller may wait for the
// notify, as after a short read of a socket for an edge.
func (st *Stream) TryRead(b []byte) (int, error) {
	st.mu.Lock()
	switch {
	case st.readShut:
		st.mu.Unlock()
		return 0, io.EOF
	case st.recv.len() > 0 && len(b) > 0:
		var now func()
		if st.recv.len() <= len(b) {
			if st.recvEnd {
				// Emptied, and the end is there already: the
				// notify comes at once, for the read that
				// returns it.
				now = st.notify
			} else {
				st.wantRead = true
			}
		}
		n := st.readLocked(b)
		if now != nil {
			now()
		}
		return n, nil
	case st.err != nil:
		err := st.err
		st.mu.Unlock()
		return 0, err
	case st.recvEnd:
		st.mu.Unlock()
		return 0, io.EOF
	}
	st.wantRead = true
	st.mu.Unlock()
	return 0, syscall.EAGAIN
}

// TryWriteTo is TryRead without the copy out: write gets the bytes the
// stream holds, in place, as up to maxSlices slices of its buffers
// appended to v, and returns how many of them it took (for a socket: one
// writev). Those are consumed as TryRead consumes, and so are returned
// as n. emptied reports that write took everything the stream held: the
// notify is then armed as after a TryRead that emptied it (or called at
// once when the end came already). When the stream holds nothing it
// returns what TryRead would: syscall.EAGAIN (armed), io.EOF or the
// stream's error. write runs under the stream's lock, so that nothing
// frees the buffers it reads: it must not block or use the stream.
func (st *Stream) TryWriteTo(v [][]byte, write func([][]byte) int) (n int, emptied bool, err error) {
	st.mu.Lock()
	switch {
	case st.readShut:
		st.mu.Unlock()
		return 0, false, io.EOF
	case st.recv.len() > 0:
		held := st.recv.len()
		n = write(st.recv.peek(v[:0], maxSlices))
		n = max(0, min(n, held))
		st.recv.discard(n)
		var now func()
		if emptied = n == held; emptied {
			if st.recvEnd {
				now = st.notify
			} else {
				st.wantRead = true
			}
		}
		st.consumedLocked(n)
		if now != nil {
			now()
		}
		return n, emptied, nil
	case st.err != nil:
		err := st.err
		st.mu.Unlock()
		return 0, false, err
	case st.recvEnd:
		st.mu.Unlock()
		return 0, false, io.EOF
	}
	st.wantRead = true
	st.mu.Unlock()
	return 0, false, syscall.EAGAIN
}

// maxSlices bounds the slices TryWriteTo hands over at once: 512 KiB of
// full chunks, as much as one writev to a socket takes in a turn.
const maxSlices = 16

// TryWrite is Write without waiting: it writes what the windows and the
// session's batch take now, and returns syscall.EAGAIN with the count
// when that is not all of b; the notify function is called once more may
// go.
func (st *Stream) TryWrite(b []byte) (int, error) {
	return st.s.tryWrite(st, b)
}

// TryReadFrom is TryWrite without the copy in: read gets room in the
// session's batch, behind a DATA frame's header, for at most what the
// windows and the batch take now (a frame at most), and returns how many
// bytes it put there (for a socket: one read). It returns that count,
// which may be 0 when read had none; syscall.EAGAIN when the stream takes
// nothing now, and then the notify is called once it may; or the stream's
// error. read runs under the session's write lock: it must not block or
// use the session.
func (st *Stream) TryReadFrom(read func([]byte) int) (int, error) {
	return st.s.tryReadFrom(st, read)
}

// giveWindow gives the peer n bytes of the stream's window back.
func (st *Stream) giveWindow(n uint32) {
	st.s.control(func(fr *http2.Framer) error { return fr.WriteWindowUpdate(st.id, n) })
}
