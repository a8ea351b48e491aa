package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/attache/attache/internal/buildinfo"
)

// exitCode is what a command returns when it has already said why it
// failed: Main exits with the code and prints nothing more.
type exitCode int

func (c exitCode) Error() string { return fmt.Sprintf("exit status %d", int(c)) }

// exitWith turns a command's exit code into its RunE result.
func exitWith(code int) error {
	if code == ExitOK {
		return nil
	}
	return exitCode(code)
}

// usageError is a command's complaint about its arguments, flags or
// environment: Main prints it with the hint to --help and exits 2.
func usageError(format string, a ...any) error {
	return fmt.Errorf(format, a...)
}

const rootLong = `attache: an ambassador proxy.

Sources combine: file services, --forward flags, HOST PORT and link variables
are all served; two of them on one port is an error.`

// runForms are the ways to start the proxy itself, the root command's own
// usage lines.
var runForms = [][2]string{
	{"attache [flags]", "forward every <ALIAS>_PORT_<port>_TCP (and _UDP) link variable"},
	{"attache [flags] HOST PORT", "listen on PORT (every interface), forward to HOST:PORT"},
	{"attache -c attache.yaml [flags]", "forward the services of a config file"},
}

// NewCommand builds attache's command tree over e. Main runs it; the man
// page generator (internal/cli/genman) and the completion scripts read it.
func NewCommand(e Env) *cobra.Command {
	var f runFlags
	root := &cobra.Command{
		Use:                   "attache [flags] [HOST PORT]",
		Short:                 "an ambassador proxy for TCP and UDP services",
		Long:                  rootLong,
		Args:                  cobra.ArbitraryArgs,
		SilenceErrors:         true,
		SilenceUsage:          true,
		DisableFlagsInUseLine: true,
		ValidArgsFunction:     cobra.NoFileCompletions,
		RunE: func(cmd *cobra.Command, args []string) error {
			if f.version {
				fmt.Fprintln(e.Stdout, "attache", buildinfo.Version(Version))
				return nil
			}
			if len(args) == 1 {
				if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
					return usageError("unknown command %q; did you mean %s?", args[0], strings.Join(s, " or "))
				}
			}
			return exitWith(runProxy(cmd, e, &f, args, false))
		},
	}
	addRunFlags(root.Flags(), &f)
	completeRunFlags(root)
	root.Flags().BoolVar(&f.version, "version", false, "print the version and exit")
	_ = root.Flags().SetAnnotation("version", groupKey, []string{groupOther})
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return err })
	root.SetHelpFunc(func(cmd *cobra.Command, _ []string) { printHelp(cmd.OutOrStdout(), cmd) })
	root.SetUsageFunc(func(cmd *cobra.Command) error { printHelp(cmd.OutOrStdout(), cmd); return nil })
	root.AddCommand(
		checkCommand(e),
		statusCommand(e),
		healthcheckCommand(e),
		demoCommand(e),
		certsCommand(e),
		upgradeCommand(e),
		iptablesCommand(e),
		&cobra.Command{
			Use:   "version",
			Short: "print the version",
			Args:  cobra.NoArgs,
			Run:   func(*cobra.Command, []string) { fmt.Fprintln(e.Stdout, "attache", buildinfo.Version(Version)) },
		},
	)
	root.SuggestionsMinimumDistance = 2
	forEachCommand(root, func(c *cobra.Command) {
		c.DisableFlagsInUseLine = true
		c.Flags().SortFlags = false
	})
	root.SetOut(e.Stdout)
	root.SetErr(e.Stderr)
	return root
}

func checkCommand(e Env) *cobra.Command {
	var f runFlags
	c := &cobra.Command{
		Use:   "check [flags] [HOST PORT]",
		Short: "print the routing table the same flags, file and variables make, or every error (exit 2)",
		Long: `Check loads the configuration exactly as attache would (flags, -c file,
HOST PORT and link variables) and prints the routing table without opening
any listener; every error is printed, and the exit status is 2.`,
		Args:              cobra.ArbitraryArgs,
		ValidArgsFunction: cobra.NoFileCompletions,
		RunE: func(cmd *cobra.Command, args []string) error {
			return exitWith(runProxy(cmd, e, &f, args, true))
		},
	}
	addRunFlags(c.Flags(), &f)
	completeRunFlags(c)
	return c
}

