package e2e

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestForwardHalfClose sends a payload large enough to leave the small-read
// path, half-closes, and expects the backend's whole reply, which the backend
// only sends after it has seen the client's FIN.
func TestForwardHalfClose(t *testing.T) {
	t.Parallel()
	p, addr := forward(t, replyAfterEOFServer(t))

	for _, size := range []int{1, 5 << 10, 4 << 20} {
		payload := make([]byte, size)
		rand.Read(payload)
		c := dial(t, addr)
		if err := c.SetDeadline(time.Now().Add(ioTimeout)); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(payload); err != nil {
			t.Fatalf("size %d: write: %v", size, err)
		}
		if err := c.CloseWrite(); err != nil {
			t.Fatalf("size %d: CloseWrite: %v", size, err)
		}
		got, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("size %d: read reply after half-close: %v", size, err)
		}
		if !bytes.Equal(got, payload) {
			t.Fatalf("size %d: reply differs: got %d bytes, want %d", size, len(got), len(payload))
		}
		c.Close()
	}
	p.signal(t, syscall.SIGTERM)
	if code := p.wait(t, exitTimeout); code != 0 {
		t.Fatalf("exit code after SIGTERM: got %d, want 0", code)
	}
}

// TestSIGTERMDrains: after SIGTERM the listener is closed at once, the open
// connection keeps working, and the process exits 0 as soon as it closes,
// long before the grace period ends.
func TestSIGTERMDrains(t *testing.T) {
	t.Parallel()
	p, addr := forward(t, echoServer(t), "--grace", "60s")
	c := dial(t, addr)
	roundTrip(t, c, "before the signal\n")

	p.signal(t, syscall.SIGTERM)
	// attache logs the drain once its listeners are closed; from then on a
	// new connection must be refused, not queued.
	p.waitLog(t, regexp.MustCompile(`msg="draining open connections" connections=1`), startTimeout)
	if nc, err := net.DialTimeout("tcp", addr, ioTimeout); !errors.Is(err, syscall.ECONNREFUSED) {
		if nc != nil {
			nc.Close()
		}
		t.Fatalf("dial %s after SIGTERM: want connection refused, got %v", addr, err)
	}

	roundTrip(t, c, "after the signal\n")
	if p.exited() {
		t.Fatalf("attache exited (code %d) with a connection still open", p.code)
	}
	c.Close()
	if code := p.wait(t, exitTimeout); code != 0 {
		t.Fatalf("exit code after drain: got %d, want 0", code)
	}
	if log := p.stderr.String(); strings.Contains(log, "grace period over") {
		t.Fatalf("the connection closed by itself, but attache reports force-closing:\n%s", log)
	}
}

// TestGraceExpires: a connection that never closes is cut when the grace
// period ends, and the process exits then, not before.
func TestGraceExpires(t *testing.T) {
	t.Parallel()
	const grace = time.Second
	p, addr := forward(t, echoServer(t), "--grace", grace.String())
	c := dial(t, addr)
	roundTrip(t, c, "ping\n")

	signalled := time.Now()
	p.signal(t, syscall.SIGTERM)
	code := p.wait(t, exitTimeout)
	took := time.Since(signalled)
	if code != 0 {
		t.Fatalf("exit code after the grace period: got %d, want 0", code)
	}
	// A lower bound only: the process must have waited for the connection.
	if took < grace-100*time.Millisecond {
		t.Fatalf("exited %v after SIGTERM, before the %v grace period ended", took, grace)
	}
	p.waitLog(t, regexp.MustCompile(`grace period over.* connections=1`), time.Second)

	if err := c.SetReadDeadline(time.Now().Add(ioTimeout)); err != nil {
		t.Fatal(err)
	}
	n, err := c.Read(make([]byte, 16))
	if err == nil || isTimeout(err) {
		t.Fatalf("client connection still open after the grace period: read %d bytes, err %v", n, err)
	}
}

// TestPortInUse: one busy port fails the whole invocation with exit 1 and a
// message naming the port, and the other service's listener, opened first,
// is closed again: nothing is left half-started.
func TestPortInUse(t *testing.T) {
	t.Parallel()
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	busyPort := portOf(t, busy.Addr().String())
	other := "127.0.0.1:" + itoa(freePort(t))

	_, stderr, code := runAttache(t, nil,
		"--forward", other+"=127.0.0.1:9", "--forward", "127.0.0.1:"+busyPort+"=127.0.0.1:9")
	if code != 1 {
		t.Fatalf("exit code: got %d, want 1\n%s", code, stderr)
	}
	if !strings.Contains(stderr, "127.0.0.1:"+busyPort) || !strings.Contains(stderr, "address already in use") {
		t.Fatalf("stderr does not name the busy port %s:\n%s", busyPort, stderr)
	}
	if strings.Contains(stderr, "msg=forwarding") {
		t.Fatalf("attache reported forwarding although a listener failed:\n%s", stderr)
	}
	ln, err := net.Listen("tcp", other)
	if err != nil {
		t.Fatalf("the other service's port %s is still taken: %v", other, err)
	}
	ln.Close()
}

