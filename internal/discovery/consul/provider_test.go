package consul

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/attache/attache/internal/backend"
	"github.com/attache/attache/internal/discovery"
	"github.com/attache/attache/internal/testenv"
)

func TestParseURL(t *testing.T) {
	tests := []struct {
		in, addr, key, err string
	}{
		{in: "consul://127.0.0.1:8500/attache/redis", addr: "127.0.0.1:8500", key: "attache/redis"},
		{in: "consul://consul.internal/svc/", addr: "consul.internal:8500", key: "svc"},
		{in: "consul://[::1]:8600//a/b//", addr: "[::1]:8600", key: "a/b"},
		{in: "http://127.0.0.1:8500/k", err: `scheme "http"`},
		{in: "consul:///k", err: "no host"},
		{in: "consul://127.0.0.1:8500", err: "no key path"},
		{in: "consul://127.0.0.1:8500/", err: "no key path"},
		{in: "consul://127.0.0.1:0/k", err: `bad port "0"`},
		{in: "consul://127.0.0.1:99999/k", err: `bad port "99999"`},
		{in: "consul://127.0.0.1:8500/k?dc=x", err: "query"},
		{in: "consul://u:p@127.0.0.1:8500/k", err: "user"},
		{in: "consul://127.0.0.1:8500/%zz", err: "invalid URL escape"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			addr, key, err := ParseURL(tt.in)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("ParseURL(%q) error = %v, want one containing %q", tt.in, err, tt.err)
				}
				return
			}
			if err != nil || addr != tt.addr || key != tt.key {
				t.Fatalf("ParseURL(%q) = %q, %q, %v; want %q, %q", tt.in, addr, key, err, tt.addr, tt.key)
			}
		})
	}
}

func TestNewValidation(t *testing.T) {
	t.Setenv("CONSUL_HTTP_ADDR", "")
	ok := []Watch{{Service: "web", Name: "web"}}
	tests := []struct {
		name string
		cfg  Config
		err  string
	}{
		{"no watches", Config{Address: "127.0.0.1:8500"}, "no watches"},
		{"empty service", Config{Watches: []Watch{{Name: "web"}}}, "watch 0: service is empty"},
		{"neither", Config{Watches: []Watch{{Service: "web"}}}, "neither a Consul service name nor a kv key"},
		{"both", Config{Watches: []Watch{ok[0], {Service: "x", Name: "x", KVKey: "k"}}}, `watch 1: service "x": both name`},
		{"tag on kv", Config{Watches: []Watch{{Service: "x", KVKey: "k", Tag: "t"}}}, `tag "t" only applies`},
		{"slash in name", Config{Watches: []Watch{{Service: "x", Name: "a/b"}}}, `"a/b" contains`},
		{"kv root", Config{Watches: []Watch{{Service: "x", KVKey: "/"}}}, "neither"},
		{"negative wait", Config{Wait: -time.Second, Watches: ok}, "negative"},
		{"long wait", Config{Wait: 11 * time.Minute, Watches: ok}, "10m0s"},
		{"bad scheme", Config{Address: "unix:///tmp/consul.sock", Watches: ok}, `scheme "unix"`},
		{"path", Config{Address: "http://127.0.0.1:8500/v1", Watches: ok}, "without path"},
		{"bad port", Config{Address: "127.0.0.1:http", Watches: ok}, "127.0.0.1:http"},
		{"no host", Config{Address: "http://:8500", Watches: ok}, "no host"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := New(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("New error = %v (provider %v), want one containing %q", err, p, tt.err)
			}
		})
	}
}

