package proxy

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The loops also accept and dial, for the common case: a listener with no
// connection cap, a route to IP addresses with no PROXY protocol and no
// link. Then a new connection costs no goroutine at all: the loop accepts
// it, picks a backend, starts a non-blocking connect, and when epoll says
// the connect is done, starts moving bytes; a failed or timed-out connect
// moves on to the next pick within the route's retry budget, as dial does.
// Anything outside that case (no backend to pick right now, a hostname to
// resolve, a Unix socket) goes to a handler goroutine, which has every
// feature (waiting for a backend to appear, resolution, headers).

const (
	// acceptPause is how long a listener rests after an accept error such
	// as EMFILE, which would otherwise wake the loop again at once.
	acceptPause = 50 * time.Millisecond
)

// loopListener is a listener the loops accept on.
type loopListener struct {
	p     *Proxy
	l     *Listener
	ctx   context.Context
	fd    int // the listener's duplicate (Listener.acceptFile)
	loops []*loop
	sides []*side
	fatal chan error
	// lastErrLog rate-limits the accept error log line.
	lastErrLog time.Time
}

// loopDialable reports whether the loops can dial r's backends themselves:
// no link dialer, no PROXY header to send or read.
func (r *Route) loopDialable() bool {
	return r.Dial == nil && r.AcceptProxy == nil && r.SendProxy == 0 && len(r.SendProxyFor) == 0
}

// loopCarried reports whether the loops carry r's connections once
// dialled: they dial r's backends themselves, or r's Dial returns streams
// they carry (a multiplexed link's).
func (r *Route) loopCarried() bool {
	return r.loopDialable() || r.Dial != nil && r.DialLoopStreams && r.AcceptProxy == nil && r.SendProxy == 0 && len(r.SendProxyFor) == 0
}

// serveOnLoops registers l with every loop and waits until ctx is done or
// l is closed. It reports false, having done nothing, when l cannot be
// served that way (Serve then runs its own accept loop).
func (p *Proxy) serveOnLoops(ctx context.Context, l *Listener, loops []*loop) (bool, error) {
	rc := l.rawAcceptConn()
	if rc == nil {
		return false, nil
	}
	var fd int
	if err := rc.Control(func(f uintptr) { fd = int(f) }); err != nil {
		return false, nil
	}
	ll := &loopListener{p: p, l: l, ctx: ctx, fd: fd, loops: loops, fatal: make(chan error, 1)}
	for _, lp := range loops {
		s := &side{fd: fd, ll: ll}
		// Level-triggered, and exclusive: one loop wakes per connection
		// waiting, not all of them.
		if err := lp.registerEvents(s, unix.EPOLLIN|unix.EPOLLEXCLUSIVE); err != nil {
			// A close while registering (a shutdown right after start)
			// closes the descriptor under us: that is a close, not a
			// failure.
			closed := l.isClosed()
			ll.detach(loops)
			l.Close()
			if closed {
				return true, nil
			}
			return true, fmt.Errorf("listening on %s: %w", l.Addr(), err)
		}
		ll.sides = append(ll.sides, s)
	}
	closed := l.onClose(func() { ll.detach(loops) })
	select {
	case <-ctx.Done():
		l.Close()
		return true, nil
	case <-closed:
		return true, nil
	case err := <-ll.fatal:
		l.Close()
		return true, err
	}
}

// detach takes the listener out of every loop, on each loop's goroutine,
// and returns once none of them can touch its descriptor again: the caller
// closes it next.
func (ll *loopListener) detach(loops []*loop) {
	for i, s := range ll.sides {
		lp := loops[i]
		done := make(chan struct{})
		lp.post(func() {
			s.detached = true
			lp.unwatch(s)
			close(done)
		})
		select {
		case <-done:
		case <-lp.done: // the loop is over: it touches nothing any more
		}
	}
	ll.sides = nil
}

// accept takes one connection waiting on s's listener. The listener is
// level-triggered: epoll reports it again while more wait, so one accept per
// event saves the accept4 that would only say EAGAIN (taking several per
// event gained nothing; see bench/README.md).
func (lp *loop) accept(s *side) {
	fd, sa, err := acceptTCP(s.fd)
	switch {
	case err == unix.EAGAIN:
	case err != nil:
		lp.acceptFailed(s, err)
	default:
		s.ll.p.acceptOnLoop(lp, s.ll, newRawSock(fd, sa))
	}
}

