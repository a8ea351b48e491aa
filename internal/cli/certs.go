package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/attache/attache/internal/certs"
	"github.com/attache/attache/internal/config"
)

const certsUsage = `Usage:
  attache certs init [--dir D] [--name fleet-ca] [--days 3650] [--force]
      create the fleet's CA: D/NAME.crt and D/NAME.key (0600)
  attache certs issue NAME [--dir D] [--ca fleet-ca] [--dns N,...] [--ip A,...] [--days 365] [--force]
      issue a host certificate signed by the CA in D: D/NAME.crt and D/NAME.key (0600),
      for TLS server and client use, with NAME (and --dns) as DNS names

`

// runCerts is `attache certs init|issue`.
func runCerts(e Env, args []string) int {
	if len(args) == 0 {
		fmt.Fprint(e.Stderr, "attache certs: want a subcommand, init or issue\n\n"+certsUsage)
		return ExitUsage
	}
	switch args[0] {
	case "init":
		return certsInit(e, args[1:])
	case "issue":
		return certsIssue(e, args[1:])
	case "help", "-h", "--help":
		fmt.Fprint(e.Stdout, certsUsage)
		return ExitOK
	}
	fmt.Fprintf(e.Stderr, "attache certs: unknown subcommand %q (want init or issue)\n\n%s", args[0], certsUsage)
	return ExitUsage
}

func certsFlagSet(name string, e Env) *flag.FlagSet {
	fs := flag.NewFlagSet("attache certs "+name, flag.ContinueOnError)
	fs.SetOutput(e.Stderr)
	fs.Usage = func() {
		fmt.Fprint(e.Stderr, certsUsage)
		fs.PrintDefaults()
	}
	return fs
}

func certsInit(e Env, args []string) int {
	var o certs.InitOptions
	fs := certsFlagSet("init", e)
	fs.StringVar(&o.Dir, "dir", ".", "the directory `DIR` to write the CA's files into")
	fs.StringVar(&o.Name, "name", certs.DefaultCAName, "the CA's `NAME` (file names and subject)")
	fs.IntVar(&o.Days, "days", certs.DefaultCADays, "validity in `DAYS`")
	fs.BoolVar(&o.Force, "force", false, "replace existing files")
	rest, err := parseInterspersed(fs, args)
	if err != nil {
		return helpOrUsage(err)
	}
	if len(rest) > 0 {
		fmt.Fprintf(e.Stderr, "attache certs init: unexpected arguments %q (the name is --name)\n", strings.Join(rest, " "))
		return ExitUsage
	}
	f, err := certs.Init(o)
	if err != nil {
		fmt.Fprintf(e.Stderr, "attache certs init: %v\n", err)
		return ExitUsage
	}
	fmt.Fprintf(e.Stdout, "CA certificate: %s\nCA key:         %s (keep it private; it signs host certificates)\n", f.Cert, f.Key)
	return ExitOK
}

func certsIssue(e Env, args []string) int {
	var (
		o   certs.IssueOptions
		dns listFlag
		ips listFlag
	)
	fs := certsFlagSet("issue", e)
	fs.StringVar(&o.Dir, "dir", ".", "the directory `DIR` holding the CA, where the new files are written")
	fs.StringVar(&o.CAName, "ca", certs.DefaultCAName, "the CA's `NAME`")
	fs.Var(&dns, "dns", "further DNS `NAMES` (comma-separated, repeatable)")
	fs.Var(&ips, "ip", "IP `ADDRESSES` to include (comma-separated, repeatable)")
	fs.IntVar(&o.Days, "days", certs.DefaultDays, "validity in `DAYS`")
	fs.BoolVar(&o.Force, "force", false, "replace existing files")
	rest, err := parseInterspersed(fs, args)
	if err != nil {
		return helpOrUsage(err)
	}
	if len(rest) != 1 {
		fmt.Fprintf(e.Stderr, "attache certs issue: want exactly one NAME, got %d arguments\n\n%s", len(rest), certsUsage)
		return ExitUsage
	}
	o.Name = rest[0]
	o.DNS = dns
	for _, s := range ips {
		ip := net.ParseIP(s)
		if ip == nil {
			fmt.Fprintf(e.Stderr, "attache certs issue: --ip: want an IP address, got %q\n", s)
			return ExitUsage
		}
		o.IPs = append(o.IPs, ip)
	}
	f, err := certs.Issue(o)
	if err != nil {
		fmt.Fprintf(e.Stderr, "attache certs issue: %v\n", err)
		return ExitUsage
	}
	fmt.Fprintf(e.Stdout, "certificate: %s\nkey:         %s\n", f.Cert, f.Key)
	return ExitOK
}

func helpOrUsage(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return ExitOK
	}
	return ExitUsage
}

// listFlag collects comma-separated values over repeated flags.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
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
