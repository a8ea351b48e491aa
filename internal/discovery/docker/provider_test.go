package docker

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/attache/attache/internal/backend"
	"github.com/attache/attache/internal/discovery"
	"github.com/attache/attache/internal/testenv"
)

// waitTimeout is how long a test waits for a condition on the real engine.
// It is generous on purpose: it bounds a failure, it is not a performance
// claim.
const waitTimeout = 45 * time.Second

// --- tests against the real engine ---

// Two labelled containers on a user-defined network are reported with their
// IP on it and their label port, are reachable there, and leave and rejoin
// the snapshot as they stop and start: driven by events, not polling.
func TestContainersFollowEvents(t *testing.T) {
	t.Parallel()
	testenv.DockerAvailable(t)
	nw := testenv.NewDockerNetwork(t)
	svc, other := uniqueService("web"), uniqueService("other")
	c1 := testenv.RunContainer(t, testenv.ContainerSpec{
		Labels: map[string]string{DefaultLabel: svc, DefaultPortLabel: "7000"}, Network: nw.Name, Greet: true,
	})
	c2 := testenv.RunContainer(t, testenv.ContainerSpec{
		Labels:  map[string]string{DefaultLabel: svc, DefaultPortLabel: "7000", DefaultWeightLabel: "3"},
		Network: nw.Name, Greet: true,
	})
	// Labelled for a service this provider does not watch: ignored.
	testenv.RunContainer(t, testenv.ContainerSpec{
		Labels: map[string]string{DefaultLabel: svc + "-elsewhere", DefaultPortLabel: "7000"}, Network: nw.Name,
	})

	p, snaps, _ := startProvider(t, Config{Services: []string{svc, other}})
	ep1 := backend.Endpoint{Addr: net.JoinHostPort(c1.IP(t, nw.Name), "7000")}
	ep2 := backend.Endpoint{Addr: net.JoinHostPort(c2.IP(t, nw.Name), "7000"), Weight: 3}
	got := waitServices(t, snaps, "both containers", map[string][]backend.Endpoint{svc: {ep1, ep2}, other: {}})
	if eps, ok := got[other]; !ok || eps == nil {
		t.Errorf("service %s: want present with an empty list, got %#v (present %v)", other, eps, ok)
	}
	assertGreets(t, ep1.Addr, c1)
	assertGreets(t, ep2.Addr, c2)
	st := p.Status()
	if !st.Connected || st.Containers[svc] != 2 || st.Containers[other] != 0 || st.Skipped[svc] != 0 {
		t.Errorf("status = %+v, want connected with 2 containers for %s, 0 for %s, none skipped", st, svc, other)
	}

	c1.Stop(t)
	waitServices(t, snaps, "c1 stopped", map[string][]backend.Endpoint{svc: {ep2}, other: {}})

	c1.Start(t)
	ep1 = backend.Endpoint{Addr: net.JoinHostPort(c1.IP(t, nw.Name), "7000")}
	waitServices(t, snaps, "c1 started again", map[string][]backend.Endpoint{svc: {ep1, ep2}, other: {}})
	assertGreets(t, ep1.Addr, c1)

	c2.Kill(t)
	waitServices(t, snaps, "c2 killed", map[string][]backend.Endpoint{svc: {ep1}, other: {}})
	c1.Remove(t)
	waitServices(t, snaps, "c1 removed", map[string][]backend.Endpoint{svc: {}, other: {}})
}

