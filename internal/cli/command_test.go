package cli

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// TestOldSpellingsParseTheSame: every spelling Go's flag package accepted
// (one dash before a long name, -name=value, two dashes before -c, -help)
// gives the very output its pflag spelling gives, on the proxy's flags and
// on the subcommands'. The old spellings are those of scripts, Dockerfiles,
// the README and test/e2e.
func TestOldSpellingsParseTheSame(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "attache.yaml")
	if err := os.WriteFile(file, []byte("services:\n  - name: db\n    listen: 127.0.0.1:7100\n    backends: [db.internal:5432]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	env := []string{"REDIS_PORT_6379_TCP=tcp://10.0.0.9:6379"}
	fwd := "127.0.0.1:7000=a:1,b:2"
	tests := []struct {
		name     string
		old, now []string
	}{
		{"-forward X", []string{"check", "-forward", fwd}, []string{"check", "--forward", fwd}},
		{"-forward=X", []string{"check", "-forward=" + fwd}, []string{"check", "--forward", fwd}},
		{"-c FILE", []string{"check", "-c", file}, []string{"check", "--config", file}},
		{"--c FILE", []string{"check", "--c", file}, []string{"check", "--config", file}},
		{"-c=FILE", []string{"check", "-c=" + file}, []string{"check", "--config=" + file}},
		{"-config FILE", []string{"check", "-config", file}, []string{"check", "--config", file}},
		{"flags after HOST PORT", []string{"check", "redis", "6379", "-idle-timeout", "1m"}, []string{"check", "redis", "6379", "--idle-timeout=1m"}},
		{"-env-links=false", []string{"check", "-env-links=false", "-forward", fwd}, []string{"check", "--env-links=false", "--forward", fwd}},
		{"-max-connections -3", []string{"check", "-max-connections", "-3", "-forward", fwd}, []string{"check", "--max-connections=-3", "--forward", fwd}},
		{"-loops -1", []string{"check", "-loops", "-1", "-forward", fwd}, []string{"check", "--loops=-1", "--forward", fwd}},
		{"-keepalive off -connect-timeout 2s", []string{"check", "-keepalive", "off", "-connect-timeout", "2s", "-forward", fwd},
			[]string{"check", "--keepalive=off", "--connect-timeout=2s", "--forward", fwd}},
		{"-log-format bad", []string{"check", "-log-format", "xml", "h", "1"}, []string{"check", "--log-format", "xml", "h", "1"}},
		{"a value is never respelled", []string{"check", "-log-level", "-forward"}, []string{"check", "--log-level=-forward"}},
		{"after -- nothing is a flag", []string{"check", "--", "-forward", "x"}, []string{"check", "--", "-forward", "x"}},
		{"-help", []string{"-help"}, []string{"--help"}},
		{"--h", []string{"check", "--h"}, []string{"check", "--help"}},
		{"-version", []string{"-version"}, []string{"--version"}},
		{"status -admin", []string{"status", "-admin", "127.0.0.1:1", "-json"}, []string{"status", "--admin", "127.0.0.1:1", "--json"}},
		{"upgrade -pid -4", []string{"upgrade", "-pid", "-4"}, []string{"upgrade", "--pid=-4"}},
		{"certs issue -dir", []string{"certs", "issue", "h", "-dir", dir, "-ip", "10.0.0"}, []string{"certs", "issue", "h", "--dir", dir, "--ip", "10.0.0"}},
		{"iptables -source -ports", []string{"iptables", "-source", "172.18.0.0/16", "-ports", "6379", "-transparent=10001"},
			[]string{"iptables", "--source", "172.18.0.0/16", "--ports", "6379", "--transparent", "10001"}},
		{"demo -listen", []string{"demo", "-listen"}, []string{"demo", "--listen"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			oc, oout, oerr := run(t, env, tt.old...)
			nc, nout, nerr := run(t, env, tt.now...)
			if oc != nc || oout != nout || oerr != nerr {
				t.Errorf("attache %s: exit %d\n%s%s\nattache %s: exit %d\n%s%s", strings.Join(tt.old, " "), oc, oout, oerr,
					strings.Join(tt.now, " "), nc, nout, nerr)
			}
			if oout == "" && oerr == "" {
				t.Errorf("attache %s printed nothing", strings.Join(tt.old, " "))
			}
		})
	}
}

// TestHelp: --help, -h and `attache help …` print to stdout and exit 0;
// the help spells long flags with two dashes and lists the proxy's flags
// under their headings; each subcommand has its own.
func TestHelp(t *testing.T) {
	code, root, errs := run(t, nil, "--help")
	if code != ExitOK || errs != "" {
		t.Fatalf("attache --help: exit %d, stderr %q", code, errs)
	}
	for _, want := range []string{"Sources:\n  -c, --config FILE", "--forward SPEC", "Logging:\n", "Admin & observability:\n      --admin HOST:PORT",
		"attache [flags] HOST PORT", "attache healthcheck", "attache completion"} {
		if !strings.Contains(root, want) {
			t.Errorf("attache --help lacks %q:\n%s", want, root)
		}
	}
	if regexp.MustCompile(`(?m)^\s+-[a-z][a-z-]+ `).MatchString(root) {
		t.Errorf("attache --help spells a long flag with one dash:\n%s", root)
	}
	for _, args := range [][]string{{"-h"}, {"help"}} {
		if code, out, _ := run(t, nil, args...); code != ExitOK || out != root {
			t.Errorf("attache %s: exit %d, and its help differs from --help's:\n%s", args[0], code, out)
		}
	}
	_, check, _ := run(t, nil, "check", "--help")
	if code, out, _ := run(t, nil, "help", "check"); code != ExitOK || out != check || !strings.Contains(check, "attache check [flags] [HOST PORT]") {
		t.Errorf("attache help check: exit %d:\n%s\nattache check --help:\n%s", code, out, check)
	}
	_, hc, _ := run(t, nil, "healthcheck", "-h")
	if !strings.Contains(hc, "Health check:\n      --timeout DURATION") || !strings.Contains(hc, `HEALTHCHECK CMD ["/attache", "healthcheck"]`) {
		t.Errorf("attache healthcheck -h:\n%s", hc)
	}
}

// TestUsageErrors: a bad flag or argument prints one short message and the
// way to the help on stderr, nothing on stdout, and exits 2.
func TestUsageErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--bogus"}, "attache: unknown flag: --bogus\nRun 'attache --help' for usage.\n"},
		{[]string{"-bogus"}, "attache: unknown shorthand flag: 'b' in -bogus\nRun 'attache --help' for usage.\n"},
		{[]string{"check", "--grace"}, "attache check: flag needs an argument: --grace\nRun 'attache check --help' for usage.\n"},
		{[]string{"status", "now"}, "attache status: unexpected argument \"now\"\nRun 'attache status --help' for usage.\n"},
		{[]string{"chekc"}, "attache: unknown command \"chekc\"; did you mean check?\nRun 'attache --help' for usage.\n"},
		{[]string{"version", "x"}, "attache version: unknown command \"x\" for \"attache version\"\nRun 'attache version --help' for usage.\n"},
		{[]string{"certs"}, "attache certs: want a subcommand, init or issue\nRun 'attache certs --help' for usage.\n"},
	}
	for _, tt := range tests {
		code, out, errs := run(t, nil, tt.args...)
		if code != ExitUsage || out != "" || errs != tt.want {
			t.Errorf("attache %s: exit %d, stdout %q, stderr %q; want exit 2 and %q", strings.Join(tt.args, " "), code, out, errs, tt.want)
		}
	}
}

// TestEveryFlagIsRespelled: respellArgs turns -NAME into --NAME for every
// long flag of every command, and leaves the value after it alone.
func TestEveryFlagIsRespelled(t *testing.T) {
	root := NewCommand(Env{})
	forEachCommand(root, func(cmd *cobra.Command) {
		path := strings.Fields(cmd.CommandPath())[1:]
		cmd.Flags().VisitAll(func(f *pflag.Flag) {
			args := append(append([]string(nil), path...), "-"+f.Name, "-"+f.Name)
			got := respellArgs(root, args)
			want := append(append([]string(nil), path...), "--"+f.Name, "-"+f.Name)
			if f.NoOptDefVal != "" { // a bool flag takes no value: both are flags
				want[len(want)-1] = "--" + f.Name
			}
			if strings.Join(got, " ") != strings.Join(want, " ") {
				t.Errorf("respellArgs(%q) = %q, want %q", args, got, want)
			}
		})
	})
}
