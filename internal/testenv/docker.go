package testenv

// Docker helpers drive the real engine through the docker CLI: test setup is
// allowed to lean on the CLI, while the code under test (discovery/docker)
// speaks the Engine API itself. Nothing is pulled from a registry: the only
// image is built here from a static binary. Every container and network is
// created with a unique name and removed by ID in t.Cleanup.

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// dockerCmdTimeout bounds one docker CLI call, so a wedged engine fails the
// test with a message instead of hanging until the test binary's timeout.
const dockerCmdTimeout = 2 * time.Minute

// echoImageRepo is the repository of the image EchoImage builds; the tag is
// the content hash of the binary inside.
const echoImageRepo = "attache-testenv-echo"

var (
	dockerCheck struct {
		once sync.Once
		err  error
	}
	echoImage struct {
		once sync.Once
		ref  string
		err  error
	}
)

// DockerAvailable makes sure the Docker engine answers. With
// ATTACHE_E2E_DOCKER=0 in the environment the test is skipped, saying so;
// otherwise a missing or unreachable engine fails the test, because a skip
// there would hide that the Docker tests never ran.
func DockerAvailable(t testing.TB) {
	t.Helper()
	if os.Getenv("ATTACHE_E2E_DOCKER") == "0" {
		t.Skip("ATTACHE_E2E_DOCKER=0: tests that need the Docker engine are turned off")
	}
	dockerCheck.once.Do(func() {
		if _, err := exec.LookPath("docker"); err != nil {
			dockerCheck.err = fmt.Errorf("docker CLI not found: %w", err)
			return
		}
		_, dockerCheck.err = dockerRun(nil, "version", "--format", "{{.Server.Version}}")
	})
	if dockerCheck.err != nil {
		t.Fatalf("the Docker engine is required (set ATTACHE_E2E_DOCKER=0 to skip these tests): %v", dockerCheck.err)
	}
}

// DockerSocket returns the path of the engine's unix socket, from
// DOCKER_HOST or the default /var/run/docker.sock. It fails the test when
// DOCKER_HOST names something other than a unix socket.
func DockerSocket(t testing.TB) string {
	t.Helper()
	host := os.Getenv("DOCKER_HOST")
	if host == "" {
		return "/var/run/docker.sock"
	}
	path, ok := strings.CutPrefix(host, "unix://")
	if !ok || path == "" {
		t.Fatalf("DOCKER_HOST=%q: want unix:///path/to/docker.sock", host)
	}
	return path
}

// EchoImage returns the reference of a tiny image FROM scratch that holds
// only /echoserver (internal/testenv/echoserver, built with CGO_ENABLED=0).
// Its arguments are the ports to listen on (7000 by default); -greet makes
// it write its hostname on each new connection.
//
// The image is built once per test binary. It is tagged with the hash of the
// binary and kept in the engine as a cache, so the next run (or another test
// binary) finds it and skips the import; a changed echo server gets a new tag.
// It is made with `docker import` of a one-file tarball rather than `docker
// build`, which needs no builder at all (no BuildKit, no buildx plugin, no
// legacy-builder deprecation) and is exactly an image FROM scratch.
func EchoImage(t testing.TB) string {
	t.Helper()
	DockerAvailable(t)
	echoImage.once.Do(func() { echoImage.ref, echoImage.err = buildEchoImage() })
	if echoImage.err != nil {
		t.Fatalf("build the echo server image: %v", echoImage.err)
	}
	return echoImage.ref
}

func buildEchoImage() (string, error) {
	arch, err := dockerRun(nil, "version", "--format", "{{.Server.Arch}}")
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "attache-echoserver-")
	if err != nil {
		return "", fmt.Errorf("temp dir: %w", err)
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "echoserver")
	ctx, cancel := context.WithTimeout(context.Background(), dockerCmdTimeout)
	defer cancel()
	// -buildvcs=false and -trimpath keep the binary, and so the image tag,
	// the same from one commit or checkout to the next. GOFLAGS is cleared
	// so that a -race from the environment cannot ask for cgo.
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-buildvcs=false",
		"-ldflags=-s -w", "-o", bin, "github.com/attache/attache/internal/testenv/echoserver")
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch, "GOFLAGS=")
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build echoserver for linux/%s: %w\n%s", arch, err, out)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		return "", fmt.Errorf("read built echoserver: %w", err)
	}
	sum := sha256.Sum256(data)
	ref := echoImageRepo + ":" + hex.EncodeToString(sum[:6])
	if _, err := dockerRun(nil, "image", "inspect", "--format", "{{.Id}}", ref); err == nil {
		return ref, nil
	}

	var tarball bytes.Buffer
	tw := tar.NewWriter(&tarball)
	hdr := &tar.Header{Name: "echoserver", Mode: 0o755, Size: int64(len(data)), ModTime: time.Unix(0, 0)}
	if err := tw.WriteHeader(hdr); err != nil {
		return "", fmt.Errorf("tar header: %w", err)
	}
	if _, err := tw.Write(data); err != nil {
		return "", fmt.Errorf("tar body: %w", err)
	}
	if err := tw.Close(); err != nil {
		return "", fmt.Errorf("tar close: %w", err)
	}
	_, err = dockerRun(&tarball, "image", "import",
		"--change", `ENTRYPOINT ["/echoserver"]`,
		"--message", "attache testenv echo server", "-", ref)
	if err != nil {
		return "", err
	}
	return ref, nil
}

