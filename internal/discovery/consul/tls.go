package consul

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/attache/attache/internal/tlsclient"
)

// The consul CLI's variables, read where the configuration says nothing.
const (
	// EnvAddr is the agent's address, "host:port" or "https://host:port".
	EnvAddr = "CONSUL_HTTP_ADDR"
	// EnvSSL, true, makes an address without a scheme HTTPS.
	EnvSSL = "CONSUL_HTTP_SSL"
	// EnvCACert, EnvClientCert, EnvClientKey and EnvTLSServerName are the
	// TLS files and name used over HTTPS when Config.TLS is nil.
	EnvCACert        = "CONSUL_CACERT"
	EnvClientCert    = "CONSUL_CLIENT_CERT"
	EnvClientKey     = "CONSUL_CLIENT_KEY"
	EnvTLSServerName = "CONSUL_TLS_SERVER_NAME"
)

// dialTimeout bounds a connection to the agent, TLS handshake included.
const dialTimeout = 10 * time.Second

// agentURL is the agent's base URL for an address (Config.Address):
// address, else $CONSUL_HTTP_ADDR, else 127.0.0.1:8500. An address
// without a scheme is HTTPS when tlsFiles is set or CONSUL_HTTP_SSL is
// true, as for the consul CLI; an http:// address with tlsFiles is an
// error.
func agentURL(address string, tlsFiles *tlsclient.Files, getenv func(string) string) (*url.URL, error) {
	if address == "" {
		address = getenv(EnvAddr)
	}
	if address == "" {
		address = defaultAddress
	}
	address = strings.TrimSpace(address)
	if !strings.Contains(address, "://") {
		ssl := tlsFiles != nil
		if v := getenv(EnvSSL); v != "" && !ssl {
			on, err := strconv.ParseBool(v)
			if err != nil {
				return nil, fmt.Errorf("consul: %s=%q: want true or false", EnvSSL, v)
			}
			ssl = on
		}
		if ssl {
			address = "https://" + address
		}
	}
	base, err := parseAddress(address)
	if err != nil {
		return nil, fmt.Errorf("consul: %w", err)
	}
	if tlsFiles != nil && base.Scheme != "https" {
		return nil, fmt.Errorf("consul: address %s is plain http://, but TLS settings are given: write https:// or host:port", address)
	}
	return base, nil
}

// agentTLS is how an https:// agent is reached: tlsFiles, else the consul
// CLI's variables (an empty Files, the system's CAs, without them). from
// says where the files come from, for errors.
func agentTLS(tlsFiles *tlsclient.Files, getenv func(string) string) (f *tlsclient.Files, from string) {
	if tlsFiles != nil {
		return tlsFiles, "discovery.consul.tls"
	}
	return &tlsclient.Files{
		CA: getenv(EnvCACert), Cert: getenv(EnvClientCert), Key: getenv(EnvClientKey),
		ServerName: getenv(EnvTLSServerName),
	}, strings.Join([]string{EnvCACert, EnvClientCert, EnvClientKey, EnvTLSServerName}, ", ")
}

// transport is the HTTP transport to base: over TLS, dialled by tlsclient
// so that a refused client certificate is reported as such, when base is
// https://. It reads the TLS files now, so a missing one is an error
// before anything starts.
func transport(base *url.URL, tlsFiles *tlsclient.Files, idle int) (*http.Transport, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	// Every watch holds one connection for its blocking query; keep them
	// all idle between queries instead of redialling.
	tr.MaxIdleConnsPerHost = idle
	if base.Scheme != "https" {
		return tr, nil
	}
	files, from := agentTLS(tlsFiles, os.Getenv)
	conf, err := files.Config()
	if err != nil {
		return nil, fmt.Errorf("consul %s: TLS from %s: %w", base, from, err)
	}
	dialer := &net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}
	tr.DialTLSContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		return tlsclient.Dial(ctx, dialer.DialContext, conf, network, addr)
	}
	return tr, nil
}
