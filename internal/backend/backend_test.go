package backend

import (
	"sync"
	"testing"
	"time"
)

func TestBackendState(t *testing.T) {
	b := New(Endpoint{Addr: "a:1"})
	if !b.Healthy() || b.Active() != 0 || b.EffectiveWeight() != 1 {
		t.Fatalf("new backend: healthy=%v active=%d weight=%d; want true, 0, 1", b.Healthy(), b.Active(), b.EffectiveWeight())
	}
	b.SetHealthy(false)
	b.Acquire()
	b.Acquire()
	b.Release()
	if b.Healthy() || b.CheckHealthy() || b.Active() != 1 {
		t.Fatalf("healthy=%v check=%v active=%d; want false, false, 1", b.Healthy(), b.CheckHealthy(), b.Active())
	}
	if w := (Endpoint{Weight: 5}).EffectiveWeight(); w != 5 {
		t.Fatalf("weight 5 read as %d", w)
	}
}

// A weight change from discovery makes a new Backend value; connections
// counted on the old one must be released on the new one's count, and health
// verdicts must apply to both.
func TestWithEndpointSharesState(t *testing.T) {
	old := New(Endpoint{Addr: "a:1", Weight: 1})
	old.Acquire()
	nw := old.WithEndpoint(Endpoint{Addr: "a:1", Weight: 7})
	if nw.Weight != 7 || old.Weight != 1 {
		t.Fatalf("weights old=%d new=%d; want 1 and 7", old.Weight, nw.Weight)
	}
	if !nw.SharesState(old) || nw.SharesState(New(Endpoint{Addr: "a:1"})) || nw.SharesState(nil) {
		t.Fatal("SharesState wrong")
	}
	if nw.Active() != 1 {
		t.Fatalf("new value sees %d connections; want 1", nw.Active())
	}
	old.Release() // a connection in flight releases through the Backend it started with
	if nw.Active() != 0 {
		t.Fatalf("after release on the old value the new one sees %d", nw.Active())
	}
	nw.SetHealthy(false)
	if old.Healthy() {
		t.Fatal("verdict on the new value did not reach the old one")
	}
	nw.SetHealthy(true)
	nw.ReportFailure(time.Now())
	if old.Healthy() {
		t.Fatal("ejection on the new value did not reach the old one")
	}
}

func TestBackoffFor(t *testing.T) {
	tests := []struct {
		name string
		bo   Backoff
		n    int64
		want time.Duration
	}{
		{"default first", Backoff{}, 1, time.Second},
		{"default second", Backoff{}, 2, 2 * time.Second},
		{"default fifth", Backoff{}, 5, 16 * time.Second},
		{"default capped", Backoff{}, 6, 30 * time.Second},
		{"default long streak", Backoff{}, 1 << 40, 30 * time.Second},
		{"custom", Backoff{Base: 100 * time.Millisecond, Max: time.Second}, 4, 800 * time.Millisecond},
		{"custom capped", Backoff{Base: 100 * time.Millisecond, Max: time.Second}, 5, time.Second},
		{"max below base", Backoff{Base: 5 * time.Second, Max: time.Second}, 3, 5 * time.Second},
		{"huge max", Backoff{Base: time.Second, Max: 1<<63 - 1}, 200, 1<<63 - 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.bo.For(tt.n); got != tt.want {
				t.Fatalf("%+v.For(%d) = %v; want %v", tt.bo, tt.n, got, tt.want)
			}
		})
	}
}

