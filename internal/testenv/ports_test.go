package testenv

import (
	"net"
	"strconv"
	"testing"
)

// TestFreePortsAreBelowTheEphemeralRange: the ports are distinct, free to
// bind, and below the range outgoing connections take theirs from (when
// the range leaves room below it, as Linux's default 32768-60999 does).
func TestFreePortsAreBelowTheEphemeralRange(t *testing.T) {
	low := ephemeralLow()
	ports := FreePorts(t, "127.0.0.1", 8)
	seen := map[int]bool{}
	for _, p := range ports {
		if low > 11000 && (p < 10000 || p >= low) {
			t.Errorf("port %d is outside [10000, %d)", p, low)
		}
		if seen[p] {
			t.Errorf("port %d returned twice", p)
		}
		seen[p] = true
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			t.Errorf("port %d is not free: %v", p, err)
			continue
		}
		ln.Close()
	}
}
