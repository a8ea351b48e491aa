package daemon

import (
	"bufio"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/attache/attache/internal/config"
	"github.com/attache/attache/internal/testenv"
)

// TestAccessLogBuffered runs the daemon as the CLI does, access lines
// buffered over a real pipe: a closed connection's line arrives while the
// daemon serves, the drop counter is served (0), and the line of a
// connection closed during the shutdown is written out before Run returns.
func TestAccessLogBuffered(t *testing.T) {
	echo := testenv.Echo(t, "127.0.0.1:0")
	cfg := &config.Config{Services: []config.Service{service("web", "127.0.0.1:0", echo)}}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	lines := make(chan string, 100)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	d := startRun(t, cfg, Options{
		AccessLog: true, LogOutput: w,
		LogHandler: func(w io.Writer) slog.Handler { return slog.NewTextHandler(w, nil) },
		Admin:      "127.0.0.1:0",
	})
	admin, addr := d.Admin, d.Bound[0].Addr.String()

	roundTrip := func() {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte("ping\n")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 5)
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
	}
	isAccess := func(l string) bool {
		return strings.Contains(l, `msg="connection closed"`) && strings.Contains(l, "log=access") &&
			strings.Contains(l, "service=web")
	}

	roundTrip()
	if l := <-lines; !isAccess(l) { // arrives while the daemon serves
		t.Fatalf("first line %q: want the access line", l)
	}

	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if v := value(fams, "attache_access_log_dropped_total", nil); v != 0 {
		t.Fatalf("attache_access_log_dropped_total = %v, want 0", v)
	}

	roundTrip()
	if err := d.Stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	w.Close()
	var rest []string
	for l := range lines {
		rest = append(rest, l)
	}
	if len(rest) != 1 || !isAccess(rest[0]) {
		t.Fatalf("after Run returned: %q, want the second access line", rest)
	}
}

// stuckWriter is a log sink that takes nothing until released, as a
// stderr pipe nobody reads.
type stuckWriter struct{ release chan struct{} }

func (s stuckWriter) Write(p []byte) (int, error) {
	<-s.release
	return len(p), nil
}

// TestAccessLogStuckSinkDoesNotHangShutdown: with a sink that never takes
// the access lines, connections are still served and Run still returns,
// after accessLogFlushTimeout, saying the last lines were lost.
func TestAccessLogStuckSinkDoesNotHangShutdown(t *testing.T) {
	echo := testenv.Echo(t, "127.0.0.1:0")
	cfg := &config.Config{Services: []config.Service{service("web", "127.0.0.1:0", echo)}}
	sink := stuckWriter{make(chan struct{})}
	defer close(sink.release)
	var logs testenv.LogBuffer
	d := startRun(t, cfg, Options{
		Logger:    slog.New(slog.NewTextHandler(&logs, nil)),
		AccessLog: true, LogOutput: sink,
		LogHandler: func(w io.Writer) slog.Handler { return slog.NewTextHandler(w, nil) },
	})
	addr := d.Bound[0].Addr.String()
	for range 3 { // each closes with an access line the sink never takes
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write([]byte("ping\n")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 5)
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	if err := d.Stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if !strings.Contains(logs.String(), "access log: the log sink did not take the last lines in time") {
		t.Fatalf("no warning about the lost lines in:\n%s", logs.String())
	}
}
