package torture

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/attache/attache/internal/testenv"
)

// Topologies: what stands between the torture client and the torture
// backend. Every hop is a real attache process started from the built
// binary, on the event-loop engine (the default) or the goroutine one
// (ATTACHE_LOOPS=-1), optionally with one-page splice pipes
// (ATTACHE_PIPE_SIZE=4096); hops chain by --forward. Special hops: a link
// (two ambassadors talking mutual TLS, certificates from `attache certs`),
// a listener reading the PROXY protocol (the client sends the header), a
// Unix-socket backend, and a backend that delays its accepts. Fronts that
// splice or copy (HAProxy with option splice-auto, socat) can stand before
// the first hop.

// engine is a hop's data path.
type engine uint8

const (
	loops      engine = iota // the event-loop engine, attache's default
	goroutines               // ATTACHE_LOOPS=-1
)

func (e engine) String() string {
	if e == loops {
		return "loops"
	}
	return "goroutines"
}

// hop is one attache in a chain.
type hop struct {
	engine
	smallPipe bool // ATTACHE_PIPE_SIZE=4096: splice pipes of one page
}

func (h hop) env() []string {
	env := []string{"GOTRACEBACK=all"} // SIGQUIT dumps every goroutine
	if h.engine == goroutines {
		env = append(env, "ATTACHE_LOOPS=-1")
	}
	if h.smallPipe {
		env = append(env, "ATTACHE_PIPE_SIZE=4096")
	}
	return env
}

// topology is one path from the client to the backend.
type topology struct {
	name        string
	env         *runEnv
	entry       string // the address the client dials
	proxyHeader bool   // the client starts with a PROXY protocol header
	// resetsAsFIN: a front that passes a peer's reset on as a FIN stands
	// before attache (socat always; HAProxy without option nolinger, which
	// would reset clean ends too), or the backend is a Unix socket (which
	// has no reset), so a reset may reach the other end as a clean EOF
	// through no fault of attache's.
	resetsAsFIN bool
	// resetOvertakes: a client's reset may overtake the bytes it sent
	// before it, header included, so the backend sees a connection that
	// ends in a reset before any byte. A multiplexed link does this: the
	// link server drops a stream's unread bytes when the stream is reset
	// (yamux), where a TCP receiver reads its queued bytes before the
	// reset. Such a connection is accepted against a backend connection
	// that was seen ending that way (runEnv.orphanResets), or when no
	// backend connection comes at all: the proxy's kernel dropped the
	// client's unread bytes when the reset arrived, so the proxy read
	// nothing and dialled nothing (counted as dropped).
	resetOvertakes bool
	procs          []*proc
	ports          []int       // the listening ports of its proxies, for ss
	dumped         atomic.Bool // its processes were SIGQUIT for their stacks
	stats          counters
}

// proc is one attache process.
type proc struct {
	name   string
	cmd    *exec.Cmd
	stderr testenv.LogBuffer
	done   chan struct{}
}

var (
	forwardingRE = regexp.MustCompile(`msg=forwarding .*\blisten=(\S+)`)
	linkRE       = regexp.MustCompile(`msg="link server listening" addr=(\S+)`)
)