// Containers whose port cannot be worked out are skipped and named in the
// log; a container with a single exposed port and no label uses that port.
func TestSkipsUnusableContainers(t *testing.T) {
	t.Parallel()
	testenv.DockerAvailable(t)
	nw := testenv.NewDockerNetwork(t)
	svc := uniqueService("api")
	run := func(labels map[string]string, expose, listen []int) testenv.DockerContainer {
		labels[DefaultLabel] = svc
		return testenv.RunContainer(t, testenv.ContainerSpec{
			Labels: labels, Network: nw.Name, Expose: expose, Listen: listen, Greet: true,
		})
	}
	notNumber := run(map[string]string{DefaultPortLabel: "http"}, []int{7000}, nil)
	outOfRange := run(map[string]string{DefaultPortLabel: "70000"}, []int{7000}, nil)
	several := run(map[string]string{}, []int{7000, 7001}, []int{7000, 7001})
	badWeight := run(map[string]string{DefaultPortLabel: "7000", DefaultWeightLabel: "heavy"}, nil, nil)
	single := run(map[string]string{}, []int{7001}, []int{7001})

	p, snaps, logs := startProvider(t, Config{Services: []string{svc}})
	want := backend.Endpoint{Addr: net.JoinHostPort(single.IP(t, nw.Name), "7001")}
	waitServices(t, snaps, "only the single-port container", map[string][]backend.Endpoint{svc: {want}})
	assertGreets(t, want.Addr, single)

	// The first snapshot is sent after every listed container was inspected,
	// and skips are logged as they are found, so the log is complete here.
	for _, tc := range []struct {
		c      testenv.DockerContainer
		reason string
	}{
		{notNumber, `label attache.port="http": want a port number from 1 to 65535`},
		{outOfRange, `label attache.port="70000": want a port number from 1 to 65535`},
		{several, `exposes TCP ports [7000 7001] and has no attache.port label saying which to use`},
		{badWeight, `label attache.weight="heavy": want an integer from 1 to 10000`},
	} {
		if got := skipReason(logs, tc.c.Name); got != tc.reason {
			t.Errorf("skip reason logged for %s = %q, want %q\nfull log:\n%s", tc.c.Name, got, tc.reason, logs)
		}
	}
	if got := skipReason(logs, single.Name); got != "" {
		t.Errorf("container %s was logged as skipped: %q", single.Name, got)
	}
	if st := p.Status(); st.Containers[svc] != 5 || st.Skipped[svc] != 4 {
		t.Errorf("status = %+v, want 5 containers and 4 skipped for %s", st, svc)
	}
}

// The configured network wins when the container is on it; otherwise the
// networks sorted by name decide, and network connect/disconnect events move
// the address.
func TestNetworkPreference(t *testing.T) {
	t.Parallel()
	testenv.DockerAvailable(t)
	a, b := testenv.NewDockerNetwork(t), testenv.NewDockerNetwork(t)
	if b.Name < a.Name {
		a, b = b, a // a sorts first
	}
	svc := uniqueService("db")
	c := testenv.RunContainer(t, testenv.ContainerSpec{
		Labels: map[string]string{DefaultLabel: svc, DefaultPortLabel: "7000"}, Network: a.Name, Greet: true,
	})
	c.Connect(t, b.Name)
	addrOn := func(nw testenv.DockerNetwork) map[string][]backend.Endpoint {
		return map[string][]backend.Endpoint{svc: {{Addr: net.JoinHostPort(c.IP(t, nw.Name), "7000")}}}
	}

	_, byName, _ := startProvider(t, Config{Services: []string{svc}, Network: b.Name})
	_, byID, _ := startProvider(t, Config{Services: []string{svc}, Network: b.ID})
	_, sorted, _ := startProvider(t, Config{Services: []string{svc}})
	_, absent, _ := startProvider(t, Config{Services: []string{svc}, Network: "no-such-network"})

	onB := waitServices(t, byName, "preferred network by name", addrOn(b))
	waitServices(t, byID, "preferred network by ID", addrOn(b))
	waitServices(t, sorted, "first network by name", addrOn(a))
	waitServices(t, absent, "preferred network absent: first by name", addrOn(a))
	assertGreets(t, onB[svc][0].Addr, c)

	c.Disconnect(t, b.Name)
	onA := waitServices(t, byName, "preferred network left: fall back", addrOn(a))
	assertGreets(t, onA[svc][0].Addr, c)

	c.Connect(t, b.Name)
	waitServices(t, byName, "preferred network joined again", addrOn(b))
}