func TestNewDefaults(t *testing.T) {
	ok := []Watch{{Service: "web", Name: "web"}}
	t.Setenv("CONSUL_HTTP_ADDR", "")
	t.Setenv("CONSUL_HTTP_TOKEN", "from-env")
	tests := []struct {
		env, addr, name string
	}{
		{addr: "", name: "consul 127.0.0.1:8500"},
		{env: "10.1.2.3:8501", name: "consul 10.1.2.3:8501"},
		{env: "10.1.2.3:8501", addr: "https://consul.example:8443", name: "consul https://consul.example:8443"},
		{addr: "http://consul.example:8443", name: "consul consul.example:8443"},
		{addr: "consul.example", name: "consul consul.example:8500"},
		{addr: "http://[::1]:8500", name: "consul [::1]:8500"},
	}
	for _, tt := range tests {
		t.Setenv("CONSUL_HTTP_ADDR", tt.env)
		p, err := New(Config{Address: tt.addr, Watches: ok})
		if err != nil {
			t.Fatalf("New(address %q, env %q): %v", tt.addr, tt.env, err)
		}
		if name, err := Name(tt.addr, nil); p.Name() != tt.name || name != tt.name || err != nil {
			t.Errorf("New(address %q, env %q).Name() = %q, Name() = %q, %v; want %q", tt.addr, tt.env, p.Name(), name, err, tt.name)
		}
		if p.client.token != "from-env" || p.wait != defaultWait {
			t.Errorf("token %q wait %v, want CONSUL_HTTP_TOKEN and %v", p.client.token, p.wait, defaultWait)
		}
	}
	p, err := New(Config{Token: "explicit", Watches: ok})
	if err != nil || p.client.token != "explicit" {
		t.Fatalf("explicit token: %v, %+v", err, p)
	}
}

// TestNextIndex pins the rules of Consul's blocking-query guide.
func TestNextIndex(t *testing.T) {
	tests := []struct{ prev, got, want uint64 }{
		{0, 0, 1},   // never block on 0
		{0, 12, 12}, // first answer
		{12, 12, 12},
		{12, 40, 40},
		{40, 13, 0}, // went backwards: start over without blocking
		{40, 0, 0},
	}
	for _, tt := range tests {
		if got := nextIndex(tt.prev, tt.got); got != tt.want {
			t.Errorf("nextIndex(%d, %d) = %d, want %d", tt.prev, tt.got, got, tt.want)
		}
	}
}

func TestBackoff(t *testing.T) {
	p, err := New(Config{Watches: []Watch{{Service: "web", Name: "web"}}})
	if err != nil {
		t.Fatal(err)
	}
	for n, full := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 5: 16 * time.Second, 6: 30 * time.Second, 100: 30 * time.Second} {
		for range 50 {
			if d := p.backoff(n); d > full || d < full-full/5 {
				t.Fatalf("backoff(%d) = %v, want within [%v, %v]", n, d, full-full/5, full)
			}
		}
	}
	p.wait = 16 * time.Second
	for range 50 {
		if w := p.jitteredWait(); w > 16*time.Second || w < 15*time.Second {
			t.Fatalf("jitteredWait = %v, want within [15s, 16s]", w)
		}
	}
}

func TestKVEndpointsParsing(t *testing.T) {
	var logs testenv.LogBuffer
	p := &Provider{log: slog.New(slog.NewTextHandler(&logs, nil))}
	w := Watch{Service: "cache", KVKey: "app/cache"}
	got := p.kvEndpoints(w, []kvEntry{
		{Key: "app/cache", Value: []byte("10.0.0.9:1")}, // ignored: children exist
		{Key: "app/cache/"},                             // folder marker
		{Key: "app/cache/b", Value: []byte(" 10.0.0.2:11211\n")},
		{Key: "app/cache/a", Value: []byte("10.0.0.1:11211")},
		{Key: "app/cache/zone1/c", Value: []byte("[fd00::1]:11211")},
		{Key: "app/cache/bad", Value: []byte("10.0.0.3")},
		{Key: "app/cache/zero", Value: []byte("10.0.0.4:0")},
		{Key: "app/cache2", Value: []byte("10.9.9.9:1")}, // a sibling sharing the prefix
	})
	want := endpoints("10.0.0.1:11211", "10.0.0.2:11211", "[fd00::1]:11211")
	if !slicesEqual(got, want) {
		t.Errorf("children: got %v, want %v", got, want)
	}
	for _, key := range []string{"key=app/cache/bad", "key=app/cache/zero"} {
		if !strings.Contains(logs.String(), key) {
			t.Errorf("log does not name %s:\n%s", key, logs.String())
		}
	}

	got = p.kvEndpoints(w, []kvEntry{
		{Key: "app/cache", Value: []byte("10.0.0.1:1, 10.0.0.2:2,,nonsense, ")},
		{Key: "app/cache/"},
	})
	if want := endpoints("10.0.0.1:1", "10.0.0.2:2"); !slicesEqual(got, want) {
		t.Errorf("own value: got %v, want %v", got, want)
	}
	if !strings.Contains(logs.String(), `value \"nonsense\"`) {
		t.Errorf("log does not name the bad value:\n%s", logs.String())
	}
	if got := p.kvEndpoints(w, nil); len(got) != 0 {
		t.Errorf("no keys: got %v, want none", got)
	}
}

