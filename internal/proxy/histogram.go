package proxy

import (
	"sync/atomic"
	"time"
)

// DialBuckets are the upper bounds, in seconds, of the dial-duration
// histogram's buckets: from a loopback connect (well under a millisecond)
// to a connect timeout.
var DialBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// dialBucketNs is DialBuckets in nanoseconds, for Observe's comparisons.
var dialBucketNs = func() []int64 {
	out := make([]int64, len(DialBuckets))
	for i, s := range DialBuckets {
		out[i] = int64(s * float64(time.Second))
	}
	return out
}()

// Histogram counts durations in the fixed DialBuckets with atomics: the
// proxy records every successful dial in it, so it must not lock or
// allocate. The daemon turns it into a Prometheus histogram at scrape time,
// which keeps the proxy free of any metrics library.
type Histogram struct {
	counts [16]atomic.Int64 // per bucket (not cumulative); the last ones are +Inf
	sumNs  atomic.Int64
}

// Observe records one duration.
func (h *Histogram) Observe(d time.Duration) {
	ns := int64(d)
	i := 0
	for i < len(dialBucketNs) && ns > dialBucketNs[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sumNs.Add(ns)
}

// Snapshot returns the total count, the sum in seconds, and the cumulative
// count per bucket upper bound (as Prometheus wants them). Concurrent
// observations may be half-seen; the result is still consistent enough for
// a scrape, as every value only grows.
func (h *Histogram) Snapshot() (count uint64, sum float64, buckets map[float64]uint64) {
	buckets = make(map[float64]uint64, len(DialBuckets))
	var cum uint64
	for i, le := range DialBuckets {
		cum += uint64(h.counts[i].Load())
		buckets[le] = cum
	}
	cum += uint64(h.counts[len(DialBuckets)].Load())
	return cum, float64(h.sumNs.Load()) / float64(time.Second), buckets
}
