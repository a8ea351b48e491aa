package torture

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/attache/attache/internal/testenv"
)

// Peers: the senders and receivers at both ends of a connection. Each
// end of a connection has one outStream (the payload it sends) and one
// inStream (the payload it receives and checks).
//
// Senders put the bytes on the socket with write(2) in sizes from one
// byte to 1 MiB, with writev(2), with sendfile(2) from a memfd, or with
// splice(2) from another socket, the way a proxy in front of attache
// would. sendfile and splice hand the kernel page fragments, whose skbs
// fill a splice pipe's slots long before its bytes: the sender the loop
// engine once stalled on. Receivers read fast, paced (small reads with
// sleeps), or fast with stops of seconds.

// sock is a connected stream socket: *net.TCPConn or *net.UnixConn.
type sock interface {
	net.Conn
	syscall.Conn
	CloseWrite() error
}

// readBufs holds the receivers' read buffers, taken for one read at a
// time, so hundreds of idle connections do not hold one each.
var readBufs = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// outStream sends one payload on a socket.
type outStream struct {
	c        sock
	how      sender
	p        payload
	total    int64 // the payload's length
	writeMax int
	rng      *rand.Rand
	sent     atomic.Int64 // bytes handed to the socket so far

	buf  []byte  // write, writev
	file int     // sendfile: a memfd holding the payload; 0 until made
	feed *feeder // splice
}

func newOutStream(c sock, how sender, p payload, total int64, writeMax uint32, rng *rand.Rand) *outStream {
	return &outStream{c: c, how: how, p: p, total: total, writeMax: int(writeMax), rng: rng}
}

// close frees what the sender made (memfd, feeding socket pair).
func (o *outStream) close() {
	if o.file > 0 {
		unix.Close(o.file)
		o.file = 0
	}
	if o.feed != nil {
		o.feed.close()
		o.feed = nil
	}
}

// send sends the payload's next n bytes.
func (o *outStream) send(n int64) error {
	if off := o.sent.Load(); off+n > o.total {
		return fmt.Errorf("internal: send %d bytes at %d of a %d-byte payload", n, off, o.total)
	}
	var err error
	switch o.how {
	case sendWrite:
		err = o.write(n)
	case sendWritev:
		err = o.writev(n)
	case sendSendfile:
		err = o.sendfile(n)
	case sendSplice:
		err = o.splice(n)
	}
	if err != nil {
		return fmt.Errorf("%s at offset %d: %w", o.how, o.sent.Load(), err)
	}
	return nil
}

// size draws the next write's size, at most n: half the time the
// largest, else any size up to it.
func (o *outStream) size(n int64) int {
	k := int64(o.writeMax)
	if o.rng.IntN(2) == 0 {
		k = 1 + o.rng.Int64N(k)
	}
	return int(min(k, n))
}

func (o *outStream) buffer(k int) []byte {
	if len(o.buf) < k {
		o.buf = make([]byte, min(int64(o.writeMax), o.total))
	}
	return o.buf[:k]
}

func (o *outStream) write(n int64) error {
	for n > 0 {
		b := o.buffer(o.size(n))
		o.p.fill(o.sent.Load(), b)
		w, err := o.c.Write(b)
		o.sent.Add(int64(w))
		if err != nil {
			return err
		}
		n -= int64(w)
	}
	return nil
}

// writev sends each chunk as up to 64 pieces in one writev(2).
func (o *outStream) writev(n int64) error {
	for n > 0 {
		b := o.buffer(o.size(n))
		o.p.fill(o.sent.Load(), b)
		var bufs net.Buffers
		for len(b) > 0 {
			cut := len(b)
			if len(bufs) < 63 && len(b) > 1 {
				cut = 1 + o.rng.IntN(len(b))
			}
			bufs = append(bufs, b[:cut])
			b = b[cut:]
		}
		w, err := bufs.WriteTo(o.c)
		o.sent.Add(w)
		if err != nil {
			return err
		}
		n -= w
	}
	return nil
}

// sendfile sends from a memfd that holds the whole payload, made at the
// first call: pages handed to sendfile must not change while the socket
// still holds them, so the file is written once and never reused.
func (o *outStream) sendfile(n int64) error {
	if o.file == 0 {
		fd, err := payloadFile(o.p, o.total)
		if err != nil {
			return err
		}
		o.file = fd
	}
	raw, err := o.c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = raw.Write(func(fd uintptr) bool {
		for n > 0 {
			// Chunks of up to 4 MiB, some of them odd-sized.
			k := int(min(n, 1+o.rng.Int64N(4<<20)))
			off := o.sent.Load()
			w, err := unix.Sendfile(int(fd), o.file, &off, k)
			if w > 0 {
				o.sent.Add(int64(w))
				n -= int64(w)
			}
			switch {
			case err == unix.EAGAIN:
				return false // wait until writable
			case err == unix.EINTR:
			case err != nil:
				serr = err
				return true
			case w == 0:
				serr = io.ErrUnexpectedEOF
				return true
			}
		}
		return true
	})
	if err == nil {
		err = serr
	}
	return err
}

