package listen

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The tests start this very test binary as the new process of an upgrade:
// TestMain runs the helper named by helperEnv instead of the tests.
const helperEnv = "LISTEN_TEST_HELPER"

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(helper(mode))
	}
	os.Exit(m.Run())
}

// helper is the new process. "serve" takes the service and admin sockets,
// reports ready and answers each connection with one line saying who it is;
// "exit" fails before it is ready; "hang" never reports ready.
func helper(mode string) int {
	switch mode {
	case "exit":
		fmt.Fprintln(os.Stderr, "helper: failing on purpose")
		return 3
	case "hang":
		time.Sleep(2 * time.Minute)
		return 0
	}
	in, err := FromEnviron(os.Environ())
	if err != nil || in == nil {
		fmt.Fprintf(os.Stderr, "helper: FromEnviron: %v (nil: %v)\n", err, in == nil)
		return 2
	}
	ctx := context.Background()
	svc, err := in.Listen(ctx, net.ListenConfig{}, KindService, "tcp4", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 2
	}
	// The admin socket gets a socket option, which the parent can see on
	// its own duplicate of the same socket.
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1) })
		return errors.Join(err, serr)
	}}
	adm, err := in.Listen(ctx, lc, KindAdmin, "tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 2
	}
	unused, err := in.Ready()
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 2
	}
	answer := func(kind string, ln net.Listener) {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%s pid=%d parent=%d unused=%s\n", kind, os.Getpid(), in.Parent(), strings.Join(unused, " "))
			c.Close()
		}
	}
	go answer(KindAdmin, adm)
	go answer(KindService, svc)
	time.Sleep(2 * time.Minute) // the test kills it long before
	return 0
}

// upgrader starts this test binary in the given helper mode.
func upgrader(mode string) *Upgrader {
	return &Upgrader{
		Args: []string{os.Args[0], "-test.run=^$"},
		// A stale variable of an earlier upgrade must not reach the child.
		Env: append(os.Environ(), helperEnv+"="+mode, envFDs+"=service:tcp:stale=99"),
	}
}

// reap kills a helper that took over, by its pid, when the test ends.
func reap(t *testing.T, pid int) {
	t.Cleanup(func() {
		_ = syscall.Kill(pid, syscall.SIGKILL)
		var ws syscall.WaitStatus
		_, _ = syscall.Wait4(pid, &ws, 0, nil)
	})
}

func listenTCP(t *testing.T, network string) *net.TCPListener {
	t.Helper()
	ln, err := net.Listen(network, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener)
}

func dup(t *testing.T, ln *net.TCPListener) *os.File {
	t.Helper()
	f, err := Dup(ln)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func readLine(t *testing.T, c net.Conn) string {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("read from %s: %v (got %q)", c.RemoteAddr(), err, line)
	}
	return strings.TrimSpace(line)
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func nonBlocking(t *testing.T, ln *net.TCPListener) bool {
	t.Helper()
	rc, err := ln.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var flags int
	var ferr error
	if err := rc.Control(func(fd uintptr) { flags, ferr = unix.FcntlInt(fd, unix.F_GETFL, 0) }); err != nil || ferr != nil {
		t.Fatalf("F_GETFL: %v %v", err, ferr)
	}
	return flags&unix.O_NONBLOCK != 0
}

// TestUpgradeHandsOverSockets runs a real hand-over: a connection queued on
// the old socket before the new process even starts, and one made after the
// old process let go, are both answered by the new process on the same
// ports; a socket the new process does not want is reported unused.
func TestUpgradeHandsOverSockets(t *testing.T) {
	svc, adm, extra := listenTCP(t, "tcp4"), listenTCP(t, "tcp"), listenTCP(t, "tcp4")
	socks := []Socket{
		{Kind: KindService, Network: "tcp4", Addr: "127.0.0.1:0", File: dup(t, svc)},
		{Kind: KindAdmin, Network: "tcp", Addr: "127.0.0.1:0", File: dup(t, adm)},
		{Kind: KindService, Network: "tcp4", Addr: "127.0.0.1:6379", File: dup(t, extra)},
	}
	// Queued in the kernel before the hand-over; nobody in this process
	// accepts it.
	early := dial(t, svc.Addr().String())

	pid, err := upgrader("serve").Upgrade(t.Context(), socks)
	if pid != 0 {
		reap(t, pid)
	}
	if err != nil {
		t.Fatalf("Upgrade: %v", err)
	}
	if !nonBlocking(t, svc) || !nonBlocking(t, adm) {
		t.Fatal("handing the sockets over switched the old listeners to blocking mode")
	}
	// The child set SO_KEEPALIVE on its admin socket through Listen's
	// Control: the option is on the one socket both processes share.
	rc, _ := adm.SyscallConn()
	var ka int
	_ = rc.Control(func(fd uintptr) { ka, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_KEEPALIVE) })
	if ka != 1 {
		t.Fatal("the new process's ListenConfig.Control did not reach the inherited admin socket")
	}
	svcAddr, admAddr := svc.Addr().String(), adm.Addr().String()
	svc.Close()
	adm.Close()
	extra.Close()

	want := fmt.Sprintf("pid=%d parent=%d unused=service:tcp4:127.0.0.1:6379", pid, os.Getpid())
	if got := readLine(t, early); got != "service "+want {
		t.Fatalf("connection queued before the upgrade: got %q, want %q", got, "service "+want)
	}
	if got := readLine(t, dial(t, svcAddr)); got != "service "+want {
		t.Fatalf("service port after the upgrade: got %q, want %q", got, "service "+want)
	}
	if got := readLine(t, dial(t, admAddr)); got != "admin "+want {
		t.Fatalf("admin port after the upgrade: got %q, want %q", got, "admin "+want)
	}
}

