package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// The UDP metrics (issue 6): throughput with iperf3 -u, and requests/s of
// lockstep ping-pong clients (bench/udpload) against a UDP echo server.
// Only contenders that forward UDP run them; HAProxy has no UDP mode and
// the naive proxy is TCP only, so their cells read n/a.
var udpMetrics = []metricDef{
	{
		name: "iperf3-udp", title: "iperf3 -u, 1 stream, 1400-byte datagrams, unlimited rate", backend: "iperf3", udp: true, tcpToo: true,
		columns: []column{
			{key: "gbps", title: "iperf3 -u received (Gbit/s)", better: "higher", digits: 2},
			{key: "loss", title: "iperf3 -u datagrams lost (%)", better: "lower", digits: 1},
		},
		run: iperfUDPRun,
	},
	{
		name: "udp-rps", title: "UDP request/response, 50 clients in lockstep, 64-byte datagrams", backend: "udpecho", udp: true,
		columns: []column{
			{key: "rps", title: "UDP ping-pong -c 50 (req/s)", better: "higher", digits: 0},
			{key: "p99", title: "UDP ping-pong -c 50 p99 (ms)", better: "lower", digits: 3},
			{key: "crossed", title: "UDP replies delivered to the wrong client", better: "lower", digits: 0},
		},
		run: udpRPSRun,
	},
}

// udpCapable are the contenders that forward UDP.
var udpCapable = map[string]bool{"direct": true, "socat": true, "attache": true, "attache-observed": true}

func init() { metrics = append(metrics, udpMetrics...) }

// addUDPBackends registers the UDP echo server: a fresh bench/udpload
// -serve per measurement, at base+10 (clear of the redis pool).
func (h *harness) addUDPBackends() {
	be := &backend{addr: "127.0.0.1:" + strconv.Itoa(h.cfg.basePort+10), udp: true}
	be.fresh = func(ctx context.Context, h *harness) (func(), error) {
		c, err := h.sup.start(h.logName+"-udpecho", exec.Command(h.cfg.udpload, "-serve", be.addr))
		if err != nil {
			return nil, err
		}
		if err := waitReadyUDP(ctx, be.addr, []*child{c}, 10*time.Second); err != nil {
			h.sup.stop(c)
			return nil, err
		}
		return func() { h.sup.stop(c) }, nil
	}
	h.backends["udpecho"] = be
}

// routesFor are the routes a contender serves for metric m: the metric's
// protocol, and TCP beside UDP on the same port when the tool needs both
// (iperf3 -u opens a TCP control connection to the port it sends to).
func (m *metricDef) routesFor(r route) []route {
	if !m.udp {
		return []route{r}
	}
	u := r
	u.udp = true
	if m.tcpToo {
		return []route{r, u}
	}
	return []route{u}
}

// waitReadyUDP polls addr until a datagram sent there is echoed (through
// a proxy, by the udpload echo server), or until the deadline.
func waitReadyUDP(ctx context.Context, addr string, procs []*child, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	var last error
	for {
		for _, c := range procs {
			if c.exited() {
				return fmt.Errorf("%s exited before %s was ready (%v)\n%s", c.name, addr, c.err, c.logTail())
			}
		}
		if last = udpProbe(addr); last == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s (udp) not ready after %v: %w", addr, limit, last)
		}
		if err := sleep(ctx, 20*time.Millisecond); err != nil {
			return err
		}
	}
}

func udpProbe(addr string) error {
	c, err := net.Dial("udp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	msg := []byte("bench-ready-probe-0123456789")
	if _, err := c.Write(msg); err != nil {
		return err
	}
	_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil {
		return err
	}
	if string(buf[:n]) != string(msg) {
		return fmt.Errorf("probe echoed %q", buf[:n])
	}
	return nil
}

func iperfUDPRun(ctx context.Context, h *harness, t target) (sample, error) {
	host, port, _ := strings.Cut(t.addr, ":")
	ctx, cancel := context.WithTimeout(ctx, time.Duration(h.cfg.duration+30)*time.Second)
	defer cancel()
	out, err := output(ctx, "iperf3", "-c", host, "-p", port, "-u", "-b", "0", "-l", "1400",
		"-t", strconv.Itoa(h.cfg.duration), "-J")
	bps, loss, perr := parseIperfUDP(out)
	if perr != nil {
		if err != nil {
			return sample{}, fmt.Errorf("%w (%v)", perr, err)
		}
		return sample{}, perr
	}
	return sample{values: map[string]float64{"gbps": bps / 1e9, "loss": loss}}, nil
}

// parseIperfUDP returns end.sum_received.bits_per_second (what arrived)
// and end.sum.lost_percent from iperf3 -u -J.
func parseIperfUDP(out []byte) (bps, lostPct float64, err error) {
	var r struct {
		Error string `json:"error"`
		End   struct {
			Sum struct {
				LostPercent *float64 `json:"lost_percent"`
			} `json:"sum"`
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return 0, 0, fmt.Errorf("iperf3 JSON: %w", err)
	}
	if r.Error != "" {
		return 0, 0, fmt.Errorf("iperf3: %s", r.Error)
	}
	if r.End.SumReceived.BitsPerSecond <= 0 || r.End.Sum.LostPercent == nil {
		return 0, 0, errors.New("iperf3: no sum_received.bits_per_second or sum.lost_percent (not a -u run?)")
	}
	return r.End.SumReceived.BitsPerSecond, *r.End.Sum.LostPercent, nil
}

func udpRPSRun(ctx context.Context, h *harness, t target) (sample, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(h.cfg.duration+30)*time.Second)
	defer cancel()
	out, err := output(ctx, h.cfg.udpload, "-addr", t.addr, "-clients", "50", "-size", "64",
		"-duration", strconv.Itoa(h.cfg.duration)+"s")
	if err != nil {
		return sample{}, err
	}
	r, err := parseUDPLoad(out)
	if err != nil {
		return sample{}, err
	}
	s := sample{values: map[string]float64{"rps": r.RPS, "p99": r.P99ms, "crossed": float64(r.Crossed)}}
	if r.Lost > 0 {
		s.note = fmt.Sprintf("%d of %d requests got no echo within 200 ms", r.Lost, r.Lost+r.Requests)
	}
	return s, nil
}

// udpLoad is bench/udpload's JSON line.
type udpLoad struct {
	Requests int64   `json:"requests"`
	RPS      float64 `json:"rps"`
	P99ms    float64 `json:"p99_ms"`
	Lost     int64   `json:"lost"`
	Crossed  int64   `json:"crossed"`
}

func parseUDPLoad(out []byte) (udpLoad, error) {
	var r udpLoad
	if err := json.Unmarshal(out, &r); err != nil {
		return r, fmt.Errorf("udpload JSON: %w in %q", err, out)
	}
	if r.Requests <= 0 || r.RPS <= 0 {
		return r, fmt.Errorf("udpload: no request answered: %q", out)
	}
	return r, nil
}

// socatUDP is the socat line for a UDP route: UDP4-LISTEN with fork gives
// each client (peer address) a child with a socket connected to it, which
// is how socat relays UDP sessions. UDP4-RECVFROM with fork is the other
// form: it forks per datagram, and managed about 150 requests/s for one
// client and next to none for 50 here, so it would measure fork(2) only.
// -T 60 ends a child after 60 s without traffic, like attache's default
// udp_idle_timeout.
func socatUDP(listenPort, backend string) *exec.Cmd {
	return exec.Command("socat", "-T", "60",
		"UDP4-LISTEN:"+listenPort+",bind=127.0.0.1,fork,reuseaddr", "UDP4:"+backend)
}