// TestHealthWatch runs the provider against a real Consul agent: passing
// instances only, critical and back, deregister and register while running,
// tag filter, node-address fallback, weights, malformed instances, and no
// snapshot when nothing attache uses changed.
func TestHealthWatch(t *testing.T) {
	t.Parallel()
	c := testenv.StartConsul(t)
	h := start(t, c.Addr(),
		Watch{Service: "web", Name: "web"},
		Watch{Service: "web-primary", Name: "web", Tag: "primary"},
		Watch{Service: "misc", Name: "misc"},
	)
	h.waitFor(t, map[string][]backend.Endpoint{"web": {}, "web-primary": {}, "misc": {}})

	c.Register(t, "web-a", "web", "127.0.0.1", 7001, testenv.ConsulTTL(), testenv.ConsulTags("primary"))
	c.Register(t, "web-b", "web", "127.0.0.2", 7002, testenv.ConsulTTL())
	h.waitFor(t, map[string][]backend.Endpoint{
		"web":         endpoints("127.0.0.1:7001", "127.0.0.2:7002"),
		"web-primary": endpoints("127.0.0.1:7001"),
		"misc":        {},
	})

	c.SetCheck(t, testenv.ConsulTTLCheckID("web-a"), false)
	h.waitFor(t, map[string][]backend.Endpoint{
		"web": endpoints("127.0.0.2:7002"), "web-primary": {}, "misc": {},
	})
	c.SetCheck(t, testenv.ConsulTTLCheckID("web-a"), true)
	h.waitFor(t, map[string][]backend.Endpoint{
		"web":         endpoints("127.0.0.1:7001", "127.0.0.2:7002"),
		"web-primary": endpoints("127.0.0.1:7001"),
		"misc":        {},
	})

	c.Deregister(t, "web-b")
	c.Register(t, "web-c", "web", "127.0.0.3", 7003, testenv.ConsulTags("primary", "canary"))
	h.waitFor(t, map[string][]backend.Endpoint{
		"web":         endpoints("127.0.0.1:7001", "127.0.0.3:7003"),
		"web-primary": endpoints("127.0.0.1:7001", "127.0.0.3:7003"),
		"misc":        {},
	})

	// No address: the node's (the agent binds 127.0.0.1). Port 0: skipped
	// and logged by instance ID.
	c.Register(t, "misc-1", "misc", "", 7100, testenv.ConsulWeight(5))
	c.Register(t, "misc-noport", "misc", "127.0.0.9", 0)
	want := map[string][]backend.Endpoint{
		"web":         endpoints("127.0.0.1:7001", "127.0.0.3:7003"),
		"web-primary": endpoints("127.0.0.1:7001", "127.0.0.3:7003"),
		"misc":        {{Addr: "127.0.0.1:7100", Weight: 5}},
	}
	h.waitFor(t, want)
	// The snapshot may come from the answer before misc-noport's, which
	// changes no endpoint; wait for the log line instead of assuming.
	h.waitLog(t, "instance=misc-noport")

	// A change in Consul that leaves every endpoint as it was (new tags)
	// must not produce a snapshot: once the watch has seen it, the next
	// snapshot is the one for the next real change.
	before := h.p.Status()[0].Index
	c.Register(t, "web-c", "web", "127.0.0.3", 7003, testenv.ConsulTags("primary", "canary", "v2"))
	h.waitStatus(t, "index of web past "+fmt.Sprint(before), func(st []WatchStatus) bool { return st[0].Index > before })
	c.Register(t, "web-d", "web", "127.0.0.4", 7004)
	want["web"] = endpoints("127.0.0.1:7001", "127.0.0.3:7003", "127.0.0.4:7004")
	if got := h.next(t); !sameServices(got.Services, want) {
		t.Fatalf("first snapshot after a tag-only change = %v, want the one with web-d %v", got.Services, want)
	}

	st := h.p.Status()
	if st[0].Service != "web" || st[0].Source != "service web" || st[0].Endpoints != 3 || st[0].Failures != 0 || st[0].LastSuccessAt.IsZero() {
		t.Errorf("status of web = %+v", st[0])
	}
	if st[1].Source != "service web tag primary" || st[1].Endpoints != 2 {
		t.Errorf("status of web-primary = %+v", st[1])
	}
}

