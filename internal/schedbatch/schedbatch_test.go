package schedbatch

import (
	"fmt"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

const policyIdle = 5 // SCHED_IDLE

// holdThreads starts n goroutines, each locked to its own thread, runs
// setup on each thread, and returns their thread ids and a function that
// ends them (their threads exit with them, being still locked).
func holdThreads(t *testing.T, n int, setup func(tid int) error) ([]int, func()) {
	t.Helper()
	tids := make(chan int)
	errs := make(chan error, n)
	stop := make(chan struct{})
	for range n {
		go func() {
			runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
			tid := unix.Gettid()
			if setup != nil {
				if err := setup(tid); err != nil {
					errs <- err
					return
				}
			}
			tids <- tid
			<-stop
		}()
	}
	var got []int
	for range n {
		select {
		case tid := <-tids:
			got = append(got, tid)
		case err := <-errs:
			close(stop)
			t.Fatal(err)
		}
	}
	return got, func() { close(stop) }
}

func allPolicies(t *testing.T) map[int]uint32 {
	t.Helper()
	tids, err := threads()
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[int]uint32, len(tids))
	for _, tid := range tids {
		p, err := policy(tid)
		if err != nil {
			continue // exited meanwhile
		}
		out[tid] = p
	}
	return out
}

// TestApply covers the whole contract in one process (the policy, once
// lowered, cannot be raised back without privilege, so the steps share
// one order): every default thread is switched, an operator's choice is
// kept, and threads the runtime creates afterwards are batch from birth.
func TestApply(t *testing.T) {
	// A thread under SCHED_IDLE, as `chrt --idle` would leave it.
	idle, endIdle := holdThreads(t, 1, func(tid int) error {
		return unix.SchedSetAttr(tid, &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: policyIdle}, 0)
	})
	defer endIdle()
	busy, endBusy := holdThreads(t, 3, nil)
	defer endBusy()
	before := allPolicies(t)
	for _, tid := range busy {
		if before[tid] != policyNormal {
			t.Fatalf("thread %d starts under policy %d, want the default", tid, before[tid])
		}
	}

	n, err := Apply()
	if err != nil {
		t.Fatal(err)
	}
	if n < len(busy) {
		t.Errorf("Apply switched %d threads, want at least the %d held ones", n, len(busy))
	}
	for tid, p := range allPolicies(t) {
		switch {
		case tid == idle[0] && p != policyIdle:
			t.Errorf("thread %d under SCHED_IDLE was changed to policy %d", tid, p)
		case tid != idle[0] && p != policyBatch:
			t.Errorf("thread %d is under policy %d after Apply, want SCHED_BATCH", tid, p)
		}
	}

	// More locked goroutines than the process has threads force the
	// runtime to create some (each locked goroutine holds a thread of its
	// own; a fixed few could all land on idle threads the runtime kept);
	// they must inherit the batch policy.
	known := allPolicies(t)
	more, endMore := holdThreads(t, len(known)+1, nil)
	defer endMore()
	fresh := 0
	for _, tid := range more {
		if _, old := known[tid]; !old {
			fresh++
		}
		p, err := policy(tid)
		if err != nil {
			t.Fatal(err)
		}
		if p != policyBatch {
			t.Errorf("thread %d created after Apply runs under policy %d, want SCHED_BATCH", tid, p)
		}
	}
	if fresh == 0 {
		t.Fatal("no new thread was created; the inheritance check proved nothing")
	}

	// A second Apply finds nothing left to switch.
	if n, err := Apply(); err != nil || n != 0 {
		t.Errorf("second Apply = %d, %v; want 0, nil", n, err)
	}
}

// policy returns the scheduling policy of thread tid (0 for the default
// SCHED_OTHER, 3 for SCHED_BATCH, see sched(7)).
func policy(tid int) (uint32, error) {
	attr, err := unix.SchedGetAttr(tid, 0)
	if err != nil {
		return 0, fmt.Errorf("sched_getattr on thread %d: %w", tid, err)
	}
	return attr.Policy, nil
}
