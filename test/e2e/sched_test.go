package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestSchedBatch: by default every thread of a serving attache runs under
// SCHED_BATCH (policy 3), the event loops' threads included; with
// --sched-batch=false they keep the policy they started with (the test's
// own, normally the default, 0).
func TestSchedBatch(t *testing.T) {
	t.Parallel()
	backend := echoServer(t)
	inherited := threadPolicies(t, os.Getpid())[os.Getpid()]
	for _, tc := range []struct {
		flag string
		want int
	}{{"--sched-batch=true", 3}, {"--sched-batch=false", inherited}} {
		t.Run(tc.flag, func(t *testing.T) {
			t.Parallel()
			p, addr := forward(t, backend, tc.flag)
			// A round trip proves the loops run; their threads exist by now.
			c := dial(t, addr)
			roundTrip(t, c, "which policy\n")
			c.Close()
			policies := threadPolicies(t, p.cmd.Process.Pid)
			if len(policies) < 3 {
				t.Fatalf("attache has %d threads, expected the runtime's and the loops'", len(policies))
			}
			for tid, got := range policies {
				if got != tc.want {
					t.Errorf("thread %d runs under policy %d, want %d (all: %v)", tid, got, tc.want, policies)
				}
			}
		})
	}
}

// threadPolicies reads each thread's scheduling policy from
// /proc/PID/task/TID/stat (field 41, see proc(5)).
func threadPolicies(t *testing.T, pid int) map[int]int {
	t.Helper()
	dir := filepath.Join("/proc", strconv.Itoa(pid), "task")
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[int]int)
	for _, e := range entries {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "stat"))
		if err != nil {
			continue // the thread exited meanwhile
		}
		// The command name (field 2) may hold spaces; fields after it
		// start past its closing parenthesis, with field 3.
		rest := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		const policyField = 41
		if len(rest) < policyField-2 {
			t.Fatalf("short stat line for thread %d: %q", tid, b)
		}
		policy, err := strconv.Atoi(rest[policyField-3])
		if err != nil {
			t.Fatalf("thread %d policy: %v", tid, err)
		}
		out[tid] = policy
	}
	return out
}
