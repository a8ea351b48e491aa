package balance

import (
	"net/netip"

	"github.com/attache/attache/internal/backend"
)

// Choose is how every data path (both TCP engines and UDP) gets a backend:
// p's pick, or, when p finds none usable and panicMode is on, one that is
// out only because passive ejection benched it (Envoy's panic mode): a
// client is better served by a backend that failed a moment ago than by
// none at all. A dial that works then ends its ejection; a backend its
// active checks hold down is never chosen. attempt is how many dials the
// connection made already: the n-th benched backend is chosen (wrapping),
// so that retries go round them rather than to the same one. nil when
// nothing is usable even so. Callers turn panicMode on with passive
// health, the only thing that benches a backend.
func Choose(p Policy, set *backend.Set, from netip.AddrPort, panicMode bool, attempt int) *backend.Backend {
	if b := p.Pick(set, from); b != nil || !panicMode {
		return b
	}
	return benched(set, attempt)
}

// benched returns the n-th (wrapping) backend of set that passes its
// active checks, or nil when none does.
func benched(set *backend.Set, n int) *backend.Backend {
	var count int
	for i := range set.Len() {
		if set.At(i).CheckHealthy() {
			count++
		}
	}
	if count == 0 {
		return nil
	}
	n %= count
	for i := range set.Len() {
		if b := set.At(i); b.CheckHealthy() {
			if n == 0 {
				return b
			}
			n--
		}
	}
	return nil
}
