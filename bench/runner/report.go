package main

import (
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// A cell holds one column's per-round values for one proxy.
type cell struct {
	values []float64 // NaN where the round failed
	notes  []string
}

type report struct {
	cfg         *config
	date        time.Time
	versions    [][2]string
	cells       map[string]*cell // key: metric/column/proxy
	interrupted bool
	elapsed     time.Duration
	// loadBefore and loadAfter are /proc/loadavg around the rounds.
	loadBefore, loadAfter string
	// measured counts measurements; disturbed those during which other
	// processes used at least foreignLimit % of a CPU.
	measured, disturbed int
}

func newReport(cfg *config) *report {
	return &report{cfg: cfg, date: time.Now(), cells: map[string]*cell{}}
}

// cellKey names one cell; pol is the balancing policy of a balanced metric
// and "" for the others.
func cellKey(m *metricDef, pol string, c column, proxy string) string {
	name := m.name
	if pol != "" {
		name += "@" + pol
	}
	return name + "/" + c.key + "/" + proxy
}

func (r *report) cell(m *metricDef, pol string, c column, proxy string) *cell {
	k := cellKey(m, pol, c, proxy)
	if r.cells[k] == nil {
		r.cells[k] = &cell{values: fill(r.cfg.rounds, math.NaN())}
	}
	return r.cells[k]
}

func fill(n int, v float64) []float64 {
	s := make([]float64, n)
	for i := range s {
		s[i] = v
	}
	return s
}

func (r *report) add(m *metricDef, pol, proxy string, round int, s sample, err error) {
	for _, c := range m.columns {
		if c.proxyOnly && proxy == "direct" {
			continue
		}
		cl := r.cell(m, pol, c, proxy)
		switch v, ok := s.values[c.key]; {
		case err != nil:
			cl.notes = append(cl.notes, fmt.Sprintf("round %d failed: %s", round+1, oneLine(err.Error())))
		case ok:
			cl.values[round] = v
			if s.note != "" {
				cl.notes = append(cl.notes, fmt.Sprintf("round %d: %s", round+1, s.note))
			}
		case s.note != "":
			cl.notes = append(cl.notes, fmt.Sprintf("round %d: %s", round+1, s.note))
		default:
			cl.notes = append(cl.notes, fmt.Sprintf("round %d: no value", round+1))
		}
	}
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " | ")
	if len(s) > 400 {
		s = s[:400] + "..."
	}
	return s
}

// median of the values that are not NaN; NaN if there are none.
func median(vs []float64) float64 {
	var ok []float64
	for _, v := range vs {
		if !math.IsNaN(v) {
			ok = append(ok, v)
		}
	}
	if len(ok) == 0 {
		return math.NaN()
	}
	slices.Sort(ok)
	n := len(ok)
	if n%2 == 1 {
		return ok[n/2]
	}
	return (ok[n/2-1] + ok[n/2]) / 2
}

func format(v float64, digits int) string {
	if math.IsNaN(v) {
		return "—"
	}
	s := strconv.FormatFloat(v, 'f', digits, 64)
	if digits == 0 && math.Abs(v) >= 10000 {
		return group(s)
	}
	return s
}

// group puts thin separators between thousands: 512 345 reads faster than 512345.
func group(s string) string {
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, ch := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(' ')
		}
		b.WriteRune(ch)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

func (r *report) commandLine() string {
	args := []string{os.Args[0]}
	for _, a := range os.Args[1:] {
		if a == "" || strings.ContainsAny(a, " \t'\"$") {
			a = strconv.Quote(a)
		}
		args = append(args, a)
	}
	return strings.Join(args, " ")
}

func (r *report) proxies() []string {
	var out []string
	for _, p := range proxies {
		if slices.Contains(r.cfg.only, p.name) {
			out = append(out, p.name)
		}
	}
	return out
}

