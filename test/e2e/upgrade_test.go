package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/attache/attache/internal/testenv"
	"golang.org/x/sys/unix"
)

// Zero-downtime upgrades replace the attache process by a new one, which is
// started by the old one: after the first upgrade the running attache is
// no longer a child of the test. The test process makes itself a child
// subreaper, so every attache whose parent has exited is reparented to it:
// the test then reaps each one (and learns its exit code), and can always
// stop the whole chain by pid, even when a test fails half-way.
var subreaper = sync.OnceValue(func() error {
	return unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
})

// chain is a line of attache processes, each started by the one before it
// in an upgrade. They share one log (the first one's stderr, inherited).
type chain struct {
	t   *testing.T
	log *testenv.LogBuffer
	// logDone closes when every process holding the log has exited.
	logDone chan struct{}

	mu   sync.Mutex
	gens []*generation // oldest first
}

// generation is one attache process of a chain.
type generation struct {
	pid  int
	done chan struct{} // closed once the test has reaped it
	code int           // exit code (128+signal), valid after done
}

// startChain starts the first attache with args (and an empty environment)
// and stops every process of the chain at the end of the test.
func startChain(t *testing.T, bin string, args ...string) *chain {
	t.Helper()
	if err := subreaper(); err != nil {
		t.Fatalf("becoming a child subreaper: %v", err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	// An *os.File as stderr is passed as is (no copying goroutine tied to
	// cmd.Wait), so Wait returns when this process exits, not when the
	// last process sharing the pipe does.
	cmd := exec.Command(bin, args...)
	cmd.Env = []string{}
	cmd.Stdout, cmd.Stderr = w, w
	err = cmd.Start()
	w.Close()
	if err != nil {
		r.Close()
		t.Fatalf("start attache: %v", err)
	}
	c := &chain{t: t, log: new(testenv.LogBuffer), logDone: make(chan struct{})}
	go func() {
		_, _ = io.Copy(c.log, r)
		r.Close()
		close(c.logDone)
	}()
	first := &generation{pid: cmd.Process.Pid, done: make(chan struct{})}
	go func() {
		first.code = exitCode(cmd.Wait())
		close(first.done)
	}()
	c.gens = []*generation{first}
	t.Cleanup(func() { c.stopAll(args) })
	return c
}

// adopt records pid as the successor of the newest generation. It becomes
// the test's child when its parent exits, and is reaped from then on.
func (c *chain) adopt(pid int) *generation {
	c.mu.Lock()
	defer c.mu.Unlock()
	parent := c.gens[len(c.gens)-1]
	g := &generation{pid: pid, done: make(chan struct{})}
	c.gens = append(c.gens, g)
	go func() {
		<-parent.done // now g's parent is gone and g is reparented to us
		var ws syscall.WaitStatus
		for {
			_, err := syscall.Wait4(pid, &ws, 0, nil)
			if err == syscall.EINTR {
				continue
			}
			switch {
			case err != nil:
				g.code = -1
			case ws.Signaled():
				g.code = 128 + int(ws.Signal())
			default:
				g.code = ws.ExitStatus()
			}
			close(g.done)
			return
		}
	}()
	return g
}

func (c *chain) current() *generation {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gens[len(c.gens)-1]
}

// stopAll kills, by pid, every process of the chain not yet reaped (a
// pid not reaped cannot have been reused), then reaps them all.
func (c *chain) stopAll(args []string) {
	c.mu.Lock()
	gens := append([]*generation(nil), c.gens...)
	c.mu.Unlock()
	for _, g := range gens {
		select {
		case <-g.done:
		default:
			_ = syscall.Kill(g.pid, syscall.SIGKILL)
		}
	}
	for _, g := range gens {
		select {
		case <-g.done:
		case <-time.After(exitTimeout):
			c.t.Errorf("attache pid %d not reaped %v after SIGKILL", g.pid, exitTimeout)
		}
	}
	select {
	case <-c.logDone:
	case <-time.After(exitTimeout):
		c.t.Errorf("the log pipe is still open %v after every attache was killed", exitTimeout)
	}
	if c.t.Failed() {
		c.t.Logf("attache %s\nlog of every process:\n%s", strings.Join(args, " "), c.log)
	}
}

// waitLog waits for a log line (of any process) matching re and returns
// its submatches.
func (c *chain) waitLog(re *regexp.Regexp, timeout time.Duration) []string {
	c.t.Helper()
	m, err := c.log.WaitLine(re, c.logDone, timeout)
	switch {
	case errors.Is(err, testenv.ErrWriterDone):
		c.t.Fatalf("every attache exited without logging a line matching %q", re)
	case err != nil:
		c.t.Fatalf("no log line matching %q within %v", re, timeout)
	}
	return m
}

// awaitPIDFile polls the pid file until it names a pid other than not,
// and returns it.
func awaitPIDFile(t *testing.T, path string, not int, timeout time.Duration) int {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		b, err := os.ReadFile(path)
		if err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid != not {
				return pid
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid file %s: still %q (%v) after %v, want a pid other than %d", path, b, err, timeout, not)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitExit waits for g to be reaped and returns its exit code.
func (g *generation) waitExit(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-g.done:
		return g.code
	case <-time.After(timeout):
		t.Fatalf("attache pid %d still running %v after it handed over", g.pid, timeout)
		return -1
	}
}

var (
	adminListeningRE = regexp.MustCompile(`msg="admin API listening" addr=(\S+)`)
	pidRE            = regexp.MustCompile(`upgraded: pid (\d+) → (\d+)`)
)

// rollingStreams are the long-lived connections of the upgrade test: each
// worker keeps one stream open at any time, exchanging random chunks that
// must come back byte for byte, for about 300 ms (30 round trips, 10 ms
// apart), then half-closes and expects a clean end; then it opens the
// next. A stream spans upgrades: it was accepted by one process and must
// finish there, while that process drains after handing over. A broken
// stream is any error, short read, corrupted byte or stray byte.
type rollingStreams struct {
	addr   string
	cancel context.CancelFunc
	wg     sync.WaitGroup

	ok, broken atomic.Int64
	mu         sync.Mutex
	errs       []string
}

func startRollingStreams(t *testing.T, addr string, workers int) *rollingStreams {
	ctx, cancel := context.WithCancel(context.Background())
	rs := &rollingStreams{addr: addr, cancel: cancel}
	for i := range workers {
		rs.wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(i), 99))
			for ctx.Err() == nil {
				if err := rs.stream(rng); err != nil {
					rs.broken.Add(1)
					rs.mu.Lock()
					if len(rs.errs) < 10 {
						rs.errs = append(rs.errs, err.Error())
					}
					rs.mu.Unlock()
					continue
				}
				rs.ok.Add(1)
			}
		})
	}
	t.Cleanup(rs.stop)
	return rs
}