// The provider survives losing the engine: it starts while the engine's
// socket is unreachable, notices when the stream is cut, keeps its last
// snapshot while the engine is away (the next snapshot it sends is the
// resynchronised one, never an empty one), reports after reconnecting a
// change that happened while it was away (an event it never saw), and does
// not resend a snapshot that a reconnect left unchanged.
func TestReconnectsAndResyncs(t *testing.T) {
	t.Parallel()
	testenv.DockerAvailable(t)
	svc, nw, c1, c2 := labelledPair(t, "cache")
	ep1 := backend.Endpoint{Addr: net.JoinHostPort(c1.IP(t, nw.Name), "7000")}
	ep2 := backend.Endpoint{Addr: net.JoinHostPort(c2.IP(t, nw.Name), "7000")}

	sock := filepath.Join(t.TempDir(), "docker.sock")
	proxy := newSockProxy(t, "unix", sock, testenv.DockerSocket(t))

	p, snaps, logs := startProvider(t, Config{Host: "unix://" + sock, Services: []string{svc}})
	waitFor(t, "an error while the socket is missing", func() bool {
		st := p.Status()
		return !st.Connected && strings.Contains(st.LastError, sock)
	})

	proxy.open()
	nextServices(t, snaps, "first sync through the proxy", map[string][]backend.Endpoint{svc: {ep1, ep2}})
	waitFor(t, "connected", func() bool { return p.Status().Connected })

	proxy.cut()
	waitFor(t, "the provider to notice the cut", func() bool { return !p.Status().Connected })
	c1.Stop(t) // the die event is lost with the stream
	proxy.open()
	nextServices(t, snaps, "resync after reconnecting", map[string][]backend.Endpoint{svc: {ep2}})

	// Nothing changes across this reconnect. Connected turns true only
	// after the resynchronised snapshot was sent or found unchanged, and
	// nobody reads snaps: a resend would block the provider forever.
	proxy.cut()
	waitFor(t, "the provider to notice the second cut", func() bool { return !p.Status().Connected })
	proxy.open()
	waitFor(t, "reconnected without resending", func() bool { return p.Status().Connected })

	c1.Start(t) // the new stream delivers events again
	ep1 = backend.Endpoint{Addr: net.JoinHostPort(c1.IP(t, nw.Name), "7000")}
	nextServices(t, snaps, "event on the new stream", map[string][]backend.Endpoint{svc: {ep1, ep2}})
	if !strings.Contains(logs.String(), "reconnecting") {
		t.Errorf("log does not mention reconnecting:\n%s", logs)
	}
}

// A tcp:// host works: the engine's socket is served on a loopback TCP port.
func TestTCPHost(t *testing.T) {
	t.Parallel()
	testenv.DockerAvailable(t)
	nw := testenv.NewDockerNetwork(t)
	svc := uniqueService("tcp")
	c := testenv.RunContainer(t, testenv.ContainerSpec{
		Labels: map[string]string{DefaultLabel: svc}, Network: nw.Name, Expose: []int{7000},
	})
	proxy := newSockProxy(t, "tcp", "127.0.0.1:0", testenv.DockerSocket(t))
	addr := proxy.open()
	p, snaps, _ := startProvider(t, Config{Host: "tcp://" + addr, Services: []string{svc}})
	nextServices(t, snaps, "sync over TCP", map[string][]backend.Endpoint{
		svc: {{Addr: net.JoinHostPort(c.IP(t, nw.Name), "7000")}},
	})
	c.Stop(t)
	nextServices(t, snaps, "event over TCP", map[string][]backend.Endpoint{svc: {}})
	if st := p.Status(); st.Containers[svc] != 0 {
		t.Errorf("status = %+v, want no containers for %s", st, svc)
	}
}

