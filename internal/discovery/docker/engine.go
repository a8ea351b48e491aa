package docker

// A tiny Docker Engine API client: the four calls the provider needs
// (version, events, container list, container inspect) over net/http and
// encoding/json. The Docker SDK would bring a large dependency tree, and
// pins API versions in ways that broke when Docker 29 raised the minimum API
// version; this client asks the engine which version it speaks instead.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/attache/attache/internal/tlsclient"
)

// errNotFound is returned by inspect when the container no longer exists.
var errNotFound = errors.New("no such container")

// requestTimeout bounds one version, list or inspect call. The events stream
// has no timeout: it is open for as long as the provider runs.
const requestTimeout = 30 * time.Second

// dialTimeout bounds a connection to the engine, TLS handshake included.
const dialTimeout = 10 * time.Second

// engine talks to one Docker engine.
type engine struct {
	hc   *http.Client
	base string // scheme://host, e.g. "http://docker" for a unix socket
	host string // the DOCKER_HOST form, for messages
}

// newEngine parses host in DOCKER_HOST form: unix:///path/to/docker.sock or
// tcp://host[:port] (port 2375 when absent, 2376 with TLS, as the docker
// CLI has it). With tlsFiles a tcp:// engine is reached over TLS; its
// files are read here, so a missing one is an error before anything starts.
// ssh:// is not supported.
func newEngine(host string, tlsFiles *tlsclient.Files) (*engine, error) {
	u, err := url.Parse(host)
	if err != nil {
		return nil, fmt.Errorf("docker host %q: %w", host, err)
	}
	if tlsFiles != nil && u.Scheme != "tcp" {
		return nil, fmt.Errorf("docker host %q: TLS is for tcp:// hosts", host)
	}
	dialer := &net.Dialer{Timeout: dialTimeout, KeepAlive: 15 * time.Second}
	tr := &http.Transport{
		MaxIdleConns:    4,
		IdleConnTimeout: 90 * time.Second,
		// The engine speaks HTTP/1.1; the events stream is a chunked body.
		ForceAttemptHTTP2: false,
	}
	e := &engine{hc: &http.Client{Transport: tr}, host: host}
	switch u.Scheme {
	case "unix":
		path := u.Path
		if path == "" {
			path = u.Opaque
		}
		if path == "" {
			return nil, fmt.Errorf("docker host %q: want unix:///path/to/docker.sock", host)
		}
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, "unix", path)
		}
		// The host part of the URL is ignored by the dialer above; "docker"
		// is what the Docker CLI sends too.
		e.base = "http://docker"
	case "tcp":
		if u.Host == "" {
			return nil, fmt.Errorf("docker host %q: want tcp://host:port", host)
		}
		addr, scheme, port := u.Host, "http", "2375"
		if tlsFiles != nil {
			conf, err := tlsFiles.Config()
			if err != nil {
				return nil, fmt.Errorf("docker host %q: %w", host, err)
			}
			// Dialled by tlsclient, so that an engine refusing the
			// client certificate is reported as such.
			tr.DialTLSContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
				// The events stream's context has no deadline: bound
				// the connect and the handshake here.
				ctx, cancel := context.WithTimeout(ctx, dialTimeout)
				defer cancel()
				return tlsclient.Dial(ctx, dialer.DialContext, conf, network, addr)
			}
			scheme, port = "https", "2376"
		}
		if u.Port() == "" {
			addr = net.JoinHostPort(u.Hostname(), port)
		}
		tr.DialContext = dialer.DialContext
		e.base = scheme + "://" + addr
	default:
		return nil, fmt.Errorf("docker host %q: scheme %q is not supported, want unix:// or tcp://", host, u.Scheme)
	}
	return e, nil
}

// close drops idle connections to the engine.
func (e *engine) close() { e.hc.CloseIdleConnections() }

// apiPrefix asks the engine which API version it speaks (GET /version is
// served unversioned by every engine) and returns the path prefix to use,
// e.g. "/v1.41". Using the engine's own version works on old engines (20.10
// speaks 1.41) and new ones (Docker 29 refuses anything below 1.44) alike;
// the fields this package reads are the same in all of them. An engine that
// does not say falls back to unversioned paths, which mean "the latest".
func (e *engine) apiPrefix(ctx context.Context) (string, error) {
	var v struct {
		Version    string
		APIVersion string `json:"ApiVersion"`
	}
	if err := e.getJSON(ctx, "/version", nil, &v); err != nil {
		return "", err
	}
	if v.APIVersion == "" {
		return "", nil
	}
	if strings.ContainsAny(v.APIVersion, "/?#") {
		return "", fmt.Errorf("docker engine %s: odd API version %q", e.host, v.APIVersion)
	}
	return "/v" + v.APIVersion, nil
}