func (r *report) markdown() string {
	var b strings.Builder
	cfg := r.cfg
	fmt.Fprintf(&b, "# attache benchmark: proxies compared on loopback\n\n")
	if r.interrupted {
		b.WriteString("**Interrupted: the tables hold only the rounds that finished.**\n\n")
	}
	fmt.Fprintf(&b, "- Date: %s (took %s)\n", r.date.UTC().Format("2006-01-02 15:04 MST"), r.elapsed.Round(time.Second))
	fmt.Fprintf(&b, "- Command: `%s`\n", r.commandLine())
	if w := os.Getenv("BENCH_INVOCATION"); w != "" {
		fmt.Fprintf(&b, "- Invoked as: `%s`\n", w)
	}
	fmt.Fprintf(&b, "- Host: %s\n", hostInfo())
	fmt.Fprintf(&b, "- Load average (1, 5, 15 min): %s before the rounds (others' load), %s after (includes this run)\n", r.loadBefore, r.loadAfter)
	if r.disturbed > 0 {
		fmt.Fprintf(&b, "- **Disturbed: in %d of %d measurements other processes used %d%% of a CPU or more** (see the notes); the affected numbers are suspect\n",
			r.disturbed, r.measured, foreignLimit)
	} else {
		fmt.Fprintf(&b, "- Undisturbed: in none of %d measurements did other processes use %d%% of a CPU or more\n", r.measured, foreignLimit)
	}
	fmt.Fprintf(&b, "- Settings: %d round(s); iperf3 -t %d; GET -n %d -c 50 -P 16; new connections -n %d -c 50 -k 0 (capped at %v); %d idle connections\n",
		cfg.rounds, cfg.duration, cfg.requests, cfg.connects, cfg.connectCap, cfg.idle)
	if r.anyMetric(true) {
		fmt.Fprintf(&b, "- Balancing: %d redis-server backends; policies %s; contenders %s\n",
			poolSize, strings.Join(cfg.policies, ", "), strings.Join(r.balanceProxies(), ", "))
	}
	b.WriteString("- Versions:\n")
	for _, v := range r.versions {
		fmt.Fprintf(&b, "  - %s: %s\n", v[0], v[1])
	}

	names := r.proxies()
	header := func() {
		b.WriteString("| metric | better | " + strings.Join(names, " | ") + " |\n")
		b.WriteString("|---|---|" + strings.Repeat("---:|", len(names)) + "\n")
	}

	if r.anyMetric(false) {
		r.plainMarkdown(&b, names, header)
	}
	if r.anyMetric(true) {
		r.balanceMarkdown(&b)
	}

	b.WriteString("\n## Contenders\n\n")
	for _, p := range proxies {
		if slices.Contains(cfg.only, p.name) {
			fmt.Fprintf(&b, "- **%s**: %s\n", p.name, p.about)
		}
	}
	return b.String()
}

// anyMetric reports whether a selected metric is (balanced) or is not
// (!balanced) a balancing one.
func (r *report) anyMetric(balanced bool) bool {
	for _, m := range metrics {
		if m.balanced == balanced && slices.Contains(r.cfg.metrics, m.name) {
			return true
		}
	}
	return false
}

