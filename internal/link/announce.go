package link

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"path"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/backoff"

	"github.com/attache/attache/internal/discovery"
	"github.com/attache/attache/internal/etcdclient"
	"github.com/attache/attache/internal/tlsclient"
)

// Announcer registers a link server's offered services in etcd, so that
// ambassadors elsewhere find it (attache://etcd/<service>, or an etcd
// backend with link: <service>): one key per service,
// <Prefix>/<service>/<Advertise>, whose value is Advertise, the form the
// etcd discovery provider reads. The keys hang on a lease that Run keeps
// alive: if this host dies or loses etcd for longer than TTL, they
// disappear and clients stop picking it. On a clean stop Run revokes the
// lease, so they disappear at once.
type Announcer struct {
	Endpoints          []string
	Username, Password string
	// TLS, when set, reaches etcd over TLS with these files; nil leaves
	// it to etcdctl's variables and the endpoints' scheme, as for etcd
	// discovery (package etcdclient).
	TLS         *tlsclient.Files
	DialTimeout time.Duration // 0: 5s
	Prefix      string        // e.g. /attache/links
	Advertise   string        // host:port peers dial
	TTL         time.Duration // 0: 10s; etcd counts whole seconds
	// Services returns the services offered now; Run follows its changes
	// (reloads) within a third of TTL.
	Services func() []string
	Logger   *slog.Logger
}

func (a *Announcer) logger() *slog.Logger {
	if a.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return a.Logger
}

func (a *Announcer) ttl() time.Duration {
	if a.TTL <= 0 {
		return 10 * time.Second
	}
	return a.TTL
}

// Key is where service is announced.
func (a *Announcer) Key(service string) string {
	return path.Join(a.Prefix, service, a.Advertise)
}

// Run announces until ctx is done, re-announcing with back-off whenever the
// lease is lost (etcd unreachable past the TTL, or restarted from a backup).
// It returns nil when ctx is done.
func (a *Announcer) Run(ctx context.Context) error {
	if a.Advertise == "" || a.Prefix == "" || len(a.Endpoints) == 0 || a.Services == nil {
		return errors.New("link announcer: Endpoints, Prefix, Advertise and Services are required")
	}
	cli, err := etcdclient.New(ctx, etcdclient.Config{
		Endpoints: a.Endpoints, Username: a.Username, Password: a.Password, TLS: a.TLS,
		DialTimeout: a.DialTimeout, // etcdclient's default when 0
		// gRPC's default reconnect back-off grows to 120 s; a host whose
		// network comes back must announce itself again within about a
		// TTL.
		Backoff: backoff.Config{BaseDelay: 200 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: a.ttl() / 2},
	})
	if err != nil {
		return fmt.Errorf("link announcer: %w", err)
	}
	defer cli.Close()
	wait := 200 * time.Millisecond
	var repeats discovery.Repeats
	for ctx.Err() == nil {
		announced, err := a.session(ctx, cli.Client)
		if ctx.Err() != nil {
			return nil
		}
		if announced {
			repeats.Recovered()
		}
		err = cli.Explain(err)
		a.logger().Log(ctx, repeats.Level(err), "link announcement in etcd lost; announcing again", "error", err, "retry_in", wait)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil
		}
		wait = min(2*wait, a.ttl())
	}
	return nil
}

// session grants a lease, puts the keys and keeps both up to date until
// the lease is lost or ctx is done (then it revokes the lease). announced
// reports whether the keys were put.
func (a *Announcer) session(ctx context.Context, cli *clientv3.Client) (announced bool, err error) {
	ttl := a.ttl()
	opCtx := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, ttl) }
	c, cancel := opCtx()
	lease, err := cli.Grant(c, int64((ttl+time.Second-1)/time.Second))
	cancel()
	if err != nil {
		return false, fmt.Errorf("grant lease: %w", err)
	}
	defer func() {
		// Revoke on the way out, so the keys go now rather than after the
		// TTL; bounded, since etcd may be what failed.
		rc, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		_, _ = cli.Revoke(rc, lease.ID)
		cancel()
	}()
	kaCtx, stopKA := context.WithCancel(ctx)
	defer stopKA()
	ka, err := cli.KeepAlive(kaCtx, lease.ID)
	if err != nil {
		return false, fmt.Errorf("keep the lease alive: %w", err)
	}
	put := map[string]bool{} // keys put under this lease
	sync := func() error {
		want := map[string]bool{}
		for _, s := range a.Services() {
			want[a.Key(s)] = true
		}
		for k := range want {
			if put[k] {
				continue
			}
			c, cancel := opCtx()
			_, err := cli.Put(c, k, a.Advertise, clientv3.WithLease(lease.ID))
			cancel()
			if err != nil {
				return fmt.Errorf("put %s: %w", k, err)
			}
			put[k] = true
		}
		for k := range put {
			if want[k] {
				continue
			}
			c, cancel := opCtx()
			_, err := cli.Delete(c, k)
			cancel()
			if err != nil {
				return fmt.Errorf("delete %s: %w", k, err)
			}
			delete(put, k)
		}
		return nil
	}
	if err := sync(); err != nil {
		return false, err
	}
	a.logger().Info("link services announced in etcd", "keys", slices.Sorted(maps.Keys(put)), "ttl", ttl)
	tick := time.NewTicker(ttl / 3)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return true, ctx.Err()
		case _, ok := <-ka:
			if !ok {
				return true, errors.New("lease keep-alive ended (etcd unreachable, or the lease expired)")
			}
		case <-tick.C:
			if err := sync(); err != nil {
				return true, err
			}
		}
	}
}
