package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The event loop engine carries plain TCP connections (a socket on both
// sides) the way HAProxy does: each loop is one goroutine around its own
// epoll instance, and it moves the bytes of every connection it owns itself,
// with non-blocking read/write (or splice for bulk streams), instead of two
// goroutines per connection parked in Go's poller. Under request/response
// traffic that is what costs: with goroutines, every message wakes one
// through the scheduler; here a single epoll_wait returns the events of many
// connections and the loop serves them in turn.
//
// Sockets are registered once, edge-triggered, for input and output, so the
// loop never calls epoll_ctl again: it remembers per side whether the socket
// may have bytes to read and whether it may take more, and clears the flag
// when a call returns EAGAIN. An idle connection holds no buffer and no pipe
// (bytes are read into the loop's own buffer and written on at once; only
// what the destination cannot take yet is kept, in a pooled buffer or
// pipe), no goroutine and no stack.
//
// The rest of a connection's life is unchanged: its handler goroutine reads
// nothing but dials the backend (rawDial: a non-blocking connect the loop
// reports back), then hands both sockets to the loop (adopt) and ends. The
// loop closes them when both directions are done or one failed, and calls
// finish, which counts, logs and untracks as for any connection. Anything
// else (abort on idle timeout, close_on_remove, shutdown) posts a close to
// the loop, the only goroutine that closes an adopted descriptor.

const (
	// loopEvents is how many events one epoll_wait returns at most.
	loopEvents = 256
	// dirBudget is how many chunks one direction moves in a turn; a bulk
	// stream that still has more waits for the next turn, so that it cannot
	// starve the loop's other connections.
	dirBudget = 16
)

// loop is one event loop: an epoll instance and the goroutine serving it.
type loop struct {
	epfd, wakefd int

	mu      sync.Mutex
	table   []slot // by descriptor
	gen     uint32
	queue   []func()
	spare   []func()
	woken   bool // an eventfd write is pending
	stopped bool

	// Owned by the loop's goroutine.
	scratch []byte
	again   []*dir
	done    chan struct{}
	log     func(msg string, args ...any)
}

// slot maps a registered descriptor to its side; gen tells a live
// registration from an earlier socket that had the same descriptor number,
// whose events may still be in flight.
type slot struct {
	s   *side
	gen uint32
}

// side is one socket of a connection on the loop.
type side struct {
	fd   int
	gen  uint32
	sock *rawSock

	// Set by the loop's goroutine only.
	readable, writable bool
	pr                 *pair
	rd, wr             *dir // the direction reading this socket, and writing it
	// connected hears the connect's completion while the dial waits.
	connected chan struct{}
}

// pair is one proxied connection on the loop: both sides, both directions.
type pair struct {
	lp              *loop
	p               *Proxy
	c               *conn
	client, backend *side
	up, down        dir // client to backend, backend to client
	started, closed bool
}

// dir is one direction of a pair.
type dir struct {
	pr       *pair
	src, dst *side
	moved    *atomic.Int64
	total    int64
	err      error
	done     bool // src reached EOF and every byte was written

	buf      *[]byte // bytes dst could not take yet: (*buf)[off:end]
	off, end int
	pipe     *pipe // or, in splice mode, in a pipe
	splice   bool
	small    int
	queued   bool // in lp.again
}

func newLoop(log func(string, ...any)) (*loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, os.NewSyscallError("eventfd", err)
	}
	// Generation 0 is the wake-up descriptor's; sockets get 1 and up.
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wakefd)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(wakefd)
		return nil, os.NewSyscallError("epoll_ctl", err)
	}
	lp := &loop{epfd: epfd, wakefd: wakefd, scratch: make([]byte, bufSize), done: make(chan struct{}), log: log}
	go lp.serve()
	return lp, nil
}

// register adds s to the loop's epoll set, edge-triggered, for input and
// output.
func (lp *loop) register(s *side) error {
	lp.mu.Lock()
	if lp.stopped {
		lp.mu.Unlock()
		return net.ErrClosed
	}
	if lp.gen++; lp.gen == 0 {
		lp.gen = 1
	}
	s.gen = lp.gen
	if s.fd >= len(lp.table) {
		t := make([]slot, max(2*len(lp.table), s.fd+1, 64))
		copy(t, lp.table)
		lp.table = t
	}
	lp.table[s.fd] = slot{s, s.gen}
	lp.mu.Unlock()
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(s.fd), Pad: int32(s.gen)}
	if err := unix.EpollCtl(lp.epfd, unix.EPOLL_CTL_ADD, s.fd, &ev); err != nil {
		lp.unregister(s)
		return os.NewSyscallError("epoll_ctl", err)
	}
	return nil
}

