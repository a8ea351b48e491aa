package consul

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/attache/attache/internal/tlsclient"
)

// This file is the small slice of Consul's HTTP API the provider needs,
// written against net/http and encoding/json: hashicorp/consul/api would pull
// in dozens of modules for two GET requests.

// maxBody caps a response body. A health answer for a very large service is a
// few MiB; anything past this is a broken or hostile agent, not data.
const maxBody = 32 << 20

// requestSlack is how long a request may run past the time Consul was asked
// to block (plus the wait/16 jitter Consul adds on its side) before the
// provider gives up on it. It bounds a hung agent or a half-open connection.
const requestSlack = 10 * time.Second

// client talks to one Consul agent.
type client struct {
	base  *url.URL // scheme and host only
	token string
	dc    string
	hc    *http.Client
}

// response is one answer to a (possibly blocking) GET.
type response struct {
	body     []byte
	index    uint64 // X-Consul-Index
	notFound bool   // 404, which the KV endpoint uses for "no such key"
}

// get fetches path with query q. A positive index makes it a blocking query
// that returns when the result's index moves past index or after wait.
func (c *client) get(ctx context.Context, path string, q url.Values, index uint64, wait time.Duration) (response, error) {
	if q == nil {
		q = url.Values{}
	}
	if c.dc != "" {
		q.Set("dc", c.dc)
	}
	timeout := requestSlack
	if index > 0 {
		q.Set("index", strconv.FormatUint(index, 10))
		q.Set("wait", strconv.FormatInt(wait.Milliseconds(), 10)+"ms")
		timeout += wait + wait/16
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	u := *c.base
	u.Path = path
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return response{}, fmt.Errorf("build request for %s: %w", path, err)
	}
	if c.token != "" {
		req.Header.Set("X-Consul-Token", c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return response{}, fmt.Errorf("GET %s on %s: %w", path, c.base, tlsclient.Explain(err))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	if err != nil {
		return response{}, fmt.Errorf("GET %s: read body: %w", path, err)
	}
	if len(body) > maxBody {
		return response{}, fmt.Errorf("GET %s: body larger than %d bytes", path, maxBody)
	}
	r := response{body: body, notFound: resp.StatusCode == http.StatusNotFound}
	if resp.StatusCode != http.StatusOK && !r.notFound {
		return response{}, fmt.Errorf("GET %s: %s: %s", path, resp.Status, snippet(body))
	}
	h := resp.Header.Get("X-Consul-Index")
	if h == "" {
		// Without an index the next query cannot block, and looping on
		// non-blocking queries would hammer the agent.
		return response{}, fmt.Errorf("GET %s: %s without an X-Consul-Index header", path, resp.Status)
	}
	r.index, err = strconv.ParseUint(h, 10, 64)
	if err != nil {
		return response{}, fmt.Errorf("GET %s: bad X-Consul-Index %q: %w", path, h, err)
	}
	return r, nil
}

// snippet shortens an error body for a log line.
func snippet(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	if s == "" {
		s = "(empty body)"
	}
	return s
}

// healthEntry is one element of GET /v1/health/service/<name>, reduced to
// the fields the provider reads.
type healthEntry struct {
	Node struct {
		Node    string
		Address string
	}
	Service struct {
		ID      string
		Service string
		Address string
		Port    int
		Weights *struct {
			Passing int
		}
	}
}

// kvEntry is one element of GET /v1/kv/<key>?recurse. encoding/json decodes
// the base64 Value into bytes; a folder's null Value stays nil.
type kvEntry struct {
	Key   string
	Value []byte
}

func decodeHealth(body []byte) ([]healthEntry, error) {
	var out []healthEntry
	if err := json.Unmarshal(body, &out); err != nil {
		return nil, fmt.Errorf("decode health entries: %w", err)
	}
	return out, nil
}

func decodeKV(r response) ([]kvEntry, error) {
	if r.notFound {
		return nil, nil
	}
	var out []kvEntry
	if err := json.Unmarshal(r.body, &out); err != nil {
		return nil, fmt.Errorf("decode kv entries: %w", err)
	}
	return out, nil
}

// parseAddress turns "host:port", "http://host:port" or "https://host:port"
// into a base URL.
func parseAddress(s string) (*url.URL, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, errors.New("address is empty")
	}
	if !strings.Contains(s, "://") {
		s = "http://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("address %q: %w", s, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("address %q: scheme %q is not supported, want http or https", s, u.Scheme)
	}
	if u.Host == "" || u.Hostname() == "" {
		return nil, fmt.Errorf("address %q: no host", s)
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
		return nil, fmt.Errorf("address %q: want scheme://host:port only, without path, query or user", s)
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("address %q: bad port %q", s, p)
		}
	} else {
		u.Host = net.JoinHostPort(u.Hostname(), "8500")
	}
	return &url.URL{Scheme: u.Scheme, Host: u.Host}, nil
}

// ParseURL splits the consul://host:port/path form of a KV watch into the
// agent address ("host:port", port 8500 if omitted) and the KV key ("path",
// without leading or trailing slashes).
func ParseURL(s string) (address, key string, err error) {
	u, err := url.Parse(strings.TrimSpace(s))
	if err != nil {
		return "", "", fmt.Errorf("consul url %q: %w", s, err)
	}
	if u.Scheme != "consul" {
		return "", "", fmt.Errorf("consul url %q: scheme %q, want consul://host:port/key", s, u.Scheme)
	}
	if u.Hostname() == "" {
		return "", "", fmt.Errorf("consul url %q: no host, want consul://host:port/key", s)
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return "", "", fmt.Errorf("consul url %q: user, query and fragment are not supported", s)
	}
	port := u.Port()
	if port == "" {
		port = "8500"
	} else if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", "", fmt.Errorf("consul url %q: bad port %q", s, port)
	}
	key = strings.Trim(u.Path, "/")
	if key == "" {
		return "", "", fmt.Errorf("consul url %q: no key path, want consul://host:port/key", s)
	}
	return net.JoinHostPort(u.Hostname(), port), key, nil
}
