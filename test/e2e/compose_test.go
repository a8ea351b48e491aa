package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
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
)

// TestCompose brings up each example under examples/compose with a real
// Compose implementation (Debian's docker-compose, else the docker compose
// plugin) on the real engine, sends Redis commands through it with the
// example's own consumer service, checks in the ambassadors' logs which path
// the bytes took, and takes the project down (down -v, always).
//
// Nothing is pulled: ATTACHE_IMAGE is the image Dockerfile.dist makes from
// the test binary, and REDIS_IMAGE a FROM-scratch image holding the host's
// redis-server and redis-cli where the official image has them
// (/usr/local/bin), so the examples' commands work with either.
func TestCompose(t *testing.T) {
	d := requireDocker(t)
	compose := composeCommand(t)
	id := strings.TrimPrefix(d.label, labelKey+"=")
	attacheImg := buildAttacheImage(d, id+"-attache:test")
	redisImg := buildRedisImageIn(d, id+"-redis:test", "/usr/local/bin")
	info, err := os.Stat(testenv.DockerSocket(t))
	if err != nil {
		t.Fatalf("the Docker socket: %v", err)
	}
	gid := strconv.FormatUint(uint64(info.Sys().(*syscall.Stat_t).Gid), 10)
	env := []string{"ATTACHE_IMAGE=" + attacheImg, "REDIS_IMAGE=" + redisImg, "DOCKER_GID=" + gid}

	t.Run("two-host", func(t *testing.T) {
		t.Parallel()
		p := upProject(t, d, compose, id, "two-host", env)
		setGet(p, "redis-ambassador")
		// The server-side ambassador's client was the client-side one, on
		// the network between the "hosts".
		ambIP := p.ip("redis-ambassador", "wire")
		p.waitLogs("server-ambassador", regexp.MustCompile(`msg="connection closed" log=access service=forward-6379 client=`+
			regexp.QuoteMeta(ambIP)+`:\d+ backend=redis:6379 .*bytes_in=[1-9]`))
		// Negative control: the consumer's network has no route to Redis.
		out, code := p.run("run", "--rm", "-T", "consumer", "redis-cli", "-h", "redis", "ping")
		if code == 0 || strings.Contains(out, "PONG") {
			t.Fatalf("the consumer reached redis without the ambassadors: exit %d\n%s", code, out)
		}
	})

	t.Run("links", func(t *testing.T) {
		t.Parallel()
		p := upProject(t, d, compose, id, "links", env)
		setGet(p, "redis-ambassador")
		p.waitLogs("redis-ambassador", regexp.MustCompile(`msg="connection closed" log=access service=redis .*backend=server-ambassador:7443 .*bytes_in=[1-9]`))
		p.waitLogs("server-ambassador", regexp.MustCompile(`msg="link server listening" addr=0\.0\.0\.0:7443 names=\[server-ambassador\]`))
		p.waitLogs("server-ambassador", regexp.MustCompile(`msg="connection closed" log=access service=redis client=`+
			regexp.QuoteMeta(p.ip("redis-ambassador", "wire"))+`:\d+ backend=redis:6379 .*bytes_in=[1-9]`))
		// The link port takes mutual TLS only: plain Redis from the wire is
		// refused, and the server says why.
		name := p.name + "-plain"
		d.container(name, false, "--network", p.name+"_wire", redisImg, "redis-cli", "-h", "server-ambassador", "-p", "7443", "ping")
		_, _, _, _ = runCmd(t.Context(), containerTimeout, "docker", "wait", name)
		if out := d.logs(name); strings.Contains(out, "PONG") {
			t.Fatalf("plain TCP to the link port reached redis:\n%s", out)
		}
		p.waitLogs("server-ambassador", regexp.MustCompile(`msg="link connection refused" .*reason=not_tls`))
	})

	t.Run("docker29", func(t *testing.T) {
		t.Parallel()
		p := upProject(t, d, compose, id, "docker29", append(env, "REDIS_SERVICE="+id+"-redis"))
		setGet(p, "redis-ambassador")
		p.waitLogs("redis-ambassador", regexp.MustCompile(`msg="backends changed" service=forward-6379 discovered=1`))
		p.waitLogs("redis-ambassador", regexp.MustCompile(`msg="connection closed" log=access service=forward-6379 .*backend=`+
			regexp.QuoteMeta(p.ip("redis", "backend"))+`:6379 .*bytes_in=[1-9]`))
		// A second labelled container is a second backend at once.
		p.must("up", "-d", "--scale", "redis=2")
		p.waitLogs("redis-ambassador", regexp.MustCompile(`msg="backends changed" service=forward-6379 discovered=2`))
	})
}

// composeCommand is the Compose implementation to use: Debian's
// docker-compose (v1), else the docker compose plugin (v2). The test fails
// when there is none, because a skip would hide that the examples never
// ran; scripts/deps.sh installs docker-compose.
func composeCommand(t *testing.T) []string {
	t.Helper()
	if path, err := exec.LookPath("docker-compose"); err == nil {
		return []string{path}
	}
	if _, _, code, err := runCmd(t.Context(), 30*time.Second, "docker", "compose", "version"); err == nil && code == 0 {
		return []string{"docker", "compose"}
	}
	t.Fatal("no Compose implementation: neither docker-compose nor the docker compose plugin (bash scripts/deps.sh installs docker-compose; ATTACHE_E2E_DOCKER=0 skips)")
	return nil
}