// --- tests without the engine ---

func TestNewValidates(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no services", Config{}, "no services to watch"},
		{"empty service", Config{Services: []string{"a", " "}}, "empty service name"},
		{"same labels", Config{Services: []string{"a"}, Label: "x", PortLabel: "x"}, "labels must differ"},
		{"ssh host", Config{Services: []string{"a"}, Host: "ssh://me@host"}, `scheme "ssh" is not supported`},
		{"unix without path", Config{Services: []string{"a"}, Host: "unix://"}, "want unix:///path"},
		{"tcp without host", Config{Services: []string{"a"}, Host: "tcp://"}, "want tcp://host:port"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New(%+v) error = %v, want it to contain %q", tt.cfg, err, tt.want)
			}
		})
	}
}

func TestNewDefaults(t *testing.T) {
	t.Setenv("DOCKER_HOST", "tcp://127.0.0.1")
	p, err := New(Config{Services: []string{"b", "a", "b"}})
	if err != nil {
		t.Fatal(err)
	}
	if p.cfg.Host != "tcp://127.0.0.1" || p.eng.base != "http://127.0.0.1:2375" {
		t.Errorf("host from DOCKER_HOST: cfg %q, base %q", p.cfg.Host, p.eng.base)
	}
	if p.cfg.Label != DefaultLabel || p.cfg.PortLabel != DefaultPortLabel || p.cfg.WeightLabel != DefaultWeightLabel {
		t.Errorf("labels = %q %q %q, want the defaults", p.cfg.Label, p.cfg.PortLabel, p.cfg.WeightLabel)
	}
	if !reflect.DeepEqual(p.cfg.Services, []string{"a", "b"}) {
		t.Errorf("services = %q, want sorted and deduplicated", p.cfg.Services)
	}
	if p.Name() != "docker" {
		t.Errorf("Name() = %q", p.Name())
	}
	t.Setenv("DOCKER_HOST", "")
	p, err = New(Config{Services: []string{"a"}})
	if err != nil {
		t.Fatal(err)
	}
	if p.cfg.Host != DefaultHost {
		t.Errorf("host = %q, want %q", p.cfg.Host, DefaultHost)
	}
}

