package main

import (
	"strings"
	"testing"
)

func TestParseIperfUDP(t *testing.T) {
	bps, loss, err := parseIperfUDP([]byte(`{"end":{"sum":{"bits_per_second":2e9,"lost_percent":3.5},"sum_received":{"bits_per_second":1.9e9}}}`))
	if err != nil || bps != 1.9e9 || loss != 3.5 {
		t.Fatalf("got %v %v %v", bps, loss, err)
	}
	// A TCP run has no lost_percent: the UDP metric must not take it.
	if _, _, err := parseIperfUDP([]byte(`{"end":{"sum_received":{"bits_per_second":1e9}}}`)); err == nil || !strings.Contains(err.Error(), "lost_percent") {
		t.Fatalf("TCP output: %v", err)
	}
	if _, _, err := parseIperfUDP([]byte(`{"error":"unable to connect"}`)); err == nil || !strings.Contains(err.Error(), "unable to connect") {
		t.Fatalf("error output: %v", err)
	}
}

func TestParseUDPLoad(t *testing.T) {
	r, err := parseUDPLoad([]byte(`{"requests":1000,"rps":500.5,"p50_ms":1,"p99_ms":2.5,"lost":3,"crossed":1,"clients":50,"seconds":2}` + "\n"))
	if err != nil || r.RPS != 500.5 || r.P99ms != 2.5 || r.Lost != 3 || r.Crossed != 1 {
		t.Fatalf("got %+v %v", r, err)
	}
	if _, err := parseUDPLoad([]byte(`{"requests":0,"rps":0}`)); err == nil {
		t.Fatal("want an error when nothing was answered")
	}
	if _, err := parseUDPLoad([]byte(`udpload: no request answered`)); err == nil {
		t.Fatal("want an error for non-JSON output")
	}
}

func TestUDPRoutes(t *testing.T) {
	r := route{listen: "127.0.0.1:1", backends: []endpoint{{addr: "127.0.0.1:2"}}}
	for _, m := range udpMetrics {
		got := m.routesFor(r)
		if !got[len(got)-1].udp || (m.tcpToo != (len(got) == 2)) || (m.tcpToo && got[0].udp) {
			t.Errorf("%s: routes %+v", m.name, got)
		}
	}
	if got := (&metricDef{}).routesFor(r); len(got) != 1 || got[0].udp {
		t.Errorf("a TCP metric got %+v", got)
	}
}