// acceptTCP accepts a connection on the non-blocking listening socket fd.
// TCP_NODELAY and keepalive come from the listening socket, which carries
// them (see setNoDelay and ListenConfig): the net package sets
// TCP_NODELAY on every accepted socket, a call saved here. It calls
// accept4 itself: x/sys/unix.Accept4 adds a getsockopt per connection (to
// tell L2TP sockets apart), which a TCP listener never needs.
func acceptTCP(fd int) (int, *net.TCPAddr, error) {
	var rsa unix.RawSockaddrAny
	for {
		l := uint32(unix.SizeofSockaddrAny)
		r, _, e := unix.RawSyscall6(unix.SYS_ACCEPT4, uintptr(fd), uintptr(unsafe.Pointer(&rsa)), uintptr(unsafe.Pointer(&l)),
			unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return -1, nil, e
		}
		return int(r), rawSockaddrTCP(&rsa), nil
	}
}

// rawSockaddrTCP decodes an IPv4 or IPv6 socket address, in one
// allocation: the address and its IP's bytes live in one block.
func rawSockaddrTCP(rsa *unix.RawSockaddrAny) *net.TCPAddr {
	switch rsa.Addr.Family {
	case unix.AF_INET:
		a := (*unix.RawSockaddrInet4)(unsafe.Pointer(rsa))
		p := (*[2]byte)(unsafe.Pointer(&a.Port))
		b := new(tcpAddrBlock)
		copy(b.ip[:], v4InV6Prefix)
		copy(b.ip[12:], a.Addr[:])
		b.addr = net.TCPAddr{IP: b.ip[:], Port: int(p[0])<<8 | int(p[1])}
		return &b.addr
	case unix.AF_INET6:
		a := (*unix.RawSockaddrInet6)(unsafe.Pointer(rsa))
		p := (*[2]byte)(unsafe.Pointer(&a.Port))
		return sockaddrTCP(&unix.SockaddrInet6{Port: int(p[0])<<8 | int(p[1]), ZoneId: a.Scope_id, Addr: a.Addr})
	}
	return &net.TCPAddr{}
}

// tcpAddrBlock holds a TCP address and the bytes of its IP.
type tcpAddrBlock struct {
	addr net.TCPAddr
	ip   [16]byte
}

var v4InV6Prefix = []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff}

// acceptFailed rests the listener after a passing error (out of
// descriptors), or stops it after another.
func (lp *loop) acceptFailed(s *side, err error) {
	ll := s.ll
	opErr := &net.OpError{Op: "accept", Net: "tcp", Addr: ll.l.Addr(), Err: os.NewSyscallError("accept4", err)}
	if !isTemporaryAcceptError(opErr) {
		select {
		case ll.fatal <- opErr:
		default:
		}
		return
	}
	if time.Since(ll.lastErrLog) > time.Second {
		ll.lastErrLog = time.Now()
		ll.p.logger().Warn("accept failed; backing off", "listen", ll.l.Addr().String(), "error", opErr, "backoff", acceptPause)
	}
	// Level-triggered, the pending connection would wake the loop again
	// at once: stop listening for a moment. (An exclusive registration
	// cannot be modified, only removed and added again.)
	lp.unwatch(s)
	time.AfterFunc(acceptPause, func() {
		lp.post(func() {
			if s.detached {
				return // the listener closed meanwhile
			}
			if err := lp.registerEvents(s, unix.EPOLLIN|unix.EPOLLEXCLUSIVE); err != nil {
				select {
				case ll.fatal <- fmt.Errorf("listening on %s again after %v: %w", ll.l.Addr(), opErr, err):
				default:
				}
			}
		})
	})
}

