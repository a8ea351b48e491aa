// Command idleconns opens N connections to a Redis-speaking address, sends
// PING on each and reads +PONG, so that a proxy in between has dialled its
// backend for every one, then holds them all idle. It prints one line,
//
//	ready held=N failed=M [error=first error]
//
// and keeps the connections open until its standard input is closed or it
// gets SIGINT or SIGTERM. bench/runner measures the proxy's memory while
// the connections are held.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:6379", "`host:port` to connect to")
	n := flag.Int("n", 3000, "number of connections")
	parallel := flag.Int("parallel", 16, "connections being opened at once")
	timeout := flag.Duration("timeout", 30*time.Second, "limit for one connect plus PING")
	flag.Parse()

	conns, failed, firstErr := open(*addr, *n, *parallel, *timeout)
	line := fmt.Sprintf("ready held=%d failed=%d", len(conns), failed)
	if firstErr != nil {
		line += fmt.Sprintf(" error=%q", firstErr.Error())
	}
	fmt.Println(line)

	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(done)
	}()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	select {
	case <-done:
	case <-sig:
	}
	for _, c := range conns {
		c.Close()
	}
}

func open(addr string, n, parallel int, timeout time.Duration) (conns []net.Conn, failed int, firstErr error) {
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		jobs = make(chan struct{})
	)
	for range max(parallel, 1) {
		wg.Go(func() {
			for range jobs {
				c, err := pingConn(addr, timeout)
				mu.Lock()
				if err != nil {
					failed++
					if firstErr == nil {
						firstErr = err
					}
				} else {
					conns = append(conns, c)
				}
				mu.Unlock()
			}
		})
	}
	for range n {
		jobs <- struct{}{}
	}
	close(jobs)
	wg.Wait()
	return conns, failed, firstErr
}

func pingConn(addr string, timeout time.Duration) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(c, "PING\r\n"); err != nil {
		c.Close()
		return nil, err
	}
	reply, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("read PONG: %w", err)
	}
	if reply != "+PONG\r\n" {
		c.Close()
		return nil, errors.New("unexpected reply " + fmt.Sprintf("%q", reply))
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}
