package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/attache/attache/internal/config"
	"github.com/attache/attache/internal/testenv"
)

// running is a daemon Run in a goroutine by startRun.
type running struct {
	Bound []Bound
	Admin string // the admin API's address, when Options.Admin was set

	cancel context.CancelFunc
	done   chan error
	err    error
	waited bool
}

// startRun runs the daemon with cfg and opts (whose Ready and AdminReady
// it sets) and returns once it serves every listener, failing the test if
// Run returns first. The test may Stop it; otherwise it is stopped at the
// test's end, and an error from Run then fails the test.
func startRun(t *testing.T, cfg *config.Config, opts Options) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan error, 1)}
	ready := make(chan []Bound, 1)
	admin := make(chan net.Addr, 1)
	opts.Ready = func(b []Bound) { ready <- b }
	if opts.Admin != "" {
		opts.AdminReady = func(a net.Addr) { admin <- a }
	}
	go func() { r.done <- Run(ctx, cfg, opts) }()
	if opts.Admin != "" {
		select {
		case a := <-admin:
			r.Admin = a.String()
		case err := <-r.done:
			cancel()
			t.Fatalf("Run: %v", err)
		}
	}
	select {
	case r.Bound = <-ready:
	case err := <-r.done:
		cancel()
		t.Fatalf("Run: %v", err)
	}
	t.Cleanup(func() {
		if err := r.Stop(); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return r
}

// Stop cancels Run and returns what it returned; later calls return the
// same.
func (r *running) Stop() error {
	if !r.waited {
		r.cancel()
		r.err, r.waited = <-r.done, true
	}
	return r.err
}

func service(name, listen, backend string) config.Service {
	return config.Service{Name: name, Listen: listen, Backends: []config.Backend{{Addr: backend}},
		ConnectTimeout: time.Second, Origin: "test " + name}
}

// TestAllListenersOrNone: when the second port is taken, Run fails naming
// it, and the first port it had opened is closed again.
func TestAllListenersOrNone(t *testing.T) {
	free := testenv.FreePort(t, "127.0.0.1")
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	cfg := &config.Config{Services: []config.Service{
		service("a", fmt.Sprintf("127.0.0.1:%d", free), "127.0.0.1:1"),
		service("b", taken.Addr().String(), "127.0.0.1:1"),
	}}
	err = Run(context.Background(), cfg, Options{})
	var le *ListenError
	if !errors.As(err, &le) || le.Service.Name != "b" || !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("Run = %v; want a ListenError for service b with EADDRINUSE", err)
	}
	if want := taken.Addr().String(); !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not name the port %s", err, want)
	}
	testenv.RequireClosed(t, fmt.Sprintf("127.0.0.1:%d", free)) // service a's
}

// TestRunServesUntilCancelled runs two services, checks both forward, and
// that cancelling stops them and closes the ports.
func TestRunServesUntilCancelled(t *testing.T) {
	echo := testenv.Echo(t, "127.0.0.1:0")
	cfg := &config.Config{Services: []config.Service{
		service("one", "127.0.0.1:0", echo),
		service("two", "127.0.0.1:0", echo),
	}}
	d := startRun(t, cfg, Options{})
	for _, b := range d.Bound {
		c, err := net.Dial("tcp", b.Addr.String())
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, b.Service)
		c.(*net.TCPConn).CloseWrite()
		got, _ := io.ReadAll(c)
		c.Close()
		if string(got) != b.Service {
			t.Errorf("%s: got %q", b.Service, got)
		}
	}
	if err := d.Stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	for _, b := range d.Bound {
		if c, err := net.Dial("tcp", b.Addr.String()); err == nil {
			c.Close()
			t.Errorf("%s still listening after Run returned", b.Service)
		}
	}
}

func TestListenNetwork(t *testing.T) {
	for addr, want := range map[string]string{
		"0.0.0.0:6379":   "tcp4",
		"127.0.0.1:1":    "tcp4",
		"[::1]:1":        "tcp6",
		"[::]:1":         "tcp",
		":6379":          "tcp",
		"localhost:6379": "tcp",
	} {
		if got := listenNetwork(addr); got != want {
			t.Errorf("listenNetwork(%q) = %q, want %q", addr, got, want)
		}
	}
}

// whoServer answers every connection with its name, then closes.
func whoServer(t *testing.T, name string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	testenv.Serve(t, ln, func(c net.Conn) { io.WriteString(c, name) })
	return ln.Addr().String()
}

func who(t *testing.T, addr string) (string, error) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	return string(b), err
}

