package cli

import (
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/attache/attache/internal/pidfile"
)

func TestUpgradeCommandErrors(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.pid")
	if err := os.WriteFile(garbage, []byte("not a pid\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A pid that surely names no process: one that has exited and was reaped.
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(dir, "stale.pid")
	if err := pidfile.Write(stale, gone.Process.Pid); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no target", nil, ExitUsage, "want exactly one of --pid-file PATH or --pid PID"},
		{"both targets", []string{"--pid", "1", "--pid-file", stale}, ExitUsage, "want exactly one"},
		{"negative pid", []string{"--pid", "-4"}, ExitUsage, "flag --pid: want a process id, got -4"},
		{"extra argument", []string{"--pid", "1", "now"}, ExitUsage, `unexpected argument "now"`},
		{"missing pid file", []string{"--pid-file", filepath.Join(dir, "none.pid")}, ExitRuntime, "no such file"},
		{"garbage pid file", []string{"--pid-file", garbage}, ExitRuntime, `want a process id, got "not a pid"`},
		{"stale pid file", []string{"--pid-file", stale}, ExitRuntime,
			"no process " + strconv.Itoa(gone.Process.Pid) + " (from " + stale + "): is attache running?"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := run(t, nil, append([]string{"upgrade"}, tt.args...)...)
			if code != tt.code || !strings.Contains(stderr, tt.want) {
				t.Fatalf("exit %d, stderr %q; want exit %d and %q", code, stderr, tt.code, tt.want)
			}
		})
	}
}

// TestUpgradeCommandWaits plays the running attache itself: it receives
// the SIGUSR2 and rewrites the pid file with a live process (a sleep
// standing in for the new attache), or does not, and the command reports
// the new pid or gives up naming the old one.
func TestUpgradeCommandWaits(t *testing.T) {
	usr2 := make(chan os.Signal, 1)
	signal.Notify(usr2, syscall.SIGUSR2)
	defer signal.Stop(usr2)
	me := os.Getpid()
	path := filepath.Join(t.TempDir(), "attache.pid")
	if err := pidfile.Write(path, me); err != nil {
		t.Fatal(err)
	}

	t.Run("new process", func(t *testing.T) {
		successor := exec.Command("sleep", "120")
		if err := successor.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = successor.Process.Kill()
			_ = successor.Wait()
		})
		go func() {
			<-usr2
			_ = pidfile.Write(path, successor.Process.Pid)
		}()
		code, out, stderr := run(t, nil, "upgrade", "--pid-file", path)
		want := "upgraded: pid " + strconv.Itoa(me) + " → " + strconv.Itoa(successor.Process.Pid)
		if code != ExitOK || !strings.Contains(out, want) {
			t.Fatalf("exit %d, stdout %q, stderr %q; want %q", code, out, stderr, want)
		}
		if err := pidfile.Write(path, me); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("no new process", func(t *testing.T) {
		code, _, stderr := run(t, nil, "upgrade", "--pid-file", path, "--wait", "200ms")
		<-usr2
		want := "no new process within 200ms: " + path + " still names pid " + strconv.Itoa(me)
		if code != ExitRuntime || !strings.Contains(stderr, want) {
			t.Fatalf("exit %d, stderr %q; want %q", code, stderr, want)
		}
	})

	t.Run("by pid", func(t *testing.T) {
		code, out, stderr := run(t, nil, "upgrade", "--pid", strconv.Itoa(me))
		<-usr2
		if code != ExitOK || !strings.Contains(out, "sent SIGUSR2 to pid "+strconv.Itoa(me)) {
			t.Fatalf("exit %d, stdout %q, stderr %q", code, out, stderr)
		}
	})
}
