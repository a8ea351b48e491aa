package cli

import (
	"strings"
	"testing"
)

func TestIptablesPrints(t *testing.T) {
	code, out, errOut := run(t, nil, "iptables", "--transparent", "10001", "--source", "172.18.0.0/16",
		"--source", "fd00::1", "--ports", "6379, 5432", "--chain", "AT1")
	if code != ExitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{
		"iptables -w -t nat -N AT1\n",
		"iptables -w -t nat -A AT1 -p tcp --dport 5432 -j REDIRECT --to-ports 10001\n",
		"iptables -w -t nat -A PREROUTING -s 172.18.0.0/16 -p tcp -j AT1\n",
		"ip6tables -w -t nat -A PREROUTING -s fd00::1/128 -p tcp -j AT1\n",
		"# iptables -w -t nat -X AT1\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestIptablesBadInput(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--ports", "6379"}, "want a source"},
		{[]string{"--uid", "me", "--ports", "6379"}, "--uid: want a numeric user id, got \"me\""},
		{[]string{"--source", "10.0.0.0/33", "--ports", "6379"}, "--source: want a CIDR"},
		{[]string{"--uid", "1"}, "--ports: want at least one"},
		{[]string{"--uid", "1", "--ports", "10000"}, "would loop"},
		{[]string{"--uid", "1", "--ports", "1", "extra"}, "unexpected argument \"extra\""},
	} {
		code, _, errOut := run(t, nil, append([]string{"iptables"}, tc.args...)...)
		if code != ExitUsage || !strings.Contains(errOut, tc.want) {
			t.Errorf("attache iptables %s: exit %d, stderr %q; want exit 2 and %q", strings.Join(tc.args, " "), code, errOut, tc.want)
		}
	}
}
