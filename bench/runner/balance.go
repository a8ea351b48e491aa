package main

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
)

// poolSize is how many redis-server backends the balancing metrics spread
// their connections over.
const poolSize = 3

// A policyDef is one balancing policy: attache's name for it and the
// HAProxy balance line that does the same, so both run side by side.
type policyDef struct {
	name    string // attache's balance value, and the -policies name
	haproxy string // HAProxy's balance argument
	// weights, when set, are given to the backends in order (attache
	// {addr, weight} entries, HAProxy server weight).
	weights []int
}

// policies is every attache policy with its closest HAProxy equivalent.
// HAProxy has no weighted-random balance, so weighted is compared with
// weighted round robin; random(2) is HAProxy's power of two choices, as is
// attache's random.
var policies = []policyDef{
	{name: "round_robin", haproxy: "roundrobin"},
	{name: "least_conn", haproxy: "leastconn"},
	{name: "random", haproxy: "random(2)"},
	{name: "source_hash", haproxy: "source"},
	{name: "weighted", haproxy: "roundrobin", weights: []int{1, 2, 3}},
	{name: "first", haproxy: "first"},
}

func policyNames() []string {
	var n []string
	for _, p := range policies {
		n = append(n, p.name)
	}
	return n
}

func policyByName(name string) *policyDef {
	i := slices.IndexFunc(policies, func(p policyDef) bool { return p.name == name })
	if i < 0 {
		return nil
	}
	return &policies[i]
}

// label names the policy as the report shows it, weights included.
func (p *policyDef) label() string {
	return p.name + weightSuffix(p.weights, ":")
}

// haproxyLabel is the HAProxy configuration that stands for the policy.
func (p *policyDef) haproxyLabel() string {
	return "balance " + p.haproxy + weightSuffix(p.weights, ",")
}

func weightSuffix(w []int, sep string) string {
	if len(w) == 0 {
		return ""
	}
	var s []string
	for _, v := range w {
		s = append(s, strconv.Itoa(v))
	}
	return " (weights " + strings.Join(s, sep) + ")"
}

// endpoints are the route's backends, weighted as the policy says.
func (p *policyDef) endpoints(pool []string) []endpoint {
	out := make([]endpoint, len(pool))
	for i, addr := range pool {
		out[i] = endpoint{addr: addr}
		if i < len(p.weights) {
			out[i].weight = p.weights[i]
		}
	}
	return out
}

// spreadColumns report, per backend, its share of the connections and of
// the commands that reached the pool during one run. Direct talks to one
// backend, so they are proxy-only.
func spreadColumns() []column {
	var cols []column
	for _, kind := range []string{"conn", "cmd"} {
		for i := 1; i <= poolSize; i++ {
			cols = append(cols, column{
				key:   fmt.Sprintf("%s%d", kind, i),
				title: fmt.Sprintf("%s share of backend %d (%%)", kind, i),
				// Neither way is better: the spread is what the policy
				// asks for, not a score.
				better: "—", digits: 0, proxyOnly: true,
			})
		}
	}
	return cols
}

// poolCounts is one reading of INFO stats on every backend of a pool.
type poolCounts struct {
	conns, cmds []float64 // total_connections_received, total_commands_processed
}

func readPool(ctx context.Context, pool []string) (poolCounts, error) {
	var pc poolCounts
	for _, addr := range pool {
		info, err := redisInfo(ctx, addr)
		if err != nil {
			return poolCounts{}, fmt.Errorf("INFO stats of backend %s: %w", addr, err)
		}
		conns, err1 := infoField(info, "total_connections_received")
		cmds, err2 := infoField(info, "total_commands_processed")
		if err1 != nil || err2 != nil {
			return poolCounts{}, fmt.Errorf("INFO stats of backend %s: %v %v", addr, err1, err2)
		}
		pc.conns = append(pc.conns, conns)
		pc.cmds = append(pc.cmds, cmds)
	}
	return pc, nil
}

