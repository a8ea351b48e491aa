package proxy

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// The copy engine moves bytes one way between two stream sockets (TCP or
// Unix). It differs from io.Copy in one way that matters for an ambassador:
// it holds a buffer or a splice pipe only while bytes are in flight. io.Copy
// on two *net.TCPConn splices through a pipe pair that it keeps for the
// whole life of the connection, so every idle connection pins two pipes (four descriptors and
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
	// pipeSize is requested with F_SETPIPE_SZ ($ATTACHE_PIPE_SIZE
	// overrides it); 1 MiB is the default /proc/sys/fs/pipe-max-size, so
	// it needs no privilege. It is also the most one splice asks to move.
	pipeSize = 1 << 20
	// smallSplice is the size under which a splice counts as small.
	smallSplice = 4 << 10
	// smallRun is how many small splices in a row switch back to buffers.
	smallRun = 4
)

// sock is a stream socket the copy engine can poll and splice, and
// half-close: *net.TCPConn or *net.UnixConn. Both are used as they are,
// never wrapped, so splice(2) sees the real descriptors.
type sock interface {
	net.Conn
	syscall.Conn
	CloseWrite() error
}

var (
	_ sock = (*net.TCPConn)(nil)
	_ sock = (*net.UnixConn)(nil)
)

var bufPool = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}

// pipePool keeps a bounded number of idle pipes. sync.Pool is not used: it
// drops items at GC without closing them, which would leak descriptors.
var pipePool = pipes{max: 256, size: envPipeSize()}

type pipe struct {
	r, w     int
	buffered int // bytes written into the pipe and not yet read out
}

type pipes struct {
	mu   sync.Mutex
	free []*pipe
	max  int
	// size is the capacity asked of new pipes. The kernel
	// may grant less (a user past fs.pipe-user-pages-soft gets a pipe of
	// a page or two): nothing may assume a splice fills it.
	size int
}

// envPipeSize reads $ATTACHE_PIPE_SIZE, the bytes to ask of each splice
// pipe: a way to run with a small pipe budget (tests do, to stand for a
// user whose pipes the kernel keeps small); pipeSize when unset or not a
// positive number.
func envPipeSize() int {
	v := os.Getenv("ATTACHE_PIPE_SIZE")
	if v == "" {
		return pipeSize
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		slog.Warn("ignoring ATTACHE_PIPE_SIZE: want a positive number of bytes", "value", v)
		return pipeSize
	}
	return n
}

func (pp *pipes) get() (*pipe, error) {
	pp.mu.Lock()
	if n := len(pp.free); n > 0 {
		p := pp.free[n-1]
		pp.free = pp.free[:n-1]
		pp.mu.Unlock()
		return p, nil
	}
	size := pp.size
	pp.mu.Unlock()
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, err
	}
	// Best effort: a smaller pipe still works, with more syscalls.
	_, _ = unix.FcntlInt(uintptr(fds[0]), unix.F_SETPIPE_SZ, size)
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

// copyDir is one direction of a connection on the goroutine engine, as dir
// is on the event loops (both engines call a direction a dir, and its two
// sockets src and dst). The whole copy loop runs inside a single
// RawConn.Read call on the source socket: its callback moves chunks until
// the socket has nothing more (EAGAIN), then returns false to park until
// the poller says it is readable again, holding no buffer and no pipe.
// The callbacks are bound once per direction, so moving a chunk allocates
// nothing (a closure passed to RawConn.Read escapes through the interface
// call and would cost several heap allocations per chunk).
//
// A short read is not taken to mean the socket is empty: a FIN that arrived
// with the data shows up only on the next read, and its edge was already
// used to wake us, so skipping that read would hang the direction.
type copyDir struct {
	dst, src       sock
	srcRaw, dstRaw syscall.RawConn
	moved          *atomic.Int64 // bytes written to dst so far

	onWritable func(fd uintptr) bool // bound to writePipe, when first needed
	pipe       *pipe                 // held only between splice in and splice out
	splice     bool                  // bulk mode
	small      int                   // small splices in a row

	total int64
	err   error // nil at EOF
	werr  error // from writePipe
}

