package balance

import (
	"testing"
	"time"
)

// Panic mode is one rule for both TCP engines and UDP: the policy's pick
// when there is one; else, with panic mode on, the backends out only
// because passive ejection benched them, in turn by attempt; never one
// the active checks hold down.
func TestChoosePanicMode(t *testing.T) {
	now := time.Now()
	tests := []struct {
		name      string
		ejected   []bool // passive health benched it
		checkDown []bool // the active checks hold it down
		panicMode bool
		attempts  []int
		want      []string // by attempt; "" is nil
	}{
		{"policy picks", []bool{false, true, true}, []bool{false, false, false}, true, []int{0, 1}, []string{"a", "a"}},
		{"all benched, panic off", []bool{true, true, true}, []bool{false, false, false}, false, []int{0}, []string{""}},
		{"all benched, panic on, in turn", []bool{true, true, true}, []bool{false, false, false}, true, []int{0, 1, 2, 3}, []string{"a", "b", "c", "a"}},
		{"a check-down one is never chosen", []bool{true, false, true}, []bool{false, true, false}, true, []int{0, 1, 2}, []string{"a", "c", "a"}},
		{"all down by the checks", []bool{false, false, false}, []bool{true, true, true}, true, []int{0, 1}, []string{"", ""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, bs := set(ep("a", 1, 0), ep("b", 1, 0), ep("c", 1, 0))
			for i, b := range bs {
				if tt.ejected[i] {
					b.ReportFailure(now)
				}
				b.SetHealthy(!tt.checkDown[i])
			}
			for i, attempt := range tt.attempts {
				got := ""
				if b := Choose(First{}, s, client, tt.panicMode, attempt); b != nil {
					got = b.Addr
				}
				if got != tt.want[i] {
					t.Errorf("attempt %d: chose %q, want %q", attempt, got, tt.want[i])
				}
			}
		})
	}
}
