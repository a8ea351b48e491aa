package cli

import (
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/spf13/cobra"

	"github.com/attache/attache/internal/certs"
	"github.com/attache/attache/internal/config"
)

func certsCommand(e Env) *cobra.Command {
	c := &cobra.Command{
		Use:   "certs init|issue ...",
		Short: "make the fleet CA and host certificates for links",
		Long: `Certs makes the certificates attache links use: one CA for the fleet
(certs init), and a certificate per host signed by it (certs issue).`,
		Args:              cobra.ArbitraryArgs,
		ValidArgsFunction: cobra.NoFileCompletions,
		RunE: func(_ *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usageError("want a subcommand, init or issue")
			}
			return usageError("unknown subcommand %q (want init or issue)", args[0])
		},
	}
	c.AddCommand(certsInitCommand(e), certsIssueCommand(e))
	return c
}

func certsInitCommand(e Env) *cobra.Command {
	var o certs.InitOptions
	c := &cobra.Command{
		Use:   "init [--dir DIR] [--name fleet-ca] [--days 3650] [--force]",
		Short: "create the fleet's CA: DIR/NAME.crt and DIR/NAME.key (0600)",
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageError("unexpected arguments %q (the name is --name)", strings.Join(args, " "))
			}
			return nil
		},
		RunE: func(*cobra.Command, []string) error {
			f, err := certs.Init(o)
			if err != nil {
				fmt.Fprintf(e.Stderr, "attache certs init: %v\n", err)
				return exitCode(ExitUsage)
			}
			fmt.Fprintf(e.Stdout, "CA certificate: %s\nCA key:         %s (keep it private; it signs host certificates)\n", f.Cert, f.Key)
			return nil
		},
	}
	fs := c.Flags()
	fs.StringVar(&o.Dir, "dir", ".", "the directory `DIR` to write the CA's files into")
	fs.StringVar(&o.Name, "name", certs.DefaultCAName, "the CA's `NAME` (file names and subject)")
	fs.IntVar(&o.Days, "days", certs.DefaultCADays, "validity in `DAYS`")
	fs.BoolVar(&o.Force, "force", false, "replace existing files")
	return c
}

func certsIssueCommand(e Env) *cobra.Command {
	var (
		o   certs.IssueOptions
		dns listFlag
		ips listFlag
	)
	c := &cobra.Command{
		Use:   "issue NAME [--dir DIR] [--ca fleet-ca] [--dns N,...] [--ip A,...] [--days 365] [--force]",
		Short: "issue a host certificate signed by the CA in DIR: DIR/NAME.crt and DIR/NAME.key (0600), for TLS server and client use, with NAME (and --dns) as DNS names",
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageError("want exactly one NAME, got %d arguments", len(args))
			}
			return nil
		},
		RunE: func(_ *cobra.Command, args []string) error {
			o.Name = args[0]
			o.DNS = dns
			for _, s := range ips {
				ip := net.ParseIP(s)
				if ip == nil {
					return usageError("--ip: want an IP address, got %q", s)
				}
				o.IPs = append(o.IPs, ip)
			}
			f, err := certs.Issue(o)
			if err != nil {
				fmt.Fprintf(e.Stderr, "attache certs issue: %v\n", err)
				return exitCode(ExitUsage)
			}
			fmt.Fprintf(e.Stdout, "certificate: %s\nkey:         %s\n", f.Cert, f.Key)
			return nil
		},
	}
	fs := c.Flags()
	fs.StringVar(&o.Dir, "dir", ".", "the directory `DIR` holding the CA, where the new files are written")
	fs.StringVar(&o.CAName, "ca", certs.DefaultCAName, "the CA's `NAME`")
	fs.Var(&dns, "dns", "further DNS `NAMES` (comma-separated, repeatable)")
	fs.Var(&ips, "ip", "IP `ADDRESSES` to include (comma-separated, repeatable)")
	fs.IntVar(&o.Days, "days", certs.DefaultDays, "validity in `DAYS`")
	fs.BoolVar(&o.Force, "force", false, "replace existing files")
	return c
}

// listFlag collects comma-separated values over repeated flags.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Type() string   { return "strings" }
func (l *listFlag) Set(v string) error {
	for s := range strings.SplitSeq(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

// printLink adds the link section to `attache check`'s table.
func printLink(w io.Writer, l config.Link) {
	if !l.Enabled() {
		return
	}
	listen := "off (dials only)"
	if l.Listen != "" {
		listen = l.Listen
	}
	fmt.Fprintf(w, "link: listen %s, certificate %s, CA %s (from %s)\n", listen, l.Cert, l.CA, l.Origin)
	for _, o := range l.Offer {
		fmt.Fprintf(w, "link offers %s to %s\n", o.Service, strings.Join(o.Allow, ", "))
	}
	if r := l.Register; r != nil {
		fmt.Fprintf(w, "link registers in etcd as %s under %s (ttl %s)\n", r.Advertise, r.Prefix, r.TTL)
	}
}
