package cli

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/attache/attache/internal/testenv"
)

func run(t *testing.T, environ []string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = Main(context.Background(), Env{Args: args, Environ: environ, Stdout: &out, Stderr: &errb})
	return code, out.String(), errb.String()
}

func TestDemoShowsARequestGoingThrough(t *testing.T) {
	code, out, errs := run(t, nil, "demo")
	if code != ExitOK {
		t.Fatalf("demo exit %d: %s", code, errs)
	}
	for _, want := range []string{"reply: PONG", "reply: OK", `reply: "hello through the ambassador"`} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
}

func TestCheck(t *testing.T) {
	tests := []struct {
		name   string
		env    []string
		args   []string
		code   int
		stdout []string
		stderr []string
	}{
		{
			name:   "link variables",
			env:    []string{"REDIS_PORT_6379_TCP=tcp://192.168.1.52:6379", "REDIS_PORT_6379_TCP_ADDR=192.168.1.52"},
			args:   []string{"check"},
			stdout: []string{"redis-6379", "0.0.0.0:6379", "192.168.1.52:6379", "env REDIS_PORT_6379_TCP"},
		},
		{
			name:   "host port arguments and a forward",
			args:   []string{"check", "--forward", "127.0.0.1:7000=a:1,b:2", "db.internal", "5432"},
			stdout: []string{"forward-7000", "a:1,b:2", "0.0.0.0:5432", "db.internal:5432"},
		},
		{
			name: "udp link variable and forward: the protocol, session timeout and table bound show",
			env:  []string{"DNS_PORT_53_UDP=udp://10.0.0.2:53", "DNS_PORT_53_TCP=tcp://10.0.0.2:53"},
			args: []string{"check", "--forward", "127.0.0.1:5353/udp=10.0.0.3:53"},
			stdout: []string{"dns-53 ", "dns-53-udp", "0.0.0.0:53/udp", "127.0.0.1:5353/udp", "1m0s",
				"10000 sessions", "env DNS_PORT_53_UDP"},
		},
		{
			name:   "every error, exit 2",
			env:    []string{"A_PORT_80_TCP=tcp://x", "B_PORT_81_TCP=http://y:81"},
			args:   []string{"check"},
			code:   ExitUsage,
			stderr: []string{"2 configuration errors", "env A_PORT_80_TCP", "env B_PORT_81_TCP"},
		},
		{
			name:   "bad flag value names the flag",
			args:   []string{"check", "--idle-timeout", "soon"},
			code:   ExitUsage,
			stderr: []string{"-idle-timeout", `"soon"`},
		},
		{
			name:   "bad log format",
			args:   []string{"check", "--log-format", "xml", "h", "1"},
			code:   ExitUsage,
			stderr: []string{"-log-format", "xml"},
		},
		{
			name:   "nothing to do, with the Docker 29 hint",
			env:    []string{"REDIS_NAME=/app/redis"},
			args:   []string{"check"},
			code:   ExitUsage,
			stderr: []string{"no services", "Docker Engine 29", "REDIS_NAME"},
		},
		{
			name:   "flags after HOST PORT",
			args:   []string{"check", "redis", "6379", "--idle-timeout", "1m"},
			stdout: []string{"redis:6379", "1m0s"},
		},
		{
			name:   "explicit --max-connections 0 beats nothing and shows none",
			args:   []string{"check", "--max-connections", "0", "--forward", "7=h:7"},
			stdout: []string{"none"},
		},
		{
			name:   "env links off",
			env:    []string{"REDIS_PORT_6379_TCP=tcp://r:6379"},
			args:   []string{"check", "--env-links=false", "--forward", "1=h:1"},
			stdout: []string{"forward-1"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errs := run(t, tt.env, tt.args...)
			if code != tt.code {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tt.code, out, errs)
			}
			for _, w := range tt.stdout {
				if !strings.Contains(out, w) {
					t.Errorf("stdout lacks %q:\n%s", w, out)
				}
			}
			for _, w := range tt.stderr {
				if !strings.Contains(errs, w) {
					t.Errorf("stderr lacks %q:\n%s", w, errs)
				}
			}
			if tt.name == "env links off" && strings.Contains(out, "redis") {
				t.Errorf("--env-links=false still read the environment:\n%s", out)
			}
		})
	}
}

// TestAdminFlag runs the daemon with --admin on port 0 and checks the API
// answers on the address it reports.
func TestAdminFlag(t *testing.T) {
	echo := testenv.Echo(t, "127.0.0.1:0")
	ctx, cancel := context.WithCancel(context.Background())
	addr := make(chan net.Addr, 1)
	done := make(chan int, 1)
	var out, errb bytes.Buffer
	go func() {
		done <- Main(ctx, Env{
			Args:       []string{"--admin", "127.0.0.1:0", "--forward", "127.0.0.1:0=" + echo},
			Stdout:     &out,
			Stderr:     &errb,
			AdminReady: func(a net.Addr) { addr <- a },
		})
	}()
	var url string
	select {
	case a := <-addr:
		url = "http://" + a.String()
	case code := <-done:
		cancel()
		t.Fatalf("exit %d before the admin API listened: %s", code, errb.String())
	}
	resp, err := http.Get(url + "/v1/services")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	cancel()
	if code := <-done; code != ExitOK {
		t.Errorf("exit %d: %s", code, errb.String())
	}
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), echo) {
		t.Errorf("/v1/services = %d %s, want the forward's backend %s", resp.StatusCode, body, echo)
	}
}
