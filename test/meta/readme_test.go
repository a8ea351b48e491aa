// Package meta holds checks over the repository itself: the README's
// examples are real, and the code keeps the habits the project chose.
package meta

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/attache/attache/internal/config"
)

func readme(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestReadmeConfigExampleLoads loads every YAML block of the README.
func TestReadmeConfigExampleLoads(t *testing.T) {
	blocks := regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllStringSubmatch(readme(t), -1)
	if len(blocks) == 0 {
		t.Fatal("README has no yaml example")
	}
	for i, b := range blocks {
		cfg, err := config.Load(config.Sources{File: "README.md", FileData: []byte(b[1])})
		if err != nil {
			t.Errorf("README yaml block %d: %v", i, err)
			continue
		}
		if len(cfg.Services) == 0 {
			t.Errorf("README yaml block %d defines no service", i)
		}
	}
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
