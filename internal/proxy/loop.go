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

	"github.com/attache/attache/internal/backend"
	"github.com/attache/attache/internal/loophint"
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
// An idle connection holds no buffer and no pipe (bytes are read into the
// loop's own buffer and written on at once; only what the destination
// cannot take yet is kept, in a pooled buffer or pipe), no goroutine and
// no stack.
//
// Readiness follows the rules in the package documentation (doc.go, "The
// event loop's rules"): which call may decide that a socket is drained or
// a direction is done, and why each is safe. Keep them there, and keep
// the code to them.
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
	// parked is the epoll instance in Go's poller, where a loop that
	// carries link streams waits (loopwait.go).
	parked *parkedEpoll

	mu    sync.Mutex
	table []slot // by descriptor
	gen   uint32
	queue []func()
	spare []func()
	// woken: the loop looks at the queue before it waits again (it is
	// awake, or an eventfd write is pending), so a post need not write
	// the eventfd.
	woken   bool
	stopped bool
	// index is the loop's place in Proxy.loops.all (loophint).
	index int

	// Owned by the loop's goroutine.
	scratch []byte
	// out is moveStreamOut's writev: the socket, the slices and iovecs
	// it reuses, its error, and the function given to TryWriteTo, made
	// once (a closure per call would be allocated per call).
	out struct {
		fd     int
		err    error
		slices [][]byte
		iovecs []unix.Iovec
		write  func([][]byte) int
	}
	// in is moveIntoStream's read, likewise: the socket, its error and
	// how much room the stream gave the read.
	in struct {
		fd, room int
		err      error
		read     func([]byte) int
	}
	again []*dir
	// waiting are the pairs whose connect is in progress, checked for
	// their timeout every checkEvery; the loop keeps these itself, since
	// a Go timer per connection would wake the runtime's poller each time.
	waiting   []*pair
	lastCheck time.Time
	// keepAlive are the dialled sockets whose keepalive is switched on
	// once their connection lasts (loopkeepalive.go), from keepAliveHead.
	keepAlive     []keepAliveDue
	keepAliveHead int
	// addrs are the backend addresses the loop dialled (tcpAddr).
	addrs map[netip.AddrPort]*net.TCPAddr
	spec  specScore
	// begun counts the connections the loop took over from the loop
	// that accepted them, or accepted itself (acceptOnLoop), for tests.
	begun atomic.Int64
	// streams counts the link streams the loop carries (side.vs): while
	// it carries any, it waits as linked says (see serve).
	streams int
	// sessions are the link sessions the loop reads (loopsession.go),
	// sessionCount how many, for ReadSession's choice of a loop; sessAgain
	// those whose read stopped at its budget.
	sessions     map[*side]struct{}
	sessionCount atomic.Int64
	sessAgain    []*side
	// polling is set while the loop waits for events: it has nothing to
	// do, so a connection handed to it now starts at once (acceptOnLoop).
	polling atomic.Bool
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

// side is one socket of a connection on the loop, or a stream of a
// multiplexed link (vs), which has no descriptor: its reads and writes
// never wait, and it tells the loop when one that could not go on may
// (streamReady), where a socket has epoll.
type side struct {
	fd   int
	gen  uint32
	sock *rawSock
	vs   loopStream
	rs   *sessionRead // or a link session the loop reads (loopsession.go)
	// readyQueued is set while a streamReady for vs is posted and has
	// not run: one is enough.
	readyQueued atomic.Bool
	readyFn     func()

	// Set by the loop's goroutine only, and the readiness flags only
	// through the helpers in loopready.go.
	readable, writable bool
	hup                bool // the peer shut its side (or the socket failed)
	urgent             bool // TCP urgent data came: a short read proves nothing
	spec               bool // readable is a guess (see speculate)
	outArmed           bool // epoll reports output for it (wantSend)
	pr                 *pair
	rd, wr             *dir // the direction reading this socket, and writing it
	// connected hears the connect's completion while a handler
	// goroutine's dial waits (rawDial).
	connected chan struct{}
	// ll is set when the side is a listener the loop accepts on;
	// detached once it closed.
	ll       *loopListener
	detached bool
}

