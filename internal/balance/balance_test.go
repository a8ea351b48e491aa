package balance

import (
	"fmt"
	"math"
	"net/netip"
	"testing"

	"github.com/attache/attache/internal/backend"
)

func set(eps ...backend.Endpoint) (*backend.Set, []*backend.Backend) {
	var bs []*backend.Backend
	for _, e := range eps {
		bs = append(bs, backend.New(e))
	}
	return backend.NewSet(bs...), bs
}

func ep(addr string, weight, prio int) backend.Endpoint {
	return backend.Endpoint{Addr: addr, Weight: weight, Priority: prio}
}

var client = netip.MustParseAddrPort("10.0.0.1:40000")

func count(p Policy, s *backend.Set, n int) map[string]int {
	got := map[string]int{}
	for range n {
		if b := p.Pick(s, client); b != nil {
			got[b.Addr]++
		} else {
			got["<nil>"]++
		}
	}
	return got
}

func TestEveryPolicySkipsUnhealthyAndReturnsNilWhenNoneIsUp(t *testing.T) {
	for _, name := range Names {
		t.Run(name, func(t *testing.T) {
			p, err := New(name)
			if err != nil {
				t.Fatal(err)
			}
			s, bs := set(ep("a:1", 0, 0), ep("b:1", 0, 0), ep("c:1", 0, 0))
			bs[1].SetHealthy(false)
			for addr, n := range count(p, s, 300) {
				if addr == "b:1" || addr == "<nil>" {
					t.Fatalf("picked %s %d times", addr, n)
				}
			}
			for _, b := range bs {
				b.SetHealthy(false)
			}
			if b := p.Pick(s, client); b != nil {
				t.Fatalf("picked %s with every backend down", b.Addr)
			}
			if b := p.Pick(backend.NewSet(), client); b != nil {
				t.Fatal("picked from an empty set")
			}
		})
	}
}

func TestUnknownPolicy(t *testing.T) {
	if _, err := New("fastest"); err == nil {
		t.Fatal("no error for an unknown policy")
	}
}

func TestRoundRobinIsEven(t *testing.T) {
	s, _ := set(ep("a:1", 0, 0), ep("b:1", 0, 0), ep("c:1", 0, 0))
	got := count(&RoundRobin{}, s, 300)
	for _, a := range []string{"a:1", "b:1", "c:1"} {
		if got[a] != 100 {
			t.Fatalf("round robin counts %v, want 100 each", got)
		}
	}
}

func TestLeastConnFollowsOpenConnectionsAndWeight(t *testing.T) {
	s, bs := set(ep("a:1", 1, 0), ep("b:1", 1, 0), ep("c:1", 3, 0))
	bs[0].Acquire()
	bs[0].Acquire() // a: 2 open
	bs[1].Acquire() // b: 1 open
	for range 4 {
		bs[2].Acquire() // c: 4 open, weight 3 → 1.33 per unit
	}
	if b := (LeastConn{}).Pick(s, client); b != bs[1] {
		t.Fatalf("picked %s, want b (1 open)", b.Addr)
	}
	bs[1].Acquire()
	bs[1].Acquire() // b: 3 open now; c at 4/3 is the least loaded per unit
	if b := (LeastConn{}).Pick(s, client); b != bs[2] {
		t.Fatalf("picked %s, want c (4 open over weight 3)", b.Addr)
	}
}

func TestTwoChoicesAvoidsTheBusiest(t *testing.T) {
	s, bs := set(ep("a:1", 0, 0), ep("b:1", 0, 0))
	for range 10 {
		bs[0].Acquire()
	}
	got := count(TwoChoices{}, s, 1000)
	// a is chosen only when both draws land on a: about a quarter.
	if got["a:1"] > 350 || got["b:1"] < 650 {
		t.Fatalf("two choices counts %v: the busy backend got too many", got)
	}
}

