package e2e

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The Docker tests run attache's image on the real engine: the seed's
// two-host ambassador example across user-defined networks, and the classic
// --link chain on the default bridge. They need no registry: both images are
// built FROM scratch, attache's from the repository's Dockerfile.dist and a Redis
// one from the host's redis-server and redis-cli with their shared libraries.
//
// They fail when the engine cannot be reached, because a green run that
// silently skipped them would hide a broken image; set ATTACHE_E2E_DOCKER=0
// to skip them on purpose.

const (
	dockerTimeout    = 2 * time.Minute  // one docker command
	containerTimeout = 90 * time.Second // a container chain becoming usable
	labelKey         = "attache-e2e"
)

// docker runs the docker CLI for one test.
type docker struct {
	t     *testing.T
	label string // attache-e2e=<run id>, on everything this run creates
}

// run runs docker with args and returns stdout, stderr and the exit code.
func (d docker) run(args ...string) (stdout, stderr string, code int) {
	d.t.Helper()
	stdout, stderr, code, err := runCmd(d.t.Context(), dockerTimeout, "docker", args...)
	if err != nil {
		d.t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, stderr)
	}
	return stdout, stderr, code
}

// must runs docker and fails the test unless it exits 0.
func (d docker) must(args ...string) string {
	d.t.Helper()
	stdout, stderr, code := d.run(args...)
	if code != 0 {
		d.t.Fatalf("docker %s: exit %d\n%s%s", strings.Join(args, " "), code, stdout, stderr)
	}
	return strings.TrimSpace(stdout)
}

// cleanup removes what docker created, whatever the test's outcome. It uses
// a fresh context: the test's own is already cancelled when cleanups run.
func (d docker) cleanup(args ...string) {
	d.t.Cleanup(func() {
		_, stderr, code, err := runCmd(context.Background(), dockerTimeout, "docker", args...)
		if err != nil || code != 0 {
			d.t.Logf("cleanup: docker %s: exit %d %v %s", strings.Join(args, " "), code, err, stderr)
		}
	})
}

// container starts a detached container named name and removes it (and its
// anonymous volumes) at the end of the test. createOnly leaves it created,
// for attaching to a second network before it starts.
func (d docker) container(name string, createOnly bool, args ...string) {
	d.t.Helper()
	verb := "run"
	full := []string{"--name", name, "--label", d.label}
	if createOnly {
		verb = "create"
	} else {
		full = append([]string{"-d"}, full...)
	}
	d.cleanup("rm", "-f", "-v", name)
	d.must(append(append([]string{verb}, full...), args...)...)
}

func (d docker) network(name string) {
	d.t.Helper()
	d.must("network", "create", "--label", d.label, name)
	d.cleanup("network", "rm", name)
}

// logs returns a container's combined output.
func (d docker) logs(name string) string {
	d.t.Helper()
	stdout, stderr, _ := d.run("logs", name)
	return stdout + stderr
}

// waitLogs waits until the container's log has a line matching re.
func (d docker) waitLogs(name string, re *regexp.Regexp) {
	d.t.Helper()
	deadline := time.Now().Add(containerTimeout)
	for {
		log := d.logs(name)
		if re.MatchString(log) {
			return
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("container %s: no log line matching %q within %v:\n%s", name, re, containerTimeout, log)
		}
		time.Sleep(200 * time.Millisecond) // poll interval
	}
}

// requireRunning fails the test if the container has stopped.
func (d docker) requireRunning(name string) {
	d.t.Helper()
	state := d.must("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", name)
	if !strings.HasPrefix(state, "running") {
		d.t.Fatalf("container %s is %s; its log:\n%s", name, state, d.logs(name))
	}
}

// poll runs docker args until ok accepts the output or the deadline passes.
func (d docker) poll(what string, ok func(stdout string, code int) bool, args ...string) string {
	d.t.Helper()
	deadline := time.Now().Add(containerTimeout)
	for {
		stdout, stderr, code := d.run(args...)
		if ok(stdout, code) {
			return stdout
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("%s: not within %v; last try: exit %d\n%s%s", what, containerTimeout, code, stdout, stderr)
		}
		time.Sleep(200 * time.Millisecond) // poll interval
	}
}

func newRunID(t *testing.T) string {
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "attache-e2e-" + hex.EncodeToString(b)
}

