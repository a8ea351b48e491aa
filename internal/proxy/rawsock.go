package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/attache/attache/internal/backend"
)

// A rawSock is a TCP socket the event loop engine (loop.go) owns: accepted
// with accept4(2) on the listener's descriptor, or dialled with socket(2)
// and a non-blocking connect(2), and never registered with Go's network
// poller. That saves the poller's registration, the address lookups the
// net package makes for every socket, and above all a goroutine wake-up per
// message: the loop moves the bytes itself.
//
// It implements halfConn so that the rest of the proxy (dial, PROXY headers,
// logs, the admin API, abort) treats it like any socket. Until a loop adopts
// it, the connection's handler goroutine uses it; after, the loop alone
// touches the descriptor, and Close asks the loop to close it. When a
// connection cannot stay on the loop (its backend turned out to be a Unix
// socket or a link stream), the descriptor is moved into a *net.TCPConn
// (asNet) and the copy goroutines carry it.
type rawSock struct {
	fd     int
	remote *net.TCPAddr

	// state moves from rawOpen to rawOwned (a loop has it) or rawNet
	// (moved into conv), and to rawClosed, under mu.
	mu     sync.Mutex
	state  int
	lp     *loop        // the loop watching it: set by connect, or with rawOwned
	side   *side        // its registration with lp, for a dialled socket
	pr     *pair        // set with rawOwned
	conv   *net.TCPConn // set with rawNet
	local  atomic.Pointer[net.TCPAddr]
	closed atomic.Bool
	// writing: a Write is under way, outside mu; closeLeft: a Close came
	// meanwhile and left the descriptor for that Write to close.
	writing, closeLeft bool
}

const (
	rawOpen = iota
	rawOwned
	rawNet
	rawClosed
)

var (
	_ halfConn = (*rawSock)(nil)

	errRawNotSupported = errors.New("operation not supported on a loop socket")
)

// newRawSock wraps fd, a connected non-blocking TCP socket.
func newRawSock(fd int, remote *net.TCPAddr) *rawSock {
	return &rawSock{fd: fd, remote: remote}
}

func (s *rawSock) Read(b []byte) (int, error) {
	if c := s.netConn(); c != nil {
		return c.Read(b)
	}
	return 0, errRawNotSupported
}

// Write writes b whole to a socket no loop owns yet (a PROXY protocol
// header, or bytes a loop read early, to a fresh backend connection),
// waiting in poll(2) on the rare full send buffer: only a handler
// goroutine writes this way, one Write at a time. It does not hold mu while
// it writes or waits, so a Close from another goroutine (an abort) never
// waits for a peer that does not read; Close then cuts the stream and
// leaves the descriptor to Write to close (see close).
func (s *rawSock) Write(b []byte) (int, error) {
	if c := s.netConn(); c != nil {
		return c.Write(b)
	}
	s.mu.Lock()
	if s.state != rawOpen || s.writing {
		s.mu.Unlock()
		return 0, net.ErrClosed
	}
	s.writing = true
	s.mu.Unlock()
	n, err := writeAll(s.fd, b)
	s.mu.Lock()
	s.writing = false
	closeNow := s.closeLeft
	s.mu.Unlock()
	if closeNow {
		unix.Close(s.fd)
	}
	if err != nil {
		return n, &net.OpError{Op: "write", Net: "tcp", Addr: s.remote, Err: os.NewSyscallError("write", err)}
	}
	return n, nil
}

// writeStall is how long writeAll waits for a full send buffer to take
// more bytes before it gives up.
const writeStall = 5 * time.Second