// acceptOnLoop starts a connection the loop accepted. The connection goes
// to the loops in turn (by its id), as HAProxy's listener multi-queue
// deals them out, rather than staying with whichever loop epoll woke:
// left to epoll, one loop takes runs of connections while the other
// idles, and the clients of a connection-rate load fall into step with
// each other, leaving CPU idle. But only to a loop that is waiting for
// events: a busy one would leave the connection queued behind the rest of
// its batch, while the accepting loop is running now (HAProxy's
// multi-queue likewise prefers the least loaded thread). The runs that
// measured both choices are in bench/README.md.
//
// The connection is tracked here, on the accepting loop, so that a
// shutdown or an upgrade that begins while it is on its way to the other
// loop waits for it rather than refusing it (a reset the client would
// see).
func (p *Proxy) acceptOnLoop(lp *loop, ll *loopListener, cs *rawSock) {
	l := ll.l
	l.Stats.Accepted.Add(1)
	c := &conn{client: cs, listener: l, route: l.route.Load(), start: time.Now()}
	if !p.track(c) {
		cs.Close()
		return
	}
	if !c.route.loopDialable() {
		go p.handle(ll.ctx, c)
		return
	}
	l.Stats.Active.Add(1)
	t := ll.loops[c.id%uint64(len(ll.loops))]
	if !t.polling.Load() {
		t = lp
	}
	pr := &pair{lp: t, p: p, c: c, client: &side{fd: cs.fd, sock: cs}, ctx: ll.ctx}
	pr.client.pr = pr
	switch {
	case !pr.own():
		p.finish(c) // aborted already (a forced shutdown): its socket is closed
	case t == lp:
		pr.takeOver()
	case !t.post(pr.takeOver):
		// t has stopped. Loops stop only once no connection is tracked,
		// so this cannot happen while c is; should it, c ends here.
		pr.close()
	}
}

// own gives the client socket to the pair's loop, unless the connection
// was aborted already. Under c.mu, as adopt does, so that an abort either
// comes first (and own declines) or posts its close to the pair's loop,
// where it runs after the takeOver posted or run next: close ends a pair
// whether or not it began.
func (pr *pair) own() bool {
	c, cs := pr.c, pr.client.sock
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.aborted {
		return false
	}
	cs.mu.Lock()
	cs.state, cs.lp, cs.pr = rawOwned, pr.lp, pr
	cs.mu.Unlock()
	return true
}

// takeOver registers the client socket with the pair's loop, reads what
// the client sent already and dials the backend, unless the connection was
// closed on its way there.
func (pr *pair) takeOver() {
	if pr.over() || !pr.enter(pairDialing) {
		return
	}
	if err := pr.lp.register(pr.client); err != nil {
		pr.toGoroutine()
		return
	}
	pr.lp.begun.Add(1)
	pr.readEarly()
	pr.dialNext()
}

// readEarly reads what the client sent with its handshake (most clients
// speak first), before the backend is even dialled, as HAProxy does: the
// bytes then go out with the first write on the backend socket, which
// also tells that its connect is done, often without waiting for epoll.
func (pr *pair) readEarly() {
	lp, cs := pr.lp, pr.client
	n, err := rawRead(cs.fd, lp.scratch)
	switch {
	case err == unix.EAGAIN:
	case err != nil || n == 0:
		// Gone or reset already: the normal path will read it again.
		mayRecv(cs)
	default:
		buf := bufPool.Get().(*[]byte)
		pr.early, pr.earlyN = buf, copy(*buf, lp.scratch[:n])
		if n == len(lp.scratch) {
			mayRecv(cs) // more may wait
		}
		// Rule 3: after a short read, readable stays clear: the socket
		// was registered before this read, so bytes that came before or
		// since queued an edge that sets it again.
	}
}

// writeEarly writes the client's early bytes to s, a socket whose connect
// is in progress. It reports whether s is connected (a write went through),
// and an error when the connect failed.
func (pr *pair) writeEarly(s *side) (bool, error) {
	for pr.earlyOff < pr.earlyN {
		m, err := rawWrite(s.fd, (*pr.early)[pr.earlyOff:pr.earlyN])
		switch {
		case err == unix.EAGAIN:
			return pr.earlyOff > 0, nil // still connecting, or full
		case err != nil:
			return false, err
		}
		pr.earlyOff += m
	}
	return true, nil
}

