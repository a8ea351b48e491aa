// Package cli is attache's command line: it parses flags and subcommands,
// loads the configuration, and runs the daemon or a one-shot command. It is
// separate from cmd/attache so tests can run the whole command in-process.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/attache/attache/internal/buildinfo"
	"github.com/attache/attache/internal/config"
	"github.com/attache/attache/internal/daemon"
	"github.com/attache/attache/internal/listen"
	"github.com/attache/attache/internal/schedbatch"
)

// Exit codes.
const (
	ExitOK      = 0
	ExitRuntime = 1 // a listener could not open or died
	ExitUsage   = 2 // bad flags, arguments, variables or config
)

// Version is set at build time with -ldflags "-X ...cli.Version=...".
// Left "dev", the binary's module version is reported (buildinfo.Version).
var Version = "dev"

// Env is what a command sees of the outside world.
type Env struct {
	Args    []string // without the program name
	Environ []string
	Stdout  io.Writer
	Stderr  io.Writer
	// Ready and AdminReady are passed to the daemon (tests).
	Ready      func([]daemon.Bound)
	AdminReady func(net.Addr)
	// Reload delivers SIGHUP: reload the configuration.
	Reload <-chan os.Signal
	// Upgrade delivers SIGUSR2: hand the listeners to a new process.
	Upgrade <-chan os.Signal
}

const usage = `attache: an ambassador proxy.

Usage:
  attache [flags]                   forward every <ALIAS>_PORT_<port>_TCP (and _UDP) link variable
  attache [flags] HOST PORT         listen on PORT (every interface), forward to HOST:PORT
  attache -c attache.yaml [flags]   forward the services of a config file
  attache check [flags] [HOST PORT] print the routing table, or every error (exit 2)
  attache status [--admin HOST:PORT] [--json]  print a running attache's services and backends
  attache demo [--stay]             run a live demo: an embedded backend behind an ambassador
  attache certs init|issue ...      make the fleet CA and host certificates for links (attache certs help)
  attache upgrade (--pid-file PATH | --pid PID)  zero-downtime upgrade of a running attache (SIGUSR2)
  attache iptables --source CIDR|--uid N --ports P,... [--apply]  print (or install until exit) the rules that redirect to --transparent
  attache version

Sources combine: file services, --forward flags, HOST PORT and link variables
are all served; two of them on one port is an error.

Flags:
`

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

func newFlagSet(name string, stderr io.Writer, f *runFlags) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.file, "c", "", "YAML configuration `FILE`")
	fs.StringVar(&f.file, "config", "", "YAML configuration `FILE` (same as -c)")
	fs.Var(&f.forwards, "forward", "forward `[LISTEN_HOST:]PORT[/udp]=BACKEND[,BACKEND...]` (repeatable; BACKEND is host:port or a discovery form such as srv://name; /udp forwards UDP)")
	fs.BoolVar(&f.envLinks, "env-links", true, "read Docker link variables (<ALIAS>_PORT_<port>_TCP) from the environment")
	fs.Var(durationFlag{&f.defaults.ConnectTimeout, false}, "connect-timeout", "default timeout for one dial to one backend, a `DURATION` such as 5s (default 5s)")
	fs.Var(durationFlag{&f.defaults.IdleTimeout, true}, "idle-timeout", "default: close connections idle for this `DURATION` (such as 10m), or off (default off)")
	fs.Var(durationFlag{&f.defaults.KeepAlive, true}, "keepalive", "default TCP keepalive period, a `DURATION`, or off (default 30s)")
	fs.IntVar(&f.defaults.MaxConnections, "max-connections", 0, "default cap on open connections per listener (`N`; 0: none)")
	fs.DurationVar(&f.grace, "grace", 10*time.Second, "on SIGTERM/SIGINT, let open connections finish for this `DURATION`, then close them (0: at once)")
	fs.StringVar(&f.logFormat, "log-format", "text", "log `FORMAT`: text or json")
	fs.StringVar(&f.logLevel, "log-level", "info", "log `LEVEL`: debug, info, warn or error")
	fs.StringVar(&f.admin, "admin", "", "serve the admin API (/healthz, /readyz, /v1/services, /v1/discovery, /metrics; reload, backends and drain with --admin-token-file) on `HOST:PORT` (default off)")
	fs.StringVar(&f.tokenFile, "admin-token-file", "", "enable the admin API's mutating calls (reload, backends, drain) with the bearer token in `PATH`")
	fs.BoolVar(&f.accessLog, "access-log", true, "log one info line per closed connection (client, backend, duration, bytes, reason); false logs it at debug only")
	fs.StringVar(&f.pidFile, "pid-file", "", "write the process id to `PATH` once serving (rewritten by the new process after an upgrade)")
	fs.StringVar(&f.transparent, "transparent", "", "accept connections redirected by iptables on `[HOST:]PORT` and route each by its original destination port to the service listening on that port (see attache iptables)")
	fs.BoolVar(&f.perConsumer, "per-consumer", false, "with --transparent: the calling container's BACKEND_<port> variable (or attache.connect.<port> label), read through the Docker API, chooses its backends")
	fs.IntVar(&f.loops, "loops", 0, "event loops carrying TCP connections (`N`; 0: one per CPU, or $ATTACHE_LOOPS; -1: two goroutines per connection instead)")
	fs.BoolVar(&f.schedBatch, "sched-batch", true, "run attache's threads under the SCHED_BATCH CPU policy: a woken event loop does not preempt the client or server running on its CPU (fewer context switches, more requests/s on a busy machine; a woken loop may wait a scheduler slice for a busy CPU); false keeps the policy attache was started with")
	fs.BoolVar(&f.tproxy, "tproxy", false, "with --transparent: take connections delivered by TPROXY rules (attache iptables --tproxy) rather than REDIRECT ones; needs CAP_NET_ADMIN")
	fs.BoolVar(&f.version, "version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	return fs
}

