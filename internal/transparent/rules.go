package transparent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Spec says whose connections to redirect to attache's transparent
// listener, and which of them.
type Spec struct {
	// ToPort is the transparent listener's port (REDIRECT --to-ports).
	ToPort int
	// Ports are the destination ports to redirect; a connection to any
	// other port goes where it was going.
	Ports []int
	// Sources are the networks whose traffic arrives through this
	// namespace's routing (a Docker bridge network, a veth to another
	// namespace): matched in PREROUTING. An IPv6 prefix makes ip6tables
	// rules.
	Sources []netip.Prefix
	// UIDs are local users whose own connections are redirected: matched
	// in OUTPUT with the owner module, for IPv4 and IPv6. attache must run
	// as another user, or its dials to the backends would be redirected
	// back to itself.
	UIDs []int
	// Chain is the nat chain the rules live in (default ATTACHE); the
	// built-in chains only get a jump to it, so removing is exact.
	Chain string
	// Netns, when set, runs every command inside that named network
	// namespace (ip netns exec), where attache's listener is.
	Netns string
	// TProxy makes mangle-table TPROXY rules instead of nat REDIRECT
	// ones: the packets keep their destination and are delivered to the
	// transparent listener (which must be opened with IP_TRANSPARENT:
	// transparent.tproxy in the file), marked with Mark; the policy
	// routing that delivers marked packets locally (an ip rule for Mark
	// to Table, and a local default route in Table) is installed with
	// them. Sources only: TPROXY works in PREROUTING.
	TProxy bool
	// Mark is the firewall mark of TPROXY'd packets (default 1), matched
	// as Mark/Mark; Table the routing table of its local route (default
	// 100). Both must be free on the host.
	Mark  uint32
	Table int
}

// Defaults of Spec.Mark and Spec.Table.
const (
	DefaultMark  = 0x1
	DefaultTable = 100
)

func (s Spec) mark() string {
	m := s.Mark
	if m == 0 {
		m = DefaultMark
	}
	return fmt.Sprintf("0x%x/0x%x", m, m)
}

func (s Spec) table() string {
	if s.Table == 0 {
		return strconv.Itoa(DefaultTable)
	}
	return strconv.Itoa(s.Table)
}

// iptTable is the iptables table the rules live in.
func (s Spec) iptTable() string {
	if s.TProxy {
		return "mangle"
	}
	return "nat"
}

// Command is one iptables invocation, with the one that undoes it (nil
// when removing the chain undoes it).
type Command struct {
	Args []string
	Undo []string
}

// String is the command as a shell line.
func (c Command) String() string { return strings.Join(c.Args, " ") }

var chainName = regexp.MustCompile(`^[A-Za-z0-9_-]{1,28}$`)

// Validate reports what is wrong with s, naming the flag.
func (s Spec) Validate() error {
	var errs []error
	if s.ToPort < 1 || s.ToPort > 65535 {
		errs = append(errs, fmt.Errorf("--transparent: want the transparent listener's port (1-65535), got %d", s.ToPort))
	}
	if len(s.Ports) == 0 {
		errs = append(errs, errors.New("--ports: want at least one destination port to redirect (e.g. --ports 6379,5432)"))
	}
	for _, p := range s.Ports {
		if p < 1 || p > 65535 {
			errs = append(errs, fmt.Errorf("--ports: want ports 1-65535, got %d", p))
		}
		if p == s.ToPort {
			errs = append(errs, fmt.Errorf("--ports: %d is the transparent listener's own port; redirecting it would loop", p))
		}
	}
	if len(s.Sources) == 0 && len(s.UIDs) == 0 {
		errs = append(errs, errors.New("want a source: --source CIDR (a container network, routed here) or --uid N (a local user)"))
	}
	for _, u := range s.UIDs {
		if u < 0 {
			errs = append(errs, fmt.Errorf("--uid: want a user id >= 0, got %d", u))
		}
	}
	if s.TProxy && len(s.UIDs) > 0 {
		errs = append(errs, errors.New("--uid: TPROXY takes routed traffic only (PREROUTING); redirect local users without --tproxy"))
	}
	if !s.TProxy && (s.Mark != 0 || s.Table != 0) {
		errs = append(errs, errors.New("--mark, --table: only with --tproxy"))
	}
	if s.Table < 0 || s.Table > 0xfffffff0 || s.Table >= 253 && s.Table <= 255 {
		errs = append(errs, fmt.Errorf("--table: want a free routing table number (1-252, or above 255), got %d", s.Table))
	}
	if s.Chain != "" && !chainName.MatchString(s.Chain) {
		errs = append(errs, fmt.Errorf("--chain: want 1-28 letters, digits, _ or -, got %q", s.Chain))
	}
	return errors.Join(errs...)
}

func (s Spec) chain() string {
	if s.Chain == "" {
		return "ATTACHE"
	}
	return s.Chain
}

