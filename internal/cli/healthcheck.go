package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/attache/attache/internal/config"
)

const healthcheckLong = `Healthcheck exits 0 when the running attache serves, and 1 with a one-line
reason when it does not. It is made for Docker's HEALTHCHECK in a FROM scratch
image, where there is no shell and no curl:

    HEALTHCHECK CMD ["/attache", "healthcheck"]

It needs no arguments there. It works out what the running attache was
started with, in this order:

  1. its own flags and HOST PORT, when given (the same as attache's);
  2. else, when process --pid (1: the container's main process) is
     attache, that process's arguments and environment, read from /proc;
  3. else, no arguments and its own environment (the link variables and
     $ATTACHE_ADMIN that Docker gives every process of the container).

Then, when an admin address is known (--admin, or $ATTACHE_ADMIN), it asks
GET /readyz, the daemon's own verdict; otherwise it connects to every TCP
and Unix listener the configuration names (on loopback for a wildcard
address), the way a client would. UDP listeners cannot be probed without
speaking their protocol and are left out; a listener on port 0 needs
--admin.`

// healthOptions are the flags only `attache healthcheck` has.
type healthOptions struct {
	timeout time.Duration
	pid     int
}

func healthcheckCommand(e Env) *cobra.Command {
	var (
		f runFlags
		o healthOptions
	)
	c := &cobra.Command{
		Use:               "healthcheck [--admin HOST:PORT] [flags] [HOST PORT]",
		Short:             "exit 0 when the running attache serves every listener, 1 with the reason otherwise (Docker HEALTHCHECK)",
		Long:              healthcheckLong,
		Args:              cobra.ArbitraryArgs,
		ValidArgsFunction: cobra.NoFileCompletions,
		RunE: func(cmd *cobra.Command, args []string) error {
			return exitWith(runHealthcheck(cmd, e, &f, o, args))
		},
	}
	fs := c.Flags()
	addRunFlags(fs, &f)
	completeRunFlags(c)
	fs.DurationVar(&o.timeout, "timeout", 5*time.Second, "give up on the whole check after this `DURATION`")
	fs.IntVar(&o.pid, "pid", 1, "without flags or HOST PORT, read the arguments and environment of process `PID` when it is attache")
	for _, n := range []string{"timeout", "pid"} {
		_ = fs.SetAnnotation(n, groupKey, []string{groupHealth})
	}
	return c
}

// probeTarget is what the running attache was started with, as far as the
// health check can tell.
type probeTarget struct {
	flags      *runFlags
	positional []string
	environ    []string
	from       string // where flags, positional and environ came from, for messages
}

func runHealthcheck(cmd *cobra.Command, e Env, f *runFlags, o healthOptions, args []string) int {
	fail := func(err error) int {
		fmt.Fprintf(e.Stderr, "attache healthcheck: unhealthy: %s\n", oneLine(err))
		return ExitRuntime
	}
	t, err := findTarget(cmd, e, f, o, args)
	if err != nil {
		return fail(err)
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), o.timeout)
	defer cancel()
	var ok string
	if t.flags.admin != "" {
		ok, err = probeReadyz(ctx, t.flags.admin)
	} else {
		ok, err = probeListeners(ctx, t)
	}
	if err != nil {
		return fail(fmt.Errorf("%w (settings from %s)", err, t.from))
	}
	fmt.Fprintf(e.Stdout, "attache healthcheck: healthy: %s (settings from %s)\n", ok, t.from)
	return ExitOK
}

// findTarget works out the running attache's flags, arguments and
// environment: the command's own when any is given, else those of process
// o.pid when it is attache, else none and the command's environment.
func findTarget(cmd *cobra.Command, e Env, f *runFlags, o healthOptions, args []string) (probeTarget, error) {
	fs := cmd.Flags()
	given := len(args) > 0
	fs.Visit(func(fl *pflag.Flag) {
		g := fl.Annotations[groupKey]
		given = given || len(g) == 0 || g[0] != groupHealth
	})
	if !given {
		t, found, err := targetOfProcess(cmd.Root(), o.pid, fs.Changed("pid"), e.Environ)
		if err != nil || found {
			return t, err
		}
	}
	from := "the healthcheck's arguments"
	if !given {
		from = "the environment"
	}
	if err := f.settle(fs, e.Environ); err != nil {
		return probeTarget{}, err
	}
	return probeTarget{flags: f, positional: args, environ: e.Environ, from: from}, nil
}

