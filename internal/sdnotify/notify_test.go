package sdnotify

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// listenNotify opens a real unixgram socket like systemd's notify socket,
// at a path or (name starting with @) in the abstract namespace.
func listenNotify(t *testing.T, name string) *net.UnixConn {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatalf("listen unixgram %s: %v", name, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// receive reads one datagram, as systemd does, and splits its assignments.
func receive(t *testing.T, c *net.UnixConn) map[string]string {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("read notify datagram: %v", err)
	}
	out := map[string]string{}
	for line := range strings.SplitSeq(string(buf[:n]), "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("datagram %q: line %q is not VARIABLE=value", buf[:n], line)
		}
		out[k] = v
	}
	return out
}

func TestFromEnviron(t *testing.T) {
	pid := os.Getpid()
	tests := []struct {
		name     string
		env      []string
		wantNil  bool
		watchdog time.Duration
		err      string
	}{
		{name: "unset", env: []string{"PATH=/bin"}, wantNil: true},
		{name: "empty", env: []string{"NOTIFY_SOCKET="}, wantNil: true},
		{name: "path", env: []string{"NOTIFY_SOCKET=/run/systemd/notify"}},
		{name: "abstract", env: []string{"NOTIFY_SOCKET=@/org/freedesktop/systemd1/notify/42"}},
		{name: "relative", env: []string{"NOTIFY_SOCKET=notify"}, err: `NOTIFY_SOCKET="notify": want an absolute socket path`},
		{name: "watchdog for us", env: []string{"NOTIFY_SOCKET=/n", "WATCHDOG_USEC=3000000", "WATCHDOG_PID=" + strconv.Itoa(pid)}, watchdog: 3 * time.Second},
		{name: "watchdog for any pid", env: []string{"NOTIFY_SOCKET=/n", "WATCHDOG_USEC=500"}, watchdog: 500 * time.Microsecond},
		{name: "watchdog for another pid", env: []string{"NOTIFY_SOCKET=/n", "WATCHDOG_USEC=3000000", "WATCHDOG_PID=1"}},
		{name: "watchdog zero", env: []string{"NOTIFY_SOCKET=/n", "WATCHDOG_USEC=0"}, err: `WATCHDOG_USEC="0": want a positive number`},
		{name: "duplicate: the first wins, as getenv", env: []string{"NOTIFY_SOCKET=/n", "WATCHDOG_USEC=3000000", "WATCHDOG_USEC=0"}, watchdog: 3 * time.Second},
		{name: "watchdog text", env: []string{"NOTIFY_SOCKET=/n", "WATCHDOG_USEC=3s"}, err: `WATCHDOG_USEC="3s"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := FromEnviron(tt.env, pid)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("FromEnviron(%q) = %v, want an error containing %q", tt.env, err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("FromEnviron(%q): %v", tt.env, err)
			}
			if (n == nil) != tt.wantNil {
				t.Fatalf("FromEnviron(%q) = %v, want nil: %v", tt.env, n, tt.wantNil)
			}
			if got := n.WatchdogInterval(); got != tt.watchdog {
				t.Fatalf("watchdog interval %v, want %v", got, tt.watchdog)
			}
		})
	}
}

// TestMessages sends each message to a real unixgram socket, by path and in
// the abstract namespace, and reads what systemd would read.
func TestMessages(t *testing.T) {
	sockets := map[string]string{
		"path":     filepath.Join(t.TempDir(), "notify"),
		"abstract": fmt.Sprintf("@attache-sdnotify-test-%d", os.Getpid()),
	}
	for name, addr := range sockets {
		t.Run(name, func(t *testing.T) {
			srv := listenNotify(t, addr)
			n, err := FromEnviron([]string{"NOTIFY_SOCKET=" + addr}, os.Getpid())
			if err != nil {
				t.Fatal(err)
			}
			if err := n.Ready("serving 2 services"); err != nil {
				t.Fatal(err)
			}
			if got := receive(t, srv); got["READY"] != "1" || got["STATUS"] != "serving 2 services" || len(got) != 2 {
				t.Fatalf("Ready sent %v", got)
			}

			before, err := monotonicUsec()
			if err != nil {
				t.Fatal(err)
			}
			if err := n.Reloading("reloading"); err != nil {
				t.Fatal(err)
			}
			got := receive(t, srv)
			after, err := monotonicUsec()
			if err != nil {
				t.Fatal(err)
			}
			stamp, err := strconv.ParseUint(got["MONOTONIC_USEC"], 10, 64)
			if got["RELOADING"] != "1" || err != nil || stamp < before || stamp > after {
				t.Fatalf("Reloading sent %v; want RELOADING=1 and MONOTONIC_USEC between %d and %d (CLOCK_MONOTONIC)", got, before, after)
			}

			if err := n.Stopping("draining\nsecond line"); err != nil {
				t.Fatal(err)
			}
			if got := receive(t, srv); got["STOPPING"] != "1" || got["STATUS"] != "draining" {
				t.Fatalf("Stopping sent %v; want STOPPING=1 and the status's first line only", got)
			}

			if err := n.MainPID(4242, ""); err != nil {
				t.Fatal(err)
			}
			if got := receive(t, srv); got["MAINPID"] != "4242" || got["READY"] != "1" || len(got) != 2 {
				t.Fatalf("MainPID sent %v", got)
			}
		})
	}
}

func TestSendRefusesBadAssignments(t *testing.T) {
	n, err := FromEnviron([]string{"NOTIFY_SOCKET=" + filepath.Join(t.TempDir(), "notify")}, os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"READY", "STATUS=a\nREADY=1"} {
		if err := n.Send(bad); err == nil || !strings.Contains(err.Error(), "want VARIABLE=value") {
			t.Errorf("Send(%q) = %v, want a refusal", bad, err)
		}
	}
}

// TestNoSocketListening: a notify socket nobody reads is an error naming
// it, not a hang or a panic.
func TestNoSocketListening(t *testing.T) {
	path := filepath.Join(t.TempDir(), "gone")
	n, err := FromEnviron([]string{"NOTIFY_SOCKET=" + path}, os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Ready(""); err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("Ready to a missing socket = %v, want an error naming %s", err, path)
	}
}

// TestNilNotifier: outside systemd every call does nothing.
func TestNilNotifier(t *testing.T) {
	var n *Notifier
	for _, err := range []error{n.Ready("x"), n.Reloading("x"), n.Stopping("x"), n.MainPID(1, "x"), n.Send("READY=1")} {
		if err != nil {
			t.Fatalf("nil notifier: %v", err)
		}
	}
	if n.WatchdogInterval() != 0 {
		t.Fatal("nil notifier has a watchdog")
	}
	n.Watchdog(t.Context()) // returns at once
}

// TestWatchdog: WATCHDOG=1 keeps coming until the context ends, and then
// Watchdog returns.
func TestWatchdog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify")
	srv := listenNotify(t, path)
	n, err := FromEnviron([]string{"NOTIFY_SOCKET=" + path, "WATCHDOG_USEC=20000"}, os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		n.Watchdog(ctx)
		close(done)
	}()
	for range 3 {
		if got := receive(t, srv); got["WATCHDOG"] != "1" || len(got) != 1 {
			t.Fatalf("watchdog sent %v", got)
		}
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Watchdog did not return after its context ended")
	}
}