// DockerNetwork is a user-defined bridge network made for one test.
type DockerNetwork struct {
	ID   string
	Name string
}

// NewDockerNetwork creates a user-defined bridge network with a unique name
// and removes it (by ID) when the test ends; containers the test started
// are removed before it, because t.Cleanup runs last-in first-out.
func NewDockerNetwork(t testing.TB) DockerNetwork {
	t.Helper()
	DockerAvailable(t)
	name := uniqueName(t)
	id := docker(t, "network", "create", "--driver", "bridge", "--label", "attache.testenv=1", name)
	t.Cleanup(func() {
		if _, err := dockerRun(nil, "network", "rm", id); err != nil && !isNoSuch(err) {
			t.Errorf("remove docker network %s (%s): %v", name, id, err)
		}
	})
	return DockerNetwork{ID: id, Name: name}
}

// Subnet is the network's first IPv4 subnet (CIDR), as the engine chose it.
func (n DockerNetwork) Subnet(t testing.TB) string {
	t.Helper()
	return docker(t, "network", "inspect", "--format", "{{range .IPAM.Config}}{{.Subnet}} {{end}}", n.ID)
}

// ContainerSpec says how to run one echo server container.
type ContainerSpec struct {
	// Labels are set on the container (e.g. attache.service=web).
	Labels map[string]string
	// Network is the network to start on (name or ID); empty means the
	// engine's default bridge.
	Network string
	// Expose adds EXPOSE entries (TCP), as `docker run --expose` does.
	Expose []int
	// Listen are the ports the echo server listens on; empty means 7000.
	Listen []int
	// Greet makes the server write its hostname (the short container ID)
	// and a newline on each new connection.
	Greet bool
	// Env are KEY=value variables set in the container.
	Env []string
}

// DockerContainer is a running container made by RunContainer.
type DockerContainer struct {
	ID   string
	Name string
}

// RunContainer starts a container of EchoImage with a unique name and
// removes it (by ID, with its anonymous volumes) when the test ends.
func RunContainer(t testing.TB, spec ContainerSpec) DockerContainer {
	t.Helper()
	image := EchoImage(t)
	name := uniqueName(t)
	args := []string{"run", "--detach", "--name", name, "--label", "attache.testenv=1"}
	for k, v := range spec.Labels {
		args = append(args, "--label", k+"="+v)
	}
	if spec.Network != "" {
		args = append(args, "--network", spec.Network)
	}
	for _, p := range spec.Expose {
		args = append(args, "--expose", strconv.Itoa(p))
	}
	for _, e := range spec.Env {
		args = append(args, "--env", e)
	}
	args = append(args, image)
	if spec.Greet {
		args = append(args, "-greet")
	}
	for _, p := range spec.Listen {
		args = append(args, strconv.Itoa(p))
	}
	id := docker(t, args...)
	c := DockerContainer{ID: id, Name: name}
	t.Cleanup(func() {
		if _, err := dockerRun(nil, "rm", "--force", "--volumes", id); err != nil && !isNoSuch(err) {
			t.Errorf("remove container %s (%s): %v", name, id, err)
		}
	})
	return c
}

// Hostname is what the echo server greets with: Docker's default hostname,
// the first 12 hex digits of the ID.
func (c DockerContainer) Hostname() string { return c.ID[:min(12, len(c.ID))] }

// Stop stops the container gracefully (SIGTERM; the echo server exits on it).
func (c DockerContainer) Stop(t testing.TB) {
	t.Helper()
	docker(t, "stop", "--time", "10", c.ID)
}

// Start starts a stopped container again.
func (c DockerContainer) Start(t testing.TB) {
	t.Helper()
	docker(t, "start", c.ID)
}

// Kill sends SIGKILL.
func (c DockerContainer) Kill(t testing.TB) {
	t.Helper()
	docker(t, "kill", c.ID)
}

// Pause freezes every process of the container (the cgroup freezer). Its
// network namespace stays up, so its TCP connections stay established: the
// kernel keeps acknowledging and buffering what peers send, and the
// processes answer once unpaused.
func (c DockerContainer) Pause(t testing.TB) {
	t.Helper()
	docker(t, "pause", c.ID)
}

