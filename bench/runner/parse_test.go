package main

import (
	"math"
	"strings"
	"testing"
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
	if err != nil || st.ppid != 7 || st.pgrp != 42 || st.cpu != 42 || st.start != 5555 {
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
	r := []route{{listen: "127.0.0.1:1", backend: "127.0.0.1:2"}}
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