// writeAll writes b whole to the non-blocking socket fd, waiting in
// poll(2) while its send buffer is full.
func writeAll(fd int, b []byte) (int, error) {
	var done int
	for done < len(b) {
		n, err := unix.Write(fd, b[done:])
		switch err {
		case nil:
			done += n
			continue
		case unix.EINTR:
			continue
		case unix.EAGAIN:
		default:
			return done, err
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		ready, err := unix.Poll(pfd, int(writeStall/time.Millisecond))
		switch {
		case err == unix.EINTR || (err == nil && ready > 0):
		case err == nil:
			return done, unix.ETIMEDOUT
		default:
			return done, err
		}
	}
	return done, nil
}

// Close closes the socket, or asks its loop to end the connection when a
// loop owns it. It may be called from any goroutine, more than once.
func (s *rawSock) Close() error { return s.close(false) }

// closeWithReset is Close with a reset (RST) for the peer instead of a FIN.
func (s *rawSock) closeWithReset() error { return s.close(true) }

func (s *rawSock) close(reset bool) error {
	s.mu.Lock()
	switch s.state {
	case rawOpen:
		s.state = rawClosed
		s.closed.Store(true)
		if s.side != nil {
			s.lp.unregister(s.side)
		}
		if s.writing {
			// A Write is in write(2) or poll(2) on the descriptor: the
			// stream is cut (its bytes will not all go), so it ends with
			// a reset, which also wakes the poll; Write closes the
			// descriptor on its way out, so that its number cannot be
			// given to another socket under it.
			s.closeLeft = true
			s.mu.Unlock()
			return rawDisconnect(s.fd)
		}
		s.mu.Unlock()
		if reset {
			rawResetOnClose(s.fd)
		}
		return unix.Close(s.fd)
	case rawOwned:
		lp, pr := s.lp, s.pr
		s.mu.Unlock()
		lp.post(func() {
			pr.reset = pr.reset || reset
			pr.close()
		})
		return nil
	case rawNet:
		c := s.conv
		s.mu.Unlock()
		if reset {
			_ = c.SetLinger(0)
		}
		return c.Close()
	}
	s.mu.Unlock()
	return nil
}

// closedByLoop marks the socket closed after its loop closed the
// descriptor.
func (s *rawSock) closedByLoop() {
	s.mu.Lock()
	s.state = rawClosed
	s.mu.Unlock()
	s.closed.Store(true)
}

// shutdownRead shuts the socket's read side (see conn.endDrained); a loop
// that owns it does so on its own goroutine, the only one that may touch
// an adopted descriptor.
func (s *rawSock) shutdownRead() {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch s.state {
	case rawOpen:
		_ = unix.Shutdown(s.fd, unix.SHUT_RD)
	case rawOwned:
		pr := s.pr
		s.lp.post(func() {
			if !pr.over() {
				rawShutdownRead(pr.client.fd)
			}
		})
	case rawNet:
		_ = s.conv.CloseRead()
	}
}

func (s *rawSock) CloseWrite() error {
	if c := s.netConn(); c != nil {
		return c.CloseWrite()
	}
	return errRawNotSupported
}

func (s *rawSock) RemoteAddr() net.Addr { return s.remote }

// LocalAddr is read from the socket on first use (PROXY headers, the
// transparent check), not at accept: most connections never need it.
func (s *rawSock) LocalAddr() net.Addr {
	if a := s.local.Load(); a != nil {
		return a
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch s.state {
	case rawClosed:
		return &net.TCPAddr{}
	case rawNet:
		return s.conv.LocalAddr() // s.fd is no longer this socket's
	}
	sa, err := unix.Getsockname(s.fd)
	if err != nil {
		return &net.TCPAddr{}
	}
	a := sockaddrTCP(sa)
	s.local.Store(a)
	return a
}

func (s *rawSock) SetDeadline(t time.Time) error {
	if c := s.netConn(); c != nil {
		return c.SetDeadline(t)
	}
	return errRawNotSupported
}

func (s *rawSock) SetReadDeadline(t time.Time) error {
	if c := s.netConn(); c != nil {
		return c.SetReadDeadline(t)
	}
	return errRawNotSupported
}

func (s *rawSock) SetWriteDeadline(t time.Time) error {
	if c := s.netConn(); c != nil {
		return c.SetWriteDeadline(t)
	}
	return errRawNotSupported
}

func (s *rawSock) netConn() *net.TCPConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state == rawNet {
		return s.conv
	}
	return nil
}

// asNet moves the descriptor into a *net.TCPConn (registered with Go's
// poller), for a connection the copy goroutines must carry. It costs a
// dup(2) and a close(2), so only connections that leave the loop's path
// pay it.
func (s *rawSock) asNet() (*net.TCPConn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch s.state {
	case rawNet:
		return s.conv, nil
	case rawOpen:
	default:
		return nil, net.ErrClosed
	}
	if s.side != nil {
		s.lp.unwatch(s.side)
		s.side = nil
	}
	f := os.NewFile(uintptr(s.fd), "tcp")
	c, err := net.FileConn(f)
	f.Close() // FileConn holds its own duplicate
	if err != nil {
		s.state = rawClosed
		s.closed.Store(true)
		return nil, fmt.Errorf("moving socket to the net package: %w", err)
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		c.Close()
		s.state = rawClosed
		s.closed.Store(true)
		return nil, errors.New("moving socket to the net package: not a TCP socket")
	}
	s.state, s.conv = rawNet, tc
	return tc, nil
}

// asSock returns what the copy goroutines can carry for c: c itself, or
// for a rawSock the *net.TCPConn it was moved into.
func asSock(c halfConn) halfConn {
	if s, ok := c.(*rawSock); ok {
		if tc := s.netConn(); tc != nil {
			return tc
		}
	}
	return c
}

func sockaddrTCP(sa unix.Sockaddr) *net.TCPAddr {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return &net.TCPAddr{IP: net.IP(a.Addr[:]).To16(), Port: a.Port}
	case *unix.SockaddrInet6:
		ip := netip.AddrFrom16(a.Addr).Unmap()
		if ip.Is6() {
			ip = ip.WithZone(zoneName(a.ZoneId))
		}
		return net.TCPAddrFromAddrPort(netip.AddrPortFrom(ip, uint16(a.Port)))
	}
	return &net.TCPAddr{}
}

