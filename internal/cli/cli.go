// Package cli is attache's command line: it parses flags and subcommands,
// loads the configuration, and runs the daemon or a one-shot command. It is
// separate from cmd/attache so tests can run the whole command in-process.
package cli

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

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

// runProxy is `attache` and `attache check`: it loads the configuration
// from f, the positional HOST PORT and the environment, then prints the
// routing table (check) or runs the daemon until ctx ends.
func runProxy(cmd *cobra.Command, e Env, f *runFlags, positional []string, check bool) int {
	ctx := cmd.Context()
	if err := f.settle(cmd.Flags(), e.Environ); err != nil {
		fmt.Fprintf(e.Stderr, "attache: %v\n", err)
		return ExitUsage
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
	src := f.sources(positional, e.Environ)
	cfg, err := config.Load(src)
	if err != nil {
		printErrors(e.Stderr, err)
		return ExitUsage
	}
	if check {
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
	notifier, inherited, err := systemd(ctx, e, log, cfg, f.admin, inherited)
	if err != nil {
		fmt.Fprintf(e.Stderr, "attache: %v\n", err)
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
		Upgrade: e.Upgrade, Inherited: inherited, PIDFile: f.pidFile, Notifier: notifier,
		Reload: e.Reload, Loops: f.loops, Version: buildinfo.Version(Version),
		Load: func() (*config.Config, error) { return config.Load(src) },
	})
	if err != nil {
		log.Error("attache stopped", "error", err)
		return ExitRuntime
	}
	return ExitOK
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
		return nil, fmt.Errorf("flag --log-level: want debug, info, warn or error, got %q", level)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch format {
	case "text":
		return func(w io.Writer) slog.Handler { return slog.NewTextHandler(w, opts) }, nil
	case "json":
		return func(w io.Writer) slog.Handler { return slog.NewJSONHandler(w, opts) }, nil
	}
	return nil, fmt.Errorf("flag --log-format: want text or json, got %q", format)
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

// Stdio is the Env of the real process; reload is where SIGHUP arrives.
func Stdio(args []string, reload <-chan os.Signal) Env {
	return Env{Args: args, Environ: os.Environ(), Stdout: os.Stdout, Stderr: os.Stderr, Reload: reload}
}
