package link

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/attache/attache/internal/testenv"
)

// TestAnnouncer registers services in a real etcd, follows a change of the
// offered services, survives an etcd restart, and withdraws everything on
// a clean stop.
func TestAnnouncer(t *testing.T) {
	e := testenv.StartEtcd(t)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{e.Endpoint()}, DialTimeout: 10 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	keys := prefixKeys(cli, "/links/")
	var offered atomic.Pointer[[]string]
	offer := func(s ...string) { offered.Store(&s) }
	offer("redis", "pg")
	a := &Announcer{Endpoints: []string{e.Endpoint()}, Prefix: "/links", Advertise: "10.0.0.2:7443", TTL: 3 * time.Second,
		Services: func() []string { return *offered.Load() }}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := a.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	defer func() { cancel(); wg.Wait() }()
	want := func(what string, w ...string) {
		t.Helper()
		waitFor(t, what, func() bool { return slices.Equal(keys(), w) })
	}
	want("both services announced", "/links/pg/10.0.0.2:7443=10.0.0.2:7443", "/links/redis/10.0.0.2:7443=10.0.0.2:7443")
	offer("redis")
	want("pg withdrawn after a reload", "/links/redis/10.0.0.2:7443=10.0.0.2:7443")

	// An etcd restart keeps the data (and the lease, if it restarts within
	// its TTL); either way the key is there afterwards.
	e.Restart(t)
	want("announced after an etcd restart", "/links/redis/10.0.0.2:7443=10.0.0.2:7443")

	cancel()
	wg.Wait()
	want("withdrawn at once on a clean stop")
}