func TestEndpoint(t *testing.T) {
	nets := func(kv ...string) map[string]*endpointSettings {
		m := map[string]*endpointSettings{}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = &endpointSettings{NetworkID: "id-" + kv[i], IPAddress: kv[i+1]}
		}
		return m
	}
	container := func(labels map[string]string, exposed []string, networks map[string]*endpointSettings) containerJSON {
		var c containerJSON
		c.Config.Labels = labels
		c.Config.ExposedPorts = map[string]struct{}{}
		for _, e := range exposed {
			c.Config.ExposedPorts[e] = struct{}{}
		}
		c.NetworkSettings.Networks = networks
		return c
	}
	port := func(p string) map[string]string { return map[string]string{DefaultPortLabel: p} }
	tests := []struct {
		name    string
		network string
		c       containerJSON
		want    backend.Endpoint
		wantErr string
	}{
		{"port label", "", container(port("8080"), []string{"80/tcp"}, nets("n", "10.0.0.2")),
			backend.Endpoint{Addr: "10.0.0.2:8080"}, ""},
		{"single exposed", "", container(nil, []string{"6379/tcp", "53/udp"}, nets("n", "10.0.0.2")),
			backend.Endpoint{Addr: "10.0.0.2:6379"}, ""},
		{"exposed without protocol", "", container(nil, []string{"6379"}, nets("n", "10.0.0.2")),
			backend.Endpoint{Addr: "10.0.0.2:6379"}, ""},
		{"several exposed", "", container(nil, []string{"81/tcp", "80/tcp"}, nets("n", "10.0.0.2")),
			backend.Endpoint{}, "exposes TCP ports [80 81] and has no attache.port label"},
		{"nothing exposed", "", container(nil, []string{"53/udp"}, nets("n", "10.0.0.2")),
			backend.Endpoint{}, "no port: set label attache.port or expose one TCP port"},
		{"port zero", "", container(port("0"), nil, nets("n", "10.0.0.2")),
			backend.Endpoint{}, `label attache.port="0": want a port number from 1 to 65535`},
		{"port text", "", container(port("web"), nil, nets("n", "10.0.0.2")),
			backend.Endpoint{}, `label attache.port="web"`},
		{"weight", "", container(map[string]string{DefaultPortLabel: "1", DefaultWeightLabel: "5"}, nil, nets("n", "10.0.0.2")),
			backend.Endpoint{Addr: "10.0.0.2:1", Weight: 5}, ""},
		{"weight zero", "", container(map[string]string{DefaultPortLabel: "1", DefaultWeightLabel: "0"}, nil, nets("n", "10.0.0.2")),
			backend.Endpoint{}, `label attache.weight="0": want an integer from 1 to 10000`},
		{"first network by name", "", container(port("1"), nil, nets("zeta", "10.0.0.9", "alpha", "10.0.0.1")),
			backend.Endpoint{Addr: "10.0.0.1:1"}, ""},
		{"skip network without address", "", container(port("1"), nil, nets("alpha", "", "beta", "10.0.0.2")),
			backend.Endpoint{Addr: "10.0.0.2:1"}, ""},
		{"preferred by name", "zeta", container(port("1"), nil, nets("zeta", "10.0.0.9", "alpha", "10.0.0.1")),
			backend.Endpoint{Addr: "10.0.0.9:1"}, ""},
		{"preferred by ID", "id-zeta", container(port("1"), nil, nets("zeta", "10.0.0.9", "alpha", "10.0.0.1")),
			backend.Endpoint{Addr: "10.0.0.9:1"}, ""},
		{"preferred absent", "other", container(port("1"), nil, nets("zeta", "10.0.0.9", "alpha", "10.0.0.1")),
			backend.Endpoint{Addr: "10.0.0.1:1"}, ""},
		{"IPv6 only", "", container(port("1"), nil, map[string]*endpointSettings{"v6": {GlobalIPv6Address: "fd00::2"}}),
			backend.Endpoint{Addr: "[fd00::2]:1"}, ""},
		{"no address", "", container(port("1"), nil, nets("host", "")),
			backend.Endpoint{}, "no IP address on any network"},
	}
	legacy := container(port("1"), nil, nil)
	legacy.NetworkSettings.IPAddress = "172.17.0.5"
	tests = append(tests, struct {
		name    string
		network string
		c       containerJSON
		want    backend.Endpoint
		wantErr string
	}{"legacy top-level address", "", legacy, backend.Endpoint{Addr: "172.17.0.5:1"}, ""})

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := New(Config{Services: []string{"s"}, Network: tt.network, Host: "tcp://127.0.0.1:1"})
			if err != nil {
				t.Fatal(err)
			}
			got, err := p.endpoint(tt.c)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("endpoint = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

// A snapshot equal to the last one sent is not sent again.
func TestPublishSkipsUnchanged(t *testing.T) {
	p, err := New(Config{Services: []string{"s", "t"}, Host: "tcp://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan discovery.Snapshot, 4)
	w := &watch{p: p, out: out, tracked: map[string]tracked{}}
	ctx := t.Context()
	w.set("b", tracked{name: "b", service: "s", ep: backend.Endpoint{Addr: "10.0.0.2:1"}})
	w.set("a", tracked{name: "a", service: "s", ep: backend.Endpoint{Addr: "10.0.0.1:1"}})
	for range 2 {
		if err := w.publish(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if len(out) != 1 {
		t.Fatalf("sent %d snapshots for one state, want 1", len(out))
	}
	got := <-out
	want := map[string][]backend.Endpoint{"s": {{Addr: "10.0.0.1:1"}, {Addr: "10.0.0.2:1"}}, "t": {}}
	if got.Provider != "docker" || !reflect.DeepEqual(got.Services, want) {
		t.Fatalf("snapshot = %+v, want docker %v", got, want)
	}
	// A skipped container changes nothing that is sent.
	w.set("c", tracked{name: "c", service: "t", skip: "no port"})
	if err := w.publish(ctx); err != nil {
		t.Fatal(err)
	}
	w.forget("b")
	if err := w.publish(ctx); err != nil {
		t.Fatal(err)
	}
	if len(out) != 1 {
		t.Fatalf("sent %d snapshots after one real change, want 1", len(out))
	}
	if got := <-out; len(got.Services["s"]) != 1 {
		t.Fatalf("after forgetting b: %+v", got.Services)
	}
}

// --- helpers ---

// startProvider runs a provider until the test ends and checks that Run
// returns nil once cancelled. It logs JSON at debug level into the
// returned buffer.
func startProvider(t *testing.T, cfg Config) (*Provider, <-chan discovery.Snapshot, *testenv.LogBuffer) {
	t.Helper()
	logs := &testenv.LogBuffer{}
	cfg.Logger = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	snaps := make(chan discovery.Snapshot)
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx, snaps) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run returned %v after cancel, want nil", err)
		}
		if t.Failed() {
			t.Logf("provider log:\n%s", logs)
		}
	})
	return p, snaps, logs
}

// waitServices reads snapshots until one equals want, and returns it.
func waitServices(t *testing.T, snaps <-chan discovery.Snapshot, what string, want map[string][]backend.Endpoint) map[string][]backend.Endpoint {
	t.Helper()
	normalize(want)
	timer := time.NewTimer(waitTimeout)
	defer timer.Stop()
	var last *discovery.Snapshot
	for {
		select {
		case s := <-snaps:
			if s.Provider != "docker" {
				t.Fatalf("snapshot from provider %q", s.Provider)
			}
			if reflect.DeepEqual(s.Services, want) {
				return s.Services
			}
			last = &s
		case <-timer.C:
			t.Fatalf("%s: no snapshot with %v within %v; last one: %+v", what, want, waitTimeout, last)
		}
	}
}

// nextServices reads the next snapshot and requires it to equal want.
func nextServices(t *testing.T, snaps <-chan discovery.Snapshot, what string, want map[string][]backend.Endpoint) {
	t.Helper()
	normalize(want)
	select {
	case s := <-snaps:
		if !reflect.DeepEqual(s.Services, want) {
			t.Fatalf("%s: next snapshot = %v, want %v", what, s.Services, want)
		}
	case <-time.After(waitTimeout):
		t.Fatalf("%s: no snapshot within %v", what, waitTimeout)
	}
}

func normalize(services map[string][]backend.Endpoint) {
	for s, eps := range services {
		services[s] = discovery.Normalize(eps)
		if services[s] == nil {
			services[s] = []backend.Endpoint{}
		}
	}
}

// waitFor polls a condition on the test's side (not the provider's).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// assertGreets dials addr from the host, checks that container c answers
// (the echo server greets with its hostname) and that it echoes.
func assertGreets(t *testing.T, addr string, c testenv.DockerContainer) {
	t.Helper()
	var (
		conn net.Conn
		err  error
	)
	// The engine reports a container started once its process runs; the
	// echo server may need a moment more to listen.
	waitFor(t, "a connection to "+addr, func() bool {
		conn, err = net.DialTimeout("tcp", addr, 5*time.Second)
		return err == nil
	})
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(waitTimeout))
	r := bufio.NewReader(conn)
	hello, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("read greeting from %s: %v", addr, err)
	}
	if got := strings.TrimSpace(hello); got != c.Hostname() {
		t.Fatalf("%s answered as %q, want container %s (%s)", addr, got, c.Name, c.Hostname())
	}
	if _, err := io.WriteString(conn, "ping\n"); err != nil {
		t.Fatalf("write to %s: %v", addr, err)
	}
	if echo, err := r.ReadString('\n'); err != nil || echo != "ping\n" {
		t.Fatalf("echo from %s = %q, %v; want \"ping\\n\"", addr, echo, err)
	}
}

