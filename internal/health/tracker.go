package health

// Tracker turns a series of check results into a verdict with hysteresis: a
// healthy backend goes down after Fall consecutive failures, a down one comes
// back after Rise consecutive successes. It is a pure state machine, no
// clock, no I/O, and not safe for concurrent use (each Monitor probe loop
// owns one).
//
// A Tracker starts healthy, and the zero value is a healthy Tracker with
// Rise and Fall of 1. Why healthy and not "unknown until the first success":
// a backend that discovery just reported takes traffic at once, which is what
// users of the classic ambassador (which had no checks at all) expect; when
// every backend is new, at start-up, "unknown" would refuse every connection
// for up to one interval. A new backend that is in fact dead is caught by
// passive ejection on its first failed dial, and by the checks after Fall
// probes. Health that was already known is not reset: the Registry keeps it
// across reloads, and NewTracker starts from it.
type Tracker struct {
	rise, fall int
	down       bool
	successes  int // consecutive, 0 after a failure
	failures   int // consecutive, 0 after a success
}

// NewTracker returns a Tracker with the given thresholds (values below 1
// mean 1) that starts from the verdict healthy.
func NewTracker(rise, fall int, healthy bool) Tracker {
	return Tracker{rise: rise, fall: fall, down: !healthy}
}

// Record adds one check result and reports whether the verdict changed and
// what it is now.
func (t *Tracker) Record(ok bool) (changed, healthy bool) {
	if ok {
		t.successes++
		t.failures = 0
		if t.down && t.successes >= max(t.rise, 1) {
			t.down = false
			return true, true
		}
	} else {
		t.failures++
		t.successes = 0
		if !t.down && t.failures >= max(t.fall, 1) {
			t.down = true
			return true, false
		}
	}
	return false, !t.down
}

// Healthy is the current verdict.
func (t *Tracker) Healthy() bool { return !t.down }

// Streak is the number of consecutive results like the last one: positive
// for successes, negative for failures, 0 before the first result.
func (t *Tracker) Streak() int {
	if t.failures > 0 {
		return -t.failures
	}
	return t.successes
}
