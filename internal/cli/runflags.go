package cli

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/attache/attache/internal/config"
)

// runFlags are the flags of the proxy itself: `attache`, `attache check`
// and `attache healthcheck` (which rebuilds the listeners from them) share
// them.
type runFlags struct {
	file      string
	forwards  multiFlag
	envLinks  bool
	defaults  config.Defaults
	grace     time.Duration
	logFormat string
	logLevel  string
	admin     string
	tokenFile string
	accessLog bool
	pidFile   string
	version   bool
	// transparent is the --transparent listener's [HOST:]PORT.
	transparent string
	perConsumer bool
	tproxy      bool
	loops       int
	schedBatch  bool
}

// groupKey is the flag annotation naming the heading a flag is listed
// under in the help (see printFlagGroups).
const groupKey = "attache_group"

// The help's flag headings, in the order they are printed.
const (
	groupSources     = "Sources"
	groupTransparent = "Transparent proxying"
	groupDefaults    = "Connection defaults (a service's own setting wins)"
	groupAdmin       = "Admin & observability"
	groupLogging     = "Logging"
	groupProcess     = "Process & upgrades"
	groupHealth      = "Health check"
	groupOther       = "Other"
)

var groupOrder = []string{groupSources, groupTransparent, groupDefaults, groupAdmin, groupLogging, groupProcess, groupHealth, groupOther}

// envAdmin names the variable that is --admin's default wherever the flag
// exists: one ENV line in an image sets both the daemon's admin address and
// where `attache healthcheck` and `attache status` look for it.
const envAdmin = "ATTACHE_ADMIN"

// addRunFlags defines the proxy's flags on fs, each under its help heading.
func addRunFlags(fs *pflag.FlagSet, f *runFlags) {
	fs.SortFlags = false
	in := func(group string, names ...string) {
		for _, n := range names {
			_ = fs.SetAnnotation(n, groupKey, []string{group})
		}
	}
	fs.StringVarP(&f.file, "config", "c", "", "YAML configuration `FILE`")
	fs.Var(&f.forwards, "forward", "forward `SPEC`: [LISTEN_HOST:]PORT[/udp]=BACKEND[,BACKEND...] (repeatable; BACKEND is host:port or a discovery form such as srv://name; /udp forwards UDP)")
	fs.BoolVar(&f.envLinks, "env-links", true, "read Docker link variables (<ALIAS>_PORT_<port>_TCP) from the environment")
	in(groupSources, "config", "forward", "env-links")

	fs.StringVar(&f.transparent, "transparent", "", "accept connections redirected by iptables on `[HOST:]PORT` and route each by its original destination port to the service listening on that port (see attache iptables)")
	fs.BoolVar(&f.perConsumer, "per-consumer", false, "with --transparent: the calling container's BACKEND_<port> variable (or attache.connect.<port> label), read through the Docker API, chooses its backends")
	fs.BoolVar(&f.tproxy, "tproxy", false, "with --transparent: take connections delivered by TPROXY rules (attache iptables --tproxy) rather than REDIRECT ones; needs CAP_NET_ADMIN")
	in(groupTransparent, "transparent", "per-consumer", "tproxy")

	fs.Var(durationFlag{&f.defaults.ConnectTimeout, false}, "connect-timeout", "default timeout for one dial to one backend, a `DURATION` such as 5s (default 5s)")
	fs.Var(durationFlag{&f.defaults.IdleTimeout, true}, "idle-timeout", "default: close connections idle for this `DURATION` (such as 10m), or off (default off)")
	fs.Var(durationFlag{&f.defaults.KeepAlive, true}, "keepalive", "default TCP keepalive period, a `DURATION`, or off (default 30s)")
	fs.IntVar(&f.defaults.MaxConnections, "max-connections", 0, "default cap on open connections per listener (`N`; 0: none)")
	in(groupDefaults, "connect-timeout", "idle-timeout", "keepalive", "max-connections")

	fs.StringVar(&f.admin, "admin", "", "serve the admin API (/healthz, /readyz, /v1/services, /v1/discovery, /metrics; reload, backends and drain with --admin-token-file) on `HOST:PORT` (default $"+envAdmin+", else off)")
	fs.StringVar(&f.tokenFile, "admin-token-file", "", "enable the admin API's mutating calls (reload, backends, drain) with the bearer token in `PATH`")
	in(groupAdmin, "admin", "admin-token-file")

	fs.StringVar(&f.logFormat, "log-format", "text", "log `FORMAT`: text or json")
	fs.StringVar(&f.logLevel, "log-level", "info", "log `LEVEL`: debug, info, warn or error")
	fs.BoolVar(&f.accessLog, "access-log", true, "log one info line per closed connection (client, backend, duration, bytes, reason); false logs it at debug only")
	in(groupLogging, "log-format", "log-level", "access-log")

	fs.DurationVar(&f.grace, "grace", 10*time.Second, "on SIGTERM/SIGINT, let open connections finish for this `DURATION`, then close them (0: at once)")
	fs.StringVar(&f.pidFile, "pid-file", "", "write the process id to `PATH` once serving (rewritten by the new process after an upgrade)")
	fs.IntVar(&f.loops, "loops", 0, "event loops carrying TCP connections (`N`; 0: one per CPU, or $ATTACHE_LOOPS; -1: two goroutines per connection instead)")
	fs.BoolVar(&f.schedBatch, "sched-batch", true, "run attache's threads under the SCHED_BATCH CPU policy: a woken event loop does not preempt the client or server running on its CPU (fewer context switches, more requests/s on a busy machine; a woken loop may wait a scheduler slice for a busy CPU); false keeps the policy attache was started with")
	in(groupProcess, "grace", "pid-file", "loops", "sched-batch")
}

