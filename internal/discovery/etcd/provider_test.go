package etcd

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/attache/attache/internal/backend"
	"github.com/attache/attache/internal/discovery"
	"github.com/attache/attache/internal/testenv"
)

// deadline bounds every wait for a condition. It is generous on purpose:
// it only decides how long a broken test hangs, never whether a slow
// machine passes.
const deadline = 60 * time.Second

// harness runs one Provider against a real etcd and reads its snapshots.
type harness struct {
	t    *testing.T
	p    *Provider
	out  chan discovery.Snapshot
	logs *testenv.LogBuffer
	last *discovery.Snapshot
	// stop cancels Run, waits for it and checks that it left nothing
	// behind; it runs at cleanup if the test did not call it.
	stop func()
}

func startProvider(t *testing.T, cfg Config) *harness {
	t.Helper()
	logs := &testenv.LogBuffer{}
	cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 2 * time.Second
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	// Short back-off keeps the outage tests quick; the doubling and the
	// cap are the same code.
	p.minBackoff, p.maxBackoff = 50*time.Millisecond, 500*time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	// Unbuffered: the provider blocks until the test reads, so every
	// snapshot it sends is one the test sees, in order.
	h := &harness{t: t, p: p, out: make(chan discovery.Snapshot), logs: logs}
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx, h.out) }()
	h.stop = sync.OnceFunc(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v after cancel, want nil", err)
			}
		case <-time.After(deadline):
			t.Errorf("Run did not return within %v of cancel", deadline)
		}
		if leaked := providerGoroutines(); leaked != "" {
			t.Errorf("goroutines of the provider still running after Run returned:\n%s", leaked)
		}
		if st := p.Status(); st.Connected {
			t.Errorf("Status().Connected = true after Run returned")
		}
		if t.Failed() {
			t.Logf("provider log:\n%s", logs)
		}
	})
	t.Cleanup(h.stop)
	return h
}

// providerGoroutines returns the stacks of goroutines running this
// package's code other than tests; Run must have ended them all.
func providerGoroutines() string {
	buf := make([]byte, 1<<22)
	buf = buf[:runtime.Stack(buf, true)]
	var leaked []string
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		for _, fn := range []string{"etcd.forward(", "etcd.watchConn(", "etcd.(*state).session(", "etcd.(*Provider).Run("} {
			if strings.Contains(g, "internal/discovery/"+fn) {
				leaked = append(leaked, g)
				break
			}
		}
	}
	return strings.Join(leaked, "\n\n")
}

func oneWatch(e *testenv.Etcd, service, key string) Config {
	return Config{Endpoints: []string{e.Endpoint()}, Watches: []Watch{{Service: service, Key: key}}}
}

// next returns the next snapshot. It also checks the "no resend" rule:
// a snapshot equal to the previous one is a failure.
func (h *harness) next() discovery.Snapshot {
	h.t.Helper()
	select {
	case s := <-h.out:
		if s.Provider != h.p.Name() {
			h.t.Fatalf("snapshot from %q, want %q", s.Provider, h.p.Name())
		}
		if h.last != nil && maps.EqualFunc(s.Services, h.last.Services, slices.Equal) {
			h.t.Fatalf("snapshot resent unchanged: %v", s.Services)
		}
		for name, eps := range s.Services {
			if eps == nil {
				h.t.Fatalf("service %q has a nil endpoint list, want an empty one", name)
			}
			if !slices.Equal(eps, discovery.Normalize(eps)) {
				h.t.Fatalf("service %q endpoints not normalized: %v", name, eps)
			}
		}
		h.last = &s
		return s
	case <-time.After(deadline):
		h.t.Fatalf("no snapshot within %v; status %+v", deadline, h.p.Status())
		return discovery.Snapshot{}
	}
}

// addrs lists a service's addresses in snapshot order.
func addrs(s discovery.Snapshot, service string) []string {
	var out []string
	for _, ep := range s.Services[service] {
		out = append(out, ep.Addr)
	}
	return out
}

