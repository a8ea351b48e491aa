package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCerts(t *testing.T) {
	dir := t.TempDir()
	code, out, errs := run(t, nil, "certs", "init", "--dir", dir, "--name", "fleet")
	if code != ExitOK || !strings.Contains(out, filepath.Join(dir, "fleet.crt")) {
		t.Fatalf("certs init: exit %d\n%s%s", code, out, errs)
	}
	// Flags after the name, as people type them.
	code, out, errs = run(t, nil, "certs", "issue", "host-b", "--dir", dir, "--ca", "fleet", "--dns", "b.internal,b2", "--ip", "10.0.0.2", "--days", "10")
	if code != ExitOK || !strings.Contains(out, filepath.Join(dir, "host-b.key")) {
		t.Fatalf("certs issue: exit %d\n%s%s", code, out, errs)
	}
	if st, err := os.Stat(filepath.Join(dir, "host-b.key")); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("host key: %v %v", st, err)
	}
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"certs"}, "want a subcommand, init or issue"},
		{[]string{"certs", "sign"}, `unknown subcommand "sign"`},
		{[]string{"certs", "issue", "--dir", dir}, "want exactly one NAME"},
		{[]string{"certs", "issue", "h", "--dir", dir}, "fleet-ca.crt not found: create the CA first"},
		{[]string{"certs", "issue", "host-b", "--dir", dir, "--ca", "fleet"}, "already exists; use --force"},
		{[]string{"certs", "issue", "h", "--dir", dir, "--ca", "fleet", "--ip", "10.0.0"}, `--ip: want an IP address, got "10.0.0"`},
		{[]string{"certs", "init", "--dir", dir, "extra"}, "unexpected arguments"},
	}
	for _, tt := range tests {
		code, _, errs := run(t, nil, tt.args...)
		if code != ExitUsage || !strings.Contains(errs, tt.want) {
			t.Errorf("%q: exit %d, stderr %q; want exit 2 and %q", tt.args, code, errs, tt.want)
		}
	}
}

func TestCheckPrintsLink(t *testing.T) {
	file := filepath.Join(t.TempDir(), "a.yaml")
	yaml := "link:\n  listen: 7443\n  cert: h.crt\n  key: h.key\n  ca: ca.crt\n  offer: {redis: [host-a, host-c]}\n" +
		"services:\n  - name: redis\n    listen: 127.0.0.1:6380\n    backends: [127.0.0.1:6379]\n" +
		"  - name: remote\n    listen: 127.0.0.1:6381\n    backends: [attache://10.0.0.2:7443/redis]\n"
	if err := os.WriteFile(file, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errs := run(t, nil, "check", "-c", file, "--env-links=false")
	if code != ExitOK {
		t.Fatalf("check: exit %d: %s", code, errs)
	}
	for _, want := range []string{"attache://10.0.0.2:7443/redis", "link: listen :7443, certificate h.crt, CA ca.crt", "link offers redis to host-a, host-c"} {
		if !strings.Contains(out, want) {
			t.Errorf("check output lacks %q:\n%s", want, out)
		}
	}
}