// Main runs attache with e and returns the process exit code. ctx ends the
// daemon (the caller ties it to SIGINT and SIGTERM).
func Main(ctx context.Context, e Env) int {
	args := e.Args
	cmd := ""
	if len(args) > 0 {
		switch args[0] {
		case "check", "demo", "version", "help", "status", "certs", "upgrade", "iptables":
			cmd, args = args[0], args[1:]
		}
	}
	switch cmd {
	case "version":
		fmt.Fprintln(e.Stdout, "attache", buildinfo.Version(Version))
		return ExitOK
	case "help":
		newFlagSet("attache", e.Stdout, &runFlags{}).Usage()
		return ExitOK
	case "demo":
		return runDemo(ctx, e, args)
	case "status":
		return runStatus(ctx, e, args)
	case "upgrade":
		return runUpgrade(ctx, e, args)
	case "certs":
		return runCerts(e, args)
	case "iptables":
		return runIptables(ctx, e, args)
	}

	var f runFlags
	fs := newFlagSet("attache", e.Stderr, &f)
	positional, err := parseInterspersed(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return ExitOK
		}
		return ExitUsage
	}
	if err := f.checkRanges(); err != nil {
		fmt.Fprintf(e.Stderr, "attache: %v\n", err)
		return ExitUsage
	}
	fs.Visit(func(fl *flag.Flag) {
		if fl.Name == "max-connections" && f.defaults.MaxConnections == 0 {
			f.defaults.MaxConnections = -1 // explicitly "no limit", beats a file default
		}
	})
	if f.version {
		fmt.Fprintln(e.Stdout, "attache", buildinfo.Version(Version))
		return ExitOK
	}
	handler, err := logHandler(f.logFormat, f.logLevel)
	if err != nil {
		fmt.Fprintf(e.Stderr, "attache: %v\n", err)
		return ExitUsage
	}
	// The main logger and the access log's flusher write to stderr from
	// different goroutines; one lock keeps their lines whole on any writer.
	logOut := &lockedWriter{w: e.Stderr}
	log := slog.New(handler(logOut))
	src := config.Sources{File: f.file, Forwards: f.forwards, Args: positional, Flags: f.defaults, Transparent: f.transparent, PerConsumer: f.perConsumer, TProxy: f.tproxy}
	if f.envLinks {
		src.Env = e.Environ
		if src.Env == nil {
			src.Env = []string{}
		}
	}
	cfg, err := config.Load(src)
	if err != nil {
		printErrors(e.Stderr, err)
		return ExitUsage
	}
	if cmd == "check" {
		printTable(e.Stdout, cfg)
		return ExitOK
	}
	token, err := readToken(f.tokenFile, f.admin)
	if err != nil {
		fmt.Fprintf(e.Stderr, "attache: %v\n", err)
		return ExitUsage
	}
	inherited, err := listen.FromEnviron(e.Environ)
	if err != nil {
		fmt.Fprintf(e.Stderr, "attache: upgrade hand-over: %v\n", err)
		return ExitUsage
	}
	if f.schedBatch {
		if n, err := schedbatch.Apply(); err != nil {
			log.Warn("threads stay under their CPU scheduling policy (see --sched-batch)", "error", err)
		} else {
			log.Debug("threads run under SCHED_BATCH", "switched", n)
		}
	}
	err = daemon.Run(ctx, cfg, daemon.Options{
		Logger: log, Grace: f.grace, Ready: e.Ready, AccessLog: f.accessLog,
		LogOutput: logOut, LogHandler: handler, // access lines: buffered, see daemon/accesslog.go
		Admin: f.admin, AdminReady: e.AdminReady, AdminToken: token,
		Upgrade: e.Upgrade, Inherited: inherited, PIDFile: f.pidFile,
		Reload: e.Reload, Loops: f.loops, Version: buildinfo.Version(Version),
		Load: func() (*config.Config, error) { return config.Load(src) },
	})
	if err != nil {
		log.Error("attache stopped", "error", err)
		return ExitRuntime
	}
	return ExitOK
}