// labelledPair runs two containers of a new service (named after prefix)
// on a new network, labelled to serve on port 7000.
func labelledPair(t *testing.T, prefix string) (svc string, nw testenv.DockerNetwork, c1, c2 testenv.DockerContainer) {
	t.Helper()
	nw = testenv.NewDockerNetwork(t)
	svc = uniqueService(prefix)
	labels := map[string]string{DefaultLabel: svc, DefaultPortLabel: "7000"}
	c1 = testenv.RunContainer(t, testenv.ContainerSpec{Labels: labels, Network: nw.Name})
	c2 = testenv.RunContainer(t, testenv.ContainerSpec{Labels: labels, Network: nw.Name})
	return svc, nw, c1, c2
}

func uniqueService(prefix string) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return prefix + "-" + hex.EncodeToString(b[:])
}

// sockProxy listens (on a unix socket or TCP) in front of the real engine's
// unix socket. A test can cut it (close the listener and every proxied
// connection; a unix socket file disappears) and open it again, to play an
// engine that goes away.
type sockProxy struct {
	t       *testing.T
	network string
	addr    string
	target  string
	wg      sync.WaitGroup

	mu    sync.Mutex
	ln    net.Listener
	gen   int // bumped by cut: connections of an older generation are closed
	conns map[net.Conn]int
}

