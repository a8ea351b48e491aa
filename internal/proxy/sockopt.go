package proxy

import (
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Socket options are set once where the kernel lets them be inherited,
// instead of on every connection: accepted sockets inherit TCP keepalive
// and TCP_NODELAY from their listening socket, so the listener carries them
// and Go's per-accept calls are turned off. On the backend side TCP_NODELAY
// is set before connect; keepalive too on the goroutine engine, while the
// event loops set it only on connections that last (loopkeepalive.go).
// A short connection through a loop costs one setsockopt (10 with the net
// package's defaults).

// setNoDelay sets TCP_NODELAY on a listening socket, which the sockets it
// accepts inherit: the accept paths then save the setsockopt the net
// package makes per connection. NewListener calls it for every listener
// (opened here or handed over by an older process) before it is served.
// A connection that reached the backlog before was cloned without it and
// keeps Nagle's algorithm: only its latency differs.
func setNoDelay(tl *net.TCPListener) {
	if rc, err := tl.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) { _ = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NODELAY, 1) })
	}
}

// keepAliveCount is the number of unanswered probes before a peer is
// declared dead; with the interval equal to the idle period, a dead peer is
// found after about ten periods.
const keepAliveCount = 9

func defaultKeepAlive(d time.Duration) time.Duration {
	if d == 0 {
		return 30 * time.Second
	}
	return d
}

// ListenConfig returns the ListenConfig for a listener whose accepted
// connections use TCP keepalive with the given period (zero: 30s,
// negative: off).
func ListenConfig(keepAlive time.Duration) net.ListenConfig {
	keepAlive = defaultKeepAlive(keepAlive)
	lc := net.ListenConfig{KeepAlive: -1}
	if keepAlive > 0 {
		lc.Control = func(_, _ string, c syscall.RawConn) error {
			return setKeepAlive(c, keepAlive, true)
		}
	}
	return lc
}

// dialer returns the Dialer for one route's backends, built on first use.
// The resolver is the Proxy's, which does not change while it serves.
func (r *Route) dialer(res *net.Resolver) *net.Dialer {
	r.dialerOnce.Do(func() { r.dialerVal = r.newDialer(res) })
	return &r.dialerVal
}

func (r *Route) newDialer(res *net.Resolver) net.Dialer {
	d := net.Dialer{Timeout: r.connectTimeout(), Resolver: res, KeepAlive: -1}
	if ka := defaultKeepAlive(r.KeepAlive); ka > 0 {
		d.Control = func(network, _ string, c syscall.RawConn) error {
			if network == "unix" { // no TCP keepalive on a Unix socket
				return nil
			}
			return setKeepAlive(c, ka, false)
		}
	}
	return d
}

// setKeepAlive enables keepalive on c. withCount also sets the probe count
// (worth it on a listener, set once); otherwise the system default (9) holds.
func setKeepAlive(c syscall.RawConn, period time.Duration, withCount bool) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		if serr = setKeepAliveFD(int(fd), max(int(period/time.Second), 1)); serr == nil && withCount {
			serr = rawSetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPCNT, keepAliveCount)
		}
	})
	if err != nil {
		return err
	}
	if serr != nil {
		return &net.OpError{Op: "setsockopt", Net: "tcp", Err: serr}
	}
	return nil
}
