package daemon

import (
	"fmt"
	"slices"
	"testing"

	"github.com/attache/attache/internal/testenv"
)

// TestOneSourceTwoSpellings: two discovery entries that reach one etcd
// cluster, or one Consul agent, once through the discovery section and once
// through a URL naming the server, used to make two providers of the same
// name; the merger keeps snapshots by provider name, so the last to report
// erased the other's services. Each service must keep its own backends, the
// providers' names must be unique, and each has one metrics series.
func TestOneSourceTwoSpellings(t *testing.T) {
	pool := echoPool(t, 3)
	etcd := testenv.StartEtcd(t)
	etcd.Put(t, "/a/redis/1", pool[0])
	etcd.Put(t, "/a/list", pool[1]+","+pool[2])
	consul := testenv.StartConsul(t)
	for i, name := range []string{"c1", "c2"} {
		host, port, err := splitPort(pool[i])
		if err != nil {
			t.Fatal(err)
		}
		consul.Register(t, name+"-0", name, host, int(port))
	}

	w := watchRoutes(t)
	d := startAdminDaemon(t, fmt.Sprintf(`discovery:
  etcd: {endpoints: [%[1]s]}
  consul: {address: %[2]s}
services:
  - name: section-etcd
    listen: 127.0.0.1:0
    backends: [{etcd: /a/redis}]
  - name: url-etcd
    listen: 127.0.0.1:0
    backends: [etcd://%[1]s/a/list]
  - name: section-consul
    listen: 127.0.0.1:0
    backends: [{consul: c1}]
  - name: url-consul
    listen: 127.0.0.1:0
    backends: [consul-service://%[2]s/c2]
`, etcd.Endpoint(), consul.Addr()))
	w.waitFor(t, "section-etcd", pool[0])
	w.waitFor(t, "url-etcd", pool[1], pool[2])
	w.waitFor(t, "section-consul", pool[0])
	w.waitFor(t, "url-consul", pool[1])

	var names []string
	for _, p := range discoveryOf(t, d) {
		if slices.Contains(names, p.Name) {
			t.Errorf("two discovery providers are named %q", p.Name)
		}
		names = append(names, p.Name)
	}
	want := []string{"consul " + consul.Addr(), "etcd " + etcd.Endpoint()}
	if slices.Sort(names); !slices.Equal(names, want) {
		t.Errorf("providers %q, want one per source: %q", names, want)
	}
	fams := d.scrape(t)
	for _, name := range []string{"attache_discovery_ready", "attache_discovery_up", "attache_discovery_errors_total"} {
		if f := fams[name]; f == nil || len(f.GetMetric()) != len(want) {
			t.Errorf("%s: %d series, want %d (one per provider)", name, len(f.GetMetric()), len(want))
		}
	}
}
