package loophint

import (
	"context"
	"testing"
)

func TestHintTravelsInContext(t *testing.T) {
	if _, ok := From(context.Background()); ok {
		t.Fatal("a context without a hint carries one")
	}
	if loop, ok := From(With(context.Background(), 3)); !ok || loop != 3 {
		t.Fatalf("got loop %d, %v; want 3", loop, ok)
	}
	if _, ok := From(With(context.Background(), -1)); ok {
		t.Fatal("a negative loop counts as a hint")
	}
}

func TestWritingCountsWritesInProgress(t *testing.T) {
	if Writing() {
		t.Fatal("writing before any write began")
	}
	BeginWrite()
	BeginWrite()
	EndWrite()
	if !Writing() {
		t.Fatal("one of two writes still in progress, and Writing says none")
	}
	EndWrite()
	if Writing() {
		t.Fatal("writing after both ended")
	}
}
