package transparent

import (
	"context"
	"net/netip"
	"strings"
	"testing"
)

func TestRulesText(t *testing.T) {
	s := Spec{ToPort: 10000, Ports: []int{6379, 5432}, Sources: []netip.Prefix{netip.MustParsePrefix("172.18.0.7/16")}, UIDs: []int{1000}}
	checkCommands(t, "rules", s.Rules(), []string{
		"iptables -w -t nat -N ATTACHE",
		"iptables -w -t nat -A ATTACHE -p tcp --dport 6379 -j REDIRECT --to-ports 10000",
		"iptables -w -t nat -A ATTACHE -p tcp --dport 5432 -j REDIRECT --to-ports 10000",
		"iptables -w -t nat -A PREROUTING -s 172.18.0.0/16 -p tcp -j ATTACHE",
		"iptables -w -t nat -A OUTPUT -p tcp -m owner --uid-owner 1000 -j ATTACHE",
		"ip6tables -w -t nat -N ATTACHE",
		"ip6tables -w -t nat -A ATTACHE -p tcp --dport 6379 -j REDIRECT --to-ports 10000",
		"ip6tables -w -t nat -A ATTACHE -p tcp --dport 5432 -j REDIRECT --to-ports 10000",
		"ip6tables -w -t nat -A OUTPUT -p tcp -m owner --uid-owner 1000 -j ATTACHE",
	})
	checkCommands(t, "removal", s.Removal(), []string{
		"ip6tables -w -t nat -D OUTPUT -p tcp -m owner --uid-owner 1000 -j ATTACHE",
		"iptables -w -t nat -D OUTPUT -p tcp -m owner --uid-owner 1000 -j ATTACHE",
		"iptables -w -t nat -D PREROUTING -s 172.18.0.0/16 -p tcp -j ATTACHE",
		"iptables -w -t nat -F ATTACHE", "iptables -w -t nat -X ATTACHE",
		"ip6tables -w -t nat -F ATTACHE", "ip6tables -w -t nat -X ATTACHE",
	})
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		s    Spec
		want string
	}{
		{Spec{ToPort: 10000, Ports: []int{6379}}, "want a source"},
		{Spec{ToPort: 0, Ports: []int{6379}, UIDs: []int{1}}, "--transparent"},
		{Spec{ToPort: 10000, UIDs: []int{1}}, "--ports: want at least one"},
		{Spec{ToPort: 10000, Ports: []int{10000}, UIDs: []int{1}}, "would loop"},
		{Spec{ToPort: 10000, Ports: []int{70000}, UIDs: []int{1}}, "1-65535, got 70000"},
		{Spec{ToPort: 10000, Ports: []int{1}, UIDs: []int{1}, Chain: "A B"}, "--chain"},
		{Spec{ToPort: 10000, Ports: []int{1}, UIDs: []int{1}, TProxy: true}, "TPROXY takes routed traffic only"},
		{Spec{ToPort: 10000, Ports: []int{1}, UIDs: []int{1}, Table: 7}, "only with --tproxy"},
		{Spec{ToPort: 10000, Ports: []int{1}, Sources: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, TProxy: true, Table: 254}, "--table: want a free routing table"},
	} {
		err := tc.s.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%+v) = %v, want an error with %q", tc.s, err, tc.want)
		}
	}
}