// spread turns two readings into each backend's share, in percent, of the
// connections and commands between them (keys conn1.., cmd1..). The
// readings themselves show up in the counts: the second reading's own
// connection is counted before it runs INFO, and the first reading's INFO
// command once it has answered, so one of each is taken off every backend.
func spread(before, after poolCounts) (map[string]float64, error) {
	if len(before.conns) != len(after.conns) || len(before.cmds) != len(after.cmds) || len(before.conns) != len(before.cmds) {
		return nil, fmt.Errorf("spread: readings of different pools (%d and %d backends)", len(before.conns), len(after.conns))
	}
	out := map[string]float64{}
	for _, k := range []struct {
		key       string
		from, to  []float64
		whatEmpty string
	}{
		{"conn", before.conns, after.conns, "connection"},
		{"cmd", before.cmds, after.cmds, "command"},
	} {
		deltas := make([]float64, len(k.from))
		total := 0.0
		for i := range k.from {
			deltas[i] = max(k.to[i]-k.from[i]-1, 0)
			total += deltas[i]
		}
		if total == 0 {
			return nil, fmt.Errorf("spread: no %s reached any backend", k.whatEmpty)
		}
		for i, d := range deltas {
			out[fmt.Sprintf("%s%d", k.key, i+1)] = 100 * d / total
		}
	}
	return out, nil
}

// balanceProxies are the chosen contenders that take part in the balancing
// metrics, in table order.
func (r *report) balanceProxies() []string {
	var out []string
	for _, p := range proxies {
		if p.balances && slices.Contains(r.cfg.only, p.name) {
			out = append(out, p.name)
		}
	}
	return out
}

// balanceMarkdown renders each balancing metric: throughput per policy with
// its ratio to direct and attache's ratio to HAProxy, then how the
// connections and commands were spread over the backends, then every round.
func (r *report) balanceMarkdown(b *strings.Builder) {
	names := r.balanceProxies()
	var contenders []string // names without direct
	for _, n := range names {
		if n != "direct" {
			contenders = append(contenders, n)
		}
	}
	var notes []string
	note := func(m *metricDef, pol, proxy string, cl *cell) string {
		if len(cl.notes) == 0 {
			return ""
		}
		n := fmt.Sprintf("%s, %s, %s: %s", m.title, pol, proxy, strings.Join(cl.notes, "; "))
		i := slices.Index(notes, n)
		if i < 0 {
			notes = append(notes, n)
			i = len(notes) - 1
		}
		return fmt.Sprintf(" [%d]", i+1)
	}
	pair := slices.Contains(contenders, "attache") && slices.Contains(contenders, "haproxy")

	for mi := range metrics {
		m := &metrics[mi]
		if !m.balanced || !slices.Contains(r.cfg.metrics, m.name) {
			continue
		}
		main := m.columns[0]
		fmt.Fprintf(b, "\n## Balancing: %s\n\n", m.title)

		// Direct does not depend on the policy: it ran once per policy and
		// round, and every run counts towards one baseline.
		var all []float64
		for _, pol := range r.cfg.policies {
			if cl := r.cells[cellKey(m, pol, main, "direct")]; cl != nil {
				all = append(all, cl.values...)
			}
		}
		direct := median(all)
		n := len(all) - countNaN(all)
		fmt.Fprintf(b, "Direct (no proxy, one redis-server): **%s %s**, median of %d run(s). "+
			"Cells are medians over the rounds; (n×) is the ratio to direct.\n\n",
			format(direct, main.digits), m.unit, n)

		head := []string{"attache policy", "HAProxy"}
		for _, c := range contenders {
			head = append(head, fmt.Sprintf("%s %s", c, m.unit))
		}
		if pair {
			head = append(head, "attache / haproxy")
		}
		writeHeader(b, head, 2)
		for _, polName := range r.cfg.policies {
			pol := policyByName(polName)
			row := []string{pol.label(), pol.haproxyLabel()}
			meds := map[string]float64{}
			for _, c := range contenders {
				cl := r.cells[cellKey(m, polName, main, c)]
				if cl == nil {
					row = append(row, "n/a")
					continue
				}
				v := median(cl.values)
				meds[c] = v
				text := format(v, main.digits)
				if !math.IsNaN(v) && !math.IsNaN(direct) && direct != 0 {
					text += fmt.Sprintf(" (%.2f×)", v/direct)
				}
				row = append(row, text+note(m, polName, c, cl))
			}
			if pair {
				a, h := meds["attache"], meds["haproxy"]
				if math.IsNaN(a) || math.IsNaN(h) || h == 0 {
					row = append(row, "—")
				} else {
					row = append(row, fmt.Sprintf("%.2f×", a/h))
				}
			}
			b.WriteString("| " + strings.Join(row, " | ") + " |\n")
		}

		fmt.Fprintf(b, "\nSpread over the %d backends: each backend's share, in %%, of the connections and of the commands "+
			"that reached them (backend 1 / 2 / 3), from each contender's median run:\n\n", poolSize)
		head = []string{"attache policy", "HAProxy"}
		for _, c := range contenders {
			head = append(head, c+" connections", c+" commands")
		}
		writeHeader(b, head, 2)
		for _, polName := range r.cfg.policies {
			pol := policyByName(polName)
			row := []string{pol.label(), pol.haproxyLabel()}
			for _, c := range contenders {
				for _, kind := range []string{"conn", "cmd"} {
					row = append(row, r.spreadText(m, polName, c, kind))
				}
			}
			b.WriteString("| " + strings.Join(row, " | ") + " |\n")
		}

		fmt.Fprintf(b, "\nEvery round, %s (rounds 1..n):\n\n", m.unit)
		head = []string{"attache policy"}
		head = append(head, names...)
		writeHeader(b, head, 1)
		for _, polName := range r.cfg.policies {
			row := []string{policyByName(polName).label()}
			for _, p := range names {
				cl := r.cells[cellKey(m, polName, main, p)]
				if cl == nil {
					row = append(row, "n/a")
					continue
				}
				var vs []string
				for _, v := range cl.values {
					vs = append(vs, format(v, main.digits))
				}
				row = append(row, strings.Join(vs, " / "))
			}
			b.WriteString("| " + strings.Join(row, " | ") + " |\n")
		}
	}
	if len(notes) > 0 {
		b.WriteString("\nBalancing notes:\n\n")
		for i, n := range notes {
			fmt.Fprintf(b, "%d. %s\n", i+1, n)
		}
	}
}