// TestBadInput: configuration mistakes exit 2 before anything is opened,
// with a message naming the input at fault.
func TestBadInput(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		env  []string
		args []string
		want []string
	}{
		{
			name: "bad port in a link variable",
			env:  []string{"REDIS_PORT_6379_TCP=tcp://host:notaport"},
			want: []string{"REDIS_PORT_6379_TCP", "notaport"},
		},
		{
			name: "two targets for one port",
			env:  []string{"A_PORT_6379_TCP=tcp://10.0.0.1:6379", "B_PORT_6379_TCP=tcp://10.0.0.2:6379"},
			want: []string{"A_PORT_6379_TCP", "B_PORT_6379_TCP", "10.0.0.1:6379", "10.0.0.2:6379"},
		},
		{
			name: "link names without port variables: the linked container exposes no port",
			env:  []string{"REDIS_NAME=/web/redis", "REDIS_ENV_FOO=bar"},
			want: []string{"REDIS_NAME", "exposes none", "--expose PORT", "REDIS_PORT_6379_TCP=tcp://redis:6379"},
		},
		{
			name: "nothing to do",
			want: []string{"no services to forward"},
		},
		{
			name: "bad forward",
			args: []string{"--forward", "6379=10.0.0.5"},
			want: []string{"--forward 6379=10.0.0.5", "host:port"},
		},
		{
			name: "bad flag value",
			args: []string{"--log-format", "xml"},
			want: []string{"log-format", "xml"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, stderr, code := runAttache(t, tt.env, tt.args...)
			if code != 2 {
				t.Fatalf("exit code: got %d, want 2\n%s", code, stderr)
			}
			for _, w := range tt.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr)
				}
			}
		})
	}
}