// pair is one proxied connection on the loop: both sides, both directions.
type pair struct {
	lp              *loop
	p               *Proxy
	c               *conn
	client, backend *side
	up, down        dir // client to backend, backend to client
	phase           pairPhase
	// reset: bytes were lost on the way (a peer reset, a write failed),
	// so both sockets close with a reset (RST), never a FIN that would
	// pass a cut stream off as a complete one.
	reset bool

	// While the loop dials (loopaccept.go): the socket connecting, and
	// the backend picked for it (counted against it until the connection
	// holds it). The retry budget is the connection's (conn.dialBudget).
	ctx        context.Context
	connecting *side
	target     *backend.Backend
	dialStart  time.Time
	// early holds what the client sent before the backend was dialled
	// ((*early)[:earlyN]); earlyOff of it went out already.
	early            *[]byte
	earlyN, earlyOff int
	connectBy        time.Time // when the connect in progress times out
	waitIdx          int       // its index in lp.waiting
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
	// held: src, a link stream, still holds bytes that dst, a socket,
	// could not take yet (moveStreamOut leaves them in the stream).
	held   bool
	pipe   *pipe // or, in splice mode, in a pipe
	splice bool
	small  int
	queued bool // in lp.again
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
	parked, err := newParkedEpoll(epfd)
	if err != nil {
		unix.Close(epfd)
		unix.Close(wakefd)
		return nil, err
	}
	lp := &loop{epfd: epfd, wakefd: wakefd, parked: parked, scratch: make([]byte, bufSize), done: make(chan struct{}), log: log, woken: true}
	lp.out.write = lp.writevOut
	lp.in.read = lp.readIn
	lp.out.slices = make([][]byte, 0, 16) // h2mux hands at most 16 at once
	go lp.serve()
	return lp, nil
}

// post runs f on the loop's goroutine, after what was posted before. It
// reports false, dropping f, once the loop has stopped.
func (lp *loop) post(f func()) bool {
	lp.mu.Lock()
	defer lp.mu.Unlock()
	if lp.stopped {
		return false
	}
	lp.queue = append(lp.queue, f)
	if !lp.woken {
		lp.woken = true
		one := [8]byte{1}
		_, _ = unix.Write(lp.wakefd, one[:])
	}
	return true
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

// serve runs the loop. While it is busy it waits for events in a raw
// epoll_wait, which the scheduler never sees: an ordinary blocking call
// makes the runtime's sysmon thread wake every 20µs to take the P back and
// the return compete for one again, measurably slower on a busy loop (and
// parking in Go's own poller costs a scheduler wake-up at every pause).
// The raw wait keeps the loop's P, so it lasts at most hotWait; once a wait
// finds nothing, the loop is idle and blocks in an ordinary system call
// that gives its P back (once sysmon takes it), so that the rest of the
// process (health checks, discovery, the admin API, other loops) runs even
// on a single CPU. A loop that carries link streams or reads link sessions
// parks in Go's poller instead of the blocking call (parkedEpoll), and
// waits raw only under the conditions linked describes: the sessions'
// goroutines need a P at once.
func (lp *loop) serve() {
	defer close(lp.done)
	defer unix.Close(lp.epfd)
	defer lp.parked.close()
	events := make([]unix.EpollEvent, loopEvents)
	sides := make([]*side, loopEvents)
	hot := false
	for {
		var n int
		var err error
		if hot && lp.linked() {
			// Run what this turn woke (a session's flusher, a
			// handler whose link stream answered) before a raw wait
			// keeps the P; a write that is still in progress then
			// (it may wait for its peer) has the loop park instead
			// (see linked).
			runtime.Gosched()
			if loophint.Writing() {
				hot = false
			}
		}
		switch {
		case len(lp.again) > 0 || len(lp.sessAgain) > 0:
			n, err = epollWaitRaw(lp.epfd, events, 0)
		case !lp.sleep():
			// Posted to while it was busy: no wait, the queue runs.
		case hot:
			lp.polling.Store(true)
			n, err = epollWaitRaw(lp.epfd, events, hotWait)
			lp.polling.Store(false)
			lp.wake()
			if err == nil && n == 0 {
				hot = false
				continue
			}
		default:
			lp.polling.Store(true)
			if lp.linked() {
				n, err = lp.parked.wait(events, lp.blockFor())
			} else {
				n, err = unix.EpollWait(lp.epfd, events, lp.blockFor())
			}
			lp.polling.Store(false)
			lp.wake()
		}
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			lp.log("event loop failed; connections on it are stuck", "error", err)
			return
		}
		hot = n > 0
		if lp.batch(events[:n], sides) {
			lp.detachSessions()
			lp.closeWake()
			return
		}
	}
}

