package torture

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"time"
)

// Diagnostics of a stall, taken while the stalled sockets are still open:
// the seed, each end's progress, `ss -tmi` of the sockets on the path
// (filtered by the path's ports), the test's goroutine stacks (first
// stall of the run), and the stacks of the topology's attache processes
// (SIGQUIT, first stall on that topology: the processes end, and later
// failures on the topology count as after-dump). Stacks are printed
// grouped (identical stacks once, with their count); the raw dumps are
// kept in files whose paths are printed.

// maxDiagnosed is how many stalls of a run get the whole diagnosis; the
// others are reported with their progress only.
const maxDiagnosed = 3

// stall is called at a session's deadline.
func (env *runEnv) stall(s *session) {
	s.stalled.Store(true)
	defer s.expire()
	if env.diagnosed.Add(1) > maxDiagnosed {
		return
	}
	var b strings.Builder
	fmt.Fprintf(&b, "STALL (seed %d) on %s: %v\n  %s\n", env.seed, s.topo.name, s.plan, s.progressLine())
	s.mu.Lock()
	own := slices.Clone(s.ports)
	s.mu.Unlock()
	fmt.Fprintf(&b, "ss -tmi of this connection's sockets (ports %v):\n%s\n", own, ssOutput(own))
	fmt.Fprintf(&b, "ss -tmi of the sockets of its topology's proxies (ports %v):\n%s\n", s.topo.ports, ssOutput(s.topo.ports))
	dir := env.dumpDir()
	env.stacks.Do(func() {
		dump := goroutineStacks()
		path := filepath.Join(dir, "test-goroutines.txt")
		_ = os.WriteFile(path, []byte(dump), 0o644)
		fmt.Fprintf(&b, "test goroutines (raw: %s):\n%s\n", path, groupStacks(dump))
	})
	if s.topo.dumped.CompareAndSwap(false, true) {
		for i, p := range s.topo.procs {
			dump := p.quit()
			path := filepath.Join(dir, fmt.Sprintf("attache-%s-%d.txt", sanitize(s.topo.name), i))
			_ = os.WriteFile(path, []byte(dump), 0o644)
			fmt.Fprintf(&b, "attache (%s) goroutines after SIGQUIT (raw: %s):\n%s\n", p.name, path, groupStacks(dump))
		}
	}
	env.t.Log(b.String())
}

// dumpDir is where raw dumps go: kept after the test, named by the seed.
func (env *runEnv) dumpDir() string {
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("attache-torture-%d", env.seed))
	_ = os.MkdirAll(dir, 0o755)
	return dir
}

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '/' || r == ' ' || r == '+' || r == ',' {
			return '_'
		}
		return r
	}, s)
}

// ssOutput runs ss -tmi for sockets whose either port is one of ports;
// long outputs are cut.
func ssOutput(ports []int) string {
	var terms []string
	for _, p := range ports {
		if p > 0 {
			terms = append(terms, fmt.Sprintf("sport = :%d or dport = :%d", p, p))
		}
	}
	if len(terms) == 0 {
		return "(no port)"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ss", "-tmin", "( "+strings.Join(terms, " or ")+" )").CombinedOutput()
	if err != nil {
		return fmt.Sprintf("ss: %v\n%s", err, out)
	}
	lines := strings.Split(string(out), "\n")
	const maxLines = 400
	if len(lines) > maxLines {
		lines = append(lines[:maxLines], fmt.Sprintf("... %d more lines", len(lines)-maxLines))
	}
	return strings.Join(lines, "\n")
}

func goroutineStacks() string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return string(buf[:n])
		}
		buf = make([]byte, 2*len(buf))
	}
}

var (
	goroutineHeadRE = regexp.MustCompile(`^goroutine \d+ (?:gp=\S+ m=\S+ (?:mp=\S+ )?)?\[([^,\]]+)`)
	frameArgsRE     = regexp.MustCompile(`\([^()]*\)$`)
	frameOffRE      = regexp.MustCompile(` \+0x[0-9a-f]+( fp=.*)?$`)
)

// groupStacks folds a Go goroutine dump: goroutines whose state and
// frames (without arguments and offsets) are the same are printed once
// with their count, the most numerous first.
func groupStacks(dump string) string {
	type group struct {
		n   int
		key string
	}
	counts := map[string]*group{}
	var rest []string
	for block := range strings.SplitSeq(dump, "\n\n") {
		lines := strings.Split(strings.TrimSpace(block), "\n")
		m := goroutineHeadRE.FindStringSubmatch(lines[0])
		if m == nil {
			if strings.TrimSpace(block) != "" {
				rest = append(rest, block)
			}
			continue
		}
		key := "[" + m[1] + "]"
		for _, l := range lines[1:] {
			if strings.HasPrefix(l, "\t") {
				l = frameOffRE.ReplaceAllString(l, "")
			} else {
				l = frameArgsRE.ReplaceAllString(l, "(...)")
			}
			key += "\n" + l
		}
		if g := counts[key]; g != nil {
			g.n++
		} else {
			counts[key] = &group{n: 1, key: key}
		}
	}
	groups := make([]*group, 0, len(counts))
	for _, g := range counts {
		groups = append(groups, g)
	}
	slices.SortFunc(groups, func(a, b *group) int { return cmp.Or(b.n-a.n, strings.Compare(a.key, b.key)) })
	var b strings.Builder
	for _, r := range rest {
		fmt.Fprintf(&b, "%s\n\n", r)
	}
	for _, g := range groups {
		fmt.Fprintf(&b, "%d goroutine(s) %s\n\n", g.n, g.key)
	}
	return b.String()
}
