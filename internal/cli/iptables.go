package cli

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/attache/attache/internal/transparent"
)

// runIptables is `attache iptables`: it prints the nat rules that redirect
// a source's connections to attache's transparent listener, and with
// --apply installs them, waits for SIGINT or SIGTERM, and removes exactly
// what it installed. No privileged helper image is needed: the command
// runs where attache runs (or names the namespace with --netns).
func iptablesCommand(e Env) *cobra.Command {
	var o iptablesOptions
	c := &cobra.Command{
		Use:   "iptables [--transparent PORT] (--source CIDR | --uid N)... --ports P[,P...] [--netns NAME] [--tproxy [--mark M] [--table T]] [--apply]",
		Short: "print (or install until exit) the rules that redirect connections to --transparent",
		Long: `Iptables prints the iptables/ip6tables nat rules that redirect the source's
connections to the given ports to attache's transparent listener (with
--tproxy: mangle TPROXY rules, plus the ip rule and route they need). With
--apply, it installs them and removes them on exit.`,
		Args:              cobra.ArbitraryArgs,
		ValidArgsFunction: cobra.NoFileCompletions,
		RunE: func(cmd *cobra.Command, args []string) error {
			return exitWith(runIptables(cmd.Context(), e, &o, args))
		},
	}
	fs := c.Flags()
	spec := &o.spec
	fs.IntVar(&spec.ToPort, "transparent", 10000, "the transparent listener's `PORT` (attache --transparent)")
	fs.Var(&o.sources, "source", "redirect connections from this `CIDR` (a container network routed through this host: PREROUTING; repeatable; IPv6 makes ip6tables rules)")
	fs.Var(&o.uids, "uid", "redirect the connections of local user `N` (OUTPUT, owner match; repeatable; attache must run as another user)")
	fs.StringVar(&o.ports, "ports", "", "destination `PORTS` to redirect, comma-separated (e.g. 6379,5432)")
	fs.StringVar(&spec.Netns, "netns", "", "run the rules inside network namespace `NAME` (ip netns exec), where attache listens")
	fs.StringVar(&spec.Chain, "chain", "", "nat `CHAIN` to put the rules in (default ATTACHE)")
	fs.BoolVar(&spec.TProxy, "tproxy", false, "make mangle-table TPROXY rules (for attache --transparent --tproxy) instead of nat REDIRECT ones, with the ip rule and local route they need")
	fs.UintVar(&o.mark, "mark", 0, "with --tproxy: the firewall `MARK` of TPROXY'd packets, matched as MARK/MARK (default 1)")
	fs.IntVar(&spec.Table, "table", 0, "with --tproxy: the routing `TABLE` of the local route marked packets take (default 100)")
	fs.BoolVar(&o.apply, "apply", false, "install the rules, wait for SIGINT or SIGTERM, then remove them")
	return c
}

// iptablesOptions are the flags of `attache iptables`.
type iptablesOptions struct {
	spec    transparent.Spec
	sources multiFlag
	uids    multiFlag
	ports   string
	mark    uint
	apply   bool
}

func runIptables(ctx context.Context, e Env, o *iptablesOptions, args []string) int {
	spec, sources, uids, ports, mark, apply := o.spec, o.sources, o.uids, o.ports, o.mark, o.apply
	var errs []error
	if len(args) > 0 {
		errs = append(errs, fmt.Errorf("unexpected argument %q", args[0]))
	}
	for _, s := range sources {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			if a, aerr := netip.ParseAddr(s); aerr == nil {
				p, err = a.Prefix(a.BitLen())
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("--source: want a CIDR such as 172.18.0.0/16, got %q", s))
			continue
		}
		spec.Sources = append(spec.Sources, p)
	}
	for _, u := range uids {
		n, err := strconv.Atoi(u)
		if err != nil {
			errs = append(errs, fmt.Errorf("--uid: want a numeric user id, got %q", u))
			continue
		}
		spec.UIDs = append(spec.UIDs, n)
	}
	if ports != "" {
		for p := range strings.SplitSeq(ports, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(p))
			if err != nil {
				errs = append(errs, fmt.Errorf("--ports: want comma-separated port numbers, got %q", p))
				continue
			}
			spec.Ports = append(spec.Ports, n)
		}
	}
	if mark > 0xffffffff {
		errs = append(errs, fmt.Errorf("--mark: want a 32-bit mark, got %d", mark))
	}
	spec.Mark = uint32(mark)
	if len(errs) == 0 {
		errs = append(errs, spec.Validate())
	}
	if err := errors.Join(errs...); err != nil {
		for line := range strings.SplitSeq(err.Error(), "\n") {
			fmt.Fprintf(e.Stderr, "attache iptables: %s\n", line)
		}
		return ExitUsage
	}
	if !apply {
		for _, c := range spec.Rules() {
			fmt.Fprintln(e.Stdout, c)
		}
		fmt.Fprintln(e.Stdout, "# to remove:")
		for _, c := range spec.Removal() {
			fmt.Fprintln(e.Stdout, "#", c)
		}
		return ExitOK
	}
	// From here on a second SIGINT or SIGTERM must not end the process
	// halfway through removing the rules (attache's main lets a second
	// signal kill it): this channel takes them instead, and ctx still ends
	// on the first.
	absorb := make(chan os.Signal, 1)
	signal.Notify(absorb, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(absorb)
	in, err := transparent.Apply(ctx, spec)
	if err != nil {
		fmt.Fprintf(e.Stderr, "attache iptables: %v\n", err)
		return ExitRuntime
	}
	for _, c := range spec.Rules() {
		fmt.Fprintln(e.Stdout, c)
	}
	fmt.Fprintln(e.Stdout, "# installed; they are removed on SIGINT or SIGTERM")
	<-ctx.Done()
	if err := in.Remove(context.WithoutCancel(ctx)); err != nil {
		fmt.Fprintf(e.Stderr, "attache iptables: removing the rules: %v\n", err)
		return ExitRuntime
	}
	fmt.Fprintln(e.Stdout, "# removed")
	return ExitOK
}