// linked reports whether the loop carries link streams or reads link
// sessions. Their bytes also pass through the sessions' flushers, which
// must not wait for a P while the loop holds one in a raw wait: such a
// loop runs what its turn woke before a raw wait (runtime.Gosched), waits
// raw only while no session's write is in progress (one that waits for
// its peer is woken by Go's poller, which a P must poll: loophint.Writing),
// and otherwise parks in Go's poller (parkedEpoll) instead of a blocking
// epoll_wait. Parking at every wait cost a scheduler round trip per
// pause: GET across a link 7-8 % lower (bench/README).
func (lp *loop) linked() bool { return lp.streams > 0 || len(lp.sessions) > 0 }

// sleep tells posts that the loop is about to wait, so that they wake it
// (through the eventfd), unless something was posted already: it then
// reports false and the loop runs the queue without waiting.
func (lp *loop) sleep() bool {
	lp.mu.Lock()
	defer lp.mu.Unlock()
	if len(lp.queue) > 0 {
		return false
	}
	lp.woken = false
	return true
}

// wake tells posts that the loop is awake and runs the queue before it
// waits again (batch), so they need not write the eventfd: a loop that
// posts to itself while it serves its events (a session it reads feeding
// a stream it carries) serves them in the same turn, without a system call.
func (lp *loop) wake() {
	lp.mu.Lock()
	lp.woken = true
	lp.mu.Unlock()
}

// hotWait is how long, in milliseconds, a busy loop waits for events in a
// raw system call before it counts as idle (see serve).
const hotWait = 1

