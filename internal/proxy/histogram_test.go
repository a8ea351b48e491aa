package proxy

import (
	"testing"
	"time"
)

func TestHistogram(t *testing.T) {
	var h Histogram
	for _, d := range []time.Duration{
		100 * time.Microsecond, // first bucket
		500 * time.Microsecond, // on the bound: still the first (le)
		3 * time.Millisecond,   // le 0.005
		time.Minute,            // past the last bound: +Inf only
	} {
		h.Observe(d)
	}
	count, sum, buckets := h.Snapshot()
	if count != 4 {
		t.Errorf("count %d, want 4", count)
	}
	if want := (100*time.Microsecond + 500*time.Microsecond + 3*time.Millisecond + time.Minute).Seconds(); sum != want {
		t.Errorf("sum %v, want %v", sum, want)
	}
	for le, want := range map[float64]uint64{0.0005: 2, 0.001: 2, 0.0025: 2, 0.005: 3, 10: 3} {
		if buckets[le] != want {
			t.Errorf("bucket le=%v: %d, want %d", le, buckets[le], want)
		}
	}
	if len(buckets) != len(DialBuckets) {
		t.Errorf("%d buckets, want %d", len(buckets), len(DialBuckets))
	}
}
