// Package etcdclient makes the etcd clients attache uses (the discovery
// provider and the link announcer) from one set of settings: endpoints,
// credentials, and TLS from the configuration file or, where it says
// nothing, etcdctl's variables (ETCDCTL_CACERT, ETCDCTL_CERT,
// ETCDCTL_KEY).
//
// It also says why a TLS connection failed. The etcd client talks gRPC,
// which reports a refused handshake only as a string inside "context
// deadline exceeded" or "Unavailable". So the client's TLS handshakes go
// through a recorder that keeps the last TLS failure, and Client.Explain
// adds it, in words, to the error of a request that failed meanwhile.
//
// Typical usage:
//
//	c, err := etcdclient.New(ctx, etcdclient.Config{Endpoints: eps, TLS: files})
//	if err != nil {
//		return err // a TLS file is missing or unreadable: nothing started
//	}
//	defer c.Close()
//	if _, err := c.Get(ctx, key); err != nil {
//		return c.Explain(err) // "…: TLS: unknown authority: …"
//	}
package etcdclient

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/attache/attache/internal/tlsclient"
)

// etcdctl's TLS variables, read when the configuration has no tls
// section.
const (
	EnvCACert = "ETCDCTL_CACERT"
	EnvCert   = "ETCDCTL_CERT"
	EnvKey    = "ETCDCTL_KEY"
)

// Config says how to reach one etcd cluster.
type Config struct {
	// Endpoints are the members' client addresses: "host:port",
	// "http://host:port" (plain) or "https://host:port" (TLS).
	Endpoints []string
	// Username and Password authenticate when etcd has auth enabled.
	Username, Password string
	// TLS, when set, is the CA, client certificate and server name the
	// members are dialled with, over TLS whatever the endpoints' scheme
	// ("http://" is then an error). nil leaves TLS to etcdctl's variables
	// (FromEnv), and without them to the scheme: "https://" checks the
	// members against the system's CAs.
	TLS *tlsclient.Files
	// DialTimeout bounds a connection, TLS handshake included. Zero means
	// 5 s.
	DialTimeout time.Duration
	// KeepAlive is the gRPC keepalive period; zero means 10 s (etcd
	// refuses pings more often than every 5 s by default).
	KeepAlive time.Duration
	// Backoff is gRPC's reconnect back-off; the zero value means 1 s
	// doubling to 30 s (gRPC's own grows to 120 s).
	Backoff backoff.Config
}

// files is how c reaches etcd over TLS: its TLS section, else etcdctl's
// variables (getenv reads them), else nil. from says where the files come
// from, for errors.
func (c Config) files(getenv func(string) string) (f *tlsclient.Files, from string) {
	if c.TLS != nil {
		return c.TLS, "discovery.etcd.tls"
	}
	f = &tlsclient.Files{CA: getenv(EnvCACert), Cert: getenv(EnvCert), Key: getenv(EnvKey)}
	if *f == (tlsclient.Files{}) {
		return nil, ""
	}
	return f, EnvCACert + ", " + EnvCert + " and " + EnvKey
}

// Client is an etcd client that can say why its TLS connections fail.
type Client struct {
	*clientv3.Client
	rec *tlsclient.Recorder // nil without TLS
}

// Check reads what New would (the TLS files) and checks the endpoints'
// schemes against the TLS settings, without making a client: a
// constructor calls it so that a bad setting stops attache before anything
// starts.
func Check(cfg Config) error {
	_, err := cfg.tlsConfig(os.Getenv)
	return err
}

// tlsConfig is the TLS configuration the members are dialled with; nil
// means plain connections. Every error names where the setting came from.
func (c Config) tlsConfig(getenv func(string) string) (*tls.Config, error) {
	files, from := c.files(getenv)
	var plain, secure []string
	for _, ep := range c.Endpoints {
		switch {
		case strings.HasPrefix(ep, "https://"):
			secure = append(secure, ep)
		case strings.HasPrefix(ep, "http://"):
			plain = append(plain, ep)
		}
	}
	switch {
	case len(plain) > 0 && len(secure) > 0:
		return nil, fmt.Errorf("endpoints %s are plain http:// and %s are https://: want one or the other",
			strings.Join(plain, ","), strings.Join(secure, ","))
	case files != nil && len(plain) > 0:
		return nil, fmt.Errorf("endpoints %s are plain http://, but TLS is set by %s: write https:// or host:port",
			strings.Join(plain, ","), from)
	case files != nil:
		conf, err := files.Config()
		if err != nil {
			return nil, fmt.Errorf("TLS from %s: %w", from, err)
		}
		return conf, nil
	case len(secure) > 0:
		return &tls.Config{MinVersion: tls.VersionTLS12}, nil
	}
	return nil, nil
}

// New reads the TLS files, if any, and makes the client. It does not wait
// for a connection: requests do, until their context ends. An error means
// the settings are wrong (a TLS file missing, unreadable or not matching
// its key; a bad endpoint) or, with a username, that etcd could not be
// reached to authenticate.
func New(ctx context.Context, cfg Config) (*Client, error) {
	conf, err := cfg.tlsConfig(os.Getenv)
	if err != nil {
		return nil, err
	}
	dialTimeout := cfg.DialTimeout
	if dialTimeout <= 0 {
		dialTimeout = 5 * time.Second
	}
	keepAlive := cfg.KeepAlive
	if keepAlive <= 0 {
		keepAlive = 10 * time.Second
	}
	bo := cfg.Backoff
	if bo == (backoff.Config{}) {
		bo = backoff.Config{BaseDelay: time.Second, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 30 * time.Second}
	}
	opts := []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{Backoff: bo, MinConnectTimeout: dialTimeout})}
	c := &Client{}
	endpoints := cfg.Endpoints
	if conf != nil {
		// gRPC runs TLS over the connection; the recorder keeps the last
		// failure, since gRPC only passes it on as text.
		c.rec = &tlsclient.Recorder{}
		opts = append(opts, grpc.WithTransportCredentials(recordingCreds(c.rec, conf)))
		// The client picks its credentials by scheme; bare addresses leave
		// the choice to the option above.
		endpoints = make([]string, len(cfg.Endpoints))
		for i, ep := range cfg.Endpoints {
			endpoints[i] = strings.TrimPrefix(ep, "https://")
		}
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            endpoints,
		Username:             cfg.Username,
		Password:             cfg.Password,
		DialTimeout:          dialTimeout,
		DialKeepAliveTime:    keepAlive,
		DialKeepAliveTimeout: dialTimeout,
		Context:              ctx,
		// The client logs through zap; what matters to an operator is
		// reported by the callers through slog instead.
		Logger:      zap.NewNop(),
		DialOptions: opts,
	})
	if err != nil {
		return nil, c.Explain(fmt.Errorf("etcd client for %s: %w", strings.Join(cfg.Endpoints, ","), err))
	}
	c.Client = cli
	return c, nil
}

// Explain returns err with the last TLS failure of the client's
// connections in front, in words, when there was one since the last
// connection that worked; otherwise err unchanged.
func (c *Client) Explain(err error) error {
	if err == nil || c.rec == nil {
		return err
	}
	if _, ok := errors.AsType[*tlsclient.Error](err); ok {
		return err
	}
	tlsErr := c.rec.Last()
	if tlsErr == nil {
		return err
	}
	return fmt.Errorf("%w (%v)", tlsErr, err)
}
