package proxy

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// parkedEpoll lets a loop that carries link streams wait for its events
// in Go's poller instead of a blocking epoll_wait.
//
// A blocking system call keeps its goroutine's P until the runtime's
// sysmon thread takes it back, 20 µs to 10 ms later. A plain loop loses
// nothing by that, but a link stream's bytes also pass through the
// session's goroutines (the reader, the flusher): woken while both Ps sit
// in loops' epoll_wait, they waited for sysmon, and the machine idled
// meanwhile. Parked in the poller, the loop gives its P back at once, the
// flusher it just woke runs on the same thread, and the poller notices
// the session's socket at once.
//
// It is a duplicate of the loop's epoll descriptor (the same epoll
// instance), registered in Go's poller: an epoll descriptor is readable
// while events are ready in it.
type parkedEpoll struct {
	f        *os.File
	rc       syscall.RawConn
	deadline bool // a read deadline is set on f
}

func newParkedEpoll(epfd int) (*parkedEpoll, error) {
	fd, err := unix.FcntlInt(uintptr(epfd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, os.NewSyscallError("fcntl F_DUPFD_CLOEXEC", err)
	}
	// O_NONBLOCK marks it for the poller (epoll_wait itself ignores
	// the flag: it waits as its timeout says).
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("fcntl O_NONBLOCK", err)
	}
	f := os.NewFile(uintptr(fd), "epoll")
	rc, err := f.SyscallConn()
	if err == nil {
		// A file the poller did not take has no deadlines: waiting on
		// it would block the thread for good.
		err = f.SetReadDeadline(time.Time{})
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("epoll descriptor in Go's poller: %w", err)
	}
	return &parkedEpoll{f: f, rc: rc}, nil
}

// wait returns the ready events, waiting up to msec milliseconds (for
// ever when msec is negative) parked in the poller.
func (p *parkedEpoll) wait(events []unix.EpollEvent, msec int) (int, error) {
	switch {
	case msec >= 0:
		_ = p.f.SetReadDeadline(time.Now().Add(time.Duration(msec) * time.Millisecond))
		p.deadline = true
	case p.deadline:
		_ = p.f.SetReadDeadline(time.Time{})
		p.deadline = false
	}
	var n int
	var werr error
	err := p.rc.Read(func(fd uintptr) bool {
		// Events are collected without waiting; the poller waits
		// (returning false) only after a look found none, and any
		// event after that look wakes it.
		for {
			n, werr = epollWaitRaw(int(fd), events, 0)
			if werr != unix.EINTR {
				return n > 0 || werr != nil
			}
		}
	})
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return n, werr
}

func (p *parkedEpoll) close() { _ = p.f.Close() }
