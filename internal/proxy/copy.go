package proxy

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// The copy engine moves bytes one way between two TCP sockets. It differs
// from io.Copy in one way that matters for an ambassador: it holds a buffer or
// a splice pipe only while bytes are in flight. io.Copy on two *net.TCPConn
// splices through a pipe pair that it keeps for the whole life of the
// connection, so every idle connection pins two pipes (four descriptors and
// their kernel buffers). Here the socket is polled through RawConn.Read; the
// buffer or pipe is taken from a pool when the socket is readable and given
// back as soon as the bytes are written, so an idle connection costs two
// parked goroutines and its two sockets, nothing else.
//
// Small messages (request/response traffic) go through read(2)/write(2) with
// a pooled buffer, which costs fewer cycles than splice for a few hundred
// bytes. A read that fills the whole buffer means a bulk stream, and the
// direction switches to splice(2), which moves pages without copying them
// through user space; a run of small splices switches it back.

const (
	bufSize = 32 << 10
	// pipeSize is requested with F_SETPIPE_SZ; 1 MiB is the default
	// /proc/sys/fs/pipe-max-size, so it needs no privilege.
	pipeSize = 1 << 20
	// smallSplice is the size under which a splice counts as small.
	smallSplice = 4 << 10
	// smallRun is how many small splices in a row switch back to buffers.
	smallRun = 4
)

var bufPool = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}

// pipePool keeps a bounded number of idle pipes. sync.Pool is not used: it
// drops items at GC without closing them, which would leak descriptors.
var pipePool = pipes{max: 256}

type pipe struct {
	r, w     int
	buffered int // bytes written into the pipe and not yet read out
}

type pipes struct {
	mu   sync.Mutex
	free []*pipe
	max  int
}

func (pp *pipes) get() (*pipe, error) {
	pp.mu.Lock()
	if n := len(pp.free); n > 0 {
		p := pp.free[n-1]
		pp.free = pp.free[:n-1]
		pp.mu.Unlock()
		return p, nil
	}
	pp.mu.Unlock()
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, err
	}
	// Best effort: a smaller pipe still works, with more syscalls.
	_, _ = unix.FcntlInt(uintptr(fds[0]), unix.F_SETPIPE_SZ, pipeSize)
	return &pipe{r: fds[0], w: fds[1]}, nil
}

// put returns a drained pipe to the pool; a pipe still holding bytes (the
// write side failed) is closed, since its contents belong to a dead stream.
func (pp *pipes) put(p *pipe) {
	if p.buffered == 0 {
		pp.mu.Lock()
		if len(pp.free) < pp.max {
			pp.free = append(pp.free, p)
			pp.mu.Unlock()
			return
		}
		pp.mu.Unlock()
	}
	unix.Close(p.r)
	unix.Close(p.w)
}

// idle reports how many pipes the pool holds (for tests).
func (pp *pipes) idle() int {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	return len(pp.free)
}

// stream is one direction of a connection. Its callbacks are bound once per
// stream, so moving a chunk allocates nothing: a closure passed to
// RawConn.Read escapes through the interface call and would cost several
// heap allocations per chunk.
type stream struct {
	dst, src       *net.TCPConn
	srcRaw, dstRaw syscall.RawConn
	activity       *atomic.Uint64

	// Per-chunk state shared with the callbacks.
	buf  *[]byte
	pipe *pipe
	n    int
	err  error

	onReadable func(fd uintptr) bool // bound to readBuffer or readPipe
	onWritable func(fd uintptr) bool // bound to writePipe
	splice     bool
}

// pump copies src to dst until src reaches EOF (nil error) or either side
// fails. It returns the bytes written to dst. activity, when not nil, is
// incremented once per chunk so the idle timer can see the connection is
// alive without a clock read on the data path.
func pump(dst, src *net.TCPConn, activity *atomic.Uint64) (int64, error) {
	s := &stream{dst: dst, src: src, activity: activity}
	var err error
	if s.srcRaw, err = src.SyscallConn(); err != nil {
		return 0, err
	}
	if s.dstRaw, err = dst.SyscallConn(); err != nil {
		return 0, err
	}
	s.onReadable = s.readable
	return s.run()
}