// unregister forgets s; the caller then closes its descriptor, which takes
// it out of the epoll set.
func (lp *loop) unregister(s *side) {
	lp.mu.Lock()
	if s.fd < len(lp.table) && lp.table[s.fd].gen == s.gen {
		lp.table[s.fd] = slot{}
	}
	lp.mu.Unlock()
}

// post runs f on the loop's goroutine, after what was posted before.
func (lp *loop) post(f func()) {
	lp.mu.Lock()
	defer lp.mu.Unlock()
	if lp.stopped {
		return
	}
	lp.queue = append(lp.queue, f)
	if !lp.woken {
		lp.woken = true
		one := [8]byte{1}
		_, _ = unix.Write(lp.wakefd, one[:])
	}
}

// stop ends the loop once what was posted before has run. Every connection
// must be over (Proxy.Shutdown calls it after they all finished).
func (lp *loop) stop() {
	lp.post(func() {
		lp.mu.Lock()
		lp.stopped = true
		lp.mu.Unlock()
	})
	<-lp.done
}

func (lp *loop) serve() {
	defer close(lp.done)
	events := make([]unix.EpollEvent, loopEvents)
	sides := make([]*side, loopEvents)
	busy := false
	for {
		var n int
		var err error
		if busy || len(lp.again) > 0 {
			// Events came last time: look again without blocking, and
			// without the scheduler's bookkeeping for a blocking call.
			n, err = epollPoll(lp.epfd, events)
		}
		if n == 0 && err == nil && len(lp.again) == 0 {
			n, err = unix.EpollWait(lp.epfd, events, -1)
		}
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			lp.log("event loop failed; connections on it are stuck", "error", err)
			return
		}
		busy = n > 0
		wake := false
		lp.mu.Lock()
		for i := range n {
			ev := &events[i]
			fd := int(ev.Fd)
			sides[i] = nil
			if fd == lp.wakefd && ev.Pad == 0 {
				wake = true
				continue
			}
			if fd < len(lp.table) && lp.table[fd].gen == uint32(ev.Pad) {
				sides[i] = lp.table[fd].s
			}
		}
		lp.mu.Unlock()
		for i := range n {
			if s := sides[i]; s != nil {
				lp.event(s, events[i].Events)
				sides[i] = nil
			}
		}
		if len(lp.again) > 0 {
			again := lp.again
			lp.again = nil
			for _, d := range again {
				d.queued = false
				lp.turn(d)
			}
		}
		if wake && lp.runQueue() {
			lp.close()
			return
		}
	}
}

// runQueue runs what was posted; it reports whether the loop was stopped.
func (lp *loop) runQueue() bool {
	var buf [8]byte
	_, _ = unix.Read(lp.wakefd, buf[:])
	lp.mu.Lock()
	q := lp.queue
	lp.queue, lp.spare = lp.spare[:0], nil
	lp.woken = false
	lp.mu.Unlock()
	for i, f := range q {
		lp.safely(nil, f)
		q[i] = nil
	}
	lp.mu.Lock()
	lp.spare = q[:0]
	stopped := lp.stopped
	lp.mu.Unlock()
	return stopped
}

func (lp *loop) close() {
	lp.mu.Lock()
	defer lp.mu.Unlock()
	unix.Close(lp.epfd)
	unix.Close(lp.wakefd)
}

// safely runs f, and turns a panic into the end of pr (when known) and a
// log line instead of the end of the process.
func (lp *loop) safely(pr *pair, f func()) {
	defer func() {
		if v := recover(); v != nil {
			lp.log("panic in event loop", "panic", v)
			if pr != nil {
				pr.c.markAborted("panic")
				pr.close()
			}
		}
	}()
	f()
}

// event handles the readiness epoll reported for s.
func (lp *loop) event(s *side, ev uint32) {
	if ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		s.readable = true
	}
	if ev&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		s.writable = true
	}
	pr := s.pr
	if pr == nil {
		// Not adopted yet: a dial waits for the connect.
		if s.connected != nil && ev&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
			select {
			case s.connected <- struct{}{}:
			default:
			}
		}
		return
	}
	lp.safely(pr, func() {
		if s.writable && s.wr.pending() {
			lp.turn(s.wr)
		}
		if s.readable {
			lp.turn(s.rd)
		}
	})
}