// expect reads the next snapshot and checks one service's addresses.
func (h *harness) expect(service string, want ...string) discovery.Snapshot {
	h.t.Helper()
	s := h.next()
	if got := addrs(s, service); !slices.Equal(got, want) {
		h.t.Fatalf("service %q = %q, want %q (full snapshot %v)", service, got, want, s.Services)
	}
	return s
}

// waitFor polls cond until it holds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	stop := time.Now().Add(deadline)
	for !cond() {
		if time.Now().After(stop) {
			t.Fatalf("timed out after %v waiting for %s", deadline, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestInitialState(t *testing.T) {
	e := testenv.StartEtcd(t)
	e.Put(t, "/svc/redis/a", "10.0.0.2:6379")
	e.Put(t, "/svc/redis/b", "10.0.0.1:6379")
	e.Put(t, "/svc/redis/nested/c", "10.0.0.3:6379")
	// Neighbours that share the prefix bytes but are other keys.
	e.Put(t, "/svc/redis-cache/x", "10.9.9.9:1")
	e.Put(t, "/svc/redis0", "10.9.9.9:2")
	e.Put(t, "/svc/redis.old", "10.9.9.9:3")

	h := startProvider(t, Config{
		Endpoints: []string{e.Endpoint()},
		Watches: []Watch{
			{Service: "redis", Key: "/svc/redis"},
			{Service: "empty", Key: "/svc/nothing-here"},
		},
	})
	s := h.expect("redis", "10.0.0.1:6379", "10.0.0.2:6379", "10.0.0.3:6379")
	if eps, ok := s.Services["empty"]; !ok || len(eps) != 0 {
		t.Fatalf("service with no keys = %v (present %v), want present and empty", eps, ok)
	}
	if len(s.Services) != 2 {
		t.Fatalf("services = %v, want exactly redis and empty", s.Services)
	}
	if h.p.Name() != "etcd "+e.Endpoint() {
		t.Fatalf("Name() = %q", h.p.Name())
	}
	waitFor(t, "status to show the snapshot", func() bool {
		st := h.p.Status()
		return st.Connected && st.Revision > 0 && st.Endpoints["redis"] == 3 && st.Endpoints["empty"] == 0
	})
}

// TestServiceWithTwoKeys: a service fed by two keys (two discovery entries
// of one service that reach the same cluster) has the union of their
// endpoints, and follows either key.
func TestServiceWithTwoKeys(t *testing.T) {
	e := testenv.StartEtcd(t)
	e.Put(t, "/a/redis/1", "10.0.0.1:6379")
	e.Put(t, "/a/list", "10.0.0.2:6379,10.0.0.1:6379")
	h := startProvider(t, Config{
		Endpoints: []string{e.Endpoint()},
		Watches:   []Watch{{Service: "redis", Key: "/a/redis"}, {Service: "redis", Key: "/a/list"}},
	})
	h.expect("redis", "10.0.0.1:6379", "10.0.0.2:6379")
	// One key changes at a time, and each change is awaited: the two
	// watches are separate streams, so events of both keys can arrive in
	// either order.
	e.Put(t, "/a/list", "10.0.0.3:6379")
	h.expect("redis", "10.0.0.1:6379", "10.0.0.3:6379")
	e.Delete(t, "/a/redis/1")
	h.expect("redis", "10.0.0.3:6379")
	e.Delete(t, "/a/list")
	h.expect("redis")
}

func TestChangesWhileRunning(t *testing.T) {
	e := testenv.StartEtcd(t)
	e.Put(t, "/svc/web/1", "10.0.0.1:80")
	h := startProvider(t, oneWatch(e, "web", "/svc/web"))
	h.expect("web", "10.0.0.1:80")

	e.Put(t, "/svc/web/2", "10.0.0.2:80")
	h.expect("web", "10.0.0.1:80", "10.0.0.2:80")

	e.Put(t, "/svc/web/1", "10.0.0.3:80") // update in place
	h.expect("web", "10.0.0.2:80", "10.0.0.3:80")

	// Changes that leave the endpoints as they are send nothing: the same
	// value again, a neighbour key, a duplicate address. next() fails on
	// an unchanged snapshot, and the following real change must be the
	// very next snapshot.
	e.Put(t, "/svc/web/1", "10.0.0.3:80")
	e.Put(t, "/svc/web-admin/1", "10.0.0.9:80")
	e.Put(t, "/svc/web/dup", "10.0.0.2:80")
	e.Delete(t, "/svc/web/dup")

	e.Delete(t, "/svc/web/2")
	h.expect("web", "10.0.0.3:80")

	e.Delete(t, "/svc/web/1")
	h.expect("web") // present, empty
}

func TestJSONAndPlainValues(t *testing.T) {
	e := testenv.StartEtcd(t)
	e.Put(t, "/svc/db/plain", "[2001:db8::1]:5432")
	e.Put(t, "/svc/db/json", `{"addr":"10.0.0.1:5432","weight":3,"priority":1}`)
	e.Put(t, "/svc/db/json-min", ` {"addr":"db.internal:5432"} `)
	h := startProvider(t, oneWatch(e, "db", "/svc/db"))
	s := h.next()
	want := []backend.Endpoint{
		{Addr: "10.0.0.1:5432", Weight: 3, Priority: 1},
		{Addr: "[2001:db8::1]:5432"},
		{Addr: "db.internal:5432"},
	}
	if !slices.Equal(s.Services["db"], want) {
		t.Fatalf("db = %+v, want %+v", s.Services["db"], want)
	}
	// A weight change alone is a change.
	e.Put(t, "/svc/db/json", `{"addr":"10.0.0.1:5432","weight":5,"priority":1}`)
	s = h.next()
	if got := s.Services["db"][0]; got.Weight != 5 {
		t.Fatalf("after the weight change db[0] = %+v, want weight 5", got)
	}
}

func TestSingleKeyList(t *testing.T) {
	e := testenv.StartEtcd(t)
	e.Put(t, "/svc/cache", "10.0.0.2:11211, 10.0.0.1:11211,")
	h := startProvider(t, oneWatch(e, "cache", "/svc/cache"))
	h.expect("cache", "10.0.0.1:11211", "10.0.0.2:11211")

	e.Put(t, "/svc/cache", "10.0.0.3:11211")
	h.expect("cache", "10.0.0.3:11211")

	// Children take over from the key's own value ...
	e.Put(t, "/svc/cache/a", "10.0.0.7:11211")
	h.expect("cache", "10.0.0.7:11211")
	// ... and when the last child goes, the list is used again.
	e.Delete(t, "/svc/cache/a")
	h.expect("cache", "10.0.0.3:11211")

	// A bad entry in the list is skipped and logged; the rest stays.
	e.Put(t, "/svc/cache", "10.0.0.3:11211,not-an-address,10.0.0.4:11211")
	h.expect("cache", "10.0.0.3:11211", "10.0.0.4:11211")
	waitFor(t, "the bad list entry to be logged", func() bool {
		l := h.logs.String()
		return strings.Contains(l, "key=/svc/cache ") && strings.Contains(l, "entry 2")
	})

	e.Delete(t, "/svc/cache")
	h.expect("cache")
}

func TestMalformedValueSkipped(t *testing.T) {
	e := testenv.StartEtcd(t)
	e.Put(t, "/svc/api/good", "10.0.0.1:443")
	e.Put(t, "/svc/api/no-port", "10.0.0.2")
	e.Put(t, "/svc/api/typo", `{"addr":"10.0.0.3:443","wieght":2}`)
	h := startProvider(t, oneWatch(e, "api", "/svc/api"))
	h.expect("api", "10.0.0.1:443")
	for _, key := range []string{"/svc/api/no-port", "/svc/api/typo"} {
		waitFor(t, key+" to be logged", func() bool {
			return strings.Contains(h.logs.String(), "key="+key+" ")
		})
	}
	if !strings.Contains(h.logs.String(), `unknown field \"wieght\"`) {
		t.Errorf("log does not say what was wrong with the JSON value:\n%s", h.logs)
	}

	// A malformed value arriving through the watch is skipped too.
	e.Put(t, "/svc/api/zero", "10.0.0.4:0")
	e.Put(t, "/svc/api/second", "10.0.0.5:443")
	h.expect("api", "10.0.0.1:443", "10.0.0.5:443")
	waitFor(t, "/svc/api/zero to be logged", func() bool {
		return strings.Contains(h.logs.String(), "key=/svc/api/zero ")
	})

	// Fixing the value brings the endpoint in.
	e.Put(t, "/svc/api/no-port", "10.0.0.2:443")
	h.expect("api", "10.0.0.1:443", "10.0.0.2:443", "10.0.0.5:443")
}

// TestRapidChanges makes 100 changes as fast as etcd takes them and then
// reads what the provider sent: every snapshot must be one of the states the
// changes passed through, in increasing order (nothing replayed, nothing
// reordered), ending with the final state.
func TestRapidChanges(t *testing.T) {
	e := testenv.StartEtcd(t)
	h := startProvider(t, oneWatch(e, "s", "/svc/s"))
	h.expect("s")

	addr := func(i int) string { return fmt.Sprintf("10.0.%d.%d:80", i/250, i%250+1) }
	key := func(i int) string { return fmt.Sprintf("/svc/s/%03d", i) }
	// states[j] is the set after j changes: 60 puts, then 40 deletes.
	var states []string
	cur := map[string]bool{}
	render := func() string {
		var l []string
		for a := range cur {
			l = append(l, a)
		}
		slices.Sort(l)
		return strings.Join(l, " ")
	}
	states = append(states, render())
	for i := range 60 {
		e.Put(t, key(i), addr(i))
		cur[addr(i)] = true
		states = append(states, render())
	}
	for i := range 40 {
		e.Delete(t, key(i))
		delete(cur, addr(i))
		states = append(states, render())
	}
	index := map[string]int{}
	for j, s := range states {
		if _, dup := index[s]; dup {
			t.Fatalf("test bug: state %d repeats", j)
		}
		index[s] = j
	}

	at := 0
	for at < len(states)-1 {
		got := strings.Join(addrs(h.next(), "s"), " ")
		j, ok := index[got]
		if !ok {
			t.Fatalf("snapshot %q is none of the states the changes went through", got)
		}
		if j <= at {
			t.Fatalf("snapshot is state %d after state %d: replayed or reordered", j, at)
		}
		at = j
	}
	waitFor(t, "status revision to cover the 100 changes", func() bool {
		st := h.p.Status()
		return st.Endpoints["s"] == 20 && st.Revision >= 101
	})
}

// TestEtcdRestart stops etcd under a running provider. While it is down the
// provider must keep its last snapshot and send nothing; once it is back, a
// change made right after the restart, before the provider has reconnected
// and re-read, must still be seen, and so must later changes.
func TestEtcdRestart(t *testing.T) {
	e := testenv.StartEtcd(t)
	e.Put(t, "/svc/q/1", "10.0.0.1:5672")
	h := startProvider(t, oneWatch(e, "q", "/svc/q"))
	h.expect("q", "10.0.0.1:5672")
	waitFor(t, "connected", func() bool { return h.p.Status().Connected })

	e.Stop()
	waitFor(t, "the outage to be noticed", func() bool { return !h.p.Status().Connected })
	// Let at least one re-read fail against the stopped server, so the
	// provider has tried during the outage.
	waitFor(t, "a failed re-read", func() bool { return strings.Contains(h.p.Status().LastError, "read ") })

	e.Restart(t)
	e.Put(t, "/svc/q/2", "10.0.0.2:5672")
	// The next snapshot must already hold the new key: had anything been
	// sent during the outage (an empty list, say), it would come first.
	h.expect("q", "10.0.0.1:5672", "10.0.0.2:5672")
	waitFor(t, "connected again", func() bool { return h.p.Status().Connected })

	e.Delete(t, "/svc/q/1")
	h.expect("q", "10.0.0.2:5672")
	if !strings.Contains(h.logs.String(), "keeping the last endpoints") {
		t.Errorf("outage was not logged:\n%s", h.logs)
	}
}

// TestEtcdDownAtStart starts the provider while etcd is down: nothing is
// sent until etcd comes up, then the full state.
func TestEtcdDownAtStart(t *testing.T) {
	e := testenv.StartEtcd(t)
	e.Put(t, "/svc/x/1", "10.0.0.1:1")
	e.Stop()
	h := startProvider(t, oneWatch(e, "x", "/svc/x"))
	waitFor(t, "a failed read", func() bool { return h.p.Status().LastError != "" })
	e.Restart(t)
	h.expect("x", "10.0.0.1:1")
}

// TestAuth reads from an etcd with authentication on.
func TestAuth(t *testing.T) {
	e := testenv.StartEtcd(t)
	e.Put(t, "/svc/auth/1", "10.0.0.1:1")
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{e.Endpoint()}, DialTimeout: 10 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	if _, err := cli.UserAdd(ctx, "root", "s3cret"); err != nil {
		t.Fatalf("add user: %v", err)
	}
	if _, err := cli.UserGrantRole(ctx, "root", "root"); err != nil {
		t.Fatalf("grant role: %v", err)
	}
	if _, err := cli.AuthEnable(ctx); err != nil {
		t.Fatalf("enable auth: %v", err)
	}

	cfg := oneWatch(e, "auth", "/svc/auth")
	cfg.Username, cfg.Password = "root", "s3cret"
	h := startProvider(t, cfg)
	h.expect("auth", "10.0.0.1:1")
	h.stop() // the goroutine check in stop is process-wide: one provider at a time

	// Wrong password: no snapshot, and the error says why.
	bad := oneWatch(e, "auth", "/svc/auth")
	bad.Username, bad.Password = "root", "wrong"
	hb := startProvider(t, bad)
	waitFor(t, "authentication failure in status", func() bool {
		return strings.Contains(hb.p.Status().LastError, "authentication failed")
	})
	select {
	case s := <-hb.out:
		t.Fatalf("snapshot %v with a wrong password", s.Services)
	default:
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	ok := []Watch{{Service: "s", Key: "/k"}}
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no endpoints", Config{Watches: ok}, "no endpoints"},
		{"empty endpoint", Config{Endpoints: []string{""}, Watches: ok}, `endpoint ""`},
		{"endpoint no port", Config{Endpoints: []string{"127.0.0.1"}, Watches: ok}, "want host:port"},
		{"endpoint bad port", Config{Endpoints: []string{"127.0.0.1:0"}, Watches: ok}, "out of range"},
		{"endpoint bad scheme", Config{Endpoints: []string{"unix://x:1"}, Watches: ok}, `scheme "unix"`},
		{"endpoint with path", Config{Endpoints: []string{"http://h:1/v3"}, Watches: ok}, "no user, path or query"},
		{"second endpoint bad", Config{Endpoints: []string{"h:1", "h"}, Watches: ok}, `endpoint "h"`},
		{"user without password", Config{Endpoints: []string{"h:1"}, Username: "u", Watches: ok}, "username and password must be given together"},
		{"password without user", Config{Endpoints: []string{"h:1"}, Password: "p", Watches: ok}, "username and password must be given together"},
		{"negative timeout", Config{Endpoints: []string{"h:1"}, DialTimeout: -time.Second, Watches: ok}, "dial timeout -1s is negative"},
		{"no watches", Config{Endpoints: []string{"h:1"}}, "no watches"},
		{"empty service", Config{Endpoints: []string{"h:1"}, Watches: []Watch{{Key: "/k"}}}, "watch 1: key \"/k\": empty service name"},
		{"empty key", Config{Endpoints: []string{"h:1"}, Watches: []Watch{{Service: "s"}}}, `watch 1: service "s": empty key`},
		{"trailing slash", Config{Endpoints: []string{"h:1"}, Watches: []Watch{{Service: "s", Key: "/k/"}}}, `ends with "/"`},
		{"duplicate watch", Config{Endpoints: []string{"h:1"}, Watches: []Watch{{Service: "s", Key: "/a"}, {Service: "t", Key: "/a"}, {Service: "s", Key: "/a"}}}, `watch 3: service "s" already watches key "/a" (watch 1)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := New(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New = %v, %v; want error containing %q", p, err, tt.want)
			}
		})
	}

	for _, ep := range []string{"127.0.0.1:2379", "http://127.0.0.1:2379", "https://etcd.internal:2379/", "[::1]:2379"} {
		p, err := New(Config{Endpoints: []string{ep}, Watches: ok})
		if err != nil {
			t.Errorf("New with endpoint %q: %v", ep, err)
			continue
		}
		if p.Name() != "etcd "+ep {
			t.Errorf("Name() = %q, want %q", p.Name(), "etcd "+ep)
		}
		if p.dialTimeout != defaultDialTimeout {
			t.Errorf("default dial timeout = %v", p.dialTimeout)
		}
	}
	// The name carries every endpoint: a cluster reached through a, b and
	// one reached through a alone are two providers, and two providers
	// must never share a name (the merger keeps snapshots by name).
	p, err := New(Config{Endpoints: []string{"a:1", "b:2"}, Watches: ok})
	if err != nil {
		t.Fatal(err)
	}
	if p.Name() != "etcd a:1,b:2" || p.Name() != Name([]string{"a:1", "b:2"}) || p.Name() == Name([]string{"a:1"}) {
		t.Errorf("Name() = %q, want %q, unlike %q", p.Name(), "etcd a:1,b:2", Name([]string{"a:1"}))
	}
}

func TestParseURL(t *testing.T) {
	tests := []struct {
		in       string
		endpoint string
		key      string
		wantErr  string
	}{
		{in: "etcd://127.0.0.1:2379/attache/services/redis", endpoint: "127.0.0.1:2379", key: "/attache/services/redis"},
		{in: "etcd://etcd.internal:4001/redis/", endpoint: "etcd.internal:4001", key: "/redis"},
		{in: "etcd://etcd/redis", endpoint: "etcd:2379", key: "/redis"},
		{in: "etcd://[::1]:2379/a/b", endpoint: "[::1]:2379", key: "/a/b"},
		{in: "etcd://[::1]/a", endpoint: "[::1]:2379", key: "/a"},
		{in: "etcd://h:1/with%20space", endpoint: "h:1", key: "/with space"},

		{in: "http://h:2379/a", wantErr: `scheme "http"`},
		{in: "etcd:h:2379/a", wantErr: "no host"},
		{in: "etcd:///a", wantErr: "no host"},
		{in: "etcd://h:2379", wantErr: "no key path"},
		{in: "etcd://h:2379/", wantErr: "no key path"},
		{in: "etcd://h:/a", wantErr: "empty port"},
		{in: "etcd://h:0/a", wantErr: "out of range"},
		{in: "etcd://h:99999/a", wantErr: "out of range"},
		{in: "etcd://u:p@h:1/a", wantErr: "credentials in the URL"},
		{in: "etcd://h:1/a?x=1", wantErr: "query or fragment"},
		{in: "etcd://h:1/a#f", wantErr: "query or fragment"},
		{in: "etcd://h%zz:1/a", wantErr: "etcd URL"},
		{in: "", wantErr: "scheme"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			ep, key, err := ParseURL(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseURL(%q) = %q, %q, %v; want error containing %q", tt.in, ep, key, err, tt.wantErr)
				}
				if ep != "" || key != "" {
					t.Fatalf("ParseURL(%q) returned %q, %q with an error", tt.in, ep, key)
				}
				return
			}
			if err != nil || ep != tt.endpoint || key != tt.key {
				t.Fatalf("ParseURL(%q) = %q, %q, %v; want %q, %q", tt.in, ep, key, err, tt.endpoint, tt.key)
			}
			// What ParseURL returns is a valid provider config.
			if _, err := New(Config{Endpoints: []string{ep}, Watches: []Watch{{Service: "s", Key: key}}}); err != nil {
				t.Fatalf("New rejects ParseURL(%q)'s result: %v", tt.in, err)
			}
		})
	}
}
