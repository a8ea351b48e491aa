package backend

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// The retry budget both TCP engines and UDP spend: Retries further dials
// after the first, within the deadline, never once the context is done.
func TestDialBudget(t *testing.T) {
	start := time.Now()
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name     string
		budget   DialBudget
		ctx      context.Context
		failures int
		at       time.Time
		again    bool
	}{
		{"zero value: one dial, no retry", DialBudget{}, context.Background(), 1, start, false},
		{"retries left", DialBudget{Retries: 2}, context.Background(), 2, start, true},
		{"retries spent", DialBudget{Retries: 2}, context.Background(), 3, start, false},
		{"before the deadline", DialBudget{Retries: 5, Deadline: start.Add(time.Second)}, context.Background(), 1, start, true},
		{"at the deadline", DialBudget{Retries: 5, Deadline: start.Add(time.Second)}, context.Background(), 1, start.Add(time.Second), false},
		{"context done", DialBudget{Retries: 5}, canceled, 1, start, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.budget
			for range tt.failures {
				b.Failed("10.0.0.1:80", errors.New("connection refused"))
			}
			if b.Attempts() != tt.failures {
				t.Errorf("Attempts() = %d, want %d", b.Attempts(), tt.failures)
			}
			if got := b.Again(tt.ctx, tt.at); got != tt.again {
				t.Errorf("Again() = %v, want %v", got, tt.again)
			}
		})
	}
	var b DialBudget
	if b.Err() != nil {
		t.Fatalf("Err() with no failure = %v, want nil", b.Err())
	}
	b.Failed("10.0.0.1:80", errors.New("connection refused"))
	b.Failed("10.0.0.1:80", errors.New("connection refused"))
	if got := b.Err().Error(); !strings.Contains(got, "10.0.0.1:80: connection refused (2 dials)") {
		t.Fatalf("Err() = %q, want the failure once with its count", got)
	}
}