// newSockProxy returns a proxy that is not listening yet.
func newSockProxy(t *testing.T, network, addr, target string) *sockProxy {
	p := &sockProxy{t: t, network: network, addr: addr, target: target, conns: map[net.Conn]int{}}
	t.Cleanup(func() {
		p.cut()
		p.wg.Wait()
	})
	return p
}

// open starts listening and returns the bound address.
func (p *sockProxy) open() string {
	p.t.Helper()
	ln, err := net.Listen(p.network, p.addr)
	if err != nil {
		p.t.Fatalf("proxy listen on %s %s: %v", p.network, p.addr, err)
	}
	p.mu.Lock()
	p.ln = ln
	gen := p.gen
	p.mu.Unlock()
	p.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.wg.Go(func() { p.pipe(c, gen) })
		}
	})
	return ln.Addr().String()
}

func (p *sockProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close() // also unlinks the socket file
		p.ln = nil
	}
	p.gen++
	for c := range p.conns {
		c.Close()
	}
	clear(p.conns)
}

// track registers c for cut; false means a cut happened since it was accepted.
func (p *sockProxy) track(c net.Conn, gen int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if gen != p.gen {
		return false
	}
	p.conns[c] = gen
	return true
}

func (p *sockProxy) pipe(c net.Conn, gen int) {
	defer c.Close()
	up, err := net.Dial("unix", p.target)
	if err != nil {
		return
	}
	defer up.Close()
	if !p.track(c, gen) || !p.track(up, gen) {
		return
	}
	var copies sync.WaitGroup
	copies.Go(func() {
		_, _ = io.Copy(up, c)
		up.Close()
	})
	_, _ = io.Copy(c, up)
	c.Close()
	copies.Wait()
	p.mu.Lock()
	delete(p.conns, c)
	delete(p.conns, up)
	p.mu.Unlock()
}

// skipReason returns the reason of the first "container skipped" record in
// logs naming container, or "".
func skipReason(logs *testenv.LogBuffer, container string) string {
	for line := range strings.Lines(logs.String()) {
		var rec struct{ Msg, Container, Reason string }
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "docker: container skipped" && rec.Container == container {
			return rec.Reason
		}
	}
	return ""
}
