package backend

import "testing"

func TestBackendState(t *testing.T) {
	b := New(Endpoint{Addr: "a:1"})
	if !b.Healthy() || b.Active() != 0 || b.EffectiveWeight() != 1 {
		t.Fatalf("new backend: healthy=%v active=%d weight=%d; want true, 0, 1", b.Healthy(), b.Active(), b.EffectiveWeight())
	}
	b.SetHealthy(false)
	b.Acquire()
	b.Acquire()
	b.Release()
	if b.Healthy() || b.Active() != 1 {
		t.Fatalf("healthy=%v active=%d; want false, 1", b.Healthy(), b.Active())
	}
	if w := (Endpoint{Weight: 5}).EffectiveWeight(); w != 5 {
		t.Fatalf("weight 5 read as %d", w)
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