// TestReloadIsATransaction swaps a backend, adds and removes a service, and
// checks that failed reloads (a bad config, a port that cannot open) leave
// the running configuration untouched.
func TestReloadIsATransaction(t *testing.T) {
	one, two := whoServer(t, "one"), whoServer(t, "two")
	echo := testenv.Echo(t, "127.0.0.1:0")
	ports := testenv.FreePorts(t, "127.0.0.1", 3)
	portA := fmt.Sprintf("127.0.0.1:%d", ports[0])
	portB := fmt.Sprintf("127.0.0.1:%d", ports[1])
	portC := fmt.Sprintf("127.0.0.1:%d", ports[2])

	next := make(chan func() (*config.Config, error), 1)
	reload := make(chan os.Signal)
	results := make(chan error)
	cfg := &config.Config{Services: []config.Service{service("a", portA, one), service("b", portB, echo)}}
	d := startRun(t, cfg, Options{
		Reload:   reload,
		Load:     func() (*config.Config, error) { return (<-next)() },
		Reloaded: func(err error) { results <- err },
	})
	doReload := func(load func() (*config.Config, error)) error {
		next <- load
		reload <- syscall.SIGHUP
		return <-results
	}
	if got, err := who(t, portA); got != "one" {
		t.Fatalf("before reload a reached %q, %v", got, err)
	}
	// A connection on b stays open across the reload that removes b.
	held, err := net.Dial("tcp", portB)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	held.SetDeadline(time.Now().Add(10 * time.Second))
	// Served, not just queued in b's backlog (which the reload's close of
	// the listener would reset): one byte makes the round trip first.
	if _, err := held.Write([]byte(">")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(held, make([]byte, 1)); err != nil {
		t.Fatalf("held connection before the reload: %v", err)
	}

	err = doReload(func() (*config.Config, error) {
		return &config.Config{Services: []config.Service{service("a", portA, two), service("c", portC, one)}}, nil
	})
	if err != nil {
		t.Fatalf("reload: %v", err)
	}
	if got, err := who(t, portA); got != "two" {
		t.Errorf("after reload a reached %q, %v; want two", got, err)
	}
	if got, err := who(t, portC); got != "one" {
		t.Errorf("added service c reached %q, %v", got, err)
	}
	if c, err := net.DialTimeout("tcp", portB, time.Second); err == nil {
		c.Close()
		t.Error("removed service b still accepts")
	}
	io.WriteString(held, "still here")
	held.(*net.TCPConn).CloseWrite()
	if got, _ := io.ReadAll(held); string(got) != "still here" {
		t.Errorf("connection open across the reload got %q", got)
	}

	// A bad configuration: nothing changes.
	if err := doReload(func() (*config.Config, error) { return nil, errors.New("bad.yaml:3: listn: unknown key") }); err == nil {
		t.Error("a failing load reported success")
	}
	// A port that cannot be opened: nothing changes either.
	taken, _ := net.Listen("tcp", "127.0.0.1:0")
	defer taken.Close()
	err = doReload(func() (*config.Config, error) {
		return &config.Config{Services: []config.Service{service("a", portA, one), service("d", taken.Addr().String(), one)}}, nil
	})
	if err == nil || !strings.Contains(err.Error(), taken.Addr().String()) {
		t.Errorf("reload onto a taken port: %v; want an error naming it", err)
	}
	if got, err := who(t, portA); got != "two" {
		t.Errorf("after failed reloads a reached %q, %v; want the old route (two)", got, err)
	}
	if got, _ := who(t, portC); got != "one" {
		t.Errorf("after failed reloads c reached %q", got)
	}
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
}

// TestServicesOnPortZero: several TCP services may each ask for a free
// port (listen: 127.0.0.1:0, as a service reached only through the link
// may); each is served, listed and reloaded as its own.
func TestServicesOnPortZero(t *testing.T) {
	one, two := whoServer(t, "one"), whoServer(t, "two")
	yaml := func(aBackend string) string {
		return fmt.Sprintf("services:\n  - {name: a, listen: \"127.0.0.1:0\", backends: [%s]}\n  - {name: b, listen: \"127.0.0.1:0\", backends: [%s]}\n",
			aBackend, two)
	}
	d := startAdminDaemon(t, yaml(one))
	addr := map[string]string{}
	for _, b := range d.bound {
		addr[b.Service] = b.Addr.String()
	}
	if len(addr) != 2 || addr["a"] == addr["b"] {
		t.Fatalf("bound %v, want services a and b on two ports", d.bound)
	}
	sv := d.services(t)
	if len(sv) != 2 || sv["a"].Name != "a" || sv["b"].Name != "b" {
		t.Errorf("/v1/services lists %v, want a and b", sv)
	}
	if got, err := who(t, addr["a"]); got != "one" {
		t.Errorf("a reached %q, %v; want one", got, err)
	}
	// A reload keeps each service on its own port and applies its own
	// changes.
	if err := d.reload(yaml(two)); err != nil {
		t.Fatalf("reload: %v", err)
	}
	for _, s := range []string{"a", "b"} {
		if got, err := who(t, addr[s]); got != "two" {
			t.Errorf("after the reload %s reached %q, %v; want two", s, got, err)
		}
	}
}