// project is one example brought up under a unique project name.
type project struct {
	d       docker
	compose []string // the command, then -p NAME -f FILE
	env     []string
	name    string
}

// upProject brings up examples/compose/<example> and takes it down (with
// its volumes and the images it built) when the test ends, whatever the
// outcome.
func upProject(t *testing.T, parent docker, compose []string, id, example string, env []string) project {
	t.Helper()
	file, err := filepath.Abs(filepath.Join("..", "..", "examples", "compose", example, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	name := strings.ReplaceAll(id+"-"+example, "_", "-")
	p := project{
		d:       docker{t: t, label: parent.label},
		compose: append(append([]string{}, compose...), "-p", name, "-f", file),
		env:     append(append(os.Environ(), env...), "COMPOSE_PROJECT_NAME="+name),
		name:    name,
	}
	t.Cleanup(func() {
		out, code, err := p.exec(context.Background(), "down", "-v", "--rmi", "local", "--remove-orphans", "--timeout", "10")
		if err != nil || code != 0 {
			t.Errorf("cleanup: compose down for %s: exit %d %v\n%s", name, code, err, out)
		}
		if t.Failed() {
			logs, _, _ := p.exec(context.Background(), "logs", "--no-color")
			t.Logf("compose logs of %s:\n%s", name, logs)
		}
	})
	p.must("up", "-d")
	return p
}

// exec runs the Compose command with args and returns its combined output
// and exit code; err is set only if it could not run or timed out.
func (p project) exec(ctx context.Context, args ...string) (string, int, error) {
	ctx, cancel := context.WithTimeout(ctx, dockerTimeout)
	defer cancel()
	full := append(append([]string{}, p.compose...), args...)
	cmd := exec.CommandContext(ctx, full[0], full[1:]...)
	cmd.Env = p.env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return out.String(), 0, nil
	case ctx.Err() != nil:
		return out.String(), -1, fmt.Errorf("%s: timed out after %v", strings.Join(full, " "), dockerTimeout)
	case errors.As(err, &ee):
		return out.String(), ee.ExitCode(), nil
	default:
		return out.String(), -1, fmt.Errorf("%s: %w", strings.Join(full, " "), err)
	}
}

// run runs Compose and fails the test only if it could not run at all.
func (p project) run(args ...string) (string, int) {
	p.d.t.Helper()
	out, code, err := p.exec(p.d.t.Context(), args...)
	if err != nil {
		p.d.t.Fatal(err)
	}
	return out, code
}

// must runs Compose and fails the test unless it exits 0.
func (p project) must(args ...string) string {
	p.d.t.Helper()
	out, code := p.run(args...)
	if code != 0 {
		p.d.t.Fatalf("compose %s (project %s): exit %d\n%s", strings.Join(args, " "), p.name, code, out)
	}
	return out
}

// container is the ID of the first container of service.
func (p project) container(service string) string {
	p.d.t.Helper()
	out, code := p.run("ps", "-q", service)
	ids := strings.Fields(out)
	if code != 0 || len(ids) == 0 {
		p.d.t.Fatalf("compose ps -q %s (project %s): exit %d\n%s", service, p.name, code, out)
	}
	return ids[0]
}

// ip is the address of service's first container on the example's network.
func (p project) ip(service, network string) string {
	p.d.t.Helper()
	return p.d.must("inspect", "-f", `{{(index .NetworkSettings.Networks "`+p.name+"_"+network+`").IPAddress}}`, p.container(service))
}

// waitLogs waits until service's log has a line matching re.
func (p project) waitLogs(service string, re *regexp.Regexp) {
	p.d.t.Helper()
	p.d.waitLogs(p.container(service), re)
}

// setGet writes a value through the ambassador with the example's consumer
// service and reads it back; the first command is retried while the chain
// comes up.
func setGet(p project, ambassador string) {
	t := p.d.t
	t.Helper()
	cli := func(args ...string) []string {
		return append([]string{"run", "--rm", "-T", "consumer", "redis-cli", "-h", ambassador}, args...)
	}
	value := "through-" + p.name
	deadline := time.Now().Add(containerTimeout)
	for {
		out, code := p.run(cli("SET", "attache-e2e", value)...)
		if code == 0 && lastLine(out) == "OK" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("SET through %s: not within %v; last try: exit %d\n%s", ambassador, containerTimeout, code, out)
		}
		time.Sleep(500 * time.Millisecond) // poll interval
	}
	if out := p.must(cli("GET", "attache-e2e")...); lastLine(out) != value {
		t.Fatalf("GET through %s: got %q, want %q", ambassador, out, value)
	}
}

// lastLine is the last non-empty line of s: Compose v1's `run` writes its
// own progress lines before the command's output.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}
