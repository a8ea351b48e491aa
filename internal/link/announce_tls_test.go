package link

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/attache/attache/internal/certs"
	"github.com/attache/attache/internal/etcdclient"
	"github.com/attache/attache/internal/testenv"
	"github.com/attache/attache/internal/tlsclient"
)

// The announcer registers over TLS with a member that requires a client
// certificate; with a certificate from another CA it is refused, and its
// log says so once, naming what failed, however often it retries.
func TestAnnouncerOverTLS(t *testing.T) {
	e := testenv.StartEtcdTLS(t)
	files := new(tlsclient.Files(e.TLS().ClientFiles()))
	cli, err := etcdclient.New(t.Context(), etcdclient.Config{Endpoints: []string{e.Endpoint()}, TLS: files})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	keys := prefixKeys(cli.Client, "/links/")
	run := func(a *Announcer) (stop func()) {
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		wg.Go(func() {
			if err := a.Run(ctx); err != nil {
				t.Errorf("Run: %v", err)
			}
		})
		return func() { cancel(); wg.Wait() }
	}

	stop := run(&Announcer{Endpoints: []string{e.Endpoint()}, TLS: files, Prefix: "/links", Advertise: "10.0.0.2:7443",
		TTL: 3 * time.Second, Services: func() []string { return []string{"redis"} }})
	waitFor(t, "announced over TLS", func() bool { return slices.Equal(keys(), []string{"/links/redis/10.0.0.2:7443=10.0.0.2:7443"}) })
	stop()
	waitFor(t, "withdrawn on a clean stop", func() bool { return len(keys()) == 0 })

	rogue := *files
	rogue.Cert, rogue.Key = testenv.NewPKI(t, "rogue").Issue(t, certs.Request{Name: "rogue-client"})
	logs := &testenv.LogBuffer{}
	stop = run(&Announcer{Endpoints: []string{e.Endpoint()}, TLS: &rogue, Prefix: "/links", Advertise: "10.0.0.3:7443",
		TTL: 3 * time.Second, Services: func() []string { return []string{"redis"} },
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	defer stop()
	const want = "TLS: the server refused the client certificate"
	waitFor(t, "three refused announcements", func() bool { return len(logs.Lines("announcing again", want)) >= 3 })
	if n := len(logs.Lines("level=WARN", want)); n != 1 {
		t.Errorf("the refusal was logged at warn %d times, want once\n%s", n, logs)
	}
	if !strings.Contains(logs.String(), e.Endpoint()) {
		t.Errorf("the log does not name the member %s:\n%s", e.Endpoint(), logs)
	}
	if k := keys(); len(k) != 0 {
		t.Errorf("keys %v announced with a refused certificate", k)
	}
}

// prefixKeys lists key=value under prefix, or the read's error, through
// cli.
func prefixKeys(cli *clientv3.Client, prefix string) func() []string {
	return func() []string {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix())
		if err != nil {
			return []string{"error: " + err.Error()}
		}
		var out []string
		for _, kv := range resp.Kvs {
			out = append(out, string(kv.Key)+"="+string(kv.Value))
		}
		return out
	}
}
