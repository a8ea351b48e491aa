package proxy

import (
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The loop's own system calls, made raw: every one of them is
// non-blocking, so the scheduler's bookkeeping for a call that might block
// (entersyscall, exitsyscall, and sysmon waking every 20µs to look at a P
// "in a system call") would only cost. The loop's one blocking call, its
// idle epoll_wait, and the handler goroutines' waits never come through
// here.

func errnoErr(e unix.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

// rawRead, rawWrite and rawSplice retry when a signal interrupts them.

func rawRead(fd int, b []byte) (int, error) {
	for {
		r, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
		if e != unix.EINTR {
			return int(r), errnoErr(e)
		}
	}
}

func rawWrite(fd int, b []byte) (int, error) {
	for {
		r, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
		if e != unix.EINTR {
			return int(r), errnoErr(e)
		}
	}
}

// rawWritev writes bufs to fd with one writev(2); iov is reused for the
// iovecs.
func rawWritev(fd int, bufs [][]byte, iov *[]unix.Iovec) (int, error) {
	v := (*iov)[:0]
	for _, b := range bufs {
		if len(b) == 0 {
			continue
		}
		e := unix.Iovec{Base: unsafe.SliceData(b)}
		e.SetLen(len(b))
		v = append(v, e)
	}
	*iov = v
	if len(v) == 0 {
		return 0, nil
	}
	for {
		r, _, e := unix.RawSyscall(unix.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(v))), uintptr(len(v)))
		if e != unix.EINTR {
			if e != 0 {
				return 0, e
			}
			return int(r), nil
		}
	}
}

func rawClose(fd int) {
	_, _, _ = unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0)
}

// rawResetOnClose makes fd's close(2) send a reset (RST) instead of a FIN
// (SO_LINGER on, with no time to linger), and drop what is still queued to
// send: the way to tell a peer its stream was cut, not complete.
func rawResetOnClose(fd int) {
	_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
}

// rawDisconnect cuts fd's connection with a reset (RST), as a close with
// rawResetOnClose would, but leaves the descriptor open: connect(2) to an
// AF_UNSPEC address makes Linux disconnect a TCP socket (tcp_disconnect),
// which also wakes a poll(2) waiting on it in another goroutine.
func rawDisconnect(fd int) error {
	var sa unix.RawSockaddrAny
	sa.Addr.Family = unix.AF_UNSPEC
	_, _, e := unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa)), unix.SizeofSockaddrAny)
	if e != 0 {
		return os.NewSyscallError("connect AF_UNSPEC", e)
	}
	return nil
}

func rawShutdownRead(fd int) {
	_, _, _ = unix.RawSyscall(unix.SYS_SHUTDOWN, uintptr(fd), unix.SHUT_RD, 0)
}

func rawShutdownWrite(fd int) {
	_, _, _ = unix.RawSyscall(unix.SYS_SHUTDOWN, uintptr(fd), unix.SHUT_WR, 0)
}

func rawSplice(in, out, max int) (int, error) {
	for {
		r, _, e := unix.RawSyscall6(unix.SYS_SPLICE, uintptr(in), 0, uintptr(out), 0, uintptr(max), unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
		if e != unix.EINTR {
			return int(r), errnoErr(e)
		}
	}
}

// rawSetsockoptInt is unix.SetsockoptInt without the scheduler's
// bookkeeping (setsockopt never blocks): the one every dial makes
// (TCP_NODELAY) and keepalive's.
func rawSetsockoptInt(fd, level, opt, value int) error {
	v := int32(value)
	_, _, e := unix.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt), uintptr(unsafe.Pointer(&v)), 4, 0)
	return errnoErr(e)
}
