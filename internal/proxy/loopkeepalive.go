package proxy

import (
	"time"

	"golang.org/x/sys/unix"
)

// TCP keepalive on the sockets the loops dial is switched on late, once a
// connection has lived keepAliveAfter: three setsockopt calls a connection
// saved for the short ones (most of them, for a proxy in front of Redis or
// HTTP/1.0 clients), with no difference for the ones keepalive exists for.
// The kernel's first probe goes out a keepalive period after the last
// segment received, and enabling it late only moves that by at most
// keepAliveAfter plus a check period. Client sockets need nothing: they
// inherit keepalive from the listening socket, set once.
const keepAliveAfter = time.Second

// keepAliveDue is a dialled socket waiting for its keepalive; gen tells it
// from a later socket that got the same descriptor number.
type keepAliveDue struct {
	at   time.Time
	fd   int
	gen  uint32
	secs int
}

// keepAliveLater queues s, a socket the loop dialled for a connection that
// began at start, for keepalive with the given period (zero or less: off).
func (lp *loop) keepAliveLater(s *side, start time.Time, period time.Duration) {
	if period <= 0 {
		return
	}
	lp.keepAlive = append(lp.keepAlive, keepAliveDue{
		at: start.Add(keepAliveAfter), fd: s.fd, gen: s.gen, secs: max(int(period/time.Second), 1),
	})
}

// keepAlivesDue switches keepalive on for the queued sockets whose time
// has come and that are still open on this loop. The queue is in order of
// connection start, near enough (a connect's retries keep its start), so
// the sweep stops at the first one not yet due.
func (lp *loop) keepAlivesDue(now time.Time) {
	q, i := lp.keepAlive, lp.keepAliveHead
	lp.mu.Lock()
	for ; i < len(q) && !now.Before(q[i].at); i++ {
		e := q[i]
		if e.fd < len(lp.table) && lp.table[e.fd].s != nil && lp.table[e.fd].gen == e.gen {
			// An error is ignored, unlike at a dial: the connection is up
			// and carrying bytes, and a socket that refuses keepalive now
			// is one that is failing anyway.
			_ = setKeepAliveFD(e.fd, e.secs)
		}
	}
	lp.mu.Unlock()
	switch {
	case i == len(q):
		lp.keepAlive, lp.keepAliveHead = q[:0], 0
	case i > len(q)/2:
		// Compact once the done half is the bigger one: each entry moves
		// at most once on average.
		n := copy(q, q[i:])
		lp.keepAlive, lp.keepAliveHead = q[:n], 0
	default:
		lp.keepAliveHead = i
	}
}

// keepAlivePending reports whether sockets wait for their keepalive.
func (lp *loop) keepAlivePending() bool { return lp.keepAliveHead < len(lp.keepAlive) }

// setKeepAliveFD enables keepalive on the socket fd: first probe after
// secs idle, then every secs (the probe count is the system's).
func setKeepAliveFD(fd, secs int) error {
	if err := rawSetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1); err != nil {
		return err
	}
	if err := rawSetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, secs); err != nil {
		return err
	}
	return rawSetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, secs)
}
