package e2e

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/attache/attache/internal/testenv"
	"golang.org/x/sys/unix"
)

// notifyMsg is one datagram on the notify socket, with the pid the kernel
// vouches sent it (SCM_CREDENTIALS, as systemd reads it).
type notifyMsg struct {
	pid  int
	vars map[string]string
	raw  string
}

// notifySocket is a real unixgram socket standing where systemd's notify
// socket stands; every datagram is read, with its sender's credentials.
type notifySocket struct {
	path string
	msgs chan notifyMsg
}

func listenNotify(t *testing.T) *notifySocket {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatalf("notify socket: %v", err)
	}
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1) }); err != nil || serr != nil {
		t.Fatalf("SO_PASSCRED: %v %v", err, serr)
	}
	ns := &notifySocket{path: path, msgs: make(chan notifyMsg, 100)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf, oob := make([]byte, 4096), make([]byte, 1024)
		for {
			n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
			if err != nil {
				return // closed at cleanup
			}
			m := notifyMsg{pid: -1, vars: map[string]string{}, raw: string(buf[:n])}
			if scms, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
				for _, scm := range scms {
					if cred, err := unix.ParseUnixCredentials(&scm); err == nil {
						m.pid = int(cred.Pid)
					}
				}
			}
			for line := range strings.SplitSeq(m.raw, "\n") {
				k, v, _ := strings.Cut(line, "=")
				m.vars[k] = v
			}
			ns.msgs <- m
		}
	}()
	t.Cleanup(func() {
		c.Close()
		<-done
	})
	return ns
}

// next returns the next message, failing the test if none comes.
func (ns *notifySocket) next(t *testing.T) notifyMsg {
	t.Helper()
	select {
	case m := <-ns.msgs:
		return m
	case <-time.After(startTimeout):
		t.Fatalf("no notify message within %v", startTimeout)
		return notifyMsg{}
	}
}

