package cli

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/attache/attache/internal/pidfile"
)

// runUpgrade is `attache upgrade`: it sends SIGUSR2 to a running attache,
// which starts the binary now at its path and hands it the listening
// sockets. With --pid-file it then waits until the new process has
// rewritten the pid file (which it does once it serves every listener) and
// prints the old and new pids.
func upgradeCommand(e Env) *cobra.Command {
	var (
		path string
		pid  int
		wait time.Duration
	)
	c := &cobra.Command{
		Use:   "upgrade (--pid-file PATH | --pid PID) [--wait DURATION]",
		Short: "zero-downtime upgrade of a running attache (SIGUSR2)",
		Long: `Upgrade sends SIGUSR2: the running attache starts the binary now at its path
with the same arguments, hands it the listening sockets and drains. No
connection is refused.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return exitWith(runUpgrade(cmd.Context(), e, path, pid, wait))
		},
	}
	c.Flags().StringVar(&path, "pid-file", "", "the running attache's pid file (its --pid-file `PATH`); the command waits for the new process")
	c.Flags().IntVar(&pid, "pid", 0, "the running attache's process id `PID`, when it has no pid file (the command does not wait)")
	c.Flags().DurationVar(&wait, "wait", time.Minute, "with --pid-file, how long to wait for the new process, a `DURATION` (0: do not wait)")
	return c
}

func runUpgrade(ctx context.Context, e Env, path string, pid int, wait time.Duration) int {
	switch {
	case (path == "") == (pid == 0):
		fmt.Fprintln(e.Stderr, "attache upgrade: want exactly one of --pid-file PATH or --pid PID")
		return ExitUsage
	case pid < 0:
		fmt.Fprintf(e.Stderr, "attache upgrade: flag --pid: want a process id, got %d\n", pid)
		return ExitUsage
	case wait < 0:
		fmt.Fprintf(e.Stderr, "attache upgrade: flag --wait: want a duration of 0 or more, got %v\n", wait)
		return ExitUsage
	}
	old := pid
	from := ""
	if path != "" {
		var err error
		if old, err = pidfile.Read(path); err != nil {
			fmt.Fprintf(e.Stderr, "attache upgrade: %v\n", err)
			return ExitRuntime
		}
		from = " (from " + path + ")"
	}
	if err := syscall.Kill(old, syscall.SIGUSR2); err != nil {
		if errors.Is(err, syscall.ESRCH) {
			fmt.Fprintf(e.Stderr, "attache upgrade: no process %d%s: is attache running?\n", old, from)
		} else {
			fmt.Fprintf(e.Stderr, "attache upgrade: signalling pid %d%s: %v\n", old, from, err)
		}
		return ExitRuntime
	}
	if path == "" || wait == 0 {
		fmt.Fprintf(e.Stdout, "sent SIGUSR2 to pid %d\n", old)
		return ExitOK
	}
	newPID, err := awaitSuccessor(ctx, path, old, wait)
	if err != nil {
		fmt.Fprintf(e.Stderr, "attache upgrade: %v\n", err)
		return ExitRuntime
	}
	fmt.Fprintf(e.Stdout, "upgraded: pid %d → %d\n", old, newPID)
	return ExitOK
}

// awaitSuccessor polls the pid file until it names a live process other
// than old. The old process's own log says why when that never happens.
func awaitSuccessor(ctx context.Context, path string, old int, wait time.Duration) (int, error) {
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		cur, err := pidfile.Read(path)
		if err == nil && cur != old && alive(cur) {
			return cur, nil
		}
		if !alive(old) {
			return 0, fmt.Errorf("pid %d exited and no new process took over (%s): see its log", old, path)
		}
		select {
		case <-tick.C:
		case <-deadline.C:
			return 0, fmt.Errorf("no new process within %v: %s still names pid %d; the upgrade failed or is still starting, see the log of pid %d",
				wait, path, old, old)
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

// alive reports whether a process with this id exists (EPERM: it does, but
// belongs to someone else).
func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
