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
		want := 0
		if low > 11000 {
			want = 10000 + rand.IntN(low-10000)
		}
		ln, err := net.Listen("tcp4", net.JoinHostPort("0.0.0.0", strconv.Itoa(want)))
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