// turn moves d's bytes until its source has no more for now, its
// destination takes no more, or its budget is spent.
func (lp *loop) turn(d *dir) {
	pr := d.pr
	for range dirBudget {
		if pr.closed || d.done {
			return
		}
		if d.pending() {
			if !d.dst.writable || !lp.flush(d) {
				return
			}
		}
		if !d.src.readable || !lp.move(d) {
			return
		}
	}
	if !pr.closed && !d.done && !d.queued && d.src.readable && !d.pending() {
		d.queued = true
		lp.again = append(lp.again, d)
	}
}

func (d *dir) pending() bool {
	return d.buf != nil || (d.pipe != nil && d.pipe.buffered > 0)
}

func (d *dir) count(n int) {
	d.total += int64(n)
	d.moved.Add(int64(n))
}

// move reads one chunk from d's source and writes it on; it reports
// whether to go on.
func (lp *loop) move(d *dir) bool {
	if d.splice {
		return lp.moveSplice(d)
	}
	var n int
	var err error
	for {
		n, err = unix.Read(d.src.fd, lp.scratch)
		if err != unix.EINTR {
			break
		}
	}
	switch {
	case err == unix.EAGAIN:
		d.src.readable = false
		return false
	case err != nil:
		d.pr.fail(d, "read", err)
		return false
	case n == 0:
		d.pr.eof(d)
		return false
	}
	if !lp.write(d, lp.scratch[:n]) {
		return false
	}
	// A read that filled the buffer means a bulk stream: splice it.
	d.splice = n == len(lp.scratch)
	return true
}

// write writes b to d's destination; what it cannot take yet is kept in a
// pooled buffer until the destination is writable again.
func (lp *loop) write(d *dir, b []byte) bool {
	n, ok := lp.writeOut(d, b)
	if !ok && n >= 0 {
		buf := bufPool.Get().(*[]byte)
		d.buf, d.off, d.end = buf, 0, copy(*buf, b[n:])
	}
	return ok
}

// flush writes what d holds; it reports whether everything went.
func (lp *loop) flush(d *dir) bool {
	if d.pipe != nil {
		return lp.flushPipe(d)
	}
	n, ok := lp.writeOut(d, (*d.buf)[d.off:d.end])
	if !ok {
		if n >= 0 {
			d.off += n
		}
		return false
	}
	bufPool.Put(d.buf)
	d.buf = nil
	return true
}

// writeOut writes b to d's destination until it is all written (true) or
// the destination takes no more for now (false, and how much went). n is
// -1 when the write failed and the pair is closed.
func (lp *loop) writeOut(d *dir, b []byte) (n int, ok bool) {
	for n < len(b) {
		m, err := unix.Write(d.dst.fd, b[n:])
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			d.dst.writable = false
			return n, false
		case err != nil:
			d.pr.fail(d, "write", err)
			return -1, false
		}
		d.count(m)
		n += m
	}
	return n, true
}

// moveSplice splices one chunk from d's source into a pipe and from the
// pipe to the destination. A run of small chunks switches back to reads
// and writes, which cost less for a few hundred bytes.
func (lp *loop) moveSplice(d *dir) bool {
	pp, err := pipePool.get()
	if err != nil {
		d.splice = false // out of descriptors for pipes: copy instead
		return true
	}
	var n int
	for {
		n, err = spliceNB(d.src.fd, pp.w, pipeSize)
		if err != unix.EINTR {
			break
		}
	}
	switch {
	case err == unix.EAGAIN:
		pipePool.put(pp)
		d.src.readable = false
		return false
	case err != nil:
		pipePool.put(pp)
		d.pr.fail(d, "splice", err)
		return false
	case n == 0:
		pipePool.put(pp)
		d.pr.eof(d)
		return false
	}
	pp.buffered = n
	d.pipe = pp
	if n < smallSplice {
		if d.small++; d.small >= smallRun {
			d.splice, d.small = false, 0
		}
	} else {
		d.small = 0
	}
	return lp.flushPipe(d)
}

func (lp *loop) flushPipe(d *dir) bool {
	pp := d.pipe
	for pp.buffered > 0 {
		m, err := spliceNB(pp.r, d.dst.fd, pp.buffered)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			d.dst.writable = false
			return false
		case err != nil:
			d.pr.fail(d, "splice", err)
			return false
		case m == 0:
			d.pr.fail(d, "splice", io.ErrUnexpectedEOF)
			return false
		}
		d.count(m)
		pp.buffered -= m
	}
	pipePool.put(pp)
	d.pipe = nil
	return true
}

