// Package sdnotify talks to systemd: it sends the service manager notify
// messages of a Type=notify unit (READY=1, RELOADING=1, STOPPING=1,
// STATUS=, MAINPID=, WATCHDOG=1) and takes the listening sockets of socket
// activation (LISTEN_FDS). It speaks the documented protocols of
// sd_notify(3) and sd_listen_fds(3) directly, over a unixgram socket and the
// inherited descriptors, so attache needs neither libsystemd nor cgo.
//
// Everything is a no-op outside systemd: FromEnviron returns a nil
// *Notifier when NOTIFY_SOCKET is unset, and every method of a nil
// *Notifier does nothing.
//
// Typical usage:
//
//	n, err := sdnotify.FromEnviron(os.Environ(), os.Getpid())
//	// ... open every listener ...
//	n.Ready("serving 3 services")
//	go n.Watchdog(ctx) // when the unit has WatchdogSec=
//	// SIGHUP:
//	n.Reloading("reloading")
//	n.Ready("serving 4 services")
//	// shutdown:
//	n.Stopping("draining")
package sdnotify

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Environment variables of the notify protocol (sd_notify(3),
// sd_watchdog_enabled(3)).
const (
	EnvSocket      = "NOTIFY_SOCKET"
	EnvWatchdogUS  = "WATCHDOG_USEC"
	EnvWatchdogPID = "WATCHDOG_PID"
)

// Notifier sends notify messages to the service manager. A nil *Notifier is
// valid and sends nothing.
type Notifier struct {
	addr     *net.UnixAddr
	watchdog time.Duration
}

// FromEnviron reads NOTIFY_SOCKET (and WATCHDOG_USEC/WATCHDOG_PID) from
// environ for the process pid. It returns nil and no error when
// NOTIFY_SOCKET is unset or empty: the process was not started by systemd
// as a notify service. The socket is a filesystem path ("/run/...") or an
// abstract name ("@..."); anything else is an error naming the variable.
//
// The watchdog is on when WATCHDOG_USEC is set and WATCHDOG_PID is unset or
// names pid, as sd_watchdog_enabled(3) says.
func FromEnviron(environ []string, pid int) (*Notifier, error) {
	socket := lookup(environ, EnvSocket)
	if socket == "" {
		return nil, nil
	}
	if !strings.HasPrefix(socket, "/") && !strings.HasPrefix(socket, "@") {
		// vsock:CID:PORT exists too, for virtual machines; not supported.
		return nil, fmt.Errorf("%s=%q: want an absolute socket path or an abstract name starting with @", EnvSocket, socket)
	}
	// Go's Linux sockaddr turns a leading '@' into the abstract namespace's
	// leading NUL byte, as systemd means it.
	n := &Notifier{addr: &net.UnixAddr{Name: socket, Net: "unixgram"}}
	if us := lookup(environ, EnvWatchdogUS); us != "" {
		v, err := strconv.ParseUint(us, 10, 63)
		if err != nil || v == 0 {
			return nil, fmt.Errorf("%s=%q: want a positive number of microseconds", EnvWatchdogUS, us)
		}
		wpid := lookup(environ, EnvWatchdogPID)
		if wpid == "" || wpid == strconv.Itoa(pid) {
			n.watchdog = time.Duration(v) * time.Microsecond
		}
	}
	return n, nil
}

// lookup is the value of name in environ, "" when unset. The first
// mention wins on a duplicated name, as with getenv(3) and os.Getenv (and
// so with sd_listen_fds(3)).
func lookup(environ []string, name string) string {
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok && k == name {
			return v
		}
	}
	return ""
}

// Send sends one message of newline-separated VARIABLE=value assignments,
// in one datagram, as sd_notify(3) does. Each send uses a fresh socket, so
// the credentials the kernel attaches are those of the process that sends
// (after an upgrade, the new one).
func (n *Notifier) Send(assignments ...string) error {
	if n == nil || len(assignments) == 0 {
		return nil
	}
	for _, a := range assignments {
		if !strings.Contains(a, "=") || strings.Contains(a, "\n") {
			return fmt.Errorf("notify %s: assignment %q: want VARIABLE=value on one line", n.addr.Name, a)
		}
	}
	c, err := net.DialUnix("unixgram", nil, n.addr)
	if err != nil {
		return fmt.Errorf("notify %s: %w", n.addr.Name, unwrapOp(err))
	}
	defer c.Close()
	if _, err := c.Write([]byte(strings.Join(assignments, "\n"))); err != nil {
		return fmt.Errorf("notify %s: %w", n.addr.Name, unwrapOp(err))
	}
	return nil
}

// Ready says the service is up (READY=1), with a status line if status is
// not empty. Sent again after a reload, it ends the reload.
func (n *Notifier) Ready(status string) error {
	return n.Send(withStatus(status, "READY=1")...)
}

// Reloading says a reload has begun (RELOADING=1 with MONOTONIC_USEC, the
// form Type=notify-reload requires); Ready ends it.
func (n *Notifier) Reloading(status string) error {
	if n == nil {
		return nil
	}
	now, err := monotonicUsec()
	if err != nil {
		return fmt.Errorf("notify %s: %w", n.addr.Name, err)
	}
	return n.Send(withStatus(status, "RELOADING=1", "MONOTONIC_USEC="+strconv.FormatUint(now, 10))...)
}

// Stopping says the service is shutting down (STOPPING=1).
func (n *Notifier) Stopping(status string) error {
	return n.Send(withStatus(status, "STOPPING=1")...)
}

// MainPID tells the service manager that pid is the service's main process
// now, and that it is ready: sent by the new process of a zero-downtime
// upgrade before the old one exits, so systemd follows the new pid instead
// of taking the old one's exit for the service's end. systemd accepts it
// from a process other than the main one only with NotifyAccess=all.
func (n *Notifier) MainPID(pid int, status string) error {
	return n.Send(withStatus(status, "MAINPID="+strconv.Itoa(pid), "READY=1")...)
}

// WatchdogInterval is how often systemd expects WATCHDOG=1 (the unit's
// WatchdogSec=), 0 when the watchdog is off.
func (n *Notifier) WatchdogInterval() time.Duration {
	if n == nil {
		return 0
	}
	return n.watchdog
}

// Watchdog sends WATCHDOG=1 at half the watchdog interval until ctx is
// done, and returns at once when the watchdog is off. A failed send is
// retried at the next tick: the manager restarts the service if too many
// are missed, which is the point.
func (n *Notifier) Watchdog(ctx context.Context) {
	every := n.WatchdogInterval() / 2
	if every <= 0 {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	_ = n.Send("WATCHDOG=1")
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			_ = n.Send("WATCHDOG=1")
		}
	}
}

func withStatus(status string, assignments ...string) []string {
	if status != "" {
		assignments = append(assignments, "STATUS="+oneLine(status))
	}
	return assignments
}

// oneLine keeps a status to the first line: a newline would end the
// assignment and start another.
func oneLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

// monotonicUsec is CLOCK_MONOTONIC in microseconds, the clock systemd
// compares MONOTONIC_USEC against.
func monotonicUsec() (uint64, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0, fmt.Errorf("clock_gettime(CLOCK_MONOTONIC): %w", err)
	}
	return uint64(ts.Sec)*1e6 + uint64(ts.Nsec)/1e3, nil
}

func unwrapOp(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		return oe.Err
	}
	return err
}