// pump copies src to dst until src reaches EOF (nil error) or either side
// fails. It returns the bytes written to dst, and adds them to moved chunk
// by chunk as they go, so the admin API sees a long transfer progress and
// the idle timer sees the connection is alive without a clock read on the
// data path.
func pump(dst, src sock, moved *atomic.Int64) (int64, error) {
	d := &copyDir{dst: dst, src: src, moved: moved}
	var err error
	if d.srcRaw, err = src.SyscallConn(); err != nil {
		return 0, err
	}
	if d.dstRaw, err = dst.SyscallConn(); err != nil {
		return 0, err
	}
	if err := d.srcRaw.Read(d.readable); err != nil && d.err == nil {
		d.err = err // the source was closed under us (abort, shutdown)
	}
	return d.total, d.err
}

// readable is the RawConn.Read callback: it moves one chunk and returns
// false to wait for the next, or true when the direction is over (d.err
// says how; nil is EOF).
func (d *copyDir) readable(fd uintptr) bool {
	for {
		var n int
		var err error
		if d.splice {
			n, err = d.spliceChunk(int(fd))
			if err == errNoPipe {
				// Out of descriptors for a pipe (EMFILE, ENFILE): copy
				// this chunk instead, as the event loop does. The
				// direction goes on; only a socket error may end it.
				d.splice, d.small = false, 0
				continue
			}
			switch {
			case n > 0 && n < smallSplice:
				if d.small++; d.small >= smallRun {
					d.splice, d.small = false, 0
				}
			case n >= smallSplice:
				d.small = 0
			}
		} else {
			var full bool
			n, full, err = d.bufferChunk(int(fd))
			d.splice = full
		}
		if n > 0 {
			d.total += int64(n)
			d.moved.Add(int64(n))
		}
		switch err {
		case nil:
			continue // there may be more already
		case unix.EAGAIN:
			return false // nothing there: park, holding nothing
		case io.EOF:
			d.err = nil
			return true
		}
		d.err = err
		return true
	}
}

// bufferChunk reads into a pooled buffer and writes what it read to dst.
// full reports that the read filled the buffer (a bulk stream).
func (d *copyDir) bufferChunk(fd int) (n int, full bool, err error) {
	b := bufPool.Get().(*[]byte)
	defer bufPool.Put(b)
	for {
		n, err = unix.Read(fd, *b)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return 0, false, err
	}
	if n == 0 {
		return 0, false, io.EOF
	}
	w, err := d.dst.Write((*b)[:n])
	if err != nil {
		return w, false, err
	}
	return n, n == len(*b), nil
}

// errNoPipe: no pipe could be made for a splice (the process or the
// system is out of descriptors). Not the direction's failure: the caller
// copies through a buffer instead.
var errNoPipe = errors.New("no pipe for splice")

// spliceChunk splices what the socket holds into a pooled pipe and from the
// pipe into dst.
func (d *copyDir) spliceChunk(fd int) (int, error) {
	p, err := pipePool.get()
	if err != nil {
		return 0, errNoPipe
	}
	var n int
	for {
		n, err = spliceNB(fd, p.w, pipeSize)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil || n == 0 {
		pipePool.put(p)
		if err == nil {
			err = io.EOF
		}
		return 0, err
	}
	p.buffered = n
	d.pipe, d.werr = p, nil
	if d.onWritable == nil {
		d.onWritable = d.writePipe
	}
	err = d.dstRaw.Write(d.onWritable)
	if err == nil {
		err = d.werr
	}
	d.pipe = nil
	written := n - p.buffered
	pipePool.put(p) // closed instead of pooled if bytes are left in it
	return written, err
}

// writePipe is the RawConn.Write callback that drains d.pipe into dst.
func (d *copyDir) writePipe(fd uintptr) bool {
	p := d.pipe
	for p.buffered > 0 {
		m, e := spliceNB(p.r, int(fd), p.buffered)
		switch {
		case e == unix.EINTR:
			continue
		case e == unix.EAGAIN:
			return false // park until writable
		case e != nil:
			d.werr = e
			return true
		case m == 0:
			d.werr = io.ErrUnexpectedEOF
			return true
		}
		p.buffered -= m
	}
	return true
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
