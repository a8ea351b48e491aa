package cli

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestManPages: a page for every command is written from the command tree
// and renders with man(1) (groff underneath, with every warning on and
// none given), showing the command's synopsis and its flags under the
// help's headings.
func TestManPages(t *testing.T) {
	for _, tool := range []string{"man", "groff"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed (scripts/deps.sh installs man-db and groff-base): %v", tool, err)
		}
	}
	dir := t.TempDir()
	root := NewCommand(Env{})
	root.InitDefaultCompletionCmd()
	if err := WriteManPages(root, dir, "v9.9.9"); err != nil {
		t.Fatal(err)
	}
	pages, _ := filepath.Glob(filepath.Join(dir, "*.1"))
	want := map[string][]string{
		"attache.1":                 {"ATTACHE(1)", "attache [flags] HOST PORT", "Sources", "-c, --config FILE", "<ALIAS>_PORT_<port>_TCP", "attache healthcheck", "attache v9.9.9"},
		"attache-healthcheck.1":     {"attache-healthcheck - exit 0", `HEALTHCHECK CMD ["/attache", "healthcheck"]`, "Health check", "--timeout DURATION", "--pid PID"},
		"attache-certs-issue.1":     {"attache certs issue NAME", "--dir DIR", "SEE ALSO"},
		"attache-completion-bash.1": {"attache completion bash"},
	}
	if len(pages) < 15 {
		t.Errorf("%d pages written, want one per command: %v", len(pages), pages)
	}
	for _, page := range pages {
		var warn bytes.Buffer
		lint := exec.Command("groff", "-man", "-Tutf8", "-ww", "-z", page)
		lint.Stderr = &warn
		if err := lint.Run(); err != nil || warn.Len() > 0 {
			t.Errorf("groff %s: %v %s", filepath.Base(page), err, warn.String())
		}
		cmd := exec.Command("man", "-l", page)
		cmd.Env = append(os.Environ(), "MANWIDTH=200", "MANPAGER=cat", "PAGER=cat")
		out, err := cmd.Output()
		if err != nil {
			t.Errorf("man -l %s: %v", filepath.Base(page), err)
			continue
		}
		text := strings.ReplaceAll(string(out), "‐\n", "") // hyphenation
		for _, w := range want[filepath.Base(page)] {
			if !strings.Contains(text, w) {
				t.Errorf("man -l %s lacks %q:\n%s", filepath.Base(page), w, text)
			}
		}
	}
}