// TestApplyRemove installs rules in a namespace, finds them in iptables -S,
// removes them and finds nothing left, not even the chain.
func TestApplyRemove(t *testing.T) {
	h := needNetns(t)
	s := Spec{ToPort: 10000, Ports: []int{6379}, Sources: []netip.Prefix{netip.MustParsePrefix("10.9.0.0/24"),
		netip.MustParsePrefix("fd00:9::/64")}, UIDs: []int{4242}, Netns: h.NS}
	before4, before6 := h.Run(t, "iptables", "-w", "-t", "nat", "-S"), h.Run(t, "ip6tables", "-w", "-t", "nat", "-S")
	in, err := Apply(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	got4, got6 := h.Run(t, "iptables", "-w", "-t", "nat", "-S"), h.Run(t, "ip6tables", "-w", "-t", "nat", "-S")
	for _, want := range []string{"-N ATTACHE", "-A PREROUTING -s 10.9.0.0/24 -p tcp -j ATTACHE",
		"-A OUTPUT -p tcp -m owner --uid-owner 4242 -j ATTACHE", "-A ATTACHE -p tcp -m tcp --dport 6379 -j REDIRECT --to-ports 10000"} {
		if !strings.Contains(got4, want) {
			t.Errorf("iptables -S lacks %q:\n%s", want, got4)
		}
	}
	if !strings.Contains(got6, "-A PREROUTING -s fd00:9::/64 -p tcp -j ATTACHE") {
		t.Errorf("ip6tables -S lacks the PREROUTING jump:\n%s", got6)
	}
	// A second Apply finds the chain taken and leaves the first one's alone.
	if _, err := Apply(context.Background(), s); err == nil || !strings.Contains(err.Error(), "-N ATTACHE") {
		t.Errorf("second Apply: %v, want the chain creation to fail", err)
	}
	if now := h.Run(t, "iptables", "-w", "-t", "nat", "-S"); now != got4 {
		t.Errorf("the failed second Apply changed the rules:\n%s\nwas:\n%s", now, got4)
	}
	if err := in.Remove(context.Background()); err != nil {
		t.Fatal(err)
	}
	if after := h.Run(t, "iptables", "-w", "-t", "nat", "-S"); after != before4 {
		t.Errorf("after Remove:\n%s\nwant as before:\n%s", after, before4)
	}
	if after := h.Run(t, "ip6tables", "-w", "-t", "nat", "-S"); after != before6 {
		t.Errorf("after Remove (ip6tables):\n%s\nwant as before:\n%s", after, before6)
	}
}

func TestTProxyRulesText(t *testing.T) {
	s := Spec{ToPort: 10000, Ports: []int{6379}, TProxy: true, Mark: 0x40, Table: 42, Netns: "hub",
		Sources: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16"), netip.MustParsePrefix("fd00::/64")}}
	checkCommands(t, "rules", s.Rules(), []string{
		"ip netns exec hub iptables -w -t mangle -N ATTACHE",
		"ip netns exec hub iptables -w -t mangle -A ATTACHE -p tcp --dport 6379 -j TPROXY --on-port 10000 --tproxy-mark 0x40/0x40",
		"ip netns exec hub iptables -w -t mangle -A PREROUTING -s 10.1.0.0/16 -p tcp -j ATTACHE",
		"ip netns exec hub ip -4 rule add fwmark 0x40/0x40 lookup 42",
		"ip netns exec hub ip -4 route add local 0.0.0.0/0 dev lo table 42",
		"ip netns exec hub ip6tables -w -t mangle -N ATTACHE",
		"ip netns exec hub ip6tables -w -t mangle -A ATTACHE -p tcp --dport 6379 -j TPROXY --on-port 10000 --tproxy-mark 0x40/0x40",
		"ip netns exec hub ip6tables -w -t mangle -A PREROUTING -s fd00::/64 -p tcp -j ATTACHE",
		"ip netns exec hub ip -6 rule add fwmark 0x40/0x40 lookup 42",
		"ip netns exec hub ip -6 route add local ::/0 dev lo table 42",
	})
	checkCommands(t, "removal", s.Removal(), []string{
		"ip netns exec hub ip -6 route del local ::/0 dev lo table 42",
		"ip netns exec hub ip -6 rule del fwmark 0x40/0x40 lookup 42",
		"ip netns exec hub ip6tables -w -t mangle -D PREROUTING -s fd00::/64 -p tcp -j ATTACHE",
		"ip netns exec hub ip -4 route del local 0.0.0.0/0 dev lo table 42",
		"ip netns exec hub ip -4 rule del fwmark 0x40/0x40 lookup 42",
		"ip netns exec hub iptables -w -t mangle -D PREROUTING -s 10.1.0.0/16 -p tcp -j ATTACHE",
		"ip netns exec hub iptables -w -t mangle -F ATTACHE", "ip netns exec hub iptables -w -t mangle -X ATTACHE",
		"ip netns exec hub ip6tables -w -t mangle -F ATTACHE", "ip netns exec hub ip6tables -w -t mangle -X ATTACHE",
	})
}

// checkCommands compares commands with their wanted shell lines.
func checkCommands(t *testing.T, what string, cmds []Command, want []string) {
	t.Helper()
	var got []string
	for _, c := range cmds {
		got = append(got, c.String())
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("%s:\n%s\nwant:\n%s", what, strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
