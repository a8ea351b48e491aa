package testenv

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"
)

// UDPEcho is a UDP server that sends every datagram back to its sender,
// after Prefix, so a test going through a proxy can tell which of several
// backends answered. It counts datagrams and the distinct source addresses
// they came from (a UDP proxy opens one upstream socket per session).
type UDPEcho struct {
	// Addr is the bound host:port.
	Addr string
	// Prefix is put before each reply.
	Prefix string

	pc     *net.UDPConn
	done   chan struct{}
	once   sync.Once
	mu     sync.Mutex
	peers  map[netip.AddrPort]int
	count  int
	silent bool
}

// StartUDPEcho starts a UDP echo server on addr (e.g. "127.0.0.1:0"). It is
// stopped by t.Cleanup, or earlier by Close.
func StartUDPEcho(t testing.TB, addr, prefix string) *UDPEcho {
	t.Helper()
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		t.Fatalf("udp echo address %s: %v", addr, err)
	}
	pc, err := net.ListenUDP("udp", ua)
	if err != nil {
		t.Fatalf("udp echo listen %s: %v", addr, err)
	}
	e := &UDPEcho{Addr: pc.LocalAddr().String(), Prefix: prefix, pc: pc, done: make(chan struct{}), peers: map[netip.AddrPort]int{}}
	go e.serve()
	t.Cleanup(e.Close)
	return e
}

func (e *UDPEcho) serve() {
	defer close(e.done)
	buf := make([]byte, 64<<10)
	out := make([]byte, 0, 64<<10+len(e.Prefix))
	for {
		// No allocation per datagram, so benchmarks through it count the
		// proxy's own.
		n, from, err := e.pc.ReadFromUDPAddrPort(buf)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			continue
		}
		e.mu.Lock()
		e.peers[from]++
		e.count++
		silent := e.silent
		e.mu.Unlock()
		if silent {
			continue
		}
		out = append(append(out[:0], e.Prefix...), buf[:n]...)
		_, _ = e.pc.WriteToUDPAddrPort(out, from)
	}
}

// Close stops the server and waits for it; its port is then closed, so a
// connected client gets ECONNREFUSED.
func (e *UDPEcho) Close() {
	e.once.Do(func() {
		e.pc.Close()
		<-e.done
	})
}

// SetSilent makes the server take datagrams without answering them (a hung
// backend, which a health check must catch), or answer again.
func (e *UDPEcho) SetSilent(on bool) {
	e.mu.Lock()
	e.silent = on
	e.mu.Unlock()
}

// Peers is the number of distinct source addresses seen.
func (e *UDPEcho) Peers() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.peers)
}

// Datagrams is the number of datagrams received.
func (e *UDPEcho) Datagrams() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.count
}

// Exchange sends msg on c, a connected UDP socket, and sends it again every
// half second (a datagram may be dropped on a busy machine) until judge
// takes a reply (true) or refuses it (an error), for up to 20 s. Replies
// judge neither takes nor refuses (false, nil: late replies to earlier
// messages) are skipped. It returns the last reply judged.
func Exchange(c net.Conn, msg string, judge func(reply string) (bool, error)) (string, error) {
	buf := make([]byte, 64<<10)
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := c.Write([]byte(msg)); err != nil {
			return "", err
		}
		_ = c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		for {
			n, err := c.Read(buf)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			if err != nil {
				// ECONNREFUSED would mean the proxy's port is closed.
				return "", err
			}
			reply := string(buf[:n])
			if done, err := judge(reply); done || err != nil {
				return reply, err
			}
		}
	}
	return "", fmt.Errorf("no reply to %q in 20s", msg)
}
