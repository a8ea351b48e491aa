package cli

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/attache/attache/internal/daemon"
	"github.com/attache/attache/internal/testenv"
)

// serve runs the whole command in-process until stop is called (or the
// test ends), returning once every listener serves; admin is the admin
// API's address when args ask for one.
func serve(t *testing.T, environ []string, args ...string) (admin string, stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	adminAddr := make(chan string, 1)
	done := make(chan int, 1)
	var errb bytes.Buffer
	go func() {
		done <- Main(ctx, Env{Args: args, Environ: environ, Stdout: &bytes.Buffer{}, Stderr: &errb,
			Ready:      func([]daemon.Bound) { close(ready) },
			AdminReady: func(a net.Addr) { adminAddr <- a.String() }})
	}()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if code := <-done; code != ExitOK {
			t.Errorf("attache %s: exit %d: %s", strings.Join(args, " "), code, errb.String())
		}
	}
	t.Cleanup(stop)
	select {
	case <-ready:
	case code := <-done:
		stopped = true
		cancel()
		t.Fatalf("attache %s: exit %d before serving: %s", strings.Join(args, " "), code, errb.String())
	}
	select {
	case admin = <-adminAddr:
	default:
	}
	return admin, stop
}

// healthcheck runs `attache healthcheck` in-process and checks its exit
// code and that its one line of output holds want.
func healthcheck(t *testing.T, environ []string, wantCode int, want string, args ...string) {
	t.Helper()
	code, out, errs := run(t, environ, append([]string{"healthcheck"}, args...)...)
	line := out + errs
	if code != wantCode || !strings.Contains(line, want) || strings.Count(line, "\n") != 1 {
		t.Errorf("attache healthcheck %s: exit %d, output %q; want exit %d and one line holding %q",
			strings.Join(args, " "), code, line, wantCode, want)
	}
}

// TestHealthcheckFromFlags: given the running attache's flags, the check
// connects to each listener they make: healthy while it serves, exit 1
// naming the listener that is down once it stopped.
func TestHealthcheckFromFlags(t *testing.T) {
	echo := testenv.Echo(t, "127.0.0.1:0")
	ports := testenv.FreePorts(t, "127.0.0.1", 2)
	args := []string{"--forward", "127.0.0.1:" + strconv.Itoa(ports[0]) + "=" + echo,
		"--forward", strconv.Itoa(ports[1]) + "=" + echo, "--env-links=false"}
	_, stop := serve(t, nil, args...)
	healthcheck(t, nil, ExitOK, "healthy: 2 listeners accept connections (settings from the healthcheck's arguments)", args...)
	// Old spellings, as the daemon's own arguments may be written.
	healthcheck(t, nil, ExitOK, "healthy: 2 listeners", "-forward", args[1], "-forward="+args[3], "-env-links=false")
	stop()
	healthcheck(t, nil, ExitRuntime, "unhealthy: 2 of 2 listeners down: forward-"+strconv.Itoa(ports[0])+" on 127.0.0.1:"+
		strconv.Itoa(ports[0])+": connect: connection refused; forward-"+strconv.Itoa(ports[1])+" on :"+strconv.Itoa(ports[1])+": connect: connection refused", args...)
}

// TestHealthcheckFromEnvironment: with no arguments (Docker's HEALTHCHECK
// runs with the container's environment, not the main process's
// arguments) the link variables make the listeners to probe, as they do
// for `attache` without arguments.
func TestHealthcheckFromEnvironment(t *testing.T) {
	if raw, err := os.ReadFile("/proc/1/cmdline"); err == nil && filepath.Base(strings.Split(string(raw), "\x00")[0]) == "attache" {
		t.Skip("pid 1 is attache here: the check would read its arguments instead")
	}
	echo := testenv.Echo(t, "127.0.0.1:0")
	port := strconv.Itoa(testenv.FreePort(t, "::"))
	env := []string{"ECHO_PORT_" + port + "_TCP=tcp://" + echo}
	_, stop := serve(t, env)
	healthcheck(t, env, ExitOK, "healthy: 1 listeners accept connections (settings from the environment)")
	stop()
	healthcheck(t, env, ExitRuntime, "unhealthy: 1 of 1 listeners down: echo-"+port+" on 0.0.0.0:"+port+": connect: connection refused")
	healthcheck(t, []string{"PATH=/bin"}, ExitRuntime, "unhealthy: the configuration: no services")
}

// TestHealthcheckThroughAdmin: with an admin address (--admin, or
// ATTACHE_ADMIN as Docker gives every process of the container) the check
// is the daemon's /readyz: ready, not ready with the daemon's reason, or
// not answering.
func TestHealthcheckThroughAdmin(t *testing.T) {
	echo := testenv.Echo(t, "127.0.0.1:0")
	admin, stop := serve(t, nil, "--admin", "127.0.0.1:0", "--forward", "127.0.0.1:0="+echo)
	healthcheck(t, nil, ExitOK, "healthy: GET http://"+admin+"/readyz: ready (settings from the healthcheck's arguments)", "--admin", admin)
	healthcheck(t, []string{envAdmin + "=" + admin}, ExitOK, "healthy: GET http://"+admin+"/readyz: ready (settings from the environment)")
	// A wildcard admin address is asked on loopback.
	_, port, _ := net.SplitHostPort(admin)
	healthcheck(t, nil, ExitOK, "ready", "-admin", "0.0.0.0:"+port)
	stop()
	healthcheck(t, nil, ExitRuntime, "unhealthy: admin API at "+admin+": ", "--admin", admin)

	// A discovery provider that cannot reach its source never sends its
	// first snapshot: the daemon serves, but says it is not ready.
	closed := testenv.FreePort(t, "127.0.0.1")
	admin, _ = serve(t, nil, "--admin", "127.0.0.1:0", "--forward", "127.0.0.1:0=consul://127.0.0.1:"+strconv.Itoa(closed)+"/app")
	healthcheck(t, nil, ExitRuntime, "503 Service Unavailable: discovery provider", "--admin", admin)
}

// TestHealthcheckPID: --pid names the process whose arguments to read;
// one that is not attache is refused with its name (test/e2e's
// TestHealthcheckReadsTheRunningAttache reads a real one).
func TestHealthcheckPID(t *testing.T) {
	sleep := exec.Command("sleep", "60")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sleep.Process.Kill(); _ = sleep.Wait() })
	pid := strconv.Itoa(sleep.Process.Pid)
	healthcheck(t, nil, ExitRuntime, "unhealthy: --pid "+pid+" runs sleep, not attache", "--pid", pid)
	healthcheck(t, nil, ExitRuntime, "unhealthy: --pid 0: reading its arguments", "--pid", "0")
}
