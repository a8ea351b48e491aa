package listen

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Inherited is what a process started by an upgrade received from the
// process it replaces: listening sockets, and a pipe on which to say that
// it serves. A nil *Inherited is valid and means "not started by an
// upgrade": Listen then always opens a new socket and Ready does nothing.
type Inherited struct {
	parent int

	mu      sync.Mutex
	sockets map[string][]net.Listener // by key, in the order they were handed over
	ready   *os.File
	// unix are the Unix listeners taken: their socket files are removed
	// on close only once this process has taken over (see Ready).
	unix []*net.UnixListener
	// activated are the sockets of socket activation (activation.go), by
	// network family and configured address; nil in an upgrade.
	activated map[string]any
}

// FromEnviron finds the sockets and the ready pipe that an upgrade passed
// in environ (the process's environment, os.Environ()). It returns nil and
// no error when the process was not started by an upgrade. Every inherited
// descriptor is made close-on-exec at once, so none leaks into a later
// upgrade's process except through its own hand-over.
func FromEnviron(environ []string) (*Inherited, error) {
	var fds, ready, parent string
	var haveFDs, haveReady bool
	for _, kv := range environ {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case envFDs:
			fds, haveFDs = v, true
		case envReady:
			ready, haveReady = v, true
		case envParent:
			parent = v
		}
	}
	if !haveFDs && !haveReady {
		return nil, nil
	}
	if !haveReady {
		return nil, fmt.Errorf("%s is set but %s is not: both come from an upgrade", envFDs, envReady)
	}
	in := &Inherited{sockets: map[string][]net.Listener{}}
	in.parent, _ = strconv.Atoi(parent)
	readyFD, err := parseFD(ready)
	if err != nil {
		return nil, fmt.Errorf("%s=%q: %w", envReady, ready, err)
	}
	syscall.CloseOnExec(readyFD)
	in.ready = os.NewFile(uintptr(readyFD), "upgrade-ready")
	if fds != "" {
		for entry := range strings.SplitSeq(fds, ",") {
			if err := in.adopt(entry); err != nil {
				in.closeAll()
				return nil, fmt.Errorf("%s: %w", envFDs, err)
			}
		}
	}
	return in, nil
}

// adopt takes one KIND:NETWORK:ADDR=FD entry.
func (in *Inherited) adopt(entry string) error {
	i := strings.LastIndexByte(entry, '=')
	if i < 0 {
		return fmt.Errorf("entry %q: want KIND:NETWORK:ADDR=FD", entry)
	}
	name, fdText := entry[:i], entry[i+1:]
	kind, rest, ok1 := strings.Cut(name, ":")
	network, addr, ok2 := strings.Cut(rest, ":")
	if !ok1 || !ok2 || kind == "" || network == "" {
		return fmt.Errorf("entry %q: want KIND:NETWORK:ADDR=FD", entry)
	}
	fd, err := parseFD(fdText)
	if err != nil {
		return fmt.Errorf("entry %q: %w", entry, err)
	}
	syscall.CloseOnExec(fd)
	f := os.NewFile(uintptr(fd), name)
	defer f.Close() // FileListener keeps a duplicate of its own
	if v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err != nil || v == 0 {
		if err == nil {
			err = errors.New("socket is not listening")
		}
		return fmt.Errorf("entry %q: fd %d is not a listening socket: %w", entry, fd, err)
	}
	ln, err := net.FileListener(f)
	if err != nil {
		return fmt.Errorf("entry %q: fd %d: %w", entry, fd, err)
	}
	k := key(kind, network, addr)
	in.sockets[k] = append(in.sockets[k], ln)
	return nil
}

func parseFD(s string) (int, error) {
	fd, err := strconv.Atoi(s)
	if err != nil || fd < firstFD {
		return 0, fmt.Errorf("want a file descriptor number (%d or more), got %q", firstFD, s)
	}
	return fd, nil
}

// Parent is the process id of the process being replaced, 0 if unknown or
// not started by an upgrade.
func (in *Inherited) Parent() int {
	if in == nil {
		return 0
	}
	return in.parent
}

