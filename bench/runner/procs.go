package main

import (
	"context"

	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// A supervisor starts the harness's child processes and is the only thing
// that stops them. Every child leads its own process group, so one kill(-pid)
// also reaches what it forked (socat forks a child per connection), and a
// Ctrl-C at the terminal reaches only the runner, which then stops the groups
// it started, by their ids, in stopAll.
type supervisor struct {
	logDir string

	mu   sync.Mutex
	live map[int]*child
	wg   sync.WaitGroup
}

// A child is one started process (the leader of its process group).
type child struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed once the leader has been reaped
	err     error         // from Wait, valid after done
}

func newSupervisor(logDir string) *supervisor {
	return &supervisor{logDir: logDir, live: map[int]*child{}}
}

func groupAttr() *syscall.SysProcAttr {
	// Pdeathsig is a safety net for a runner killed with SIGKILL: the leaders
	// die with it. Grandchildren (socat's) are reached only by stopAll.
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// start runs a long-lived process. Its stdout and stderr go to
// logDir/<logName>.log unless the caller has set them (cmd.Stdout etc.).
func (s *supervisor) start(logName string, cmd *exec.Cmd) (*child, error) {
	cmd.SysProcAttr = groupAttr()
	c := &child{name: filepath.Base(cmd.Path), cmd: cmd, done: make(chan struct{})}
	var logf *os.File
	if cmd.Stdout == nil || cmd.Stderr == nil {
		c.logPath = filepath.Join(s.logDir, logName+".log")
		f, err := os.Create(c.logPath)
		if err != nil {
			return nil, err
		}
		logf = f
		fmt.Fprintf(f, "# %s\n", strings.Join(cmd.Args, " "))
		if cmd.Stdout == nil {
			cmd.Stdout = f
		}
		if cmd.Stderr == nil {
			cmd.Stderr = f
		}
	}
	if err := cmd.Start(); err != nil {
		if logf != nil {
			logf.Close()
		}
		return nil, fmt.Errorf("start %s: %w", c.name, err)
	}
	s.mu.Lock()
	s.live[cmd.Process.Pid] = c
	s.mu.Unlock()
	s.wg.Go(func() {
		c.err = cmd.Wait()
		if logf != nil {
			logf.Close()
		}
		close(c.done)
	})
	return c, nil
}

func (c *child) pid() int { return c.cmd.Process.Pid }

func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// logTail returns the last lines of the child's log, for error messages.
func (c *child) logTail() string {
	if c.logPath == "" {
		return ""
	}
	b, err := os.ReadFile(c.logPath)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	return strings.Join(lines, "\n")
}

// stop sends SIGTERM to the child's process group, waits for the group to
// empty, and sends SIGKILL to whatever is left after a grace period.
func (s *supervisor) stop(c *child) {
	pgid := c.pid()
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if c.exited() && len(groupMembers(pgid)) == 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if len(groupMembers(pgid)) > 0 {
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
	}
	<-c.done
	// Wait for SIGKILLed stragglers to be gone, so their sockets and memory
	// do not leak into the next measurement.
	for i := 0; i < 500 && len(groupMembers(pgid)) > 0; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	s.mu.Lock()
	delete(s.live, pgid)
	s.mu.Unlock()
}

// stopAll stops every child still running (on exit and on Ctrl-C).
func (s *supervisor) stopAll() {
	s.mu.Lock()
	var all []*child
	for _, c := range s.live {
		all = append(all, c)
	}
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range all {
		wg.Go(func() { s.stop(c) })
	}
	wg.Wait()
	s.wg.Wait()
}

// output runs a short-lived command in its own process group and returns its
// standard output. Cancelling ctx kills the whole group.
func output(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = groupAttr()
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > 300 {
			msg = msg[len(msg)-300:]
		}
		return out, fmt.Errorf("%s: %w: %s", name, err, msg)
	}
	return out, nil
}

// A probe checks, over a fresh connection, that the whole path answers.
type probe func(net.Conn) error

// pingProbe expects a Redis server at the end of the path.
func pingProbe(c net.Conn) error {
	if _, err := io.WriteString(c, "PING\r\n"); err != nil {
		return err
	}
	buf := make([]byte, 7)
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != "+PONG\r\n" {
		return fmt.Errorf("got %q, want +PONG", buf)
	}
	return nil
}

// eofProbe half-closes and waits for the far end to close in turn. iperf3's
// server treats it as an aborted test and keeps serving; waiting for the EOF
// makes sure the probe is finished before the real test starts.
func eofProbe(c net.Conn) error {
	if tc, ok := c.(*net.TCPConn); ok {
		if err := tc.CloseWrite(); err != nil {
			return err
		}
	}
	_, err := io.Copy(io.Discard, c)
	return err
}

// waitReady polls addr until a connection succeeds and p passes on it, or
// until the deadline. It gives up early if one of procs has exited.
func waitReady(ctx context.Context, addr string, p probe, procs []*child, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	var last error
	for {
		for _, c := range procs {
			if c.exited() {
				return fmt.Errorf("%s exited before %s was ready (%v)\n%s", c.name, addr, c.err, c.logTail())
			}
		}
		c, err := net.DialTimeout("tcp", addr, 500*time.Millisecond)
		if err == nil {
			_ = c.SetDeadline(time.Now().Add(3 * time.Second))
			err = p(c)
			c.Close()
			if err == nil {
				return nil
			}
		}
		last = err
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %v: %w", addr, limit, last)
		}
		if err := sleep(ctx, 20*time.Millisecond); err != nil {
			return err
		}
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// portFree reports an error if something already listens on addr.
func portFree(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("port %s is taken: %w", addr, err)
	}
	return ln.Close()
}
