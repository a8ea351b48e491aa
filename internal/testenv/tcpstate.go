package testenv

import (
	"io"
	"net"
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

// FloodUntilEnd writes to c without pause while it reads c to its end, and
// returns how the reading ended: the far end of a test that resets while
// bytes flow towards it. An EOF on a TCP socket a reset closed is returned
// as ECONNRESET: the reset's error went to the flooding write (the kernel
// reports it once), so the EOF stands for the reset.
func FloodUntilEnd(c net.Conn) error {
	go func() {
		b := make([]byte, 16<<10)
		for {
			if _, err := c.Write(b); err != nil {
				return
			}
		}
	}()
	b := make([]byte, 4<<10)
	for {
		if _, err := c.Read(b); err != nil {
			if sc, ok := c.(syscall.Conn); ok && err == io.EOF && TCPClosed(sc) {
				return unix.ECONNRESET
			}
			return err
		}
	}
}