// Rules are the commands that install s, in order: per family, the chain,
// its REDIRECT (or TPROXY) rules, then the jumps from PREROUTING (sources)
// and OUTPUT (uids), and for TPROXY the ip rule and local route. Removing is the jumps' undo, then flushing and deleting the
// chain (Removal).
func (s Spec) Rules() []Command {
	var out []Command
	for _, tool := range s.tools() {
		out = append(out, s.cmd(tool, []string{"-N", s.chain()}, nil))
		for _, p := range s.Ports {
			target := []string{"-j", "REDIRECT", "--to-ports", strconv.Itoa(s.ToPort)}
			if s.TProxy {
				target = []string{"-j", "TPROXY", "--on-port", strconv.Itoa(s.ToPort), "--tproxy-mark", s.mark()}
			}
			out = append(out, s.cmd(tool, append([]string{"-A", s.chain(), "-p", "tcp", "--dport", strconv.Itoa(p)}, target...), nil))
		}
		for _, src := range s.Sources {
			if (tool == "ip6tables") != src.Addr().Is6() {
				continue
			}
			m := []string{"PREROUTING", "-s", src.Masked().String(), "-p", "tcp", "-j", s.chain()}
			out = append(out, s.cmd(tool, append([]string{"-A"}, m...), append([]string{"-D"}, m...)))
		}
		for _, u := range s.UIDs {
			m := []string{"OUTPUT", "-p", "tcp", "-m", "owner", "--uid-owner", strconv.Itoa(u), "-j", s.chain()}
			out = append(out, s.cmd(tool, append([]string{"-A"}, m...), append([]string{"-D"}, m...)))
		}
		if s.TProxy {
			out = append(out, s.policyRouting(tool)...)
		}
	}
	return out
}

// policyRouting are the TPROXY rules' companions: marked packets are
// routed by Table, whose default route is local, so the kernel delivers
// them to the transparent socket whatever their destination.
func (s Spec) policyRouting(tool string) []Command {
	fam, all := "-4", "0.0.0.0/0"
	if tool == "ip6tables" {
		fam, all = "-6", "::/0"
	}
	rule := []string{"rule", "%s", "fwmark", s.mark(), "lookup", s.table()}
	route := []string{"route", "%s", "local", all, "dev", "lo", "table", s.table()}
	var out []Command
	for _, args := range [][]string{rule, route} {
		add, del := slices.Clone(args), slices.Clone(args)
		add[1], del[1] = "add", "del"
		out = append(out, Command{Args: s.in(append([]string{"ip", fam}, add...)), Undo: s.in(append([]string{"ip", fam}, del...))})
	}
	return out
}

// in prefixes args to run in s's network namespace.
func (s Spec) in(args []string) []string {
	if s.Netns == "" {
		return args
	}
	return append([]string{"ip", "netns", "exec", s.Netns}, args...)
}

// Removal are the commands that remove what Rules installed, in order.
func (s Spec) Removal() []Command {
	var out []Command
	rules := s.Rules()
	for i := len(rules) - 1; i >= 0; i-- {
		if rules[i].Undo != nil {
			out = append(out, Command{Args: rules[i].Undo})
		}
	}
	for _, tool := range s.tools() {
		out = append(out, s.cmd(tool, []string{"-F", s.chain()}, nil), s.cmd(tool, []string{"-X", s.chain()}, nil))
	}
	for i := range out {
		out[i].Undo = nil
	}
	return out
}

// tools are the iptables programs s needs: iptables for IPv4 sources and
// uids, ip6tables for IPv6 sources and uids.
func (s Spec) tools() []string {
	v4, v6 := len(s.UIDs) > 0, len(s.UIDs) > 0
	for _, src := range s.Sources {
		if src.Addr().Is6() {
			v6 = true
		} else {
			v4 = true
		}
	}
	var out []string
	if v4 {
		out = append(out, "iptables")
	}
	if v6 {
		out = append(out, "ip6tables")
	}
	return out
}

func (s Spec) cmd(tool string, args, undo []string) Command {
	prefix := s.in([]string{tool, "-w", "-t", s.iptTable()})
	c := Command{Args: append(append([]string{}, prefix...), args...)}
	if undo != nil {
		c.Undo = append(append([]string{}, prefix...), undo...)
	}
	return c
}

// Installed is a set of rules Apply put in place.
type Installed struct {
	spec Spec
	done []Command
}

// Apply runs s's rules. If one fails, what was installed is removed again
// and the error says which command failed and why; a chain of the same
// name that already exists (another attache's, or a leftover) is such a
// failure, so Apply never takes over rules it did not make.
func Apply(ctx context.Context, s Spec) (*Installed, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	in := &Installed{spec: s}
	for _, c := range s.Rules() {
		if err := run(ctx, c.Args); err != nil {
			if rerr := in.Remove(context.WithoutCancel(ctx)); rerr != nil {
				err = errors.Join(err, fmt.Errorf("undoing: %w", rerr))
			}
			return nil, err
		}
		in.done = append(in.done, c)
	}
	return in, nil
}

// Remove undoes exactly what Apply installed: the jumps it added, then its
// chains. Every command is tried; the errors are joined.
func (in *Installed) Remove(ctx context.Context) error {
	var errs []error
	chains := map[string]bool{} // tools whose chain Apply created
	for i := len(in.done) - 1; i >= 0; i-- {
		c := in.done[i]
		if c.Undo != nil {
			if err := run(ctx, c.Undo); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		if isNewChain(c.Args) {
			chains[strings.Join(c.Args[:len(c.Args)-2], " ")] = true
		}
	}
	for _, tool := range in.spec.tools() {
		probe := in.spec.cmd(tool, []string{"-N", in.spec.chain()}, nil)
		if !chains[strings.Join(probe.Args[:len(probe.Args)-2], " ")] {
			continue
		}
		for _, op := range []string{"-F", "-X"} {
			if err := run(ctx, in.spec.cmd(tool, []string{op, in.spec.chain()}, nil).Args); err != nil {
				errs = append(errs, err)
			}
		}
	}
	in.done = nil
	return errors.Join(errs...)
}

func isNewChain(args []string) bool { return len(args) >= 2 && args[len(args)-2] == "-N" }

func run(ctx context.Context, args []string) error {
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
