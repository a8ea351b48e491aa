package admin

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// counting is a State whose one service moves bytes on every look, so
// consecutive snapshots differ the way a busy service's do.
type counting struct {
	looks    atomic.Int64
	notReady error
}

func (c *counting) Ready() error { return c.notReady }
func (c *counting) Services() []Service {
	n := c.looks.Add(1)
	return []Service{{
		Name: "redis", Listen: "127.0.0.1:6379", Balance: "round_robin", Discovery: []string{},
		Backends: []Backend{
			{Addr: "10.0.0.1:6379", Weight: 1, Healthy: true, Check: CheckPassing},
			{Addr: "10.0.0.2:6379", Weight: 1, Check: CheckFailing, LastError: "dial tcp: connection refused"},
		},
		Connections: Counters{Accepted: n, BytesIn: 1000 * n, BytesOut: 2000 * n},
	}}
}
func (c *counting) Discovery() []Provider {
	return []Provider{{Name: "dns", Reported: true, Up: true, Status: map[string]int{"queries": 3}}}
}

// serveWith runs srv on a loopback port until the test ends.
func serveWith(t *testing.T, srv *Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return "http://" + ln.Addr().String()
}

func get(t *testing.T, url string, header ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading: %v", url, err)
	}
	return resp, string(b)
}

// TestStatusPageAndAssets: "/" is the HTML page, every asset it references
// is served from the binary with its type and a validator, and everything
// else keeps the API's JSON errors.
func TestStatusPageAndAssets(t *testing.T) {
	url := serveWith(t, &Server{State: fixed{}})

	resp, body := get(t, url+"/")
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/html; charset=utf-8" {
		t.Fatalf("GET / = %d %q, want 200 text/html", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "script-src 'self'") {
		t.Errorf("GET /: Content-Security-Policy %q does not keep the page to its own origin", csp)
	}
	if strings.Contains(body, "http://") || strings.Contains(body, "https://") {
		t.Errorf("GET /: the page refers to another origin:\n%s", body)
	}
	refs := regexp.MustCompile(`(?:src|href)="(/ui/[^"]+)"`).FindAllStringSubmatch(body, -1)
	want := map[string]string{
		"/ui/app.js":    "text/javascript; charset=utf-8",
		"/ui/style.css": "text/css; charset=utf-8",
	}
	if len(refs) != len(want) {
		t.Errorf("GET /: references %v, want the %d assets %v", refs, len(want), want)
	}
	for _, ref := range refs {
		path := ref[1]
		typ, ok := want[path]
		if !ok {
			t.Errorf("GET /: references unknown asset %s", path)
			continue
		}
		resp, body := get(t, url+path)
		etag := resp.Header.Get("ETag")
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != typ || len(body) == 0 {
			t.Errorf("GET %s = %d %q (%d bytes), want 200 %q", path, resp.StatusCode, resp.Header.Get("Content-Type"), len(body), typ)
		}
		if etag == "" || resp.Header.Get("Cache-Control") != "no-cache" || resp.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("GET %s: cache headers ETag %q, Cache-Control %q, X-Content-Type-Options %q", path, etag, resp.Header.Get("Cache-Control"), resp.Header.Get("X-Content-Type-Options"))
		}
		if resp, body := get(t, url+path, "If-None-Match", etag); resp.StatusCode != http.StatusNotModified || body != "" {
			t.Errorf("GET %s with If-None-Match %s = %d with %d bytes, want 304 and no body", path, etag, resp.StatusCode, len(body))
		}
	}

	for _, tc := range []struct {
		method, path string
		code         int
		want         string
	}{
		{http.MethodGet, "/ui/nope.js", http.StatusNotFound, "no such asset: /ui/nope.js"},
		{http.MethodGet, "/ui/index.html", http.StatusNotFound, "no such asset"},
		{http.MethodGet, "/index.html", http.StatusNotFound, "no such endpoint: /index.html"},
		{http.MethodGet, "/ui/", http.StatusNotFound, "no such endpoint: /ui/"},
		{http.MethodPost, "/", http.StatusMethodNotAllowed, "POST /: method not allowed; use GET"},
		{http.MethodPost, "/ui/app.js", http.StatusMethodNotAllowed, "use GET"},
		{http.MethodPost, "/v1/events", http.StatusMethodNotAllowed, "POST /v1/events: method not allowed; use GET"},
	} {
		req, _ := http.NewRequest(tc.method, url+tc.path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.code || resp.Header.Get("Content-Type") != "application/json" || !strings.Contains(string(b), tc.want) {
			t.Errorf("%s %s = %d %q %s, want %d JSON with %q", tc.method, tc.path, resp.StatusCode, resp.Header.Get("Content-Type"), b, tc.code, tc.want)
		}
	}
}

