package main

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"

	attacheconfig "github.com/attache/attache/internal/config"
)

func TestParseIperf(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    float64
		wantErr string
	}{
		{name: "ok", in: `{"end":{"sum_sent":{"bits_per_second":2},"sum_received":{"bits_per_second":1.5e10}}}`, want: 1.5e10},
		{name: "error field", in: `{"error":"unable to connect to server"}`, wantErr: "unable to connect"},
		{name: "no sum", in: `{"end":{}}`, wantErr: "no sum_received"},
		{name: "not json", in: `iperf3: error`, wantErr: "JSON"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseIperf([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %v, %v; want %v", got, err, tt.want)
			}
		})
	}
}

func TestParseRedisCSV(t *testing.T) {
	const out = `"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
"PING_INLINE","13097.58","2.565","0.416","2.319","4.567","5.807","7.919"
"PING_MBULK","14214.64","1.843","0.336","1.375","4.399","4.775","8.735"
`
	rps, p99, err := parseRedisCSV([]byte(out), "PING_MBULK")
	if err != nil || rps != 14214.64 || p99 != 4.775 {
		t.Fatalf("got %v %v %v", rps, p99, err)
	}
	if _, _, err := parseRedisCSV([]byte(out), "GET"); err == nil {
		t.Fatal("want an error for a missing row")
	}
	if _, _, err := parseRedisCSV([]byte(`"test","rps"`+"\n"+`"GET","1"`), "GET"); err == nil {
		t.Fatal("want an error for a missing p99 column")
	}
}

func TestParseReady(t *testing.T) {
	held, failed, e := parseReady(`ready held=2990 failed=10 error="dial tcp: too many open files"`)
	if held != 2990 || failed != 10 || e != "dial tcp: too many open files" {
		t.Fatalf("got %d %d %q", held, failed, e)
	}
	held, failed, e = parseReady("ready held=3000 failed=0")
	if held != 3000 || failed != 0 || e != "" {
		t.Fatalf("got %d %d %q", held, failed, e)
	}
}

func TestParseStat(t *testing.T) {
	line := "42 (socat (x) y) S 7 42 42 0 -1 4194560 100 0 0 0 30 12 0 0 20 0 1 0 5555 1000 10"
	st, err := parseStat(42, []byte(line))
	if err != nil || st.ppid != 7 || st.pgrp != 42 || st.cpu != 42 || st.reaped != 0 || st.start != 5555 {
		t.Fatalf("got %+v %v", st, err)
	}
	line = "42 (socat) S 7 42 42 0 -1 4194560 100 0 0 0 30 12 250 50 20 0 1 0 5555 1000 10"
	st, err = parseStat(42, []byte(line))
	if err != nil || st.cpu != 42 || st.reaped != 300 {
		t.Fatalf("got %+v %v", st, err)
	}
}

func TestInfoField(t *testing.T) {
	info := "# Stats\r\ntotal_connections_received:1234\r\ntotal_commands_processed:99\r\n"
	if v, err := infoField(info, "total_connections_received"); err != nil || v != 1234 {
		t.Fatalf("got %v %v", v, err)
	}
	if _, err := infoField(info, "nope"); err == nil {
		t.Fatal("want an error")
	}
}

func TestMedian(t *testing.T) {
	nan := math.NaN()
	tests := []struct {
		in   []float64
		want float64
	}{
		{[]float64{3, 1, 2}, 2},
		{[]float64{4, 1, 3, 2}, 2.5},
		{[]float64{nan, 5, nan}, 5},
	}
	for _, tt := range tests {
		if got := median(tt.in); got != tt.want {
			t.Errorf("median(%v) = %v, want %v", tt.in, got, tt.want)
		}
	}
	if got := median([]float64{nan}); !math.IsNaN(got) {
		t.Errorf("median(NaN) = %v, want NaN", got)
	}
}

func TestRotate(t *testing.T) {
	s := []string{"a", "b", "c"}
	if got := strings.Join(rotate(s, 1), ""); got != "bca" {
		t.Errorf("rotate 1 = %s", got)
	}
	if got := strings.Join(rotate(s, 3), ""); got != "abc" {
		t.Errorf("rotate 3 = %s", got)
	}
}

