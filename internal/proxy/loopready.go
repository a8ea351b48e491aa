package proxy

import (
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// What the loop knows of each socket's readiness, and what it asks epoll
// to watch, change only through the helpers in this file (as HAProxy's
// fd_may_recv, fd_cant_recv, fd_want_send and fd_stop_send), each named
// for the proof that allows it. The rules they keep are the package
// documentation's ("The event loop's rules"). Setting readable is always
// safe (the next read says EAGAIN at worst); clearing it without a proof
// stalls a direction for good, since no new edge comes for bytes already
// there.
//
// Sockets are watched for input, edge-triggered, from registration on;
// output only while a write is blocked or a connect is in progress
// (wantSend, registerOut): watched all along, every ACK that frees send
// buffer space would wake the loop for nothing.

const (
	evIn    = unix.EPOLLIN | unix.EPOLLPRI | unix.EPOLLRDHUP | unix.EPOLLET
	evInOut = evIn | unix.EPOLLOUT
)

// noteEvent records what an edge from epoll says of s: there may be
// something to read (bytes, an EOF, an error), the peer hung up (rule 5:
// noted, never cleared), urgent data came (rule 2: short reads prove
// nothing from then on), or there is room to write.
func noteEvent(s *side, ev uint32) {
	if ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		mayRecv(s)
	}
	if ev&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		s.hup = true
	}
	if ev&unix.EPOLLPRI != 0 {
		mayRecv(s)
		s.urgent = true
	}
	if ev&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		maySend(s)
	}
}

// mayRecv: there may be something to read on s (an edge said so, or a
// read that filled its buffer leaves more).
func mayRecv(s *side) { s.readable = true }

// guessRecv: s is to be read on the next pass without an edge
// (speculate); a read that finds nothing is scored as a miss.
func guessRecv(s *side) {
	s.readable, s.spec = true, true
}

// cantRecv: a read or splice of s returned EAGAIN (rule 1). The socket is
// empty, and the next bytes bring an edge.
func cantRecv(s *side) { s.readable = false }

// readShort: a read(2) of s returned n bytes into a buffer of size. Short,
// it emptied the socket (rule 2: TCP gives a read all it has queued),
// except after a hang-up (the EOF came with the last bytes and no edge
// follows it) or urgent data (a read stops at the urgent mark): then s
// stays readable and the loop reads on to EAGAIN. Never for a splice,
// which also stops when the pipe is full.
func readShort(s *side, n, size int) {
	if n < size && !s.hup && !s.urgent {
		s.readable = false
	}
}

// maySend: s may take more bytes (an edge said so, or it is fresh).
func maySend(s *side) { s.writable = true }

// cantSend: a write to s returned EAGAIN (rule 4). It clears writable and
// arms output in the same step, so that the edge saying there is room
// again cannot be missed. An error means epoll would not watch s, and
// the caller must end the connection (pair.epollFailed).
func (lp *loop) cantSend(s *side) error {
	s.writable = false
	return lp.wantSend(s)
}

// cantSendStream: a link stream's TryWrite returned EAGAIN; that call
// armed its notify, which says when there is room (streamReady).
func cantSendStream(s *side) { s.writable = false }

// wantSend makes epoll report when s can take more bytes; it stays armed
// until stopSend.
func (lp *loop) wantSend(s *side) error {
	if s.outArmed {
		return nil
	}
	if err := lp.modify(s, evInOut); err != nil {
		return err
	}
	s.outArmed = true
	return nil
}

// stopSend stops output events for s: its connect completed, and a
// connected socket is watched for output only once a write blocks.
func (lp *loop) stopSend(s *side) error {
	if !s.outArmed {
		return nil
	}
	if err := lp.modify(s, evIn); err != nil {
		return err
	}
	s.outArmed = false
	return nil
}

// modify changes the events epoll watches on s. It fails with ENOMEM, or
// with EBADF or ENOENT should s's descriptor be gone from the set (a bug):
// either way what epoll watches is no longer what the loop believes, so
// the caller ends the connection rather than wait for an edge that may
// never come.
func (lp *loop) modify(s *side, events uint32) error {
	ev := unix.EpollEvent{Events: events, Fd: int32(s.fd), Pad: int32(s.gen)}
	if err := unix.EpollCtl(lp.epfd, unix.EPOLL_CTL_MOD, s.fd, &ev); err != nil {
		return os.NewSyscallError("epoll_ctl", err)
	}
	return nil
}

// register adds s to the loop's epoll set for input.
func (lp *loop) register(s *side) error {
	return lp.registerEvents(s, evIn)
}

// registerOut adds s for input and output (a connect in progress).
func (lp *loop) registerOut(s *side) error {
	if err := lp.registerEvents(s, evInOut); err != nil {
		return err
	}
	s.outArmed = true
	return nil
}

func (lp *loop) registerEvents(s *side, events uint32) error {
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
	ev := unix.EpollEvent{Events: events, Fd: int32(s.fd), Pad: int32(s.gen)}
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

// unwatch forgets s and takes its descriptor out of the epoll set, for a
// descriptor that stays open (a listener resting or closing, a socket
// moving to a handler goroutine or to Go's poller). Its error is ignored,
// and safely: EPOLL_CTL_DEL fails only for a descriptor that is not in
// the set (ENOENT: its registration had failed) or not open (EBADF), and
// should a registration outlive it, its events carry a generation the
// table no longer has and are dropped (batch).
func (lp *loop) unwatch(s *side) {
	lp.unregister(s)
	_ = unix.EpollCtl(lp.epfd, unix.EPOLL_CTL_DEL, s.fd, nil)
}
