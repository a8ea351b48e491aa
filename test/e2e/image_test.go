package e2e

import (
	"context"
	"encoding/json"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/attache/attache/internal/testenv"
)

// imageBuildTimeout bounds the multi-stage build: a cold compile of attache
// and its modules inside a container, on a busy two-core machine.
const imageBuildTimeout = 10 * time.Minute

// TestImageFromSource builds the repository's multi-stage Dockerfile as
// `docker build -t attache .` does, with the builder stage's GO_IMAGE made
// from this machine's Go and module cache (scripts/go-builder-image.sh: no
// registry here), and checks what the image promises: the version it was
// built with, its OCI labels, a non-root user that still binds port 80, a
// HEALTHCHECK that turns healthy while attache serves and unhealthy with the
// daemon's reason, and that TPROXY works as root only (what docs/docker.md
// tells transparent-mode users).
//
// The builder image is kept in the engine between runs (tagged by Go
// version and go.sum), so only the first run on a machine makes it; the
// images this test builds are removed.
func TestImageFromSource(t *testing.T) {
	d := requireDocker(t) // fails without docker, as TestDocker does: a skip would hide it
	id := strings.TrimPrefix(d.label, labelKey+"=")
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}

	stdout, stderr, code, err := runCmd(t.Context(), imageBuildTimeout, "bash", filepath.Join(root, "scripts", "go-builder-image.sh"))
	if err != nil || code != 0 {
		t.Fatalf("scripts/go-builder-image.sh: exit %d %v\n%s", code, err, stderr)
	}
	builder := strings.TrimSpace(stdout)
	t.Logf("builder image %s", builder)

	version, revision := "v0.0.0-"+id, "e2e-"+id
	img := id + "-src:test"
	args := []string{"build", "--force-rm", "--label", d.label,
		"--build-arg", "GO_IMAGE=" + builder, "--build-arg", "VERSION=" + version,
		"--build-arg", "REVISION=" + revision, "-t", img, root}
	start := time.Now()
	stdout, stderr, code, err = runCmd(t.Context(), imageBuildTimeout, "docker", args...)
	removeStepImages(t, stdout)
	d.cleanup("image", "rm", "-f", img)
	if err != nil || code != 0 {
		t.Fatalf("docker %s: exit %d %v\n%s%s", strings.Join(args, " "), code, err, lastLines(stdout, 30), stderr)
	}
	t.Logf("docker build (multi-stage, cold compile unless cached): %v", time.Since(start).Round(time.Second))

	t.Run("version", func(t *testing.T) {
		d := docker{t: t, label: d.label}
		if out := d.must("run", "--rm", "--label", d.label, img, "version"); out != "attache "+version {
			t.Fatalf("version: got %q, want %q", out, "attache "+version)
		}
	})

	t.Run("config", func(t *testing.T) {
		d := docker{t: t, label: d.label}
		var cfg struct {
			User        string
			Entrypoint  []string
			Labels      map[string]string
			Healthcheck struct{ Test []string }
		}
		out := d.must("image", "inspect", "-f", "{{json .Config}}", img)
		if err := json.Unmarshal([]byte(out), &cfg); err != nil {
			t.Fatalf("image config: %v\n%s", err, out)
		}
		if cfg.User != "65532:65532" {
			t.Errorf("User = %q, want 65532:65532", cfg.User)
		}
		if got := strings.Join(cfg.Entrypoint, " "); got != "/attache" {
			t.Errorf("Entrypoint = %q, want /attache", got)
		}
		if got := strings.Join(cfg.Healthcheck.Test, " "); got != "CMD /attache healthcheck" {
			t.Errorf("Healthcheck.Test = %q, want exec form CMD /attache healthcheck", got)
		}
		for k, want := range map[string]string{
			"org.opencontainers.image.source":   "https://github.com/attache/attache",
			"org.opencontainers.image.version":  version,
			"org.opencontainers.image.revision": revision,
			"org.opencontainers.image.licenses": "Apache-2.0",
			"org.opencontainers.image.title":    "attache",
		} {
			if got := cfg.Labels[k]; got != want {
				t.Errorf("label %s = %q, want %q", k, got, want)
			}
		}
		if cfg.Labels["org.opencontainers.image.description"] == "" {
			t.Error("label org.opencontainers.image.description is empty")
		}
		t.Logf("image size: %s bytes", d.must("image", "inspect", "-f", "{{.Size}}", img))
	})

	t.Run("healthy-non-root-port-80", func(t *testing.T) {
		d := docker{t: t, label: d.label}
		network := testenv.NewDockerNetwork(t)
		echo := testenv.RunContainer(t, testenv.ContainerSpec{Network: network.Name})
		name := id + "-up"
		// The image's own HEALTHCHECK, only checked more often.
		d.container(name, false, "--network", network.Name, "--health-interval", "1s", "--health-start-period", "0s",
			"-p", "127.0.0.1::80", img, "--forward", "80="+echo.Name+":7000")
		out := waitHealth(d, name, "healthy")
		if !strings.Contains(out, "0: attache healthcheck: healthy: 1 listeners accept connections (settings from pid 1's arguments and environment)") {
			t.Errorf("health log: %s", out)
		}
		// Bytes through port 80, bound by uid 65532.
		addr := d.must("port", name, "80/tcp")
		addr = strings.TrimSpace(strings.Split(addr, "\n")[0])
		roundTrip(t, dial(t, addr), "through port 80 of a non-root attache\n")
		top := d.must("top", name, "-eo", "pid,uid,comm")
		if !regexp.MustCompile(`(?m)^\d+\s+65532\s+attache$`).MatchString(top) {
			t.Errorf("docker top: want attache running as uid 65532:\n%s", top)
		}
		pid := d.must("inspect", "-f", "{{.State.Pid}}", name)
		if out, _, code, err := runCmd(t.Context(), 30*time.Second, "nsenter", "-t", pid, "-n",
			"cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"); err == nil && code == 0 {
			t.Logf("net.ipv4.ip_unprivileged_port_start in the container's network namespace: %s", strings.TrimSpace(out))
		}
	})

	t.Run("unhealthy", func(t *testing.T) {
		d := docker{t: t, label: d.label}
		name := id + "-down"
		// Docker discovery without the engine's socket mounted never sends
		// a first snapshot: the listener serves, /readyz says why it is not
		// ready, and the healthcheck (finding --admin in pid 1's arguments)
		// reports it.
		d.container(name, false, "--health-interval", "1s", "--health-start-period", "0s", "--health-retries", "1",
			img, "--admin", "127.0.0.1:9901", "--forward", "7000=docker://redis")
		out := waitHealth(d, name, "unhealthy")
		if !strings.Contains(out, `1: attache healthcheck: unhealthy: GET http://127.0.0.1:9901/readyz: 503 Service Unavailable: discovery provider "docker" has not sent its first snapshot yet`) {
			t.Errorf("health log: %s", out)
		}
		d.requireRunning(name)
	})

	// TPROXY's listener sets IP_TRANSPARENT: root with CAP_NET_ADMIN gets
	// it, the non-root default does not, even with the capability added
	// (Docker gives non-root processes no effective capabilities).
	t.Run("tproxy-needs-root", func(t *testing.T) {
		d := docker{t: t, label: d.label}
		args := []string{"--transparent", "127.0.0.1:10000", "--tproxy", "--forward", "127.0.0.1:7000=127.0.0.1:1"}
		_, stderr, code := d.run(append([]string{"run", "--rm", "--label", d.label, "--cap-add", "NET_ADMIN", img}, args...)...)
		if code == 0 || !strings.Contains(stderr, "setsockopt IP_TRANSPARENT") || !strings.Contains(stderr, "operation not permitted") {
			t.Errorf("non-root with NET_ADMIN: exit %d, want a refused IP_TRANSPARENT:\n%s", code, stderr)
		}
		name := id + "-tproxy"
		d.container(name, false, append([]string{"--user", "0", "--cap-add", "NET_ADMIN", img}, args...)...)
		d.waitLogs(name, regexp.MustCompile(`msg="transparent listener" addr=127\.0\.0\.1:10000 .*tproxy=true`))
		d.requireRunning(name)
	})
}

