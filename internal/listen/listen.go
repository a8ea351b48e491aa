// Package listen is how attache obtains its listening sockets: opened fresh
// with a net.ListenConfig, or inherited from the process it replaces in a
// zero-downtime upgrade.
//
// An upgrade hands the very same sockets to a new process instead of
// closing and reopening the ports, so the kernel never has a moment with
// nobody listening: connections that arrive while the processes change
// places wait in the shared accept queue and are accepted by whichever
// process accepts first. The old process stops accepting only once the new
// one reports that it serves every port.
//
// Typical usage, in the old process:
//
//	f, err := listen.Dup(ln.(*net.TCPListener)) // one per listener
//	socks := []listen.Socket{{Kind: "service", Network: "tcp4", Addr: "127.0.0.1:6379", File: f}}
//	pid, err := (&listen.Upgrader{}).Upgrade(ctx, socks)
//	// err == nil: the new process serves; stop accepting and drain.
//
// and in every process, old or new:
//
//	in, err := listen.FromEnviron(os.Environ()) // nil, nil when not started by an upgrade
//	ln, err := in.Listen(ctx, lc, "service", "tcp4", "127.0.0.1:6379")
//	// ... once everything serves:
//	unused, err := in.Ready()
//
// The hand-over speaks through the environment and inherited descriptors
// only, so an old and a new binary agree as long as this format holds:
//
//	ATTACHE_UPGRADE_FDS=KIND:NETWORK:ADDR=FD,...  the inherited listening sockets
//	ATTACHE_UPGRADE_READY_FD=FD                   a pipe: write one byte when ready
//	ATTACHE_UPGRADE_PARENT=PID                    the process being replaced (for logs)
package listen

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Kinds of listener. Sockets are matched by kind as well as address, so an
// admin API and a service both configured on port 0 of one host never swap
// sockets.
const (
	KindService = "service"
	KindAdmin   = "admin"
)

// Environment variables of the hand-over; every variable with envPrefix is
// dropped from the environment passed on, so a new process never sees the
// descriptors of an earlier upgrade.
const (
	envPrefix = "ATTACHE_UPGRADE_"
	envFDs    = envPrefix + "FDS"
	envReady  = envPrefix + "READY_FD"
	envParent = envPrefix + "PARENT"
)

// firstFD is the descriptor number of the first exec.Cmd.ExtraFiles entry.
const firstFD = 3

// Socket is one listening socket handed to a new process, named by what it
// serves and how it was configured (not by the address it is bound to: a
// configured port 0 is bound to some other port, and the new process knows
// only its configuration).
type Socket struct {
	Kind    string   // KindService or KindAdmin
	Network string   // as given to Listen: "tcp", "tcp4", "tcp6" or "unix"
	Addr    string   // the configured address, e.g. "127.0.0.1:6379" or ":0"; a Unix socket's path
	File    *os.File // a duplicate of the socket (see Dup); the caller closes it
}

func (s Socket) key() string { return key(s.Kind, s.Network, s.Addr) }

func key(kind, network, addr string) string { return kind + ":" + network + ":" + addr }

// check rejects names that the environment format could not carry back.
func (s Socket) check() error {
	switch {
	case s.Kind == "" || strings.ContainsAny(s.Kind, ":=,"):
		return fmt.Errorf("socket %q: kind must be non-empty without ':', '=' or ','", s.key())
	case s.Network == "" || strings.ContainsAny(s.Network, ":=,"):
		return fmt.Errorf("socket %q: network must be non-empty without ':', '=' or ','", s.key())
	case strings.ContainsAny(s.Addr, "=,"):
		return fmt.Errorf("socket %q: address must not contain '=' or ','", s.key())
	case s.File == nil:
		return fmt.Errorf("socket %q: no file", s.key())
	}
	return nil
}

// Dup returns a close-on-exec duplicate of a listener's socket for a Socket.
//
// Unlike (*net.TCPListener).File, it leaves the shared socket in
// non-blocking mode when the file is passed to exec.Cmd.ExtraFiles
// (os.StartProcess calls Fd, which switches a net-made File to blocking
// mode, and the flag is shared by every duplicate: the listener would then
// block a thread in accept(2) and could no longer be closed while accepting).
func Dup(ln syscall.Conn) (*os.File, error) {
	rc, err := ln.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("dup listener: %w", err)
	}
	var (
		dup  int
		derr error
	)
	if err := rc.Control(func(fd uintptr) {
		dup, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return nil, fmt.Errorf("dup listener: %w", err)
	}
	if derr != nil {
		return nil, fmt.Errorf("dup listener: %w", os.NewSyscallError("fcntl", derr))
	}
	name := "listener"
	if a, ok := ln.(interface{ Addr() net.Addr }); ok {
		name = a.Addr().String()
	}
	return os.NewFile(uintptr(dup), name), nil
}

// ErrBusy is returned by Upgrade while another upgrade is under way.
var ErrBusy = errors.New("an upgrade is already in progress")