// readEvent returns the data of the next event on r.
func readEvent(r *bufio.Reader) (string, error) {
	var data []string
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return "", err
		}
		line = strings.TrimRight(line, "\n")
		switch {
		case line == "" && data != nil:
			return strings.Join(data, "\n"), nil
		case strings.HasPrefix(line, "data: "):
			data = append(data, strings.TrimPrefix(line, "data: "))
		}
	}
}

// TestEventsStream: /v1/events sends a snapshot at once and then one per
// interval, each a complete JSON document, and the handler ends when the
// client goes away.
func TestEventsStream(t *testing.T) {
	st := &counting{notReady: errors.New("discovery provider \"dns\" has not sent its first snapshot yet")}
	srv := &Server{State: st, EventInterval: 20 * time.Millisecond, Version: "v9.9.9"}
	ended := make(chan struct{}, 1)
	h := srv.Handler()
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r)
		if r.URL.Path == "/v1/events" {
			ended <- struct{}{}
		}
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+ln.Addr().String()+"/v1/events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" || resp.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("GET /v1/events = %d, Content-Type %q, Cache-Control %q", resp.StatusCode, resp.Header.Get("Content-Type"), resp.Header.Get("Cache-Control"))
	}
	r := bufio.NewReader(resp.Body)
	var snaps []Snapshot
	for range 3 {
		data, err := readEvent(r)
		if err != nil {
			t.Fatalf("reading event %d: %v", len(snaps)+1, err)
		}
		var s Snapshot
		if err := json.Unmarshal([]byte(data), &s); err != nil {
			t.Fatalf("event %d is not a snapshot: %v in %s", len(snaps)+1, err, data)
		}
		snaps = append(snaps, s)
	}
	first, last := snaps[0], snaps[len(snaps)-1]
	if first.Ready || !strings.Contains(first.ReadyError, `"dns" has not sent`) || first.Version != "v9.9.9" || first.IntervalMS != 20 || first.Started.IsZero() {
		t.Errorf("first snapshot: ready %v (%q), version %q, interval %d ms, started %v", first.Ready, first.ReadyError, first.Version, first.IntervalMS, first.Started)
	}
	if len(first.Services) != 1 || len(first.Services[0].Backends) != 2 || len(first.Providers) != 1 || first.Providers[0].Name != "dns" {
		t.Errorf("first snapshot lacks the state: %+v", first)
	}
	if !last.Time.After(first.Time) || last.Services[0].Connections.BytesIn <= first.Services[0].Connections.BytesIn {
		t.Errorf("snapshots do not move: first at %v with %d bytes in, last at %v with %d", first.Time, first.Services[0].Connections.BytesIn, last.Time, last.Services[0].Connections.BytesIn)
	}

	// The client goes away: the handler must end rather than stream on.
	cancel()
	select {
	case <-ended:
	case <-time.After(30 * time.Second):
		t.Fatal("the event stream handler still runs after its client went away")
	}
}

// TestShutdownEndsEventStreams: an open status page must not hold up an
// exit. Serve returns from a graceful shutdown (no forced close) long
// before its ShutdownTimeout, and the client sees the stream end cleanly.
func TestShutdownEndsEventStreams(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &Server{State: &counting{}, EventInterval: time.Hour, ShutdownTimeout: 10 * time.Minute}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()

	resp, err := http.Get("http://" + ln.Addr().String() + "/v1/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	r := bufio.NewReader(resp.Body)
	if _, err := readEvent(r); err != nil {
		t.Fatalf("first event: %v", err)
	}
	// The next event is an hour away: only the shutdown can end the stream.
	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Serve still waits on an open event stream 30s after the shutdown began")
	}
	if _, err := readEvent(r); err != io.EOF {
		t.Errorf("after the shutdown the stream read %v, want a clean end (EOF)", err)
	}
}