func (s *stream) run() (int64, error) {
	var (
		total int64
		small int
	)
	for {
		var n int
		var err error
		if s.splice {
			n, err = s.spliceChunk()
			if n > 0 && n < smallSplice {
				if small++; small >= smallRun {
					s.splice, small = false, 0
				}
			} else if n >= smallSplice {
				small = 0
			}
		} else {
			var full bool
			n, full, err = s.bufferChunk()
			s.splice = full
		}
		total += int64(n)
		if n > 0 && s.activity != nil {
			s.activity.Add(1)
		}
		if err != nil {
			if err == io.EOF {
				return total, nil
			}
			return total, err
		}
	}
}

// readable is called by RawConn.Read with the source socket; returning
// false parks the goroutine until the socket is readable, holding nothing.
func (s *stream) readable(fd uintptr) bool {
	if s.splice {
		return s.readPipe(fd)
	}
	return s.readBuffer(fd)
}

func (s *stream) readBuffer(fd uintptr) bool {
	b := bufPool.Get().(*[]byte)
	for {
		s.n, s.err = unix.Read(int(fd), *b)
		if s.err != unix.EINTR {
			break
		}
	}
	if s.err == unix.EAGAIN {
		bufPool.Put(b)
		return false
	}
	s.buf = b
	return true
}

// bufferChunk waits until src is readable, reads into a pooled buffer and
// writes what it read to dst. full reports that the read filled the buffer.
func (s *stream) bufferChunk() (n int, full bool, err error) {
	s.buf, s.n, s.err = nil, 0, nil
	err = s.srcRaw.Read(s.onReadable)
	if err == nil {
		err = s.err
	}
	buf := s.buf
	if buf == nil {
		return 0, false, err
	}
	s.buf = nil
	defer bufPool.Put(buf)
	if err != nil {
		return 0, false, err
	}
	n = s.n
	if n == 0 {
		return 0, false, io.EOF
	}
	w, werr := s.dst.Write((*buf)[:n])
	if werr != nil {
		return w, false, werr
	}
	return n, n == len(*buf), nil
}

func (s *stream) readPipe(fd uintptr) bool {
	p, err := pipePool.get()
	if err != nil {
		s.err = err
		return true
	}
	for {
		s.n, s.err = spliceNB(int(fd), p.w, pipeSize)
		if s.err != unix.EINTR {
			break
		}
	}
	if s.err == unix.EAGAIN {
		pipePool.put(p)
		return false
	}
	s.pipe = p
	return true
}

func (s *stream) writePipe(fd uintptr) bool {
	p := s.pipe
	for p.buffered > 0 {
		m, e := spliceNB(p.r, int(fd), p.buffered)
		switch {
		case e == unix.EINTR:
			continue
		case e == unix.EAGAIN:
			return false // park until writable
		case e != nil:
			s.err = e
			return true
		case m == 0:
			s.err = io.ErrUnexpectedEOF
			return true
		}
		p.buffered -= m
	}
	return true
}

// spliceChunk waits until src is readable, splices what is there into a
// pooled pipe and from the pipe into dst.
func (s *stream) spliceChunk() (int, error) {
	s.pipe, s.n, s.err = nil, 0, nil
	err := s.srcRaw.Read(s.onReadable)
	if err == nil {
		err = s.err
	}
	p := s.pipe
	if p == nil {
		return 0, err
	}
	s.pipe = p
	defer func() {
		s.pipe = nil
		pipePool.put(p)
	}()
	if err != nil {
		return 0, err
	}
	n := s.n
	if n == 0 {
		return 0, io.EOF
	}
	p.buffered = n
	if s.onWritable == nil {
		s.onWritable = s.writePipe
	}
	s.err = nil
	err = s.dstRaw.Write(s.onWritable)
	if err == nil {
		err = s.err
	}
	if err != nil {
		return n - p.buffered, err
	}
	return n, nil
}

func spliceNB(in, out, max int) (int, error) {
	n, err := unix.Splice(in, nil, out, nil, max, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
	return int(n), err
}

// isExpectedClose reports errors that end a stream in the ordinary course of
// things (peer reset, broken pipe, a socket closed by our own shutdown), which
// are logged at debug level rather than as failures.
func isExpectedClose(err error) bool {
	return errors.Is(err, unix.ECONNRESET) || errors.Is(err, unix.EPIPE) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, unix.ETIMEDOUT) || errors.Is(err, unix.ENOTCONN)
}