func zoneName(id uint32) string {
	if id == 0 {
		return ""
	}
	if ifc, err := net.InterfaceByIndex(int(id)); err == nil {
		return ifc.Name
	}
	return fmt.Sprint(id)
}

// rawAccept accepts one connection on the listening socket behind raw,
// waiting (parked in Go's poller, as Accept does) until one arrives.
func rawAccept(raw interface {
	Read(func(uintptr) bool) error
}, accept *acceptCall) (*rawSock, error) {
	accept.fd, accept.addr, accept.err = -1, nil, nil
	if err := raw.Read(accept.fn); err != nil {
		return nil, err
	}
	if accept.err != nil {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", accept.err)}
	}
	return newRawSock(accept.fd, accept.addr), nil
}

// acceptCall is the RawConn.Read callback of one accept loop, bound once so
// that accepting allocates no closure per connection.
type acceptCall struct {
	fd   int
	addr *net.TCPAddr
	err  error
	fn   func(uintptr) bool
}

func newAcceptCall() *acceptCall {
	a := &acceptCall{}
	a.fn = func(lfd uintptr) bool {
		a.fd, a.addr, a.err = acceptTCP(int(lfd))
		return a.err != unix.EAGAIN // EAGAIN: park until readable
	}
	return a
}

// rawDial connects to address (host:port, resolved now when it is a name)
// with a socket lp watches, within the route's connect timeout. Each address
// a name resolves to is tried in turn, as net.Dialer does.
func (p *Proxy) rawDial(ctx context.Context, lp *loop, r *Route, address string) (*rawSock, error) {
	ctx, cancel := context.WithTimeout(ctx, r.connectTimeout())
	defer cancel()
	if ap, err := netip.ParseAddrPort(address); err == nil {
		return lp.connect(ctx, ap, defaultKeepAlive(r.KeepAlive))
	}
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: err}
	}
	res := p.Resolver
	if res == nil {
		res = net.DefaultResolver
	}
	pn, err := res.LookupPort(ctx, "tcp", port)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: err}
	}
	ips, err := res.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: err}
	}
	var errs backend.DialErrors
	for _, ip := range ips {
		ap := netip.AddrPortFrom(ip.Unmap(), uint16(pn))
		s, err := lp.connect(ctx, ap, defaultKeepAlive(r.KeepAlive))
		if err == nil {
			return s, nil
		}
		errs.Add(ap.String(), unwrapOpError(err))
		if ctx.Err() != nil {
			break
		}
	}
	if errs.Len() == 0 {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: fmt.Errorf("%s: no addresses", host)}
	}
	return nil, errs.Err()
}