// Listen returns the inherited socket handed over for (kind, network,
// addr), if there is one left, and otherwise opens a new one with lc. An
// inherited socket gets lc's Control applied, so socket options configured
// anew (keepalive) take effect on it as on a fresh one.
func (in *Inherited) Listen(ctx context.Context, lc net.ListenConfig, kind, network, addr string) (net.Listener, error) {
	ln := in.Take(kind, network, addr)
	if ln == nil {
		return lc.Listen(ctx, network, addr)
	}
	if lc.Control == nil {
		return ln, nil
	}
	sc, ok := ln.(syscall.Conn)
	if !ok {
		ln.Close()
		return nil, fmt.Errorf("inherited %s socket %s: cannot set socket options", kind, addr)
	}
	rc, err := sc.SyscallConn()
	if err == nil {
		err = lc.Control(network, ln.Addr().String(), rc)
	}
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("inherited %s socket %s: %w", kind, addr, err)
	}
	return ln, nil
}

// Take returns the inherited socket handed over for (kind, network, addr),
// or nil if there is none left (or in is nil). Each socket is handed out
// once; several with one name come out in the order they were handed over.
// For a Unix socket, addr is the path.
func (in *Inherited) Take(kind, network, addr string) net.Listener {
	if in == nil {
		return nil
	}
	k := key(kind, network, addr)
	in.mu.Lock()
	defer in.mu.Unlock()
	q := in.sockets[k]
	if len(q) == 0 {
		ln, _ := in.takeActivated(network, addr).(net.Listener)
		return ln // systemd owns a Unix socket's file: never removed here
	}
	ln := q[0]
	if len(q) == 1 {
		delete(in.sockets, k)
	} else {
		in.sockets[k] = q[1:]
	}
	if ul, ok := ln.(*net.UnixListener); ok {
		// The old process still serves this socket: closing it before
		// the hand-over (a failed start) must not remove its file.
		ul.SetUnlinkOnClose(false)
		in.unix = append(in.unix, ul)
	}
	return ln
}

// Ready tells the process being replaced that this one now serves every
// listener, so it may stop accepting. It first closes the inherited sockets
// nobody took (a service the new configuration dropped) and returns their
// names for the log: the old process still serves them until it hears
// Ready, and their ports close when it lets go. From Ready on, this process
// owns the Unix socket files it took and removes them when it closes them
// (the old process must leave them in place; see the daemon's hand-over).
// Ready does nothing on a nil Inherited and is a no-op after the first call.
func (in *Inherited) Ready() (unused []string, err error) {
	if in == nil {
		return nil, nil
	}
	unused = in.closeSockets()
	in.mu.Lock()
	f := in.ready
	in.ready = nil
	if f != nil {
		for _, ul := range in.unix {
			ul.SetUnlinkOnClose(true)
		}
	}
	in.mu.Unlock()
	if f == nil {
		return unused, nil
	}
	defer f.Close()
	if _, err := f.Write([]byte{'R'}); err != nil {
		// EPIPE: the old process gave up waiting (or died) and closed its end.
		return unused, fmt.Errorf("telling the old process (pid %d) that this one is ready: %w", in.parent, err)
	}
	return unused, nil
}

// Close closes whatever was inherited and not taken, without telling the
// old process anything: it will see the pipe close and keep serving.
func (in *Inherited) Close() {
	if in == nil {
		return
	}
	in.closeAll()
}

func (in *Inherited) closeAll() {
	in.closeSockets()
	in.mu.Lock()
	f := in.ready
	in.ready = nil
	in.mu.Unlock()
	if f != nil {
		f.Close()
	}
}

func (in *Inherited) closeSockets() []string {
	in.mu.Lock()
	defer in.mu.Unlock()
	var names []string
	for k, q := range in.sockets {
		for _, ln := range q {
			ln.Close()
			names = append(names, k)
		}
	}
	clear(in.sockets)
	names = append(names, in.closeActivated()...)
	slices.Sort(names)
	return names
}