func (rs *rollingStreams) stop() {
	rs.cancel()
	rs.wg.Wait()
}

func (rs *rollingStreams) stream(rng *rand.Rand) error {
	c, err := net.DialTimeout("tcp", rs.addr, ioTimeout)
	if err != nil {
		return fmt.Errorf("stream dial: %w", err)
	}
	defer c.Close()
	out, in := make([]byte, 4096), make([]byte, 4096)
	for i := range 30 {
		chunk := out[:1+rng.IntN(len(out)-1)]
		for j := range chunk {
			chunk[j] = byte(rng.Uint32())
		}
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := c.Write(chunk); err != nil {
			return fmt.Errorf("stream round trip %d: write: %w", i, err)
		}
		if _, err := io.ReadFull(c, in[:len(chunk)]); err != nil {
			return fmt.Errorf("stream round trip %d: read: %w", i, err)
		}
		if !bytes.Equal(in[:len(chunk)], chunk) {
			return fmt.Errorf("stream round trip %d: echo corrupted", i)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return fmt.Errorf("stream half-close: %w", err)
	}
	if n, err := io.Copy(io.Discard, c); err != nil || n != 0 {
		return fmt.Errorf("stream end: %d stray bytes, %v", n, err)
	}
	return nil
}

// readyProbe asks /readyz continuously, each time on a new connection, the
// way a load balancer's health check does. Every request must be answered;
// the answer is 200, or 503 from an old process that has handed over (a
// request it accepted just before it closed its copy of the socket).
type readyProbe struct {
	cancel                 context.CancelFunc
	wg                     sync.WaitGroup
	ok, handedOver, failed atomic.Int64
	mu                     sync.Mutex
	errs                   []string
}

func startReadyProbe(t *testing.T, adminAddr string) *readyProbe {
	ctx, cancel := context.WithCancel(context.Background())
	p := &readyProbe{cancel: cancel}
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	p.wg.Go(func() {
		for ctx.Err() == nil {
			p.probe(client, "http://"+adminAddr+"/readyz")
			time.Sleep(2 * time.Millisecond)
		}
	})
	t.Cleanup(p.stop)
	return p
}

func (p *readyProbe) probe(client *http.Client, url string) {
	resp, err := client.Get(url)
	var body []byte
	if err == nil {
		body, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	switch {
	case err == nil && resp.StatusCode == http.StatusOK:
		p.ok.Add(1)
		return
	case err == nil && resp.StatusCode == http.StatusServiceUnavailable && bytes.Contains(body, []byte("handed over to a new process")):
		p.handedOver.Add(1)
		return
	case err == nil:
		err = fmt.Errorf("status %d: %s", resp.StatusCode, body)
	}
	p.failed.Add(1)
	p.mu.Lock()
	if len(p.errs) < 10 {
		p.errs = append(p.errs, err.Error())
	}
	p.mu.Unlock()
}

func (p *readyProbe) stop() {
	p.cancel()
	p.wg.Wait()
}

// TestUpgradeUnderLoad performs 20 upgrades in a row under a steady load:
// short connections opened one after another (random payloads, every byte
// checked), rolling streams that span the upgrades, and a readiness probe
// on the admin API. Half the upgrades are SIGUSR2 sent by pid, half the
// `attache upgrade --pid-file` command.
//
// What is asserted: not one connection attempt is refused or fails, not
// one byte is corrupted, not one stream breaks, every /readyz request is
// answered, and each old process exits 0 after draining, on its own (the
// streams it carries end in about 300 ms, far within --grace). "Zero
// broken streams" thus means: a stream accepted by a process before it
// hands over runs to its normal end in that process.
func TestUpgradeUnderLoad(t *testing.T) {
	t.Parallel()
	const upgrades = 20
	backend := echoServer(t)
	pidFile := filepath.Join(t.TempDir(), "attache.pid")
	c := startChain(t, attacheBin, "--pid-file", pidFile, "--grace", "60s", "--access-log=false",
		"--admin", "127.0.0.1:0", "--forward", "127.0.0.1:0="+backend)
	addr := c.waitLog(forwardingRE, startTimeout)[1]
	adminAddr := c.waitLog(adminListeningRE, startTimeout)[1]
	if pid := awaitPIDFile(t, pidFile, 0, startTimeout); pid != c.current().pid {
		t.Fatalf("pid file names %d, want the first attache's pid %d", pid, c.current().pid)
	}

	traffic := testenv.StartTraffic(t, addr, 4, 0)
	streams := startRollingStreams(t, addr, 3)
	probe := startReadyProbe(t, adminAddr)
	traffic.AwaitProgress(20)

	for i := range upgrades {
		old := c.current()
		if i%2 == 0 {
			if err := syscall.Kill(old.pid, syscall.SIGUSR2); err != nil {
				t.Fatalf("upgrade %d: SIGUSR2 to pid %d: %v", i+1, old.pid, err)
			}
		} else {
			out, errOut, code := runAttache(t, nil, "upgrade", "--pid-file", pidFile)
			m := pidRE.FindStringSubmatch(out)
			if code != 0 || m == nil || m[1] != strconv.Itoa(old.pid) {
				t.Fatalf("upgrade %d: attache upgrade: exit %d, stdout %q, stderr %q; want \"upgraded: pid %d → …\"",
					i+1, code, out, errOut, old.pid)
			}
		}
		// The new process writes the pid file once it serves every
		// listener, and only then tells the old one to let go.
		next := c.adopt(awaitPIDFile(t, pidFile, old.pid, startTimeout))
		if code := old.waitExit(t, 2*time.Minute); code != 0 {
			t.Fatalf("upgrade %d: old attache pid %d exited %d, want 0", i+1, old.pid, code)
		}
		// Traffic flows through the new process before the next round.
		traffic.AwaitProgress(20)
		if next.pid != c.current().pid {
			t.Fatalf("upgrade %d: chain out of step", i+1)
		}
	}

	res := traffic.Stop()
	streams.stop()
	probe.stop()
	t.Logf("after %d upgrades: %v; streams ok=%d broken=%d; /readyz ok=%d handed-over=%d failed=%d",
		upgrades, res, streams.ok.Load(), streams.broken.Load(), probe.ok.Load(), probe.handedOver.Load(), probe.failed.Load())
	if res.ShortFailed != 0 || res.StreamFailed != 0 {
		t.Errorf("short connections failed or corrupted: %v", res)
	}
	if res.ShortOK < upgrades*20 {
		t.Errorf("only %d short connections completed, want at least %d", res.ShortOK, upgrades*20)
	}
	if n := streams.broken.Load(); n != 0 {
		t.Errorf("%d streams broke: %q", n, streams.errs)
	}
	if streams.ok.Load() == 0 {
		t.Error("no stream completed")
	}
	if n := probe.failed.Load(); n != 0 {
		t.Errorf("%d /readyz requests failed: %q", n, probe.errs)
	}
	if probe.ok.Load() == 0 {
		t.Error("no /readyz request answered 200")
	}
	for _, line := range strings.Split(c.log.String(), "\n") {
		if strings.Contains(line, "level=ERROR") || strings.Contains(line, "level=WARN") {
			t.Errorf("unexpected log line: %s", line)
		}
	}

	last := c.current()
	if err := syscall.Kill(last.pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := last.waitExit(t, exitTimeout); code != 0 {
		t.Fatalf("last attache exited %d after SIGTERM, want 0", code)
	}
	if _, err := os.Stat(pidFile); !os.IsNotExist(err) {
		t.Fatalf("the last attache left its pid file behind: %v", err)
	}
}

// TestUpgradeFailureKeepsServing: an upgrade whose new process cannot
// start (the binary is gone) or exits before it serves (the configuration
// on disk is now broken) fails with a clear log line, and the old process
// serves on as before: same pid, same pid file, same connections. Once the
// binary and the configuration are good again, the next upgrade succeeds.
func TestUpgradeFailureKeepsServing(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	bin := filepath.Join(dir, "attache")
	copyFile(t, attacheBin, bin, 0o755)
	backend := echoServer(t)
	listen := "127.0.0.1:" + itoa(freePort(t))
	conf := filepath.Join(dir, "attache.yaml")
	// With an active health check: its goroutine runs until the old
	// process has drained, and must then stop for the process to exit.
	good := "services:\n  - name: echo\n    listen: " + listen + "\n    backends: [" + backend + "]\n" +
		"    health_check: {interval: 100ms}\n"
	writeFile(t, conf, good)
	pidFile := filepath.Join(dir, "attache.pid")
	c := startChain(t, bin, "-c", conf, "--pid-file", pidFile, "--grace", "30s")
	c.waitLog(forwardingRE, startTimeout)
	first := c.current()
	awaitPIDFile(t, pidFile, 0, startTimeout)

	held := dial(t, listen) // open across the failed upgrades
	roundTrip(t, held, "before\n")

	// The binary is gone from its path.
	if err := os.Remove(bin); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(first.pid, syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	c.waitLog(regexp.MustCompile(`level=ERROR msg="upgrade failed; this process keeps serving" pid=`+
		itoa(first.pid)+` error=".*starting .*no such file or directory`), startTimeout)
	roundTrip(t, held, "after a missing binary\n")
	roundTripOnce(t, listen, "new connection\n")

	// The binary is back, but the configuration is broken.
	copyFile(t, attacheBin, bin, 0o755)
	writeFile(t, conf, "services:\n  - name: echo\n    listn: "+listen+"\n")
	if err := syscall.Kill(first.pid, syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	c.waitLog(regexp.MustCompile(`upgrade failed; this process keeps serving.*exited before it was ready \(exit status 2\)`), startTimeout)
	if !strings.Contains(c.log.String(), "listn: unknown key") {
		t.Errorf("the new process's own error is not in the log")
	}
	roundTrip(t, held, "after a broken config\n")
	roundTripOnce(t, listen, "new connection\n")
	if first.exitedNow() {
		t.Fatalf("the old attache exited (code %d) after a failed upgrade", first.code)
	}
	if pid := awaitPIDFile(t, pidFile, 0, startTimeout); pid != first.pid {
		t.Fatalf("pid file names %d after the failed upgrades, want %d", pid, first.pid)
	}

	// All good again: the upgrade goes through; the held connection
	// finishes in the old process.
	writeFile(t, conf, good)
	out, errOut, code := runAttache(t, nil, "upgrade", "--pid-file", pidFile)
	if code != 0 || !pidRE.MatchString(out) {
		t.Fatalf("attache upgrade: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	next := c.adopt(awaitPIDFile(t, pidFile, first.pid, startTimeout))
	roundTripOnce(t, listen, "served by the new process\n")
	roundTrip(t, held, "still served by the old process\n")
	held.Close()
	if code := first.waitExit(t, exitTimeout); code != 0 {
		t.Fatalf("old attache exited %d, want 0", code)
	}
	if err := syscall.Kill(next.pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := next.waitExit(t, exitTimeout); code != 0 {
		t.Fatalf("new attache exited %d after SIGTERM, want 0", code)
	}
}

// roundTripOnce checks one echo on a new connection and closes it.
func roundTripOnce(t *testing.T, addr, msg string) {
	t.Helper()
	c := dial(t, addr)
	defer c.Close()
	roundTrip(t, c, msg)
}

func (g *generation) exitedNow() bool {
	select {
	case <-g.done:
		return true
	default:
		return false
	}
}

// TestUpgradeUnixListener: a Unix socket listener is handed over like a TCP
// one. The old process must not remove the socket file when it lets go
// (the new one serves the same socket through it), and the last process
// removes it when it stops.
func TestUpgradeUnixListener(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	sock := filepath.Join(dir, "app.sock")
	pidFile := filepath.Join(dir, "attache.pid")
	backend := echoServer(t)
	c := startChain(t, attacheBin, "--pid-file", pidFile, "--grace", "30s", "--forward", "unix://"+sock+"="+backend)
	c.waitLog(forwardingRE, startTimeout)
	first := c.current()
	awaitPIDFile(t, pidFile, 0, startTimeout)
	held := dialUnix(t, sock)
	roundTrip(t, held, "before\n")

	if err := syscall.Kill(first.pid, syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	next := c.adopt(awaitPIDFile(t, pidFile, first.pid, startTimeout))
	roundTrip(t, held, "old process, draining\n")
	held.Close()
	if code := first.waitExit(t, exitTimeout); code != 0 {
		t.Fatalf("old attache exited %d, want 0", code)
	}
	// The held connection's access line, buffered in the old process,
	// was written out before it exited (no other connection has closed).
	c.waitLog(regexp.MustCompile(`msg="connection closed" log=access `), exitTimeout)
	// The socket file outlived the old process, and it is the new one's.
	fresh := dialUnix(t, sock)
	roundTrip(t, fresh, "new process\n")
	fresh.Close()

	if err := syscall.Kill(next.pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := next.waitExit(t, exitTimeout); code != 0 {
		t.Fatalf("new attache exited %d after SIGTERM, want 0", code)
	}
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Fatalf("socket file %s left behind by the last attache: %v", sock, err)
	}
}

func dialUnix(t *testing.T, path string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("unix", path, ioTimeout)
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
