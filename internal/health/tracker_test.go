package health

import "testing"

// The table reads like caddy-l4's risefall_test: a starting verdict, the
// thresholds, a run of results, and after each result whether the verdict
// changed and what it is.
func TestTrackerRiseFall(t *testing.T) {
	type step struct {
		ok, changed, healthy bool
	}
	pass := func(changed, healthy bool) step { return step{true, changed, healthy} }
	fail := func(changed, healthy bool) step { return step{false, changed, healthy} }

	tests := []struct {
		name       string
		rise, fall int
		start      bool
		steps      []step
	}{
		{
			name: "healthy stays healthy on passes",
			rise: 2, fall: 3, start: true,
			steps: []step{pass(false, true), pass(false, true), pass(false, true)},
		},
		{
			name: "goes down after fall consecutive failures",
			rise: 2, fall: 3, start: true,
			steps: []step{fail(false, true), fail(false, true), fail(true, false), fail(false, false)},
		},
		{
			name: "a pass in between restarts the failure count",
			rise: 2, fall: 3, start: true,
			steps: []step{
				fail(false, true), fail(false, true), pass(false, true),
				fail(false, true), fail(false, true), fail(true, false),
			},
		},
		{
			name: "comes back after rise consecutive passes",
			rise: 2, fall: 3, start: false,
			steps: []step{pass(false, false), pass(true, true), pass(false, true)},
		},
		{
			name: "a failure in between restarts the pass count",
			rise: 3, fall: 1, start: false,
			steps: []step{
				pass(false, false), pass(false, false), fail(false, false),
				pass(false, false), pass(false, false), pass(true, true),
			},
		},
		{
			name: "fall 1 and rise 1 follow every result",
			rise: 1, fall: 1, start: true,
			steps: []step{fail(true, false), pass(true, true), fail(true, false), fail(false, false), pass(true, true)},
		},
		{
			name: "thresholds below 1 read as 1",
			rise: 0, fall: -4, start: true,
			steps: []step{fail(true, false), pass(true, true)},
		},
		{
			name: "full cycle down and up",
			rise: 2, fall: 2, start: true,
			steps: []step{fail(false, true), fail(true, false), pass(false, false), pass(true, true), fail(false, true)},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := NewTracker(tt.rise, tt.fall, tt.start)
			if tr.Healthy() != tt.start || tr.Streak() != 0 {
				t.Fatalf("new tracker: healthy=%v streak=%d; want %v, 0", tr.Healthy(), tr.Streak(), tt.start)
			}
			for i, s := range tt.steps {
				changed, healthy := tr.Record(s.ok)
				if changed != s.changed || healthy != s.healthy {
					t.Fatalf("step %d (ok=%v): changed=%v healthy=%v; want %v, %v", i, s.ok, changed, healthy, s.changed, s.healthy)
				}
				if tr.Healthy() != healthy {
					t.Fatalf("step %d: Healthy()=%v disagrees with Record's %v", i, tr.Healthy(), healthy)
				}
			}
		})
	}
}

func TestTrackerZeroValueStartsHealthy(t *testing.T) {
	var tr Tracker
	if !tr.Healthy() {
		t.Fatal("zero Tracker is down")
	}
	if changed, healthy := tr.Record(false); !changed || healthy {
		t.Fatalf("zero Tracker after one failure: changed=%v healthy=%v; want true, false (fall 1)", changed, healthy)
	}
}

func TestTrackerStreak(t *testing.T) {
	tr := NewTracker(2, 3, true)
	for i, tc := range []struct {
		ok   bool
		want int
	}{{true, 1}, {true, 2}, {false, -1}, {false, -2}, {false, -3}, {false, -4}, {true, 1}} {
		tr.Record(tc.ok)
		if got := tr.Streak(); got != tc.want {
			t.Fatalf("after result %d (ok=%v) streak=%d; want %d", i, tc.ok, got, tc.want)
		}
	}
}