func TestSourceHashIsStickyAndMovesFewClients(t *testing.T) {
	p := NewSourceHash()
	s3, _ := set(ep("a:1", 0, 0), ep("b:1", 0, 0), ep("c:1", 0, 0))
	s4, _ := set(ep("a:1", 0, 0), ep("b:1", 0, 0), ep("c:1", 0, 0), ep("d:1", 0, 0))
	moved, per := 0, map[string]int{}
	const clients = 2000
	for i := range clients {
		from := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), 5000)
		first := p.Pick(s3, from)
		if again := p.Pick(s3, from); again != first {
			t.Fatalf("client %v moved between two picks", from)
		}
		per[first.Addr]++
		after := p.Pick(s4, from)
		if after.Addr != first.Addr {
			if after.Addr != "d:1" {
				t.Fatalf("client %v moved from %s to %s, not to the new backend", from, first.Addr, after.Addr)
			}
			moved++
		}
	}
	// Adding a fourth backend should move about a quarter of the clients.
	if moved < clients/8 || moved > clients/2 {
		t.Fatalf("%d of %d clients moved when a backend was added", moved, clients)
	}
	for a, n := range per {
		if n < clients/6 {
			t.Fatalf("uneven spread %v (%s)", per, a)
		}
	}
}

func TestWeightedFollowsWeights(t *testing.T) {
	s, _ := set(ep("a:1", 1, 0), ep("b:1", 3, 0))
	got := count(Weighted{}, s, 8000)
	ratio := float64(got["b:1"]) / float64(got["a:1"])
	if math.Abs(ratio-3) > 0.5 {
		t.Fatalf("weighted counts %v, ratio %.2f, want about 3", got, ratio)
	}
}

func TestFirstUsesTheLowestHealthyTier(t *testing.T) {
	s, bs := set(ep("backup:1", 0, 20), ep("a:1", 1, 10), ep("b:1", 1, 10))
	got := count(First{}, s, 1000)
	if got["backup:1"] != 0 || got["a:1"] < 350 || got["b:1"] < 350 {
		t.Fatalf("first counts %v: want a and b sharing, backup idle", got)
	}
	bs[1].SetHealthy(false)
	bs[2].SetHealthy(false)
	if b := (First{}).Pick(s, client); b != bs[0] {
		t.Fatalf("picked %v with the primary tier down, want backup", b)
	}
}

// BenchmarkPick shows the cost of a pick over 3 and 30 backends; every
// policy must report 0 allocs/op.
func BenchmarkPick(b *testing.B) {
	for _, n := range []int{3, 30} {
		var eps []backend.Endpoint
		for i := range n {
			eps = append(eps, ep(fmt.Sprintf("10.0.0.%d:6379", i), 1+i%3, 0))
		}
		s, _ := set(eps...)
		for _, name := range Names {
			p, _ := New(name)
			b.Run(fmt.Sprintf("%s/%d", name, n), func(b *testing.B) {
				b.ReportAllocs()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if p.Pick(s, client) == nil {
							b.Fatal("nil pick")
						}
					}
				})
			})
		}
	}
}

// TestSourceHashIsStableAcrossInstances: the hash is not seeded per
// process, so a restarted ambassador (or a second one) sends every client
// to the same backend, and clients still spread evenly.
func TestSourceHashIsStableAcrossInstances(t *testing.T) {
	s, _ := set(ep("10.0.0.1:6379", 0, 0), ep("10.0.0.2:6379", 0, 0), ep("10.0.0.3:6379", 0, 0))
	a, b := NewSourceHash(), NewSourceHash()
	spread := map[string]int{}
	for i := range 3000 {
		from := netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 168, byte(i >> 8), byte(i)}), 40000)
		pa, pb := a.Pick(s, from), b.Pick(s, from)
		if pa != pb {
			t.Fatalf("client %v: %s by one instance, %s by another", from, pa.Addr, pb.Addr)
		}
		spread[pa.Addr]++
	}
	for addr, n := range spread {
		if n < 800 || n > 1200 {
			t.Errorf("backend %s got %d of 3000 clients (all: %v); want about 1000", addr, n, spread)
		}
	}
}
