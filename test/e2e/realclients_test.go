package e2e

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/attache/attache/internal/testenv"
)

// Real, unmodified clients and servers from Debian (redis-cli,
// redis-benchmark, iperf3, curl, nginx) through two hops of attache, as the
// ambassador pattern deploys it:
//
//	client → attache A (client side) → attache B (server side) → server
//
// A hop that relays into another attache is itself a sender that splices,
// and nginx sends files with sendfile(2): the peers that stalled the event
// loop engine while the connection stayed open (issue 15). Every chain of
// engines runs every client, and every byte that can be checked is checked.

// clientTimeout bounds one client run (or one server's start). It only
// stops a stalled transfer from hanging the test; a working chain finishes
// all of this file's transfers far sooner.
const clientTimeout = 60 * time.Second

// engineChain names the engine of each hop: the extra flags for attache A (the
// client-side hop) and attache B (the server-side hop).
type engineChain struct {
	name           string
	client, server []string
}

// goroutineEngine selects two goroutines per connection instead of the
// event loops, which are the default.
var goroutineEngine = []string{"--loops=-1"}

// engineChains are the engine combinations that matter: each engine relaying to
// itself, and each relaying to the other (the splicing sender and the
// receiver on different engines).
var engineChains = []engineChain{
	{name: "loop-loop"},
	{name: "goroutine-goroutine", client: goroutineEngine, server: goroutineEngine},
	{name: "loop-goroutine", server: goroutineEngine},
	{name: "goroutine-loop", client: goroutineEngine},
}

// forEachChain runs test as a parallel subtest for every engine chain.
func forEachChain(t *testing.T, test func(t *testing.T, c engineChain)) {
	t.Helper()
	for _, c := range engineChains {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			test(t, c)
		})
	}
}

// startHops starts attache B in front of server and attache A in front of
// B, and returns A: what the client connects to.
func startHops(t *testing.T, c engineChain, server string) *proc {
	t.Helper()
	b := startAttache(t, nil, append(slices.Clone(c.server), "--forward", "127.0.0.1:0="+server)...)
	return startAttache(t, nil, append(slices.Clone(c.client), "--forward", "127.0.0.1:0="+b.listenAddrs(t, 1)[0])...)
}

// hostPort returns the address p listens on, split.
func hostPort(t *testing.T, p *proc) (host, port string) {
	t.Helper()
	host, port, err := net.SplitHostPort(p.listenAddrs(t, 1)[0])
	if err != nil {
		t.Fatal(err)
	}
	return host, port
}

// twoHops is startHops for a client that needs only the address.
func twoHops(t *testing.T, c engineChain, server string) (host, port string) {
	t.Helper()
	return hostPort(t, startHops(t, c, server))
}

// tool returns the path of an external program, failing the test with a
// clear message when it is missing: make test installs every one of them
// (scripts/deps.sh), so a missing tool is a broken setup, not a reason to
// skip.
func tool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not installed (scripts/deps.sh, run by make test, installs it): %v", name, err)
	}
	return p
}

// runTool runs a client to completion within clientTimeout and returns its
// stdout, failing the test if it could not run, ran out of time or exited
// non-zero.
func runTool(t *testing.T, name string, args ...string) string {
	t.Helper()
	stdout, stderr, code, err := runCmd(t.Context(), clientTimeout, tool(t, name), args...)
	if err != nil || code != 0 {
		t.Fatalf("%s %s: exit code %d, %v\nstderr:\n%s", name, strings.Join(args, " "), code, err, lastBytes(stderr, 2000))
	}
	return stdout
}

// startServer runs a server program until the test ends, when it is killed
// by its PID. Both of its output streams go to the returned proc's stderr
// log, so waitLog can watch for a ready line; the log is printed if the test
// failed.
func startServer(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	p := &proc{stdout: new(testenv.LogBuffer), stderr: new(testenv.LogBuffer), done: make(chan struct{})}
	p.cmd = exec.Command(tool(t, name), args...)
	p.cmd.Stdout, p.cmd.Stderr = p.stderr, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.code = exitCode(p.cmd.Wait())
		close(p.done)
	}()
	t.Cleanup(func() {
		if !p.exited() {
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("%s %s:\n%s", name, strings.Join(args, " "), lastBytes(p.stderr.String(), 4000))
		}
	})
	return p
}

