package main

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/attache/attache/internal/testenv"
)

// spinEnv makes the test binary, run as a child, burn this many
// milliseconds of CPU and exit (see TestMain).
const spinEnv = "RUNNER_TEST_SPIN_MS"

func TestMain(m *testing.M) {
	if v := os.Getenv(spinEnv); v != "" {
		ms, _ := strconv.Atoi(v)
		spin(time.Duration(ms) * time.Millisecond)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// spin runs until the process has used d of CPU time, by its own account.
func spin(d time.Duration) {
	for {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			return
		}
		if time.Duration(ru.Utime.Nano()+ru.Stime.Nano()) >= d {
			return
		}
		for range 100_000 {
		}
	}
}

// TestTreeCPUCountsReapedChildren runs a shell that waits for a child
// burning 300 ms of CPU, then sleeps: the child is gone by the time it is
// read, so its time is found only in the shell's cutime. That is how
// socat's forks must be counted.
func TestTreeCPUCountsReapedChildren(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	done := t.TempDir() + "/done"
	sh := exec.Command("sh", "-c", `"$0" && : >"$1" && exec sleep 60`, self, done)
	sh.Env = append(os.Environ(), spinEnv+"=300")
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sh.Process.Kill(); _ = sh.Wait() })

	testenv.WaitFor(t, "the child to be reaped", func() bool {
		_, err := os.Stat(done)
		return err == nil
	})
	// The shell is now in sleep (exec keeps its pid): only that process is
	// left in the tree, and the child's time was added to its cutime.
	if n := len(tree([]int{sh.Process.Pid})); n != 1 {
		t.Fatalf("tree has %d processes, want the shell alone", n)
	}
	// The whole reading, not a difference from one taken at the start:
	// the child may have begun to spin before that one, and its time
	// would then be subtracted. The child stops at 300 ms by getrusage,
	// which /proc rounds to 10 ms ticks: allow a tick or two below.
	used := treeCPU([]int{sh.Process.Pid})
	if used < 0.27 {
		t.Fatalf("tree used %.2f s of CPU, want the reaped child's 0.3 s or more", used)
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(sh.Process.Pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	st, err := parseStat(sh.Process.Pid, stat)
	if err != nil {
		t.Fatal(err)
	}
	if st.reaped == 0 {
		t.Fatalf("no cutime+cstime in %q", strings.TrimSpace(string(stat)))
	}
}