// startAttache runs the binary with exactly env (nothing inherited) and
// args, and waits until it logs a line matching ready; it returns the
// process and the line's submatch. The process is killed by its PID when
// the test ends.
func (env *runEnv) startAttache(name string, procEnv []string, ready *regexp.Regexp, args ...string) (*proc, string) {
	t := env.t
	t.Helper()
	p := &proc{name: name, done: make(chan struct{})}
	p.cmd = exec.Command(env.bin, append([]string{"--access-log=false"}, args...)...)
	p.cmd.Env = procEnv
	p.cmd.Stderr = &p.stderr
	p.cmd.Stdout = &p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start attache (%s): %v", name, err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		if !p.exited() {
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	var found string
	testenv.WaitFor(t, name+" serving", func() bool {
		if m := ready.FindStringSubmatch(p.stderr.String()); m != nil {
			found = m[1]
			return true
		}
		if p.exited() {
			t.Fatalf("attache (%s) exited before serving:\n%s", name, p.stderr.String())
		}
		return false
	})
	return p, found
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// quit sends SIGQUIT, which makes the Go runtime print every goroutine's
// stack and exit, and returns that dump.
func (p *proc) quit() string {
	if p.exited() {
		return "(already exited)\n" + p.stderr.String()
	}
	_ = p.cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	out := p.stderr.String()
	if i := strings.Index(out, "SIGQUIT"); i >= 0 {
		return out[i:]
	}
	return out
}

func portOf(addr string) int {
	_, port, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(port)
	return n
}

// chain starts hops in front of backend, the last hop first, and returns
// the topology whose entry is the first hop.
func (env *runEnv) chain(name string, backend string, hops ...hop) *topology {
	topo := &topology{name: name, env: env}
	addr := backend
	for i := len(hops) - 1; i >= 0; i-- {
		p, listen := env.startAttache(fmt.Sprintf("%s hop %d", name, i+1), hops[i].env(), forwardingRE,
			"--forward", "127.0.0.1:0="+addr)
		topo.procs = append([]*proc{p}, topo.procs...)
		topo.ports = append(topo.ports, portOf(listen))
		addr = listen
	}
	topo.entry = addr
	return topo
}

// link starts a link server (offering the service "torture" to host-a)
// before backend, and a client-side ambassador (host-a) that reaches it
// over mutual TLS, its connections multiplexed on pooled TLS connections
// or, with mode "per_connection", each on its own.
func (env *runEnv) link(name string, backend string, h hop, mode string) *topology {
	pki := env.certs()
	files := func(host string) string {
		return fmt.Sprintf("  cert: %s\n  key: %s\n  ca: %s\n", filepath.Join(pki, host+".crt"),
			filepath.Join(pki, host+".key"), filepath.Join(pki, "fleet-ca.crt"))
	}
	server := env.writeConfig(name+"-server.yaml", fmt.Sprintf(`link:
  listen: 127.0.0.1:0
%s  offer:
    torture: [host-a]
services:
  - name: torture
    listen: 127.0.0.1:0
    backends: [%s]
`, files("host-b"), backend))
	ps, linkAddr := env.startAttache(name+" link server", h.env(), linkRE, "-c", server)
	client := env.writeConfig(name+"-client.yaml", fmt.Sprintf(`link:
%s  mode: %s
services:
  - name: torture
    listen: 127.0.0.1:0
    backends: ["attache://%s/torture"]
`, files("host-a"), mode, linkAddr))
	pc, entry := env.startAttache(name+" link client", h.env(), forwardingRE, "-c", client)
	return &topology{name: name, env: env, entry: entry, procs: []*proc{pc, ps},
		ports: []int{portOf(entry), portOf(linkAddr)}, resetOvertakes: mode == "multiplexed"}
}

// proxyProtocol starts an attache whose listener requires a PROXY header
// (v1 or v2; the client sends one of them at random) from 127.0.0.1. The
// header's timeout is the connection deadline: the client sends it at
// once, but a loaded machine may not run the client for seconds.
func (env *runEnv) proxyProtocol(name string, backend string, h hop) *topology {
	cfg := env.writeConfig(name+".yaml", fmt.Sprintf(`services:
  - name: torture
    listen: 127.0.0.1:0
    accept_proxy: {trusted: [127.0.0.1], timeout: %s}
    backends: [%s]
`, env.prof.deadline, backend))
	p, entry := env.startAttache(name, h.env(), forwardingRE, "-c", cfg)
	return &topology{name: name, env: env, entry: entry, proxyHeader: true, procs: []*proc{p},
		ports: []int{portOf(entry)}}
}

// resetsAsFIN marks topo as one where a reset may arrive as a FIN.
func resetsAsFIN(topo *topology) *topology {
	topo.resetsAsFIN = true
	return topo
}

// haproxyFront puts HAProxy, splicing both ways (option splice-auto),
// before topo's entry.
func (env *runEnv) haproxyFront(topo *topology) *topology {
	port := testenv.FreePort(env.t, "127.0.0.1")
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	testenv.HAProxy(env.t, fmt.Sprintf(`listen torture
    bind %s
    option splice-auto
    timeout client 10m
    timeout server 10m
    server hop1 %s
`, addr, topo.entry), addr)
	topo.entry = addr
	topo.resetsAsFIN = true
	topo.ports = append([]int{port}, topo.ports...)
	return topo
}

// socatFront puts socat (a process per connection, read/write copies,
// half-close kept for a long -t) before topo's entry.
func (env *runEnv) socatFront(topo *topology) *topology {
	t := env.t
	bin, err := exec.LookPath("socat")
	if err != nil {
		t.Fatalf("socat is not installed (scripts/deps.sh installs it): %v", err)
	}
	port := testenv.FreePort(t, "127.0.0.1")
	cmd := exec.Command(bin, "-t", "100000",
		fmt.Sprintf("TCP-LISTEN:%d,bind=127.0.0.1,reuseaddr,fork,backlog=4096", port), "TCP:"+topo.entry)
	var out testenv.LogBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// Its own process group, so the forked children go with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start socat: %v", err)
	}
	pid := cmd.Process.Pid
	t.Cleanup(func() {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		_ = cmd.Wait()
	})
	testenv.WaitFor(t, "socat listening", func() bool { return listening(port) })
	topo.entry = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	topo.ports = append([]int{port}, topo.ports...)
	topo.resetsAsFIN = true
	return topo
}