// dialNext picks a backend and starts connecting to it, or hands the
// connection to a handler goroutine when the pick needs one.
func (pr *pair) dialNext() {
	r := pr.c.route
	b := pr.c.choose(r)
	var ap netip.AddrPort
	if b != nil {
		var err error
		if ap, err = netip.ParseAddrPort(b.Addr); err != nil {
			b = nil // a hostname or a Unix socket
		}
	}
	if b == nil {
		pr.toGoroutine()
		return
	}
	b.Acquire()
	pr.target, pr.dialStart = b, time.Now()
	// Keepalive comes later, if the connection lasts (keepAliveLater).
	s, err := pr.lp.startConnect(ap, pr.lp.tcpAddr(ap), 0)
	if err != nil {
		pr.dialFailed(err)
		return
	}
	s.pr, s.sock.pr, s.sock.lp = pr, pr, pr.lp
	s.sock.state = rawOwned
	if pr.early != nil {
		// On loopback and fast links the connect is often done by now.
		ok, err := pr.writeEarly(s)
		if err != nil {
			pr.earlyOff = 0
			pr.connectFailed(s, os.NewSyscallError("connect", err))
			return
		}
		if ok {
			if err := pr.lp.register(s); err != nil {
				pr.connectFailed(s, err)
				return
			}
			pr.connected(s)
			return
		}
	}
	// Epoll tells when the connect is over (output, or an error).
	if err := pr.lp.registerOut(s); err != nil {
		pr.connectFailed(s, err)
		return
	}
	pr.connecting = s
	pr.lp.wait(pr, pr.dialStart.Add(r.connectTimeout()))
}

// toGoroutine gives the connection to a handler goroutine, which dials
// with every feature: waiting for a backend, resolving names.
func (pr *pair) toGoroutine() {
	pr.lp.unwatch(pr.client)
	cs := pr.client.sock
	cs.mu.Lock()
	cs.state, cs.lp, cs.pr = rawOpen, nil, nil
	cs.mu.Unlock()
	pr.enter(pairHandedOff) // the pair is done; the connection goes on
	c := pr.c
	// The bytes read early go first, from the handler (see handle), and
	// its dial goes on with the retry budget where the loop left it
	// (c.budget).
	c.early, pr.early = pr.early, nil
	c.earlyN = pr.earlyN
	c.listener.Stats.Active.Add(-1) // handle counts it again
	go pr.p.handle(pr.ctx, c)
}

// startConnect opens a socket to ap (remote is the same address as the
// socket reports it) and starts a non-blocking connect; epoll reports its
// end on the returned side.
func (lp *loop) startConnect(ap netip.AddrPort, remote *net.TCPAddr, keepAlive time.Duration) (*side, error) {
	fd, err := openSocket(ap, remote, keepAlive)
	if err != nil {
		return nil, err
	}
	switch err := rawConnect(fd, ap); err {
	case nil, unix.EINPROGRESS, unix.EINTR, unix.EALREADY:
		s := &side{fd: fd}
		s.sock = newRawSock(fd, remote)
		return s, nil // registered by the caller, once it knows for what
	default:
		unix.Close(fd)
		return nil, &net.OpError{Op: "dial", Net: "tcp", Addr: remote, Err: os.NewSyscallError("connect", err)}
	}
}

// connectDone handles the event that ends a connect.
func (pr *pair) connectDone(s *side, ev uint32) {
	pr.lp.unwait(pr)
	pr.connecting = nil
	if ev&(unix.EPOLLERR|unix.EPOLLHUP) != 0 {
		err := soError(s.fd)
		if err == nil {
			err = unix.ECONNREFUSED // the socket hung up without saying why
		}
		pr.connectFailed(s, os.NewSyscallError("connect", err))
		return
	}
	pr.connected(s)
}

// connected makes s, whose connect succeeded, the pair's backend, and
// starts moving bytes.
func (pr *pair) connected(s *side) {
	if err := pr.lp.stopSend(s); err != nil {
		pr.dropSide(s)
		pr.target.Release()
		pr.target = nil
		pr.epollFailed(nil, err)
		return
	}
	c, r, b := pr.c, pr.c.route, pr.target
	pr.lp.keepAliveLater(s, c.start, defaultKeepAlive(r.KeepAlive))
	pr.p.dialWorked(c, r, b, pr.dialStart)
	if !c.setBackend(s.sock, b) {
		b.Release()
		pr.target = nil
		pr.dropSide(s)
		pr.close()
		return
	}
	pr.target = nil // c holds it now, and finish releases it
	c.backendAddr = b.Addr
	if r.IdleTimeout > 0 {
		c.stopIdle = c.watchIdle(r.IdleTimeout)
	}
	pr.backend = s
	pr.start()
}