// TestSystemdNotify runs the binary as a Type=notify service would run:
// NOTIFY_SOCKET names a real unixgram socket. READY=1 comes first, and
// when it comes the listener already answers; SIGHUP brings RELOADING=1
// (with MONOTONIC_USEC) then READY=1; an upgrade's new process says
// MAINPID=<its pid> itself (the kernel's credentials say who sent it)
// while the old process sends nothing more (no STOPPING=1, which systemd
// would take for the service's stop); SIGTERM brings STOPPING=1.
func TestSystemdNotify(t *testing.T) {
	t.Parallel()
	ns := listenNotify(t)
	backend := echoServer(t)
	pidFile := filepath.Join(t.TempDir(), "attache.pid")
	// env(1) execs attache in its own process, with NOTIFY_SOCKET set
	// (startChain gives an empty environment).
	c := startChain(t, "/usr/bin/env", "NOTIFY_SOCKET="+ns.path, attacheBin,
		"--pid-file", pidFile, "--grace", "10s", "--forward", "127.0.0.1:0="+backend)
	first := c.current()

	ready := ns.next(t)
	if ready.vars["READY"] != "1" || ready.vars["STATUS"] != "serving 1 service" || ready.pid != first.pid {
		t.Fatalf("first notify message %q from pid %d; want READY=1 and STATUS=serving 1 service from pid %d", ready.raw, ready.pid, first.pid)
	}
	// READY=1 means serving: the listener answers now.
	addr := c.waitLog(forwardingRE, startTimeout)[1]
	roundTripOnce(t, addr, "after READY=1\n")

	if err := syscall.Kill(first.pid, syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	reloading := ns.next(t)
	if _, err := strconv.ParseUint(reloading.vars["MONOTONIC_USEC"], 10, 64); reloading.vars["RELOADING"] != "1" || err != nil {
		t.Fatalf("after SIGHUP: %q; want RELOADING=1 and MONOTONIC_USEC=<number>", reloading.raw)
	}
	if m := ns.next(t); m.vars["READY"] != "1" || m.vars["STATUS"] != "serving 1 service" {
		t.Fatalf("after the reload: %q; want READY=1 with the status", m.raw)
	}

	if err := syscall.Kill(first.pid, syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	mainPID := ns.next(t)
	newPID, err := strconv.Atoi(mainPID.vars["MAINPID"])
	if err != nil || newPID == first.pid || mainPID.pid != newPID || mainPID.vars["READY"] != "1" {
		t.Fatalf("after SIGUSR2: %q from pid %d; want MAINPID=<the new pid> and READY=1, sent by the new process (old pid %d)",
			mainPID.raw, mainPID.pid, first.pid)
	}
	if got := awaitPIDFile(t, pidFile, first.pid, startTimeout); got != newPID {
		t.Fatalf("pid file names %d, MAINPID said %d", got, newPID)
	}
	next := c.adopt(newPID)
	if code := first.waitExit(t, exitTimeout); code != 0 {
		t.Fatalf("old attache exited %d after the hand-over, want 0", code)
	}
	roundTripOnce(t, addr, "new process\n")

	if err := syscall.Kill(next.pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// The old process's sends are synchronous and it has exited: anything
	// it sent while draining is queued on the socket ahead of this, so the
	// next message being the new process's STOPPING=1 proves it sent none.
	stopping := ns.next(t)
	if stopping.vars["STOPPING"] != "1" || stopping.pid != newPID {
		t.Fatalf("after SIGTERM: %q from pid %d; want STOPPING=1 from pid %d (the old process, %d, must send nothing after the hand-over)",
			stopping.raw, stopping.pid, newPID, first.pid)
	}
	if code := next.waitExit(t, exitTimeout); code != 0 {
		t.Fatalf("attache exited %d after SIGTERM, want 0", code)
	}
}

// activator is the path of systemd-socket-activate (Debian package
// systemd; scripts/deps.sh installs it).
func activator(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		t.Fatalf("systemd-socket-activate not found (Debian package systemd; run scripts/deps.sh): %v", err)
	}
	return bin
}

// listeningInodes returns the inodes of the sockets listening on port in
// the network namespace of process pid (/proc/PID/net/{tcp,tcp6}; or
// bound, for udp), as "socket:[INODE]" strings. Not /proc/net, which is
// the namespace of this test process's main thread: a network-namespace
// test running in the same process may have moved it.
func listeningInodes(t *testing.T, proto string, port, pid int) []string {
	t.Helper()
	var out []string
	hexPort := fmt.Sprintf(":%04X", port)
	dir := fmt.Sprintf("/proc/%d/net/", pid)
	for _, file := range []string{dir + proto, dir + proto + "6"} {
		f, err := os.Open(file)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			if len(fields) < 10 || !strings.HasSuffix(fields[1], hexPort) {
				continue
			}
			if proto == "tcp" && fields[3] != "0A" { // TCP_LISTEN
				continue
			}
			out = append(out, "socket:["+fields[9]+"]")
		}
		f.Close()
	}
	return out
}

// startActivated runs systemd-socket-activate with args (its options,
// then attache's command line) and waits until it listens on addr, the last
// address it binds. It returns the chain, the pid (the activator's, then
// attache's after exec) and the activator's socket on descriptor 3.
func startActivated(t *testing.T, addr string, args ...string) (c *chain, pid int, passed string) {
	t.Helper()
	c = startChain(t, activator(t), args...)
	c.waitLog(regexp.MustCompile(`Listening on `+regexp.QuoteMeta(addr)), startTimeout)
	pid = c.current().pid
	return c, pid, activatorSocket(t, pid)
}

// terminate sends SIGTERM and expects a clean exit.
func terminate(t *testing.T, g *generation) {
	t.Helper()
	if err := syscall.Kill(g.pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := g.waitExit(t, exitTimeout); code != 0 {
		t.Fatalf("attache exited %d after SIGTERM, want 0", code)
	}
}

// activatorSocket is the inode ("socket:[N]") of the socket the activator
// bound, read from its descriptor 3 before it execs attache.
func activatorSocket(t *testing.T, pid int) string {
	t.Helper()
	fd3, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/3", pid))
	if err != nil || !strings.HasPrefix(fd3, "socket:") {
		t.Fatalf("the activator's fd 3: %q, %v; want its listening socket", fd3, err)
	}
	return fd3
}

// checkOnlyPassedSocket checks that the one socket on the port is the one
// the activator bound, and that attache (same pid, after exec) holds it:
// attache did not bind the port itself.
func checkOnlyPassedSocket(t *testing.T, proto string, port, pid int, passed string) {
	t.Helper()
	if got := listeningInodes(t, proto, port, pid); len(got) != 1 || got[0] != passed {
		t.Fatalf("%s sockets on port %d: %v; want only the activator's %s", proto, port, got, passed)
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		if link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); err == nil && link == passed {
			return
		}
	}
	t.Fatalf("attache (pid %d) holds no descriptor of the passed socket %s", pid, passed)
}

// TestSystemdSocketActivation runs attache under the real
// systemd-socket-activate, which binds the ports, waits for the first
// client and then execs attache in its own process with the sockets as
// descriptors 3 and on. The first client (queued before attache even
// started) and the next ones are forwarded to the backend, through the
// socket systemd-socket-activate made: the only socket listening on the
// port is the one the activator bound, now held by attache.
func TestSystemdSocketActivation(t *testing.T) {
	t.Parallel()
	backend := echoServer(t)
	port := testenv.FreePort(t, "127.0.0.1")
	addr := "127.0.0.1:" + itoa(port)
	c, pid, passed := startActivated(t, addr, "-l", addr, "--fdname=web", attacheBin, "--forward", addr+"="+backend)

	first := dial(t, addr) // wakes the activator, which execs attache
	roundTrip(t, first, "queued before attache started\n")
	c.waitLog(regexp.MustCompile(`msg="socket activation: serving the sockets systemd passed" sockets="fd 3 \(web\)"`), startTimeout)
	roundTripOnce(t, addr, "second client\n")

	checkOnlyPassedSocket(t, "tcp", port, pid, passed)
	first.Close()
	terminate(t, c.current())
}

// TestSystemdSocketActivationUDP: a UDP service takes a passed datagram
// socket; the datagram that woke the activator is forwarded too.
func TestSystemdSocketActivationUDP(t *testing.T) {
	t.Parallel()
	backend := testenv.StartUDPEcho(t, "127.0.0.1:0", "echo:")
	port := testenv.FreeTCPUDPPort(t)
	addr := "127.0.0.1:" + itoa(port)
	c, pid, passed := startActivated(t, addr, "-d", "-l", addr, attacheBin, "--forward", addr+"/udp="+backend.Addr)

	u, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if _, err := u.Write([]byte("wake")); err != nil {
		t.Fatal(err)
	}
	_ = u.SetReadDeadline(time.Now().Add(ioTimeout))
	buf := make([]byte, 64)
	n, err := u.Read(buf)
	if err != nil || string(buf[:n]) != "echo:wake" {
		t.Fatalf("reply to the datagram that started attache: %q, %v; want echo:wake", buf[:n], err)
	}
	c.waitLog(regexp.MustCompile(`msg=forwarding .*protocol=udp`), startTimeout)
	checkOnlyPassedSocket(t, "udp", port, pid, passed)
	terminate(t, c.current())
}

// TestSystemdSocketActivationUnmatched: a passed socket that no configured
// listener wants stops attache with exit 2 and a message naming it.
func TestSystemdSocketActivationUnmatched(t *testing.T) {
	t.Parallel()
	backend := echoServer(t)
	ports := testenv.FreePorts(t, "127.0.0.1", 2)
	served, stray := "127.0.0.1:"+itoa(ports[0]), "127.0.0.1:"+itoa(ports[1])
	c, _, _ := startActivated(t, stray, "-l", served, "-l", stray, "--fdname=web:stray", attacheBin, "--forward", served+"="+backend)
	// The connection wakes the activator. attache then exits at once,
	// closing the listening socket with the connection still queued on
	// it, which resets it: the dial itself may see that reset.
	conn, err := net.DialTimeout("tcp", served, ioTimeout)
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("dial %s: %v", served, err)
	}
	if code := c.current().waitExit(t, exitTimeout); code != 2 {
		t.Fatalf("attache exited %d with a stray passed socket, want 2", code)
	}
	if conn != nil {
		conn.Close()
	}
	<-c.logDone
	log := c.log.String()
	want := "attache: socket activation: fd 4 (stray), a TCP socket on " + stray + ", matches no configured listener"
	if !strings.Contains(log, want) {
		t.Fatalf("log lacks %q:\n%s", want, log)
	}
}