// lastBytes returns at most the last n bytes of s, so that a client that
// printed megabytes does not flood the failure message.
func lastBytes(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func fileSHA256(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// randomFile writes n random bytes to a new file in dir and returns its path.
func randomFile(t *testing.T, dir, name string, n int) string {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// base64File writes the base64 text of n random bytes to a new file in dir
// and returns its path and the text's SHA-256. Text, because redis-cli
// prints a value followed by a newline, and a value of random bytes could
// end with one of its own.
func base64File(t *testing.T, dir, name string, n int) (path, sum string) {
	t.Helper()
	raw := make([]byte, n)
	rand.Read(raw)
	text := []byte(base64.StdEncoding.EncodeToString(raw))
	path = filepath.Join(dir, name)
	if err := os.WriteFile(path, text, 0o644); err != nil {
		t.Fatal(err)
	}
	return path, sha256Hex(text)
}

// redisCLI runs redis-cli against host:port and returns its reply without
// the newline it adds.
func redisCLI(t *testing.T, host, port string, args ...string) string {
	t.Helper()
	out := runTool(t, "redis-cli", append([]string{"-h", host, "-p", port, "--raw"}, args...)...)
	return strings.TrimSuffix(out, "\n")
}

// redisSetFile stores the contents of file under key with redis-cli -x,
// which sends the value from stdin in one command.
func redisSetFile(t *testing.T, host, port, key, file string) {
	t.Helper()
	tool(t, "redis-cli")
	// exec keeps the PID runCmd kills at its deadline redis-cli's own.
	out := runTool(t, "sh", "-c", `exec redis-cli -h "$1" -p "$2" -x set "$3" <"$4"`, "sh", host, port, key, file)
	if got := strings.TrimSpace(out); got != "OK" {
		t.Fatalf("redis-cli -x set %s: got %q, want OK", key, lastBytes(got, 200))
	}
}

// TestTwoHopsRedisCLIBigValue is the repro as a test: redis-cli
// sends one 10.7 MB value (8 MB of random bytes in base64) with SET through
// both hops, on a connection that stays open until the reply, then reads
// it back with GET, and the value must be the file's, byte for byte. On the
// event loop engine before the fix, the SET never got its reply.
func TestTwoHopsRedisCLIBigValue(t *testing.T) {
	t.Parallel()
	file, want := base64File(t, t.TempDir(), "big", 8_000_000)

	forEachChain(t, func(t *testing.T, c engineChain) {
		host, port := twoHops(t, c, testenv.Redis(t))
		redisSetFile(t, host, port, "big", file)
		if got := redisCLI(t, host, port, "get", "big"); sha256Hex([]byte(got)) != want {
			t.Fatalf("GET big returned %d bytes with SHA-256 %s; SET sent the file's, SHA-256 %s",
				len(got), sha256Hex([]byte(got)), want)
		}
	})
}

// TestTwoHopsRedisBenchmark runs redis-benchmark's SET and GET with 1 MB
// values, a few clients and a little pipelining through both hops: many
// large replies on connections that stay open. It must finish with no
// error. A known 1 MB value (random bytes in base64), stored through the
// hops before the benchmark, must then read back intact, and the
// benchmark's own key must hold a value of the size it wrote.
func TestTwoHopsRedisBenchmark(t *testing.T) {
	t.Parallel()
	const size = 1_000_000
	// 750,000 random bytes are 1,000,000 characters of base64.
	known, want := base64File(t, t.TempDir(), "known", size/4*3)

	forEachChain(t, func(t *testing.T, c engineChain) {
		host, port := twoHops(t, c, testenv.Redis(t))
		redisSetFile(t, host, port, "known", known)

		stdout, stderr, code, err := runCmd(t.Context(), clientTimeout, tool(t, "redis-benchmark"),
			"-h", host, "-p", port, "-t", "set,get", "-d", itoa(size), "-n", "200", "-c", "4", "-P", "2", "--csv")
		if err != nil || code != 0 {
			t.Fatalf("redis-benchmark: exit code %d, %v\nstdout:\n%s\nstderr:\n%s", code, err, stdout, lastBytes(stderr, 2000))
		}
		if all := stdout + stderr; strings.Contains(strings.ToLower(all), "error") {
			t.Fatalf("redis-benchmark reported an error:\n%s", lastBytes(all, 2000))
		}
		for _, test := range []string{"SET", "GET"} {
			if !regexp.MustCompile(`(?m)^"` + test + `","[0-9.]+"`).MatchString(stdout) {
				t.Fatalf("redis-benchmark printed no result for %s:\n%s", test, stdout)
			}
		}

		if got := redisCLI(t, host, port, "get", "known"); sha256Hex([]byte(got)) != want {
			t.Fatalf("GET known after the benchmark: %d bytes with SHA-256 %s, want %d bytes with SHA-256 %s",
				len(got), sha256Hex([]byte(got)), size, want)
		}
		// Without -r every SET of the benchmark wrote this one key.
		if got := redisCLI(t, host, port, "strlen", "key:__rand_int__"); got != itoa(size) {
			t.Fatalf("STRLEN key:__rand_int__ after the benchmark: got %q, want %d", got, size)
		}
	})
}

// iperfResult is the part of iperf3's JSON report the test reads.
type iperfResult struct {
	Error string `json:"error"`
	Start struct {
		// Connected lists the data streams' sockets (not the control
		// connection) with the client's local port of each.
		Connected []struct {
			Socket    int `json:"socket"`
			LocalPort int `json:"local_port"`
		} `json:"connected"`
	} `json:"start"`
	End struct {
		Streams []struct {
			Sender struct {
				Socket int  `json:"socket"`
				Sender bool `json:"sender"` // the client sent on this stream
			} `json:"sender"`
		} `json:"streams"`
		SumSent            iperfSum `json:"sum_sent"`
		SumReceived        iperfSum `json:"sum_received"`
		SumSentReverse     iperfSum `json:"sum_sent_bidir_reverse"`
		SumReceivedReverse iperfSum `json:"sum_received_bidir_reverse"`
	} `json:"end"`
}

type iperfSum struct {
	Bytes int64 `json:"bytes"`
}

// sendingPort returns the client's local port of the data stream the client
// sent on, or 0 if the report does not say.
func (r *iperfResult) sendingPort() int {
	for _, s := range r.End.Streams {
		if !s.Sender.Sender {
			continue
		}
		for _, c := range r.Start.Connected {
			if c.Socket == s.Sender.Socket {
				return c.LocalPort
			}
		}
	}
	return 0
}

// iperfAttempts bounds the runs of iperf3 --bidir that may be given up
// because iperf3 paired its streams crosswise (see iperfBidir). On a loaded
// machine about half the runs are, through either engine; twenty in a row
// is one chance in a million. Every such run is logged.
const iperfAttempts = 20

// TestTwoHopsIperf3Bidir runs iperf3 --bidir for three seconds through both
// hops: a control connection that stays open and a data connection each
// way, both sending at full speed at once. Both directions must have moved
// bytes and iperf3 must report no error.
func TestTwoHopsIperf3Bidir(t *testing.T) {
	t.Parallel()
	forEachChain(t, func(t *testing.T, c engineChain) {
		for attempt := 1; !iperfBidir(t, c); attempt++ {
			if attempt == iperfAttempts {
				t.Fatalf("iperf3 paired its data streams crosswise in all %d runs", attempt)
			}
			t.Logf("run %d: iperf3 paired its data streams crosswise (the hops connected them to the server in the other order); running it again", attempt)
		}
	})
}

// iperfBidir runs one iperf3 --bidir test through a new iperf3 server and
// two new hops and checks its report. It returns false, having checked
// nothing else, when iperf3 itself paired the streams crosswise: its server
// gives the first data connection it accepts the receiving role and the
// second the sending one (esnet/iperf#2029), and each hop dials the next
// for the two connections independently, so they can reach the server in
// the other order. Both ends then only send on one connection and only
// receive on the other, and neither direction moves. The sign is certain:
// bytes came back to the client on the stream it sends on, which only a
// sending server writes to.
func iperfBidir(t *testing.T, c engineChain) bool {
	t.Helper()
	// iperf3 cannot listen on port 0; --forceflush makes the ready line
	// reach the pipe at once.
	serverPort := itoa(freePort(t))
	srv := startServer(t, "iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", serverPort, "--forceflush")
	srv.waitLog(t, regexp.MustCompile(`Server listening on `+serverPort), clientTimeout)
	a := startHops(t, c, net.JoinHostPort("127.0.0.1", serverPort))
	host, port := hostPort(t, a)

	stdout, stderr, code, err := runCmd(t.Context(), clientTimeout, tool(t, "iperf3"),
		"-c", host, "-p", port, "-t", "3", "--bidir", "-J")
	if err != nil {
		t.Fatalf("iperf3 client: %v\nstderr:\n%s", err, stderr)
	}
	var r iperfResult
	if err := json.Unmarshal([]byte(stdout), &r); err != nil {
		t.Fatalf("iperf3 -J output (exit code %d) is not JSON: %v\n%s\nstderr:\n%s", code, err, lastBytes(stdout, 2000), stderr)
	}
	if sending := r.sendingPort(); sending != 0 {
		// attache A logs the connection when it closes, after the client
		// exited.
		m := a.waitLog(t, regexp.MustCompile(`msg="connection closed" .*\bclient=127\.0\.0\.1:`+itoa(sending)+` .*\bbytes_out=(\d+)`), startTimeout)
		if m[1] != "0" {
			return false
		}
	}
	if r.Error != "" || code != 0 {
		t.Fatalf("iperf3 client: exit code %d, error %q\nstderr:\n%s", code, r.Error, stderr)
	}
	sums := []struct {
		what  string
		bytes int64
	}{
		{"client to server, sent", r.End.SumSent.Bytes},
		{"client to server, received", r.End.SumReceived.Bytes},
		{"server to client, sent", r.End.SumSentReverse.Bytes},
		{"server to client, received", r.End.SumReceivedReverse.Bytes},
	}
	for _, s := range sums {
		if s.bytes <= 0 {
			t.Errorf("iperf3 --bidir: %s: %d bytes", s.what, s.bytes)
		}
	}
	return true
}

// startNginx runs nginx in the foreground as one process (no master, no
// workers, so killing its PID stops it all) with its own prefix, serving
// root on a free loopback port with sendfile on, and returns its address.
func startNginx(t *testing.T, root string) string {
	t.Helper()
	prefix := t.TempDir()
	addr := net.JoinHostPort("127.0.0.1", itoa(freePort(t)))
	conf := fmt.Sprintf(`daemon off;
master_process off;
pid %[1]s/nginx.pid;
error_log stderr notice;
events { worker_connections 64; }
http {
	access_log off;
	default_type application/octet-stream;
	client_body_temp_path %[1]s/client_body;
	proxy_temp_path %[1]s/proxy;
	fastcgi_temp_path %[1]s/fastcgi;
	uwsgi_temp_path %[1]s/uwsgi;
	scgi_temp_path %[1]s/scgi;
	sendfile on;
	keepalive_timeout 60s;
	server {
		listen %[2]s;
		root %[3]s;
	}
}
`, prefix, addr, root)
	confPath := filepath.Join(prefix, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	// -e: nginx opens its compiled-in error log before it reads the config
	// unless told otherwise.
	p := startServer(t, "nginx", "-p", prefix, "-e", "stderr", "-c", confPath)
	testenv.WaitFor(t, "nginx listening on "+addr, func() bool {
		if p.exited() {
			t.Fatalf("nginx exited (code %d) before listening:\n%s", p.code, p.stderr)
		}
		c, err := net.DialTimeout("tcp", addr, ioTimeout)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
	return addr
}

// TestTwoHopsNginxSendfile downloads a 64 MB random file with curl from
// nginx, which sends it with sendfile(2), through both hops, and compares
// SHA-256. The keep-alive case fetches it twice over one connection, which
// stays open between the two responses; curl's num_connects shows the
// second fetch reused the first one's connection.
func TestTwoHopsNginxSendfile(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	want := fileSHA256(t, randomFile(t, root, "big.bin", 64<<20))
	server := startNginx(t, root)

	forEachChain(t, func(t *testing.T, c engineChain) {
		host, port := twoHops(t, c, server)
		url := "http://" + net.JoinHostPort(host, port) + "/big.bin"
		dir := t.TempDir()

		t.Run("once", func(t *testing.T) {
			out := filepath.Join(dir, "once")
			runTool(t, "curl", "-sS", "--fail", "-o", out, url)
			if got := fileSHA256(t, out); got != want {
				t.Fatalf("downloaded file's SHA-256 %s, want %s", got, want)
			}
		})
		t.Run("keepalive", func(t *testing.T) {
			outs := []string{filepath.Join(dir, "first"), filepath.Join(dir, "second")}
			connects := runTool(t, "curl", "-sS", "--fail", "-w", `%{num_connects}\n`,
				"-o", outs[0], "-o", outs[1], url, url)
			if got := strings.Fields(connects); !slices.Equal(got, []string{"1", "0"}) {
				t.Fatalf("curl's new connections per fetch: got %q, want [1 0] (one connection for both)", got)
			}
			for _, out := range outs {
				if got := fileSHA256(t, out); got != want {
					t.Fatalf("%s: SHA-256 %s, want %s", filepath.Base(out), got, want)
				}
			}
		})
	})
}