// payloadFile makes a memfd holding the payload's first total bytes.
func payloadFile(p payload, total int64) (int, error) {
	fd, err := unix.MemfdCreate("torture-payload", unix.MFD_CLOEXEC)
	if err != nil {
		return 0, fmt.Errorf("memfd_create: %w", err)
	}
	b := make([]byte, min(total, 1<<20))
	for off := int64(0); off < total; {
		k := min(int64(len(b)), total-off)
		p.fill(off, b[:k])
		w, err := unix.Pwrite(fd, b[:k], off)
		if err != nil {
			unix.Close(fd)
			return 0, fmt.Errorf("writing the memfd: %w", err)
		}
		off += int64(w)
	}
	return fd, nil
}

// splice feeds the bytes into one end of a loopback TCP connection and
// splices them from the other end, through a pipe, into the socket: what
// a splicing proxy in front of attache does.
func (o *outStream) splice(n int64) error {
	if o.feed == nil {
		f, err := newFeeder(o.rng)
		if err != nil {
			return err
		}
		o.feed = f
	}
	return o.feed.move(o, n)
}

// inStream receives one payload and checks every byte.
type inStream struct {
	c     sock
	how   receiver
	d     direction
	v     verifier
	rng   *rand.Rand
	ctx   context.Context // done when the connection is given up (stops end early)
	stops []int64         // for recvStop: offsets at which it stops
	pause time.Duration   // how long each stop lasts
	got   atomic.Int64    // bytes received and checked so far
	// closedAtEOF: when the read returned EOF, the socket was already
	// closed (TCP_CLOSE), as a reset leaves it, not half-open as a FIN
	// alone does (see resetSeen).
	closedAtEOF bool
}

func newInStream(ctx context.Context, c sock, how receiver, d direction, p payload, want int64, rng *rand.Rand, pause time.Duration) *inStream {
	in := &inStream{c: c, how: how, d: d, v: verifier{p: p, want: want}, rng: rng, ctx: ctx, pause: pause}
	if how == recvStop && want > 0 {
		for range 1 + rng.IntN(2) {
			in.stops = append(in.stops, rng.Int64N(want))
		}
		slices.Sort(in.stops)
	}
	return in
}

// readSize is how much the next read asks for, at most n.
func (in *inStream) readSize(n int64, bufLen int) int {
	k := int64(bufLen)
	if in.how == recvPaced {
		k = 1 + in.rng.Int64N(16<<10)
	}
	return int(min(k, n))
}

// between runs between reads: a paced receiver sleeps, a stopping one
// stops at its offsets.
func (in *inStream) between() {
	switch in.how {
	case recvPaced:
		sleep(in.ctx, time.Duration(in.rng.IntN(2000))*time.Microsecond)
	case recvStop:
		at := in.v.got
		for len(in.stops) > 0 && in.stops[0] <= at {
			in.stops = in.stops[1:]
			sleep(in.ctx, in.pause)
		}
	}
}

// recv reads and checks the next n bytes; EOF before them is an error.
func (in *inStream) recv(n int64) error {
	bp := readBufs.Get().(*[]byte)
	defer readBufs.Put(bp)
	for n > 0 {
		in.between()
		r, err := in.c.Read((*bp)[:in.readSize(n, len(*bp))])
		if r > 0 {
			if err := in.v.add(in.d, (*bp)[:r]); err != nil {
				return err
			}
			in.got.Store(in.v.got)
			n -= int64(r)
		}
		if err == io.EOF {
			return fmt.Errorf("%s: EOF after %d of %d bytes", in.d, in.v.got, in.v.want)
		}
		if err != nil {
			return fmt.Errorf("%s: receiving at offset %d of %d: %w", in.d, in.v.got, in.v.want, err)
		}
	}
	return nil
}

// expectEOF reads once more: it must be the end of the stream, no byte.
func (in *inStream) expectEOF() error {
	var b [1]byte
	r, err := in.c.Read(b[:])
	switch {
	case r > 0:
		return in.v.add(in.d, b[:r]) // an extra byte: corrupt
	case err == io.EOF:
		return nil
	case err != nil:
		return fmt.Errorf("%s: waiting for EOF after %d bytes: %w", in.d, in.v.got, err)
	}
	return fmt.Errorf("%s: empty read while waiting for EOF", in.d)
}

