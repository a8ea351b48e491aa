// Command etcdserver runs a single-member embedded etcd, configured as
// testenv.StartEtcd configures its in-process one. Tests run it where an
// in-process server cannot be: inside a network namespace (test/e2e's
// multi-host link test runs it with `ip netns exec`). It prints "ready" on
// stdout once the member serves, and stops on SIGTERM or SIGINT.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

func main() {
	client := flag.String("client", "127.0.0.1:2379", "client `host:port`")
	peer := flag.String("peer", "127.0.0.1:2380", "peer `host:port`")
	dir := flag.String("dir", "", "data `directory` (required)")
	flag.Parse()
	if *dir == "" {
		fmt.Fprintln(os.Stderr, "etcdserver: -dir is required")
		os.Exit(2)
	}
	cfg := embed.NewConfig()
	cfg.Name = "attache-test"
	cfg.Dir = *dir
	cu := url.URL{Scheme: "http", Host: *client}
	pu := url.URL{Scheme: "http", Host: *peer}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.TickMs, cfg.ElectionMs = 10, 100
	cfg.EnableGRPCGateway = false
	cfg.UnsafeNoFsync = true
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	srv, err := embed.StartEtcd(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcdserver:", err)
		os.Exit(1)
	}
	defer srv.Close()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	select {
	case <-srv.Server.ReadyNotify():
		fmt.Println("ready")
	case err := <-srv.Err():
		fmt.Fprintln(os.Stderr, "etcdserver:", err)
		os.Exit(1)
	case <-time.After(60 * time.Second):
		fmt.Fprintln(os.Stderr, "etcdserver: not ready after 60s")
		os.Exit(1)
	case <-ctx.Done():
		return
	}
	select {
	case err := <-srv.Err():
		fmt.Fprintln(os.Stderr, "etcdserver:", err)
		os.Exit(1)
	case <-ctx.Done():
	}
}