// Unpause resumes a paused container.
func (c DockerContainer) Unpause(t testing.TB) {
	t.Helper()
	docker(t, "unpause", c.ID)
}

// PID returns the host PID of the container's main process, failing the
// test if it has none (not running).
func (c DockerContainer) PID(t testing.TB) int {
	t.Helper()
	out := docker(t, "container", "inspect", "--format", "{{.State.Pid}}", c.ID)
	pid, err := strconv.Atoi(out)
	if err != nil || pid <= 0 {
		t.Fatalf("container %s has no process (pid %q)", c.Name, out)
	}
	return pid
}

// OpenConns counts the TCP connections on local port that are open in the
// network namespace of process pid (see DockerContainer.PID): established,
// or half-closed by the peer and not yet by the process. It reads
// /proc/<pid>/net/tcp and tcp6, which needs root for another user's
// process, and works while the container is paused: that is what it is
// for, seeing the connections a pause froze.
func OpenConns(t testing.TB, pid, port int) int {
	t.Helper()
	n := 0
	for _, f := range []string{"tcp", "tcp6"} {
		path := filepath.Join("/proc", strconv.Itoa(pid), "net", f)
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("socket table of pid %d: %v", pid, err)
		}
		lines := strings.Split(strings.TrimSpace(string(data)), "\n")
		for _, line := range lines[1:] { // the first line names the columns
			// sl local_address rem_address st ...; addresses are HEXIP:HEXPORT.
			fields := strings.Fields(line)
			if len(fields) < 4 {
				continue
			}
			_, hexPort, _ := strings.Cut(fields[1], ":")
			p, err := strconv.ParseUint(hexPort, 16, 16)
			if err != nil || int(p) != port {
				continue
			}
			if st := fields[3]; st == "01" || st == "08" { // ESTABLISHED, CLOSE_WAIT
				n++
			}
		}
	}
	return n
}

// Remove force-removes the container now rather than at the end of the test.
func (c DockerContainer) Remove(t testing.TB) {
	t.Helper()
	docker(t, "rm", "--force", "--volumes", c.ID)
}

// Connect attaches the running container to network (name or ID).
func (c DockerContainer) Connect(t testing.TB, network string) {
	t.Helper()
	docker(t, "network", "connect", network, c.ID)
}

// Disconnect detaches the container from network (name or ID).
func (c DockerContainer) Disconnect(t testing.TB, network string) {
	t.Helper()
	docker(t, "network", "disconnect", network, c.ID)
}

// IP returns the container's IPv4 address on the network with this name,
// failing the test if it has none there.
func (c DockerContainer) IP(t testing.TB, network string) string {
	t.Helper()
	out := docker(t, "container", "inspect", "--format", "{{json .NetworkSettings.Networks}}", c.ID)
	var nets map[string]struct{ IPAddress string }
	if err := json.Unmarshal([]byte(out), &nets); err != nil {
		t.Fatalf("decode networks of container %s: %v (%q)", c.Name, err, out)
	}
	ip := nets[network].IPAddress
	if ip == "" {
		t.Fatalf("container %s has no IP address on network %q (networks: %s)", c.Name, network, out)
	}
	return ip
}

// docker runs the docker CLI and returns its trimmed output, failing the
// test on error.
func docker(t testing.TB, args ...string) string {
	t.Helper()
	out, err := dockerRun(nil, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func dockerRun(stdin *bytes.Buffer, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), dockerCmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "docker", args...)
	if stdin != nil {
		cmd.Stdin = stdin
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return "", &dockerError{args: args, err: err, stderr: strings.TrimSpace(stderr.String())}
	}
	return strings.TrimSpace(stdout.String()), nil
}

type dockerError struct {
	args   []string
	err    error
	stderr string
}

func (e *dockerError) Error() string {
	return fmt.Sprintf("docker %s: %v: %s", strings.Join(e.args, " "), e.err, e.stderr)
}

func (e *dockerError) Unwrap() error { return e.err }

// isNoSuch reports whether the CLI failed because the object is already gone,
// which is fine in a cleanup after the test removed it itself.
func isNoSuch(err error) bool {
	de, ok := errors.AsType[*dockerError](err)
	if !ok {
		return false
	}
	s := strings.ToLower(de.stderr)
	return strings.Contains(s, "no such") || strings.Contains(s, "not found")
}

// uniqueName is attache-<test name>-<random>, within Docker's name alphabet
// ([a-zA-Z0-9][a-zA-Z0-9_.-]*), so leftovers say which test made them.
func uniqueName(t testing.TB) string {
	var b strings.Builder
	for _, r := range t.Name() {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_', r == '.', r == '-':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
	}
	name := b.String()
	if len(name) > 40 {
		name = name[:40]
	}
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	return "attache-" + name + "-" + hex.EncodeToString(rnd[:])
}