func TestPassiveEjectionDoublesAndResets(t *testing.T) {
	b := New(Endpoint{Addr: "a:1"})
	b.SetBackoff(Backoff{Base: time.Second, Max: 4 * time.Second})
	now := time.Now()

	// Each failure after the previous ejection ended doubles the next one.
	for i, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 4 * time.Second} {
		if got := b.ReportFailure(now); got != want {
			t.Fatalf("failure %d: ejected for %v; want %v", i+1, got, want)
		}
		if b.Healthy() {
			t.Fatalf("failure %d: still healthy while ejected", i+1)
		}
		until, n := b.Ejection(now)
		if n != int64(i+1) || !until.Equal(time.Unix(0, now.Add(want).UnixNano())) {
			t.Fatalf("failure %d: Ejection = %v, %d; want %v, %d", i+1, until, n, now.Add(want), i+1)
		}
		now = now.Add(want) // the ejection is over
	}

	// Failures of dials that began before the ejection are the same outage.
	start := now
	first := b.ReportFailure(now)
	for range 10 {
		if d := b.ReportFailure(start.Add(time.Millisecond)); d != 0 {
			t.Fatalf("failure while ejected extended the ejection by %v", d)
		}
	}
	if _, n := b.Ejection(start); n != 5 || first != 4*time.Second {
		t.Fatalf("streak %d, ejection %v; want 5, 4s", n, first)
	}

	b.ReportSuccess()
	if !b.Healthy() {
		t.Fatal("still ejected after a success")
	}
	if until, n := b.Ejection(start); n != 0 || !until.IsZero() {
		t.Fatalf("after success Ejection = %v, %d; want zero, 0", until, n)
	}
	if d := b.ReportFailure(start); d != time.Second {
		t.Fatalf("first failure after success ejects for %v; want the base 1s", d)
	}
}

// An ejection that ended lets traffic through without a success being
// reported (half-open), but keeps the streak so the next failure doubles.
func TestEjectionExpires(t *testing.T) {
	b := New(Endpoint{Addr: "a:1"})
	past := time.Now().Add(-time.Hour)
	if d := b.ReportFailure(past); d != time.Second {
		t.Fatalf("ejected for %v; want 1s", d)
	}
	if !b.Healthy() {
		t.Fatal("ejection from an hour ago still holds")
	}
	if b.st.ejectedUntil.Load() != 0 {
		t.Fatal("Healthy did not clear the expired ejection")
	}
	if d := b.ReportFailure(time.Now()); d != 2*time.Second {
		t.Fatalf("second failure of the streak ejects for %v; want 2s", d)
	}
	b.SetHealthy(false)
	b.ReportSuccess()
	if b.Healthy() {
		t.Fatal("a passive success overrode the active verdict")
	}
}

func TestConcurrentFailuresCountOnce(t *testing.T) {
	b := New(Endpoint{Addr: "a:1"})
	now := time.Now()
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			b.ReportFailure(now)
			_ = b.Healthy()
		})
	}
	wg.Wait()
	if _, n := b.Ejection(now); n != 1 {
		t.Fatalf("50 simultaneous failures counted as a streak of %d; want 1", n)
	}
}

func TestHealthyDoesNotAllocate(t *testing.T) {
	b := New(Endpoint{Addr: "a:1"})
	if n := testing.AllocsPerRun(1000, func() { _ = b.Healthy() }); n != 0 {
		t.Fatalf("Healthy allocates %v times", n)
	}
	b.ReportFailure(time.Now())
	if n := testing.AllocsPerRun(1000, func() { _ = b.Healthy() }); n != 0 {
		t.Fatalf("Healthy of an ejected backend allocates %v times", n)
	}
}

func TestSetCopiesAndHandlesNil(t *testing.T) {
	var nilSet *Set
	if nilSet.Len() != 0 {
		t.Fatal("nil set has backends")
	}
	bs := []*Backend{New(Endpoint{Addr: "a:1"}), New(Endpoint{Addr: "b:1"})}
	s := NewSet(bs...)
	bs[0] = New(Endpoint{Addr: "changed:1"})
	if s.Len() != 2 || s.At(0).Addr != "a:1" {
		t.Fatalf("set changed with the caller's slice: %s", s.At(0).Addr)
	}
}

func BenchmarkHealthy(b *testing.B) {
	bk := New(Endpoint{Addr: "a:1"})
	b.ReportAllocs()
	for b.Loop() {
		if !bk.Healthy() {
			b.Fatal("unhealthy")
		}
	}
}

func BenchmarkHealthyEjected(b *testing.B) {
	bk := New(Endpoint{Addr: "a:1"})
	bk.ReportFailure(time.Now())
	b.ReportAllocs()
	for b.Loop() {
		_ = bk.Healthy()
	}
}

func BenchmarkHealthyParallel(b *testing.B) {
	bk := New(Endpoint{Addr: "a:1"})
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			_ = bk.Healthy()
		}
	})
}
