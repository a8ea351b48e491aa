package daemon

import (
	"fmt"
	"strings"
	"testing"

	"github.com/attache/attache/internal/testenv"
)

// TestChurnEtcd changes a service's backends 100 times through a real etcd
// under load: one key per endpoint under the watched prefix, each change
// adding one and deleting another. Halfway through, etcd is restarted: the
// last known set keeps serving during the outage and the watch resumes
// without missing a change.
func TestChurnEtcd(t *testing.T) {
	w := watchRoutes(t)
	pool := echoPool(t, 4)
	e := testenv.StartEtcd(t)
	key := func(addr string) string { return "/attache/services/s/" + strings.ReplaceAll(addr, ":", "_") }
	for _, b := range pairAt(pool, 0) {
		e.Put(t, key(b), b)
	}
	addr, _ := startDaemon(t, fmt.Sprintf(`services:
  - name: s
    listen: 127.0.0.1:0
    backends: [etcd://%s/attache/services/s]
`, e.Endpoint()))
	w.waitFor(t, "s", pairAt(pool, 0)...)
	tr := testenv.StartTraffic(t, addr, 4, 4)
	for i := 1; i <= churnChanges; i++ {
		prev, next := pairAt(pool, i-1), pairAt(pool, i)
		e.Put(t, key(next[1]), next[1]) // value as plain host:port …
		if i%2 == 0 {                   // … or JSON with a weight
			e.Put(t, key(next[1]), fmt.Sprintf(`{"addr": %q, "weight": 2}`, next[1]))
		}
		e.Delete(t, key(prev[0]))
		w.waitFor(t, "s", next...)
		tr.AwaitProgress(4)
		if i == churnChanges/2 {
			e.Stop()
			tr.AwaitProgress(50) // traffic carries on with etcd down
			w.waitFor(t, "s", next...)
			e.Restart(t)
		}
	}
	// A malformed value is skipped; the rest of the set stays.
	e.Put(t, "/attache/services/s/bad", "not an address")
	e.Put(t, key(pool[2]), pool[2])
	w.waitFor(t, "s", append(pairAt(pool, churnChanges), pool[2])...)
	checkTraffic(t, tr.Stop())
}

// TestChurnConsul changes a service's instances 100 times through a real
// Consul agent under load, alternating registrations with TTL checks turning
// critical and passing: only passing instances get traffic.
func TestChurnConsul(t *testing.T) {
	w := watchRoutes(t)
	pool := echoPool(t, 4)
	c := testenv.StartConsul(t)
	id := func(addr string) string { return "s-" + strings.ReplaceAll(addr, ":", "-") }
	register := func(addr string) {
		host, port, _ := splitPort(addr)
		c.Register(t, id(addr), "s", host, int(port), testenv.ConsulTTL())
		c.SetCheck(t, testenv.ConsulTTLCheckID(id(addr)), true)
	}
	for _, b := range pairAt(pool, 0) {
		register(b)
	}
	addr, _ := startDaemon(t, fmt.Sprintf(`discovery:
  consul: {address: %s}
services:
  - name: s
    listen: 127.0.0.1:0
    backends: [{consul: s}]
`, c.Addr()))
	w.waitFor(t, "s", pairAt(pool, 0)...)
	tr := testenv.StartTraffic(t, addr, 4, 4)
	for i := 1; i <= churnChanges; i++ {
		prev, next := pairAt(pool, i-1), pairAt(pool, i)
		register(next[1])
		if i%2 == 0 {
			c.SetCheck(t, testenv.ConsulTTLCheckID(id(prev[0])), false) // critical: out
		} else {
			c.Deregister(t, id(prev[0]))
		}
		w.waitFor(t, "s", next...)
		tr.AwaitProgress(4)
	}
	checkTraffic(t, tr.Stop())
}