// eof ends d after its source's EOF: the destination's write half is shut
// so the peer sees the end too, and the other direction carries on, unless
// it is over as well; then the pair closes (close sends the same FIN).
func (pr *pair) eof(d *dir) {
	d.done = true
	other := &pr.up
	if d == &pr.up {
		other = &pr.down
	}
	if other.done {
		pr.close()
		return
	}
	_ = unix.Shutdown(d.dst.fd, unix.SHUT_WR)
}

// fail ends the pair after an error in d: a reset stream cannot be
// finished, so both sides close.
func (pr *pair) fail(d *dir, op string, err error) {
	d.err = &net.OpError{Op: op, Net: "tcp", Err: os.NewSyscallError(op, err)}
	pr.close()
}

// start wires the pair's sides once the loop owns them, and moves what
// arrived meanwhile.
func (pr *pair) start() {
	if pr.closed {
		return
	}
	pr.started = true
	c := pr.c
	pr.up = dir{pr: pr, src: pr.client, dst: pr.backend, moved: &c.movedIn}
	pr.down = dir{pr: pr, src: pr.backend, dst: pr.client, moved: &c.movedOut}
	pr.client.pr, pr.client.rd, pr.client.wr = pr, &pr.up, &pr.down
	pr.backend.pr, pr.backend.rd, pr.backend.wr = pr, &pr.down, &pr.up
	// Fresh sockets have room to write; what has come in shows in the
	// flags epoll already set.
	pr.client.writable, pr.backend.writable = true, true
	if pr.client.readable {
		pr.lp.turn(&pr.up)
	}
	if pr.backend.readable {
		pr.lp.turn(&pr.down)
	}
}

// close closes both sockets, gives back what the directions held, and
// finishes the connection. It runs on the loop's goroutine, once.
func (pr *pair) close() {
	if pr.closed {
		return
	}
	pr.closed = true
	for _, s := range []*side{pr.client, pr.backend} {
		pr.lp.unregister(s)
		s.sock.closedByLoop() // first: LocalAddr must not read a reused descriptor
		unix.Close(s.fd)
		s.pr, s.rd, s.wr = nil, nil, nil
	}
	for _, d := range []*dir{&pr.up, &pr.down} {
		if d.buf != nil {
			bufPool.Put(d.buf)
			d.buf = nil
		}
		if d.pipe != nil {
			pipePool.put(d.pipe) // closed, not pooled, when bytes are left in it
			d.pipe = nil
		}
	}
	c := pr.c
	c.bytesIn, c.upErr = pr.up.total, pr.up.err
	c.bytesOut, c.downErr = pr.down.total, pr.down.err
	pr.p.finish(c)
}

// adopt hands c's two sockets to lp, which serves them from now on. It
// reports false when c was aborted meanwhile (the caller then finishes it).
func (p *Proxy) adopt(c *conn, lp *loop, cs, bs *rawSock) bool {
	pr := &pair{lp: lp, p: p, c: c, client: &side{fd: cs.fd, sock: cs}, backend: bs.side}
	// Under c.mu, so that an abort either comes first (and the sockets are
	// closed here, by the caller) or posts its close after the start.
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.aborted {
		return false
	}
	if err := lp.register(pr.client); err != nil {
		return false
	}
	for _, s := range []*rawSock{cs, bs} {
		s.mu.Lock()
		s.state, s.lp, s.pr = rawOwned, lp, pr
		s.mu.Unlock()
	}
	lp.post(pr.start)
	return true
}

