package cli

import "testing"

// `attache version` and `--version` print the stamped version when the
// build set one (make does, with -ldflags -X); unstamped, the module
// version from the binary's build information (TestVersionFromGoInstall in
// test/e2e shows that with a real `go install …@v1.2.3`).
func TestVersionPrintsStamp(t *testing.T) {
	saved := Version
	t.Cleanup(func() { Version = saved })
	Version = "v7.7.7-stamped"
	for _, args := range [][]string{{"version"}, {"--version"}} {
		code, stdout, stderr := run(t, nil, args...)
		if code != ExitOK || stdout != "attache v7.7.7-stamped\n" {
			t.Errorf("attache %v: exit %d, stdout %q, stderr %q; want \"attache v7.7.7-stamped\"", args, code, stdout, stderr)
		}
	}
}