// requireDocker returns a docker helper, skipping only when told to and
// failing when the engine does not answer.
func requireDocker(t *testing.T) docker {
	t.Helper()
	if os.Getenv("ATTACHE_E2E_DOCKER") == "0" {
		t.Skip("ATTACHE_E2E_DOCKER=0: Docker image tests skipped on request")
	}
	stdout, stderr, code, err := runCmd(t.Context(), 30*time.Second, "docker", "version", "--format", "{{.Server.Version}}")
	if err != nil || code != 0 {
		t.Fatalf("Docker engine unreachable (set ATTACHE_E2E_DOCKER=0 to skip these tests): exit %d %v\n%s%s",
			code, err, stdout, stderr)
	}
	t.Logf("Docker Engine %s", strings.TrimSpace(stdout))
	return docker{t: t, label: labelKey + "=" + newRunID(t)}
}

func TestDocker(t *testing.T) {
	d := requireDocker(t)
	id := strings.TrimPrefix(d.label, labelKey+"=")
	img := buildAttacheImage(d, id+"-attache:test")
	redisImg := buildRedisImage(d, id+"-redis:test")
	// Safety net, run before the images are removed: any container of this
	// run still there, such as a client whose docker run timed out.
	t.Cleanup(func() {
		ids, _, _, err := runCmd(context.Background(), dockerTimeout, "docker", "ps", "-aq", "--filter", "label="+d.label)
		if err != nil || strings.TrimSpace(ids) == "" {
			return
		}
		_, _, _, _ = runCmd(context.Background(), dockerTimeout, "docker", append([]string{"rm", "-f", "-v"}, strings.Fields(ids)...)...)
	})

	t.Run("version", func(t *testing.T) {
		t.Parallel()
		d := docker{t: t, label: d.label}
		out := d.must("run", "--rm", "--label", d.label, img, "version")
		if !strings.HasPrefix(out, "attache ") {
			t.Fatalf("version: got %q", out)
		}
		size, err := strconv.ParseInt(d.must("image", "inspect", "-f", "{{.Size}}", img), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("attache image: %d bytes (%.2f MiB)", size, float64(size)/(1<<20))
	})
	t.Run("two-host", func(t *testing.T) {
		t.Parallel()
		testTwoHost(docker{t: t, label: d.label}, id, img, redisImg)
	})
	t.Run("link", func(t *testing.T) {
		t.Parallel()
		testLink(docker{t: t, label: d.label}, id, img, redisImg)
	})
}

// testTwoHost is the seed's two-host example with networks standing in for
// hosts: redis and a server-side ambassador share net A; the server-side
// ambassador is also on net B (its "public" side); the client and its own
// ambassador live on net B only.
//
//	client --B--> client-amb (env REDIS_PORT_6379_TCP) --B--> server-amb (attache redis 6379) --A--> redis
func testTwoHost(d docker, id, img, redisImg string) {
	t := d.t
	netA, netB := id+"-net-a", id+"-net-b"
	d.network(netA)
	d.network(netB)
	redis, srvAmb, cliAmb := id+"-2h-redis", id+"-2h-server-amb", id+"-2h-client-amb"

	d.container(redis, false, append([]string{"--network", netA, "--network-alias", "redis", redisImg}, redisServer...)...)
	d.container(srvAmb, true, "--network", netA, img, "--log-level", "debug", "redis", "6379")
	d.must("network", "connect", netB, srvAmb)
	d.must("start", srvAmb)
	d.container(cliAmb, false, "--network", netB, "-e", "REDIS_PORT_6379_TCP=tcp://"+srvAmb+":6379", img)

	client := func(args ...string) []string {
		return append([]string{"run", "--rm", "--label", d.label, "--network", netB, redisImg,
			"/redis-cli", "-h", cliAmb, "-p", "6379"}, args...)
	}
	value := "through-both-" + id
	d.poll("SET through both ambassadors", func(out string, code int) bool {
		return code == 0 && strings.TrimSpace(out) == "OK"
	}, client("SET", "attache-e2e", value)...)
	if got := strings.TrimSpace(d.must(client("GET", "attache-e2e")...)); got != value {
		t.Fatalf("GET through both ambassadors: got %q, want %q", got, value)
	}

	// Both ambassadors carried it: the server-side one logs (at debug) each
	// closed connection, and its client was the client-side ambassador.
	cliAmbIP := d.must("inspect", "-f", `{{(index .NetworkSettings.Networks "`+netB+`").IPAddress}}`, cliAmb)
	d.waitLogs(srvAmb, regexp.MustCompile(`msg="connection closed" log=access service=forward-6379 client=`+
		regexp.QuoteMeta(cliAmbIP)+`:\d+ backend=redis:6379 .*bytes_in=[1-9]`))
	d.requireRunning(srvAmb)
	d.requireRunning(cliAmb)

	// Negative control: without the ambassadors, net B cannot reach redis,
	// neither by name (no DNS across networks) nor by its address on net A
	// (the engine drops packets between bridges, so that connect hangs: the
	// probe gets a few seconds, which only a broken isolation could use).
	redisIP := d.must("inspect", "-f", `{{(index .NetworkSettings.Networks "`+netA+`").IPAddress}}`, redis)
	hosts := []string{redis, redisIP}
	probes := make([]string, len(hosts))
	for i, host := range hosts {
		probes[i] = fmt.Sprintf("%s-2h-direct-%d", id, i)
		d.container(probes[i], false, "--network", netB, redisImg, "/redis-cli", "-h", host, "-p", "6379", "ping")
	}
	window := time.Now().Add(5 * time.Second)
	for i, probe := range probes {
		_, _, _, _ = runCmd(t.Context(), time.Until(window), "docker", "wait", probe)
		out := d.logs(probe)
		if strings.Contains(out, "PONG") {
			t.Fatalf("client on net B reached redis at %s directly; the test proves nothing", hosts[i])
		}
		t.Logf("direct to %s from net B: %s", hosts[i], firstLine(out, "no answer"))
	}
}

func firstLine(s, empty string) string {
	s = strings.TrimSpace(s)
	if s == "" {
		return empty
	}
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// testLink is the classic pattern on the default bridge: the engine turns
// --link into REDIS_PORT_6379_TCP for the ambassador, which runs with no
// arguments, and the client links to the ambassador under the same alias.
func testLink(d docker, id, img, redisImg string) {
	t := d.t
	redis, amb := id+"-link-redis", id+"-link-amb"
	d.container(redis, false, append([]string{redisImg}, redisServer...)...)

	// What does this engine give a linked container? Docker 29+ sets no link
	// variables at all (unless its daemon keeps them); attache must then say
	// so, not fail obscurely.
	stdout, stderr, code := d.run("run", "--rm", "--label", d.label, "--link", redis+":redis", img, "check")
	if code != 0 {
		for _, w := range []string{"--link", "Docker Engine 29", "DOCKER_KEEP_DEPRECATED_LEGACY_LINKS_ENV_VARS"} {
			if code != 2 || !strings.Contains(stderr, w) {
				t.Fatalf("check with a --link on an engine without link variables: exit %d, want 2 and %q\n%s%s",
					code, w, stdout, stderr)
			}
		}
		t.Logf("this engine sets no link variables; attache explains:\n%s", stderr)
		return
	}
	if !regexp.MustCompile(`redis-6379\s+0\.0\.0\.0:6379\s+\S+:6379\s.*env REDIS_PORT_6379_TCP`).MatchString(stdout) {
		t.Fatalf("check with --link %s:redis: want a redis-6379 route from REDIS_PORT_6379_TCP:\n%s%s", redis, stdout, stderr)
	}

	// The engine sets link variables, but port variables only for the
	// ports the linked container exposes: a link to one that exposes none
	// (attache's own image has no EXPOSE) gives names alone, and attache
	// must name that cause and its remedy, not Docker 29's.
	bare := id + "-link-bare"
	d.container(bare, false, img, "--forward", "127.0.0.1:6379=127.0.0.1:1")
	stdout, stderr, code = d.run("run", "--rm", "--label", d.label, "--link", bare+":bare", img, "check")
	for _, w := range []string{"BARE_NAME", "exposes none", "--expose PORT"} {
		if code != 2 || !strings.Contains(stderr, w) {
			t.Fatalf("check with a --link to a container that exposes no port: exit %d, want 2 and %q\n%s%s",
				code, w, stdout, stderr)
		}
	}

	d.container(amb, false, "--link", redis+":redis", img)
	d.poll("redis-cli ping through the linked ambassador", func(out string, code int) bool {
		return code == 0 && strings.TrimSpace(out) == "PONG"
	}, "run", "--rm", "--label", d.label, "--link", amb+":redis", redisImg, "/redis-cli", "-h", "redis", "ping")
	d.requireRunning(amb)

	// attache is PID 1 in its container: docker stop's SIGTERM must end it
	// cleanly (exit 0) without waiting for the engine's SIGKILL.
	d.must("stop", "-t", "30", amb)
	if state := d.must("inspect", "-f", "{{.State.ExitCode}} {{.State.OOMKilled}}", amb); state != "0 false" {
		t.Fatalf("ambassador after docker stop: exit code and OOM %q, want \"0 false\"\n%s", state, d.logs(amb))
	}
	if log := d.logs(amb); !strings.Contains(log, "msg=stopped") {
		t.Fatalf("ambassador did not log a clean stop:\n%s", log)
	}
}

// redisServer is the command of every Redis container: no persistence, and
// reachable from other containers.
var redisServer = []string{"/redis-server", "--save", "", "--appendonly", "no", "--protected-mode", "no", "--bind", "0.0.0.0"}

// buildAttacheImage builds the repository's Dockerfile.dist over a context
// holding only the static binary, as the Makefile does with dist/.
func buildAttacheImage(d docker, tag string) string {
	t := d.t
	dockerfile, err := filepath.Abs(filepath.Join("..", "..", "Dockerfile.dist"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.TempDir()
	copyFile(t, attacheBin, filepath.Join(ctx, "attache"), 0o755)
	d.cleanup("image", "rm", "-f", tag)
	d.must("build", "--force-rm", "--label", d.label, "-f", dockerfile, "-t", tag, ctx)
	return tag
}

// buildRedisImage builds a FROM-scratch image holding the host's
// redis-server and redis-cli in / with every shared library ldd lists for
// them, at their own paths, dynamic loader included.
func buildRedisImage(d docker, tag string) string { return buildRedisImageIn(d, tag, "/") }

// buildRedisImageIn is buildRedisImage with the two programs in binDir.
func buildRedisImageIn(d docker, tag, binDir string) string {
	t := d.t
	ctx := t.TempDir()
	var libs []string
	for _, bin := range []struct{ path, as string }{
		{"/usr/bin/redis-server", "redis-server"}, // a symlink to redis-check-rdb: copy the file itself
		{"/usr/bin/redis-cli", "redis-cli"},
	} {
		real, err := filepath.EvalSymlinks(bin.path)
		if err != nil {
			t.Fatalf("%s not found (the Docker tests need Debian's redis-server package): %v", bin.path, err)
		}
		copyFile(t, real, filepath.Join(ctx, binDir, bin.as), 0o755)
		libs = append(libs, sharedLibs(d, real)...)
	}
	for _, lib := range libs {
		copyFile(t, lib, filepath.Join(ctx, lib), 0o755)
	}
	// glibc without an nsswitch.conf asks DNS first and stops at its
	// NXDOMAIN, so --link aliases in /etc/hosts would never be read.
	writeFile(t, filepath.Join(ctx, "etc", "nsswitch.conf"), "hosts: files dns\n")
	writeFile(t, filepath.Join(ctx, "Dockerfile"), "FROM scratch\nCOPY . /\nEXPOSE 6379\n")
	d.cleanup("image", "rm", "-f", tag)
	d.must("build", "--force-rm", "--label", d.label, "-t", tag, ctx)
	return tag
}

// sharedLibs lists the absolute paths ldd prints for bin.
func sharedLibs(d docker, bin string) []string {
	t := d.t
	stdout, stderr, code, err := runCmd(t.Context(), 30*time.Second, "ldd", bin)
	if err != nil || code != 0 {
		t.Fatalf("ldd %s: exit %d %v\n%s", bin, code, err, stderr)
	}
	var out []string
	sc := bufio.NewScanner(strings.NewReader(stdout))
	for sc.Scan() {
		// "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
		// "/lib64/ld-linux-x86-64.so.2 (0x...)"; linux-vdso has no file.
		f := strings.Fields(sc.Text())
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			out = append(out, f[2])
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			out = append(out, f[0])
		case len(f) >= 3 && f[1] == "=>" && f[2] == "not":
			t.Fatalf("ldd %s: %s", bin, sc.Text())
		}
	}
	return out
}

// copyFile copies src's content (following symlinks) to dst.
func copyFile(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, data, mode); err != nil {
		t.Fatal(err)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
