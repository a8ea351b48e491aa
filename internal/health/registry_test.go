package health

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/attache/attache/internal/backend"
)

func eps(addrs ...string) []backend.Endpoint {
	var out []backend.Endpoint
	for _, a := range addrs {
		out = append(out, backend.Endpoint{Addr: a})
	}
	return out
}

func addrsOf(s *backend.Set) []string {
	var out []string
	for i := range s.Len() {
		out = append(out, s.At(i).Addr)
	}
	return out
}

func TestRegistryKeepsStateAcrossResolves(t *testing.T) {
	r := NewRegistry(backend.Backoff{})
	s1 := r.Resolve("redis", eps("a:1", "b:1"))
	a1 := s1.At(0)
	a1.Acquire()
	a1.SetHealthy(false)

	// Same endpoints: the very same Backend.
	s2 := r.Resolve("redis", eps("b:1", "a:1"))
	if got := addrsOf(s2); fmt.Sprint(got) != "[b:1 a:1]" {
		t.Fatalf("set order %v; want the order given", got)
	}
	if s2.At(1) != a1 {
		t.Fatal("unchanged endpoint got a new Backend")
	}

	// A weight change: a new value, same state.
	s3 := r.Resolve("redis", []backend.Endpoint{{Addr: "a:1", Weight: 5}, {Addr: "b:1"}})
	a3 := s3.At(0)
	if a3 == a1 || a3.Weight != 5 || !a3.SharesState(a1) {
		t.Fatalf("weight change: new value=%v weight=%d shares=%v; want a new value of weight 5 sharing state", a3 != a1, a3.Weight, a3.SharesState(a1))
	}
	if a3.Active() != 1 || a3.Healthy() {
		t.Fatalf("state lost across resolve: active=%d healthy=%v; want 1, false", a3.Active(), a3.Healthy())
	}
	if got := r.Lookup("redis", "a:1"); got != a3 {
		t.Fatal("Lookup does not return the latest value")
	}
}

func TestRegistryForgetsRemovedAddresses(t *testing.T) {
	r := NewRegistry(backend.Backoff{})
	a := r.Resolve("redis", eps("a:1", "b:1")).At(0)
	a.Acquire() // a connection in flight
	a.SetHealthy(false)

	r.Resolve("redis", eps("b:1"))
	if r.Lookup("redis", "a:1") != nil {
		t.Fatal("removed address still known")
	}

	again := r.Resolve("redis", eps("a:1", "b:1")).At(0)
	if again.SharesState(a) || again.Active() != 0 || !again.Healthy() {
		t.Fatalf("returning address: shares=%v active=%d healthy=%v; want fresh state", again.SharesState(a), again.Active(), again.Healthy())
	}
	a.Release() // the old connection ends on its own Backend
	if a.Active() != 0 || again.Active() != 0 {
		t.Fatalf("after release: old=%d new=%d; want 0, 0", a.Active(), again.Active())
	}

	r.Forget("redis")
	if r.Lookup("redis", "b:1") != nil {
		t.Fatal("Forget left state behind")
	}
}

// TestRegistryAdopt: a backend taken out (drained) and adopted back keeps
// its state; an address the service already knows keeps its own.
func TestRegistryAdopt(t *testing.T) {
	r := NewRegistry(backend.Backoff{})
	a := r.Resolve("redis", eps("a:1", "b:1")).At(0)
	a.Acquire()
	a.SetHealthy(false)
	r.Resolve("redis", eps("b:1")) // drained: out of the list

	r.Adopt("redis", a)
	back := r.Resolve("redis", eps("a:1", "b:1")).At(0)
	if back != a || back.Active() != 1 || back.Healthy() {
		t.Fatalf("adopted backend: same=%v active=%d healthy=%v; want the same state, 1, false", back == a, back.Active(), back.Healthy())
	}

	other := backend.New(backend.Endpoint{Addr: "a:1"})
	r.Adopt("redis", other)
	if got := r.Lookup("redis", "a:1"); got != a {
		t.Fatal("Adopt replaced state the service already had")
	}
}

func TestRegistryKeysByService(t *testing.T) {
	r := NewRegistry(backend.Backoff{})
	x := r.Resolve("x", eps("shared:1")).At(0)
	y := r.Resolve("y", eps("shared:1")).At(0)
	if x.SharesState(y) {
		t.Fatal("two services share one address's state")
	}
	r.Resolve("y", nil)
	if r.Lookup("x", "shared:1") != x {
		t.Fatal("emptying service y dropped service x's backend")
	}
}

func TestRegistryDropsDuplicateAddresses(t *testing.T) {
	r := NewRegistry(backend.Backoff{})
	s := r.Resolve("x", []backend.Endpoint{{Addr: "a:1", Weight: 2}, {Addr: "b:1"}, {Addr: "a:1", Weight: 9}})
	if s.Len() != 2 || s.At(0).Weight != 2 {
		t.Fatalf("set %v with first weight %d; want [a:1 b:1] with weight 2", addrsOf(s), s.At(0).Weight)
	}
}

func TestRegistryBackoff(t *testing.T) {
	r := NewRegistry(backend.Backoff{Base: 100 * time.Millisecond, Max: time.Second})
	now := time.Now()
	b := r.Resolve("x", eps("a:1")).At(0)
	if d := b.ReportFailure(now); d != 100*time.Millisecond {
		t.Fatalf("registry default: ejected for %v; want 100ms", d)
	}
	b.ReportSuccess()

	// A per-service back-off reaches backends already resolved…
	r.SetBackoff("x", backend.Backoff{Base: 3 * time.Second, Max: 5 * time.Second})
	if d := b.ReportFailure(now); d != 3*time.Second {
		t.Fatalf("after SetBackoff: ejected for %v; want 3s", d)
	}
	// …and later ones, but not other services.
	c := r.Resolve("x", eps("a:1", "c:1")).At(1)
	if d := c.ReportFailure(now); d != 3*time.Second {
		t.Fatalf("new backend of x: ejected for %v; want 3s", d)
	}
	z := r.Resolve("z", eps("a:1")).At(0)
	if d := z.ReportFailure(now); d != 100*time.Millisecond {
		t.Fatalf("service z: ejected for %v; want the registry's 100ms", d)
	}
}

func TestRegistryConcurrentUse(t *testing.T) {
	r := NewRegistry(backend.Backoff{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 200 {
				svc := fmt.Sprintf("s%d", i%3)
				s := r.Resolve(svc, eps(fmt.Sprintf("a:%d", i%5), fmt.Sprintf("b:%d", w)))
				for j := range s.Len() {
					s.At(j).Acquire()
					_ = s.At(j).Healthy()
					s.At(j).Release()
				}
				_ = r.Lookup(svc, "a:1")
				if i%50 == 0 {
					r.SetBackoff(svc, backend.Backoff{Base: time.Duration(i+1) * time.Millisecond})
				}
			}
		})
	}
	wg.Wait()
	// Every Acquire was released on the state it counted on, whichever
	// Resolve the Backend came from.
	for _, svc := range []string{"s0", "s1", "s2"} {
		for _, addr := range []string{"a:0", "a:1", "a:2", "a:3", "a:4", "b:0", "b:1", "b:2", "b:3"} {
			if b := r.Lookup(svc, addr); b != nil && b.Active() != 0 {
				t.Errorf("%s %s: %d connections left open", svc, addr, b.Active())
			}
		}
	}
}