func TestHaproxyConfig(t *testing.T) {
	r := []route{{listen: "127.0.0.1:1", backends: []endpoint{{addr: "127.0.0.1:2"}}}}
	plain := haproxyConfig(false, r)
	splice := haproxyConfig(true, r)
	for _, want := range []string{"maxconn 8000", "mode tcp", "timeout client 1h", "bind 127.0.0.1:1", "server s0 127.0.0.1:2"} {
		if !strings.Contains(plain, want) {
			t.Errorf("config lacks %q:\n%s", want, plain)
		}
	}
	if strings.Contains(plain, "splice") || !strings.Contains(splice, "option splice-auto") {
		t.Errorf("splice-auto must be in the splice variant only")
	}
}

func TestPick(t *testing.T) {
	all := []string{"direct", "socat", "attache"}
	got, err := pick("attache, socat", "proxy", all)
	if err != nil || strings.Join(got, ",") != "socat,attache" {
		t.Fatalf("got %v %v", got, err)
	}
	if _, err := pick("nginx", "proxy", all); err == nil || !strings.Contains(err.Error(), "unknown proxy") {
		t.Fatalf("err = %v", err)
	}
}

func TestParseSockstatTW(t *testing.T) {
	in := "sockets: used 130\nTCP: inuse 5 orphan 0 tw 5321 alloc 9 mem 2\nUDP: inuse 0 mem 0\n"
	if n, err := parseSockstatTW(in); err != nil || n != 5321 {
		t.Fatalf("got %d %v", n, err)
	}
	if _, err := parseSockstatTW("UDP: inuse 0\n"); err == nil {
		t.Fatal("want an error")
	}
}

func TestParseStatShort(t *testing.T) {
	if _, err := parseStat(1, []byte("1 (init) S 0 1 1")); err == nil {
		t.Fatal("want an error for a short line")
	}
}

var testPool = []string{"127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"}

func TestHaproxyConfigBalance(t *testing.T) {
	tests := []struct {
		policy string
		want   []string
	}{
		{"round_robin", []string{"balance roundrobin\n", "server s0-1 127.0.0.1:7001\n", "server s0-3 127.0.0.1:7003\n"}},
		{"least_conn", []string{"balance leastconn\n"}},
		{"random", []string{"balance random(2)\n"}},
		{"source_hash", []string{"balance source\n"}},
		{"first", []string{"balance first\n", "server s0-1 127.0.0.1:7001\n"}},
		{"weighted", []string{"balance roundrobin\n", "server s0-1 127.0.0.1:7001 weight 1\n",
			"server s0-2 127.0.0.1:7002 weight 2\n", "server s0-3 127.0.0.1:7003 weight 3\n"}},
	}
	for _, tt := range tests {
		t.Run(tt.policy, func(t *testing.T) {
			pol := policyByName(tt.policy)
			cfg := haproxyConfig(false, []route{{listen: "127.0.0.1:1", backends: pol.endpoints(testPool), policy: pol}})
			for _, w := range append(tt.want, "maxconn 8000", "bind 127.0.0.1:1") {
				if !strings.Contains(cfg, w) {
					t.Errorf("config lacks %q:\n%s", w, cfg)
				}
			}
			if tt.policy != "weighted" && strings.Contains(cfg, "weight") {
				t.Errorf("only weighted sets weights:\n%s", cfg)
			}
		})
	}
}

// TestAttacheConfig feeds the generated file to attache's own parser, so a
// change of the config format breaks here rather than in the middle of a run.
func TestAttacheConfig(t *testing.T) {
	for _, pol := range policies {
		t.Run(pol.name, func(t *testing.T) {
			text := attacheConfig([]route{{listen: "127.0.0.1:7000", backends: pol.endpoints(testPool), policy: &pol}})
			f, err := attacheconfig.ParseFile("bench.yaml", []byte(text))
			if err != nil {
				t.Fatalf("attache rejects the generated config: %v\n%s", err, text)
			}
			if len(f.Services) != 1 {
				t.Fatalf("got %d services, want 1:\n%s", len(f.Services), text)
			}
			s := f.Services[0]
			if s.Balance != pol.name || len(s.Backends) != len(testPool) {
				t.Fatalf("got balance %q and %d backends, want %q and %d:\n%s", s.Balance, len(s.Backends), pol.name, len(testPool), text)
			}
			for i, b := range s.Backends {
				want := 0
				if i < len(pol.weights) {
					want = pol.weights[i]
				}
				if b.Addr != testPool[i] || b.Weight != want {
					t.Errorf("backend %d = %s weight %d, want %s weight %d", i, b.Addr, b.Weight, testPool[i], want)
				}
			}
		})
	}
}