// plainMarkdown renders the metrics that are not balancing ones: one row per
// column, one column per contender.
func (r *report) plainMarkdown(b *strings.Builder, names []string, header func()) {
	cfg := r.cfg
	b.WriteString("\n## Medians (ratio = proxy / direct)\n\n")
	header()
	var notes []string
	for mi := range metrics {
		m := &metrics[mi]
		if m.balanced || !slices.Contains(cfg.metrics, m.name) {
			continue
		}
		for _, c := range m.columns {
			row := []string{c.title, c.better}
			direct := math.NaN()
			if dc := r.cells[cellKey(m, "", c, "direct")]; dc != nil {
				direct = median(dc.values)
			}
			for _, p := range names {
				cl := r.cells[cellKey(m, "", c, p)]
				if cl == nil {
					row = append(row, "n/a")
					continue
				}
				v := median(cl.values)
				text := format(v, c.digits)
				if p != "direct" && !math.IsNaN(v) && !math.IsNaN(direct) && direct != 0 {
					text += fmt.Sprintf(" (%.2f×", v/direct)
					if c.diff {
						text += ", " + fmt.Sprintf("%+.*f", c.digits, v-direct)
					}
					text += ")"
				}
				if len(cl.notes) > 0 {
					// One footnote per metric and proxy: the columns of a
					// failed run share it.
					n := fmt.Sprintf("%s, %s: %s", m.title, p, strings.Join(cl.notes, "; "))
					i := slices.Index(notes, n)
					if i < 0 {
						notes = append(notes, n)
						i = len(notes) - 1
					}
					text += fmt.Sprintf(" [%d]", i+1)
				}
				row = append(row, text)
			}
			b.WriteString("| " + strings.Join(row, " | ") + " |\n")
		}
	}
	if len(notes) > 0 {
		b.WriteString("\nNotes:\n\n")
		for i, n := range notes {
			fmt.Fprintf(b, "%d. %s\n", i+1, n)
		}
	}

	r.headToHead(b, names)

	b.WriteString("\n## Every round (in run order of rounds 1..n)\n\n")
	header()
	for mi := range metrics {
		m := &metrics[mi]
		if m.balanced || !slices.Contains(cfg.metrics, m.name) {
			continue
		}
		for _, c := range m.columns {
			row := []string{c.title, c.better}
			for _, p := range names {
				cl := r.cells[cellKey(m, "", c, p)]
				if cl == nil {
					row = append(row, "n/a")
					continue
				}
				var vs []string
				for _, v := range cl.values {
					vs = append(vs, format(v, c.digits))
				}
				row = append(row, strings.Join(vs, " / "))
			}
			b.WriteString("| " + strings.Join(row, " | ") + " |\n")
		}
	}
}

// headToHead compares each contender with HAProxy round by round, since
// rounds are run back to back and this machine's speed drifts between
// them: a median can come out ahead while most rounds are lost. A cell
// reads "won of rounds (median of the per-round ratios)".
func (r *report) headToHead(b *strings.Builder, names []string) {
	const rival = "haproxy"
	if !slices.Contains(names, rival) {
		return
	}
	var others []string
	for _, p := range names {
		if p != "direct" && p != rival {
			others = append(others, p)
		}
	}
	if len(others) == 0 {
		return
	}
	b.WriteString("\n## Against " + rival + ", round by round (rounds better / rounds compared, median ratio)\n\n")
	b.WriteString("| metric | better | " + strings.Join(others, " | ") + " |\n")
	b.WriteString("|---|---|" + strings.Repeat("---:|", len(others)) + "\n")
	for mi := range metrics {
		m := &metrics[mi]
		if m.balanced || !slices.Contains(r.cfg.metrics, m.name) {
			continue
		}
		for _, c := range m.columns {
			base := r.cells[cellKey(m, "", c, rival)]
			row := []string{c.title, c.better}
			for _, p := range others {
				row = append(row, roundsBetter(base, r.cells[cellKey(m, "", c, p)], c.better))
			}
			b.WriteString("| " + strings.Join(row, " | ") + " |\n")
		}
	}
}

// roundsBetter counts the rounds where cl beat base (higher or lower is
// better), over the rounds both have a value for, with the median of the
// per-round ratios cl / base.
func roundsBetter(base, cl *cell, better string) string {
	if base == nil || cl == nil {
		return "n/a"
	}
	won, n := 0, 0
	var ratios []float64
	for i, v := range cl.values {
		if i >= len(base.values) {
			break
		}
		h := base.values[i]
		if math.IsNaN(v) || math.IsNaN(h) {
			continue
		}
		n++
		if (better == "higher" && v > h) || (better == "lower" && v < h) {
			won++
		}
		if h != 0 {
			ratios = append(ratios, v/h)
		}
	}
	if n == 0 {
		return "n/a"
	}
	text := fmt.Sprintf("%d of %d", won, n)
	if len(ratios) > 0 {
		text += fmt.Sprintf(" (%.2f×)", median(ratios))
	}
	return text
}