// TestKVWatch covers both KV forms against a real agent: child keys, and a
// key's own comma-separated value when it has no children.
func TestKVWatch(t *testing.T) {
	t.Parallel()
	c := testenv.StartConsul(t)
	addr, key, err := ParseURL("consul://" + c.Addr() + "/attache/cache")
	if err != nil {
		t.Fatal(err)
	}
	h := start(t, addr, Watch{Service: "cache", KVKey: key}, Watch{Service: "list", KVKey: "attache/list/"})
	h.waitFor(t, map[string][]backend.Endpoint{"cache": {}, "list": {}})

	c.KVPut(t, "attache/list", "10.0.0.1:6379, 10.0.0.2:6379,")
	h.waitFor(t, map[string][]backend.Endpoint{"cache": {}, "list": endpoints("10.0.0.1:6379", "10.0.0.2:6379")})

	c.KVPut(t, "attache/cache", "10.0.7.7:11211")
	c.KVPut(t, "attache/cache/a", "10.0.1.1:11211")
	c.KVPut(t, "attache/cache/b", "10.0.1.2:11211")
	c.KVPut(t, "attache/cache/bad", "nonsense")
	c.KVPut(t, "attache/cache2/x", "10.9.9.9:1")
	want := map[string][]backend.Endpoint{
		"cache": endpoints("10.0.1.1:11211", "10.0.1.2:11211"),
		"list":  endpoints("10.0.0.1:6379", "10.0.0.2:6379"),
	}
	h.waitFor(t, want)
	h.waitLog(t, "key=attache/cache/bad")

	// Without children (a folder marker does not count) the key's own
	// value is the list.
	c.KVPut(t, "attache/cache/", "")
	for _, k := range []string{"attache/cache/a", "attache/cache/b", "attache/cache/bad"} {
		c.KVDelete(t, k)
	}
	want["cache"] = endpoints("10.0.7.7:11211")
	h.waitFor(t, want)

	c.KVPut(t, "attache/list", "10.0.0.3:6379")
	want["list"] = endpoints("10.0.0.3:6379")
	h.waitFor(t, want)
	c.KVDelete(t, "attache/list")
	want["list"] = []backend.Endpoint{}
	h.waitFor(t, want)
}

// TestAgentStopAndRestart stops Consul under a running provider: the last
// snapshot stays (nothing is sent), Run keeps going and Status shows the
// failures; a new agent on the same address is picked up again.
func TestAgentStopAndRestart(t *testing.T) {
	t.Parallel()
	c := testenv.StartConsul(t)
	h := start(t, c.Addr(), Watch{Service: "web", Name: "web"})
	c.Register(t, "web-a", "web", "127.0.0.1", 7001)
	c.Register(t, "web-b", "web", "127.0.0.2", 7002)
	h.waitFor(t, map[string][]backend.Endpoint{"web": endpoints("127.0.0.1:7001", "127.0.0.2:7002")})

	c.Stop(t)
	h.waitStatus(t, "three failures in a row", func(st []WatchStatus) bool { return st[0].Failures >= 3 })
	select {
	case s := <-h.out:
		t.Fatalf("snapshot sent while Consul was down: %v", s.Services)
	case err := <-h.done:
		t.Fatalf("Run returned while Consul was down: %v", err)
	default:
	}
	if st := h.p.Status()[0]; st.Endpoints != 2 || st.LastError == "" || st.LastErrorAt.IsZero() {
		t.Errorf("status while down = %+v, want the last answer's 2 endpoints and the error", st)
	}

	// A dev agent starts empty: register again, with one new instance.
	c.Restart(t)
	c.Register(t, "web-a", "web", "127.0.0.1", 7001)
	c.Register(t, "web-c", "web", "127.0.0.3", 7003)
	h.waitFor(t, map[string][]backend.Endpoint{"web": endpoints("127.0.0.1:7001", "127.0.0.3:7003")})
	if st := h.p.Status()[0]; st.Failures != 0 || st.LastError == "" || st.Endpoints != 2 {
		t.Errorf("status after recovery = %+v, want no failures, the old error kept, 2 endpoints", st)
	}
	h.waitLog(t, "consul query works again")
}