// parseInterspersed parses flags wherever they stand, so that
// `attache redis 6379 --log-level debug` works as well as flags first; "--"
// ends the flags.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return positional, nil
		}
		if len(args) > len(rest) && args[len(args)-len(rest)-1] == "--" {
			return append(positional, rest...), nil
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
}

func printErrors(w io.Writer, err error) {
	var list config.Errors
	if errors.As(err, &list) && len(list) > 1 {
		fmt.Fprintf(w, "attache: %d configuration errors:\n", len(list))
		for _, e := range list {
			fmt.Fprintf(w, "  %v\n", e)
		}
		return
	}
	fmt.Fprintf(w, "attache: %v\n", err)
}

func printTable(w io.Writer, cfg *config.Config) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tLISTEN\tBACKENDS\tBALANCE\tHEALTH\tCONNECT\tIDLE\tMAXCONN\tFROM")
	for _, s := range cfg.Services {
		addrs := make([]string, len(s.Backends))
		for i, b := range s.Backends {
			addrs[i] = backendOf(s, b)
		}
		listen, health, idle, limit := listenOf(s), healthOf(s), offOr(s.IdleTimeout), limitOr(s.MaxConnections)
		if s.IsUDP() {
			listen, health, idle, limit = udpColumns(s)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.Name, listen, strings.Join(addrs, ","),
			s.Balance, health, s.ConnectTimeout, idle, limit, s.Origin)
	}
	tw.Flush()
	if t := cfg.Transparent; t.Enabled() {
		fmt.Fprintf(w, "transparent: listen %s (from %s): a redirected connection goes to the service of its original port\n", t.Listen, t.Origin)
	}
	printLink(w, cfg.Link)
	for _, warn := range cfg.Warnings {
		fmt.Fprintf(w, "warning: %s\n", warn)
	}
}

// healthOf summarises a service's health checking for the table: the active
// check if any, else whether passive ejection is on.
func healthOf(s config.Service) string {
	switch hc := s.HealthCheck; {
	case hc != nil && hc.Send == "" && hc.Expect == "":
		return fmt.Sprintf("tcp/%s", hc.Interval)
	case hc != nil:
		return fmt.Sprintf("expect/%s", hc.Interval)
	case s.EjectTime > 0:
		return "passive"
	}
	return "off"
}

func offOr(d time.Duration) string {
	if d <= 0 {
		return "off"
	}
	return d.String()
}

func limitOr(n int) string {
	if n <= 0 {
		return "none"
	}
	return fmt.Sprint(n)
}

// logHandler checks the log flags and returns what builds a handler in
// their format and level over a writer: the main logger's over stderr, and
// the access log's over a buffer in front of it.
func logHandler(format, level string) (func(io.Writer) slog.Handler, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("flag -log-level: want debug, info, warn or error, got %q", level)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch format {
	case "text":
		return func(w io.Writer) slog.Handler { return slog.NewTextHandler(w, opts) }, nil
	case "json":
		return func(w io.Writer) slog.Handler { return slog.NewJSONHandler(w, opts) }, nil
	}
	return nil, fmt.Errorf("flag -log-format: want text or json, got %q", format)
}

// lockedWriter serializes writes to w.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

type multiFlag []string

func (m *multiFlag) String() string { return strings.Join(*m, " ") }
func (m *multiFlag) Set(v string) error {
	*m = append(*m, v)
	return nil
}

// durationFlag accepts a positive duration, or "off" where allowed.
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

func (f durationFlag) Set(v string) error {
	d, err := config.ParseDuration(v, f.allowOff)
	if err != nil {
		return err
	}
	*f.d = d
	return nil
}

// Stdio is the Env of the real process; reload is where SIGHUP arrives.
func Stdio(args []string, reload <-chan os.Signal) Env {
	return Env{Args: args, Environ: os.Environ(), Stdout: os.Stdout, Stderr: os.Stderr, Reload: reload}
}
