package proxy

import (
	"fmt"
	"net"
	"syscall"
)

// SyscallConn gives access to the listening socket, so that a zero-downtime
// upgrade can hand a duplicate of it to the new process (listen.Dup). The
// socket stays owned by l.
func (l *Listener) SyscallConn() (syscall.RawConn, error) {
	sc, ok := l.ln.(syscall.Conn)
	if !ok {
		return nil, fmt.Errorf("listener %s: not an operating system socket", l.Addr())
	}
	return sc.SyscallConn()
}

// HandOver marks l's socket as handed to a new process in an upgrade:
// closing l then leaves a Unix socket's file in place, because the new
// process serves the very same socket through it. TCP listeners need
// nothing.
func (l *Listener) HandOver() {
	if ul, ok := l.ln.(*net.UnixListener); ok {
		ul.SetUnlinkOnClose(false)
	}
}