// TestUpgradeFailures: a new process that exits or hangs is stopped, the
// error says which, and the old listener is untouched.
func TestUpgradeFailures(t *testing.T) {
	tests := []struct {
		mode    string
		timeout time.Duration
		want    []string
	}{
		{mode: "exit", want: []string{"exited before it was ready", "exit status 3"}},
		{mode: "hang", timeout: 300 * time.Millisecond, want: []string{"did not report ready within 300ms", "stopped it"}},
	}
	for _, tt := range tests {
		t.Run(tt.mode, func(t *testing.T) {
			ln := listenTCP(t, "tcp4")
			u := upgrader(tt.mode)
			u.Timeout = tt.timeout
			pid, err := u.Upgrade(t.Context(), []Socket{{Kind: KindService, Network: "tcp4", Addr: "127.0.0.1:0", File: dup(t, ln)}})
			if err == nil {
				reap(t, pid)
				t.Fatal("Upgrade succeeded")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if !strings.Contains(err.Error(), "pid "+strconv.Itoa(pid)) {
				t.Errorf("error %q does not name the new process's pid %d", err, pid)
			}
			// Upgrade waited for it: the pid is gone.
			if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
				t.Errorf("new process %d still exists after the failed upgrade: %v", pid, err)
			}
			c := dial(t, ln.Addr().String())
			ln.SetDeadline(time.Now().Add(30 * time.Second))
			sc, err := ln.Accept()
			if err != nil {
				t.Fatalf("the old listener stopped working: %v", err)
			}
			sc.Close()
			c.Close()
		})
	}
}

// TestUpgradeOneAtATime: a second upgrade while one is under way is
// refused, and cancelling the first stops its process.
func TestUpgradeOneAtATime(t *testing.T) {
	u := upgrader("hang")
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() {
		_, err := u.Upgrade(ctx, nil)
		errc <- err
	}()
	deadline := time.Now().Add(30 * time.Second)
	for !u.busy.Load() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if _, err := u.Upgrade(t.Context(), nil); !errors.Is(err, ErrBusy) {
		t.Fatalf("second Upgrade: got %v, want ErrBusy", err)
	}
	cancel()
	if err := <-errc; err == nil || !strings.Contains(err.Error(), "abandoned") {
		t.Fatalf("cancelled Upgrade: got %v, want an error saying it was abandoned", err)
	}
}

func TestUpgradeRejectsUnencodableSocket(t *testing.T) {
	ln := listenTCP(t, "tcp4")
	_, err := (&Upgrader{Executable: func() (string, error) { t.Fatal("started a process"); return "", nil }}).
		Upgrade(t.Context(), []Socket{{Kind: KindService, Network: "tcp4", Addr: "a,b:1", File: dup(t, ln)}})
	if err == nil || !strings.Contains(err.Error(), "must not contain") {
		t.Fatalf("got %v, want an error about the address", err)
	}
}

// ownedFD returns a duplicate descriptor of f, for FromEnviron to take
// over (it closes what it rejects).
func ownedFD(t *testing.T, f syscall.Conn) string {
	t.Helper()
	rc, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var fd int
	var derr error
	if err := rc.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil || derr != nil {
		t.Fatal(err, derr)
	}
	return strconv.Itoa(fd)
}

