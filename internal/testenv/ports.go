package testenv

import (
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
)

// FreeTCPUDPPorts returns n distinct ports that were free for both TCP and
// UDP, on every IPv4 address, a moment ago: for a server that takes one
// port for both (DNS, Consul's serf and DNS ports, attache's TCP and UDP
// services on one port, a link variable's 0.0.0.0:port). They are drawn
// below the kernel's ephemeral range, where port-0 listeners and outgoing
// connections get theirs, so another test is unlikely to take one before
// the caller binds it; all are held while picking, so none comes twice.
func FreeTCPUDPPorts(t testing.TB, n int) []int {
	t.Helper()
	low := ephemeralLow()
	var (
		ports   []int
		closers []io.Closer
	)
	defer func() {
		for _, c := range closers {
			c.Close()
		}
	}()
	for tries := 0; len(ports) < n; tries++ {
		if tries > 100*n {
			t.Fatalf("could not find %d ports free for both TCP and UDP on 0.0.0.0", n)
		}
		ln, err := net.Listen("tcp4", net.JoinHostPort("0.0.0.0", strconv.Itoa(belowEphemeral(low))))
		if err != nil {
			continue
		}
		port := ln.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenPacket("udp4", net.JoinHostPort("0.0.0.0", strconv.Itoa(port)))
		if err != nil {
			ln.Close()
			continue
		}
		closers = append(closers, ln, pc)
		ports = append(ports, port)
	}
	return ports
}

// FreeTCPUDPPort is FreeTCPUDPPorts for one port.
func FreeTCPUDPPort(t testing.TB) int {
	t.Helper()
	return FreeTCPUDPPorts(t, 1)[0]
}

// FreePort returns a TCP port that was free on host a moment ago, for a
// process a test starts on a port it is told (redis-server, HAProxy,
// etcd, attache from a config). Like FreeTCPUDPPorts it draws the port
// below the kernel's ephemeral range: a port from bind(0) comes from that
// range, and between this check and the process's own bind any outgoing
// connection on the machine (a parallel test's, a benchmark's thousands)
// may take it as its local port, which made HAProxy fail to bind now and
// then.
func FreePort(t testing.TB, host string) int {
	t.Helper()
	return FreePorts(t, host, 1)[0]
}

// FreePorts returns n distinct TCP ports that were free on host a moment
// ago, drawn as FreePort draws one (all are held open while picking, so
// none is returned twice).
func FreePorts(t testing.TB, host string, n int) []int {
	t.Helper()
	low := ephemeralLow()
	var (
		ports   []int
		lastErr error
	)
	for tries := 0; len(ports) < n; tries++ {
		if tries > 100*n {
			t.Fatalf("could not find %d free TCP ports on %s: %v", n, host, lastErr)
		}
		ln, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(belowEphemeral(low))))
		if err != nil {
			lastErr = err
			continue
		}
		defer ln.Close()
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// belowEphemeral draws a port between 10000 and the ephemeral range's
// first port low, or returns 0 (any port, from bind) when the range starts
// too low to leave room.
func belowEphemeral(low int) int {
	if low <= 11000 {
		return 0
	}
	return 10000 + rand.IntN(low-10000)
}

// ephemeralLow is the first port of the kernel's ephemeral range (Linux
// default 32768).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 32768
	}
	n, err := strconv.Atoi(f[0])
	if err != nil {
		return 32768
	}
	return n
}

// RequireClosed fails the test unless a TCP listener can be opened on
// addr: what held it (a listener opened before a start that failed as a
// whole) has closed it again.
func RequireClosed(t testing.TB, addr string) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("%s was left open: %v", addr, err)
	}
	ln.Close()
}