// batch serves one epoll_wait's events, then the directions that used up
// their budget, then what was posted. It reports whether the loop stops.
func (lp *loop) batch(events []unix.EpollEvent, sides []*side) bool {
	wake := false
	lp.mu.Lock()
	for i := range events {
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
	for i := range events {
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
	if len(lp.sessAgain) > 0 {
		again := lp.sessAgain
		lp.sessAgain = nil
		for _, s := range again {
			s.rs.queued = false
			lp.safely(nil, func() { lp.readSession(s) })
		}
	}
	if len(lp.waiting) > 0 || lp.keepAlivePending() {
		if now := time.Now(); now.Sub(lp.lastCheck) >= checkEvery {
			lp.lastCheck = now
			lp.expire(now)
			lp.keepAlivesDue(now)
		}
	}
	return lp.runQueue(wake)
}

// checkEvery is how often the loop looks for connects that timed out;
// while some wait, epoll_wait blocks no longer than this.
const checkEvery = 50 * time.Millisecond

func (lp *loop) wait(pr *pair, by time.Time) {
	pr.connectBy, pr.waitIdx = by, len(lp.waiting)
	lp.waiting = append(lp.waiting, pr)
}

func (lp *loop) unwait(pr *pair) {
	i := pr.waitIdx
	if i < 0 || i >= len(lp.waiting) || lp.waiting[i] != pr {
		return
	}
	last := len(lp.waiting) - 1
	lp.waiting[i] = lp.waiting[last]
	lp.waiting[i].waitIdx = i
	lp.waiting[last] = nil
	lp.waiting = lp.waiting[:last]
	pr.waitIdx = -1
}

// expire fails the connects whose time is up.
func (lp *loop) expire(now time.Time) {
	for i := 0; i < len(lp.waiting); {
		pr := lp.waiting[i]
		if now.Before(pr.connectBy) {
			i++
			continue
		}
		lp.unwait(pr) // moves the last one to i
		lp.safely(pr, func() { pr.connectTimedOut(pr.connecting) })
	}
}

// runQueue runs what was posted (after reading the eventfd when it woke
// the loop); it reports whether the loop was stopped.
func (lp *loop) runQueue(woken bool) bool {
	if woken {
		var buf [8]byte
		_, _ = unix.Read(lp.wakefd, buf[:])
	}
	lp.mu.Lock()
	if len(lp.queue) == 0 {
		lp.mu.Unlock()
		return false
	}
	q := lp.queue
	lp.queue, lp.spare = lp.spare[:0], nil
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

// closeWake closes the wake-up descriptor once the loop stopped (post
// writes it under the same lock, and not after stopped is set).
func (lp *loop) closeWake() {
	lp.mu.Lock()
	defer lp.mu.Unlock()
	lp.stopped = true
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
	if s.ll != nil {
		lp.safely(nil, func() { lp.accept(s) })
		return
	}
	if s.rs != nil {
		lp.safely(nil, func() { lp.readSession(s) })
		return
	}
	noteEvent(s, ev)
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
	switch pr.phase {
	case pairMoving:
	case pairDialing:
		if s == pr.connecting {
			lp.safely(pr, func() { pr.connectDone(s, ev) })
		}
		return
	default:
		return // waiting: the flags wait for start; over: nothing to do
	}
	lp.safely(pr, func() {
		if s.writable && s.wr.pending() {
			lp.turn(s.wr)
		}
		// Moving s.wr's bytes can end the pair (its source was at EOF
		// and the other way was done already).
		if s.readable && pr.phase == pairMoving {
			lp.turn(s.rd)
		}
	})
}

// turn moves d's bytes until its source has no more for now, its
// destination takes no more, or its budget is spent.
func (lp *loop) turn(d *dir) {
	before := d.total
	lp.turnDir(d)
	if d.total != before {
		lp.speculate(d)
	}
}

// speculate reads the other direction's source on the next pass, without
// waiting for epoll, after d wrote to its destination: a request just went
// to a backend that answers within microseconds, or a reply to a client
// that hangs up or asks again at once (HAProxy's speculative reads). A hit
// saves a trip through epoll_wait, often a sleep and a wake-up; a miss
// costs one read, so the loop keeps a score and stops guessing while
// guesses miss.
func (lp *loop) speculate(d *dir) {
	o := &d.pr.up
	if d == o {
		o = &d.pr.down
	}
	if d.pr.phase != pairMoving || o.done || o.queued || o.src.readable || o.pending() || !lp.spec.want() {
		return
	}
	guessRecv(o.src)
	o.queued = true
	lp.again = append(lp.again, o)
}

// specScore says whether speculative reads have been paying off lately.
type specScore struct {
	score int
	n     uint
}

// want reports whether to guess now: while guesses hit, and once in a
// while after they stopped, to notice when they would hit again.
func (s *specScore) want() bool {
	s.n++
	return s.score >= 0 || s.n%32 == 0
}

// scoreGuess records whether a read of s that speculate asked for found
// bytes (or an end) rather than EAGAIN.
func (lp *loop) scoreGuess(s *side, err error) {
	if s.spec {
		s.spec = false
		lp.spec.record(err != unix.EAGAIN)
	}
}

func (s *specScore) record(hit bool) {
	if hit {
		s.score = min(s.score+1, 8)
	} else {
		s.score = max(s.score-2, -16)
	}
}

func (lp *loop) turnDir(d *dir) {
	pr := d.pr
	for range dirBudget {
		if pr.phase != pairMoving || d.done {
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
	if pr.phase == pairMoving && !d.done && !d.queued && d.src.readable && !d.pending() {
		d.queued = true
		lp.again = append(lp.again, d)
	}
}

func (d *dir) pending() bool {
	return d.buf != nil || d.held || (d.pipe != nil && d.pipe.buffered > 0)
}

func (d *dir) count(n int) {
	d.total += int64(n)
	d.moved.Add(int64(n))
}

// move reads one chunk from d's source and writes it on; it reports
// whether to go on.
func (lp *loop) move(d *dir) bool {
	if d.src.vs != nil {
		return lp.moveStream(d)
	}
	if d.splice {
		return lp.moveSplice(d)
	}
	if d.dst.vs != nil {
		return lp.moveIntoStream(d)
	}
	n, err := rawRead(d.src.fd, lp.scratch)
	lp.scoreGuess(d.src, err)
	switch {
	case err == unix.EAGAIN:
		cantRecv(d.src)
		return false
	case err != nil:
		d.pr.fail(d, "read", err)
		return false
	case n == 0:
		d.pr.eof(d)
		return false
	}
	readShort(d.src, n, len(lp.scratch))
	if !lp.write(d, lp.scratch[:n]) {
		return false
	}
	// A read that filled the buffer means a bulk stream: splice it
	// (socket to socket only).
	d.splice = n == len(lp.scratch) && d.dst.vs == nil
	return true
}

// moveStream reads one chunk from d's source, a link stream, and writes it
// on. A read shorter than the buffer emptied the stream, and armed its
// notify (TryRead's contract), so the source waits for streamReady.
func (lp *loop) moveStream(d *dir) bool {
	if d.dst.vs == nil {
		return lp.moveStreamOut(d)
	}
	n, err := d.src.vs.TryRead(lp.scratch)
	if lp.streamStops(d, err) {
		return false
	}
	if n < len(lp.scratch) {
		cantRecv(d.src)
	}
	return lp.write(d, lp.scratch[:n])
}

// moveIntoStream reads d's source, a socket, straight into the session
// batch of d's destination, a link stream, behind a frame's header: no
// copy through the loop's buffer. When the stream takes nothing now,
// nothing is read: the bytes wait in the socket, and d waits for the
// stream's notify (streamReady turns the direction again).
func (lp *loop) moveIntoStream(d *dir) bool {
	lp.in.fd, lp.in.err = d.src.fd, nil
	n, err := d.dst.vs.TryReadFrom(lp.in.read)
	switch {
	case err == unix.EAGAIN:
		cantSendStream(d.dst)
		return false
	case err != nil:
		d.pr.failWith(d, err)
		return false
	}
	d.count(n)
	rerr := lp.in.err
	lp.scoreGuess(d.src, rerr)
	switch {
	case rerr == unix.EAGAIN:
		cantRecv(d.src)
		return false
	case rerr != nil:
		d.pr.fail(d, "read", rerr)
		return false
	case n == 0:
		d.pr.eof(d)
		return false
	}
	readShort(d.src, n, lp.in.room)
	return true
}

// readIn is moveIntoStream's read: it reads lp.in.fd into b and records
// the error, for moveIntoStream to handle once the session is unlocked
// (0 with no error is the end).
func (lp *loop) readIn(b []byte) int {
	lp.in.room = len(b)
	n, err := rawRead(lp.in.fd, b)
	if err != nil {
		lp.in.err = err
		return 0
	}
	return n
}

// streamStops handles the error of a read of d's source, a link stream:
// it reports whether d stops moving for now (nothing there yet, the end,
// or a failure).
func (lp *loop) streamStops(d *dir, err error) bool {
	lp.scoreGuess(d.src, err)
	switch {
	case err == nil:
		return false
	case err == unix.EAGAIN:
		cantRecv(d.src)
	case err == io.EOF:
		d.pr.eof(d)
	default:
		d.pr.failWith(d, err)
	}
	return true
}

// moveStreamOut writes what d's source, a link stream, holds to d's
// destination, a socket, straight from the stream's buffers: one writev,
// no copy into the loop's buffer. What the socket does not take stays in
// the stream (d.held) until the socket is writable again; meanwhile the
// stream's window, not a buffer of the loop's, holds the peer back.
func (lp *loop) moveStreamOut(d *dir) bool {
	lp.out.fd, lp.out.err = d.dst.fd, nil
	n, emptied, err := d.src.vs.TryWriteTo(lp.out.slices, lp.out.write)
	d.count(n)
	d.held = false
	if lp.streamStops(d, err) {
		return false
	}
	switch werr := lp.out.err; {
	case werr == unix.EAGAIN:
		d.held = true
		if err := lp.cantSend(d.dst); err != nil {
			d.pr.epollFailed(d, err)
		}
		return false
	case werr != nil:
		d.pr.fail(d, "write", werr)
		return false
	}
	if emptied {
		// TryWriteTo armed the notify, as a short TryRead does.
		cantRecv(d.src)
	}
	return true
}

// writevOut is moveStreamOut's write: it writes bufs to lp.out.fd and
// records the error, for moveStreamOut to handle once the stream is
// unlocked.
func (lp *loop) writevOut(bufs [][]byte) int {
	n, err := rawWritev(lp.out.fd, bufs, &lp.out.iovecs)
	if err != nil {
		lp.out.err = err
		return 0
	}
	return n
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
	if d.held {
		return lp.moveStreamOut(d) && !d.held
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
	if d.dst.vs != nil {
		m, err := d.dst.vs.TryWrite(b)
		d.count(m)
		switch {
		case err == nil:
			return m, true
		case err == unix.EAGAIN:
			cantSendStream(d.dst)
			return m, false
		}
		d.pr.failWith(d, err)
		return -1, false
	}
	for n < len(b) {
		m, err := rawWrite(d.dst.fd, b[n:])
		switch {
		case err == unix.EAGAIN:
			if err := lp.cantSend(d.dst); err != nil {
				d.pr.epollFailed(d, err)
				return -1, false
			}
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
	n, err := rawSplice(d.src.fd, pp.w, pipeSize)
	lp.scoreGuess(d.src, err)
	switch {
	case err == unix.EAGAIN:
		pipePool.put(pp)
		cantRecv(d.src)
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
	// A short splice does not mean the socket is empty: it also stops
	// when the pipe has no free slot (one per page fragment, and a pipe
	// the kernel would not grow has few). src stays readable: the next
	// move splices again, and only EAGAIN clears it (rule 1).
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
		m, err := rawSplice(pp.r, d.dst.fd, pp.buffered)
		switch {
		case err == unix.EAGAIN:
			if err := lp.cantSend(d.dst); err != nil {
				d.pr.epollFailed(d, err)
			}
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
	if d.dst.vs != nil {
		_ = d.dst.vs.CloseWrite() // a failure shows on the other direction
	} else {
		rawShutdownWrite(d.dst.fd)
	}
	if d == &pr.down {
		// The backend ended its side (see conn.endDrained): during a
		// drain, so does the client's read side, here and now, since
		// this goroutine owns the descriptor.
		pr.c.backendDone.Store(true)
		if pr.p.draining.Load() {
			pr.shutClientRead()
		}
	}
}

// shutClientRead shuts the client's read side (see conn.endDrained).
func (pr *pair) shutClientRead() {
	if pr.client.vs != nil {
		_ = pr.client.vs.CloseRead()
		return
	}
	rawShutdownRead(pr.client.fd)
}

// fail ends the pair after an error in d: a reset stream cannot be
// finished, so both sides close, with a reset (see pair.reset).
func (pr *pair) fail(d *dir, op string, err error) {
	pr.failWith(d, &net.OpError{Op: op, Net: "tcp", Err: os.NewSyscallError(op, err)})
}

// failWith is fail with the error as it came (a link stream's).
func (pr *pair) failWith(d *dir, err error) {
	d.err = err
	pr.reset = true
	pr.close()
}

// epollFailed ends the pair when epoll_ctl would not change what it
// watches on one of its sockets (see loopready.go): no edge for that
// socket can be counted on any more, and a direction waiting for one
// would hang for good, so the connection ends with a reset, logged. d is
// the direction that was moving, if any.
func (pr *pair) epollFailed(d *dir, err error) {
	pr.p.logger().Warn("event loop cannot watch a socket; connection reset", "service", pr.c.route.Service,
		"client", pr.c.clientName(), "error", err)
	if d != nil {
		d.err = err
	}
	pr.reset = true
	pr.close()
}

// start wires the pair's sides once the loop owns them, and moves what
// arrived meanwhile.
func (pr *pair) start() {
	if pr.over() || !pr.enter(pairMoving) {
		return
	}
	c := pr.c
	pr.up = dir{pr: pr, src: pr.client, dst: pr.backend, moved: &c.movedIn}
	pr.down = dir{pr: pr, src: pr.backend, dst: pr.client, moved: &c.movedOut}
	pr.client.pr, pr.client.rd, pr.client.wr = pr, &pr.up, &pr.down
	pr.backend.pr, pr.backend.rd, pr.backend.wr = pr, &pr.down, &pr.up
	// Fresh sockets have room to write; what has come in shows in the
	// flags epoll already set. Output is watched only when a write blocks
	// (a handler's dial watched it for the connect).
	maySend(pr.client)
	maySend(pr.backend)
	for _, s := range []*side{pr.client, pr.backend} {
		if s.vs != nil {
			// No edge for what came before: the first read says.
			mayRecv(s)
			pr.lp.streams++
		}
	}
	if pr.backend.vs == nil {
		if err := pr.lp.stopSend(pr.backend); err != nil {
			pr.epollFailed(nil, err)
			return
		}
	}
	if pr.early != nil {
		pr.up.count(pr.earlyOff)
		if pr.earlyOff < pr.earlyN {
			pr.up.buf, pr.up.off, pr.up.end = pr.early, pr.earlyOff, pr.earlyN
		} else {
			bufPool.Put(pr.early)
		}
		pr.early = nil
	}
	if pr.client.readable || pr.up.pending() {
		pr.lp.turn(&pr.up)
	}
	if pr.backend.readable {
		pr.lp.turn(&pr.down)
	}
}

// close closes both sockets, gives back what the directions held, and
// finishes the connection. It runs on the loop's goroutine, once.
func (pr *pair) close() {
	if pr.over() || !pr.enter(pairClosed) {
		return
	}
	if pr.connecting != nil {
		pr.lp.unwait(pr)
		pr.dropSide(pr.connecting)
		pr.connecting = nil
	}
	if pr.target != nil {
		pr.target.Release()
		pr.target = nil
	}
	if pr.early != nil {
		bufPool.Put(pr.early)
		pr.early = nil
	}
	for _, s := range []*side{pr.client, pr.backend} {
		if s == nil {
			continue
		}
		if s.vs != nil {
			if pr.phase == pairClosed && s.rd != nil {
				pr.lp.streams-- // counted at start
			}
			s.vs.SetNotify(nil)
			if pr.reset {
				_ = s.vs.Reset()
			} else {
				_ = s.vs.Close()
			}
			s.pr, s.rd, s.wr = nil, nil, nil
			continue
		}
		pr.lp.unregister(s)
		s.sock.closedByLoop() // first: LocalAddr must not read a reused descriptor
		if pr.reset {
			rawResetOnClose(s.fd)
		}
		rawClose(s.fd)
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
	c.bytesIn, c.upErr = c.bytesEarly+pr.up.total, pr.up.err
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

// adoptStream hands c to lp when one side is a socket and the other a
// multiplexed link's stream: the client's socket and the stream c dialled
// (the link client's ambassador), or the stream the link server handed over
// and the backend socket c dialled (sock is then bs, on lp already). It
// reports false when c was aborted meanwhile (the caller then finishes it).
func (p *Proxy) adoptStream(c *conn, lp *loop, sock *rawSock, vs loopStream, clientIsStream bool) bool {
	ss := &side{fd: -1, vs: vs}
	var sockSide *side
	if sock.side != nil {
		sockSide = sock.side // dialled by the loop
	} else {
		sockSide = &side{fd: sock.fd, sock: sock}
	}
	pr := &pair{lp: lp, p: p, c: c, client: sockSide, backend: ss}
	if clientIsStream {
		pr.client, pr.backend = ss, sockSide
	}
	ss.readyFn = func() { lp.streamReady(ss) }
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.aborted {
		return false
	}
	if sock.side == nil {
		if err := lp.register(sockSide); err != nil {
			return false
		}
	}
	sock.mu.Lock()
	sock.state, sock.lp, sock.pr = rawOwned, lp, pr
	sock.mu.Unlock()
	ss.pr = pr // before the notify: streamReady drops events of no pair
	vs.SetNotify(func() {
		if !ss.readyQueued.Swap(true) {
			lp.post(ss.readyFn)
		}
	})
	lp.post(pr.start)
	return true
}

// streamReady runs on the loop when a link stream's TryRead or TryWrite
// that could not go on may (its notify): it moves what waited, as an epoll
// edge does for a socket. Both flags are set; the reads and writes that
// follow say EAGAIN again at worst.
func (lp *loop) streamReady(s *side) {
	s.readyQueued.Store(false)
	pr := s.pr
	if pr == nil || pr.phase != pairMoving {
		return
	}
	mayRecv(s)
	maySend(s)
	lp.safely(pr, func() {
		// A direction into the stream waits with its bytes in its
		// source socket (moveIntoStream), not pending here.
		if s.writable && (s.wr.pending() || s.wr.src.readable) {
			lp.turn(s.wr)
		}
		if s.readable && pr.phase == pairMoving {
			lp.turn(s.rd)
		}
	})
}

// connect opens a socket to ap and waits, until ctx is done, for the loop
// to report the connect's outcome.
func (lp *loop) connect(ctx context.Context, ap netip.AddrPort, keepAlive time.Duration) (*rawSock, error) {
	s, err := lp.startConnect(ap, net.TCPAddrFromAddrPort(ap), keepAlive)
	if err != nil {
		return nil, err
	}
	rs := s.sock
	s.connected = make(chan struct{}, 1)
	if err := lp.registerOut(s); err != nil {
		rawClose(s.fd)
		return nil, &net.OpError{Op: "dial", Net: "tcp", Addr: rs.remote, Err: err}
	}
	drop := func(err error) (*rawSock, error) {
		lp.unregister(s)
		rawClose(s.fd)
		return nil, &net.OpError{Op: "dial", Net: "tcp", Addr: rs.remote, Err: err}
	}
	select {
	case <-s.connected:
	case <-ctx.Done():
		err := ctx.Err()
		if errors.Is(err, context.DeadlineExceeded) {
			err = os.ErrDeadlineExceeded
		}
		return drop(err)
	}
	if err := soError(s.fd); err != nil {
		return drop(os.NewSyscallError("connect", err))
	}
	rs.side, rs.lp = s, lp
	return rs, nil
}

// soError is the outcome of a finished non-blocking connect on fd.
func soError(fd int) error {
	e, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err == nil && e != 0 {
		err = unix.Errno(e)
	}
	return err
}

// backendSockopts sets TCP_NODELAY and, when keepAlive is positive, TCP
// keepalive on a backend socket before it connects.
func backendSockopts(fd int, keepAlive time.Duration) error {
	if err := rawSetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
		return err
	}
	if keepAlive <= 0 {
		return nil
	}
	return setKeepAliveFD(fd, max(int(keepAlive/time.Second), 1))
}

// loops is the Proxy's set of event loops, started on first use.
type loops struct {
	once sync.Once
	all  []*loop
	err  error
}

// DefaultLoops is how many event loops a Proxy runs when Loops is 0: one
// per CPU the Go runtime may use. Fewer loops than CPUs leave CPU idle
// under a connection-rate load (one loop cannot take the CPU that frees up
// first while it runs on the other); more add nothing but wake-ups. An
// idle loop gives its P back (see serve), so the rest of the process still
// runs. The measurements behind this are in bench/README.md ("How the
// event loops got there").
func DefaultLoops() int { return max(runtime.GOMAXPROCS(0), 1) }

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
	switch s := c.client.(type) {
	case *rawSock:
		if s.netConn() != nil {
			return nil
		}
	case loopStream: // a link server's stream: its backend socket goes on a loop
		all := p.eventLoops()
		if h, ok := s.(interface{ Loop() (int, bool) }); ok {
			if i, ok := h.Loop(); ok && i < len(all) {
				// The loop that reads the stream's session.
				return all[i]
			}
		}
	default:
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
			if err == nil {
				lp.index = len(p.loops.all)
			}
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

// syncLoops returns once every loop has run what was posted to it before
// the call. It must not be called from a loop's goroutine.
func (p *Proxy) syncLoops() {
	for _, lp := range p.eventLoops() {
		done := make(chan struct{})
		lp.post(func() { close(done) })
		select {
		case <-done:
		case <-lp.done:
		}
	}
}

// stopLoops ends the event loops after the last connection finished.
func (p *Proxy) stopLoops() {
	p.loops.once.Do(func() {}) // none started later
	for _, lp := range p.loops.all {
		lp.stop()
	}
}

// blockFor is how long, in milliseconds, epoll_wait may block: until the
// next check while connects are in progress or sockets wait for their
// keepalive, else indefinitely.
func (lp *loop) blockFor() int {
	if len(lp.waiting) > 0 || lp.keepAlivePending() {
		return int(checkEvery / time.Millisecond)
	}
	return -1
}

// epollWaitRaw waits up to msec milliseconds for events in a raw system
// call, which the scheduler does not see (see serve): msec is 0 or small.
func epollWaitRaw(epfd int, events []unix.EpollEvent, msec int) (int, error) {
	r, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), uintptr(msec), 0, 0)
	return int(r), errnoErr(e)
}