// targetOfProcess reads the arguments and environment of process pid from
// /proc and parses them as attache's. found is false when pid is not
// attache (or cannot be read) and the caller did not name it explicitly.
func targetOfProcess(root *cobra.Command, pid int, explicit bool, environ []string) (t probeTarget, found bool, err error) {
	proc := "/proc/" + strconv.Itoa(pid)
	raw, err := os.ReadFile(proc + "/cmdline")
	if err != nil || len(raw) == 0 {
		if explicit {
			return t, false, fmt.Errorf("--pid %d: reading its arguments: %v", pid, err)
		}
		return t, false, nil
	}
	argv := strings.Split(strings.TrimSuffix(string(raw), "\x00"), "\x00")
	if !isAttache(proc, argv[0]) {
		if explicit {
			return t, false, fmt.Errorf("--pid %d runs %s, not attache", pid, argv[0])
		}
		return t, false, nil
	}
	from := fmt.Sprintf("pid %d's arguments", pid)
	if env, err := os.ReadFile(proc + "/environ"); err == nil {
		environ = strings.Split(strings.TrimSuffix(string(env), "\x00"), "\x00")
		from = fmt.Sprintf("pid %d's arguments and environment", pid)
	}
	args := argv[1:]
	if len(args) > 0 && subcommand(root, args[0]) != nil {
		return t, true, fmt.Errorf("pid %d runs `attache %s`, which serves no listener to check", pid, args[0])
	}
	var f runFlags
	fs := pflag.NewFlagSet("attache", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	addRunFlags(fs, &f)
	fs.BoolVar(&f.version, "version", false, "")
	if err := fs.Parse(respellFlags(fs, args)); err != nil {
		return t, true, fmt.Errorf("%s: %w", from, err)
	}
	if err := f.settle(fs, environ); err != nil {
		return t, true, fmt.Errorf("%s: %w", from, err)
	}
	return probeTarget{flags: &f, positional: fs.Args(), environ: environ, from: from}, true, nil
}

// isAttache reports whether the process at proc runs this very binary
// (its /proc/PID/exe is ours), or, when that link cannot be read (another
// user's process), whether its program name is attache.
func isAttache(proc, argv0 string) bool {
	if self, err := os.Executable(); err == nil {
		a, err1 := os.Stat(self)
		b, err2 := os.Stat(proc + "/exe")
		if err1 == nil && err2 == nil {
			return os.SameFile(a, b)
		}
	}
	return filepath.Base(argv0) == "attache"
}

// probeReadyz asks the admin API at addr whether the daemon is ready.
func probeReadyz(ctx context.Context, addr string) (string, error) {
	url := "http://" + loopbackFor(addr) + "/readyz"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", fmt.Errorf("admin address %q: %w", addr, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("admin API at %s: %w", addr, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode == http.StatusOK {
		return "GET " + url + ": ready", nil
	}
	var v struct{ Error string }
	if json.Unmarshal(body, &v) == nil && v.Error != "" {
		return "", fmt.Errorf("GET %s: %s: %s", url, resp.Status, v.Error)
	}
	return "", fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
}

// probeListeners connects to every TCP and Unix listener of t's
// configuration and closes each connection at once.
func probeListeners(ctx context.Context, t probeTarget) (string, error) {
	cfg, err := config.Load(t.flags.sources(t.positional, t.environ))
	if err != nil {
		return "", fmt.Errorf("the configuration: %w", err)
	}
	type listener struct{ name, addr string }
	var ls []listener
	udp := 0
	for _, s := range cfg.Services {
		if s.IsUDP() {
			udp++
			continue
		}
		ls = append(ls, listener{s.Name, s.Listen})
	}
	if cfg.Transparent.Enabled() {
		ls = append(ls, listener{"transparent", cfg.Transparent.Listen})
	}
	if cfg.Link.Listen != "" {
		ls = append(ls, listener{"link", cfg.Link.Listen})
	}
	if len(ls) == 0 {
		return "", fmt.Errorf("no TCP listener to probe (%d UDP ones cannot be): give --admin", udp)
	}
	var d net.Dialer
	var errs []string
	for _, l := range ls {
		network, addr := "tcp", loopbackFor(l.addr)
		if path, ok := config.UnixPath(l.addr); ok {
			network, addr = "unix", path
		} else if _, port, _ := net.SplitHostPort(addr); port == "0" {
			errs = append(errs, fmt.Sprintf("%s listens on port 0 (chosen at start): give --admin", l.name))
			continue
		}
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s on %s: %v", l.name, l.addr, unwrapOp(err)))
			continue
		}
		c.Close()
	}
	if len(errs) > 0 {
		return "", fmt.Errorf("%d of %d listeners down: %s", len(errs), len(ls), strings.Join(errs, "; "))
	}
	ok := fmt.Sprintf("%d listeners accept connections", len(ls))
	if udp > 0 {
		ok += fmt.Sprintf(" (%d UDP not probed)", udp)
	}
	return ok, nil
}

// loopbackFor is addr with a wildcard host (none, 0.0.0.0, ::) replaced by
// the loopback address of its family: where a local client reaches it.
func loopbackFor(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	return net.JoinHostPort(host, port)
}

// unwrapOp drops a *net.OpError's repetition of the address, which the
// message already names.
func unwrapOp(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err
	}
	return err
}

// oneLine joins the lines of a multi-line error (config.Errors) with "; ".
func oneLine(err error) string {
	var parts []string
	for line := range strings.SplitSeq(err.Error(), "\n") {
		if line = strings.TrimSpace(line); line != "" {
			parts = append(parts, line)
		}
	}
	return strings.Join(parts, "; ")
}
