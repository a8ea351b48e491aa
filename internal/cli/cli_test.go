package cli

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/attache/attache/internal/daemon"
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
			stdout: []string{"forward-7000", "a:1,b:2", " :5432 ", "db.internal:5432"},
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
			name:   "nothing to do, link names without ports: the linked container exposes none",
			env:    []string{"REDIS_NAME=/app/redis"},
			args:   []string{"check"},
			code:   ExitUsage,
			stderr: []string{"no services", "REDIS_NAME", "exposes none", "--expose PORT", "REDIS_PORT_6379_TCP=tcp://redis:6379"},
		},
		{
			name:   "nothing to do, no link variable at all: the Docker 29 hint",
			env:    []string{"PATH=/bin"},
			args:   []string{"check"},
			code:   ExitUsage,
			stderr: []string{"no services", "--link", "Docker Engine 29", "DOCKER_KEEP_DEPRECATED_LEGACY_LINKS_ENV_VARS=1"},
		},
		{
			name:   "flags after HOST PORT",
			args:   []string{"check", "redis", "6379", "--idle-timeout", "1m"},
			stdout: []string{"redis:6379", "1m0s"},
		},
		{
			// Numbers outside the ranges the help gives were read as some
			// other setting: a negative cap as none, a negative grace as 0.
			name:   "negative --max-connections",
			args:   []string{"check", "--max-connections", "-3", "--forward", "7=h:7"},
			code:   ExitUsage,
			stderr: []string{"--max-connections: want 0 (no limit) or more, got -3"},
		},
		{
			name:   "negative --grace",
			args:   []string{"check", "--grace", "-5s", "--forward", "7=h:7"},
			code:   ExitUsage,
			stderr: []string{"--grace: want a duration of 0 (close at once) or more, got -5s"},
		},
		{
			name:   "--loops below -1",
			args:   []string{"check", "--loops", "-5", "--forward", "7=h:7"},
			code:   ExitUsage,
			stderr: []string{"--loops: want a number of event loops, 0 (one per CPU) or -1 (goroutines), got -5"},
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

// TestHelpPlaceholders: every flag's placeholder in every command's help
// names its value in capitals (DURATION, FILE, N …), as most did; a
// lowercase word reads as part of the sentence ("-grace long",
// "-idle-timeout long" were the examples).
func TestHelpPlaceholders(t *testing.T) {
	flagLine := regexp.MustCompile(`(?m)^ +(?:-\w, )?--(\S+)(?: (\S+))?(?:  |$)`)
	forEachCommand(NewCommand(Env{}), func(cmd *cobra.Command) {
		args := append(strings.Fields(cmd.CommandPath())[1:], "--help")
		_, stdout, _ := run(t, nil, args...)
		lines := flagLine.FindAllStringSubmatch(stdout, -1)
		n := 1 // --help
		cmd.Flags().VisitAll(func(*pflag.Flag) { n++ })
		if len(lines) != n {
			t.Errorf("attache %s: %d flags in the help, want every one:\n%s", strings.Join(args, " "), len(lines), stdout)
		}
		for _, m := range lines {
			if regexp.MustCompile(`^[a-z]+$`).MatchString(m[2]) {
				t.Errorf("attache %s: --%s %s: the placeholder is a lowercase word; name the value in capitals",
					strings.Join(args, " "), m[1], m[2])
			}
		}
	})
}

// TestBarePortListensOnEveryInterface: a listen address given as a bare
// port means every interface, IPv4 and IPv6 (a dual-stack [::] socket, like
// socat's TCP-LISTEN:PORT), whether it comes from HOST PORT arguments or
// from --forward PORT=…; HOST PORT used to listen on 0.0.0.0 only.
func TestBarePortListensOnEveryInterface(t *testing.T) {
	port := strconv.Itoa(testenv.FreePort(t, "::"))
	for _, args := range [][]string{
		{"127.0.0.2", port},
		{"--forward", port + "=127.0.0.2:" + port},
	} {
		ctx, cancel := context.WithCancel(context.Background())
		ready := make(chan []daemon.Bound, 1)
		done := make(chan int, 1)
		var errb bytes.Buffer
		go func() {
			done <- Main(ctx, Env{Args: args, Environ: []string{}, Stdout: io.Discard, Stderr: &errb,
				Ready: func(b []daemon.Bound) { ready <- b }})
		}()
		select {
		case b := <-ready:
			// No connection is made: the backend is this very port.
			if a, ok := b[0].Addr.(*net.TCPAddr); !ok || !a.IP.Equal(net.IPv6unspecified) || strconv.Itoa(a.Port) != port {
				t.Errorf("attache %s listens on %v, want [::]:%s (every interface, IPv4 and IPv6)", strings.Join(args, " "), b[0].Addr, port)
			}
		case code := <-done:
			t.Fatalf("attache %s: exit %d before serving: %s", strings.Join(args, " "), code, errb.String())
		}
		cancel()
		if code := <-done; code != ExitOK {
			t.Fatalf("attache %s: exit %d: %s", strings.Join(args, " "), code, errb.String())
		}
	}
}
