package torture

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

var (
	seedFlag     = flag.Uint64("torture.seed", 0, "seed of the run (0: from the clock); a failure prints it")
	durationFlag = flag.Duration("torture.duration", 0, "run waves of connections for this long (the long profile); 0 runs the short profile, one wave")
	connsFlag    = flag.Int("torture.conns", 600, "connections per wave, all open at once")
	deadlineFlag = flag.Duration("torture.deadline", 60*time.Second, "bound of one connection, start to end: a hang's limit, not a performance threshold")
	binFlag      = flag.String("torture.bin", "", "test this attache binary instead of building ./cmd/attache (e.g. one built from an older commit)")
	onlyFlag     = flag.String("torture.only", "", "run only the topologies whose name matches this regexp")
)

// attacheBin is the binary under test: built by TestMain, or -torture.bin.
var attacheBin string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	flag.Parse()
	attacheBin = *binFlag
	if attacheBin == "" {
		dir, err := os.MkdirTemp("", "attache-torture-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "torture:", err)
			return 1
		}
		defer os.RemoveAll(dir)
		if attacheBin, err = buildAttache(dir); err != nil {
			fmt.Fprintln(os.Stderr, "torture:", err)
			return 1
		}
	}
	return m.Run()
}

// buildAttache builds the static binary into dir, as the image build
// does, and returns its path.
func buildAttache(dir string) (string, error) {
	bin := filepath.Join(dir, "attache")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, "github.com/attache/attache/cmd/attache")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building attache: %v\n%s", err, out)
	}
	return bin, nil
}
