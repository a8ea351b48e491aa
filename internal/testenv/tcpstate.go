package testenv

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// TCPClosed reports whether c's TCP state is CLOSE: a reset came (or the
// connection ended both ways), unlike a FIN alone, after which a socket
// that still sends is half-open (CLOSE_WAIT). A peer whose read saw an EOF
// tells with it whether the EOF stood for a reset whose error went to its
// own write (the kernel reports a reset's error to one call only).
func TCPClosed(c syscall.Conn) bool {
	raw, err := c.SyscallConn()
	if err != nil {
		return false
	}
	closed := false
	_ = raw.Control(func(fd uintptr) {
		info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
		closed = err == nil && info.State == unix.BPF_TCP_CLOSE
	})
	return closed
}