// Main runs attache with e and returns the process exit code. ctx ends the
// daemon (the caller ties it to SIGINT and SIGTERM).
func Main(ctx context.Context, e Env) int {
	root := NewCommand(e)
	root.SetArgs(respellArgs(root, e.Args))
	cmd, err := root.ExecuteContextC(ctx)
	var code exitCode
	switch {
	case err == nil:
		return ExitOK
	case errors.As(err, &code):
		return int(code)
	}
	if cmd == nil {
		cmd = root
	}
	fmt.Fprintf(e.Stderr, "%s: %v\nRun '%s --help' for usage.\n", cmd.CommandPath(), err, cmd.CommandPath())
	return ExitUsage
}

// printHelp is every command's help: its description, usage lines,
// subcommands, and flags under their headings.
func printHelp(w io.Writer, cmd *cobra.Command) {
	desc := cmd.Long
	if desc == "" {
		desc = cmd.Short
	}
	fmt.Fprintf(w, "%s\n\nUsage:\n", strings.TrimSpace(desc))
	if !cmd.HasParent() {
		for _, form := range runForms {
			fmt.Fprintf(w, "  %-34s %s\n", form[0], form[1])
		}
	} else if cmd.Runnable() {
		fmt.Fprintf(w, "  %s\n", cmd.UseLine())
	}
	if cmd.HasAvailableSubCommands() {
		if !cmd.HasParent() {
			fmt.Fprintln(w, "\nCommands:")
		}
		for _, sub := range cmd.Commands() {
			if sub.IsAvailableCommand() {
				fmt.Fprintf(w, "  %s\n      %s\n", sub.UseLine(), sub.Short)
			}
		}
	}
	printFlagGroups(w, cmd.Flags())
	if cmd.HasAvailableSubCommands() {
		fmt.Fprintf(w, "\nRun '%s help COMMAND' (or '%[1]s COMMAND --help') for a command's flags.\n", cmd.CommandPath())
	}
}

// printFlagGroups lists fs's flags under their headings.
func printFlagGroups(w io.Writer, fs *pflag.FlagSet) {
	for _, g := range flagGroups(fs) {
		fmt.Fprintf(w, "\n%s:\n%s", g.name, g.flags.FlagUsagesWrapped(100))
	}
}

// flagGroup is one heading of the help and the flags listed under it.
type flagGroup struct {
	name  string
	flags *pflag.FlagSet
}

// flagGroups sorts fs's visible flags under their headings (the groupKey
// annotation), in groupOrder. A command without headings lists its flags
// under "Flags"; in one with headings, a flag without one (--help) goes
// under "Other".
func flagGroups(fs *pflag.FlagSet) []flagGroup {
	grouped := false
	fs.VisitAll(func(fl *pflag.Flag) { grouped = grouped || len(fl.Annotations[groupKey]) > 0 })
	sets := map[string]*pflag.FlagSet{}
	fs.VisitAll(func(fl *pflag.Flag) {
		if fl.Hidden {
			return
		}
		name := "Flags"
		if g := fl.Annotations[groupKey]; len(g) > 0 {
			name = g[0]
		} else if grouped {
			name = groupOther
		}
		set, ok := sets[name]
		if !ok {
			set = pflag.NewFlagSet(name, pflag.ContinueOnError)
			set.SortFlags = false
			sets[name] = set
		}
		set.AddFlag(fl)
	})
	var groups []flagGroup
	for _, name := range append([]string{"Flags"}, groupOrder...) {
		if set, ok := sets[name]; ok {
			groups = append(groups, flagGroup{name, set})
		}
	}
	return groups
}

// noArgs refuses any positional argument, naming the first.
func noArgs(_ *cobra.Command, args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("unexpected argument %q", args[0])
	}
	return nil
}

// forEachCommand calls fn on cmd and every command below it.
func forEachCommand(cmd *cobra.Command, fn func(*cobra.Command)) {
	fn(cmd)
	for _, c := range cmd.Commands() {
		forEachCommand(c, fn)
	}
}
