package listen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// Upgrader starts the process that replaces this one and hands it the
// listening sockets. Its zero value is ready to use: it runs the binary now
// at this executable's path with the same arguments and environment.
type Upgrader struct {
	// Timeout bounds how long the new process may take to report ready
	// (default 1 minute). After it, the new process is stopped and the
	// upgrade fails.
	Timeout time.Duration
	// Executable returns the binary to run; nil means os.Executable, asked
	// at each upgrade. On Linux that is the path this process was started
	// from, so a binary installed over it (by rename) is what runs.
	Executable func() (string, error)
	// Args are the arguments, Args[0] included; nil means os.Args.
	Args []string
	// Env is the environment; nil means os.Environ(). Variables of an
	// earlier hand-over are dropped from it either way.
	Env []string
	// Stdout and Stderr of the new process; nil means this process's own.
	Stdout, Stderr *os.File

	busy atomic.Bool
}

// stopDelay is how long a new process that failed to become ready gets to
// end after SIGTERM (it may already have accepted a connection or two on
// the shared sockets, which its own graceful stop lets finish) before it
// is killed.
const stopDelay = 5 * time.Second

func (u *Upgrader) timeout() time.Duration {
	if u.Timeout <= 0 {
		return time.Minute
	}
	return u.Timeout
}

// Upgrade starts the new process with socks and waits until it reports
// ready, then returns its pid. The new process then owns its duplicates of
// the sockets, while this process keeps its own: the caller stops
// accepting (closes its listeners) and drains. The caller also closes the
// files in socks once Upgrade returns.
//
// On any error the new process has been stopped (and waited for), and
// nothing changed for this one: it keeps serving. Upgrade returns ErrBusy
// if another upgrade of u is under way, and gives up when ctx is done.
func (u *Upgrader) Upgrade(ctx context.Context, socks []Socket) (pid int, err error) {
	if !u.busy.CompareAndSwap(false, true) {
		return 0, ErrBusy
	}
	defer u.busy.Store(false)

	entries := make([]string, len(socks))
	files := make([]*os.File, 0, 1+len(socks))
	for i, s := range socks {
		if err := s.check(); err != nil {
			return 0, err
		}
		entries[i] = s.key() + "=" + strconv.Itoa(firstFD+1+i)
	}
	exe, err := u.executable()
	if err != nil {
		return 0, fmt.Errorf("finding the executable: %w", err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		return 0, fmt.Errorf("ready pipe: %w", err)
	}
	defer r.Close()
	files = append(files, w)
	for _, s := range socks {
		files = append(files, s.File)
	}

	cmd := &exec.Cmd{
		Path:       exe,
		Args:       u.args(),
		Env:        u.env(entries),
		Stdout:     orFile(u.Stdout, os.Stdout),
		Stderr:     orFile(u.Stderr, os.Stderr),
		ExtraFiles: files,
	}
	err = cmd.Start()
	w.Close() // the new process holds the only write end now
	if err != nil {
		return 0, fmt.Errorf("starting %s: %w", exe, err)
	}
	pid = cmd.Process.Pid

	if err := waitReady(ctx, r, u.timeout()); err != nil {
		return pid, fmt.Errorf("new process %s (pid %d) %w", exe, pid, stop(cmd, err))
	}
	// The new process lives on after this one: nothing waits for it here.
	_ = cmd.Process.Release()
	return pid, nil
}

// waitReady reads the one byte the new process writes when it serves.
func waitReady(ctx context.Context, r *os.File, timeout time.Duration) error {
	if err := r.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return fmt.Errorf("ready pipe: %w", err)
	}
	cancel := context.AfterFunc(ctx, func() { _ = r.SetReadDeadline(time.Unix(1, 0)) })
	defer cancel()
	var b [1]byte
	n, err := r.Read(b[:])
	switch {
	case n == 1:
		return nil
	case ctx.Err() != nil:
		return fmt.Errorf("was abandoned: %w", context.Cause(ctx))
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("did not report ready within %v", timeout)
	case errors.Is(err, io.EOF):
		return errExited
	default:
		return fmt.Errorf("ready pipe: %w", err)
	}
}

// errExited: the ready pipe closed without a word, which means the new
// process exited (or closed the pipe, which it only does on its way out).
var errExited = errors.New("exited before it was ready")

// stop ends a new process that will not take over: SIGTERM, then SIGKILL
// after stopDelay. It returns why in the words of cause and the exit.
func stop(cmd *exec.Cmd, cause error) error {
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	if cause != errExited {
		_ = cmd.Process.Signal(syscall.SIGTERM)
	}
	var werr error
	select {
	case werr = <-done:
	case <-time.After(stopDelay):
		_ = cmd.Process.Kill()
		werr = <-done
	}
	state := "exit status 0"
	if werr != nil {
		state = werr.Error()
	}
	if cause == errExited {
		return fmt.Errorf("%w (%s)", cause, state)
	}
	return fmt.Errorf("%w; stopped it (%s)", cause, state)
}

func (u *Upgrader) executable() (string, error) {
	if u.Executable != nil {
		return u.Executable()
	}
	return os.Executable()
}

func (u *Upgrader) args() []string {
	if u.Args != nil {
		return u.Args
	}
	return os.Args
}

func (u *Upgrader) env(entries []string) []string {
	src := u.Env
	if src == nil {
		src = os.Environ()
	}
	out := make([]string, 0, len(src)+3)
	for _, kv := range src {
		if !strings.HasPrefix(kv, envPrefix) {
			out = append(out, kv)
		}
	}
	return append(out,
		envFDs+"="+strings.Join(entries, ","),
		envReady+"="+strconv.Itoa(firstFD),
		envParent+"="+strconv.Itoa(os.Getpid()),
	)
}

func orFile(f, def *os.File) *os.File {
	if f != nil {
		return f
	}
	return def
}