func TestFromEnviron(t *testing.T) {
	if in, err := FromEnviron([]string{"PATH=/bin", "ATTACHE_UPGRADE_X=1"}); in != nil || err != nil {
		t.Fatalf("without hand-over variables: got %v, %v; want nil, nil", in, err)
	}

	file, err := os.CreateTemp(t.TempDir(), "not-a-socket")
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	ln := listenTCP(t, "tcp4")
	conn := dial(t, ln.Addr().String()).(*net.TCPConn)

	tests := []struct {
		name string
		env  []string
		want string
	}{
		{"fds without ready", []string{envFDs + "="}, "ATTACHE_UPGRADE_READY_FD is not"},
		{"bad ready fd", []string{envReady + "=x"}, `ATTACHE_UPGRADE_READY_FD="x": want a file descriptor number`},
		{"stdio as ready fd", []string{envReady + "=1"}, "want a file descriptor number (3 or more)"},
		{"malformed entry", []string{envReady + "=" + ownedFD(t, file), envFDs + "=service:tcp=5"}, `entry "service:tcp=5": want KIND:NETWORK:ADDR=FD`},
		{"bad fd", []string{envReady + "=" + ownedFD(t, file), envFDs + "=service:tcp:a:1=five"}, `want a file descriptor number (3 or more), got "five"`},
		{"not a socket", []string{envReady + "=" + ownedFD(t, file), envFDs + "=service:tcp:a:1=" + ownedFD(t, file)}, "is not a listening socket"},
		{"connected socket", []string{envReady + "=" + ownedFD(t, file), envFDs + "=service:tcp:a:1=" + ownedFD(t, conn)}, "is not a listening socket"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in, err := FromEnviron(tt.env)
			if err == nil {
				in.Close()
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q does not contain %q", err, tt.want)
			}
		})
	}
}

// TestInheritedInProcess: sockets are handed out by kind, network and
// configured address, each once, in order; whatever is left is closed by
// Ready and named.
func TestInheritedInProcess(t *testing.T) {
	a, b, adm := listenTCP(t, "tcp4"), listenTCP(t, "tcp4"), listenTCP(t, "tcp4")
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	env := []string{
		envReady + "=" + ownedFD(t, w),
		envFDs + "=service:tcp4:127.0.0.1:0=" + ownedFD(t, a) + ",service:tcp4:127.0.0.1:0=" + ownedFD(t, b) +
			",admin:tcp4:127.0.0.1:0=" + ownedFD(t, adm),
		envParent + "=42",
	}
	in, err := FromEnviron(env)
	if err != nil {
		t.Fatal(err)
	}
	if in.Parent() != 42 {
		t.Fatalf("Parent: got %d, want 42", in.Parent())
	}
	ctx := t.Context()
	for i, want := range []string{a.Addr().String(), b.Addr().String()} {
		ln, err := in.Listen(ctx, net.ListenConfig{}, KindService, "tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		if got := ln.Addr().String(); got != want {
			t.Fatalf("service socket %d: got %s, want the inherited %s", i, got, want)
		}
	}
	// None left of that name: a fresh socket.
	ln, err := in.Listen(ctx, net.ListenConfig{}, KindService, "tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	if got := ln.Addr().String(); got == a.Addr().String() || got == b.Addr().String() || got == adm.Addr().String() {
		t.Fatalf("third service socket reused an inherited one: %s", got)
	}
	unused, err := in.Ready()
	if err != nil {
		t.Fatal(err)
	}
	if len(unused) != 1 || unused[0] != "admin:tcp4:127.0.0.1:0" {
		t.Fatalf("unused: got %q, want the admin socket", unused)
	}
	_ = r.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 1)
	if n, err := r.Read(buf); n != 1 {
		t.Fatalf("Ready wrote nothing on the pipe: %v", err)
	}
	if _, err := in.Ready(); err != nil {
		t.Fatalf("second Ready: %v", err)
	}

	var none *Inherited
	fresh, err := none.Listen(ctx, net.ListenConfig{}, KindService, "tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("nil Inherited: %v", err)
	}
	fresh.Close()
	if u, err := none.Ready(); u != nil || err != nil {
		t.Fatalf("nil Inherited Ready: %v %v", u, err)
	}
}

// TestInheritedUnixSocketFile: the socket file of an inherited Unix
// listener stays while the old process may still need it (the new one
// closes before Ready), and belongs to the new process from Ready on.
func TestInheritedUnixSocketFile(t *testing.T) {
	path := t.TempDir() + "/s.sock"
	old, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	exists := func() bool { _, err := os.Stat(path); return err == nil }
	handOver := func() *Inherited {
		t.Helper()
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.Close(); w.Close() })
		in, err := FromEnviron([]string{envReady + "=" + ownedFD(t, w),
			envFDs + "=service:unix:" + path + "=" + ownedFD(t, old.(*net.UnixListener))})
		if err != nil {
			t.Fatal(err)
		}
		return in
	}

	// A new process that fails before Ready.
	in := handOver()
	ln := in.Take(KindService, "unix", path)
	if ln == nil {
		t.Fatal("no inherited Unix listener")
	}
	ln.Close()
	in.Close()
	if !exists() {
		t.Fatal("a new process that never took over removed the old one's socket file")
	}

	// One that takes over: the old process lets go without removing the
	// file, the new one removes it when it closes.
	in = handOver()
	ln = in.Take(KindService, "unix", path)
	if _, err := in.Ready(); err != nil {
		t.Fatal(err)
	}
	old.(*net.UnixListener).SetUnlinkOnClose(false)
	old.Close()
	if !exists() {
		t.Fatal("socket file gone after the old process let go")
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("dial the handed-over socket: %v", err)
	}
	c.Close()
	ln.Close()
	if exists() {
		t.Fatal("the new process left its socket file behind on close")
	}
}