// event is one message of GET /events, the fields the provider uses.
type event struct {
	Type   string
	Action string
	Actor  struct {
		ID         string
		Attributes map[string]string
	}
}

// eventStream is an open GET /events response.
type eventStream struct {
	body io.Closer
	dec  *json.Decoder
}

// next blocks for the next event. It returns an error when the stream ends
// (io.EOF when the engine closed it) or ctx of the events call is done.
func (s *eventStream) next() (event, error) {
	var ev event
	err := s.dec.Decode(&ev)
	return ev, err
}

func (s *eventStream) close() { s.body.Close() }

// events subscribes to the engine's event stream with filters. It returns
// once the engine answered with its headers, which it sends as soon as the
// subscription is in place: an event after that point is on the stream.
// The stream ends when ctx is done.
func (e *engine) events(ctx context.Context, prefix string, filters map[string][]string) (*eventStream, error) {
	q, err := filterQuery(filters)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.base+prefix+"/events?"+q.Encode(), nil)
	if err != nil {
		return nil, fmt.Errorf("docker events: %w", err)
	}
	resp, err := e.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("docker events on %s: %w", e.host, tlsclient.Explain(err))
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, fmt.Errorf("docker events on %s: %w", e.host, apiError(resp))
	}
	return &eventStream{body: resp.Body, dec: json.NewDecoder(resp.Body)}, nil
}

// containerSummary is one entry of GET /containers/json.
type containerSummary struct {
	ID string `json:"Id"`
}

// list returns the containers matching filters (running ones only unless
// the filters say otherwise).
func (e *engine) list(ctx context.Context, prefix string, filters map[string][]string) ([]containerSummary, error) {
	q, err := filterQuery(filters)
	if err != nil {
		return nil, err
	}
	var out []containerSummary
	if err := e.getJSON(ctx, prefix+"/containers/json", q, &out); err != nil {
		return nil, err
	}
	return out, nil
}

// containerJSON is the part of GET /containers/{id}/json the provider reads.
type containerJSON struct {
	ID    string `json:"Id"`
	Name  string // with a leading "/"
	State struct {
		Running    bool
		Paused     bool
		Restarting bool
	}
	Config struct {
		Labels       map[string]string
		ExposedPorts map[string]struct{}
	}
	NetworkSettings struct {
		// IPAddress is the default bridge's address, kept by old API
		// versions next to Networks; newer versions drop it.
		IPAddress         string
		GlobalIPv6Address string
		Networks          map[string]*endpointSettings
	}
}

// endpointSettings is a container's attachment to one network.
type endpointSettings struct {
	NetworkID         string
	IPAddress         string
	GlobalIPv6Address string
}

// inspect returns the container with this ID, or errNotFound.
func (e *engine) inspect(ctx context.Context, prefix, id string) (containerJSON, error) {
	var c containerJSON
	err := e.getJSON(ctx, prefix+"/containers/"+url.PathEscape(id)+"/json", nil, &c)
	return c, err
}

// getJSON does a GET with the request timeout and decodes a 200 answer into
// out. A 404 is errNotFound.
func (e *engine) getJSON(ctx context.Context, path string, q url.Values, out any) error {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	u := e.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fmt.Errorf("docker GET %s: %w", path, err)
	}
	resp, err := e.hc.Do(req)
	if err != nil {
		return fmt.Errorf("docker GET %s on %s: %w", path, e.host, tlsclient.Explain(err))
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		return fmt.Errorf("docker GET %s: %w: %w", path, errNotFound, apiError(resp))
	default:
		return fmt.Errorf("docker GET %s on %s: %w", path, e.host, apiError(resp))
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("docker GET %s: decode answer: %w", path, err)
	}
	return nil
}

// apiError turns a non-200 answer into an error carrying the status and
// the engine's {"message": …}.
func apiError(resp *http.Response) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	var m struct{ Message string }
	if json.Unmarshal(body, &m) == nil && m.Message != "" {
		return fmt.Errorf("engine answered %s: %s", resp.Status, m.Message)
	}
	return fmt.Errorf("engine answered %s: %s", resp.Status, strings.TrimSpace(string(body)))
}

// filterQuery encodes filters the way the Engine API wants them: one
// "filters" parameter holding a JSON object of string lists.
func filterQuery(filters map[string][]string) (url.Values, error) {
	if len(filters) == 0 {
		return nil, nil
	}
	b, err := json.Marshal(filters)
	if err != nil {
		return nil, fmt.Errorf("docker filters: %w", err)
	}
	return url.Values{"filters": {string(b)}}, nil
}