func (pr *pair) connectTimedOut(s *side) {
	if pr.phase != pairDialing || s == nil || pr.connecting != s {
		return
	}
	pr.connecting = nil
	pr.connectFailed(s, os.ErrDeadlineExceeded)
}

// connectFailed drops s, whose connect failed with err, and counts the
// failed dial (dialFailed tries the next pick or gives up).
func (pr *pair) connectFailed(s *side, err error) {
	pr.dropSide(s)
	pr.dialFailed(&net.OpError{Op: "dial", Net: "tcp", Addr: s.sock.remote, Err: err})
}

// dropSide closes a backend socket that never joined the pair.
func (pr *pair) dropSide(s *side) {
	pr.lp.unregister(s)
	s.sock.closedByLoop()
	rawClose(s.fd)
}

// dialFailed counts a failed dial and tries the next pick, or gives up.
func (pr *pair) dialFailed(err error) {
	b := pr.target
	pr.target = nil
	if !pr.p.dialFailed(pr.ctx, pr.c, pr.c.route, b, err) {
		pr.p.unreachable(pr.c, pr.c.budget.Err())
		pr.close()
		return
	}
	pr.dialNext()
}

// openSocket makes a non-blocking TCP socket for ap with the backend
// options set.
func openSocket(ap netip.AddrPort, remote *net.TCPAddr, keepAlive time.Duration) (int, error) {
	fam := unix.AF_INET
	if !ap.Addr().Unmap().Is4() {
		fam = unix.AF_INET6
	}
	fd, err := unix.Socket(fam, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return -1, &net.OpError{Op: "dial", Net: "tcp", Addr: remote, Err: os.NewSyscallError("socket", err)}
	}
	if err := backendSockopts(fd, keepAlive); err != nil {
		unix.Close(fd)
		return -1, &net.OpError{Op: "dial", Net: "tcp", Addr: remote, Err: os.NewSyscallError("setsockopt", err)}
	}
	return fd, nil
}

// rawConnect starts connecting the non-blocking socket fd to ap. It builds
// the socket address on the stack: x/sys/unix.Connect takes it as an
// interface, which costs an allocation per connection.
func rawConnect(fd int, ap netip.AddrPort) error {
	a := ap.Addr().Unmap()
	port := ap.Port()
	var e unix.Errno
	if a.Is4() {
		sa := unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: a.As4()}
		putPort(&sa.Port, port)
		_, _, e = unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa)), unix.SizeofSockaddrInet4)
	} else {
		sa := unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: a.As16()}
		putPort(&sa.Port, port)
		if z := a.Zone(); z != "" {
			if ifc, err := net.InterfaceByName(z); err == nil {
				sa.Scope_id = uint32(ifc.Index)
			}
		}
		_, _, e = unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa)), unix.SizeofSockaddrInet6)
	}
	return errnoErr(e)
}

// putPort stores port in a socket address's port field, in network byte
// order.
func putPort(dst *uint16, port uint16) {
	p := (*[2]byte)(unsafe.Pointer(dst))
	p[0], p[1] = byte(port>>8), byte(port)
}

// tcpAddr returns ap as a *net.TCPAddr, which a connection's backend
// socket reports as its remote address. The loop keeps one per backend
// address it dials, shared by all their connections (nobody changes a
// net.Addr once made), instead of two allocations per connection; the
// cache starts over when it grows past maxAddrs, for routes that dial
// ever new addresses.
func (lp *loop) tcpAddr(ap netip.AddrPort) *net.TCPAddr {
	if a, ok := lp.addrs[ap]; ok {
		return a
	}
	if lp.addrs == nil || len(lp.addrs) >= maxAddrs {
		lp.addrs = make(map[netip.AddrPort]*net.TCPAddr)
	}
	a := net.TCPAddrFromAddrPort(ap)
	lp.addrs[ap] = a
	return a
}

// maxAddrs bounds the loop's cache of backend addresses.
const maxAddrs = 1024