// readToEnd reads and checks until the stream ends, by EOF (eof true) or
// by an error (err set); a corrupt byte is returned as err too, with
// eof false.
func (in *inStream) readToEnd() (eof bool, err error) {
	bp := readBufs.Get().(*[]byte)
	defer readBufs.Put(bp)
	for {
		in.between()
		r, rerr := in.c.Read((*bp)[:in.readSize(1<<30, len(*bp))])
		if r > 0 {
			if err := in.v.add(in.d, (*bp)[:r]); err != nil {
				return false, err
			}
			in.got.Store(in.v.got)
		}
		if rerr == io.EOF {
			in.closedAtEOF = testenv.TCPClosed(in.c)
			return true, nil
		}
		if rerr != nil {
			return false, rerr
		}
	}
}

// sleep waits d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// feeder is the socket a splice sender splices from: a loopback TCP
// connection (in, out) whose in end the sender writes the payload into,
// and a pipe.
type feeder struct {
	in, out *net.TCPConn
	pr, pw  int
	buf     []byte
}

// feedListener is where feeders connect their two ends. Pairs are made
// under feedMu, so the connection accepted is the one just dialled.
var (
	feedMu       sync.Mutex
	feedListener *net.TCPListener
)

func newFeeder(rng *rand.Rand) (*feeder, error) {
	feedMu.Lock()
	defer feedMu.Unlock()
	if feedListener == nil {
		ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			return nil, fmt.Errorf("feeder listener: %w", err)
		}
		feedListener = ln
	}
	in, err := net.DialTCP("tcp", nil, feedListener.Addr().(*net.TCPAddr))
	if err != nil {
		return nil, fmt.Errorf("feeder dial: %w", err)
	}
	out, err := feedListener.AcceptTCP()
	if err != nil {
		in.Close()
		return nil, fmt.Errorf("feeder accept: %w", err)
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		in.Close()
		out.Close()
		return nil, fmt.Errorf("feeder pipe: %w", err)
	}
	// Half the pipes are as big as attache's, half the default 64 KiB.
	if rng.IntN(2) == 0 {
		_, _ = unix.FcntlInt(uintptr(p[0]), unix.F_SETPIPE_SZ, 1<<20)
	}
	return &feeder{in: in, out: out, pr: p[0], pw: p[1], buf: make([]byte, 64<<10)}, nil
}

func (f *feeder) close() {
	f.in.Close()
	f.out.Close()
	unix.Close(f.pr)
	unix.Close(f.pw)
}

// move splices o's next n bytes into o's socket: a goroutine writes them
// into the feeding connection while this one splices them out of it.
func (f *feeder) move(o *outStream, n int64) error {
	start := o.sent.Load()
	werr := make(chan error, 1)
	go func() {
		for off := start; off < start+n; {
			k := min(int64(len(f.buf)), start+n-off)
			o.p.fill(off, f.buf[:k])
			w, err := f.in.Write(f.buf[:k])
			if err != nil {
				werr <- err
				return
			}
			off += int64(w)
		}
		werr <- nil
	}()
	err := f.splice(o, n)
	if err != nil {
		// Unblock the writer (the feeding connection is useless now).
		f.in.Close()
		f.out.Close()
		<-werr
		return err
	}
	return <-werr
}

func (f *feeder) splice(o *outStream, n int64) error {
	src, err := f.out.SyscallConn()
	if err != nil {
		return err
	}
	dst, err := o.c.SyscallConn()
	if err != nil {
		return err
	}
	var (
		inPipe int
		serr   error
	)
	fill := func(fd uintptr) bool {
		k, err := spliceNB(int(fd), f.pw, int(min(n, 1<<20)))
		switch {
		case err == unix.EAGAIN:
			return false
		case err != nil:
			serr = err
		case k == 0:
			serr = errors.New("the feeding connection ended early")
		}
		inPipe = k
		return true
	}
	drain := func(fd uintptr) bool {
		for inPipe > 0 {
			k, err := spliceNB(f.pr, int(fd), inPipe)
			if err == unix.EAGAIN {
				return false
			}
			if err != nil {
				serr = err
				return true
			}
			inPipe -= k
			n -= int64(k)
			o.sent.Add(int64(k))
		}
		return true
	}
	for n > 0 {
		if err := src.Read(fill); err != nil {
			return err
		}
		if serr != nil {
			return serr
		}
		if err := dst.Write(drain); err != nil {
			return err
		}
		if serr != nil {
			return serr
		}
	}
	return nil
}

// spliceNB is one non-blocking splice(2), retried on EINTR.
func spliceNB(in, out, n int) (int, error) {
	for {
		k, err := unix.Splice(in, nil, out, nil, n, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
		if err != unix.EINTR {
			return int(k), err
		}
	}
}