// connect opens a socket to ap and waits, until ctx is done, for the loop
// to report the connect's outcome.
func (lp *loop) connect(ctx context.Context, ap netip.AddrPort, keepAlive time.Duration) (*rawSock, error) {
	remote := net.TCPAddrFromAddrPort(ap)
	fail := func(call string, err error) error {
		return &net.OpError{Op: "dial", Net: "tcp", Addr: remote, Err: os.NewSyscallError(call, err)}
	}
	a := ap.Addr().Unmap()
	var (
		sa  unix.Sockaddr
		fam = unix.AF_INET
	)
	if a.Is4() {
		sa = &unix.SockaddrInet4{Port: int(ap.Port()), Addr: a.As4()}
	} else {
		fam = unix.AF_INET6
		sa6 := &unix.SockaddrInet6{Port: int(ap.Port()), Addr: a.As16()}
		if z := a.Zone(); z != "" {
			if ifc, err := net.InterfaceByName(z); err == nil {
				sa6.ZoneId = uint32(ifc.Index)
			}
		}
		sa = sa6
	}
	fd, err := unix.Socket(fam, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return nil, fail("socket", err)
	}
	if err := backendSockopts(fd, keepAlive); err != nil {
		unix.Close(fd)
		return nil, fail("setsockopt", err)
	}
	s := &side{fd: fd, connected: make(chan struct{}, 1)}
	if err := lp.register(s); err != nil {
		unix.Close(fd)
		return nil, &net.OpError{Op: "dial", Net: "tcp", Addr: remote, Err: err}
	}
	drop := func(err error) (*rawSock, error) {
		lp.unregister(s)
		unix.Close(fd)
		return nil, err
	}
	switch err := unix.Connect(fd, sa); err {
	case nil, unix.EINPROGRESS, unix.EINTR, unix.EALREADY:
	default:
		return drop(fail("connect", err))
	}
	select {
	case <-s.connected:
	case <-ctx.Done():
		err := ctx.Err()
		if errors.Is(err, context.DeadlineExceeded) {
			err = os.ErrDeadlineExceeded
		}
		return drop(&net.OpError{Op: "dial", Net: "tcp", Addr: remote, Err: err})
	}
	e, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err == nil && e != 0 {
		err = unix.Errno(e)
	}
	if err != nil {
		return drop(fail("connect", err))
	}
	rs := newRawSock(fd, remote)
	rs.side, rs.lp = s, lp
	s.sock = rs
	return rs, nil
}

// backendSockopts sets TCP_NODELAY and, when keepAlive is positive, TCP
// keepalive on a backend socket before it connects.
func backendSockopts(fd int, keepAlive time.Duration) error {
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
		return err
	}
	if keepAlive <= 0 {
		return nil
	}
	secs := max(int(keepAlive/time.Second), 1)
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1); err != nil {
		return err
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, secs); err != nil {
		return err
	}
	return unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, secs)
}

// epollPoll returns the events ready now, without blocking. It is a raw
// system call: it cannot block, so the scheduler need not know of it.
func epollPoll(epfd int, events []unix.EpollEvent) (int, error) {
	r, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// loops is the Proxy's set of event loops, started on first use.
type loops struct {
	once sync.Once
	all  []*loop
	err  error
}

// DefaultLoops is how many event loops a Proxy runs when Loops is 0: one
// per two CPUs the Go runtime may use, at least one. On a small machine the
// kernel's own work for each message (and the servers beside the proxy)
// needs the other CPU more than a second loop would.
func DefaultLoops() int { return max(runtime.GOMAXPROCS(0)/2, 1) }

// envLoops reads $ATTACHE_LOOPS (the count, or -1 for goroutines), which
// stands when Loops is 0: an operator's override without a flag, and how
// the tests run the whole proxy under either engine. 0 when unset.
func envLoops(log *slog.Logger) int {
	v := os.Getenv("ATTACHE_LOOPS")
	if v == "" {
		return 0
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < -1 {
		log.Warn("ignoring ATTACHE_LOOPS: want a count of event loops, 0, or -1 for goroutines", "value", v)
		return 0
	}
	return n
}

// loopFor returns the loop c's sockets go on, or nil when c is not for the
// loop engine (it is off, or the client socket is not one of its own).
func (p *Proxy) loopFor(c *conn) *loop {
	if s, ok := c.client.(*rawSock); !ok || s.netConn() != nil {
		return nil
	}
	all := p.eventLoops()
	if len(all) == 0 {
		return nil
	}
	return all[c.id%uint64(len(all))]
}

// eventLoops starts the loops on first use; none when Loops is negative or
// they could not be made (the goroutine engine serves then).
func (p *Proxy) eventLoops() []*loop {
	p.loops.once.Do(func() {
		n := p.Loops
		if n == 0 {
			n = envLoops(p.logger())
		}
		if n < 0 {
			return
		}
		if n == 0 {
			n = DefaultLoops()
		}
		warn := func(msg string, args ...any) { p.logger().Error(msg, args...) }
		for range n {
			lp, err := newLoop(warn)
			if err != nil {
				p.loops.err = err
				p.logger().Warn("event loop unavailable; connections use goroutines", "error", err)
				break
			}
			p.loops.all = append(p.loops.all, lp)
		}
	})
	return p.loops.all
}

// stopLoops ends the event loops after the last connection finished.
func (p *Proxy) stopLoops() {
	p.loops.once.Do(func() {}) // none started later
	for _, lp := range p.loops.all {
		lp.stop()
	}
}
