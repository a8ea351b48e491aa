// Command udpload measures UDP request/response traffic through a proxy:
// N clients, each with a socket of its own, send a datagram and wait for
// its echo before sending the next (lockstep ping-pong), for a fixed time.
// It prints one JSON line: requests/s, the p50 and p99 round trip, lost
// requests (no echo within -timeout) and crossed replies (an echo carrying
// another client's id, which a correct proxy never delivers).
//
// With -serve it is the echo server instead: it sends every datagram back
// to its sender, from as many goroutines as there are CPUs.
//
//	udpload -serve 127.0.0.1:26010
//	udpload -addr 127.0.0.1:26110 -clients 50 -duration 5s -size 64
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"sync"
	"syscall"
	"time"
)

func main() {
	serve := flag.String("serve", "", "run as the UDP echo server on `addr`")
	addr := flag.String("addr", "", "send to `host:port`")
	clients := flag.Int("clients", 50, "concurrent clients, one socket each")
	duration := flag.Duration("duration", 5*time.Second, "how long to send")
	size := flag.Int("size", 64, "datagram size in bytes (at least 16)")
	timeout := flag.Duration("timeout", 200*time.Millisecond, "a request without its echo after this long counts as lost")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var err error
	switch {
	case *serve != "":
		err = echo(ctx, *serve)
	case *addr != "" && *clients > 0 && *size >= 16 && *size <= 65507 && *duration > 0 && *timeout > 0:
		err = load(ctx, *addr, *clients, *size, *duration, *timeout)
	default:
		err = errors.New("want -serve ADDR, or -addr HOST:PORT with -clients > 0, 16 <= -size <= 65507 and positive -duration and -timeout")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "udpload:", err)
		os.Exit(1)
	}
}

func echo(ctx context.Context, addr string) error {
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return err
	}
	if uc, ok := pc.(*net.UDPConn); ok {
		_ = uc.SetReadBuffer(4 << 20)
		_ = uc.SetWriteBuffer(4 << 20)
	}
	context.AfterFunc(ctx, func() { pc.Close() })
	var wg sync.WaitGroup
	for range runtime.NumCPU() {
		wg.Go(func() {
			buf := make([]byte, 64<<10)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					if errors.Is(err, net.ErrClosed) {
						return
					}
					continue
				}
				_, _ = pc.WriteTo(buf[:n], from)
			}
		})
	}
	wg.Wait()
	return nil
}

// result is what one run prints.
type result struct {
	Requests int64   `json:"requests"`
	RPS      float64 `json:"rps"`
	P50ms    float64 `json:"p50_ms"`
	P99ms    float64 `json:"p99_ms"`
	Lost     int64   `json:"lost"`
	Crossed  int64   `json:"crossed"`
	Clients  int     `json:"clients"`
	Seconds  float64 `json:"seconds"`
}

func load(ctx context.Context, addr string, clients, size int, duration, timeout time.Duration) error {
	raddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return err
	}
	conns := make([]*net.UDPConn, clients)
	for i := range conns {
		if conns[i], err = net.DialUDP("udp", nil, raddr); err != nil {
			return fmt.Errorf("client %d: %w", i, err)
		}
		defer conns[i].Close()
	}
	type tally struct {
		rtts          []time.Duration
		lost, crossed int64
		firstErr      error
	}
	tallies := make([]tally, clients)
	start := time.Now()
	end := start.Add(duration)
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Go(func() {
			t := &tallies[i]
			out := make([]byte, size)
			in := make([]byte, 64<<10)
			binary.BigEndian.PutUint64(out, uint64(i))
			for seq := uint64(1); ctx.Err() == nil; seq++ {
				now := time.Now()
				if now.After(end) {
					return
				}
				binary.BigEndian.PutUint64(out[8:], seq)
				if _, err := c.Write(out); err != nil {
					if t.firstErr == nil {
						t.firstErr = err
					}
					t.lost++
					time.Sleep(timeout) // a refused port: do not spin
					continue
				}
				_ = c.SetReadDeadline(now.Add(timeout))
				for {
					n, err := c.Read(in)
					if err != nil {
						t.lost++ // timed out (or refused): on to the next request
						break
					}
					if n < 16 {
						continue
					}
					id, got := binary.BigEndian.Uint64(in), binary.BigEndian.Uint64(in[8:])
					if id != uint64(i) {
						t.crossed++
						continue
					}
					if got != seq {
						continue // a late echo of a request counted lost
					}
					t.rtts = append(t.rtts, time.Since(now))
					break
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	var all []time.Duration
	r := result{Clients: clients, Seconds: elapsed.Seconds()}
	for _, t := range tallies {
		all = append(all, t.rtts...)
		r.Lost += t.lost
		r.Crossed += t.crossed
	}
	r.Requests = int64(len(all))
	if r.Requests == 0 {
		for _, t := range tallies {
			if t.firstErr != nil {
				return fmt.Errorf("no request answered: %w", t.firstErr)
			}
		}
		return errors.New("no request answered")
	}
	slices.Sort(all)
	pct := func(p float64) float64 {
		return float64(all[min(len(all)-1, int(p*float64(len(all))))]) / float64(time.Millisecond)
	}
	r.RPS = float64(r.Requests) / elapsed.Seconds()
	r.P50ms, r.P99ms = pct(0.50), pct(0.99)
	return json.NewEncoder(os.Stdout).Encode(r)
}