// TestCheck: check prints the routing table and binds nothing (one listen
// port is held by the test, so a bind would fail), or prints every error.
func TestCheck(t *testing.T) {
	t.Parallel()
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	heldAddr := held.Addr().String()

	t.Run("table", func(t *testing.T) {
		stdout, stderr, code := runAttache(t,
			[]string{"CACHE_PORT_11211_TCP=tcp://cache.internal:11211", "DNS_PORT_53_UDP=udp://10.0.0.53:53"},
			"check", "--forward", heldAddr+"=db.internal:5432")
		if code != 0 {
			t.Fatalf("exit code: got %d, want 0\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
		}
		for _, w := range []string{
			"SERVICE", "LISTEN", "BACKENDS",
			heldAddr, "db.internal:5432", "--forward " + heldAddr,
			"0.0.0.0:11211", "cache.internal:11211", "env CACHE_PORT_11211_TCP",
			"0.0.0.0:53/udp", "10.0.0.53:53", "env DNS_PORT_53_UDP",
		} {
			if !strings.Contains(stdout, w) {
				t.Errorf("table lacks %q:\n%s", w, stdout)
			}
		}
	})
	t.Run("errors", func(t *testing.T) {
		stdout, stderr, code := runAttache(t,
			[]string{
				"REDIS_PORT_6379_TCP=tcp://host:notaport",
				"A_PORT_7000_TCP=tcp://10.0.0.1:7000", "B_PORT_7000_TCP=tcp://10.0.0.2:7000",
			},
			"check", "--forward", heldAddr+"=db.internal:5432", "--forward", "5000=10.0.0.5")
		if code != 2 {
			t.Fatalf("exit code: got %d, want 2\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
		}
		for _, w := range []string{
			"3 configuration errors",
			"REDIS_PORT_6379_TCP",
			"A_PORT_7000_TCP and env B_PORT_7000_TCP",
			"--forward 5000=10.0.0.5",
		} {
			if !strings.Contains(stderr, w) {
				t.Errorf("stderr lacks %q:\n%s", w, stderr)
			}
		}
		if strings.Contains(stdout, "SERVICE") {
			t.Errorf("check printed a table despite errors:\n%s", stdout)
		}
	})
}

// TestJSONLogs: --log-format json makes every line a JSON object, and
// --log-level debug adds one line per closed connection.
func TestJSONLogs(t *testing.T) {
	t.Parallel()
	backend := echoServer(t)
	p := startAttache(t, nil, "--log-format", "json", "--log-level", "debug", "--forward", "127.0.0.1:0="+backend)
	m := p.waitLog(t, regexp.MustCompile(`"msg":"forwarding".*"listen":"([^"]+)"`), startTimeout)
	c := dial(t, m[1])
	msg := "json please\n"
	roundTrip(t, c, msg)
	c.Close()
	p.waitLog(t, regexp.MustCompile(`"msg":"connection closed"`), startTimeout)
	p.signal(t, syscall.SIGTERM)
	if code := p.wait(t, exitTimeout); code != 0 {
		t.Fatalf("exit code: got %d, want 0", code)
	}

	var sawForwarding, sawClosed, sawStopped bool
	var service any
	for _, line := range jsonLines(t, p.stderr.String()) {
		for _, k := range []string{"time", "level", "msg"} {
			if _, ok := line[k]; !ok {
				t.Errorf("log line without %q: %v", k, line)
			}
		}
		switch line["msg"] {
		case "forwarding":
			sawForwarding = line["listen"] == m[1] && line["service"] != nil
			service = line["service"]
		case "connection closed":
			// The access line: client, service, backend, duration (in
			// nanoseconds), bytes each way and the close reason.
			d, _ := line["duration"].(float64)
			sawClosed = line["level"] == "INFO" && line["log"] == "access" && line["bytes_in"] == float64(len(msg)) &&
				line["bytes_out"] == float64(len(msg)) && line["reason"] == "eof" && line["service"] == service &&
				line["client"] == c.LocalAddr().String() && line["backend"] == backend && d > 0
		case "stopped":
			sawStopped = true
		}
	}
	if !sawForwarding || !sawClosed || !sawStopped {
		t.Fatalf("missing or wrong lines (forwarding %v, connection closed %v, stopped %v):\n%s",
			sawForwarding, sawClosed, sawStopped, p.stderr)
	}
}

// TestAccessLogOff: --access-log=false turns the per-connection line off
// at the default level (it is then written at debug only, untagged).
func TestAccessLogOff(t *testing.T) {
	t.Parallel()
	backend := echoServer(t)
	for _, level := range []string{"info", "debug"} {
		t.Run(level, func(t *testing.T) {
			t.Parallel()
			p := startAttache(t, nil, "--access-log=false", "--log-format", "json", "--log-level", level,
				"--forward", "127.0.0.1:0="+backend)
			m := p.waitLog(t, regexp.MustCompile(`"msg":"forwarding".*"listen":"([^"]+)"`), startTimeout)
			c := dial(t, m[1])
			roundTrip(t, c, "quiet please\n")
			c.Close()
			if level == "debug" {
				p.waitLog(t, regexp.MustCompile(`"msg":"connection closed"`), startTimeout)
			}
			// Shutdown waits for the connection's handler, which logs
			// before it returns: once attache has exited, the log is whole.
			p.signal(t, syscall.SIGTERM)
			if code := p.wait(t, exitTimeout); code != 0 {
				t.Fatalf("exit code: got %d, want 0", code)
			}
			var closed []map[string]any
			for _, line := range jsonLines(t, p.stderr.String()) {
				if line["msg"] == "connection closed" {
					closed = append(closed, line)
				}
			}
			switch {
			case level == "info" && len(closed) != 0:
				t.Errorf("--access-log=false still wrote access lines at info: %v", closed)
			case level == "debug" && (len(closed) != 1 || closed[0]["level"] != "DEBUG" || closed[0]["log"] != nil):
				t.Errorf("--access-log=false --log-level debug: %v, want one untagged DEBUG line", closed)
			}
		})
	}
}

// TestMaxConnections: at the limit, attache warns, and a second client
// waits (it is not refused) and is served once the first one closes.
func TestMaxConnections(t *testing.T) {
	t.Parallel()
	p, addr := forward(t, echoServer(t), "--max-connections", "1")

	first := dial(t, addr)
	roundTrip(t, first, "first\n")
	second := dial(t, addr)
	if _, err := io.WriteString(second, "second\n"); err != nil {
		t.Fatalf("second client write: %v", err)
	}
	p.waitLog(t, regexp.MustCompile(`level=WARN msg="connection limit reached.* max_connections=1`), startTimeout)

	// While the first is open the second must not be served. This read can
	// only succeed if the limit is broken, so the short window cannot make a
	// correct attache fail.
	if err := second.SetReadDeadline(time.Now().Add(300 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if n, err := second.Read(make([]byte, 16)); !isTimeout(err) {
		t.Fatalf("second client served past the limit: read %d bytes, err %v", n, err)
	}
	roundTrip(t, first, "first again\n")
	first.Close()

	if err := second.SetReadDeadline(time.Now().Add(ioTimeout)); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len("second\n"))
	if _, err := io.ReadFull(second, got); err != nil || string(got) != "second\n" {
		t.Fatalf("second client after the first closed: got %q, err %v", got, err)
	}
	roundTrip(t, second, "second again\n")
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
