// Package meta holds checks over the repository itself: the examples of
// README.md and docs/ are real (docs_test.go), the metrics are named as the
// project chose and documented (metrics_test.go), and the code keeps the
// habits the project chose.
package meta

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func readme(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestReadmeFirstLinesAreTheCommands pins the two commands a fresh clone
// starts with, and checks the test command is the one CI runs.
func TestReadmeFirstLinesAreTheCommands(t *testing.T) {
	lines := strings.Split(readme(t), "\n")
	if len(lines) < 5 || !strings.HasPrefix(lines[3], "go run ./cmd/attache demo") || !strings.HasPrefix(lines[4], "make test") {
		t.Fatalf("README must open with the demo and test commands; got:\n%s", strings.Join(lines[:min(6, len(lines))], "\n"))
	}
	ci, err := os.ReadFile("../../.ci/run")
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^make test$`).Match(ci) {
		t.Fatal(".ci/run does not run `make test`, the README's test command")
	}
}

// TestNoStdlibLogPrintf keeps logging on log/slog.
func TestNoStdlibLogPrintf(t *testing.T) {
	out, err := exec.Command("git", "-C", "../..", "ls-files", "*.go").Output()
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`\blog\.(Print|Fatal|Panic)(f|ln)?\(`)
	for _, f := range strings.Fields(string(out)) {
		b, err := os.ReadFile(filepath.Join("../..", f))
		if err != nil {
			t.Fatal(err)
		}
		if re.Match(b) {
			t.Errorf("%s uses the standard log package; use log/slog", f)
		}
	}
}
