package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestCompletion: `attache completion SHELL` writes cobra's script for
// bash, zsh and fish; the bash one is valid, and real bash, with the
// bash-completion package loaded, completes through it by asking the
// binary: subcommands, flags and the words a flag takes.
func TestCompletion(t *testing.T) {
	for _, shell := range []string{"bash", "zsh", "fish"} {
		stdout, stderr, code := runAttache(t, nil, "completion", shell)
		if code != 0 || !strings.Contains(stdout, "attache") || stderr != "" {
			t.Fatalf("attache completion %s: exit %d, %d bytes, stderr %q", shell, code, len(stdout), stderr)
		}
		script := filepath.Join(t.TempDir(), "attache."+shell)
		if err := os.WriteFile(script, []byte(stdout), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := exec.LookPath(shell); err != nil {
			if shell == "bash" {
				t.Fatal("bash is not installed")
			}
			t.Logf("%s is not installed: its script's syntax is not checked", shell)
			continue
		}
		if out, err := exec.Command(shell, "-n", script).CombinedOutput(); err != nil {
			t.Errorf("%s -n on attache's %s completion: %v\n%s", shell, shell, err, out)
		}
	}
	const bashCompletion = "/usr/share/bash-completion/bash_completion"
	if _, err := os.Stat(bashCompletion); err != nil {
		t.Fatalf("the bash-completion package is not installed (scripts/deps.sh installs it): %v", err)
	}
	// What bash does on TAB: COMP_WORDS and COMP_CWORD describe the line,
	// then the function `complete -p attache` names fills COMPREPLY.
	const complete = `source ` + bashCompletion + `
source <(attache completion bash)
COMP_LINE="$1"
read -ra COMP_WORDS <<< "$COMP_LINE"
[[ "$COMP_LINE" == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
COMP_POINT=${#COMP_LINE}
__start_attache 2>/dev/null
echo "${COMPREPLY[*]}"`
	tests := []struct{ line, want string }{
		{"attache ch", "check"},
		{"attache c", "certs check completion"},
		{"attache certs i", "init issue"},
		{"attache check --log-f", "--log-format"},
		{"attache check --log-format ", "text json"},
		{"attache healthcheck --ti", "--timeout"},
		{"attache completion ", "bash fish powershell zsh"},
	}
	for _, tt := range tests {
		cmd := exec.Command("bash", "-c", complete, "bash", tt.line)
		cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(attacheBin)+":"+os.Getenv("PATH"))
		out, err := cmd.Output()
		if got := strings.TrimSpace(string(out)); err != nil || got != tt.want {
			t.Errorf("bash completing %q: %q (%v), want %q", tt.line, got, err, tt.want)
		}
	}
}

// TestHealthcheckReadsTheRunningAttache: without flags, `attache
// healthcheck --pid PID` reads the running attache's arguments (here in
// the old single-dash spellings) and environment from /proc: it probes
// the listeners they make, or asks /readyz when they name an admin
// address. Once that attache has stopped, the same check fails naming
// the listener that is down.
func TestHealthcheckReadsTheRunningAttache(t *testing.T) {
	echo := echoServer(t)
	port := itoa(freePort(t))
	p := startAttache(t, []string{"ECHO_PORT_" + port + "_TCP=tcp://" + echo}, "-log-level", "debug", "-grace=0")
	p.listenAddrs(t, 1)
	pid := itoa(p.cmd.Process.Pid)
	stdout, stderr, code := runAttache(t, nil, "healthcheck", "--pid", pid)
	if want := "attache healthcheck: healthy: 1 listeners accept connections (settings from pid " + pid + "'s arguments and environment)\n"; code != 0 || stdout != want {
		t.Errorf("healthcheck --pid %s: exit %d, stdout %q, stderr %q; want %q", pid, code, stdout, stderr, want)
	}

	adminPort := itoa(freePort(t))
	a := startAttache(t, nil, "-forward", "127.0.0.1:0="+echo, "-admin", "127.0.0.1:"+adminPort)
	a.listenAddrs(t, 1)
	stdout, _, code = runAttache(t, nil, "healthcheck", "--pid", itoa(a.cmd.Process.Pid))
	if code != 0 || !strings.Contains(stdout, "GET http://127.0.0.1:"+adminPort+"/readyz: ready") {
		t.Errorf("healthcheck of an attache with -admin: exit %d, %q; want /readyz asked", code, stdout)
	}

	p.signal(t, 15)
	p.wait(t, exitTimeout)
	_, stderr, code = runAttache(t, []string{"ECHO_PORT_" + port + "_TCP=tcp://" + echo}, "healthcheck", "--timeout", "5s", "--env-links")
	if want := "attache healthcheck: unhealthy: 1 of 1 listeners down: echo-" + port + " on 0.0.0.0:" + port + ": connect: connection refused"; code != 1 || !strings.HasPrefix(stderr, want) {
		t.Errorf("healthcheck after the attache stopped: exit %d, stderr %q; want exit 1 and %q", code, stderr, want)
	}
}

// TestDockerHealthcheck: in a FROM scratch image, HEALTHCHECK CMD
// ["/attache", "healthcheck"] with no arguments makes Docker report the
// container healthy while attache serves the listener its link variable
// makes, and unhealthy with the daemon's reason while its /readyz says
// not ready (its admin address read from pid 1's arguments).
func TestDockerHealthcheck(t *testing.T) {
	d := requireDocker(t)
	id := newRunID(t)
	base := buildAttacheImage(d, id+"-base:latest")
	ctx := t.TempDir()
	writeFile(t, filepath.Join(ctx, "Dockerfile"), "FROM "+base+"\n"+
		`HEALTHCHECK --interval=1s --timeout=10s --retries=1 CMD ["/attache", "healthcheck"]`+"\n")
	img := id + "-hc:latest"
	d.cleanup("image", "rm", "-f", img)
	d.must("build", "--force-rm", "--label", d.label, "-t", img, ctx)

	health := func(name, want string) string {
		return d.poll(name+" "+want, func(stdout string, _ int) bool {
			return strings.HasPrefix(stdout, want)
		}, "inspect", "-f", "{{.State.Health.Status}} {{range .State.Health.Log}}{{.ExitCode}}: {{.Output}}{{end}}", name)
	}
	d.container(id+"-up", false, "-e", "DB_PORT_5432_TCP=tcp://192.0.2.1:5432", img)
	out := health(id+"-up", "healthy")
	if !regexp.MustCompile(`0: attache healthcheck: healthy: 1 listeners accept connections \(settings from pid 1's arguments and environment\)`).MatchString(out) {
		t.Errorf("healthy container's health log: %s", out)
	}
	// A Consul source that cannot be reached never sends its first
	// snapshot: the listener serves, /readyz says why it is not ready.
	d.container(id+"-down", false, img, "--admin", "127.0.0.1:9901", "--forward", "7000=consul://127.0.0.1:1/app")
	out = health(id+"-down", "unhealthy")
	if !strings.Contains(out, "1: attache healthcheck: unhealthy: GET http://127.0.0.1:9901/readyz: 503 Service Unavailable: discovery provider") {
		t.Errorf("unhealthy container's health log: %s", out)
	}
	d.requireRunning(id + "-down")
}