// completeRunFlags offers the values of the proxy's flags that take one
// of a few words to shell completion.
func completeRunFlags(cmd *cobra.Command) {
	words := map[string][]string{
		"log-format": {"text", "json"},
		"log-level":  {"debug", "info", "warn", "error"},
	}
	for name, values := range words {
		_ = cmd.RegisterFlagCompletionFunc(name, cobra.FixedCompletions(values, cobra.ShellCompDirectiveNoFileComp))
	}
	for _, name := range []string{"forward", "transparent", "admin", "connect-timeout", "idle-timeout", "keepalive", "max-connections", "grace", "loops"} {
		_ = cmd.RegisterFlagCompletionFunc(name, cobra.NoFileCompletions)
	}
}

// checkRanges refuses the numeric flags outside the ranges their help
// gives, which would otherwise be read as some other setting (a negative
// --max-connections as none, a negative --grace as 0, --loops -5 as -1).
func (f *runFlags) checkRanges() error {
	switch {
	case f.grace < 0:
		return fmt.Errorf("--grace: want a duration of 0 (close at once) or more, got %v", f.grace)
	case f.defaults.MaxConnections < 0:
		return fmt.Errorf("--max-connections: want 0 (no limit) or more, got %d", f.defaults.MaxConnections)
	case f.loops < -1:
		return fmt.Errorf("--loops: want a number of event loops, 0 (one per CPU) or -1 (goroutines), got %d", f.loops)
	}
	return nil
}

// settle finishes what parsing fs into f leaves open: the ranges, an
// explicit --max-connections 0, and --admin's default from environ.
func (f *runFlags) settle(fs *pflag.FlagSet, environ []string) error {
	if err := f.checkRanges(); err != nil {
		return err
	}
	if fs.Changed("max-connections") && f.defaults.MaxConnections == 0 {
		f.defaults.MaxConnections = -1 // explicitly "no limit", beats a file default
	}
	if !fs.Changed("admin") {
		f.admin = lookupEnv(environ, envAdmin)
	}
	return nil
}

// sources is what config.Load reads for these flags, positional HOST PORT
// arguments and environment.
func (f *runFlags) sources(positional, environ []string) config.Sources {
	src := config.Sources{File: f.file, Forwards: f.forwards, Args: positional, Flags: f.defaults,
		Transparent: f.transparent, PerConsumer: f.perConsumer, TProxy: f.tproxy}
	if f.envLinks {
		src.Env = environ
		if src.Env == nil {
			src.Env = []string{}
		}
	}
	return src
}

// lookupEnv is the value of the variable name in environ ("" when unset).
func lookupEnv(environ []string, name string) string {
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok && k == name {
			return v
		}
	}
	return ""
}

// multiFlag collects a flag given several times.
type multiFlag []string

func (m *multiFlag) String() string { return strings.Join(*m, " ") }
func (m *multiFlag) Type() string   { return "strings" }
func (m *multiFlag) Set(v string) error {
	*m = append(*m, v)
	return nil
}

// durationFlag accepts a positive duration, or "off" where allowed.
type durationFlag struct {
	d        *time.Duration
	allowOff bool
}

func (f durationFlag) String() string {
	if f.d == nil || *f.d == 0 {
		return ""
	}
	return offOr(*f.d)
}

func (f durationFlag) Type() string { return "duration" }

func (f durationFlag) Set(v string) error {
	d, err := config.ParseDuration(v, f.allowOff)
	if err != nil {
		return err
	}
	*f.d = d
	return nil
}