// stepImageRE matches the image each step of the classic builder leaves
// (" ---> 0123456789ab").
var stepImageRE = regexp.MustCompile(`(?m)^ ---> ([0-9a-f]{12})\s*$`)

// removeStepImages removes, when the test ends, the untagged images the
// build's steps made: the builder stage's layers hold the compiled modules
// and the build cache (some hundreds of MB a run), and the classic builder
// leaves them behind untagged. Images with a tag (the builder image the
// build started FROM) are kept, and so is any image another one still
// builds on (docker refuses: the final stage's first steps are shared
// with the images Dockerfile.dist makes).
func removeStepImages(t *testing.T, buildLog string) {
	var ids []string
	for _, m := range stepImageRE.FindAllStringSubmatch(buildLog, -1) {
		ids = append(ids, m[1])
	}
	t.Cleanup(func() {
		for _, id := range slices.Backward(ids) {
			tags, _, code, err := runCmd(context.Background(), dockerTimeout, "docker", "image", "inspect", "-f", "{{len .RepoTags}}", id)
			if err != nil || code != 0 || strings.TrimSpace(tags) != "0" {
				continue // gone already, or tagged
			}
			_, stderr, code, err := runCmd(context.Background(), dockerTimeout, "docker", "image", "rm", id)
			if (err != nil || code != 0) && !strings.Contains(stderr, "has dependent child images") {
				t.Logf("cleanup: docker image rm %s: exit %d %v %s", id, code, err, stderr)
			}
		}
	})
}

// waitHealth polls a container's health until its status is want and
// returns the status and its health log.
func waitHealth(d docker, name, want string) string {
	d.t.Helper()
	return d.poll(name+" "+want, func(stdout string, _ int) bool {
		return strings.HasPrefix(stdout, want+" ")
	}, "inspect", "-f", "{{.State.Health.Status}} {{range .State.Health.Log}}{{.ExitCode}}: {{.Output}}{{end}}", name)
}

// lastLines is the last n lines of s, for a build log in a failure message.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n") + "\n"
}