func TestRouteSingle(t *testing.T) {
	if _, err := (route{listen: "l", backends: policies[0].endpoints(testPool), policy: &policies[0]}).single(); err == nil {
		t.Fatal("a balanced route must be refused by contenders that cannot balance")
	}
	if got, err := (route{listen: "l", backends: []endpoint{{addr: "127.0.0.1:2"}}}).single(); err != nil || got != "127.0.0.1:2" {
		t.Fatalf("got %q %v", got, err)
	}
}

func TestSpread(t *testing.T) {
	before := poolCounts{conns: []float64{10, 20, 30}, cmds: []float64{100, 200, 300}}
	// Each backend also counts one connection (the second reading's) and
	// one command (the first reading's INFO) that spread takes off.
	after := poolCounts{conns: []float64{10 + 1 + 10, 20 + 1 + 20, 30 + 1 + 70}, cmds: []float64{100 + 1 + 0, 200 + 1 + 500, 300 + 1 + 500}}
	got, err := spread(before, after)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{"conn1": 10, "conn2": 20, "conn3": 70, "cmd1": 0, "cmd2": 50, "cmd3": 50}
	for k, w := range want {
		if math.Abs(got[k]-w) > 1e-9 {
			t.Errorf("%s = %v, want %v", k, got[k], w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("got keys %v, want %v", got, want)
	}
	idle := poolCounts{conns: []float64{1, 1, 1}, cmds: []float64{1, 1, 1}}
	if _, err := spread(before, poolCounts{conns: []float64{11, 21, 31}, cmds: []float64{101, 201, 301}}); err == nil {
		t.Error("want an error when only the readings themselves reached the backends")
	}
	if _, err := spread(idle, poolCounts{conns: []float64{5}, cmds: []float64{5}}); err == nil {
		t.Error("want an error for readings of different pools")
	}
}

func TestInfoStatsFields(t *testing.T) {
	info := "# Stats\r\ntotal_connections_received:17\r\ntotal_commands_processed:123456\r\ninstantaneous_ops_per_sec:0\r\n"
	c, err1 := infoField(info, "total_connections_received")
	n, err2 := infoField(info, "total_commands_processed")
	if err1 != nil || err2 != nil || c != 17 || n != 123456 {
		t.Fatalf("got %v %v %v %v", c, n, err1, err2)
	}
}

func TestPickPolicies(t *testing.T) {
	got, err := pick("first,round_robin", "policy", policyNames())
	if err != nil || strings.Join(got, ",") != "round_robin,first" {
		t.Fatalf("got %v %v", got, err)
	}
	if _, err := pick("roundrobin", "policy", policyNames()); err == nil || !strings.Contains(err.Error(), "unknown policy") {
		t.Fatalf("err = %v", err)
	}
}

func TestMedianIndex(t *testing.T) {
	nan := math.NaN()
	tests := []struct {
		in   []float64
		want int
	}{
		{[]float64{300, 100, 200}, 2},
		{[]float64{4, 1, 3, 2}, 3}, // lower middle: 2
		{[]float64{nan, 5, nan}, 1},
		{[]float64{nan}, -1},
		{nil, -1},
	}
	for _, tt := range tests {
		if got := medianIndex(tt.in); got != tt.want {
			t.Errorf("medianIndex(%v) = %d, want %d", tt.in, got, tt.want)
		}
	}
}

// TestBalanceMarkdown renders a report of two rounds and checks the numbers
// land where a reader looks for them.
func TestBalanceMarkdown(t *testing.T) {
	cfg := &config{rounds: 2, only: []string{"direct", "haproxy", "attache"},
		metrics: []string{"balance"}, policies: []string{"source_hash", "weighted"}}
	rep := newReport(cfg)
	m := &metrics[slices.IndexFunc(metrics, func(m metricDef) bool { return m.name == "balance" })]
	shares := func(rps float64, conn ...float64) sample {
		v := map[string]float64{"rps": rps}
		for i, c := range conn {
			v[fmt.Sprintf("conn%d", i+1)] = c
			v[fmt.Sprintf("cmd%d", i+1)] = c
		}
		return sample{values: v}
	}
	for _, pol := range cfg.policies {
		rep.add(m, pol, "direct", 0, sample{values: map[string]float64{"rps": 600}}, nil)
		rep.add(m, pol, "direct", 1, sample{values: map[string]float64{"rps": 400}}, nil)
	}
	// source_hash picks another backend in each run; the table must show
	// one whole run (the median one), not per-backend medians.
	rep.add(m, "source_hash", "attache", 0, shares(250, 0, 100, 0), nil)
	rep.add(m, "source_hash", "attache", 1, shares(200, 0, 0, 100), nil)
	rep.add(m, "source_hash", "haproxy", 0, shares(400, 100, 0, 0), nil)
	rep.add(m, "source_hash", "haproxy", 1, shares(300, 100, 0, 0), nil)
	rep.add(m, "weighted", "attache", 0, sample{}, errors.New("attache exited"))
	rep.add(m, "weighted", "attache", 1, shares(100, 17, 33, 50), nil)
	rep.add(m, "weighted", "haproxy", 0, shares(200, 17, 33, 50), nil)
	rep.add(m, "weighted", "haproxy", 1, shares(200, 17, 33, 50), nil)

	md := rep.markdown()
	for _, want := range []string{
		"Direct (no proxy, one redis-server): **500 req/s**, median of 4 run(s)",
		"| attache policy | HAProxy | haproxy req/s | attache req/s | attache / haproxy |",
		"| source_hash | balance source | 350 (0.70×) | 225 (0.45×) | 0.64× |",
		"| weighted (weights 1:2:3) | balance roundrobin (weights 1,2,3) | 200 (0.40×) | 100 (0.20×) [1] | 0.50× |",
		"| source_hash | balance source | 100 / 0 / 0 | 100 / 0 / 0 | 0 / 0 / 100 | 0 / 0 / 100 |",
		"| source_hash | 600 / 400 | 400 / 300 | 250 / 200 |",
		"1. 3 redis-server backends, GET -c 50 -P 16, weighted, attache: round 1 failed: attache exited",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	if strings.Contains(md, "## Medians") {
		t.Errorf("only balancing metrics ran, yet the report has the plain table:\n%s", md)
	}
}

// TestHeadToHead: the round-by-round comparison with HAProxy counts only
// the rounds both contenders finished, honours which way is better, and
// is left out when HAProxy did not run.
func TestHeadToHead(t *testing.T) {
	cfg := &config{rounds: 4, only: []string{"direct", "haproxy", "attache"}, metrics: []string{"redis-connect"}}
	rep := newReport(cfg)
	m := &metrics[slices.IndexFunc(metrics, func(m metricDef) bool { return m.name == "redis-connect" })]
	run := func(cps, p99 float64) sample { return sample{values: map[string]float64{"cps": cps, "p99": p99}} }
	for i, v := range []float64{100, 200, 300, 400} {
		rep.add(m, "", "direct", i, run(2*v, 5), nil)
		rep.add(m, "", "haproxy", i, run(v, 10), nil)
	}
	rep.add(m, "", "attache", 0, run(110, 9), nil)
	rep.add(m, "", "attache", 1, run(190, 11), nil)
	rep.add(m, "", "attache", 2, run(330, 9), nil)
	rep.add(m, "", "attache", 3, sample{}, errors.New("attache exited"))
	md := rep.markdown()
	for _, want := range []string{
		"## Against haproxy, round by round",
		"| metric | better | attache |",
		"| new connections (conn/s) | higher | 2 of 3 (1.10×) |",
		"| new connection + PING p99 (ms) | lower | 2 of 3 (0.90×) |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}

	cfg.only = []string{"direct", "attache"}
	rep = newReport(cfg)
	rep.add(m, "", "direct", 0, run(200, 5), nil)
	rep.add(m, "", "attache", 0, run(110, 9), nil)
	if md := rep.markdown(); strings.Contains(md, "## Against") {
		t.Errorf("no HAProxy in the run, yet a comparison with it:\n%s", md)
	}
}
