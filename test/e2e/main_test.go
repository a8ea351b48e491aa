// Package e2e tests the built attache binary from the outside: as a process
// (lifecycle_test.go) and as a container image on a real Docker engine
// (docker_test.go). TestMain builds the static binary once, exactly as the
// image build does, and every test runs that file. Only internal/testenv (the
// test servers) is imported, never attache's own code: what is checked is
// what an operator sees (exit codes, log lines, bytes on sockets).
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/attache/attache/internal/testenv"
)

// attacheBin is the static binary built by TestMain.
var attacheBin string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "attache-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	attacheBin = filepath.Join(dir, "attache")
	// The same command the Makefile's image target uses, so the image tests
	// run the very kind of binary that ships.
	build := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", attacheBin,
		"github.com/attache/attache/cmd/attache")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: building attache: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

// Deadlines for polling. They bound how long a broken build can hang a test;
// a working one finishes far sooner. None of them measures performance.
const (
	startTimeout = 15 * time.Second // process start to "forwarding" logged
	ioTimeout    = 10 * time.Second // one read or write on a proxied socket
	exitTimeout  = 20 * time.Second // signal to process exit
)

// proc is one running attache process.
type proc struct {
	cmd    *exec.Cmd
	stdout *testenv.LogBuffer
	stderr *testenv.LogBuffer
	done   chan struct{} // closed once the process has exited
	code   int           // exit code, valid after done
}

// startAttache runs the binary with exactly env (nothing inherited, so a
// link variable in the test runner's own environment cannot leak in) and
// args. The process is killed by its PID at the end of the test if it is
// still running, and its log is printed if the test failed.
func startAttache(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	if env == nil {
		env = []string{}
	}
	p := &proc{stdout: new(testenv.LogBuffer), stderr: new(testenv.LogBuffer), done: make(chan struct{})}
	p.cmd = exec.Command(attacheBin, args...)
	p.cmd.Env = env
	p.cmd.Stdout = p.stdout
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start attache: %v", err)
	}
	go func() {
		err := p.cmd.Wait()
		p.code = exitCode(err)
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("attache %s\nstderr:\n%s\nstdout:\n%s", strings.Join(args, " "), p.stderr, p.stdout)
		}
	})
	return p
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	}
	return -1
}

// signal sends sig to the process by its PID.
func (p *proc) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %v: %v", sig, err)
	}
}

// wait returns the exit code, failing the test if the process is still
// running after timeout.
func (p *proc) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
		return p.code
	case <-time.After(timeout):
		t.Fatalf("attache still running %v after it should have exited", timeout)
		return -1
	}
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// waitLog waits until the stderr log contains a line matching re and returns
// the submatches of the first such line. It fails the test at the deadline or
// if the process exits without logging it.
func (p *proc) waitLog(t *testing.T, re *regexp.Regexp, timeout time.Duration) []string {
	t.Helper()
	m, err := p.stderr.WaitLine(re, p.done, timeout)
	p.failWait(t, err, fmt.Sprintf("logging a line matching %q", re), timeout)
	return m
}

// failWait fails the test for an error of testenv.LogBuffer's Await: the
// process exited, or timeout passed, before what.
func (p *proc) failWait(t *testing.T, err error, what string, timeout time.Duration) {
	t.Helper()
	switch {
	case errors.Is(err, testenv.ErrWriterDone):
		t.Fatalf("attache exited (code %d) without %s", p.code, what)
	case err != nil:
		t.Fatalf("not %s within %v", what, timeout)
	}
}

var forwardingRE = regexp.MustCompile(`msg=forwarding .*\blisten=(\S+)`)

// listenAddrs waits for n "forwarding" lines (text log format) and returns
// their listen addresses, in the order they were logged (service order).
func (p *proc) listenAddrs(t *testing.T, n int) []string {
	t.Helper()
	var addrs []string
	err := p.stderr.Await(p.done, startTimeout, func(text string) bool {
		addrs = addrs[:0]
		for _, m := range forwardingRE.FindAllStringSubmatch(text, -1) {
			addrs = append(addrs, m[1])
		}
		return len(addrs) >= n
	})
	p.failWait(t, err, "forwarding", startTimeout)
	return addrs
}

// runAttache runs a one-shot command to completion and returns its output
// and exit code.
func runAttache(t *testing.T, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	p := startAttache(t, env, args...)
	code = p.wait(t, exitTimeout)
	return p.stdout.String(), p.stderr.String(), code
}

// serveTCP runs handle for each connection on a new loopback listener
// until the test ends (testenv.Serve does the bookkeeping and cleanup). It
// returns the bound address.
func serveTCP(t *testing.T, handle func(*net.TCPConn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	testenv.Serve(t, ln, func(c net.Conn) { handle(c.(*net.TCPConn)) })
	return ln.Addr().String()
}

// forward starts attache forwarding a port of 127.0.0.1 to backend, with
// flags before --forward, and returns the process and the port's address
// once it is forwarding.
func forward(t *testing.T, backend string, flags ...string) (*proc, string) {
	t.Helper()
	p := startAttache(t, nil, slices.Concat(flags, []string{"--forward", "127.0.0.1:0=" + backend})...)
	return p, p.listenAddrs(t, 1)[0]
}

// echoServer writes back every chunk as it arrives and half-closes when the
// client does: the interactive request/response shape.
func echoServer(t *testing.T) string { return testenv.Echo(t, "127.0.0.1:0") }

// replyAfterEOFServer reads until the client half-closes, then sends back
// everything it read. It answers only if the proxy propagated the client's
// FIN and still carries bytes the other way afterwards.
func replyAfterEOFServer(t *testing.T) string {
	return serveTCP(t, func(c *net.TCPConn) {
		got, err := io.ReadAll(c)
		if err != nil {
			return
		}
		_, _ = c.Write(got)
	})
}

func dial(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// roundTrip writes msg and reads the same number of bytes back.
func roundTrip(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	if err := c.SetDeadline(time.Now().Add(ioTimeout)); err != nil {
		t.Fatal(err)
	}
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatalf("write: %v", err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read echo of %q: %v", msg, err)
	}
	if string(got) != msg {
		t.Fatalf("echo: got %q, want %q", got, msg)
	}
}

// freePort returns a port that was free a moment ago on every interface.
// Only for the forms that cannot take port 0 (link variables, HOST PORT).
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func portOf(t *testing.T, addr string) string {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("address %q: %v", addr, err)
	}
	return port
}

// jsonLines parses every non-empty line of s as a JSON object.
func jsonLines(t *testing.T, s string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for line := range strings.SplitSeq(s, "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line is not a JSON object: %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

// runCmd runs an external command (docker) with a deadline and returns its
// stdout, stderr and exit code; err is set only if it could not run at all.
func runCmd(ctx context.Context, timeout time.Duration, name string, args ...string) (stdout, stderr string, code int, err error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case ctx.Err() != nil:
		return o.String(), e.String(), -1, fmt.Errorf("%s %s: timed out after %v", name, strings.Join(args, " "), timeout)
	case errors.As(err, &ee):
		return o.String(), e.String(), ee.ExitCode(), nil
	default:
		return o.String(), e.String(), -1, err
	}
	return o.String(), e.String(), 0, nil
}

func itoa(n int) string { return strconv.Itoa(n) }