// spreadText is "33 / 33 / 34" for one contender, policy and kind, taken
// from one whole run: the one whose headline number is the median. Medians
// per backend would mislead: source_hash's seed is per process, so each run
// sends everything to a different backend, and per-backend medians over
// three such runs are 0 / 0 / 0.
func (r *report) spreadText(m *metricDef, pol, proxy, kind string) string {
	main := r.cells[cellKey(m, pol, m.columns[0], proxy)]
	if main == nil {
		return "n/a"
	}
	round := medianIndex(main.values)
	if round < 0 {
		return "—"
	}
	var parts []string
	for i := 1; i <= poolSize; i++ {
		c := column{key: fmt.Sprintf("%s%d", kind, i)}
		cl := r.cells[cellKey(m, pol, c, proxy)]
		if cl == nil || round >= len(cl.values) {
			return "n/a"
		}
		parts = append(parts, format(cl.values[round], 0))
	}
	return strings.Join(parts, " / ")
}

// medianIndex is the index of the value closest to the median of vs (the
// lower one of the middle two for an even count), or -1 if all are NaN.
func medianIndex(vs []float64) int {
	var idx []int
	for i, v := range vs {
		if !math.IsNaN(v) {
			idx = append(idx, i)
		}
	}
	if len(idx) == 0 {
		return -1
	}
	slices.SortStableFunc(idx, func(a, b int) int { return cmp.Compare(vs[a], vs[b]) })
	return idx[(len(idx)-1)/2]
}

// writeHeader writes a Markdown table header whose first left columns are
// text and the rest numbers.
func writeHeader(b *strings.Builder, head []string, left int) {
	b.WriteString("| " + strings.Join(head, " | ") + " |\n|")
	for i := range head {
		if i < left {
			b.WriteString("---|")
		} else {
			b.WriteString("---:|")
		}
	}
	b.WriteString("\n")
}

func countNaN(vs []float64) int {
	n := 0
	for _, v := range vs {
		if math.IsNaN(v) {
			n++
		}
	}
	return n
}