// listening reports whether a TCP socket listens on 127.0.0.1:port or
// on every address, from /proc/net/tcp (a probe connection would reach
// the backend).
func listening(port int) bool {
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		return false
	}
	defer f.Close()
	want := []string{fmt.Sprintf("0100007F:%04X", port), fmt.Sprintf("00000000:%04X", port)}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 3 && fields[3] == "0A" && (fields[1] == want[0] || fields[1] == want[1]) {
			return true
		}
	}
	return false
}

// certs makes the fleet CA and host-a's and host-b's certificates with
// the binary's own commands, once per run, and returns their directory.
func (env *runEnv) certs() string {
	env.pkiOnce.Do(func() {
		env.pki = filepath.Join(env.dir, "pki")
		for _, args := range [][]string{{"init"}, {"issue", "host-a"}, {"issue", "host-b"}} {
			cmd := exec.Command(env.bin, append(append([]string{"certs"}, args...), "--dir", env.pki)...)
			if out, err := cmd.CombinedOutput(); err != nil {
				env.t.Fatalf("attache certs %s: %v\n%s", strings.Join(args, " "), err, out)
			}
		}
	})
	return env.pki
}

func (env *runEnv) writeConfig(name, text string) string {
	path := filepath.Join(env.dir, name)
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		env.t.Fatal(err)
	}
	return path
}

// backends are the torture backends a run serves: plain TCP, one that
// delays each accept, and one on a Unix socket.
type backends struct {
	tcp, slow, unix string
}

// startBackends listens and serves the torture backend end of every
// connection.
func (env *runEnv) startBackends() backends {
	t := env.t
	var b backends
	for _, slow := range []bool{false, true} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("backend listen: %v", err)
		}
		if slow {
			ln = &slowListener{Listener: ln, rng: rand.New(rand.NewPCG(env.seed, 99))}
			b.slow = ln.Addr().String()
		} else {
			b.tcp = ln.Addr().String()
		}
		testenv.Serve(t, ln, env.serveBackend)
	}
	path := filepath.Join(env.dir, "backend.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatalf("backend listen %s: %v", path, err)
	}
	testenv.Serve(t, ln, env.serveBackend)
	b.unix = "unix://" + path
	return b
}

// slowListener waits before each accept, so clients connect, and send,
// while the kernel holds their connections in the backlog.
type slowListener struct {
	net.Listener
	mu  sync.Mutex
	rng *rand.Rand
}

func (l *slowListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	d := time.Duration(l.rng.IntN(300)) * time.Millisecond
	l.mu.Unlock()
	time.Sleep(d)
	return l.Listener.Accept()
}

// serveBackend is the backend end of a connection: it reads the plan
// header, finds the session, and plays its part.
func (env *runEnv) serveBackend(c net.Conn) {
	sc, ok := c.(sock)
	if !ok {
		env.protocolError(fmt.Errorf("backend: a %T is no stream socket", c))
		return
	}
	// Bounded: a header that never comes belongs to a session that was
	// given up already.
	_ = c.SetReadDeadline(time.Now().Add(env.prof.deadline))
	hdr := make([]byte, headerSize)
	n, err := io.ReadFull(c, hdr)
	_ = c.SetReadDeadline(time.Time{})
	if n == 0 {
		switch {
		case errors.Is(err, syscall.ECONNRESET):
			env.orphanResets.Add(1) // see topology.resetOvertakes
		case errors.Is(err, os.ErrDeadlineExceeded):
			// Neither a byte nor an end for a connection's whole
			// deadline: a proxy held it after its client was gone
			// (a reset client's session does not wait for it).
			env.protocolError(fmt.Errorf("backend: a connection from %v sent nothing and did not end within %v", c.RemoteAddr(), env.prof.deadline))
		}
		return // a probe of the listener (HAProxy's start), or a closed session's socket
	}
	if err != nil {
		env.protocolError(fmt.Errorf("backend: reading the header (%d of %d bytes): %w", n, headerSize, err))
		return
	}
	p, err := unmarshalPlan(hdr)
	if err != nil {
		env.protocolError(fmt.Errorf("backend: %w", err))
		return
	}
	s, known := env.session(p.id)
	switch {
	case !known:
		env.protocolError(fmt.Errorf("backend: header for an unknown connection %d", p.id))
		return
	case s == nil:
		return // the client gave up on it already (and reported why)
	}
	s.backendStarted.Store(true)
	if *p != *s.plan {
		s.backendErr <- fmt.Errorf("backend: the header arrived changed: got %v", p)
		return
	}
	s.attach(sc)
	s.backendErr <- s.run(backendEnd, sc)
}
