// Package schedbatch moves the process's threads to the SCHED_BATCH CPU
// scheduling policy.
//
// Why: attache's event loops wake on every packet. Under the default
// policy a woken loop preempts whatever runs on its CPU — typically the
// client or the server it proxies for, which has just written the bytes
// that woke it — so on a busy machine client, proxy and server chop each
// other's time into slices of a few dozen microseconds. SCHED_BATCH keeps
// the same share of CPU (same weight, same fairness) but a woken thread
// does not preempt the running one: it runs when that one sleeps or its
// slice ends, so client, proxy and server switch context less often when
// they share CPUs (the measurements are in bench/README.md, "--sched-batch").
// The price is latency under CPU contention: a woken loop may wait up to a
// scheduler slice (a few ms) for a busy CPU instead of taking it at once;
// on an idle CPU it runs at once, as before.
//
// The policy is per thread on Linux, and a new thread takes its creator's,
// so switching every thread once at start-up covers the threads the Go
// runtime creates later too. Threads under another policy than the
// default (SCHED_FIFO, SCHED_IDLE, ... chosen by the operator, say with
// chrt) are left as they are. Lowering the policy needs no privilege.
package schedbatch

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// Linux scheduling policies (sched(7)).
const (
	policyNormal = 0 // SCHED_OTHER
	policyBatch  = 3 // SCHED_BATCH
)

// Apply switches every thread of the process that runs under the default
// policy to SCHED_BATCH. It reports how many threads it switched; on an
// error, the threads switched so far stay switched (the policy only
// changes who waits on a wake-up, never correctness).
func Apply() (int, error) {
	switched := 0
	// A thread the runtime creates while the list is read takes its
	// creator's policy, which may not be switched yet: go over the list
	// again until a pass finds nothing left to switch.
	for pass := 0; pass < 10; pass++ {
		n, err := applyOnce()
		switched += n
		if err != nil || n == 0 {
			return switched, err
		}
	}
	return switched, nil
}

func applyOnce() (int, error) {
	tids, err := threads()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, tid := range tids {
		attr, err := unix.SchedGetAttr(tid, 0)
		if errors.Is(err, unix.ESRCH) {
			continue // the thread exited meanwhile
		}
		if err != nil {
			return n, fmt.Errorf("sched_getattr on thread %d: %w", tid, err)
		}
		if attr.Policy != policyNormal {
			continue
		}
		// The nice value stays; only the policy changes.
		attr.Policy = policyBatch
		attr.Flags = 0
		if err := unix.SchedSetAttr(tid, attr, 0); err != nil {
			if errors.Is(err, unix.ESRCH) {
				continue
			}
			return n, fmt.Errorf("sched_setattr SCHED_BATCH on thread %d: %w", tid, err)
		}
		n++
	}
	return n, nil
}

// threads lists the process's thread ids.
func threads() ([]int, error) {
	entries, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return nil, fmt.Errorf("listing threads: %w", err)
	}
	tids := make([]int, 0, len(entries))
	for _, e := range entries {
		if tid, err := strconv.Atoi(e.Name()); err == nil {
			tids = append(tids, tid)
		}
	}
	return tids, nil
}