// harness runs a Provider for one test.
type harness struct {
	p    *Provider
	out  chan discovery.Snapshot
	done chan error
	logs *testenv.LogBuffer
}

// start runs a provider with a short wait and quick retries; the test's
// cleanup cancels it and checks that Run returned nil.
func start(t *testing.T, addr string, watches ...Watch) *harness {
	t.Helper()
	return startConfig(t, Config{Address: addr, Watches: watches})
}

// startConfig is start with the rest of a Config (TLS).
func startConfig(t *testing.T, cfg Config) *harness {
	t.Helper()
	h := &harness{out: make(chan discovery.Snapshot), done: make(chan error, 1), logs: &testenv.LogBuffer{}}
	cfg.Logger = slog.New(slog.NewTextHandler(io.MultiWriter(h.logs, t.Output()), &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg.Wait = 2 * time.Second
	p, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	p.backoffMin, p.backoffMax = 50*time.Millisecond, 500*time.Millisecond
	h.p = p
	ctx, cancel := context.WithCancel(context.Background())
	go func() { h.done <- p.Run(ctx, h.out) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-h.done:
			if err != nil {
				t.Errorf("Run returned %v, want nil after cancel", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("Run did not return within 30s of cancel")
		}
	})
	return h
}

// next returns the next snapshot, failing after a generous deadline.
func (h *harness) next(t *testing.T) discovery.Snapshot {
	t.Helper()
	select {
	case s := <-h.out:
		if s.Provider != h.p.Name() {
			t.Fatalf("snapshot from %q, want %q", s.Provider, h.p.Name())
		}
		return s
	case err := <-h.done:
		t.Fatalf("Run returned early: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatalf("no snapshot within 30s; status %+v", h.p.Status())
	}
	return discovery.Snapshot{}
}

// waitFor reads snapshots until one equals want.
func (h *harness) waitFor(t *testing.T, want map[string][]backend.Endpoint) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var last map[string][]backend.Endpoint
	for time.Now().Before(deadline) {
		select {
		case s := <-h.out:
			if sameServices(s.Services, want) {
				return
			}
			last = s.Services
		case err := <-h.done:
			t.Fatalf("Run returned early: %v", err)
		case <-time.After(time.Second):
		}
	}
	t.Fatalf("no snapshot equal to %v within 60s; last one %v; status %+v", want, last, h.p.Status())
}

// waitStatus polls Status until cond holds.
func (h *harness) waitStatus(t *testing.T, what string, cond func([]WatchStatus) bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond(h.p.Status()) {
		if time.Now().After(deadline) {
			t.Fatalf("status never showed %s within 60s: %+v", what, h.p.Status())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitLog polls the provider's log until it contains s.
func (h *harness) waitLog(t *testing.T, s string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(h.logs.String(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("log never contained %q within 60s:\n%s", s, h.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func endpoints(addrs ...string) []backend.Endpoint {
	out := make([]backend.Endpoint, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, backend.Endpoint{Addr: a, Weight: 1})
	}
	return out
}

func slicesEqual(a, b []backend.Endpoint) bool {
	return len(a) == len(b) && discovery.Equal(a, b)
}
